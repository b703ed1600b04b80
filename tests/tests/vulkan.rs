//! The Vulkan backend against the CPU backend on the same IR graphs, with
//! the validation layer on (on CI: lavapipe, Mesa's software Vulkan).
//!
//! Tolerances, per op (largest |vulkan - cpu| / max |cpu| over the valid
//! rows): the exact shader builds repeat the CPU's arithmetic operation for
//! operation, so every op but the f32 matmul must agree bitwise on a device
//! whose float arithmetic is IEEE-exact (lavapipe); the f32 matmul sums in
//! another order than the CPU's SIMD tier (1e-6). The builds without f64
//! (native FMAs, which lavapipe rounds twice, and f32 sums) get 1e-5 for
//! every op; measured: at most 4.7e-7 (RMSNorm), and attention stays
//! bitwise (its products of two f16 values are exact in f32).

use coordgen_cpu::CpuBackend;
use coordgen_graph::*;
use coordgen_tests::synthetic::{
    tiny_plan, tiny_weights, wide_plan, wide_weights, MemWeights, Rng,
};
use coordgen_tests::vulkan;
use half::f16;

/// The tolerance of op `op` in `graph` (see the module docs), for the
/// exact shader builds or the builds without f64.
fn tolerance(op: &Op, graph: &Subgraph, exact: bool) -> f64 {
    match (op, exact) {
        (Op::MatMul { w, .. }, true) if graph.tensors[w.0].dtype == DType::F32 => 1e-6,
        (_, true) => 0.0,
        (_, false) => F32_TOLERANCE,
    }
}

/// Tolerance of every op in the builds without f64 (native FMAs that
/// lavapipe rounds twice, f32 sums).
const F32_TOLERANCE: f64 = 1e-5;

/// Fills the tensors `op` reads with valid random data: activations,
/// token ids below the vocabulary, positions after `past`, a random draft
/// tree, a KV cache whose first `past` slots hold random f16 values.
fn fill_inputs(
    state: &mut SessionState,
    graph: &Subgraph,
    op: &Op,
    rng: &mut Rng,
    n: usize,
    past: usize,
) {
    let width = graph.width;
    for t in op.inputs() {
        let decl = &graph.tensors[t.0];
        let bytes: &mut [u8] = match decl.kind {
            TensorKind::Weight { .. } => continue,
            TensorKind::Boundary { id } => state.boundaries[id.0].as_bytes_mut(),
            TensorKind::KvCache { layer, half } => {
                state.kv.half_mut(half.index(layer)).expect("half")
            }
            TensorKind::Intermediate { offset } => {
                let size = decl.n_bytes().expect("whole blocks");
                &mut state.arena.as_bytes_mut()[offset..offset + size]
            }
        };
        match (op, decl.dtype) {
            (Op::Embedding { table, .. }, DType::I32) => {
                let vocab = graph.tensors[table.0].shape[0];
                for c in bytes.chunks_exact_mut(4) {
                    let id = ((rng.next(0.5) + 0.5) * vocab as f32) as i32;
                    c.copy_from_slice(&id.clamp(0, vocab as i32 - 1).to_ne_bytes());
                }
            }
            (Op::Rope { .. }, DType::I32) => {
                for (r, c) in bytes.chunks_exact_mut(4).enumerate() {
                    c.copy_from_slice(&((past + r) as i32).to_ne_bytes());
                }
            }
            (_, DType::U8) => {
                // Row i sees itself and a random subset of earlier rows
                // that forms a path: its parent's visible set.
                let mut parent = vec![0usize; width];
                for (i, p) in parent.iter_mut().enumerate().skip(1) {
                    *p = ((rng.next(0.5) + 0.5) * i as f32) as usize % i;
                }
                bytes.fill(0);
                for i in 0..width {
                    let mut j = i;
                    loop {
                        bytes[i * width + j] = 1;
                        if j == 0 {
                            break;
                        }
                        j = parent[j];
                    }
                }
            }
            (_, DType::F16) => {
                for c in bytes.chunks_exact_mut(2) {
                    c.copy_from_slice(&f16::from_f32(rng.next(1.5)).to_ne_bytes());
                }
            }
            (_, DType::F32) => {
                for c in bytes.chunks_exact_mut(4) {
                    c.copy_from_slice(&rng.next(2.0).to_ne_bytes());
                }
            }
            (_, other) => panic!("no test input for {other}"),
        }
    }
    let _ = n;
}

