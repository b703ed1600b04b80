//! `coordgen bench`: speed as a table, JSON and an SVG chart, in three modes.
//!
//! - Context mode (the default): prefill a real prompt (context documents
//!   plus an instruction) and decode greedily, as `coordgen run` does.
//! - Synthetic mode (`--prefill`, `--decode`, `--verify-widths`), measured
//!   like llama-bench: pseudo-random token ids, `ppN` = N tokens into an empty
//!   KV cache, `tgN` = N one-token steps from an empty cache, and the cost of
//!   one all-logits forward pass of width w on top of a filled cache.
//! - Workload mode (`--workload FILE.jsonl`): speculative decoding against
//!   plain decoding over a Spec-Bench style prompt file; see
//!   [`crate::bench_workload`].

use crate::common::{load_engine, ModelArgs};
use crate::run::SpecMethod;
use crate::run::{DraftingArg, DEFAULT_VERIFY_WIDTH};
use anyhow::{bail, Context, Result};
use clap::{Args, ValueEnum};
use coordgen::tokenizer::TokenKind;
use coordgen::{ChatMessage, Engine, GenerateParams, SamplerConfig, Session, Switching};
use serde_json::{json, Value};
use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::Instant;

/// Shown after `coordgen bench --help`.
pub const HELP: &str = "\
Modes:
  context    (default) Prefill a real prompt (--context files + --prompt, rendered
             with the chat template) in a fresh session, then decode -n tokens
             greedily; end-of-generation is ignored so every run decodes as many.
  synthetic  Chosen by --prefill, --decode or --verify-widths; measured like
             llama-bench with deterministic pseudo-random ordinary tokens (--seed):
               ppN  N tokens prefilled into an empty KV cache (tokens/s)
               tgN  N tokens decoded one at a time from an empty cache (tokens/s)
               verify: the cache is filled with --depth tokens once, then for each
               width w one forward pass of w new tokens with every row's logits,
               rolled back to --depth after each pass (ms per pass, and its cost
               relative to width 1: the cost of verifying w draft tokens); the
               widths take turns, one untimed and one timed pass per round.
             A phase runs only when its flag is given; 0 skips it.
  workload   Chosen by --workload FILE.jsonl (Spec-Bench style: one JSON object a
             line with \"question_id\", \"category\" and \"turns\"; the first turn is
             the user message, rendered with the chat template as coordgen run
             does). Each prompt is decoded greedily with plain decoding (none,
             always first: the baseline) and then with each --spec drafter at
             --verify-width, up to -n tokens or end-of-generation. Only decode
             time counts (the prompt's prefill is not timed, and is reused by the
             methods after the first). One table per category, then all of them:
               decode ms/token   decode time / output tokens, summed over prompts
               tokens/step       output tokens per verify pass (1 + accepted/step)
               accepted/step     accepted draft tokens per verify pass
               acceptance        accepted / drafted tokens
               draft share       drafting time / (drafting + verify passes)
               speedup           none's ms/token / this method's ms/token
               mismatches        prompts whose tokens differ from none's
             Any mismatch (lossless decoding broken) makes bench exit non-zero,
             after the tables and files are written. One untimed warm-up of each
             method on the first prompt comes first; --repeat does not apply.

Every test runs once to warm up, then --repeat times; tables show the median
[min-max]. Progress goes to stderr; with --json stdout holds exactly one JSON
object. Peak RSS is VmHWM from /proc/self/status (null where unavailable).

Examples:
  coordgen bench                                        # context mode over tools/demo-context.md
  coordgen bench --context report.md -n 64 --repeat 5 --plot bench.svg
  coordgen bench --prefill 512 --decode 128 --threads 2  # like llama-bench -p 512 -n 128
  coordgen bench --prefill 512 --decode 0 --json         # pp only, one JSON object
  coordgen bench --verify-widths 1,2,4,8,16,32 --depth 1024 --repeat 3 --plot verify.svg
  coordgen bench --prefill 128 --decode 128 --verify-widths 1,4,8 --json-out bench.json
  coordgen bench --workload tools/workloads/example.jsonl --spec none,pld,sam -n 128
  coordgen bench --workload prompts.jsonl --limit 5 --verify-width 16 --plot spec.svg
  coordgen bench --backend qnn --context-tokens 512 -n 8 --timeline switch.svg --json";

/// Arguments that choose another mode than workload mode.
const NOT_WORKLOAD: [&str; 6] = [
    "prefill",
    "decode",
    "verify_widths",
    "context",
    "prompt",
    "repeat",
];

const SYNTHETIC: [&str; 3] = ["prefill", "decode", "verify_widths"];

#[derive(Args, Debug)]
pub struct BenchArgs {
    #[command(flatten)]
    pub model: ModelArgs,

