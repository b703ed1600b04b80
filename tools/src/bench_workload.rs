//! `coordgen bench --workload FILE.jsonl`: speculative decoding against plain
//! decoding over a Spec-Bench style prompt file.
//!
//! Each line of the file is one JSON object with `question_id`, `category`
//! and `turns` (the first turn is the user message). Every prompt is decoded
//! greedily with plain decoding first (the baseline, as `coordgen run --spec
//! none` does it), then with each drafter; the output tokens must equal the
//! baseline's (speculative decoding is lossless), and only decode time counts.

use crate::bench::{
    chat_prompt, model_name, peak_rss_bytes, show_rss, svg_chart, Bar, BenchArgs, Panel, Stats,
};
use crate::common::load_engine;
use crate::run::{spec_config, DraftingArg, SpecMethod};
use anyhow::{bail, Context, Result};
use clap::ValueEnum;
use coordgen::spec::Drafter;
use coordgen::{GenerateParams, Generation, SamplerConfig, Session, SpecConfig, SpecStats};
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::{json, Value};
use std::io::IsTerminal;
use std::path::Path;
use std::time::Duration;

/// Tokens each method decodes in the untimed warm-up.
const WARM_UP_TOKENS: usize = 16;

/// One prompt of the workload file.
#[derive(Debug, Clone, PartialEq)]
pub struct WorkloadPrompt {
    /// `question_id` as the file gives it (a number or a string).
    pub id: Value,
    pub category: String,
    /// The first turn: the user message.
    pub user_message: String,
}

impl WorkloadPrompt {
    fn id_text(&self) -> String {
        match &self.id {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        }
    }
}

/// Parses one line of the workload file (`line_number` counts from 1).
fn parse_prompt(line: &str, line_number: usize) -> Result<WorkloadPrompt> {
    let at = || format!("line {line_number}");
    let object: Value =
        serde_json::from_str(line).with_context(|| format!("{}: not a JSON object", at()))?;
    let id = match object.get("question_id") {
        Some(id @ (Value::Number(_) | Value::String(_))) => id.clone(),
        Some(other) => bail!(
            "{}: \"question_id\" must be a number or a string, not {other}",
            at()
        ),
        None => bail!("{}: no \"question_id\"", at()),
    };
    let category = object
        .get("category")
        .and_then(Value::as_str)
        .with_context(|| format!("{}: no \"category\" string", at()))?
        .to_string();
    let user_message = object
        .get("turns")
        .and_then(Value::as_array)
        .and_then(|turns| turns.first())
        .and_then(Value::as_str)
        .with_context(|| format!("{}: \"turns\" must be a list starting with a string", at()))?;
    if user_message.trim().is_empty() {
        bail!("{}: the first turn is empty", at());
    }
    Ok(WorkloadPrompt {
        id,
        category,
        user_message: user_message.to_string(),
    })
}

/// Parses a whole workload file's text; blank lines are skipped. With
/// `limit`, only the first `limit` prompts of each category are kept.
pub fn parse_workload(text: &str, limit: Option<usize>) -> Result<Vec<WorkloadPrompt>> {
    let mut prompts: Vec<WorkloadPrompt> = Vec::new();
    for (index, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let prompt = parse_prompt(line, index + 1)?;
        let in_category = prompts
            .iter()
            .filter(|p| p.category == prompt.category)
            .count();
        if limit.is_none_or(|limit| in_category < limit) {
            prompts.push(prompt);
        }
    }
    Ok(prompts)
}

/// Categories in the order they first appear.
fn categories(prompts: &[WorkloadPrompt]) -> Vec<String> {
    let mut names: Vec<String> = Vec::new();
    for p in prompts {
        if !names.contains(&p.category) {
            names.push(p.category.clone());
        }
    }
    names
}

fn method_name(method: SpecMethod) -> String {
    method
        .to_possible_value()
        .map_or_else(|| format!("{method:?}"), |v| v.get_name().to_string())
}

/// The methods to run: plain decoding first (the baseline), then each
/// requested drafter once, in the order given.
fn methods_in_order(requested: &[SpecMethod]) -> Vec<SpecMethod> {
    let mut methods = vec![SpecMethod::None];
    for &m in requested {
        if !methods.contains(&m) {
            methods.push(m);
        }
    }
    methods
}

