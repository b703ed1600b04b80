//! Unit tests on a tiny hand-made byte-level vocabulary.

use super::*;

const CONTROL_TOKENS: [&str; 3] = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"];
const USER_TOKEN: &str = "<user_tok>";
/// Id of the first byte token; byte `b` is token `FIRST_BYTE + b`.
const FIRST_BYTE: u32 = 4;

/// A vocabulary of 3 control tokens, 1 user-defined token, the 256 byte
/// tokens, then the results of `merges` (unless listed in `missing`).
fn spec_with(merges: &[&str], missing: &[&str]) -> TokenizerSpec {
    let byte_level = ByteLevel::new();
    let mut tokens: Vec<String> = CONTROL_TOKENS.iter().map(|s| s.to_string()).collect();
    tokens.push(USER_TOKEN.to_owned());
    tokens.extend((0..=255u8).map(|b| byte_level.char_of(b).to_string()));
    let mut token_types = vec![token_type::CONTROL; 3];
    token_types.push(token_type::USER_DEFINED);
    token_types.resize(tokens.len(), token_type::NORMAL);
    for merge in merges {
        let merged = merge.replace(' ', "");
        if !missing.contains(&merged.as_str()) && !tokens.contains(&merged) {
            tokens.push(merged);
            token_types.push(token_type::NORMAL);
        }
    }
    TokenizerSpec {
        model: "gpt2".to_owned(),
        pre: "smollm".to_owned(),
        tokens,
        token_types,
        merges: merges.iter().map(|s| s.to_string()).collect(),
        bos_id: Some(1),
        eos_id: Some(2),
        ..TokenizerSpec::default()
    }
}

const HELLO_WORLD_MERGES: &[&str] = &[
    "h e", "l l", "he ll", "hell o", "Ġ w", "o r", "Ġw or", "l d", "Ġwor ld",
];

fn tokenizer(merges: &[&str]) -> Tokenizer {
    Tokenizer::from_spec(spec_with(merges, &[])).unwrap()
}

fn byte_token(b: u8) -> u32 {
    FIRST_BYTE + u32::from(b)
}

fn pieces(tok: &Tokenizer, ids: &[u32]) -> Vec<String> {
    ids.iter()
        .map(|&id| tok.token_text(id).unwrap().to_owned())
        .collect()
}

#[test]
fn merges_build_words() {
    let tok = tokenizer(HELLO_WORLD_MERGES);
    let ids = tok.encode("hello world", false, false).unwrap();
    assert_eq!(pieces(&tok, &ids), ["hello", "Ġworld"]);
    assert_eq!(tok.decode(&ids).unwrap(), "hello world");
}

#[test]
fn merge_order_decides() {
    let ab_first = tokenizer(&["a b", "b c"]);
    let ids = ab_first.encode("abc", false, false).unwrap();
    assert_eq!(pieces(&ab_first, &ids), ["ab", "c"]);

    let bc_first = tokenizer(&["b c", "a b"]);
    let ids = bc_first.encode("abc", false, false).unwrap();
    assert_eq!(pieces(&bc_first, &ids), ["a", "bc"]);
}

#[test]
fn equal_ranks_merge_leftmost_first() {
    let tok = tokenizer(&["a a"]);
    let ids = tok.encode("aaa", false, false).unwrap();
    assert_eq!(pieces(&tok, &ids), ["aa", "a"]);
}

#[test]
fn duplicate_merge_keeps_first_rank() {
    let tok = tokenizer(&["b c", "a b", "b c"]);
    let ids = tok.encode("abc", false, false).unwrap();
    assert_eq!(pieces(&tok, &ids), ["a", "bc"]);
}

#[test]
fn merge_into_a_missing_token_falls_back_to_bytes() {
    let tok = Tokenizer::from_spec(spec_with(&["x y"], &["xy"])).unwrap();
    let ids = tok.encode("xy", false, false).unwrap();
    assert_eq!(ids, [byte_token(b'x'), byte_token(b'y')]);
}

#[test]
fn unmerged_bytes_use_byte_tokens() {
    let tok = tokenizer(&[]);
    let ids = tok.encode("é\n\t", false, false).unwrap();
    assert_eq!(
        ids,
        [
            byte_token(0xC3),
            byte_token(0xA9),
            byte_token(b'\n'),
            byte_token(b'\t')
        ]
    );
    assert_eq!(tok.decode(&ids).unwrap(), "é\n\t");
    assert_eq!(tok.token_bytes(byte_token(0xC3)).unwrap(), [0xC3]);
    assert_eq!(tok.token_text(byte_token(b' ')).unwrap(), "Ġ");
}

