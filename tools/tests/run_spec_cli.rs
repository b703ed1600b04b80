//! `coordgen run --spec`: the same tokens as plain decoding, and the
//! documented `spec` object in the JSON output.

use serde_json::Value;
use std::process::Command;

fn run_json(spec: &str) -> Option<Value> {
    let model = coordgen_tests::default_model()?;
    let output = Command::new(env!("CARGO_BIN_EXE_coordgen"))
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