/// A method with its drafter (none for plain decoding).
struct Decoder {
    method: SpecMethod,
    drafter: Option<Box<dyn Drafter>>,
    spec: SpecConfig,
}

impl Decoder {
    fn new(method: SpecMethod, verify_width: usize, drafting: DraftingArg) -> Result<Decoder> {
        Ok(Decoder {
            method,
            drafter: method.drafter(),
            spec: spec_config(method, verify_width, drafting)?,
        })
    }

    /// Decodes `prompt` as `coordgen run --spec` does. The session first
    /// holds exactly the prompt (`set_tokens` keeps its cached K/V from the
    /// previous method, recomputing only the last token, whose logits are
    /// bitwise those of a full prefill), so every method starts from the
    /// same state and the prefill stays out of the decode time.
    fn decode(
        &mut self,
        session: &mut Session,
        prompt: &[u32],
        params: &GenerateParams,
    ) -> Result<(Generation, Option<SpecStats>)> {
        Ok(match self.drafter.as_deref_mut() {
            None => (session.generate(prompt, params, |_| true)?, None),
            Some(drafter) => {
                let (generation, stats) =
                    session.generate_speculative(prompt, params, drafter, &self.spec, |_| true)?;
                (generation, Some(stats))
            }
        })
    }
}

/// One prompt decoded by one method.
struct Record {
    prompt: usize,
    method: SpecMethod,
    prompt_tokens: usize,
    tokens: usize,
    decode: Duration,
    spec: Option<SpecStats>,
    /// Where the tokens first differ from plain decoding's (`None`: equal).
    first_mismatch: Option<usize>,
}

impl Record {
    fn ms_per_token(&self) -> f64 {
        per_token_ms(self.decode, self.tokens)
    }
}

fn per_token_ms(time: Duration, tokens: usize) -> f64 {
    time.as_secs_f64() * 1e3 / tokens.max(1) as f64
}

/// The first index where `tokens` and `baseline` differ, counting a length
/// difference as a difference at the shorter one's end.
fn first_difference(tokens: &[u32], baseline: &[u32]) -> Option<usize> {
    let common = tokens
        .iter()
        .zip(baseline)
        .take_while(|(a, b)| a == b)
        .count();
    (common < tokens.len().max(baseline.len())).then_some(common)
}

/// A method's records over a set of prompts, summed.
#[derive(Default)]
struct Totals {
    prompts: usize,
    tokens: usize,
    decode: Duration,
    mismatches: usize,
    /// Summed stats of the speculative methods (`None` for plain decoding).
    spec: Option<SpecStats>,
}

impl Totals {
    fn of<'r>(records: impl Iterator<Item = &'r Record>) -> Totals {
        let mut t = Totals::default();
        for r in records {
            t.prompts += 1;
            t.tokens += r.tokens;
            t.decode += r.decode;
            t.mismatches += usize::from(r.first_mismatch.is_some());
            if let Some(s) = &r.spec {
                let sum = t.spec.get_or_insert_with(SpecStats::default);
                sum.steps += s.steps;
                sum.drafted += s.drafted;
                sum.accepted += s.accepted;
                sum.draft += s.draft;
                sum.verify += s.verify;
                sum.calibration += s.calibration;
            }
        }
        t
    }

    fn ms_per_token(&self) -> f64 {
        per_token_ms(self.decode, self.tokens)
    }

    /// Drafting's share of drafting plus verify passes.
    fn draft_share(&self) -> Option<f64> {
        let s = self.spec.as_ref()?;
        let total = (s.draft + s.verify).as_secs_f64();
        (total > 0.0).then(|| s.draft.as_secs_f64() / total)
    }

    fn speedup_over(&self, baseline: &Totals) -> f64 {
        let ms = self.ms_per_token();
        if ms > 0.0 {
            baseline.ms_per_token() / ms
        } else {
            0.0
        }
    }
}

/// What `bench` prints, writes and exits with.
pub struct WorkloadOutcome {
    pub result: Value,
    pub chart: String,
    /// Prompts where some method's tokens differ from plain decoding's.
    pub mismatched_prompts: usize,
}