    /// Context document(s) [default: tools/demo-context.md when present]
    #[arg(long, short = 'c', value_name = "FILE", help_heading = "Context mode", conflicts_with_all = SYNTHETIC)]
    pub context: Vec<PathBuf>,
    /// The instruction after the context
    #[arg(
        long,
        short = 'p',
        value_name = "TEXT",
        default_value = "Summarize the document in a few sentences.",
        help_heading = "Context mode",
        conflicts_with_all = SYNTHETIC
    )]
    pub prompt: String,
    /// Tokens to generate per run, greedily (context mode ignores end-of-generation so every run decodes this many; workload mode stops there)
    #[arg(long, short = 'n', value_name = "N", default_value_t = 128, help_heading = "Context and workload modes", conflicts_with_all = SYNTHETIC)]
    pub max_tokens: usize,

    /// Spec-Bench style JSONL prompts: compare speculative decoding with plain decoding on them
    #[arg(long, value_name = "FILE.jsonl", help_heading = "Workload mode", conflicts_with_all = NOT_WORKLOAD)]
    pub workload: Option<PathBuf>,
    /// Decoding methods to compare: none (plain; always run first, as the baseline); pld (prompt lookup) or sam (suffix automaton) alone, or with +calib (calibrated branches from the prefill's distributions) and/or +reuse (confirmed runs of rejected drafts); coordgen = sam+calib+reuse
    #[arg(
        long,
        value_enum,
        value_name = "M,M,..",
        value_delimiter = ',',
        default_value = "none,pld,sam",
        requires = "workload",
        help_heading = "Workload mode"
    )]
    pub spec: Vec<SpecMethod>,
    /// Rows of a verify pass: the last committed token plus up to W - 1 draft tokens (as coordgen run --verify-width)
    #[arg(long, value_name = "W", default_value_t = DEFAULT_VERIFY_WIDTH, requires = "workload", help_heading = "Workload mode")]
    pub verify_width: usize,
    /// How much of the drafts each verify pass checks (as coordgen run --drafting)
    #[arg(long, value_enum, default_value_t = DraftingArg::Adaptive, requires = "workload", help_heading = "Workload mode")]
    pub drafting: DraftingArg,
    /// Only the first N prompts of each category (for quick runs)
    #[arg(
        long,
        value_name = "N",
        requires = "workload",
        help_heading = "Workload mode"
    )]
    pub limit: Option<usize>,

    /// Prefill N pseudo-random tokens into an empty KV cache (ppN)
    #[arg(
        long,
        value_name = "N",
        help_heading = "Synthetic mode (llama-bench style)"
    )]
    pub prefill: Option<usize>,
    /// Decode N tokens one at a time from an empty KV cache (tgN)
    #[arg(
        long,
        value_name = "N",
        help_heading = "Synthetic mode (llama-bench style)"
    )]
    pub decode: Option<usize>,
    /// Time one forward pass of each width, with every row's logits, on top of --depth cached tokens
    #[arg(
        long,
        value_name = "W,W,..",
        value_delimiter = ',',
        help_heading = "Synthetic mode (llama-bench style)"
    )]
    pub verify_widths: Vec<usize>,
    /// Tokens in the KV cache under each verify pass
    #[arg(
        long,
        value_name = "N",
        default_value_t = 1024,
        requires = "verify_widths",
        help_heading = "Synthetic mode (llama-bench style)"
    )]
    pub depth: usize,
    /// How a verify pass runs
    #[arg(
        long,
        value_enum,
        value_name = "PATH",
        default_value_t = VerifyPath::Causal,
        requires = "verify_widths",
        help_heading = "Synthetic mode (llama-bench style)"
    )]
    pub verify_path: VerifyPath,
    /// Also time the calibrating prefill (every row's next-token top K,
    /// then the calibrated token tree) against plain prefill of the same
    /// prompt, alternating, and report the ratio
    #[arg(long, help_heading = "Context mode")]
    pub calibration: bool,
    /// Seed of the pseudo-random token ids
    #[arg(
        long,
        value_name = "N",
        default_value_t = 42,
        help_heading = "Synthetic mode (llama-bench style)"
    )]
    pub seed: u64,

    /// Measured runs of each test, after one warm-up run [default: 5; 3 in context mode]
    #[arg(long, short = 'r', visible_alias = "runs", value_name = "R")]
    pub repeat: Option<usize>,
    /// Print the results as one JSON object on stdout (and nothing else)
    #[arg(long)]
    pub json: bool,
    /// Write the results as JSON to this file
    #[arg(long, value_name = "FILE")]
    pub json_out: Option<PathBuf>,
    /// Record one request under each --switching schedule (block runs per
    /// prefill chunk, graph loads, stalls, decode passes) and draw the
    /// timelines side by side as an SVG Gantt chart here
    #[arg(long, value_name = "FILE.svg", help_heading = "Timeline mode", conflicts_with_all = SYNTHETIC)]
    pub timeline: Option<PathBuf>,
    /// Graph-switching schedules to record: naive, progressive, both
    #[arg(
        long,
        value_name = "S,S,..",
        value_delimiter = ',',
        default_value = "naive,progressive",
        value_parser = parse_switching,
        requires = "timeline",
        help_heading = "Timeline mode"
    )]
    pub switching: Vec<Switching>,
    /// Cut the context to its first N tokens (e.g. 512)
    #[arg(long, value_name = "N", help_heading = "Context mode", conflicts_with_all = SYNTHETIC)]
    pub context_tokens: Option<usize>,
    /// Write an SVG bar chart (median, min-max whiskers; workload mode: speedup per category and method)
    #[arg(long, value_name = "FILE")]
    pub plot: Option<PathBuf>,
}

/// How a verify pass is run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum VerifyPath {
    /// Session::append_all_logits (causal, prefill buckets), rolled back after each pass
    Causal,
    /// Session::eval_tree with a chain-shaped tree mask (verify buckets); nothing is committed
    Tree,
}

