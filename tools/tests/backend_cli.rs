//! `--backend`: QNN end to end from the CLI (its JSON stays parseable
//! although the library prints on stdout), a missing library as a clear
//! error, and `auto` falling back to the CPU with a warning.

use serde_json::Value;
use std::process::{Command, Output};

fn coordgen(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_coordgen"))
        .args(args)
        .output()
        .expect("running coordgen")
}

fn empty_folder(name: &str) -> std::path::PathBuf {
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn a_missing_qnn_library_is_a_clear_error_and_auto_falls_back_to_the_cpu() {
    let Some(model) = coordgen_tests::default_model() else {
        return;
    };
    let empty = empty_folder("no-qnn");
    let common = [
        "run",
        "--model",
        model.to_str().unwrap(),
        "--threads",
        "1",
        "-p",
        "Hi",
        "-n",
        "2",
        "--spec",
        "none",
        "--json",
        "--qnn-dir",
        empty.to_str().unwrap(),
    ];
    let out = coordgen(&[&common[..], &["--backend", "qnn"]].concat());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains(empty.to_str().unwrap()) && stderr.contains("tools/fetch-qnn"),
        "{stderr}"
    );

    let out = coordgen(&[&common[..], &["--backend", "auto"]].concat());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("warning") && stderr.contains("running on the CPU"),
        "{stderr}"
    );
    let v: Value = serde_json::from_slice(&out.stdout).expect("JSON on stdout");
    assert!(v["accelerator"].is_null());
    assert!(v["backend"].as_str().unwrap().starts_with("cpu"), "{v}");
}

#[test]
fn run_backend_qnn_works_end_to_end_with_parseable_json() {
    let (Some(model), Some(folder)) = (
        coordgen_tests::default_model(),
        coordgen_tests::qnn_folder(),
    ) else {
        return;
    };
    let args = |backend: &str| -> Vec<String> {
        [
            "run",
            "--model",
            model.to_str().unwrap(),
            "--threads",
            "2",
            "-p",
            "The capital of France is",
            "-n",
            "3",
            "--spec",
            "none",
            "--json",
            "--backend",
            backend,
            "--qnn-dir",
            folder.to_str().unwrap(),
            "--no-qnn-cache",
            "--prefill-buckets",
            "32",
            "--verify-buckets",
            "1",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    };
    let run = |backend: &str| -> Value {
        let a = args(backend);
        let a: Vec<&str> = a.iter().map(String::as_str).collect();
        let out = coordgen(&a);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("{e}: {:?}", String::from_utf8_lossy(&out.stdout)))
    };
    let qnn = run("qnn");
    let report = &qnn["accelerator"];
    assert_eq!(report["backend"], "qnn", "{qnn}");
    assert!(report["finalize_ms"].as_f64().unwrap() > 0.0, "{report}");
    assert!(report["graphs"].as_u64().unwrap() > 0, "{report}");
    let cpu = run("cpu");
    assert_eq!(qnn["tokens"], cpu["tokens"]);
}

/// `--backend vulkan` runs speculative generation end to end (tree
/// verification on the device, with the validation layer on) and streams
/// exactly the CPU's greedy text.
#[test]
fn vulkan_runs_speculative_generation_with_the_cpus_text() {
    let Some(model) = coordgen_tests::default_model() else {
        return;
    };
    if coordgen_tests::vulkan().is_none() {
        return;
    }
    let dir = empty_folder("vulkan-context");
    let context = dir.join("notes.txt");
    std::fs::write(
        &context,
        "The Vulkan backend runs compute shaders. The Vulkan backend runs compute \
         shaders on lavapipe in CI, and on a real GPU where there is one.",
    )
    .unwrap();
    let run = |backend: &str| {
        let out = coordgen(&[
            "run",
            "--model",
            model.to_str().unwrap(),
            "--threads",
            "2",
            "-c",
            context.to_str().unwrap(),
            "-p",
            "Repeat the notes.",
            "-n",
            "24",
            "--backend",
            backend,
            "--vulkan-validation",
            "--spec",
            "coordgen",
            "--json",
        ]);
        let stderr = String::from_utf8_lossy(&out.stderr).to_string();
        assert!(out.status.success(), "{backend}: {stderr}");
        let v: Value = serde_json::from_slice(&out.stdout).expect("JSON on stdout");
        (v, stderr)
    };
    let (cpu, _) = run("cpu");
    let (gpu, _) = run("vulkan");
    assert_eq!(gpu["accelerator"]["backend"], "vulkan", "{gpu}");
    assert!(gpu["accelerator"]["graphs"].as_u64().unwrap() > 0, "{gpu}");
    assert!(gpu["spec"].is_object(), "speculative decoding ran: {gpu}");
    assert_eq!(gpu["text"], cpu["text"]);
}

/// Without a Vulkan driver, `--backend vulkan` is a clear error and
/// `--backend auto` runs on the CPU.
#[test]
fn without_vulkan_the_backend_is_a_clear_error_and_auto_uses_the_cpu() {
    let Some(model) = coordgen_tests::default_model() else {
        return;
    };
    let empty = empty_folder("no-vulkan");
    let none = empty.join("no-driver.json");
    let run = |backend: &str| {
        Command::new(env!("CARGO_BIN_EXE_coordgen"))
            .args([
                "run",
                "--model",
                model.to_str().unwrap(),
                "--threads",
                "1",
                "-p",
                "Hi",
                "-n",
                "2",
                "--spec",
                "none",
                "--json",
                "--backend",
                backend,
            ])
            .env("VK_DRIVER_FILES", &none)
            .env("VK_ICD_FILENAMES", &none)
            .output()
            .expect("running coordgen")
    };
    let out = run("vulkan");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("Vulkan backend: no usable Vulkan device"),
        "{stderr}"
    );
    // (--json keeps stderr to warnings; the note on why is not one.)
    let out = run("auto");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let v: Value = serde_json::from_slice(&out.stdout).expect("JSON on stdout");
    assert!(v["accelerator"].is_null());
    assert!(v["backend"].as_str().unwrap().starts_with("cpu"), "{v}");
}