/// The valid rows of `t` in `state`, as f32 (f16 for the KV cache).
fn read(
    state: &mut SessionState,
    graph: &Subgraph,
    t: TensorId,
    n: usize,
    past: usize,
) -> Vec<f32> {
    let decl = &graph.tensors[t.0];
    match decl.kind {
        TensorKind::KvCache { layer, half } => {
            let bytes = state.kv.half_mut(half.index(layer)).expect("half");
            let kv_dim = decl.shape[1];
            let end = (past + n).div_ceil(16) * 16 * kv_dim * 2;
            bytes[..end]
                .chunks_exact(2)
                .map(|c| f16::from_ne_bytes([c[0], c[1]]).to_f32())
                .collect()
        }
        _ => {
            let size = decl.n_bytes().expect("whole blocks");
            let bytes: &[u8] = match decl.kind {
                TensorKind::Boundary { id } => &state.boundaries[id.0].as_bytes()[..size],
                TensorKind::Intermediate { offset } => {
                    &state.arena.as_bytes()[offset..offset + size]
                }
                _ => unreachable!("outputs are session memory"),
            };
            let rows = decl.shape[0];
            let valid = if rows == graph.width {
                rows.min(n)
            } else {
                rows
            };
            let row_bytes = size / rows;
            bytes[..valid * row_bytes]
                .chunks_exact(4)
                .map(|c| f32::from_ne_bytes([c[0], c[1], c[2], c[3]]))
                .collect()
        }
    }
}

/// Largest |got - want| / max |want|, and whether all are bitwise equal.
fn compare(got: &[f32], want: &[f32]) -> (f64, bool) {
    assert_eq!(got.len(), want.len());
    let scale = want
        .iter()
        .fold(0f64, |m, &v| m.max(v.abs() as f64))
        .max(1e-30);
    let worst = got
        .iter()
        .zip(want)
        .fold(0f64, |m, (&g, &w)| m.max((g as f64 - w as f64).abs()));
    let bitwise = got
        .iter()
        .zip(want)
        .all(|(g, w)| g.to_bits() == w.to_bits());
    (worst / scale, bitwise)
}

/// Every op of every subgraph of `plan`, alone, on both backends.
fn every_op(plan: &Plan, weights: &MemWeights, label: &str) {
    if let Some(gpu) = vulkan() {
        every_op_on(&gpu, true, plan, weights, label);
    }
}