impl VerifyPath {
    fn name(self) -> &'static str {
        match self {
            VerifyPath::Causal => "causal",
            VerifyPath::Tree => "tree",
        }
    }
}

impl BenchArgs {
    fn synthetic(&self) -> bool {
        self.prefill.is_some() || self.decode.is_some() || !self.verify_widths.is_empty()
    }
}

fn parse_switching(s: &str) -> std::result::Result<Switching, String> {
    Switching::parse(s).ok_or_else(|| format!("unknown schedule {s:?} (naive, progressive, both)"))
}

pub fn bench(args: BenchArgs) -> Result<()> {
    if let Some(path) = &args.timeline {
        let (result, _svg) = crate::bench_timeline::timeline_mode(&args, path)?;
        return write_results(&args, &result, "");
    }
    if let Some(path) = &args.workload {
        let outcome = crate::bench_workload::workload_mode(&args, path)?;
        write_results(&args, &outcome.result, &outcome.chart)?;
        if outcome.mismatched_prompts > 0 {
            bail!(
                "{} prompt(s) decoded differently from plain decoding: speculative decoding \
                 was not lossless (see the mismatches above)",
                outcome.mismatched_prompts
            );
        }
        return Ok(());
    }
    let repeat = args.repeat.unwrap_or(if args.synthetic() { 5 } else { 3 });
    if repeat == 0 {
        bail!("--repeat must be at least 1");
    }
    let (result, chart) = if args.synthetic() {
        synthetic(&args, repeat)?
    } else {
        context_mode(args.context_files(), &args, repeat)?
    };
    write_results(&args, &result, &chart)
}

/// `--json` (stdout), `--json-out` and `--plot`.
fn write_results(args: &BenchArgs, result: &Value, chart: &str) -> Result<()> {
    if args.json {
        println!("{result}");
    }
    if let Some(path) = &args.json_out {
        std::fs::write(path, serde_json::to_string_pretty(&result)? + "\n")
            .with_context(|| format!("writing {}", path.display()))?;
    }
    if let Some(path) = &args.plot {
        std::fs::write(path, chart).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

impl BenchArgs {
    /// The context files, defaulting to the demo document.
    pub(crate) fn context_files(&self) -> Vec<PathBuf> {
        let mut context = self.context.clone();
        if context.is_empty() {
            let demo = PathBuf::from("tools/demo-context.md");
            if demo.is_file() {
                context.push(demo);
            }
        }
        context
    }
}

/// Median, min and max of a sample.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct Stats {
    pub median: f64,
    pub min: f64,
    pub max: f64,
}

impl Stats {
    pub fn of(samples: &[f64]) -> Stats {
        let mut v = samples.to_vec();
        v.sort_by(f64::total_cmp);
        let median = match v.len() {
            0 => 0.0,
            n if n % 2 == 1 => v[n / 2],
            n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
        };
        Stats {
            median,
            min: v.first().copied().unwrap_or(0.0),
            max: v.last().copied().unwrap_or(0.0),
        }
    }

    fn json(&self) -> Value {
        json!({ "median": self.median, "min": self.min, "max": self.max })
    }

    /// `median [min-max]` with `decimals` digits.
    fn show(&self, decimals: usize) -> String {
        format!(
            "{:.d$} [{:.d$}-{:.d$}]",
            self.median,
            self.min,
            self.max,
            d = decimals
        )
    }
}

/// Peak resident set size (VmHWM) of this process, where the OS tells it.
pub(crate) fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find_map(|l| l.strip_prefix("VmHWM:"))?;
    let kib: u64 = line.trim().strip_suffix("kB")?.trim().parse().ok()?;
    Some(kib * 1024)
}

pub(crate) fn show_rss(rss: Option<u64>) -> String {
    match rss {
        Some(b) => format!("{:.1} MiB", b as f64 / (1024.0 * 1024.0)),
        None => "n/a".to_string(),
    }
}

fn tokens_per_second(tokens: usize, seconds: f64) -> f64 {
    if seconds > 0.0 {
        tokens as f64 / seconds
    } else {
        0.0
    }
}

/// The model's file name, for chart titles.
pub(crate) fn model_name(engine: &Engine) -> String {
    engine.path().file_name().map_or_else(
        || engine.path().display().to_string(),
        |n| n.to_string_lossy().into_owned(),
    )
}

/// Deterministic pseudo-random ordinary (non-special) token ids.
struct TokenSource {
    pool: Vec<u32>,
    bos: Option<u32>,
    state: u64,
}

impl TokenSource {
    fn new(engine: &Engine, seed: u64) -> Result<TokenSource> {
        let tokenizer = engine.tokenizer();
        let pool: Vec<u32> = (0..tokenizer.vocab_size() as u32)
            .filter(|&id| {
                matches!(
                    tokenizer.token_kind(id),
                    Ok(TokenKind::Normal | TokenKind::Byte)
                )
            })
            .collect();
        if pool.is_empty() {
            bail!("the model's vocabulary has no ordinary tokens to benchmark with");
        }
        Ok(TokenSource {
            pool,
            bos: tokenizer.bos_id().filter(|_| tokenizer.adds_bos()),
            state: seed,
        })
    }

    /// splitmix64
    fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn random(&mut self, n: usize) -> Vec<u32> {
        (0..n)
            .map(|_| {
                let index = self.next_u64() % self.pool.len() as u64;
                self.pool[index as usize]
            })
            .collect()
    }

