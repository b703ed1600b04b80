//! `coordgen bench --timeline FILE`: one request under each graph-switching
//! schedule (naive switch, progressive, both graphs resident), recorded and
//! drawn as a Gantt chart side by side.
//!
//! With several schedules, each runs in a process of its own (this program
//! again, with one `--switching`), so that each peak RSS is that schedule's.

use crate::bench::{chat_prompt, peak_rss_bytes, BenchArgs};
use crate::common::{load_engine, user_message};
use anyhow::{bail, Context, Result};
use coordgen::schedule::{self, Event, Schedule};
use coordgen::{GenerateParams, SamplerConfig, Switching};
use serde_json::{json, Value};

/// Set in the child processes of a multi-schedule timeline.
const CHILD: &str = "COORDGEN_TIMELINE_CHILD";

/// The first `n` tokens of the context, as text (for a context of a chosen
/// length).
fn cut_context(engine: &coordgen::Engine, text: &str, n: usize) -> Result<String> {
    let tokens = engine.tokenizer().encode(text, false, false)?;
    if tokens.len() < n {
        bail!(
            "the context has {} tokens, fewer than --context-tokens {n}",
            tokens.len()
        );
    }
    Ok(engine.tokenizer().decode(&tokens[..n])?)
}

/// The user message of context and timeline modes: the context files
/// (cut to `--context-tokens`) and the instruction.
pub(crate) fn context_message(engine: &coordgen::Engine, args: &BenchArgs) -> Result<String> {
    let files = args.context_files();
    match args.context_tokens {
        None => user_message(&files, &args.prompt),
        Some(_) if files.is_empty() => {
            bail!("--context-tokens cuts a context: give one with --context FILE")
        }
        Some(n) => {
            let mut text = String::new();
            for f in &files {
                text += &std::fs::read_to_string(f)
                    .with_context(|| format!("reading {}", f.display()))?;
                text += "\n\n";
            }
            Ok(format!(
                "{}\n\n{}",
                cut_context(engine, &text, n)?,
                args.prompt
            ))
        }
    }
}

fn schedule_name(mode: Switching) -> &'static str {
    match mode {
        Switching::Naive => "naive",
        Switching::Progressive => "progressive",
        Switching::BothResident => "both resident",
    }
}

/// This program's arguments without the ones a child gets anew.
fn child_args(mode: Switching, json_out: &std::path::Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let takes_value = ["--switching", "--json-out", "--timeline", "--plot"];
        if takes_value.contains(&a.as_str()) {
            args.next();
            continue;
        }
        if takes_value.iter().any(|f| a.starts_with(&format!("{f}="))) || a == "--json" {
            continue;
        }
        out.push(a);
    }
    out.extend([
        "--switching".to_string(),
        mode.name().to_string(),
        "--json-out".to_string(),
        json_out.display().to_string(),
        "--timeline".to_string(),
        json_out.with_extension("svg").display().to_string(),
        "--json".to_string(),
    ]);
    out
}

pub fn timeline_mode(args: &BenchArgs, svg_path: &std::path::Path) -> Result<(Value, String)> {
    if args.switching.is_empty() {
        bail!("--switching needs at least one schedule");
    }
    if args.switching.len() > 1 && std::env::var_os(CHILD).is_none() {
        return across_processes(args, svg_path);
    }
    let engine = load_engine(&args.model, args.json)?;
    let tokens = chat_prompt(&engine, context_message(&engine, args)?, args.max_tokens)?;
    let params = GenerateParams {
        max_tokens: args.max_tokens,
        sampler: SamplerConfig::greedy(),
        stop: Vec::new(),
        ignore_end_of_generation: true,
    };
    // Measured (or read from the cache entry) before any recording: the
    // progressive schedule plans with these.
    let profile = engine.switch_profile()?;
    if !args.json {
        eprintln!(
            "timeline: {} prompt tokens, {} generated; per-block costs (ms):",
            tokens.len(),
            args.max_tokens
        );
        eprintln!("  block   load G2      G1 run      G2 run");
        for (b, c) in profile.iter().enumerate() {
            eprintln!(
                "  {b:>5} {:>9.1} {:>11.1} {:>11.1}",
                c.load_g2_ms, c.g1_ms, c.g2_ms
            );
        }
    }
    let mut runs = Vec::new();
    for &mode in &args.switching {
        engine.set_switching(mode, None)?;
        // Start where a fresh request starts: every block on G1 (an earlier
        // run leaves them on G2).
        if mode != Switching::BothResident {
            engine.restore_prefill_graphs()?;
        }
        // The session first: its KV cache allocation is not the schedule's.
        let mut session = engine.session();
        engine.start_timeline()?;
        let g = session.generate(&tokens, &params, |_| true)?;
        let timeline = engine.take_timeline()?;
        let s = schedule::from_events(schedule_name(mode), timeline.events);
        let first_pass = s
            .events
            .iter()
            .find(|e| matches!(e, Event::Pass { .. }))
            .map(Event::start_ms);
        runs.push(json!({
            "schedule": mode.name(),
            "prefill_ms": g.timings.prefill.as_secs_f64() * 1e3,
            "stall_ms": s.stall_ms,
            "prefill_end_ms": s.prefill_end_ms,
            "first_decode_ms": first_pass,
            "decode_ms_per_token": g.timings.decode.as_secs_f64() * 1e3 / g.timings.decode_tokens.max(1) as f64,
            "peak_resident_graph_bytes": timeline.peak_resident_graph_bytes,
            "residency": engine.residency()?.iter().map(|&(g1, g2)| json!({"g1": g1, "g2": g2})).collect::<Vec<_>>(),
            "tokens": g.tokens,
            "events": s.events,
        }));
    }
    // One process, one peak: meaningful per schedule only when it ran alone.
    let peak = peak_rss_bytes();
    if args.switching.len() == 1 {
        if let Some(run) = runs.first_mut() {
            run["peak_rss_bytes"] = json!(peak);
        }
    }
    let head = json!({
        "model": engine.path().display().to_string(),
        "backend": engine.backend_description(),
        "accelerator": engine.accelerator_report(),
        "prompt_tokens": tokens.len(),
        "max_tokens": args.max_tokens,
        "block_costs": profile,
    });
    finish(args, svg_path, head, runs, peak)
}

