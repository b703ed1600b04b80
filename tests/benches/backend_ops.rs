//! Per-op times of the Vulkan backend next to the CPU backend, on one layer
//! of SmolLM2-135M's shapes (d = 576, FFN 1536, 9 heads of 64, 3 KV heads,
//! Q4_1 matrices) at widths 1 (decode) and 16 (verify), with 256 cached
//! tokens. Each op runs alone as a compiled piece over a session state, so
//! a Vulkan time includes its submit, fence wait and the copies of its
//! inputs and outputs through the mapped mirrors.
//!
//! On lavapipe (CI, this machine) the Vulkan figures say nothing about a
//! GPU: lavapipe runs the shaders on the same CPU cores, a lane per
//! invocation. `cargo bench -p coordgen-tests --bench backend_ops`.

use coordgen_cpu::CpuBackend;
use coordgen_graph::*;
use coordgen_tests::synthetic::{MemWeights, Rng};
use criterion::{criterion_group, criterion_main, Criterion};

fn smollm_layer() -> (Plan, MemWeights) {
    let config = ModelConfig {
        n_layers: 1,
        d_model: 576,
        d_ff: 1536,
        n_heads: 9,
        n_kv_heads: 3,
        head_dim: 64,
        vocab_size: 256,
        train_context: 2048,
        rope_theta: 100000.0,
        rms_eps: 1e-5,
    };
    let mut rng = Rng(5);
    let mut w = MemWeights::default();
    w.add(
        &mut rng,
        names::TOKEN_EMBD.into(),
        DType::Q8_0,
        vec![256, 576],
    );
    w.add(&mut rng, names::OUTPUT_NORM.into(), DType::F32, vec![576]);
    for (what, shape) in [
        ("attn_norm", vec![576]),
        ("ffn_norm", vec![576]),
        ("attn_q", vec![576, 576]),
        ("attn_k", vec![192, 576]),
        ("attn_v", vec![192, 576]),
        ("attn_output", vec![576, 576]),
        ("ffn_gate", vec![1536, 576]),
        ("ffn_up", vec![1536, 576]),
        ("ffn_down", vec![576, 1536]),
    ] {
        let dtype = if shape.len() == 1 {
            DType::F32
        } else {
            DType::Q4_1
        };
        w.add(&mut rng, names::layer(0, what), dtype, shape);
    }
    let opts = PlanOptions {
        prefill_widths: vec![16],
        verify_widths: vec![1],
        layers_per_block: 1,
        context_length: 512,
    };
    (lower(&config, &w, &opts).expect("lowers"), w)
}

/// Random activations everywhere; valid positions; a causal tree mask.
fn filled_state(plan: &Plan, width: usize, past: usize) -> SessionState {
    let mut state = SessionState::new(plan);
    let mut rng = Rng(9);
    for b in &mut state.boundaries {
        for c in b.as_bytes_mut().chunks_exact_mut(4) {
            c.copy_from_slice(&rng.next(1.0).to_ne_bytes());
        }
    }
    let bounds = plan.boundaries;
    for (r, c) in state.boundaries[bounds.positions.0]
        .as_bytes_mut()
        .chunks_exact_mut(4)
        .enumerate()
    {
        c.copy_from_slice(&((past + r) as i32).to_ne_bytes());
    }
    for (r, c) in state.boundaries[bounds.tokens.0]
        .as_bytes_mut()
        .chunks_exact_mut(4)
        .enumerate()
    {
        c.copy_from_slice(&((r % 256) as i32).to_ne_bytes());
    }
    let mask = state.boundaries[bounds.tree_mask.0].as_bytes_mut();
    mask.fill(0);
    // Laid out at the widest verify width (only verify buckets read it).
    let mask_width = (mask.len() as f64).sqrt() as usize;
    for i in 0..mask_width.min(width) {
        for j in 0..=i {
            mask[i * mask_width + j] = 1;
        }
    }
    for c in state.arena.as_bytes_mut().chunks_exact_mut(4) {
        c.copy_from_slice(&rng.next(1.0).to_ne_bytes());
    }
    state
}

fn bench(c: &mut Criterion) {
    let gpu = match coordgen_vulkan::VulkanBackend::new(&Default::default()) {
        Ok(g) => g,
        Err(e) => {
            eprintln!("no Vulkan device ({e}): nothing to measure");
            return;
        }
    };
    let cpu = CpuBackend::new(None).expect("cpu backend");
    let (plan, weights) = smollm_layer();
    let past = 256;
    let mut group = c.benchmark_group("backend_ops");
    group.sample_size(20);
    for bucket in &plan.buckets {
        let graph = &bucket.blocks[0];
        let width = graph.width;
        for (i, op) in graph.nodes.iter().enumerate() {
            let label = match *op {
                Op::MatMul { w, .. } => {
                    let d = &graph.tensors[w.0];
                    format!("matmul_{}x{}_{}", d.shape[0], d.shape[1], d.dtype)
                }
                _ => op.name().to_string(),
            };
            let one = Subgraph {
                nodes: vec![op.clone()],
                ..graph.clone()
            };
            let backends: [(&str, &dyn Backend); 2] = [("vulkan", &gpu), ("cpu", &cpu)];
            for (name, backend) in backends {
                let Ok(mut exe) = compile_partitioned(&one, &[backend], &weights) else {
                    continue;
                };
                let mut state = filled_state(&plan, width, past);
                let params = ExecParams {
                    n_valid: width,
                    past_len: past,
                };
                group.bench_function(format!("{name}/w{width}/op{i:02}_{label}"), |b| {
                    b.iter(|| exe.run(&mut state, &params).expect("runs"))
                });
            }
        }
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
