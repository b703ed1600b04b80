//! Shared helpers of coordgen's integration tests (in `tests/tests/`).
//!
//! Tests that need the default model skip with a note when it is absent,
//! unless `COORDGEN_REQUIRE_MODEL=1` (set by `tools/test` and CI), where a
//! missing model fails them.

use std::path::PathBuf;

/// The workspace root.
pub fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(PathBuf::from)
        .unwrap_or_default()
}

/// The default model, or `None` (after printing why) when a test may skip.
pub fn default_model() -> Option<PathBuf> {
    let path = std::env::var_os("COORDGEN_MODEL")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("models/SmolLM2-135M-Instruct.Q4_1.gguf"));
    if path.is_file() {
        return Some(path);
    }
    if std::env::var("COORDGEN_REQUIRE_MODEL").is_ok_and(|v| v == "1") {
        panic!(
            "the default model is missing at {} (run tools/fetch-model)",
            path.display()
        );
    }
    eprintln!(
        "note: skipping, no model at {} (run tools/fetch-model)",
        path.display()
    );
    None
}

/// A committed fixture from `tests/fixtures/`, parsed.
pub fn fixture(name: &str) -> Option<serde_json::Value> {
    let path = workspace_root().join("tests/fixtures").join(name);
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            Some(serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display())))
        }
        Err(_) => {
            eprintln!("note: skipping, fixture {} is missing", path.display());
            None
        }
    }
}

/// Loads the default model with small buckets for tests (`None`: skip).
pub fn engine() -> Option<coordgen::Engine> {
    let path = default_model()?;
    let options = coordgen::EngineOptions {
        context_length: 2048,
        prefault: false,
        ..coordgen::EngineOptions::default()
    };
    Some(coordgen::Engine::load(path, options).unwrap_or_else(|e| panic!("loading the model: {e}")))
}

/// The fetched QNN folder (`tools/fetch-qnn`), or `None` (after printing
/// why) when a test may skip; `COORDGEN_REQUIRE_QNN=1` (set by `tools/test`)
/// makes a missing library fail instead.
pub fn qnn_folder() -> Option<PathBuf> {
    let folder = std::env::var_os("COORDGEN_QNN_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join(".cache/qnn/onnxruntime_qnn"));
    if folder.join("libQnnHtp.so").is_file() {
        return Some(folder);
    }
    if std::env::var("COORDGEN_REQUIRE_QNN").is_ok_and(|v| v == "1") {
        panic!(
            "the QNN library is missing from {} (run tools/fetch-qnn)",
            folder.display()
        );
    }
    eprintln!(
        "note: skipping, no QNN library in {} (run tools/fetch-qnn)",
        folder.display()
    );
    None
}

pub mod synthetic;

/// A Vulkan backend with the validation layer on (any validation error
/// fails the run that caused it), or `None` (after printing why) when a
/// test may skip; `COORDGEN_REQUIRE_VULKAN=1` (set by `tools/test`) makes
/// a missing driver or layer fail instead.
pub fn vulkan() -> Option<coordgen_vulkan::VulkanBackend> {
    vulkan_with(coordgen_vulkan::VulkanOptions::default())
}

/// [`vulkan`] with other options (validation is always on).
pub fn vulkan_with(
    options: coordgen_vulkan::VulkanOptions,
) -> Option<coordgen_vulkan::VulkanBackend> {
    let options = coordgen_vulkan::VulkanOptions {
        validation: true,
        ..options
    };
    match coordgen_vulkan::VulkanBackend::new(&options) {
        Ok(backend) => Some(backend),
        Err(e) if std::env::var("COORDGEN_REQUIRE_VULKAN").is_ok_and(|v| v == "1") => {
            panic!("Vulkan with validation is required here: {e}")
        }
        Err(e) => {
            eprintln!("note: skipping, no Vulkan device with validation: {e}");
            None
        }
    }
}

/// The greedy fixture's `count` shortest prompts (ties in fixture order),
/// by name, or `None` (after printing why) when the fixture is absent.
pub fn shortest_greedy_prompts(count: usize) -> Option<Vec<(String, Vec<u32>)>> {
    let fx = fixture("greedy.json")?;
    let mut prompts: Vec<(String, Vec<u32>)> = fx["cases"]
        .as_array()?
        .iter()
        .filter_map(|c| {
            let tokens = c["prompt_tokens"]
                .as_array()?
                .iter()
                .map(|t| t.as_u64().map(|v| v as u32))
                .collect::<Option<Vec<u32>>>()?;
            Some((c["name"].as_str().unwrap_or("?").to_string(), tokens))
        })
        .collect();
    prompts.sort_by_key(|(_, p)| p.len());
    prompts.truncate(count);
    Some(prompts)
}

/// Index of the largest logit.
pub fn argmax(logits: &[f32]) -> u32 {
    (0..logits.len())
        .max_by(|&a, &b| logits[a].total_cmp(&logits[b]))
        .unwrap_or(0) as u32
}

/// `n` greedy tokens after `prompt`, and the logits right after the prompt.
pub fn greedy(engine: &coordgen::Engine, prompt: &[u32], n: usize) -> (Vec<u32>, Vec<f32>) {
    let mut session = engine.session();
    session.set_tokens(prompt).expect("prompt fits");
    let first = session.logits().to_vec();
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        let t = argmax(session.logits());
        out.push(t);
        if out.len() < n {
            session.append(&[t]).expect("token fits");
        }
    }
    (out, first)
}
