//! `coordgen bench` end to end on the default model, at tiny sizes: the
//! synthetic modes print one parseable JSON object with the documented keys,
//! and bad sizes are clear errors (not panics).

use serde_json::Value;
use std::process::{Command, Output};

fn coordgen(args: &[&str]) -> Option<Output> {
    let model = coordgen_tests::default_model()?;
    let output = Command::new(env!("CARGO_BIN_EXE_coordgen"))
        .arg("bench")
        .args([
            "--model",
            model.to_str()?,
            "--ctx-size",
            "64",
            "--threads",
            "1",
        ])
        .args(args)
        .output()
        .expect("running coordgen");
    Some(output)
}

fn json_of(output: &Output) -> Value {
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "coordgen failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("{e}: {stdout:?}"))
}

fn assert_stats(v: &Value, key: &str) {
    let s = &v[key];
    let (median, min, max) = (
        s["median"].as_f64().unwrap_or_else(|| panic!("{key}: {s}")),
        s["min"].as_f64().unwrap(),
        s["max"].as_f64().unwrap(),
    );
    assert!(min > 0.0 && min <= median && median <= max, "{key}: {s}");
}

#[test]
fn prefill_and_decode_json() {
    let Some(out) = coordgen(&[
        "--prefill",
        "16",
        "--decode",
        "4",
        "--repeat",
        "1",
        "--json",
    ]) else {
        return;
    };
    let v = json_of(&out);
    assert_stats(&v, "prefill_tps");
    assert_stats(&v, "decode_tps");
    assert_eq!(v["threads"], 1);
    assert!(v["isa"].as_str().is_some_and(|s| !s.is_empty()), "{v}");
    assert_eq!(v["prefill_tokens"], 16);
    assert_eq!(v["decode_tokens"], 4);
    if cfg!(target_os = "linux") {
        assert!(v["peak_rss_bytes"].as_u64().is_some_and(|b| b > 0), "{v}");
    }
}

#[test]
fn verify_widths_json() {
    let Some(out) = coordgen(&[
        "--verify-widths",
        "2,1",
        "--depth",
        "8",
        "--repeat",
        "1",
        "--json",
    ]) else {
        return;
    };
    let v = json_of(&out);
    assert_eq!(v["depth"], 8);
    assert!(
        v["prefill_tps"].is_null() && v["decode_tps"].is_null(),
        "{v}"
    );
    let widths = v["widths"].as_array().expect("widths");
    let listed: Vec<u64> = widths
        .iter()
        .map(|w| w["width"].as_u64().unwrap())
        .collect();
    assert_eq!(listed, [1, 2]);
    assert_stats(&widths[1], "ms");
    assert_eq!(widths[0]["relative"], 1.0);
    assert!(v["isa"].is_string() && v["threads"] == 1, "{v}");
}

#[test]
fn too_deep_is_a_clear_error() {
    let Some(out) = coordgen(&["--verify-widths", "1,8", "--depth", "60", "--json"]) else {
        return;
    };
    assert!(!out.status.success());
    assert!(out.stdout.is_empty());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("error:") && stderr.contains("68") && !stderr.contains("panicked"),
        "{stderr}"
    );
}

#[test]
fn the_timeline_mode_records_each_schedule_and_draws_them() {
    let Some(model) = coordgen_tests::default_model() else {
        return;
    };
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("timeline");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let svg = dir.join("switch.svg");
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_coordgen"))
        .args([
            "bench",
            "--model",
            model.to_str().unwrap(),
            "--threads",
            "1",
        ])
        .arg("--context")
        .arg(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("demo-context.md"))
        .args(["--context-tokens", "64", "-n", "2", "--json"])
        .args(["--switching", "naive,progressive"])
        .arg("--timeline")
        .arg(&svg)
        .output()
        .expect("running coordgen");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&output.stdout).expect("one JSON object");
    for key in ["naive_stall_ms", "progressive_stall_ms", "peak_rss_bytes"] {
        assert!(v[key].is_number(), "{key}: {v}");
    }
    let runs = v["runs"].as_array().unwrap();
    assert_eq!(runs.len(), 2);
    for run in runs {
        // Each schedule ran alone, with its own peak RSS and a prefill of
        // block runs followed by decode passes.
        assert!(run["peak_rss_bytes"].as_u64().unwrap() > 0);
        let events = run["events"].as_array().unwrap();
        assert!(events.iter().any(|e| e["kind"] == "compute"));
        assert_eq!(
            events.iter().filter(|e| e["kind"] == "pass").count(),
            1,
            "{run}"
        );
    }
    assert_eq!(runs[0]["tokens"], runs[1]["tokens"]);
    let drawn = std::fs::read_to_string(&svg).unwrap();
    assert!(drawn.starts_with("<svg") && drawn.contains("progressive"));
}
