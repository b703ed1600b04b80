//! `coordgen run` and `coordgen chat`.

use crate::common::{load_engine, prefill_bar, user_message, ModelArgs, SamplingArgs};
use crate::cost_cache::CostCache;
use anyhow::{bail, Context, Result};
use clap::Args;
use coordgen::{ChatMessage, GenerateParams, Generation};
use std::io::{BufRead, IsTerminal, Read, Write};
use std::path::PathBuf;

#[derive(Args, Debug)]
pub struct RunArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// The question or instruction (read from stdin when absent)
    #[arg(long, short = 'p', value_name = "TEXT")]
    pub prompt: Option<String>,
    /// A document to answer over (repeatable); it goes before the prompt
    #[arg(long, short = 'c', value_name = "FILE")]
    pub context: Vec<PathBuf>,
    /// A system message
    #[arg(long, value_name = "TEXT")]
    pub system: Option<String>,
    /// Most tokens to generate
    #[arg(long, short = 'n', value_name = "N", default_value_t = 256)]
    pub max_tokens: usize,
    /// Stop when the output reaches this text (repeatable)
    #[arg(long, value_name = "TEXT")]
    pub stop: Vec<String>,
    #[command(flatten)]
    pub sampling: SamplingArgs,
    /// Print one JSON object on stdout instead of streaming text
    #[arg(long)]
    pub json: bool,
    /// Speculative decoding: drafts from the prompt and the output so far,
    /// verified in one pass per step. Greedy output is exactly plain greedy
    /// decoding's; sampled output follows the same distribution
    #[arg(long, value_enum, default_value_t = SpecMethod::None)]
    pub spec: SpecMethod,
    /// Most rows of a verify pass with --spec (the last committed token plus
    /// up to W - 1 draft tokens); at most the widest verify bucket
    #[arg(long, value_name = "W", default_value_t = DEFAULT_VERIFY_WIDTH)]
    pub verify_width: usize,
    /// How much of the drafts each verify pass checks
    #[arg(long, value_enum, default_value_t = DraftingArg::Adaptive)]
    pub drafting: DraftingArg,
}

/// `--verify-width`'s default for `run` and `bench --workload`.
pub const DEFAULT_VERIFY_WIDTH: usize = 16;

/// `--drafting`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum DraftingArg {
    /// Per step, the draft that maximizes expected tokens per second, from
    /// the measured verify cost by width and the acceptance so far
    Adaptive,
    /// Every candidate the drafter proposes, up to the verify width
    Fixed,
}

/// The engine's speculative settings for `--spec`, `--verify-width` and
/// `--drafting`.
pub fn spec_config(
    method: SpecMethod,
    verify_width: usize,
    drafting: DraftingArg,
) -> Result<coordgen::SpecConfig> {
    if verify_width < 1 {
        bail!("--verify-width must be at least 1");
    }
    let (calibration, reuse) = method.features();
    Ok(coordgen::SpecConfig {
        max_draft: verify_width - 1,
        drafting: match drafting {
            DraftingArg::Adaptive => coordgen::Drafting::Adaptive,
            DraftingArg::Fixed => coordgen::Drafting::Fixed,
        },
        calibration: calibration.then(coordgen::spec::CalibrationConfig::default),
        reuse,
    })
}

/// A decoding method for `--spec`: a drafter, with or without the paper's
/// two drafting techniques.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum SpecMethod {
    /// Plain decoding
    None,
    /// Prompt lookup alone: copy what followed the last n-gram's earliest match
    Pld,
    /// Prompt lookup with calibration (the model's own continuations beside the copies)
    #[value(name = "pld+calib")]
    PldCalib,
    /// Prompt lookup with draft reuse (rejected drafts the model confirmed)
    #[value(name = "pld+reuse")]
    PldReuse,
    /// Prompt lookup with calibration and draft reuse
    #[value(name = "pld+calib+reuse")]
    PldCalibReuse,
    /// Suffix automaton alone: continuations of the longest repeated suffix
    Sam,
    /// Suffix automaton with calibration
    #[value(name = "sam+calib")]
    SamCalib,
    /// Suffix automaton with draft reuse
    #[value(name = "sam+reuse")]
    SamReuse,
    /// The full method: suffix automaton, calibration and draft reuse
    Coordgen,
}

impl SpecMethod {
    /// A fresh drafter for this method (none for plain decoding).
    pub fn drafter(self) -> Option<Box<dyn coordgen::spec::Drafter>> {
        use SpecMethod::*;
        match self {
            None => Option::None,
            Pld | PldCalib | PldReuse | PldCalibReuse => {
                Some(Box::new(coordgen::spec::PromptLookup::default()))
            }
            Sam | SamCalib | SamReuse | Coordgen => {
                Some(Box::new(coordgen::spec::SamDrafter::default()))
            }
        }
    }

