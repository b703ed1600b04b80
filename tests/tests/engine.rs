//! Engine behaviour on the default model: batch invariance, KV reuse across
//! turns, tree evaluation, stop conditions, and bad input that must leave the
//! session usable.

use coordgen::{ChatMessage, Error, GenerateParams, SamplerConfig, StopReason};
use coordgen_tests::engine;

fn prompt_tokens(engine: &coordgen::Engine, text: &str) -> Vec<u32> {
    let rendered = engine.render_chat(&[ChatMessage::user(text)]).unwrap();
    engine.tokenize_chat(&rendered).unwrap()
}

fn argmax(v: &[f32]) -> u32 {
    coordgen::sampler::argmax(v)
}

#[test]
fn chunked_prefill_and_token_by_token_decode_give_identical_logits() {
    let Some(engine) = engine() else { return };
    let tokens = prompt_tokens(
        &engine,
        "Explain in one paragraph why the sky is blue, and mention Rayleigh.",
    );
    assert!(tokens.len() > 20);
    let vocab = engine.config().vocab_size;

    let mut batched = engine.session();
    let all = batched.append_all_logits(&tokens).unwrap();
    let mut one_by_one = engine.session();
    for (i, &t) in tokens.iter().enumerate() {
        one_by_one.append(&[t]).unwrap();
        let row = &all[i * vocab..(i + 1) * vocab];
        assert!(
            row == one_by_one.logits(),
            "position {i}: batched and one-token logits differ"
        );
    }
}

#[test]
fn a_chain_tree_in_a_verify_bucket_equals_sequential_decoding() {
    let Some(engine) = engine() else { return };
    let tokens = prompt_tokens(&engine, "Count from one to ten in words.");
    let vocab = engine.config().vocab_size;
    let mut session = engine.session();
    session.set_tokens(&tokens).unwrap();
    // Greedy-continue 5 tokens sequentially.
    let mut seq = Vec::new();
    let mut seq_logits = Vec::new();
    let mut reference = engine.session();
    reference.set_tokens(&tokens).unwrap();
    for _ in 0..5 {
        let t = argmax(reference.logits());
        seq.push(t);
        reference.append(&[t]).unwrap();
        seq_logits.push(reference.logits().to_vec());
    }
    // The same 5 tokens as a chain tree in one pass (padded into width 8).
    let n = seq.len();
    let mut mask = vec![0u8; n * n];
    for i in 0..n {
        for j in 0..=i {
            mask[i * n + j] = 1;
        }
    }
    let logits = session.eval_tree(&seq, &mask).unwrap();
    for i in 0..n {
        assert!(
            logits[i * vocab..(i + 1) * vocab] == seq_logits[i][..],
            "node {i}"
        );
    }
    // Two branches from the same parent see only their own ancestors: node 2
    // is a sibling of node 1 with the same token, at the same position.
    let branches = [seq[0], seq[1], seq[1]];
    let mask = [1, 0, 0, 1, 1, 0, 1, 0, 1];
    let logits = session.eval_tree(&branches, &mask).unwrap();
    assert!(logits[vocab..2 * vocab] == seq_logits[1][..]);
    assert!(logits[2 * vocab..3 * vocab] == seq_logits[1][..]);
    // eval_tree does not commit: the session still continues from the prompt.
    assert_eq!(session.history().len(), tokens.len());
}

#[test]
fn a_second_turn_reuses_the_cache_and_matches_a_fresh_session() {
    let Some(engine) = engine() else { return };
    let params = GenerateParams {
        max_tokens: 24,
        ..GenerateParams::default()
    };
    let mut messages = vec![ChatMessage::user("Name a large animal.")];
    let first = engine
        .tokenize_chat(&engine.render_chat(&messages).unwrap())
        .unwrap();
    let mut session = engine.session();
    let turn1 = session.generate(&first, &params, |_| true).unwrap();
    assert_eq!(turn1.reused_tokens, 0);
    messages.push(ChatMessage::assistant(turn1.text.clone()));
    messages.push(ChatMessage::user("Where does it live?"));
    let second = engine
        .tokenize_chat(&engine.render_chat(&messages).unwrap())
        .unwrap();
    let turn2 = session.generate(&second, &params, |_| true).unwrap();
    assert!(
        turn2.reused_tokens >= first.len(),
        "reused {} of the {} first-turn tokens",
        turn2.reused_tokens,
        first.len()
    );
    assert_eq!(
        turn2.timings.prefill_tokens,
        second.len() - turn2.reused_tokens
    );
    let fresh = engine
        .session()
        .generate(&second, &params, |_| true)
        .unwrap();
    assert_eq!(turn2.tokens, fresh.tokens);
}