/// Runs each schedule in a child process and merges their results.
fn across_processes(args: &BenchArgs, svg_path: &std::path::Path) -> Result<(Value, String)> {
    let exe = std::env::current_exe().context("finding this program")?;
    let dir = std::env::temp_dir().join(format!("coordgen-timeline-{}", std::process::id()));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut head = Value::Null;
    let mut runs = Vec::new();
    for &mode in &args.switching {
        if !args.json {
            eprintln!("timeline: {} schedule, in its own process", mode.name());
        }
        let out = dir.join(format!("{}.json", mode.name()));
        let status = std::process::Command::new(&exe)
            .args(child_args(mode, &out))
            .env(CHILD, "1")
            .stdout(std::process::Stdio::null())
            .status()
            .context("running a schedule's process")?;
        if !status.success() {
            bail!("the {} schedule's run failed ({status})", mode.name());
        }
        let text =
            std::fs::read_to_string(&out).with_context(|| format!("reading {}", out.display()))?;
        let mut result: Value = serde_json::from_str(&text)?;
        if let Some(list) = result["runs"].as_array_mut() {
            runs.append(list);
        }
        if head.is_null() {
            head = json!({
                "model": result["model"],
                "backend": result["backend"],
                "accelerator": result["accelerator"],
                "prompt_tokens": result["prompt_tokens"],
                "max_tokens": result["max_tokens"],
                "block_costs": result["block_costs"],
            });
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    let peak = runs
        .iter()
        .find(|r| r["schedule"] == "progressive")
        .or_else(|| runs.first())
        .and_then(|r| r["peak_rss_bytes"].as_u64());
    finish(args, svg_path, head, runs, peak)
}

/// Checks the runs agree, draws the timeline, prints the table.
fn finish(
    args: &BenchArgs,
    svg_path: &std::path::Path,
    head: Value,
    runs: Vec<Value>,
    peak: Option<u64>,
) -> Result<(Value, String)> {
    if runs.windows(2).any(|w| w[0]["tokens"] != w[1]["tokens"]) {
        bail!("the schedules generated different tokens");
    }
    let schedules: Vec<Schedule> = runs
        .iter()
        .map(|r| {
            let events: Vec<Event> =
                serde_json::from_value(r["events"].clone()).unwrap_or_default();
            let mode = r["schedule"]
                .as_str()
                .and_then(Switching::parse)
                .unwrap_or_default();
            schedule::from_events(schedule_name(mode), events)
        })
        .collect();
    let refs: Vec<&Schedule> = schedules.iter().collect();
    let title = format!(
        "{} prompt tokens, {} generated; {}",
        head["prompt_tokens"],
        head["max_tokens"],
        head["accelerator"]["device"]
            .as_str()
            .map_or("cpu".to_string(), |d| format!("qnn on {d}"))
    );
    let svg = schedule::timeline_svg(&title, &refs);
    std::fs::write(svg_path, &svg).with_context(|| format!("writing {}", svg_path.display()))?;
    let stall = |name: &str| {
        runs.iter()
            .find(|r| r["schedule"] == name)
            .and_then(|r| r["stall_ms"].as_f64())
    };
    if !args.json {
        println!(
            "\n{:<12} {:>11} {:>9} {:>15} {:>13} {:>15} {:>9}",
            "schedule",
            "prefill ms",
            "stall ms",
            "first decode ms",
            "decode ms/tok",
            "graphs resident",
            "peak RSS"
        );
        for r in &runs {
            let mb = |v: &Value| {
                v.as_u64()
                    .map_or("-".to_string(), |b| format!("{:.0} MB", b as f64 / 1e6))
            };
            println!(
                "{:<12} {:>11.1} {:>9.1} {:>15.1} {:>13.1} {:>15} {:>9}",
                r["schedule"].as_str().unwrap_or(""),
                r["prefill_ms"].as_f64().unwrap_or(0.0),
                r["stall_ms"].as_f64().unwrap_or(0.0),
                r["first_decode_ms"].as_f64().unwrap_or(f64::NAN),
                r["decode_ms_per_token"].as_f64().unwrap_or(0.0),
                mb(&r["peak_resident_graph_bytes"]),
                mb(&r["peak_rss_bytes"]),
            );
        }
        if let (Some(n), Some(p)) = (stall("naive"), stall("progressive")) {
            println!(
                "\nprogressive stall / naive stall: {p:.1} / {n:.1} ms = {:.1}%",
                if n > 0.0 { 100.0 * p / n } else { 0.0 }
            );
        }
        println!("timeline: {}", svg_path.display());
    }
    let mut result = json!({
        "mode": "timeline",
        "naive_stall_ms": stall("naive"),
        "progressive_stall_ms": stall("progressive"),
        "peak_rss_bytes": peak,
        "runs": runs,
        "timeline_svg": svg_path.display().to_string(),
    });
    if let (Some(out), Some(h)) = (result.as_object_mut(), head.as_object()) {
        for (k, v) in h {
            out.insert(k.clone(), v.clone());
        }
    }
    Ok((result, svg))
}
