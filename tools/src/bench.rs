//! `coordgen bench`: prefill and decode speed over a context, as a table,
//! JSON and an SVG chart.

use crate::common::{load_engine, user_message, ModelArgs};
use anyhow::{bail, Context, Result};
use clap::Args;
use coordgen::{ChatMessage, GenerateParams, SamplerConfig};
use std::fmt::Write as _;
use std::path::PathBuf;

#[derive(Args, Debug)]
pub struct BenchArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Context document(s) [default: tools/demo-context.md when present]
    #[arg(long, short = 'c', value_name = "FILE")]
    pub context: Vec<PathBuf>,
    /// The instruction after the context
    #[arg(
        long,
        short = 'p',
        value_name = "TEXT",
        default_value = "Summarize the document in a few sentences."
    )]
    pub prompt: String,
    /// Tokens to generate per run (greedy; end-of-generation is ignored so every run decodes the same count)
    #[arg(long, short = 'n', value_name = "N", default_value_t = 128)]
    pub max_tokens: usize,
    /// Measured runs (after one warm-up run)
    #[arg(long, value_name = "N", default_value_t = 3)]
    pub runs: usize,
    /// Print the results as one JSON object on stdout
    #[arg(long)]
    pub json: bool,
    /// Write the results as JSON to this file
    #[arg(long, value_name = "FILE")]
    pub json_out: Option<PathBuf>,
    /// Write an SVG bar chart of the runs
    #[arg(long, value_name = "FILE")]
    pub plot: Option<PathBuf>,
}

struct Run {
    prompt_tokens: usize,
    prefill_ms: f64,
    prefill_tps: f64,
    decode_tokens: usize,
    decode_ms: f64,
    decode_tps: f64,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    if v.is_empty() {
        0.0
    } else if v.len() % 2 == 1 {
        v[v.len() / 2]
    } else {
        (v[v.len() / 2 - 1] + v[v.len() / 2]) / 2.0
    }
}

pub fn bench(mut args: BenchArgs) -> Result<()> {
    if args.runs == 0 {
        bail!("--runs must be at least 1");
    }
    if args.context.is_empty() {
        let demo = PathBuf::from("tools/demo-context.md");
        if demo.is_file() {
            args.context.push(demo);
        }
    }
    let engine = load_engine(&args.model, args.json)?;
    let rendered = engine.render_chat(&[ChatMessage::user(user_message(
        &args.context,
        &args.prompt,
    )?)])?;
    let tokens = engine.tokenize_chat(&rendered)?;
    let params = GenerateParams {
        max_tokens: args.max_tokens,
        sampler: SamplerConfig::greedy(),
        stop: Vec::new(),
        ignore_end_of_generation: true,
    };
    let mut runs = Vec::new();
    for i in 0..=args.runs {
        // A fresh session each run, so prefill is measured in full.
        let mut session = engine.session();
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
    let med_prefill = median(runs.iter().map(|r| r.prefill_tps).collect());
    let med_decode = median(runs.iter().map(|r| r.decode_tps).collect());
    let result = serde_json::json!({
        "model": engine.path().display().to_string(),
        "backend": engine.backend_description(),
        "context": args.context.iter().map(|p| p.display().to_string()).collect::<Vec<_>>(),
        "prompt_tokens": tokens.len(),
        "max_tokens": args.max_tokens,
        "runs": runs.iter().map(|r| serde_json::json!({
            "prompt_tokens": r.prompt_tokens,
            "prefill_ms": r.prefill_ms,
            "prefill_tps": r.prefill_tps,
            "decode_tokens": r.decode_tokens,
            "decode_ms": r.decode_ms,
            "decode_tps": r.decode_tps,
        })).collect::<Vec<_>>(),
        "median_prefill_tps": med_prefill,
        "median_decode_tps": med_decode,
    });
    if args.json {
        println!("{result}");
    } else {
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
        println!("| median | | {med_prefill:.1} | | | {med_decode:.1} |");
    }
    if let Some(path) = &args.json_out {
        std::fs::write(path, serde_json::to_string_pretty(&result)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    if let Some(path) = &args.plot {
        std::fs::write(path, svg_chart(&runs))
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

/// Two bar groups (prefill and decode tokens/s), one bar per run.
fn svg_chart(runs: &[Run]) -> String {
    let (w, h, pad) = (640.0, 320.0, 48.0);
    let max = runs
        .iter()
        .flat_map(|r| [r.prefill_tps, r.decode_tps])
        .fold(1.0f64, f64::max)
        * 1.1;
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(s, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = writeln!(
        s,
        r#"<text x="{}" y="20" text-anchor="middle" font-size="14">coordgen bench: tokens/s per run</text>"#,
        w / 2.0
    );
    let groups = [("prefill", "#4e79a7"), ("decode", "#f28e2b")];
    let group_w = (w - 2.0 * pad) / 2.0;
    let bar_w = (group_w * 0.8 / runs.len().max(1) as f64).min(60.0);
    for (gi, (name, color)) in groups.iter().enumerate() {
        let x0 = pad + gi as f64 * group_w + group_w * 0.1;
        for (ri, r) in runs.iter().enumerate() {
            let v = if gi == 0 { r.prefill_tps } else { r.decode_tps };
            let bh = (h - 2.0 * pad) * v / max;
            let x = x0 + ri as f64 * bar_w;
            let y = h - pad - bh;
            let _ = writeln!(
                s,
                r#"<rect x="{x:.1}" y="{y:.1}" width="{:.1}" height="{bh:.1}" fill="{color}"/>"#,
                bar_w * 0.9
            );
            let _ = writeln!(
                s,
                r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">{v:.0}</text>"#,
                x + bar_w * 0.45,
                y - 4.0
            );
        }
        let _ = writeln!(
            s,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">{name}</text>"#,
            x0 + group_w * 0.4,
            h - pad + 18.0
        );
    }
    let _ = writeln!(
        s,
        r#"<line x1="{pad}" y1="{0}" x2="{1}" y2="{0}" stroke="black"/>"#,
        h - pad,
        w - pad
    );
    s.push_str("</svg>\n");
    s
}