#[test]
fn stop_conditions_end_generation() {
    let Some(engine) = engine() else { return };
    let tokens = prompt_tokens(&engine, "Write a long story about a lighthouse keeper.");
    let mut session = engine.session();
    let g = session
        .generate(
            &tokens,
            &GenerateParams {
                max_tokens: 7,
                ..GenerateParams::default()
            },
            |_| true,
        )
        .unwrap();
    assert_eq!(g.tokens.len(), 7);
    assert_eq!(g.stop_reason, StopReason::MaxTokens);
    // Stop at the first space of the greedy output; the text is cut before it.
    let mut streamed = String::new();
    let g2 = session
        .generate(
            &tokens,
            &GenerateParams {
                max_tokens: 40,
                stop: vec![" ".into()],
                ..GenerateParams::default()
            },
            |piece| {
                streamed.push_str(piece);
                true
            },
        )
        .unwrap();
    assert!(
        matches!(g2.stop_reason, StopReason::StopString(_)),
        "{:?}",
        g2.stop_reason
    );
    assert!(!g2.text.contains(' '));
    assert_eq!(streamed, g2.text);
    // A callback that returns false cancels.
    let g3 = session
        .generate(&tokens, &GenerateParams::default(), |_| false)
        .unwrap();
    assert_eq!(g3.stop_reason, StopReason::Cancelled);
}

#[test]
fn seeded_sampling_is_reproducible() {
    let Some(engine) = engine() else { return };
    let tokens = prompt_tokens(&engine, "Invent a name for a cat.");
    let params = GenerateParams {
        max_tokens: 16,
        sampler: SamplerConfig {
            temperature: 0.9,
            top_k: 50,
            top_p: 0.9,
            min_p: 0.02,
            repetition_penalty: 1.1,
            repeat_last_n: 64,
            seed: 1234,
        },
        stop: vec![],
        ignore_end_of_generation: false,
    };
    let a = engine
        .session()
        .generate(&tokens, &params, |_| true)
        .unwrap();
    let b = engine
        .session()
        .generate(&tokens, &params, |_| true)
        .unwrap();
    assert_eq!(a.tokens, b.tokens);
}

#[test]
fn bad_input_gets_typed_errors_and_leaves_the_session_usable() {
    let Some(engine) = engine() else { return };
    let vocab = engine.config().vocab_size as u32;
    let tokens = prompt_tokens(&engine, "Say hello.");
    let mut session = engine.session();
    session.set_tokens(&tokens).unwrap();
    let before = session.logits().to_vec();

    let err = session.append(&[1, 2, vocab]).unwrap_err();
    assert!(
        matches!(err, Error::TokenOutOfRange { id, .. } if id == vocab),
        "{err}"
    );
    let err = session.append(&[u32::MAX]).unwrap_err();
    assert!(matches!(err, Error::TokenOutOfRange { .. }), "{err}");
    let too_long = vec![1u32; engine.context_length() + 1];
    let err = session.set_tokens(&too_long).unwrap_err();
    assert!(matches!(err, Error::ContextOverflow { .. }), "{err}");
    let err = session
        .append(&vec![1u32; engine.context_length()])
        .unwrap_err();
    assert!(matches!(err, Error::ContextOverflow { .. }), "{err}");
    assert!(matches!(session.set_tokens(&[]), Err(Error::EmptyPrompt)));
    let bad_mask = session.eval_tree(&[1, 2], &[1, 0, 1]).unwrap_err();
    assert!(
        matches!(bad_mask, Error::InvalidOption { .. }),
        "{bad_mask}"
    );

    // The session still holds the prompt and continues exactly as before.
    assert_eq!(session.history(), &tokens[..]);
    assert!(session.logits() == &before[..]);
    let mut fresh = engine.session();
    fresh.set_tokens(&tokens).unwrap();
    session.append(&[argmax(&before)]).unwrap();
    fresh.append(&[argmax(&before)]).unwrap();
    assert!(session.logits() == fresh.logits());
}