#[test]
fn every_byte_round_trips() {
    let tok = tokenizer(HELLO_WORLD_MERGES);
    let text: String = (1..=0x7Fu8)
        .map(char::from)
        .chain("héllo wörld ✓ 😀".chars())
        .collect();
    let ids = tok.encode(&text, false, false).unwrap();
    assert_eq!(tok.decode(&ids).unwrap(), text);
}

#[test]
fn special_tokens_need_parse_special() {
    let tok = tokenizer(HELLO_WORLD_MERGES);
    let text = "<|im_start|>hello<|im_end|>";
    let parsed = tok.encode(text, false, true).unwrap();
    let hello = tok.token_id("hello").unwrap();
    assert_eq!(parsed, [1, hello, 2]);
    // Control tokens render as nothing.
    assert_eq!(tok.decode(&parsed).unwrap(), "hello");
    assert_eq!(tok.token_bytes(1).unwrap(), b"<|im_start|>");

    let spelled = tok.encode(text, false, false).unwrap();
    assert!(!spelled.contains(&1) && !spelled.contains(&2));
    assert_eq!(tok.decode(&spelled).unwrap(), text);
}

#[test]
fn user_defined_tokens_always_match() {
    let tok = tokenizer(HELLO_WORLD_MERGES);
    let user = tok.token_id(USER_TOKEN).unwrap();
    for parse_special in [false, true] {
        let ids = tok
            .encode("hello<user_tok>hello", false, parse_special)
            .unwrap();
        let hello = tok.token_id("hello").unwrap();
        assert_eq!(ids, [hello, user, hello]);
        // User-defined tokens decode to their text.
        assert_eq!(tok.decode(&ids).unwrap(), "hello<user_tok>hello");
    }
}

#[test]
fn longest_special_token_wins() {
    let mut spec = spec_with(&[], &[]);
    spec.tokens.push("<|im".to_owned());
    spec.token_types.push(token_type::CONTROL);
    let short_id = spec.tokens.len() as u32 - 1;
    let tok = Tokenizer::from_spec(spec).unwrap();
    assert_eq!(
        tok.encode("<|im_start|><|im", false, true).unwrap(),
        [1, short_id]
    );
}

#[test]
fn bos_and_eos_follow_the_spec() {
    let tok = tokenizer(&[]);
    assert_eq!(tok.encode("a", true, false).unwrap(), [byte_token(b'a')]);

    let mut spec = spec_with(&[], &[]);
    spec.add_bos = Some(true);
    spec.add_eos = Some(true);
    let tok = Tokenizer::from_spec(spec).unwrap();
    assert_eq!(
        tok.encode("a", true, false).unwrap(),
        [1, byte_token(b'a'), 2]
    );
    assert_eq!(tok.encode("", true, false).unwrap(), [1, 2]);
    assert_eq!(tok.encode("a", false, false).unwrap(), [byte_token(b'a')]);

    let mut spec = spec_with(&[], &[]);
    spec.pre = "llama-bpe".to_owned();
    assert!(Tokenizer::from_spec(spec).unwrap().adds_bos());

    let mut spec = spec_with(&[], &[]);
    spec.add_bos = Some(true);
    spec.bos_id = None;
    assert!(matches!(
        Tokenizer::from_spec(spec),
        Err(Error::MissingSpecialToken { which: "BOS" })
    ));
}

#[test]
fn end_of_generation_and_control() {
    let tok = tokenizer(&[]);
    assert!(tok.is_end_of_generation(0)); // <|endoftext|>
    assert!(tok.is_end_of_generation(2)); // <|im_end|>, also EOS
    assert!(!tok.is_end_of_generation(1));
    assert!(!tok.is_end_of_generation(byte_token(b'a')));
    assert!(!tok.is_end_of_generation(u32::MAX));
    assert!(tok.is_control(1));
    assert!(!tok.is_control(3));
    assert!(!tok.is_control(u32::MAX));
}

