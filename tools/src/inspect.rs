//! `coordgen inspect` and `coordgen compile`.

use crate::common::{engine_options, resolve_model, ModelArgs};
use anyhow::{Context, Result};
use clap::Args;
use coordgen::gguf::{GgufFile, MetaArray, MetaValue};
use coordgen::{Engine, EngineOptions};
use std::path::PathBuf;

#[derive(Args, Debug)]
pub struct InspectArgs {
    /// GGUF file [default: the default model]
    #[arg(long, short = 'm', value_name = "PATH")]
    pub model: Option<PathBuf>,
    /// Also list every tensor
    #[arg(long)]
    pub tensors: bool,
    /// Array elements to show before eliding
    #[arg(long, value_name = "N", default_value_t = 8)]
    pub array_items: usize,
    /// List the Vulkan devices (for --vulkan-device) instead of a model
    #[arg(long)]
    pub vulkan: bool,
}

/// `coordgen inspect --vulkan`: every device the Vulkan loader lists.
fn list_vulkan_devices() -> Result<()> {
    let devices = coordgen::vulkan::list_devices().context("listing Vulkan devices")?;
    if devices.is_empty() {
        println!("the Vulkan loader lists no device");
    }
    for d in devices {
        println!(
            "{}: {} ({}, Vulkan {}){}",
            d.index,
            d.name,
            d.kind,
            d.api_version,
            match (d.suitable, d.float64) {
                (false, _) => " - lacks 8/16-bit storage buffers: unusable",
                (true, true) => " - exact shaders (f64)",
                (true, false) => " - shaders without f64 (within a tolerance of the CPU)",
            }
        );
    }
    Ok(())
}

#[derive(Args, Debug)]
pub struct CompileArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// With an accelerator: list the conversion error of every weight
    #[arg(long)]
    pub per_tensor: bool,
}

fn show_value(v: &MetaValue, items: usize) -> String {
    match v {
        MetaValue::String(s) => format!("{:?}", truncate(s, 200)),
        MetaValue::Array(a) => show_array(a, items),
        other => format!("{other:?}")
            .split_once('(')
            .map_or_else(String::new, |(_, rest)| {
                rest.trim_end_matches(')').to_string()
            }),
    }
}

fn truncate(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_string()
    } else {
        format!("{}…", s.chars().take(n).collect::<String>())
    }
}

fn show_array(a: &MetaArray, items: usize) -> String {
    fn list<T: std::fmt::Debug>(v: &[T], items: usize) -> String {
        let shown: Vec<String> = v.iter().take(items).map(|x| format!("{x:?}")).collect();
        let more = if v.len() > items {
            format!(", … ({} total)", v.len())
        } else {
            String::new()
        };
        format!("[{}{more}]", shown.join(", "))
    }
    match a {
        MetaArray::U8(v) => list(v, items),
        MetaArray::I8(v) => list(v, items),
        MetaArray::U16(v) => list(v, items),
        MetaArray::I16(v) => list(v, items),
        MetaArray::U32(v) => list(v, items),
        MetaArray::I32(v) => list(v, items),
        MetaArray::U64(v) => list(v, items),
        MetaArray::I64(v) => list(v, items),
        MetaArray::F32(v) => list(v, items),
        MetaArray::F64(v) => list(v, items),
        MetaArray::Bool(v) => list(v, items),
        MetaArray::String(v) => list(v, items),
        MetaArray::Array(v) => format!("[{} nested arrays]", v.len()),
    }
}

