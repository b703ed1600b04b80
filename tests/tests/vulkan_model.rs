//! Whole models through the engine on the Vulkan backend (on CI: lavapipe
//! with the validation layer on) against the CPU backend: a tiny synthetic
//! GGUF model's logits, batch invariance, the default model's greedy
//! tokens, a validation error that must fail, a lost device that hands
//! over to the CPU, and no device at all.

use coordgen::{Engine, EngineOptions, VulkanOptions};
use coordgen_graph::DType;
use coordgen_tests::greedy;
use coordgen_tests::synthetic::{tiny_weights, write_tiny_gguf};
use std::path::{Path, PathBuf};

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "coordgen-vulkan-model-{name}-{}",
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn validated() -> VulkanOptions {
    VulkanOptions {
        validation: true,
        ..Default::default()
    }
}

/// Whether the tests may use Vulkan here (see `coordgen_tests::vulkan`).
fn have_vulkan() -> bool {
    coordgen_tests::vulkan().is_some()
}

fn tiny_options(gpu: Option<VulkanOptions>) -> EngineOptions {
    EngineOptions {
        threads: Some(1),
        context_length: 64,
        prefill_widths: vec![8],
        verify_widths: vec![1, 4],
        layers_per_block: 2,
        prefault: false,
        gpu,
        ..EngineOptions::default()
    }
}