    /// `n` tokens that start a sequence: BOS first when the model adds it
    /// (as llama-bench does), then random ones.
    fn sequence(&mut self, n: usize) -> Vec<u32> {
        let mut tokens = self.random(n);
        if let (Some(bos), Some(first)) = (self.bos, tokens.first_mut()) {
            *first = bos;
        }
        tokens
    }
}

/// One line of a bar chart: median with min-max whiskers.
pub(crate) struct Bar {
    pub label: String,
    pub stats: Stats,
    /// Text above the bar.
    pub note: String,
}

/// One chart of a figure.
pub(crate) struct Panel {
    pub title: String,
    pub bars: Vec<Bar>,
    pub color: &'static str,
}

// ---------------------------------------------------------------- synthetic

/// A measured synthetic test.
struct Phase {
    name: String,
    samples_tps: Vec<f64>,
}

fn synthetic(args: &BenchArgs, repeat: usize) -> Result<(Value, String)> {
    let prefill = args.prefill.unwrap_or(0);
    let decode = args.decode.unwrap_or(0);
    let mut widths = args.verify_widths.clone();
    widths.sort_unstable();
    widths.dedup();
    if widths.first() == Some(&0) {
        bail!("--verify-widths: every width must be at least 1");
    }
    if prefill == 0 && decode == 0 && widths.is_empty() {
        bail!("nothing to measure: --prefill and --decode are 0 and no --verify-widths given");
    }
    let engine = load_engine(&args.model, args.json)?;
    let context = engine.context_length();
    let too_long = |what: String, needed: usize| -> Result<()> {
        if needed > context {
            bail!(
                "{what} needs {needed} tokens of KV cache, but a session holds {context} \
                 (--ctx-size, at most the model's {})",
                engine.config().train_context
            );
        }
        Ok(())
    };
    too_long(format!("--prefill {prefill}"), prefill)?;
    too_long(format!("--decode {decode}"), decode)?;
    if let Some(&widest) = widths.last() {
        too_long(
            format!("--depth {} with --verify-widths up to {widest}", args.depth),
            args.depth + widest,
        )?;
        if args.verify_path == VerifyPath::Tree {
            let max_tree = engine.max_verify_width();
            if widest > max_tree {
                bail!(
                    "--verify-path tree runs one verify bucket per pass; width {widest} exceeds \
                     the widest ({max_tree})"
                );
            }
        }
    }
    let threads = engine.threads();
    let isa = engine.kernel_tier().name();
    let mut source = TokenSource::new(&engine, args.seed)?;
    let mut session = engine.session();

    let mut phases = Vec::new();
    if prefill > 0 {
        let tokens = source.sequence(prefill);
        let name = format!("pp{prefill}");
        eprintln!("bench: {name}, 1 warm-up + {repeat} runs");
        let mut samples = Vec::new();
        for run in 0..=repeat {
            session.reset();
            let started = Instant::now();
            session
                .append(&tokens)
                .with_context(|| format!("{name}: prefill"))?;
            let tps = tokens_per_second(prefill, started.elapsed().as_secs_f64());
            if run > 0 {
                samples.push(tps);
            }
        }
        phases.push(Phase {
            name,
            samples_tps: samples,
        });
    }
    if decode > 0 {
        let tokens = source.sequence(decode);
        let name = format!("tg{decode}");
        eprintln!("bench: {name}, 1 warm-up + {repeat} runs");
        let mut samples = Vec::new();
        for run in 0..=repeat {
            session.reset();
            let started = Instant::now();
            for &token in &tokens {
                session
                    .append(&[token])
                    .with_context(|| format!("{name}: decode step"))?;
            }
            let tps = tokens_per_second(decode, started.elapsed().as_secs_f64());
            if run > 0 {
                samples.push(tps);
            }
        }
        phases.push(Phase {
            name,
            samples_tps: samples,
        });
    }
    let verify = if widths.is_empty() {
        None
    } else {
        Some(verify_widths(
            &mut session,
            &mut source,
            &widths,
            args.depth,
            args.verify_path,
            repeat,
        )?)
    };
    let rss = peak_rss_bytes();

    // Report.
    let phase_stats = |prefix: &str| {
        phases
            .iter()
            .find(|p| p.name.starts_with(prefix))
            .map(|p| Stats::of(&p.samples_tps))
    };
    let prefill_stats = phase_stats("pp");
    let decode_stats = phase_stats("tg");
    let mut result = json!({
        "mode": "synthetic",
        "model": engine.path().display().to_string(),
        "backend": engine.backend_description(),
        "threads": threads,
        "isa": isa,
        "seed": args.seed,
        "runs": repeat,
        "prefill_tokens": prefill,
        "decode_tokens": decode,
        "prefill_tps": prefill_stats.map(|s| s.json()),
        "decode_tps": decode_stats.map(|s| s.json()),
        "samples": {
            "prefill_tps": phases.iter().find(|p| p.name.starts_with("pp")).map(|p| &p.samples_tps),
            "decode_tps": phases.iter().find(|p| p.name.starts_with("tg")).map(|p| &p.samples_tps),
        },
        "peak_rss_bytes": rss,
    });
    if let Some(v) = &verify {
        let object = result.as_object_mut().context("result is an object")?;
        for (key, value) in v.json() {
            object.insert(key, value);
        }
    }

    if !args.json {
        println!(
            "model: {} | {}",
            engine.path().display(),
            engine.backend_description()
        );
        if !phases.is_empty() {
            println!();
            println!("| test | threads | isa | t/s |");
            println!("|---|---|---|---|");
            for p in &phases {
                println!(
                    "| {} | {threads} | {isa} | {} |",
                    p.name,
                    Stats::of(&p.samples_tps).show(2)
                );
            }
        }
        if let Some(v) = &verify {
            println!();
            v.print_table(threads, isa);
        }
        println!();
        println!(
            "{repeat} run{} per test after 1 warm-up; median [min-max]; peak RSS {}",
            if repeat == 1 { "" } else { "s" },
            show_rss(rss)
        );
    }

    let mut panels = Vec::new();
    if !phases.is_empty() {
        panels.push(Panel {
            title: "tokens/s".to_string(),
            bars: phases
                .iter()
                .map(|p| {
                    let stats = Stats::of(&p.samples_tps);
                    Bar {
                        label: p.name.clone(),
                        note: format!("{:.1}", stats.median),
                        stats,
                    }
                })
                .collect(),
            color: "#4e79a7",
        });
    }
    if let Some(v) = &verify {
        panels.push(v.panel());
    }
    let title = format!(
        "coordgen bench: {}, {threads} threads, {isa}, {repeat} runs",
        model_name(&engine)
    );
    Ok((result, svg_chart(&title, &panels)))
}