pub fn inspect(args: InspectArgs) -> Result<()> {
    if args.vulkan {
        return list_vulkan_devices();
    }
    let path = resolve_model(&args.model)?;
    let file = GgufFile::open(&path).with_context(|| format!("reading {}", path.display()))?;
    println!(
        "{}: GGUF v{}, {} metadata keys, {} tensors, alignment {}, data at byte {}, {} bytes",
        path.display(),
        file.version(),
        file.metadata().len(),
        file.tensors().len(),
        file.alignment(),
        file.data_offset(),
        file.file_len()
    );
    println!("\nmetadata:");
    for (key, value) in file.metadata() {
        println!(
            "  {key:<44} {:<8} {}",
            value.type_name(),
            show_value(value, args.array_items)
        );
    }
    let mut by_type = std::collections::BTreeMap::<&str, (usize, u64)>::new();
    for t in file.tensors() {
        let e = by_type.entry(t.ty.name()).or_default();
        e.0 += 1;
        e.1 += t.n_bytes;
    }
    println!("\ntensor types:");
    for (ty, (count, bytes)) in by_type {
        println!(
            "  {ty:<6} {count:>5} tensors {:>10.2} MiB",
            bytes as f64 / (1 << 20) as f64
        );
    }
    if args.tensors {
        println!("\ntensors:");
        for t in file.tensors() {
            println!(
                "  {:<32} {:<6} {:<20} {:>10} bytes at +{}",
                t.name,
                t.ty.name(),
                format!("{:?}", t.dims),
                t.n_bytes,
                t.offset
            );
        }
    }
    Ok(())
}

pub fn compile(args: CompileArgs) -> Result<()> {
    let path = resolve_model(&args.model.model)?;
    let options = EngineOptions {
        threads: Some(args.model.threads.unwrap_or(1)),
        prefault: false,
        ..engine_options(&args.model, false)?
    };
    let started = std::time::Instant::now();
    let engine =
        Engine::load(&path, options).with_context(|| format!("compiling {}", path.display()))?;
    let elapsed = started.elapsed();
    print!("{}", engine.plan().summary());
    if let Some(r) = engine.accelerator_report() {
        println!(
            "\n{} backend on {} (library {})",
            r.backend, r.device, r.library_build
        );
        println!("  weights:          {}", r.weights);
        println!("  layer graphs:     {}", r.scope);
        println!(
            "  graphs:           {} ({} subgraphs split with the CPU)",
            r.graphs, r.split_subgraphs
        );
        if r.cache_hit {
            println!("  cache:            hit, finalize skipped");
            println!("  context load:     {:.1} ms", r.load_ms);
        } else {
            println!("  graph build:      {:.1} ms", r.build_ms);
            println!("  graph finalize:   {:.1} ms", r.finalize_ms);
            if r.binary_bytes > 0 {
                println!(
                    "  context binary:   {:.1} MB, written in {:.1} ms",
                    r.binary_bytes as f64 / 1e6,
                    r.save_ms
                );
            }
        }
        if let Some(entry) = &r.cache_entry {
            println!("  cache entry:      {}", entry.display());
        }
        let mut reports = engine.weight_conversion_reports();
        if args.per_tensor {
            println!(
                "\n  {:<28} {:>6} {:>5} {:>13} {:>13}",
                "weight", "from", "to", "relative RMS", "max |error|"
            );
            for r in &reports {
                println!(
                    "  {:<28} {:>6} {:>5} {:>13.3e} {:>13.3e}",
                    r.name,
                    r.from.to_string(),
                    r.to.name(),
                    r.relative_rms,
                    r.max_abs_error
                );
            }
            println!();
        }
        reports.sort_by(|a, b| b.relative_rms.total_cmp(&a.relative_rms));
        if reports.is_empty() && r.cache_hit {
            println!("  weight conversion: not redone on a cache hit (--no-qnn-cache redoes it)");
        }
        if let Some(worst) = reports.first() {
            let mean = reports.iter().map(|r| r.relative_rms).sum::<f64>() / reports.len() as f64;
            println!(
                "  weight conversion: {} tensors, mean relative RMS {:.2e}, worst {} ({} -> {}) {:.2e}",
                reports.len(),
                mean,
                worst.name,
                worst.from,
                worst.to.name(),
                worst.relative_rms
            );
        }
    }
    println!("  total:            {:.1} ms", elapsed.as_secs_f64() * 1e3);
    Ok(())
}
