//! `coordgen chat`: speculative answers (the default) equal plain ones,
//! turn after turn.

use std::io::Write;
use std::process::{Command, Stdio};

fn chat(spec: &str) -> Option<String> {
    let model = coordgen_tests::default_model()?;
    let mut child = Command::new(env!("CARGO_BIN_EXE_coordgen"))
        .env(
            "COORDGEN_CACHE_DIR",
            std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("chat-cost-cache"),
        )
        .args(["chat", "--model", model.to_str()?, "--threads", "1"])
        .args(["-n", "24", "--spec", spec])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("running coordgen chat");
    child
        .stdin
        .take()
        .expect("chat's stdin")
        .write_all(b"Repeat: red green blue, red green blue.\nAnd once more, please.\n")
        .expect("writing to chat");
    let output = child.wait_with_output().expect("coordgen chat");
    assert!(
        output.status.success(),
        "coordgen chat --spec {spec} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    Some(String::from_utf8_lossy(&output.stdout).into_owned())
}

#[test]
fn speculative_chat_answers_equal_plain_ones() {
    let Some(plain) = chat("none") else { return };
    assert!(!plain.trim().is_empty());
    for spec in ["sam", "pld"] {
        assert_eq!(chat(spec).as_deref(), Some(plain.as_str()), "--spec {spec}");
    }
}
