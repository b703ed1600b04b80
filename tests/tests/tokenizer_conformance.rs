//! Tokenizer and chat-template conformance with llama.cpp on the default
//! model (SmolLM2-135M-Instruct: byte-level BPE, `smollm` pre-tokenizer).
//!
//! Every case of `tests/fixtures/tokenizer.json` (llama.cpp's ids, recorded
//! by `tools/reference/generate.py`) must tokenize to the same ids. Set
//! `COORDGEN_TOKENIZER_FIXTURE` to a file of the same format to check more
//! cases. The hardcoded cases below were checked against llama-cpp-python
//! 0.3.36 (`Llama(vocab_only=True).tokenize`). Tests skip with a note when
//! the model or the fixture is absent.

use std::path::PathBuf;
use std::time::Instant;

use coordgen::chat_template::{ChatMessage, ChatTemplate};
use coordgen::gguf::GgufFile;
use coordgen::tokenizer::{PreTokenizerKind, StreamDecoder, Tokenizer};
use serde::Deserialize;

#[derive(Debug, Deserialize)]
struct Fixture {
    cases: Vec<Case>,
}

#[derive(Debug, Deserialize)]
struct Case {
    text: String,
    add_special: bool,
    parse_special: bool,
    ids: Vec<u32>,
}

fn load() -> Option<(GgufFile, Tokenizer)> {
    let path = coordgen_tests::default_model()?;
    let gguf = GgufFile::open(&path).unwrap();
    let tokenizer = Tokenizer::from_gguf(&gguf).unwrap();
    Some((gguf, tokenizer))
}