/// Per-width results of the verify test.
struct VerifyResult {
    depth: usize,
    path: VerifyPath,
    fill_ms: f64,
    /// (width, ms per pass of each run)
    widths: Vec<(usize, Vec<f64>)>,
}

/// The issue's acceptance bounds: (width, most cost relative to width 1).
const ACCEPTANCE: [(usize, f64); 2] = [(4, 1.5), (8, 2.5)];

impl VerifyResult {
    fn base(&self) -> (usize, f64) {
        self.widths
            .first()
            .map(|(w, s)| (*w, Stats::of(s).median))
            .unwrap_or((1, 0.0))
    }

    fn relative(&self, ms: f64) -> f64 {
        let (_, base) = self.base();
        if base > 0.0 {
            ms / base
        } else {
            0.0
        }
    }

    /// `(width, relative, bound, within)` for each bound this run can check.
    fn acceptance(&self) -> Vec<(usize, f64, f64, bool)> {
        if self.base().0 != 1 {
            return Vec::new();
        }
        ACCEPTANCE
            .iter()
            .filter_map(|&(width, bound)| {
                let (_, samples) = self.widths.iter().find(|(w, _)| *w == width)?;
                let relative = self.relative(Stats::of(samples).median);
                Some((width, relative, bound, relative <= bound))
            })
            .collect()
    }

    fn json(&self) -> Vec<(String, Value)> {
        let widths: Vec<Value> = self
            .widths
            .iter()
            .map(|(w, samples)| {
                let stats = Stats::of(samples);
                json!({
                    "width": w,
                    "ms": stats.json(),
                    "relative": self.relative(stats.median),
                    "samples_ms": samples,
                })
            })
            .collect();
        let acceptance: Vec<Value> = self
            .acceptance()
            .iter()
            .map(|&(width, relative, bound, ok)| {
                json!({ "width": width, "relative": relative, "bound": bound, "ok": ok })
            })
            .collect();
        vec![
            ("depth".into(), json!(self.depth)),
            ("verify_path".into(), json!(self.path.name())),
            ("depth_fill_ms".into(), json!(self.fill_ms)),
            ("relative_to_width".into(), json!(self.base().0)),
            ("widths".into(), Value::Array(widths)),
            ("acceptance".into(), Value::Array(acceptance)),
        ]
    }

    fn print_table(&self, threads: usize, isa: &str) {
        let base = self.base().0;
        println!(
            "verify passes on {} cached tokens ({} path, {threads} threads, {isa}):",
            self.depth,
            self.path.name()
        );
        println!();
        println!("| width | ms per pass | relative to width {base} |");
        println!("|---|---|---|");
        for (w, samples) in &self.widths {
            let stats = Stats::of(samples);
            println!(
                "| {w} | {} | {:.2}x |",
                stats.show(2),
                self.relative(stats.median)
            );
        }
        let checks = self.acceptance();
        if !checks.is_empty() {
            let parts: Vec<String> = checks
                .iter()
                .map(|&(w, rel, bound, ok)| {
                    format!(
                        "width {w} {rel:.2}x (<= {bound}x: {})",
                        if ok { "ok" } else { "FAIL" }
                    )
                })
                .collect();
            println!();
            println!("cheap verification: {}", parts.join(", "));
        }
    }

    fn panel(&self) -> Panel {
        Panel {
            title: format!(
                "ms per verify pass on {} cached tokens ({} path)",
                self.depth,
                self.path.name()
            ),
            bars: self
                .widths
                .iter()
                .map(|(w, samples)| {
                    let stats = Stats::of(samples);
                    Bar {
                        label: format!("w={w}"),
                        note: format!("{:.1} ({:.2}x)", stats.median, self.relative(stats.median)),
                        stats,
                    }
                })
                .collect(),
            color: "#59a14f",
        }
    }
}