fn progress_bar(total: usize) -> ProgressBar {
    if !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(total as u64);
    bar.set_style(
        ProgressStyle::with_template("{msg:>24} [{bar:30}] {pos}/{len} decodes, {elapsed}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    bar
}

pub fn workload_mode(args: &BenchArgs, path: &Path) -> Result<WorkloadOutcome> {
    if args.limit == Some(0) {
        bail!("--limit must be at least 1 (prompts per category)");
    }
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading the workload {}", path.display()))?;
    let prompts = parse_workload(&text, args.limit)
        .with_context(|| format!("in the workload {}", path.display()))?;
    if prompts.is_empty() {
        bail!("the workload {} holds no prompts", path.display());
    }
    let methods = methods_in_order(&args.spec);
    let engine = load_engine(&args.model, args.json)?;
    let widest = engine.max_verify_width();
    if args.verify_width > widest {
        bail!(
            "--verify-width {} exceeds the widest verify bucket ({widest})",
            args.verify_width
        );
    }
    let params = GenerateParams {
        max_tokens: args.max_tokens,
        sampler: SamplerConfig::greedy(),
        stop: Vec::new(),
        ignore_end_of_generation: false,
    };
    let prompt_tokens = prompts
        .iter()
        .map(|p| {
            chat_prompt(&engine, p.user_message.as_str(), args.max_tokens)
                .with_context(|| format!("prompt {} ({})", p.id_text(), p.category))
        })
        .collect::<Result<Vec<_>>>()?;
    let mut decoders: Vec<Decoder> = methods
        .iter()
        .map(|&m| Decoder::new(m, args.verify_width, args.drafting))
        .collect::<Result<_>>()?;
    let mut session = engine.session();

    eprintln!(
        "bench: {} prompts x {} methods ({}), -n {}, verify width {}; 1 warm-up of each method",
        prompts.len(),
        methods.len(),
        methods
            .iter()
            .map(|&m| method_name(m))
            .collect::<Vec<_>>()
            .join(", "),
        args.max_tokens,
        args.verify_width
    );
    let warm_up = GenerateParams {
        max_tokens: args.max_tokens.min(WARM_UP_TOKENS),
        ..params.clone()
    };
    for decoder in &mut decoders {
        decoder
            .decode(&mut session, &prompt_tokens[0], &warm_up)
            .with_context(|| format!("warm-up with {}", method_name(decoder.method)))?;
    }

    let records = decode_all(
        &mut session,
        &mut decoders,
        &prompts,
        &prompt_tokens,
        &params,
    )?;

    let report = Report {
        prompts: &prompts,
        records: &records,
        methods: &methods,
    };
    let rss = peak_rss_bytes();
    let threads = engine.threads();
    let isa = engine.kernel_tier().name();
    let mismatched_prompts = report.mismatched_prompts();
    if !args.json {
        println!(
            "model: {} | {} | workload {} | -n {} | verify width {}",
            engine.path().display(),
            engine.backend_description(),
            path.display(),
            args.max_tokens,
            args.verify_width
        );
        for category in categories(&prompts) {
            println!();
            report.print_table(&category, Some(&category));
        }
        println!();
        report.print_table("all categories", None);
        println!();
        println!("peak RSS {}", show_rss(rss));
    }
    report.print_mismatches(args.json);

    let category_summaries: Vec<Value> = categories(&prompts)
        .iter()
        .map(|c| report.summary_json(c, Some(c)))
        .collect();
    let result = json!({
        "mode": "workload",
        "model": engine.path().display().to_string(),
        "backend": engine.backend_description(),
        "threads": threads,
        "isa": isa,
        "workload": path.display().to_string(),
        "limit": args.limit,
        "max_tokens": args.max_tokens,
        "verify_width": args.verify_width,
        "drafting": format!("{:?}", args.drafting).to_lowercase(),
        "methods": methods.iter().map(|&m| method_name(m)).collect::<Vec<_>>(),
        "prompts": prompts.len(),
        "mismatched_prompts": mismatched_prompts,
        "records": report.records_json(),
        "categories": category_summaries,
        "overall": report.summary_json("all", None),
        "peak_rss_bytes": rss,
    });
    let title = format!(
        "{}, {threads} threads, {isa}, -n {}, verify width {}",
        model_name(&engine),
        args.max_tokens,
        args.verify_width
    );
    let chart = svg_chart(&title, &report.panels());
    Ok(WorkloadOutcome {
        result,
        chart,
        mismatched_prompts,
    })
}

/// Decodes every prompt with every method, plain decoding first, and
/// compares each method's tokens with plain decoding's.
fn decode_all(
    session: &mut Session,
    decoders: &mut [Decoder],
    prompts: &[WorkloadPrompt],
    prompt_tokens: &[Vec<u32>],
    params: &GenerateParams,
) -> Result<Vec<Record>> {
    let bar = progress_bar(prompts.len() * decoders.len());
    let mut records = Vec::with_capacity(prompts.len() * decoders.len());
    for (index, (prompt, tokens)) in prompts.iter().zip(prompt_tokens).enumerate() {
        let mut baseline: Vec<u32> = Vec::new();
        for decoder in decoders.iter_mut() {
            let name = method_name(decoder.method);
            bar.set_message(format!("{} {} {name}", prompt.category, prompt.id_text()));
            let (generation, spec) = decoder
                .decode(session, tokens, params)
                .with_context(|| format!("prompt {} with {name}", prompt.id_text()))?;
            let first_mismatch = if decoder.method == SpecMethod::None {
                baseline = generation.tokens.clone();
                None
            } else {
                first_difference(&generation.tokens, &baseline)
            };
            records.push(Record {
                prompt: index,
                method: decoder.method,
                prompt_tokens: tokens.len(),
                tokens: generation.tokens.len(),
                decode: generation.timings.decode,
                spec,
                first_mismatch,
            });
            bar.inc(1);
        }
    }
    bar.finish_and_clear();
    Ok(records)
}

/// `object` with the speculative counters added: `steps`, `drafted`,
/// `accepted`, `draft_ms` and `verify_ms` (null for plain decoding).
fn with_spec_fields(mut object: Value, spec: Option<&SpecStats>) -> Value {
    if let Some(fields) = object.as_object_mut() {
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        fields.insert("steps".into(), json!(spec.map(|s| s.steps)));
        fields.insert("drafted".into(), json!(spec.map(|s| s.drafted)));
        fields.insert("accepted".into(), json!(spec.map(|s| s.accepted)));
        fields.insert("draft_ms".into(), json!(spec.map(|s| ms(s.draft))));
        fields.insert("verify_ms".into(), json!(spec.map(|s| ms(s.verify))));
    }
    object
}

/// Tables, JSON and chart panels from the records.
struct Report<'a> {
    prompts: &'a [WorkloadPrompt],
    records: &'a [Record],
    methods: &'a [SpecMethod],
}

impl Report<'_> {
    /// Totals of `method` over `category` (`None`: every category).
    fn totals(&self, method: SpecMethod, category: Option<&str>) -> Totals {
        Totals::of(self.records.iter().filter(|r| {
            r.method == method && category.is_none_or(|c| self.prompts[r.prompt].category == c)
        }))
    }

    fn mismatched_prompts(&self) -> usize {
        (0..self.prompts.len())
            .filter(|&i| {
                self.records
                    .iter()
                    .any(|r| r.prompt == i && r.first_mismatch.is_some())
            })
            .count()
    }

    fn print_table(&self, heading: &str, category: Option<&str>) {
        let baseline = self.totals(SpecMethod::None, category);
        println!("{heading} ({} prompts):", baseline.prompts);
        println!();
        println!(
            "| method | tokens | decode ms/token | tokens/step | accepted/step | acceptance | draft share | speedup | mismatches |"
        );
        println!("|---|---|---|---|---|---|---|---|---|");
        for &method in self.methods {
            let t = self.totals(method, category);
            let (tokens_per_step, accepted, acceptance) = match &t.spec {
                Some(s) => (
                    format!("{:.2}", 1.0 + s.mean_accepted()),
                    format!("{:.2}", s.mean_accepted()),
                    format!("{:.1} %", 100.0 * s.acceptance_rate()),
                ),
                None => ("1.00".into(), "-".into(), "-".into()),
            };
            let share = t
                .draft_share()
                .map_or_else(|| "-".to_string(), |s| format!("{:.2} %", 100.0 * s));
            println!(
                "| {} | {} | {:.3} | {tokens_per_step} | {accepted} | {acceptance} | {share} | {:.2}x | {} |",
                method_name(method),
                t.tokens,
                t.ms_per_token(),
                t.speedup_over(&baseline),
                t.mismatches
            );
        }
    }

    /// Prints the mismatch count prominently (and each mismatch), to stdout
    /// with the tables or to stderr beside JSON.
    fn print_mismatches(&self, to_stderr: bool) {
        let say = |line: String| {
            if to_stderr {
                eprintln!("{line}");
            } else {
                println!("{line}");
            }
        };
        let mismatched = self.mismatched_prompts();
        if mismatched == 0 {
            if !to_stderr {
                say(format!(
                    "mismatches against plain decoding: 0 of {} prompts (every method's tokens equal none's)",
                    self.prompts.len()
                ));
            }
            return;
        }
        say(format!(
            "MISMATCH: {mismatched} of {} prompts decoded differently from plain decoding",
            self.prompts.len()
        ));
        for r in self.records {
            if let Some(at) = r.first_mismatch {
                let p = &self.prompts[r.prompt];
                say(format!(
                    "  prompt {} ({}), {}: tokens differ from none's at output token {at}",
                    p.id_text(),
                    p.category,
                    method_name(r.method)
                ));
            }
        }
    }

    fn records_json(&self) -> Vec<Value> {
        self.records
            .iter()
            .map(|r| {
                let p = &self.prompts[r.prompt];
                let record = json!({
                    "id": p.id,
                    "category": p.category,
                    "method": method_name(r.method),
                    "prompt_tokens": r.prompt_tokens,
                    "tokens": r.tokens,
                    "decode_ms": r.decode.as_secs_f64() * 1e3,
                    "ms_per_token": r.ms_per_token(),
                    "matches_none": r.first_mismatch.is_none(),
                    "first_mismatch": r.first_mismatch,
                });
                with_spec_fields(record, r.spec.as_ref())
            })
            .collect()
    }

    fn summary_json(&self, name: &str, category: Option<&str>) -> Value {
        let baseline = self.totals(SpecMethod::None, category);
        let methods: Vec<Value> = self
            .methods
            .iter()
            .map(|&method| {
                let t = self.totals(method, category);
                let spec = t.spec.as_ref();
                let summary = json!({
                    "method": method_name(method),
                    "prompts": t.prompts,
                    "tokens": t.tokens,
                    "decode_ms": t.decode.as_secs_f64() * 1e3,
                    "ms_per_token": t.ms_per_token(),
                    "mean_accepted": spec.map(SpecStats::mean_accepted),
                    "tokens_per_step": spec.map(|s| 1.0 + s.mean_accepted()),
                    "acceptance_rate": spec.map(SpecStats::acceptance_rate),
                    "draft_share": t.draft_share(),
                    "speedup": t.speedup_over(&baseline),
                    "mismatches": t.mismatches,
                });
                with_spec_fields(summary, spec)
            })
            .collect();
        json!({ "category": name, "prompts": baseline.prompts, "methods": methods })
    }

    /// Per-prompt speedups of `method` over plain decoding in `category`.
    fn prompt_speedups(&self, method: SpecMethod, category: Option<&str>) -> Vec<f64> {
        let of = |m: SpecMethod, prompt: usize| {
            self.records
                .iter()
                .find(|r| r.method == m && r.prompt == prompt)
                .map(Record::ms_per_token)
        };
        (0..self.prompts.len())
            .filter(|&i| category.is_none_or(|c| self.prompts[i].category == c))
            .filter_map(|i| match (of(SpecMethod::None, i), of(method, i)) {
                (Some(base), Some(ms)) if ms > 0.0 => Some(base / ms),
                _ => None,
            })
            .collect()
    }

    /// One panel per category and one for all: each method's speedup over
    /// plain decoding (total time / total tokens), whiskers at the
    /// per-prompt minimum and maximum.
    fn panels(&self) -> Vec<Panel> {
        let mut scopes: Vec<(String, Option<String>)> = categories(self.prompts)
            .into_iter()
            .map(|c| (c.clone(), Some(c)))
            .collect();
        scopes.push(("all categories".into(), None));
        scopes
            .iter()
            .map(|(name, category)| {
                let category = category.as_deref();
                let baseline = self.totals(SpecMethod::None, category);
                let bars = self
                    .methods
                    .iter()
                    .map(|&method| {
                        let speedup = self.totals(method, category).speedup_over(&baseline);
                        let per_prompt = Stats::of(&self.prompt_speedups(method, category));
                        Bar {
                            label: method_name(method),
                            note: format!("{speedup:.2}x"),
                            stats: Stats {
                                median: speedup,
                                ..per_prompt
                            },
                        }
                    })
                    .collect();
                Panel {
                    title: format!(
                        "{name} ({} prompts): speedup over none; whiskers: per-prompt min-max",
                        baseline.prompts
                    ),
                    bars,
                    color: "#f28e2b",
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_spec_bench_lines_and_limits_per_category() {
        let text = concat!(
            r#"{"question_id": 1, "category": "summarization", "turns": ["Summarize: a", "more"], "reference": ["x"]}"#,
            "\n\n",
            r#"{"question_id": "b", "category": "rag", "turns": ["passage\nquestion?"]}"#,
            "\n",
            r#"{"question_id": 3, "category": "summarization", "turns": ["Summarize: c"]}"#,
            "\n",
        );
        let all = parse_workload(text, None).expect("valid workload");
        assert_eq!(all.len(), 3);
        assert_eq!(all[0].user_message, "Summarize: a");
        assert_eq!(all[1].id_text(), "b");
        assert_eq!(categories(&all), ["summarization", "rag"]);
        let limited = parse_workload(text, Some(1)).expect("valid workload");
        let ids: Vec<String> = limited.iter().map(WorkloadPrompt::id_text).collect();
        assert_eq!(ids, ["1", "b"]);
    }

    #[test]
    fn malformed_lines_name_their_line_number() {
        let cases = [
            (
                "{\"question_id\": 1, \"category\": \"rag\", \"turns\": [\"q\"]}\nnot json",
                "line 2",
            ),
            (
                "\n{\"question_id\": 1, \"turns\": [\"q\"]}",
                "line 2: no \"category\"",
            ),
            (
                "{\"question_id\": 1, \"category\": \"rag\", \"turns\": []}",
                "line 1: \"turns\"",
            ),
            (
                "{\"category\": \"rag\", \"turns\": [\"q\"]}",
                "line 1: no \"question_id\"",
            ),
            (
                "{\"question_id\": 1, \"category\": \"rag\", \"turns\": [\"  \"]}",
                "line 1: the first turn is empty",
            ),
        ];
        for (text, expected) in cases {
            let error = parse_workload(text, None).expect_err(text);
            let message = format!("{error:#}");
            assert!(message.contains(expected), "{message:?} lacks {expected:?}");
        }
    }

    #[test]
    fn plain_decoding_runs_first_and_once() {
        use SpecMethod::{None as Plain, Pld, Sam};
        assert_eq!(methods_in_order(&[Sam, Plain, Pld, Sam]), [Plain, Sam, Pld]);
        assert_eq!(methods_in_order(&[]), [Plain]);
    }

    #[test]
    fn first_difference_counts_length_differences() {
        assert_eq!(first_difference(&[1, 2, 3], &[1, 2, 3]), None);
        assert_eq!(first_difference(&[1, 9, 3], &[1, 2, 3]), Some(1));
        assert_eq!(first_difference(&[1, 2], &[1, 2, 3]), Some(2));
        assert_eq!(first_difference(&[], &[]), None);
    }

    #[test]
    fn totals_give_speedup_and_draft_share() {
        let record = |method, ms: u64, tokens, spec| Record {
            prompt: 0,
            method,
            prompt_tokens: 10,
            tokens,
            decode: Duration::from_millis(ms),
            spec,
            first_mismatch: None,
        };
        let plain = [record(SpecMethod::None, 200, 100, None)];
        let stats = SpecStats {
            steps: 40,
            drafted: 120,
            accepted: 60,
            draft: Duration::from_millis(10),
            verify: Duration::from_millis(90),
            ..SpecStats::default()
        };
        let spec = [record(SpecMethod::Sam, 100, 100, Some(stats))];
        let (base, fast) = (Totals::of(plain.iter()), Totals::of(spec.iter()));
        assert_eq!(base.ms_per_token(), 2.0);
        assert_eq!(fast.speedup_over(&base), 2.0);
        assert_eq!(base.draft_share(), None);
        assert!((fast.draft_share().unwrap_or(0.0) - 0.1).abs() < 1e-12);
        assert_eq!(fast.spec.map(|s| s.mean_accepted()), Some(1.5));
    }
}