fn tiny_model(dir: &Path, dtype: DType) -> PathBuf {
    let path = dir.join(format!("tiny-{dtype}.gguf"));
    write_tiny_gguf(&tiny_weights(dtype, 21), &path);
    path
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

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

/// The tiny model (2 layers, d = 64) on Vulkan gives the CPU's logits,
/// bitwise, with every matrix type the kernels cover.
#[test]
fn a_tiny_gguf_model_on_vulkan_matches_the_cpu_in_its_logits() {
    if !have_vulkan() {
        return;
    }
    let dir = scratch("tiny");
    for dtype in [DType::Q4_0, DType::Q4_1, DType::Q8_0, DType::F16] {
        let model = tiny_model(&dir, dtype);
        let cpu = Engine::load(&model, tiny_options(None)).unwrap();
        let gpu = Engine::load(&model, tiny_options(Some(validated()))).unwrap();
        let report = gpu.accelerator_report().unwrap();
        assert_eq!(report.backend, "vulkan");
        assert!(
            report.graphs > 0 && report.split_subgraphs == 0,
            "{report:?}"
        );
        let (want, got) = (logits(&cpu), logits(&gpu));
        // Sessions live in the device's unified memory: nothing is copied.
        assert_eq!(gpu.gpu_bytes_copied(), 0, "{dtype}: the runs copied");
        assert!(got.iter().all(|v| v.is_finite()));
        assert_eq!(
            bits(&got),
            bits(&want),
            "{dtype}: logits differ from the CPU's"
        );
        eprintln!(
            "tiny model, {dtype} matrices: {} logits bitwise equal",
            got.len()
        );
    }
}

/// The shader builds without f64 (devices without shaderFloat64), forced
/// on lavapipe: the tiny model's logits within 1e-5 relative RMS of the
/// CPU's (measured 5.9e-8), the same argmax at every position.
#[test]
fn a_tiny_model_without_f64_stays_within_its_tolerance() {
    if !have_vulkan() {
        return;
    }
    let dir = scratch("nof64");
    let model = tiny_model(&dir, DType::Q4_1);
    let cpu = Engine::load(&model, tiny_options(None)).unwrap();
    let options = VulkanOptions {
        f32_only: true,
        ..validated()
    };
    let gpu = Engine::load(&model, tiny_options(Some(options))).unwrap();
    let (want, got) = (logits(&cpu), logits(&gpu));
    let (mut e, mut v) = (0f64, 0f64);
    for (&g, &w) in got.iter().zip(&want) {
        e += (f64::from(g) - f64::from(w)).powi(2);
        v += f64::from(w).powi(2);
    }
    let rms = (e / v).sqrt();
    eprintln!("tiny model without f64: logits relative RMS {rms:.2e}");
    assert!(rms < 1e-5, "relative RMS {rms:e}");
    let vocab = 96;
    for (g, w) in got.chunks(vocab).zip(want.chunks(vocab)) {
        assert_eq!(coordgen_tests::argmax(g), coordgen_tests::argmax(w));
    }
}

/// Batch invariance on the device: the rows of one 4-wide verify pass are
/// bitwise the rows of four single-token steps.
#[test]
fn vulkan_rows_of_a_wide_pass_equal_single_token_steps() {
    if !have_vulkan() {
        return;
    }
    let dir = scratch("batch");
    let model = tiny_model(&dir, DType::Q4_1);
    let gpu = Engine::load(&model, tiny_options(Some(validated()))).unwrap();
    let prompt = [3u32, 14, 15, 92, 65];
    let next = [35u32, 89, 79, 32];
    let mut wide = gpu.session();
    wide.set_tokens(&prompt).unwrap();
    let together = wide.append_all_logits(&next).unwrap();
    let mut narrow = gpu.session();
    narrow.set_tokens(&prompt).unwrap();
    let mut one_by_one = Vec::new();
    for t in next {
        narrow.append(&[t]).unwrap();
        one_by_one.extend_from_slice(narrow.logits());
    }
    assert_eq!(together.len(), one_by_one.len());
    assert_eq!(
        bits(&together),
        bits(&one_by_one),
        "a row depends on the batch width"
    );
}

/// A shader that needs a device feature that was never enabled runs
/// anyway on lavapipe; only the validation layer notices. That error must
/// fail the compile instead of passing silently.
#[test]
fn a_validation_error_fails_the_run() {
    if !have_vulkan() {
        return;
    }
    let dir = scratch("validation");
    let model = tiny_model(&dir, DType::Q8_0);
    let options = VulkanOptions {
        omit_features: true,
        ..validated()
    };
    let err = Engine::load(&model, tiny_options(Some(options)))
        .err()
        .expect("a device without the shaders' features must fail under validation");
    let text = err.to_string();
    assert!(text.contains("validation layer reported"), "{text}");
    assert!(
        text.contains("VUID"),
        "the layer's message names the rule: {text}"
    );
}

/// A lost device is a typed error inside the backend; the engine moves to
/// the CPU and the session goes on with the same results.
#[test]
fn a_lost_device_hands_the_session_to_the_cpu() {
    if !have_vulkan() {
        return;
    }
    let dir = scratch("lost");
    let model = tiny_model(&dir, DType::Q8_0);
    let cpu = Engine::load(&model, tiny_options(None)).unwrap();
    let gpu = Engine::load(&model, tiny_options(Some(validated()))).unwrap();
    let run = |engine: &Engine, lose_after_prefill: bool| {
        let mut session = engine.session();
        let mut all = session.append_all_logits(&[1, 17, 42, 5, 88, 9]).unwrap();
        if lose_after_prefill {
            engine.treat_gpu_as_lost();
        }
        for t in [33u32, 2, 71] {
            session.append(&[t]).unwrap();
            all.extend_from_slice(session.logits());
        }
        all
    };
    let want = run(&cpu, false);
    assert!(!gpu.gpu_lost());
    let got = run(&gpu, true);
    assert!(gpu.gpu_lost(), "the loss was noticed");
    assert_eq!(bits(&got), bits(&want));
}

/// Without a Vulkan driver, asking for Vulkan is a clear error.
#[test]
fn without_a_vulkan_driver_the_error_says_so() {
    let dir = scratch("nodriver");
    let model = tiny_model(&dir, DType::Q8_0);
    // The loader reads the driver list from this variable when set; a
    // child process keeps the override away from the other tests.
    if std::env::var_os("COORDGEN_TEST_NO_DRIVER").is_none() {
        let status = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "without_a_vulkan_driver_the_error_says_so",
                "--exact",
                "--nocapture",
            ])
            .env("COORDGEN_TEST_NO_DRIVER", "1")
            .env("VK_DRIVER_FILES", dir.join("none.json"))
            .env("VK_ICD_FILENAMES", dir.join("none.json"))
            .status()
            .unwrap();
        assert!(status.success());
        return;
    }
    let err = Engine::load(&model, tiny_options(Some(VulkanOptions::default())))
        .err()
        .expect("no driver, no engine");
    let text = err.to_string();
    assert!(text.contains("Vulkan"), "{text}");
    assert!(
        text.contains("no usable Vulkan device") || text.contains("Vulkan loader"),
        "{text}"
    );
}