fn verify_widths(
    session: &mut Session,
    source: &mut TokenSource,
    widths: &[usize],
    depth: usize,
    path: VerifyPath,
    repeat: usize,
) -> Result<VerifyResult> {
    session.reset();
    let started = Instant::now();
    if depth > 0 {
        eprintln!("bench: filling the KV cache with {depth} tokens");
        let fill = source.sequence(depth);
        session
            .append(&fill)
            .context("filling the KV cache to --depth")?;
    }
    let fill_ms = started.elapsed().as_secs_f64() * 1e3;
    // Each width's tokens and its chain mask (row i sees rows 0..=i: causal).
    let inputs: Vec<(Vec<u32>, Vec<u8>)> = widths
        .iter()
        .map(|&w| {
            let mask = (0..w * w).map(|k| u8::from(k % w <= k / w)).collect();
            (source.random(w), mask)
        })
        .collect();
    let mut samples = vec![Vec::with_capacity(repeat); widths.len()];
    let mut logits = Vec::new();
    // Round-robin over the widths, so a burst of load on a shared machine
    // disturbs every width alike instead of skewing the ratios. Each timed
    // pass follows an untimed one of the same width, so it finds the caches
    // as back-to-back passes of its own width leave them.
    eprintln!(
        "bench: verify widths {widths:?} at depth {depth}, 1 warm-up round + {repeat} rounds"
    );
    for round in 0..=repeat {
        for ((tokens, mask), samples) in inputs.iter().zip(&mut samples) {
            for timed in [false, true] {
                let started = Instant::now();
                match path {
                    VerifyPath::Causal => session.append_all_logits_into(tokens, &mut logits)?,
                    VerifyPath::Tree => logits = session.eval_tree(tokens, mask)?,
                }
                let ms = started.elapsed().as_secs_f64() * 1e3;
                session.truncate(depth);
                if timed && round > 0 {
                    samples.push(ms);
                }
            }
        }
    }
    let results = widths.iter().copied().zip(samples).collect();
    std::hint::black_box(&logits);
    Ok(VerifyResult {
        depth,
        path,
        fill_ms,
        widths: results,
    })
}

// ---------------------------------------------------------------- context

/// Calibration's cost on one prompt (`--calibration`): plain prefill
/// against calibrating prefill plus the calibrated tree, in ms.
struct CalibrationCost {
    plain: Stats,
    calibrated: Stats,
    tree: Stats,
    tree_nodes: usize,
}

impl CalibrationCost {
    fn ratio(&self) -> f64 {
        self.calibrated.median / self.plain.median
    }

    fn json(&self) -> Value {
        json!({
            "prefill_ms": self.plain.json(),
            "calibrated_prefill_ms": self.calibrated.json(),
            "tree_ms": self.tree.json(),
            "tree_nodes": self.tree_nodes,
            "ratio": self.ratio(),
        })
    }

    fn print(&self, prompt_tokens: usize) {
        println!(
            "calibration: prefill {} ms, calibrating prefill + tree {} ms ({:.2}x); the tree alone {} ms ({:.2} us per context token, {} nodes)",
            self.plain.show(1),
            self.calibrated.show(1),
            self.ratio(),
            self.tree.show(2),
            self.tree.median * 1e3 / prompt_tokens.max(1) as f64,
            self.tree_nodes
        );
    }
}

/// Times plain and calibrating prefill of `tokens` in turns (one warm-up
/// round, then `repeat`), the latter with the calibrated tree built after it
/// as a speculative request does.
fn calibration_cost(
    session: &mut coordgen::Session,
    tokens: &[u32],
    repeat: usize,
) -> Result<CalibrationCost> {
    let config = coordgen::spec::CalibrationConfig::default();
    let (mut plain, mut calibrated, mut tree_ms) = (Vec::new(), Vec::new(), Vec::new());
    let mut tree_nodes = 0;
    eprintln!("bench: plain and calibrating prefill in turns, 1 warm-up + {repeat} rounds");
    for round in 0..=repeat {
        session.reset();
        session.set_calibration(false);
        let started = Instant::now();
        session.set_tokens(tokens)?;
        let plain_ms = started.elapsed().as_secs_f64() * 1e3;
        session.reset();
        session.set_calibration(true);
        session.set_calibration_alternatives(config.top_k);
        let started = Instant::now();
        session.set_tokens(tokens)?;
        let building = Instant::now();
        let tree = coordgen::spec::CalibratedTree::build(
            session.history(),
            |i| session.alternatives(i),
            config,
        );
        let done = started.elapsed().as_secs_f64() * 1e3;
        let build_ms = building.elapsed().as_secs_f64() * 1e3;
        tree_nodes = tree.len();
        if round > 0 {
            plain.push(plain_ms);
            calibrated.push(done);
            tree_ms.push(build_ms);
        }
    }
    session.set_calibration(false);
    Ok(CalibrationCost {
        plain: Stats::of(&plain),
        calibrated: Stats::of(&calibrated),
        tree: Stats::of(&tree_ms),
        tree_nodes,
    })
}

/// One user message rendered with the chat template and tokenized, as
/// `coordgen run` does, checked to leave room for `max_tokens` more.
pub(crate) fn chat_prompt(
    engine: &Engine,
    user_message: impl Into<String>,
    max_tokens: usize,
) -> Result<Vec<u32>> {
    let rendered = engine.render_chat(&[ChatMessage::user(user_message)])?;
    let tokens = engine.tokenize_chat(&rendered)?;
    if tokens.len() + max_tokens > engine.context_length() {
        bail!(
            "the prompt ({} tokens) plus -n {max_tokens} exceeds the context length {} (--ctx-size)",
            tokens.len(),
            engine.context_length()
        );
    }
    Ok(tokens)
}

