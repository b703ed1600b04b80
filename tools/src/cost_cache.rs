//! Verify-cost tables cached per machine, model and setting, so that
//! `coordgen run --spec` measures them once instead of on every run (about
//! 0.1-0.2 s of 16 verify widths × 3 passes).
//!
//! One JSON file, `verify-costs.json` in the cache folder
//! (`$COORDGEN_CACHE_DIR`, else `$XDG_CACHE_HOME/coordgen`, else
//! `~/.cache/coordgen`), maps a key to a table. The key names the model file
//! (name, size, modification time), the backend (kernel tier, threads), the
//! context length and the prompt depth in steps of 512 tokens: a verify
//! pass's cost depends on all of them. The cache is a convenience: a file
//! that cannot be read or written only costs a measurement.

use coordgen::Engine;
use std::path::PathBuf;

/// Prompt depths that share a table.
const DEPTH_STEP: usize = 512;

/// The cache entry of one engine and prompt depth.
pub struct CostCache {
    path: PathBuf,
    key: String,
}

impl CostCache {
    /// The entry for `engine` at a prompt of `depth` tokens; `None` when no
    /// cache folder can be named.
    pub fn new(engine: &Engine, depth: usize) -> Option<Self> {
        let folder = std::env::var_os("COORDGEN_CACHE_DIR")
            .map(PathBuf::from)
            .or_else(|| {
                std::env::var_os("XDG_CACHE_HOME").map(|d| PathBuf::from(d).join("coordgen"))
            })
            .or_else(|| {
                std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/coordgen"))
            })?;
        let model = engine.path();
        let meta = std::fs::metadata(model).ok()?;
        let modified = meta
            .modified()
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_secs());
        let key = format!(
            "{}|{}|{}|{}|ctx {}|depth {}",
            model.file_name()?.to_string_lossy(),
            meta.len(),
            modified,
            engine.backend_description(),
            engine.context_length(),
            depth / DEPTH_STEP * DEPTH_STEP,
        );
        Some(CostCache {
            path: folder.join("verify-costs.json"),
            key,
        })
    }

    fn read(&self) -> serde_json::Map<String, serde_json::Value> {
        std::fs::read_to_string(&self.path)
            .ok()
            .and_then(|text| serde_json::from_str::<serde_json::Value>(&text).ok())
            .and_then(|v| v.as_object().cloned())
            .unwrap_or_default()
    }

    /// Gives `engine` the cached table, if there is a valid one; returns
    /// whether it did.
    pub fn load_into(&self, engine: &Engine) -> bool {
        let costs: Option<Vec<f64>> = self
            .read()
            .get(&self.key)
            .and_then(|v| v.as_array().cloned())
            .and_then(|a| a.iter().map(|x| x.as_f64()).collect());
        costs.is_some_and(|c| engine.set_verify_costs(c).is_ok())
    }

    /// Stores `engine`'s table (after a request measured it). Failing to
    /// write is reported on stderr, not an error.
    pub fn store_from(&self, engine: &Engine) {
        let Some(costs) = engine.verify_costs() else {
            return;
        };
        let mut all = self.read();
        all.insert(self.key.clone(), serde_json::json!(costs));
        let written = self
            .path
            .parent()
            .map_or(Ok(()), std::fs::create_dir_all)
            .and_then(|()| {
                std::fs::write(
                    &self.path,
                    serde_json::Value::Object(all).to_string().as_bytes(),
                )
            });
        if let Err(e) = written {
            eprintln!(
                "note: could not cache the verify costs in {}: {e}",
                self.path.display()
            );
        }
    }
}