/// The acceptance check on the default model: Vulkan gives the CPU's
/// greedy tokens for 32 tokens on at least 4 of the greedy fixture's 5
/// shortest prompts (measured: all 5, the logits bitwise equal).
#[test]
fn default_model_greedy_tokens_on_vulkan_equal_the_cpus() {
    if !have_vulkan() {
        return;
    }
    let Some(model) = coordgen_tests::default_model() else {
        return;
    };
    let Some(prompts) = coordgen_tests::shortest_greedy_prompts(5) else {
        return;
    };
    let options = |gpu| EngineOptions {
        threads: Some(2),
        context_length: 256,
        prefill_widths: vec![32],
        verify_widths: vec![1],
        prefault: false,
        gpu,
        ..EngineOptions::default()
    };
    let cpu = Engine::load(&model, options(None)).unwrap();
    let gpu = Engine::load(&model, options(Some(validated()))).unwrap();
    let mut equal = 0;
    for (name, prompt) in &prompts {
        let (want, _) = greedy(&cpu, prompt, 32);
        let (got, _) = greedy(&gpu, prompt, 32);
        let same = got.iter().zip(&want).take_while(|(a, b)| a == b).count();
        eprintln!(
            "{name} ({} tokens): {same} of 32 greedy tokens equal",
            prompt.len()
        );
        equal += usize::from(same == 32);
    }
    assert!(equal >= 4, "only {equal} of 5 prompts agree for 32 tokens");
}

/// Weights larger than one storage-buffer binding are bound in row chunks
/// (the embedding table and the output head of a large vocabulary): with
/// the limit lowered to 2 KiB every matrix of the tiny model is split, and
/// the logits stay the CPU's.
#[test]
fn weights_past_the_binding_limit_are_split_and_give_the_same_logits() {
    if !have_vulkan() {
        return;
    }
    let dir = scratch("split");
    let model = tiny_model(&dir, DType::Q4_1);
    let cpu = Engine::load(&model, tiny_options(None)).unwrap();
    let options = VulkanOptions {
        max_binding_bytes: Some(2048),
        ..validated()
    };
    let gpu = Engine::load(&model, tiny_options(Some(options))).unwrap();
    assert_eq!(bits(&logits(&gpu)), bits(&logits(&cpu)));
}

/// The pipeline cache is written on shutdown and read back at the next
/// start, by the same driver only.
#[test]
fn the_pipeline_cache_persists_across_backends() {
    if !have_vulkan() {
        return;
    }
    let dir = scratch("pipelines");
    let model = tiny_model(&dir, DType::Q8_0);
    let path = dir.join("cache").join("pipelines.bin");
    let options = VulkanOptions {
        pipeline_cache: Some(path.clone()),
        ..validated()
    };
    let first = Engine::load(&model, tiny_options(Some(options.clone()))).unwrap();
    let want = logits(&first);
    drop(first);
    // At least the 32-byte header (lavapipe of Mesa 22.3 stores no more:
    // it compiles every pipeline anew).
    let written = std::fs::metadata(&path).expect("cache written").len();
    assert!(written >= 32, "{written} bytes");
    let second = Engine::load(&model, tiny_options(Some(options.clone()))).unwrap();
    assert_eq!(bits(&logits(&second)), bits(&want));
    drop(second);
    // A foreign or corrupt file is ignored, not trusted.
    std::fs::write(&path, b"not a pipeline cache").unwrap();
    let third = Engine::load(&model, tiny_options(Some(options))).unwrap();
    assert_eq!(bits(&logits(&third)), bits(&want));
}