#[test]
fn loading_bad_files_gives_typed_errors() {
    let dir = std::env::temp_dir().join(format!("coordgen-bad-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let missing = dir.join("missing.gguf");
    assert!(matches!(
        coordgen::Engine::load(&missing, Default::default()),
        Err(Error::Open { .. })
    ));
    let junk = dir.join("junk.gguf");
    std::fs::write(&junk, b"not a model at all").unwrap();
    assert!(matches!(
        coordgen::Engine::load(&junk, Default::default()),
        Err(Error::BadMagic { .. })
    ));
    if let Some(model) = coordgen_tests::default_model() {
        let bytes = std::fs::read(model).unwrap();
        let truncated = dir.join("truncated.gguf");
        std::fs::write(&truncated, &bytes[..bytes.len() / 2]).unwrap();
        let err = coordgen::Engine::load(&truncated, Default::default())
            .err()
            .unwrap();
        assert!(
            matches!(
                err,
                Error::TensorOutOfBounds { .. } | Error::TruncatedFile { .. }
            ),
            "{err}"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// A path that is not the tree's first branch sits in slots away from its
/// sequence positions; its rows must still equal sequential decoding
/// bitwise (attention orders softmax chunks and value lanes by position).
#[test]
fn a_later_branch_of_a_tree_equals_sequential_decoding() {
    let Some(engine) = engine() else { return };
    let tokens = prompt_tokens(&engine, "Write three short sentences about rivers.");
    let vocab = engine.config().vocab_size;
    let mut reference = engine.session();
    reference.set_tokens(&tokens).unwrap();
    let mut seq = Vec::new();
    let mut seq_logits = Vec::new();
    for _ in 0..5 {
        let t = argmax(reference.logits());
        seq.push(t);
        reference.append(&[t]).unwrap();
        seq_logits.push(reference.logits().to_vec());
    }
    // Rows: a three-token decoy branch, then the greedy path as a second
    // branch from the root (rows 3..8, positions past..past + 5).
    let decoy = [seq[2], seq[3], seq[4]];
    let rows: Vec<u32> = decoy.iter().chain(&seq).copied().collect();
    let n = rows.len();
    let mut mask = vec![0u8; n * n];
    for i in 0..3 {
        for j in 0..=i {
            mask[i * n + j] = 1;
        }
    }
    for i in 3..n {
        for j in 3..=i {
            mask[i * n + j] = 1;
        }
    }
    let mut session = engine.session();
    session.set_tokens(&tokens).unwrap();
    let logits = session.eval_tree(&rows, &mask).unwrap();
    for (i, want) in seq_logits.iter().enumerate() {
        let row = 3 + i;
        assert!(
            logits[row * vocab..(row + 1) * vocab] == want[..],
            "path node {i} (row {row}) differs from sequential decoding"
        );
    }
}

/// Greedy speculative decoding with each drafter commits exactly the tokens
/// of plain greedy decoding, at several tree budgets.
#[test]
fn speculative_steps_reproduce_plain_greedy_output() {
    use coordgen::spec::{DraftTree, Drafter, PromptLookup, SamDrafter};
    let Some(engine) = engine() else { return };
    let prompt = prompt_tokens(
        &engine,
        "Repeat this list exactly: apples, pears, plums, apples, pears, plums, apples.",
    );
    let n = 40;
    let plain = engine
        .session()
        .generate(
            &prompt,
            &GenerateParams {
                max_tokens: n,
                ignore_end_of_generation: true,
                ..GenerateParams::default()
            },
            |_| true,
        )
        .unwrap()
        .tokens;
    let drafters: Vec<(&str, Box<dyn Drafter>)> = vec![
        ("pld", Box::new(PromptLookup::default())),
        ("sam", Box::new(SamDrafter::default())),
    ];
    for (name, mut drafter) in drafters {
        for budget in [3usize, 15, 63] {
            drafter.reset();
            let mut session = engine.session();
            session.set_tokens(&prompt).unwrap();
            let mut root = argmax(session.logits());
            let mut out = vec![root];
            drafter.observe(&prompt);
            drafter.observe(&[root]);
            let mut tree = DraftTree::new();
            let mut accepted = 0;
            while out.len() < n {
                tree.clear();
                drafter.draft(budget, &mut tree);
                let step = session.speculative_step(root, &tree).unwrap();
                accepted += step.accepted.len();
                out.extend_from_slice(&step.accepted);
                out.push(step.next);
                drafter.observe(&step.accepted);
                drafter.observe(&[step.next]);
                root = step.next;
            }
            assert_eq!(
                out[..n],
                plain[..],
                "{name} with budget {budget} changed the output"
            );
            // The session's history is the committed sequence.
            assert_eq!(session.history()[prompt.len()..], out[..out.len() - 1]);
            eprintln!("{name} budget {budget}: {accepted} draft tokens accepted");
        }
    }
}

/// The speculative generate loop streams the same tokens and text as plain
/// generation (fixed and adaptive drafting, several budgets), honours stop
/// strings, and samples when the sampler is not greedy.
#[test]
fn speculative_generation_equals_plain_generation() {
    use coordgen::spec::{CalibrationConfig, PromptLookup, SamDrafter};
    use coordgen::{Drafting, SpecConfig};
    let Some(engine) = engine() else { return };
    let prompt = prompt_tokens(
        &engine,
        "Repeat: one two three, one two three, one two three.",
    );
    let params = GenerateParams {
        max_tokens: 48,
        ..GenerateParams::default()
    };
    let plain = engine
        .session()
        .generate(&prompt, &params, |_| true)
        .unwrap();
    // The drafters alone, and with calibration and reuse (the full method).
    let features = [(None, false), (Some(CalibrationConfig::default()), true)];
    for drafting in [Drafting::Fixed, Drafting::Adaptive] {
        for (max_draft, (calibration, reuse)) in [1usize, 7, 15]
            .into_iter()
            .flat_map(|m| features.map(|f| (m, f)))
        {
            let spec_config = SpecConfig {
                max_draft,
                drafting,
                calibration,
                reuse,
            };
            let mut pld = PromptLookup::default();
            let mut streamed = String::new();
            let (spec, stats) = engine
                .session()
                .generate_speculative(&prompt, &params, &mut pld, &spec_config, |p| {
                    streamed.push_str(p);
                    true
                })
                .unwrap();
            assert_eq!(spec.tokens, plain.tokens, "pld {spec_config:?}");
            assert_eq!(spec.text, plain.text);
            assert_eq!(streamed, plain.text);
            assert_eq!(spec.stop_reason, plain.stop_reason);
            assert!(stats.steps > 0 && stats.accepted <= stats.drafted);
            assert_eq!(stats.widths.values().sum::<usize>(), stats.steps);
            assert!(stats.widths.keys().all(|&w| w <= max_draft + 1));
            let mut sam = SamDrafter::default();
            let (spec, _) = engine
                .session()
                .generate_speculative(&prompt, &params, &mut sam, &spec_config, |_| true)
                .unwrap();
            assert_eq!(spec.tokens, plain.tokens, "sam {spec_config:?}");
        }
    }
    // A stop string ends both at the same place.
    if let Some(word) = plain.text.split_whitespace().nth(3) {
        let stopping = GenerateParams {
            stop: vec![word.to_string()],
            ..params.clone()
        };
        let a = engine
            .session()
            .generate(&prompt, &stopping, |_| true)
            .unwrap();
        let (b, _) = engine
            .session()
            .generate_speculative(
                &prompt,
                &stopping,
                &mut SamDrafter::default(),
                &SpecConfig::default(),
                |_| true,
            )
            .unwrap();
        assert_eq!((a.text, a.stop_reason), (b.text, b.stop_reason));
    }
    // Sampling mode: seeded runs repeat, and (on this repetitive prompt)
    // drafts get accepted. Its distribution is checked in the engine's
    // tree-sampling tests on fixed logits.
    let sampling = GenerateParams {
        sampler: SamplerConfig {
            temperature: 0.8,
            repetition_penalty: 1.1,
            seed: 7,
            ..SamplerConfig::default()
        },
        ignore_end_of_generation: true,
        ..params
    };
    let run = || {
        engine
            .session()
            .generate_speculative(
                &prompt,
                &sampling,
                &mut PromptLookup::default(),
                &SpecConfig {
                    max_draft: 7,
                    drafting: Drafting::Fixed,
                    calibration: None,
                    reuse: false,
                },
                |_| true,
            )
            .unwrap()
    };
    let (first, stats) = run();
    let (again, _) = run();
    assert_eq!(first.tokens, again.tokens);
    assert_eq!(first.tokens.len(), sampling.max_tokens);
    assert!(stats.drafted > 0);
}

#[test]
fn calibrated_prefill_records_the_probability_of_every_next_token() {
    let Some(engine) = engine() else { return };
    // Longer than one calibration chunk, so chunk boundaries are covered.
    let tokens = prompt_tokens(
        &engine,
        "Summarize: the quick brown fox jumps over the lazy dog, and the lazy dog \
         sleeps on while the fox runs off into the woods behind the farm.",
    );
    assert!(tokens.len() > 40);
    let vocab = engine.config().vocab_size;
    let all = engine.session().append_all_logits(&tokens).unwrap();
    let mut session = engine.session();
    session.set_calibration(true);
    session.set_calibration_alternatives(4);
    session.set_tokens(&tokens).unwrap();
    let confidence = session.confidence();
    assert_eq!(confidence.len(), tokens.len() - 1);
    for (p, &c) in confidence.iter().enumerate() {
        let row = &all[p * vocab..(p + 1) * vocab];
        let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let sum: f64 = row.iter().map(|&l| ((l - max) as f64).exp()).sum();
        let probability = |t: u32| ((row[t as usize] - max) as f64).exp() / sum;
        let want = probability(tokens[p + 1]);
        assert!(
            (c as f64 - want).abs() <= 1e-4 * want.max(1e-3),
            "position {p}: {c} vs {want}"
        );
        // The top 4 there, likeliest first, with their probabilities.
        let alternatives = session.alternatives(p);
        assert_eq!(alternatives.len(), 4, "position {p}");
        let best = first_argmax(row);
        assert_eq!(alternatives[0].0, best, "position {p}");
        for pair in alternatives.windows(2) {
            assert!(pair[0].1 >= pair[1].1);
        }
        for &(t, q) in alternatives {
            let want = probability(t);
            assert!(
                (q as f64 - want).abs() <= 1e-4 * want.max(1e-3),
                "{q} vs {want}"
            );
        }
    }
    // Calibrated prefill computes the same last logits as plain prefill.
    assert!(session.logits() == &all[(tokens.len() - 1) * vocab..]);
    // A session without the record keeps its cache, but a calibrating
    // request on it recomputes the prefix whose confidences are unknown.
    let mut plain = engine.session();
    plain.set_tokens(&tokens).unwrap();
    assert!(plain.confidence().is_empty());
    plain.set_calibration(true);
    assert_eq!(plain.set_tokens(&tokens).unwrap(), 0);
    assert_eq!(plain.confidence(), session.confidence());
    assert_eq!(plain.set_tokens(&tokens).unwrap(), tokens.len());
    // Rolling back drops the confidences of the dropped tokens.
    plain.truncate(10);
    assert_eq!(plain.confidence().len(), 9);
    // Alternatives too.
    session.truncate(10);
    assert_eq!(session.alternatives(8).len(), 4);
    assert!(session.alternatives(9).is_empty());
}

/// The first index of the largest logit.
fn first_argmax(row: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &v) in row.iter().enumerate() {
        if v > row[best] {
            best = i;
        }
    }
    best as u32
}
