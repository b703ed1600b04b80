//! Whole models through the engine with the QNN backend (Qualcomm's real
//! HTP library, its x86-64 simulator) against the CPU backend: a tiny
//! synthetic model written as a GGUF file, the context-binary cache (also
//! across processes), graph switching, and the default model's greedy
//! tokens.

use coordgen::{Engine, EngineOptions, GraphScope, QnnOptions, Soc, WeightFormat};
use coordgen_graph::DType;
use coordgen_tests::greedy;
use coordgen_tests::synthetic::{tiny_weights, write_tiny_gguf};
use std::path::{Path, PathBuf};

fn scratch(name: &str) -> PathBuf {
    let dir =
        std::env::temp_dir().join(format!("coordgen-qnn-model-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn options(qnn: Option<QnnOptions>) -> EngineOptions {
    EngineOptions {
        threads: Some(1),
        context_length: 64,
        prefill_widths: vec![8],
        verify_widths: vec![1, 4],
        layers_per_block: 2,
        prefault: false,
        accelerator: qnn,
        ..EngineOptions::default()
    }
}

fn qnn_options(folder: &Path, cache: Option<&Path>) -> QnnOptions {
    QnnOptions {
        folder: folder.to_path_buf(),
        soc: Soc::default(),
        weights: WeightFormat::F16,
        graphs: GraphScope::Linear,
        cache_dir: cache.map(Path::to_path_buf),
    }
}

/// Teacher-forced logits of a fixed sequence: an 8-wide prefill chunk with
/// padding, then single-token steps.
fn logits(engine: &Engine) -> Vec<f32> {
    let mut session = engine.session();
    let mut all = session.append_all_logits(&[1, 17, 42, 5, 88, 9]).unwrap();
    for t in [33u32, 2, 71] {
        session.append(&[t]).unwrap();
        all.extend_from_slice(session.logits());
    }
    all
}

fn relative_rms(got: &[f32], want: &[f32]) -> f64 {
    assert_eq!(got.len(), want.len());
    let (mut e, mut v) = (0f64, 0f64);
    for (&g, &w) in got.iter().zip(want) {
        assert!(g.is_finite());
        e += (f64::from(g) - f64::from(w)).powi(2);
        v += f64::from(w).powi(2);
    }
    (e / v.max(1e-30)).sqrt()
}

fn tiny_model(dir: &Path) -> PathBuf {
    let path = dir.join("tiny.gguf");
    write_tiny_gguf(&tiny_weights(DType::F16, 21), &path);
    path
}

#[test]
fn a_tiny_gguf_model_on_qnn_matches_the_cpu_in_its_logits() {
    let Some(folder) = coordgen_tests::qnn_folder() else {
        return;
    };
    let dir = scratch("tiny");
    let model = tiny_model(&dir);
    let cpu = Engine::load(&model, options(None)).unwrap();
    let want = logits(&cpu);
    for scope in GraphScope::ALL {
        let mut qnn = qnn_options(&folder, None);
        qnn.graphs = scope;
        let qnn = Engine::load(&model, options(Some(qnn))).unwrap();
        let report = qnn.accelerator_report().unwrap();
        assert!(report.graphs > 0, "{report:?}");
        // Linear graphs leave attention to the CPU; full layers do not.
        assert_eq!(
            report.split_subgraphs > 0,
            scope == GraphScope::Linear,
            "{report:?}"
        );
        assert!(!report.cache_hit);
        let got = logits(&qnn);
        let err = relative_rms(&got, &want);
        eprintln!(
            "tiny model, fp16 weights, {} graphs: logits relative RMS {err:.2e}",
            scope.name()
        );
        // fp16 weights and fp16 arithmetic in the HTP over 2 layers (the
        // block test measures 3e-3 on the hidden state).
        assert!(err <= 1.5e-2, "{err:.3e} (measured 7.8e-3)");
        // The same argmax at every position.
        let vocab = 96;
        let argmax = |l: &[f32]| {
            l.chunks(vocab)
                .map(|row| {
                    (0..vocab)
                        .max_by(|&a, &b| row[a].total_cmp(&row[b]))
                        .unwrap()
                })
                .collect::<Vec<_>>()
        };
        assert_eq!(argmax(&got), argmax(&want));
    }
    let _ = std::fs::remove_dir_all(dir);
}

/// The name of the cache test, which re-runs itself as its own fresh
/// process.
const CACHE_TEST: &str = "a_cache_hit_skips_finalize_and_gives_the_same_logits_in_a_fresh_process";

/// The fresh process's side of the cache test: with these variables set,
/// the test loads the tiny model over the cache, checks the hit and writes
/// its logits.
fn fresh_process_side() -> bool {
    let (Some(cache), Some(out), Some(model)) = (
        std::env::var_os("COORDGEN_TEST_QNN_CACHE"),
        std::env::var_os("COORDGEN_TEST_QNN_OUT"),
        std::env::var_os("COORDGEN_TEST_QNN_MODEL"),
    ) else {
        return false;
    };
    let folder = coordgen_tests::qnn_folder().unwrap();
    let engine = Engine::load(
        Path::new(&model),
        options(Some(qnn_options(&folder, Some(Path::new(&cache))))),
    )
    .unwrap();
    let report = engine.accelerator_report().unwrap();
    assert!(report.cache_hit, "{report:?}");
    assert_eq!(report.finalize_ms, 0.0);
    let bytes: Vec<u8> = logits(&engine)
        .iter()
        .flat_map(|v| v.to_le_bytes())
        .collect();
    std::fs::write(out, bytes).unwrap();
    true
}

#[test]
fn a_cache_hit_skips_finalize_and_gives_the_same_logits_in_a_fresh_process() {
    if fresh_process_side() {
        return;
    }
    let Some(folder) = coordgen_tests::qnn_folder() else {
        return;
    };
    let dir = scratch("cache");
    let model = tiny_model(&dir);
    let cache = dir.join("contexts");
    let qnn = || options(Some(qnn_options(&folder, Some(&cache))));

    let fresh = Engine::load(&model, qnn()).unwrap();
    let built = fresh.accelerator_report().unwrap().clone();
    assert!(
        !built.cache_hit && built.finalize_ms > 0.0 && built.binary_bytes > 0,
        "{built:?}"
    );
    let entry = built.cache_entry.clone().unwrap();
    assert!(entry.join("manifest.json").is_file(), "{}", entry.display());
    let want = logits(&fresh);
    drop(fresh);

    let cached = Engine::load(&model, qnn()).unwrap();
    let hit = cached.accelerator_report().unwrap();
    assert!(hit.cache_hit, "{hit:?}");
    assert_eq!(hit.finalize_ms, 0.0);
    assert_eq!(hit.graphs, built.graphs);
    assert_eq!(hit.cache_entry.as_ref(), Some(&entry));
    assert_eq!(
        logits(&cached),
        want,
        "a reloaded context computes what it was built to"
    );
    drop(cached);

    // Another process, which has never built a graph.
    let out = dir.join("logits.bin");
    let status = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", CACHE_TEST, "--nocapture"])
        .env("COORDGEN_TEST_QNN_CACHE", &cache)
        .env("COORDGEN_TEST_QNN_OUT", &out)
        .env("COORDGEN_TEST_QNN_MODEL", &model)
        .status()
        .unwrap();
    assert!(status.success());
    let bytes = std::fs::read(&out).unwrap();
    let other: Vec<f32> = bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    assert_eq!(other, want);

    // A different weight format is a different entry, not a wrong hit.
    let mut int8 = qnn_options(&folder, Some(&cache));
    int8.weights = WeightFormat::Int8;
    let other_format = Engine::load(&model, options(Some(int8))).unwrap();
    assert!(!other_format.accelerator_report().unwrap().cache_hit);

    // A corrupt binary is a typed error, not a crash.
    std::fs::write(entry.join("group0.bin"), b"not a context binary").unwrap();
    let err = Engine::load(&model, qnn())
        .err()
        .expect("a corrupt cache entry fails");
    assert!(matches!(err, coordgen::Error::Qnn(_)), "{err}");
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn a_missing_library_names_its_folder_and_how_to_fill_it() {
    let dir = scratch("missing");
    let model = tiny_model(&dir);
    let empty = dir.join("no-qnn-here");
    let err = Engine::load(&model, options(Some(qnn_options(&empty, None))))
        .err()
        .expect("no library, no QNN engine");
    let text = err.to_string();
    assert!(matches!(err, coordgen::Error::Qnn(_)), "{text}");
    assert!(
        text.contains("no-qnn-here") && text.contains("tools/fetch-qnn"),
        "{text}"
    );
    let _ = std::fs::remove_dir_all(dir);
}

/// The default model on the CPU and on QNN (fp16 weights, no cache), with
/// the buckets a greedy comparison needs, and the fixture's 5 shortest prompts by
/// name; `None` when the library, model or fixture is absent.
#[allow(clippy::type_complexity)]
fn default_engines() -> Option<(Engine, Engine, Vec<(String, Vec<u32>)>)> {
    let folder = coordgen_tests::qnn_folder()?;
    let model = coordgen_tests::default_model()?;
    let prompts = coordgen_tests::shortest_greedy_prompts(5)?;
    let buckets = |qnn| EngineOptions {
        threads: Some(2),
        context_length: 256,
        prefill_widths: vec![32],
        verify_widths: vec![1],
        prefault: false,
        accelerator: qnn,
        ..EngineOptions::default()
    };
    let cpu = Engine::load(&model, buckets(None)).unwrap();
    let qnn = Engine::load(&model, buckets(Some(qnn_options(&folder, None)))).unwrap();
    Some((cpu, qnn, prompts))
}

/// The acceptance check of the QNN backend on the default model: fp16
/// weights give the CPU's greedy tokens for 16 tokens on at least 4 of the
/// 5 shortest prompts of the greedy fixture (32-48 tokens), and the logits
/// after each prompt stay close to the CPU's. About 5 minutes on the
/// simulator (2-3 s per decoded token): the slowest test in CI.
#[test]
fn default_model_greedy_tokens_on_qnn_equal_the_cpus() {
    let Some((cpu, qnn, prompts)) = default_engines() else {
        return;
    };
    eprintln!("{:?}", qnn.accelerator_report().unwrap());
    let mut equal = 0;
    for (name, prompt) in &prompts {
        let (want, want_logits) = greedy(&cpu, prompt, 16);
        let (got, got_logits) = greedy(&qnn, prompt, 16);
        let same = got.iter().zip(&want).take_while(|(a, b)| a == b).count();
        // The CPU's 8-bit activations against the HTP's fp16: a few percent
        // (1.7e-2 to 3.3e-2 measured on longer prompts).
        let err = relative_rms(&got_logits, &want_logits);
        eprintln!(
            "{name} ({} tokens): {same} of 16 greedy tokens equal; logits relative RMS {err:.2e}",
            prompt.len()
        );
        assert!(err < 0.1, "{name}: logits relative RMS {err:.3e}");
        equal += usize::from(same == 16);
    }
    assert!(equal >= 4, "only {equal} of 5 prompts agree for 16 tokens");
}

#[test]
fn switching_schedules_on_qnn_give_the_same_logits_with_one_graph_per_block() {
    use coordgen::schedule::{Event, GraphKind};
    use coordgen::Switching;
    let Some(folder) = coordgen_tests::qnn_folder() else {
        return;
    };
    let dir = scratch("switching");
    let model = tiny_model(&dir);
    let cache = dir.join("contexts");
    let options = |switching| EngineOptions {
        layers_per_block: 1,
        switching,
        ..options(Some(qnn_options(&folder, Some(&cache))))
    };
    // The cache entry (one group per bucket and block) is written once.
    drop(Engine::load(&model, options(Switching::BothResident)).unwrap());
    let prompt: Vec<u32> = (0..20).map(|i| (i * 5 + 1) % 96).collect();
    let run = |engine: &Engine| {
        let mut session = engine.session();
        let mut all = session.append_all_logits(&prompt).unwrap();
        for t in [4u32, 40] {
            session.append(&[t]).unwrap();
            all.extend_from_slice(session.logits());
        }
        all
    };
    let both = Engine::load(&model, options(Switching::BothResident)).unwrap();
    let want = run(&both);
    drop(both);
    // Naive, progressive as planned from the measured costs, and
    // progressive forced to switch from the first block boundary on.
    for (mode, from) in [
        (Switching::Naive, None),
        (Switching::Progressive, None),
        (Switching::Progressive, Some(0)),
    ] {
        let engine = Engine::load(&model, options(mode)).unwrap();
        engine.set_switching(mode, from).unwrap();
        engine.start_timeline().unwrap();
        let got = run(&engine);
        let events = engine.take_timeline().unwrap().events;
        let loads = events
            .iter()
            .filter(|e| matches!(e, Event::Load { .. }))
            .count();
        assert_eq!(loads, 2, "{mode:?}: one G2 load per block: {events:?}");
        let err = relative_rms(&got, &want);
        let g2 = events
            .iter()
            .filter(|e| {
                matches!(
                    e,
                    Event::Compute {
                        graph: GraphKind::G2,
                        ..
                    }
                )
            })
            .count();
        eprintln!(
            "{mode:?}: {g2} block runs on G2 sub-chunks; logits relative RMS {err:.2e} against both resident"
        );
        // The HTP computes each row alone: G2 sub-chunks give G1's values.
        assert_eq!(got, want, "{mode:?}");
        if from == Some(0) {
            assert!(g2 > 0, "the schedule ran no block on G2: {events:?}");
        }
        // One resident graph per block: after prefill, every block's G2.
        let residency = engine.residency().unwrap();
        assert_eq!(residency, vec![(false, true); 2], "{mode:?}");
    }
    let _ = std::fs::remove_dir_all(dir);
}
