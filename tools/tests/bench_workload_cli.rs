//! `coordgen bench --workload` end to end on the default model: every method
//! decodes every prompt to exactly plain decoding's tokens (zero mismatches)
//! at two verify widths, the JSON holds a record per prompt and method, and a
//! malformed workload line is a clear error naming its line.

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;

const METHODS: [&str; 3] = ["none", "pld", "sam"];

fn example_workload() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("workloads/example.jsonl")
}

/// The Spec-Bench subset kept beside the repository (`../shared`), if any.
fn shared_workload() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../shared/workloads/specbench-summary-rag.jsonl")
}

/// Runs `coordgen bench --workload FILE --json` with `args` on one thread;
/// `None` when the model is absent (the test skips).
fn bench_workload(workload: &Path, args: &[&str]) -> Option<Value> {
    let model = coordgen_tests::default_model()?;
    let output = Command::new(env!("CARGO_BIN_EXE_coordgen"))
        .args(["bench", "--model", model.to_str()?, "--threads", "1"])
        .args(["--workload", workload.to_str()?, "--json"])
        .args(args)
        .output()
        .expect("running coordgen");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "coordgen bench --workload failed: {stderr}"
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    Some(serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("{e}: {stdout:?}")))
}

/// The first `limit` question ids of each category of a workload file.
fn expected_ids(workload: &Path, limit: usize) -> Vec<Value> {
    let text = std::fs::read_to_string(workload).expect("reading the workload");
    let mut per_category: Vec<(String, usize)> = Vec::new();
    let mut ids = Vec::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let v: Value = serde_json::from_str(line).expect("a JSON line");
        let category = v["category"].as_str().expect("category").to_string();
        let seen = match per_category.iter_mut().find(|(c, _)| *c == category) {
            Some((_, n)) => n,
            None => {
                per_category.push((category, 0));
                &mut per_category.last_mut().expect("just pushed").1
            }
        };
        if *seen < limit {
            *seen += 1;
            ids.push(v["question_id"].clone());
        }
    }
    ids
}

/// Zero mismatches, and a record with tokens for every prompt and method.
fn assert_lossless(v: &Value, ids: &[Value]) {
    assert_eq!(v["mode"], "workload", "{v}");
    assert_eq!(v["mismatched_prompts"], 0, "{v}");
    let records = v["records"].as_array().expect("records");
    assert_eq!(records.len(), ids.len() * METHODS.len(), "{v}");
    for id in ids {
        let plain = records
            .iter()
            .find(|r| r["id"] == *id && r["method"] == "none")
            .unwrap_or_else(|| panic!("no none record for prompt {id}"));
        for method in METHODS {
            let r = records
                .iter()
                .find(|r| r["id"] == *id && r["method"] == method)
                .unwrap_or_else(|| panic!("no {method} record for prompt {id}"));
            assert_eq!(r["matches_none"], true, "{r}");
            let tokens = r["tokens"].as_u64().expect("tokens");
            assert!(tokens > 0, "{r}");
            assert_eq!(r["tokens"], plain["tokens"], "{r}");
            assert!(r["decode_ms"].as_f64().is_some_and(|ms| ms > 0.0), "{r}");
            if method != "none" {
                let steps = r["steps"].as_u64().expect("steps");
                let accepted = r["accepted"].as_u64().expect("accepted");
                let drafted = r["drafted"].as_u64().expect("drafted");
                assert!(steps > 0 && accepted <= drafted, "{r}");
                // Each step emits its root and the accepted drafts; the
                // last root may be emitted without a verify pass of its own.
                assert!(tokens <= steps + accepted + 1, "{r}");
            }
        }
    }
    for summary in v["categories"]
        .as_array()
        .expect("categories")
        .iter()
        .chain([&v["overall"]])
    {
        let methods = summary["methods"].as_array().expect("methods");
        let names: Vec<&str> = methods
            .iter()
            .filter_map(|m| m["method"].as_str())
            .collect();
        assert_eq!(names, METHODS, "{summary}");
        for m in methods {
            assert_eq!(m["mismatches"], 0, "{summary}");
            assert!(m["speedup"].as_f64().is_some_and(|s| s > 0.0), "{m}");
        }
    }
}

fn example_at_width(width: &str) {
    let workload = example_workload();
    let args = [
        "--limit",
        "1",
        "--max-tokens",
        "24",
        "--spec",
        "none,pld,sam",
    ];
    let Some(v) = bench_workload(&workload, &[&args[..], &["--verify-width", width]].concat())
    else {
        return;
    };
    assert_eq!(v["verify_width"].to_string(), width);
    let ids = expected_ids(&workload, 1);
    assert_eq!(ids.len(), 2, "one prompt of each category");
    assert_lossless(&v, &ids);
}

#[test]
fn example_workload_is_lossless_at_verify_width_4() {
    example_at_width("4");
}

#[test]
fn example_workload_is_lossless_at_verify_width_16() {
    example_at_width("16");
}

#[test]
fn specbench_subset_is_lossless() {
    let workload = shared_workload();
    if !workload.is_file() {
        eprintln!(
            "note: skipping, no Spec-Bench workload at {}",
            workload.display()
        );
        return;
    }
    let Some(v) = bench_workload(&workload, &["--limit", "2", "--max-tokens", "32"]) else {
        return;
    };
    assert_lossless(&v, &expected_ids(&workload, 2));
}

#[test]
fn malformed_workload_line_is_a_clear_error() {
    let dir = std::env::temp_dir().join(format!("coordgen-workload-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("creating a temp dir");
    let path = dir.join("bad.jsonl");
    std::fs::write(
        &path,
        "{\"question_id\": 1, \"category\": \"rag\", \"turns\": [\"q\"]}\n\n{\"question_id\": 2,\n",
    )
    .expect("writing the workload");
    let output = Command::new(env!("CARGO_BIN_EXE_coordgen"))
        .args(["bench", "--workload"])
        .arg(&path)
        .output()
        .expect("running coordgen");
    let _ = std::fs::remove_dir_all(&dir);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{stderr}");
    assert!(
        stderr.contains("error:") && stderr.contains("line 3") && !stderr.contains("panicked"),
        "{stderr}"
    );
}