    /// `(calibration, reuse)`.
    pub fn features(self) -> (bool, bool) {
        use SpecMethod::*;
        match self {
            None | Pld | Sam => (false, false),
            PldCalib | SamCalib => (true, false),
            PldReuse | SamReuse => (false, true),
            PldCalibReuse | Coordgen => (true, true),
        }
    }
}

#[derive(Args, Debug)]
pub struct ChatArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// A document the conversation is about (repeatable)
    #[arg(long, short = 'c', value_name = "FILE")]
    pub context: Vec<PathBuf>,
    /// A system message
    #[arg(long, value_name = "TEXT")]
    pub system: Option<String>,
    /// Most tokens per answer
    #[arg(long, short = 'n', value_name = "N", default_value_t = 512)]
    pub max_tokens: usize,
    #[command(flatten)]
    pub sampling: SamplingArgs,
    /// Speculative decoding of each answer (as `run --spec`; the answers are
    /// the same, sooner): drafts from the documents, the conversation and
    /// the answer so far
    #[arg(long, value_enum, default_value_t = SpecMethod::Coordgen)]
    pub spec: SpecMethod,
}

fn params(max_tokens: usize, stop: &[String], sampling: &SamplingArgs) -> GenerateParams {
    GenerateParams {
        max_tokens,
        sampler: sampling.config(),
        stop: stop.to_vec(),
        ignore_end_of_generation: false,
    }
}

fn print_stats(g: &Generation) {
    let t = &g.timings;
    eprintln!(
        "\n[{} prompt tokens ({} reused) | prefill {:.1} ms, {:.1} tok/s | decode {} tokens in {:.1} ms, {:.1} tok/s | stop: {:?}]",
        g.prompt_tokens,
        g.reused_tokens,
        t.prefill.as_secs_f64() * 1e3,
        t.prefill_tokens_per_second(),
        t.decode_tokens,
        t.decode.as_secs_f64() * 1e3,
        t.decode_tokens_per_second(),
        g.stop_reason
    );
}

pub fn run(args: RunArgs) -> Result<()> {
    let prompt = match &args.prompt {
        Some(p) => p.clone(),
        None => {
            if std::io::stdin().is_terminal() {
                bail!("give a prompt with --prompt TEXT or on stdin (see coordgen run --help)");
            }
            let mut s = String::new();
            std::io::stdin()
                .read_to_string(&mut s)
                .context("reading the prompt from stdin")?;
            s
        }
    };
    if prompt.trim().is_empty() && args.context.is_empty() {
        bail!("the prompt is empty");
    }
    let engine = load_engine(&args.model, args.json)?;
    let mut messages = Vec::new();
    if let Some(system) = &args.system {
        messages.push(ChatMessage::system(system));
    }
    messages.push(ChatMessage::user(user_message(&args.context, &prompt)?));
    let rendered = engine.render_chat(&messages)?;
    let tokens = engine.tokenize_chat(&rendered)?;
    let mut session = engine.session();
    let bar = prefill_bar(tokens.len(), args.json);
    let progress = bar.clone();
    session.on_prefill_progress(move |done, _| progress.set_position(done as u64));
    let mut stdout = std::io::stdout().lock();
    let mut first = true;
    let json = args.json;
    let gen_params = params(args.max_tokens, &args.stop, &args.sampling);
    let on_text = |piece: &str| {
        if first {
            bar.finish_and_clear();
            first = false;
        }
        if !json {
            let _ = stdout.write_all(piece.as_bytes());
            let _ = stdout.flush();
        }
        true
    };
    let mut drafter = args.spec.drafter();
    let spec = spec_config(args.spec, args.verify_width, args.drafting)?;
    let (generation, spec_stats) = match drafter.as_deref_mut() {
        None => (session.generate(&tokens, &gen_params, on_text)?, None),
        Some(d) => {
            let (g, stats) =
                speculate_cached(&mut session, &tokens, &gen_params, d, &spec, on_text)?;
            (g, Some(stats))
        }
    };
    drop(stdout);
    let mut stdout = std::io::stdout().lock();
    bar.finish_and_clear();
    if json {
        let t = &generation.timings;
        let out = serde_json::json!({
            "model": engine.path().display().to_string(),
            "backend": engine.backend_description(),
            "accelerator": engine.accelerator_report(),
            "prompt_tokens": generation.prompt_tokens,
            "tokens": generation.tokens,
            "text": generation.text,
            "stop_reason": format!("{:?}", generation.stop_reason),
            "timings": {
                "prefill_ms": t.prefill.as_secs_f64() * 1e3,
                "prefill_tps": t.prefill_tokens_per_second(),
                "decode_ms": t.decode.as_secs_f64() * 1e3,
                "decode_tps": t.decode_tokens_per_second(),
            },
            "spec": spec_stats.as_ref().map(|s| serde_json::json!({
                "method": format!("{:?}", args.spec).to_lowercase(),
                "steps": s.steps,
                "drafted": s.drafted,
                "accepted": s.accepted,
                "mean_accepted": s.mean_accepted(),
                "acceptance_rate": s.acceptance_rate(),
                "draft_ms": s.draft.as_secs_f64() * 1e3,
                "verify_ms": s.verify.as_secs_f64() * 1e3,
                "draft_share": s.draft_share(),
                "measure_ms": s.measure.as_secs_f64() * 1e3,
                "drafting": format!("{:?}", args.drafting).to_lowercase(),
                "widths": s.widths.iter().map(|(w, n)| (w.to_string(), serde_json::json!(n))).collect::<serde_json::Map<_, _>>(),
            })),
        });
        writeln!(stdout, "{out}")?;
    } else {
        writeln!(stdout)?;
        print_stats(&generation);
        if let Some(s) = &spec_stats {
            eprintln!(
                "spec {:?}: {} steps, {} drafted, {} accepted ({:.2} per step, {:.0} %); draft {:.1} ms ({:.2} %), verify {:.1} ms",
                args.spec,
                s.steps,
                s.drafted,
                s.accepted,
                s.mean_accepted(),
                100.0 * s.acceptance_rate(),
                s.draft.as_secs_f64() * 1e3,
                100.0 * s.draft_share(),
                s.verify.as_secs_f64() * 1e3
            );
        }
    }
    Ok(())
}