/// Checks every case and reports all mismatches at once.
fn check_cases(tokenizer: &Tokenizer, cases: &[Case], source: &str) {
    let mut failures = Vec::new();
    for (index, case) in cases.iter().enumerate() {
        let ids = tokenizer
            .encode(&case.text, case.add_special, case.parse_special)
            .unwrap();
        if ids != case.ids {
            let first_diff = ids
                .iter()
                .zip(&case.ids)
                .position(|(a, b)| a != b)
                .unwrap_or(ids.len().min(case.ids.len()));
            failures.push(format!(
                "case {index} {:?} (add_special={}, parse_special={}): first difference at {first_diff}: ours {:?}, llama.cpp {:?}",
                case.text.chars().take(80).collect::<String>(),
                case.add_special,
                case.parse_special,
                &ids[first_diff..(first_diff + 8).min(ids.len())],
                &case.ids[first_diff..(first_diff + 8).min(case.ids.len())],
            ));
            continue;
        }
        // Without control tokens, decoding gives the text back.
        if !ids.iter().any(|&id| tokenizer.is_control(id)) {
            assert_eq!(
                tokenizer.decode(&ids).unwrap(),
                case.text,
                "decode of case {index}"
            );
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases of {source} differ from llama.cpp:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
    eprintln!("{source}: all {} cases match llama.cpp", cases.len());
}

#[test]
fn fixture_cases_match_llama_cpp() {
    let Some((_, tokenizer)) = load() else {
        return;
    };
    let Some(fixture) = coordgen_tests::fixture("tokenizer.json") else {
        return;
    };
    let fixture: Fixture = serde_json::from_value(fixture).unwrap();
    assert!(!fixture.cases.is_empty());
    check_cases(&tokenizer, &fixture.cases, "tests/fixtures/tokenizer.json");
}

#[test]
fn extra_fixture_from_env_matches_llama_cpp() {
    let Some(path) = std::env::var_os("COORDGEN_TOKENIZER_FIXTURE").map(PathBuf::from) else {
        eprintln!("note: skipping, COORDGEN_TOKENIZER_FIXTURE is not set");
        return;
    };
    let Some((_, tokenizer)) = load() else {
        return;
    };
    let text = std::fs::read_to_string(&path).unwrap();
    let fixture: Fixture = serde_json::from_str(&text).unwrap();
    check_cases(&tokenizer, &fixture.cases, &path.display().to_string());
}

#[test]
fn hardcoded_cases_match_llama_cpp() {
    let Some((_, tokenizer)) = load() else {
        return;
    };
    let cases: &[(&str, bool, &[u32])] = &[
        (
            "Hello world! 123",
            false,
            &[19556, 905, 17, 216, 33, 34, 35],
        ),
        (
            "I'm 42 years old.\n\nOK",
            false,
            &[57, 5248, 216, 36, 34, 929, 1573, 30, 198, 198, 13663],
        ),
        ("naïve 😀", false, &[3546, 46494, 40303, 218]),
        ("  multiple   spaces", false, &[216, 2701, 256, 5600]),
        (
            "<|im_start|>user\nHi<|im_end|>\n",
            true,
            &[1, 4093, 198, 26843, 2, 198],
        ),
        (
            "<|im_start|>user\nHi<|im_end|>\n",
            false,
            &[
                44, 108, 306, 79, 3738, 108, 46, 4093, 198, 26843, 44, 108, 306, 79, 486, 108, 46,
                198,
            ],
        ),
    ];
    for &(text, parse_special, expected) in cases {
        assert_eq!(
            tokenizer.encode(text, false, parse_special).unwrap(),
            expected,
            "{text:?} parse_special={parse_special}"
        );
    }
    // This GGUF sets add_bos_token = false: add_special adds nothing.
    assert_eq!(tokenizer.encode("Hello", true, false).unwrap(), [19556]);
}

#[test]
fn vocabulary_metadata_matches_llama_cpp() {
    let Some((_, tokenizer)) = load() else {
        return;
    };
    assert_eq!(tokenizer.vocab_size(), 49152);
    assert_eq!(tokenizer.pre_tokenizer(), PreTokenizerKind::Smollm);
    assert_eq!(tokenizer.bos_id(), Some(1));
    assert_eq!(tokenizer.eos_id(), Some(2));
    assert!(!tokenizer.adds_bos());
    // llama.cpp's special_eog_ids: <|endoftext|>, <|im_end|>, <reponame> (FIM repo).
    assert_eq!(tokenizer.end_of_generation_ids(), [0, 2, 4]);
    assert_eq!(tokenizer.token_id("<|im_start|>"), Some(1));
    assert_eq!(tokenizer.token_text(2).unwrap(), "<|im_end|>");
    assert!(tokenizer.is_control(1));
    assert_eq!(tokenizer.token_bytes(216).unwrap(), b" ");
    assert_eq!(tokenizer.decode(&[1, 19556, 2]).unwrap(), "Hello");
    assert!(tokenizer.decode(&[49152]).is_err());
}

#[test]
fn chat_template_renders_and_tokenizes_like_llama_cpp() {
    let Some((gguf, tokenizer)) = load() else {
        return;
    };
    let template = ChatTemplate::from_gguf(&gguf).unwrap();
    let prompt = template
        .render(
            &[
                ChatMessage::system("You are terse."),
                ChatMessage::user("What is 2+2?"),
            ],
            true,
        )
        .unwrap();
    assert_eq!(
        prompt,
        "<|im_start|>system\nYou are terse.<|im_end|>\n<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n"
    );
    assert_eq!(
        tokenizer.encode(&prompt, true, true).unwrap(),
        [
            1, 9690, 198, 2683, 359, 1733, 313, 30, 2, 198, 1, 4093, 198, 1780, 314, 216, 34, 27,
            34, 47, 2, 198, 1, 520, 9531, 198
        ]
    );
}

#[test]
fn stream_decoding_reproduces_text() {
    let Some((_, tokenizer)) = load() else {
        return;
    };
    let text = "Mixed: English, 日本語, العربية, русский, 👨‍👩‍👧‍👦 and 😀 — done.";
    let ids = tokenizer.encode(text, false, false).unwrap();
    let mut stream = StreamDecoder::new();
    let mut streamed = String::new();
    for &id in &ids {
        let piece = stream.push(&tokenizer, id).unwrap();
        assert!(!piece.contains('\u{FFFD}'), "streamed a partial character");
        streamed.push_str(&piece);
    }
    streamed.push_str(&stream.finish());
    assert_eq!(streamed, text);
}

#[test]
fn thousand_token_context_tokenizes_quickly() {
    let Some((_, tokenizer)) = load() else {
        return;
    };
    let workloads =
        coordgen_tests::workspace_root().join("../shared/workloads/specbench-summary-rag.jsonl");
    let text = match std::fs::read_to_string(&workloads) {
        Ok(jsonl) => jsonl
            .lines()
            .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
            .filter_map(|v| v["turns"][0].as_str().map(str::to_owned))
            .collect::<Vec<_>>()
            .join("\n"),
        Err(_) => "The quick brown fox jumps over the lazy dog, 1234 times. ".repeat(300),
    };
    // About 1,000 tokens of it.
    let ids = tokenizer.encode(&text, false, false).unwrap();
    let cut = ids.len().min(1000);
    let context = tokenizer.decode(&ids[..cut]).unwrap();
    // Warm up, then time the best of a few runs.
    let mut best = f64::INFINITY;
    for _ in 0..5 {
        let start = Instant::now();
        let n = tokenizer.encode(&context, true, false).unwrap().len();
        best = best.min(start.elapsed().as_secs_f64());
        assert!(n >= cut - 5);
    }
    eprintln!("tokenized {cut} tokens in {:.2} ms", best * 1e3);
    // The target is well under 50 ms; leave room for loaded CI machines.
    assert!(
        best < 0.05,
        "tokenizing {cut} tokens took {:.1} ms",
        best * 1e3
    );
}