#[test]
fn out_of_range_ids_are_typed_errors() {
    let tok = tokenizer(&[]);
    let size = tok.vocab_size();
    let bad = size as u32;
    for result in [
        tok.decode(&[byte_token(b'a'), bad]).map(|_| ()),
        tok.token_bytes(bad).map(|_| ()),
        tok.token_text(bad).map(|_| ()),
        StreamDecoder::new().push(&tok, bad).map(|_| ()),
    ] {
        match result {
            Err(Error::TokenOutOfRange { id, vocab_size }) => {
                assert_eq!((id, vocab_size), (bad, size));
            }
            other => panic!("expected TokenOutOfRange, got {other:?}"),
        }
    }
    let message = tok.decode(&[bad]).unwrap_err().to_string();
    assert!(message.contains(&bad.to_string()), "{message}");
}

#[test]
fn stream_decoder_waits_for_a_split_emoji() {
    let tok = tokenizer(&[]);
    let ids = tok.encode("a😀b", false, false).unwrap();
    assert_eq!(ids.len(), 6, "the emoji is four byte tokens");
    let mut stream = StreamDecoder::new();
    let outputs: Vec<String> = ids
        .iter()
        .map(|&id| stream.push(&tok, id).unwrap())
        .collect();
    assert_eq!(outputs, ["a", "", "", "", "😀", "b"]);
    assert!(!stream.has_pending());
    assert_eq!(stream.finish(), "");
}

#[test]
fn stream_decoder_replaces_invalid_bytes_and_flushes() {
    let tok = tokenizer(&[]);
    let mut stream = StreamDecoder::new();
    // A stray continuation byte can never become valid: replaced at once.
    assert_eq!(stream.push(&tok, byte_token(0x80)).unwrap(), "\u{FFFD}");
    // A lead byte waits, then is flushed lossily.
    assert_eq!(stream.push(&tok, byte_token(0xE2)).unwrap(), "");
    assert_eq!(
        stream.push(&tok, 1).unwrap(),
        "",
        "control tokens add nothing"
    );
    assert_eq!(stream.finish(), "\u{FFFD}");
    // decode agrees with the stream.
    assert_eq!(
        tok.decode(&[byte_token(0x80), byte_token(0xE2)]).unwrap(),
        "\u{FFFD}\u{FFFD}"
    );
}

#[test]
fn bad_specs_are_rejected() {
    let mut spec = spec_with(&[], &[]);
    spec.model = "llama".to_owned();
    assert!(matches!(
        Tokenizer::from_spec(spec),
        Err(Error::UnsupportedTokenizerModel { .. })
    ));

    let mut spec = spec_with(&[], &[]);
    spec.tokens[5] = spec.tokens[6].clone();
    assert!(matches!(
        Tokenizer::from_spec(spec),
        Err(Error::InvalidVocab { .. })
    ));

    let mut spec = spec_with(&[], &[]);
    spec.token_types.pop();
    assert!(matches!(
        Tokenizer::from_spec(spec),
        Err(Error::InvalidVocab { .. })
    ));

    let mut spec = spec_with(&[], &[]);
    spec.eos_id = Some(100_000);
    assert!(matches!(
        Tokenizer::from_spec(spec),
        Err(Error::InvalidVocab { .. })
    ));

    let mut spec = spec_with(&[], &[]);
    spec.pre = "martian".to_owned();
    assert!(matches!(
        Tokenizer::from_spec(spec),
        Err(Error::UnsupportedPreTokenizer { .. })
    ));
}

#[test]
fn malformed_merge_lines_are_ignored() {
    let tok = tokenizer(&["ab", "", " ", "a b"]);
    let ids = tok.encode("ab", false, false).unwrap();
    assert_eq!(pieces(&tok, &ids), ["ab"]);
}

#[test]
fn long_runs_do_not_exhaust_the_regex_engine() {
    for pre in ["smollm", "llama3", "qwen2", "gpt-2"] {
        let mut spec = spec_with(&[], &[]);
        spec.pre = pre.to_owned();
        spec.add_bos = Some(false);
        let tok = Tokenizer::from_spec(spec).unwrap();
        for text in [
            format!("{}x", " ".repeat(200_000)),
            format!("{}x", "\n \t".repeat(70_000)),
            "a".repeat(200_000),
            "!?".repeat(100_000),
            "7".repeat(200_000),
        ] {
            let start = std::time::Instant::now();
            let ids = tok.encode(&text, false, false).unwrap();
            assert_eq!(tok.decode(&ids).unwrap(), text, "{pre}");
            assert!(
                start.elapsed().as_secs_f64() < 5.0,
                "{pre}: {:?}",
                start.elapsed()
            );
        }
    }
}