/// [`every_op`] on `gpu`, whose shaders are the exact builds or not.
fn every_op_on(
    gpu: &coordgen_vulkan::VulkanBackend,
    exact: bool,
    plan: &Plan,
    weights: &MemWeights,
    label: &str,
) {
    assert_eq!(gpu.context().exact(), exact);
    let mut worst: std::collections::BTreeMap<&str, f64> = Default::default();
    let cpu = CpuBackend::new(Some(2)).expect("cpu backend");
    let mut rng = Rng(11);
    let mut checked = 0;
    let mut ops_seen = std::collections::BTreeSet::new();
    for bucket in &plan.buckets {
        for graph in bucket.subgraphs() {
            for (i, op) in graph.nodes.iter().enumerate() {
                let one = Subgraph {
                    name: format!("{}#op{i}", graph.name),
                    nodes: vec![op.clone()],
                    ..graph.clone()
                };
                let mut cpu_exe = cpu.compile(&one, weights).expect("cpu compiles");
                // The op's output is what the test reads back, so it is an
                // output of the piece even where it is a mere intermediate.
                let mut piece = partition(&one, &[gpu as &dyn Backend])
                    .expect("partitions")
                    .remove(0);
                piece.outputs.push(op.output());
                let mut gpu_exe = gpu
                    .compile_piece(&piece, weights)
                    .unwrap_or_else(|e| panic!("{}: {e}", one.name));
                let width = graph.width;
                for n in [1, width.div_ceil(2), width] {
                    for past in [0, 13, 40] {
                        let mut state = SessionState::new(plan);
                        fill_inputs(&mut state, graph, op, &mut rng, n, past);
                        let mut on_gpu = state.clone();
                        let params = ExecParams {
                            n_valid: n,
                            past_len: past,
                        };
                        cpu_exe.run(&mut state, &params).expect("cpu runs");
                        gpu_exe
                            .run(&mut on_gpu, &params)
                            .unwrap_or_else(|e| panic!("{} n={n} past={past}: {e}", one.name));
                        let mut outs = vec![op.output()];
                        if let Op::Attention {
                            k_cache, v_cache, ..
                        } = *op
                        {
                            outs.extend([k_cache, v_cache]);
                        }
                        for t in outs {
                            let want = read(&mut state, graph, t, n, past);
                            let got = read(&mut on_gpu, graph, t, n, past);
                            let (err, bitwise) = compare(&got, &want);
                            let tol = tolerance(op, graph, exact);
                            let w = worst.entry(op.name()).or_default();
                            *w = w.max(err);
                            assert!(
                                err <= tol,
                                "{label} {} ({}) n={n} past={past}, tensor {}: error {err:e} > {tol:e} (bitwise: {bitwise})",
                                one.name,
                                op.name(),
                                graph.tensors[t.0].name
                            );
                        }
                        checked += 1;
                        ops_seen.insert(op.name());
                    }
                }
            }
        }
    }
    eprintln!("{label}: {checked} op runs agree with the CPU; worst error per op: {worst:?}");
    // These states are heap memory: the runs went through the mirrors.
    assert!(gpu.bytes_copied() > 0);
    assert_eq!(ops_seen.len(), 8, "every op of the IR was exercised");
}

#[test]
fn every_op_matches_the_cpu_with_q4_0_weights() {
    let w = tiny_weights(DType::Q4_0, 3);
    every_op(&tiny_plan(&w), &w, "q4_0");
}

#[test]
fn every_op_matches_the_cpu_with_q4_1_weights() {
    let w = tiny_weights(DType::Q4_1, 4);
    every_op(&tiny_plan(&w), &w, "q4_1");
}

#[test]
fn every_op_matches_the_cpu_with_q8_0_weights() {
    let w = tiny_weights(DType::Q8_0, 5);
    every_op(&tiny_plan(&w), &w, "q8_0");
}

#[test]
fn every_op_matches_the_cpu_with_f16_weights() {
    let w = tiny_weights(DType::F16, 6);
    every_op(&tiny_plan(&w), &w, "f16");
}

#[test]
fn every_op_matches_the_cpu_with_f32_weights() {
    let w = tiny_weights(DType::F32, 7);
    every_op(&tiny_plan(&w), &w, "f32");
}

#[test]
fn every_op_matches_the_cpu_with_k_quant_weights() {
    // d = 64 is not whole super-blocks of 256: a wider model for K-quants.
    for dtype in [DType::Q4_K, DType::Q5_K, DType::Q6_K] {
        let w = wide_weights(dtype, 8);
        every_op(&wide_plan(&w), &w, &format!("{dtype}"));
    }
}

/// The shader builds without f64 (what devices without shaderFloat64 run),
/// forced on lavapipe: every op within its tolerance of the CPU.
#[test]
fn every_op_without_f64_is_within_its_tolerance() {
    let options = coordgen_vulkan::VulkanOptions {
        f32_only: true,
        ..Default::default()
    };
    let Some(gpu) = coordgen_tests::vulkan_with(options) else {
        return;
    };
    for dtype in [
        DType::Q4_0,
        DType::Q4_1,
        DType::Q8_0,
        DType::F16,
        DType::F32,
    ] {
        let w = tiny_weights(dtype, 9);
        every_op_on(&gpu, false, &tiny_plan(&w), &w, &format!("no f64, {dtype}"));
    }
    let w = wide_weights(DType::Q4_K, 10);
    every_op_on(&gpu, false, &wide_plan(&w), &w, "no f64, q4_k");
}