struct Run {
    prompt_tokens: usize,
    prefill_ms: f64,
    prefill_tps: f64,
    decode_tokens: usize,
    decode_ms: f64,
    decode_tps: f64,
}

fn context_mode(context: Vec<PathBuf>, args: &BenchArgs, repeat: usize) -> Result<(Value, String)> {
    let engine = load_engine(&args.model, args.json)?;
    let tokens = chat_prompt(
        &engine,
        crate::bench_timeline::context_message(&engine, args)?,
        args.max_tokens,
    )?;
    let params = GenerateParams {
        max_tokens: args.max_tokens,
        sampler: SamplerConfig::greedy(),
        stop: Vec::new(),
        ignore_end_of_generation: true,
    };
    eprintln!(
        "bench: {} prompt tokens + {} generated, 1 warm-up + {repeat} runs",
        tokens.len(),
        args.max_tokens
    );
    let mut runs = Vec::new();
    // One session, emptied before each run so prefill is measured in full
    // (as an app reuses a session; a new session per run would also count
    // the allocator's recycled, already-touched KV pages in the peak RSS).
    let mut session = engine.session();
    for i in 0..=repeat {
        session.reset();
        let g = session.generate(&tokens, &params, |_| true)?;
        if i == 0 {
            continue; // warm-up
        }
        let t = &g.timings;
        runs.push(Run {
            prompt_tokens: g.prompt_tokens,
            prefill_ms: t.prefill.as_secs_f64() * 1e3,
            prefill_tps: t.prefill_tokens_per_second(),
            decode_tokens: t.decode_tokens,
            decode_ms: t.decode.as_secs_f64() * 1e3,
            decode_tps: t.decode_tokens_per_second(),
        });
    }
    let calibration = if args.calibration {
        Some(calibration_cost(&mut session, &tokens, repeat)?)
    } else {
        None
    };
    let rss = peak_rss_bytes();
    let threads = engine.threads();
    let isa = engine.kernel_tier().name();
    let prefill = Stats::of(&runs.iter().map(|r| r.prefill_tps).collect::<Vec<_>>());
    let decode = Stats::of(&runs.iter().map(|r| r.decode_tps).collect::<Vec<_>>());
    let result = json!({
        "mode": "context",
        "model": engine.path().display().to_string(),
        "backend": engine.backend_description(),
        "threads": threads,
        "isa": isa,
        "context": context.iter().map(|p| p.display().to_string()).collect::<Vec<_>>(),
        "prompt_tokens": tokens.len(),
        "max_tokens": args.max_tokens,
        "runs": runs.iter().map(|r| json!({
            "prompt_tokens": r.prompt_tokens,
            "prefill_ms": r.prefill_ms,
            "prefill_tps": r.prefill_tps,
            "decode_tokens": r.decode_tokens,
            "decode_ms": r.decode_ms,
            "decode_tps": r.decode_tps,
        })).collect::<Vec<_>>(),
        "prefill_tps": prefill.json(),
        "decode_tps": decode.json(),
        "median_prefill_tps": prefill.median,
        "median_decode_tps": decode.median,
        "calibration": calibration.as_ref().map(CalibrationCost::json),
        "peak_rss_bytes": rss,
    });
    if !args.json {
        println!(
            "model: {} | {} | prompt {} tokens",
            engine.path().display(),
            engine.backend_description(),
            tokens.len()
        );
        println!("| run | prefill ms | prefill tok/s | decode tokens | decode ms | decode tok/s |");
        println!("|---|---|---|---|---|---|");
        for (i, r) in runs.iter().enumerate() {
            println!(
                "| {} | {:.1} | {:.1} | {} | {:.1} | {:.1} |",
                i + 1,
                r.prefill_ms,
                r.prefill_tps,
                r.decode_tokens,
                r.decode_ms,
                r.decode_tps
            );
        }
        println!(
            "| median | | {:.1} | | | {:.1} |",
            prefill.median, decode.median
        );
        println!(
            "prefill {} tok/s, decode {} tok/s (median [min-max]); peak RSS {}",
            prefill.show(1),
            decode.show(1),
            show_rss(rss)
        );
        if let Some(c) = &calibration {
            c.print(tokens.len());
        }
    }
    let decoded = runs.first().map_or(0, |r| r.decode_tokens);
    let panel = Panel {
        title: "tokens/s".to_string(),
        bars: vec![
            Bar {
                label: format!("prefill ({} tok)", tokens.len()),
                note: format!("{:.1}", prefill.median),
                stats: prefill,
            },
            Bar {
                label: format!("decode ({decoded} tok)"),
                note: format!("{:.1}", decode.median),
                stats: decode,
            },
        ],
        color: "#4e79a7",
    };
    let title = format!(
        "coordgen bench (context): {}, {threads} threads, {isa}, {repeat} runs",
        model_name(&engine)
    );
    Ok((result, svg_chart(&title, &[panel])))
}

// ---------------------------------------------------------------- chart

fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// A step near `range / 5` from 1, 2 or 5 times a power of ten.
fn nice_step(range: f64) -> f64 {
    if !(range.is_finite() && range > 0.0) {
        return 1.0;
    }
    let rough = range / 5.0;
    let power = 10f64.powf(rough.log10().floor());
    let unit = rough / power;
    let m = if unit < 1.5 {
        1.0
    } else if unit < 3.5 {
        2.0
    } else if unit < 7.5 {
        5.0
    } else {
        10.0
    };
    m * power
}

/// Panels stacked vertically; each bar is a median with min-max whiskers.
pub(crate) fn svg_chart(title: &str, panels: &[Panel]) -> String {
    let (w, panel_h, top, left, right, bottom) = (720.0, 300.0, 40.0, 64.0, 24.0, 40.0);
    let h = top + panels.len().max(1) as f64 * panel_h;
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(s, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = writeln!(
        s,
        r#"<text x="{}" y="24" text-anchor="middle" font-size="15">{}</text>"#,
        w / 2.0,
        xml_escape(title)
    );
    for (pi, panel) in panels.iter().enumerate() {
        let y0 = top + pi as f64 * panel_h + 24.0; // plot area top
        let y1 = top + (pi + 1) as f64 * panel_h - bottom; // plot area bottom (axis)
        let x0 = left;
        let x1 = w - right;
        let top_value = panel
            .bars
            .iter()
            .map(|b| b.stats.max.max(b.stats.median))
            .fold(0.0f64, f64::max);
        let step = nice_step(top_value * 1.15);
        let y_max = ((top_value * 1.15) / step).ceil().max(1.0) * step;
        let y_of = |v: f64| y1 - (y1 - y0) * (v / y_max).clamp(0.0, 1.0);
        let _ = writeln!(
            s,
            r#"<text x="{x0}" y="{:.1}" font-size="13">{}</text>"#,
            y0 - 8.0,
            xml_escape(&panel.title)
        );
        let mut tick = 0.0;
        while tick <= y_max + step * 0.01 {
            let y = y_of(tick);
            let _ = writeln!(
                s,
                r##"<line x1="{x0}" y1="{y:.1}" x2="{x1}" y2="{y:.1}" stroke="#ddd"/><text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"##,
                x0 - 6.0,
                y + 4.0,
                if step < 1.0 {
                    format!("{tick:.1}")
                } else {
                    format!("{tick:.0}")
                }
            );
            tick += step;
        }
        let n = panel.bars.len().max(1) as f64;
        let slot = (x1 - x0) / n;
        let bar_w = (slot * 0.6).min(80.0);
        for (bi, bar) in panel.bars.iter().enumerate() {
            let cx = x0 + slot * (bi as f64 + 0.5);
            let y = y_of(bar.stats.median);
            let _ = writeln!(
                s,
                r#"<rect x="{:.1}" y="{y:.1}" width="{bar_w:.1}" height="{:.1}" fill="{}"/>"#,
                cx - bar_w / 2.0,
                (y1 - y).max(0.0),
                panel.color
            );
            let (ylo, yhi) = (y_of(bar.stats.min), y_of(bar.stats.max));
            let cap = bar_w * 0.2;
            let _ = writeln!(
                s,
                r#"<path d="M{cx:.1} {ylo:.1}V{yhi:.1}M{:.1} {ylo:.1}H{:.1}M{:.1} {yhi:.1}H{:.1}" stroke="black" fill="none"/>"#,
                cx - cap,
                cx + cap,
                cx - cap,
                cx + cap
            );
            let _ = writeln!(
                s,
                r#"<text x="{cx:.1}" y="{:.1}" text-anchor="middle">{}</text>"#,
                yhi.min(y) - 5.0,
                xml_escape(&bar.note)
            );
            let _ = writeln!(
                s,
                r#"<text x="{cx:.1}" y="{:.1}" text-anchor="middle">{}</text>"#,
                y1 + 16.0,
                xml_escape(&bar.label)
            );
        }
        let _ = writeln!(
            s,
            r#"<line x1="{x0}" y1="{y1:.1}" x2="{x1}" y2="{y1:.1}" stroke="black"/><line x1="{x0}" y1="{y0:.1}" x2="{x0}" y2="{y1:.1}" stroke="black"/>"#
        );
    }
    s.push_str("</svg>\n");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stats_median_min_max() {
        let s = Stats::of(&[3.0, 1.0, 2.0]);
        assert_eq!((s.median, s.min, s.max), (2.0, 1.0, 3.0));
        let s = Stats::of(&[4.0, 1.0, 2.0, 3.0]);
        assert_eq!((s.median, s.min, s.max), (2.5, 1.0, 4.0));
        assert_eq!(s.show(1), "2.5 [1.0-4.0]");
    }

    #[test]
    fn chart_is_well_formed() {
        let panel = Panel {
            title: "t <&> s".into(),
            bars: vec![Bar {
                label: "pp512".into(),
                stats: Stats::of(&[1.0, 2.0, 3.0]),
                note: "2.0".into(),
            }],
            color: "#000",
        };
        let svg = svg_chart("x", &[panel]);
        assert!(svg.starts_with("<svg") && svg.ends_with("</svg>\n"));
        assert!(svg.contains("t &lt;&amp;&gt; s"));
        assert_eq!(nice_step(115.0), 20.0);
        assert_eq!(nice_step(0.0), 1.0);
    }
}