/// [`coordgen::Session::generate_speculative`], with adaptive drafting's
/// verify costs measured once per machine, model and setting ([`CostCache`]).
fn speculate_cached(
    session: &mut coordgen::Session,
    tokens: &[u32],
    params: &GenerateParams,
    drafter: &mut dyn coordgen::spec::Drafter,
    spec: &coordgen::SpecConfig,
    on_text: impl FnMut(&str) -> bool,
) -> Result<(Generation, coordgen::SpecStats)> {
    let engine = session.engine().clone();
    let cache = (spec.drafting == coordgen::Drafting::Adaptive)
        .then(|| CostCache::new(&engine, tokens.len()))
        .flatten();
    let cached = cache.as_ref().is_some_and(|c| c.load_into(&engine));
    let result = session
        .generate_speculative(tokens, params, drafter, spec, on_text)
        .context("speculative decoding")?;
    if let (Some(cache), false) = (&cache, cached) {
        cache.store_from(&engine);
    }
    Ok(result)
}

pub fn chat(args: ChatArgs) -> Result<()> {
    let engine = load_engine(&args.model, false)?;
    let mut messages = Vec::new();
    if let Some(system) = &args.system {
        messages.push(ChatMessage::system(system));
    }
    let mut session = engine.session();
    let mut drafter = args.spec.drafter();
    let spec = spec_config(args.spec, DEFAULT_VERIFY_WIDTH, DraftingArg::Adaptive)?;
    let mut pending_context = args.context.clone();
    let interactive = std::io::stdin().is_terminal();
    eprintln!(
        "coordgen chat on {} ({}). Empty line or Ctrl-D ends.",
        engine.path().display(),
        engine.backend_description()
    );
    let stdin = std::io::stdin();
    let mut lines = stdin.lock().lines();
    loop {
        if interactive {
            eprint!("\n> ");
        }
        let Some(line) = lines.next() else { break };
        let line = line?;
        if line.trim().is_empty() {
            break;
        }
        let content = user_message(&pending_context, &line)?;
        pending_context.clear();
        messages.push(ChatMessage::user(content));
        let rendered = engine.render_chat(&messages)?;
        let tokens = engine.tokenize_chat(&rendered)?;
        let mut stdout = std::io::stdout().lock();
        let on_text = |piece: &str| {
            let _ = stdout.write_all(piece.as_bytes());
            let _ = stdout.flush();
            true
        };
        let answer_params = params(args.max_tokens, &[], &args.sampling);
        let generation = match drafter.as_deref_mut() {
            None => session.generate(&tokens, &answer_params, on_text)?,
            Some(d) => {
                speculate_cached(&mut session, &tokens, &answer_params, d, &spec, on_text)?.0
            }
        };
        writeln!(stdout)?;
        print_stats(&generation);
        messages.push(ChatMessage::assistant(generation.text.clone()));
    }
    Ok(())
}
