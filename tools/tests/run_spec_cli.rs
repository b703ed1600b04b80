//! `coordgen run --spec`: the same tokens as plain decoding, and the
//! documented `spec` object in the JSON output.

use serde_json::Value;
use std::process::Command;

fn run_json(spec: &str) -> Option<Value> {
    run_json_cached(
        spec,
        &std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("cost-cache"),
    )
}

/// `coordgen run --spec` with its verify-cost cache in `cache`.
fn run_json_cached(spec: &str, cache: &std::path::Path) -> Option<Value> {
    let model = coordgen_tests::default_model()?;
    let output = Command::new(env!("CARGO_BIN_EXE_coordgen"))
        .env("COORDGEN_CACHE_DIR", cache)
        .args(["run", "--model", model.to_str()?, "--threads", "1"])
        .args([
            "-p",
            "Repeat: red green blue, red green blue, red green blue.",
        ])
        .args(["-n", "16", "--json", "--spec", spec, "--verify-width", "8"])
        .output()
        .expect("running coordgen");
    assert!(
        output.status.success(),
        "coordgen run --spec {spec} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    Some(serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("{e}: {stdout:?}")))
}

#[test]
fn spec_runs_match_plain_runs_and_report_their_steps() {
    let Some(plain) = run_json("none") else {
        return;
    };
    assert!(plain["spec"].is_null());
    for method in ["pld", "sam"] {
        let Some(v) = run_json(method) else { return };
        assert_eq!(v["tokens"], plain["tokens"], "{method}");
        let spec = &v["spec"];
        assert_eq!(spec["method"], method);
        let steps = spec["steps"].as_u64().unwrap();
        let drafted = spec["drafted"].as_u64().unwrap();
        let accepted = spec["accepted"].as_u64().unwrap();
        assert!(steps > 0 && accepted <= drafted, "{spec}");
    }
}

#[test]
fn the_verify_costs_are_measured_once_per_machine_and_model() {
    let cache = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("cost-cache-once");
    let _ = std::fs::remove_dir_all(&cache);
    let Some(first) = run_json_cached("sam", &cache) else {
        return;
    };
    assert!(first["spec"]["measure_ms"].as_f64().unwrap() > 0.0);
    let file = cache.join("verify-costs.json");
    let table: Value = serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
    assert_eq!(table.as_object().map(|o| o.len()), Some(1), "{table}");
    let second = run_json_cached("sam", &cache).unwrap();
    assert!(
        second["spec"]["measure_ms"].as_f64().unwrap() < 1.0,
        "the second run measured again: {}",
        second["spec"]
    );
    assert_eq!(second["tokens"], first["tokens"]);
    // A broken cache file only costs a measurement.
    std::fs::write(&file, "{ not json").unwrap();
    let third = run_json_cached("sam", &cache).unwrap();
    assert_eq!(third["tokens"], first["tokens"]);
    assert!(third["spec"]["measure_ms"].as_f64().unwrap() > 0.0);
}
