//! The QNN backend against the CPU backend on the same IR graphs, with
//! Qualcomm's real HTP library (its x86-64 simulator): op by op, block by
//! block, at stated tolerances per weight format.

use coordgen_cpu::CpuBackend;
use coordgen_graph::*;
use coordgen_qnn::{GraphScope, Library, QnnBackend, Runtime, Soc, WeightFormat};
use coordgen_tests::synthetic::{tiny_plan, tiny_weights, MemWeights, Rng};
use std::sync::Arc;

fn runtime() -> Option<Arc<Runtime>> {
    let folder = coordgen_tests::qnn_folder()?;
    let library = Library::load(&folder).expect("the QNN library loads");
    Some(Runtime::new(&library, Soc::default()).expect("a QNN runtime starts"))
}

/// Relative RMS of `got - want` over `want`.
fn relative_rms(got: &[f32], want: &[f32]) -> f64 {
    assert_eq!(got.len(), want.len());
    let (mut e, mut v) = (0f64, 0f64);
    for (&g, &w) in got.iter().zip(want) {
        assert!(g.is_finite(), "non-finite output {g}");
        e += (f64::from(g) - f64::from(w)).powi(2);
        v += f64::from(w).powi(2);
    }
    (e / v.max(1e-30)).sqrt()
}

/// A one-op subgraph over boundary buffers 0.. (inputs) and the last one
/// (output); weights by name.
struct OneOp {
    graph: Subgraph,
    /// Shapes of the boundary inputs, in boundary order.
    inputs: Vec<Vec<usize>>,
    output: Vec<usize>,
}

fn one_op(kind: &str, rows: usize, weight: Option<(&str, DType, Vec<usize>)>) -> OneOp {
    let mut tensors = Vec::new();
    let mut push = |name: &str, dtype, shape: Vec<usize>, kind| {
        tensors.push(TensorDecl {
            name: name.into(),
            dtype,
            shape,
            kind,
        });
        TensorId(tensors.len() - 1)
    };
    let boundary = |i| TensorKind::Boundary { id: BoundaryId(i) };
    let (k, n) = match &weight {
        Some((_, _, shape)) if shape.len() == 2 => (shape[1], shape[0]),
        Some((_, _, shape)) => (shape[0], shape[0]),
        None => (64, 64),
    };
    let w = weight.as_ref().map(|(name, dtype, shape)| {
        push(
            name,
            *dtype,
            shape.clone(),
            TensorKind::Weight {
                name: name.to_string(),
            },
        )
    });
    let (node, inputs, output) = match kind {
        "rms_norm" => {
            let x = push("x", DType::F32, vec![rows, k], boundary(0));
            let out = push("out", DType::F32, vec![rows, k], boundary(1));
            let weight = w.expect("a norm weight");
            (
                Op::RmsNorm {
                    x,
                    weight,
                    eps: 1e-5,
                    out,
                },
                vec![vec![rows, k]],
                vec![rows, k],
            )
        }
        "matmul" => {
            let x = push("x", DType::F32, vec![rows, k], boundary(0));
            let out = push("out", DType::F32, vec![rows, n], boundary(1));
            let w = w.expect("a matrix");
            (Op::MatMul { x, w, out }, vec![vec![rows, k]], vec![rows, n])
        }
        "add" | "silu_mul" => {
            let a = push("a", DType::F32, vec![rows, k], boundary(0));
            let b = push("b", DType::F32, vec![rows, k], boundary(1));
            let out = push("out", DType::F32, vec![rows, k], boundary(2));
            let op = if kind == "add" {
                Op::Add { a, b, out }
            } else {
                Op::SiluMul {
                    gate: a,
                    up: b,
                    out,
                }
            };
            (op, vec![vec![rows, k]; 2], vec![rows, k])
        }
        other => panic!("no one-op graph for {other}"),
    };
    OneOp {
        graph: Subgraph {
            name: format!("{kind}{rows}"),
            role: SubgraphRole::Layers {
                block: 0,
                first: 0,
                count: 1,
            },
            width: rows,
            tensors,
            nodes: vec![node],
            arena_bytes: 0,
        },
        inputs,
        output,
    }
}

/// Runs a one-op graph on a backend over the given inputs.
fn run_one(
    backend: &dyn Backend,
    op: &OneOp,
    weights: &MemWeights,
    inputs: &[Vec<f32>],
) -> Vec<f32> {
    let exe = backend.compile(&op.graph, weights);
    let mut exe = exe.unwrap_or_else(|e| panic!("{} on {}: {e}", op.graph.name, backend.name()));
    let mut boundaries: Vec<HostBuffer> = inputs
        .iter()
        .map(|v| {
            let mut b = HostBuffer::zeroed(v.len() * 4);
            b.view_mut::<f32>().unwrap().copy_from_slice(v);
            b
        })
        .collect();
    boundaries.push(HostBuffer::zeroed(op.output.iter().product::<usize>() * 4));
    let mut state = SessionState {
        boundaries,
        arena: HostBuffer::zeroed(0),
        kv: KvCache::zeroed(0, 0),
    };
    let rows = op.graph.width;
    exe.run(
        &mut state,
        &ExecParams {
            n_valid: rows,
            past_len: 0,
        },
    )
    .unwrap();
    state
        .boundaries
        .last()
        .unwrap()
        .view::<f32>()
        .unwrap()
        .to_vec()
}

/// Per op: (op, weight dtype, QNN weight format, rows, tolerance on the
/// relative RMS difference from the CPU backend).
///
/// The CPU quantizes activations to 8 bits for quantized weights and the
/// HTP computes in fp16, so even fp16 weights differ by about 1e-3. Int8
/// per-channel weights requantize the file's blocks (about 5e-3 more);
/// 4-bit per-channel weights lose the file's 32-value block scales, the
/// error of that format.
const CASES: &[(&str, DType, WeightFormat, usize, f64)] = &[
    ("rms_norm", DType::F32, WeightFormat::F16, 4, 2e-3),
    ("add", DType::F32, WeightFormat::F16, 4, 2e-3),
    ("silu_mul", DType::F32, WeightFormat::F16, 4, 3e-3),
    ("matmul", DType::F32, WeightFormat::F16, 1, 3e-3),
    ("matmul", DType::F16, WeightFormat::F16, 4, 3e-3),
    ("matmul", DType::Q8_0, WeightFormat::F16, 4, 1e-2),
    ("matmul", DType::Q4_1, WeightFormat::F16, 4, 1e-2),
    ("matmul", DType::Q4_K, WeightFormat::F16, 4, 1e-2),
    ("matmul", DType::Q8_0, WeightFormat::Int8, 4, 2e-2),
    ("matmul", DType::Q4_1, WeightFormat::Int8, 4, 2e-2),
    ("matmul", DType::Q4_1, WeightFormat::Int4, 4, 0.25),
];

#[test]
fn every_op_matches_the_cpu_backend_within_its_tolerance() {
    let Some(runtime) = runtime() else { return };
    let cpu = CpuBackend::new(Some(1)).unwrap();
    let mut rng = Rng(11);
    for &(kind, dtype, format, rows, tolerance) in CASES {
        let qnn = QnnBackend::new(&runtime, format).unwrap();
        let shape = match kind {
            "matmul" if dtype == DType::Q4_K => vec![32, 256],
            "matmul" => vec![96, 64],
            _ => vec![64],
        };
        // A name per case: the CPU backend caches repacked weights by name.
        let name = format!("w.{kind}.{dtype}.{}", format.name());
        let weight =
            matches!(kind, "rms_norm" | "matmul").then(|| (name.as_str(), dtype, shape.clone()));
        let op = one_op(kind, rows, weight);
        let mut weights = MemWeights::default();
        if kind == "rms_norm" || kind == "matmul" {
            weights.add(&mut rng, name.clone(), dtype, shape);
        }
        let inputs: Vec<Vec<f32>> = op
            .inputs
            .iter()
            .map(|s| rng.vec(s.iter().product(), 2.0))
            .collect();
        if let Err(e) = qnn.probe(&op.graph.nodes[0], &op.graph) {
            panic!("{kind} over {dtype} is not supported: {e}");
        }
        assert!(qnn.supports(&op.graph.nodes[0], &op.graph));
        let want = run_one(&cpu, &op, &weights, &inputs);
        let got = run_one(&qnn, &op, &weights, &inputs);
        let err = relative_rms(&got, &want);
        eprintln!("{kind:>9} {dtype:>5} -> {:>4} rows {rows}: relative RMS {err:.2e} (tolerance {tolerance:.0e})", format.name());
        assert!(
            err <= tolerance,
            "{kind} {dtype} {format:?}: {err:.3e} > {tolerance:.0e}"
        );
        if kind == "matmul" {
            let report = &qnn.conversion_reports()[0];
            assert_eq!(report.name, name);
            assert!(report.relative_rms <= tolerance, "{report:?}");
        }
    }
}

#[test]
fn the_attention_side_of_a_layer_stays_on_the_cpu() {
    let Some(runtime) = runtime() else { return };
    let qnn = QnnBackend::new(&runtime, WeightFormat::F16).unwrap();
    let weights = tiny_weights(DType::Q8_0, 3);
    let plan = tiny_plan(&weights);
    let block = &plan.buckets[0].blocks[0];
    let on_qnn: Vec<&str> = block
        .nodes
        .iter()
        .filter(|op| qnn.supports(op, block))
        .map(|op| op.name())
        .collect();
    assert!(!on_qnn.is_empty());
    for op in &block.nodes {
        let expected = matches!(
            op,
            Op::RmsNorm { .. } | Op::MatMul { .. } | Op::Add { .. } | Op::SiluMul { .. }
        );
        assert_eq!(qnn.supports(op, block), expected, "{}", op.name());
    }
    // The embedding lookup and the output head stay on the CPU too.
    let bucket = &plan.buckets[0];
    for graph in [&bucket.embed, &bucket.head_last, &bucket.head_all] {
        assert!(
            graph.nodes.iter().all(|op| !qnn.supports(op, graph)),
            "{}",
            graph.name
        );
    }
}

/// Runs a bucket's embedding and every layer block over `tokens`, on the
/// CPU alone or with QNN first; returns the final hidden state.
fn run_blocks(
    plan: &Plan,
    bucket: usize,
    backends: &[&dyn Backend],
    weights: &MemWeights,
    state: &mut SessionState,
    tokens: &[i32],
    past_len: usize,
) -> Vec<f32> {
    let mut exes = compile_blocks(plan, bucket, backends, weights);
    run_compiled(plan, bucket, &mut exes, state, tokens, past_len)
}

/// A bucket's embedding (on the last backend) and blocks, compiled.
fn compile_blocks(
    plan: &Plan,
    bucket: usize,
    backends: &[&dyn Backend],
    weights: &MemWeights,
) -> Vec<Box<dyn Executable>> {
    let b = &plan.buckets[bucket];
    let mut exes = vec![backends.last().unwrap().compile(&b.embed, weights).unwrap()];
    for block in &b.blocks {
        exes.push(compile_partitioned(block, backends, weights).unwrap());
    }
    exes
}

/// Runs [`compile_blocks`]'s executables over `tokens`.
fn run_compiled(
    plan: &Plan,
    bucket: usize,
    exes: &mut [Box<dyn Executable>],
    state: &mut SessionState,
    tokens: &[i32],
    past_len: usize,
) -> Vec<f32> {
    let b = &plan.buckets[bucket];
    let width = b.width;
    let tb = &mut state.boundaries[plan.boundaries.tokens.0];
    let ids = tb.view_mut::<i32>().unwrap();
    ids[..tokens.len()].copy_from_slice(tokens);
    let pos = state.boundaries[plan.boundaries.positions.0]
        .view_mut::<i32>()
        .unwrap();
    for (i, p) in pos.iter_mut().take(width).enumerate() {
        *p = (past_len + i) as i32;
    }
    if b.kind == BucketKind::Verify {
        // A tree, not a chain: a root and its siblings (each row sees the
        // root and itself), so a row must not see the rows before it.
        let mask = state.boundaries[plan.boundaries.tree_mask.0]
            .view_mut::<u8>()
            .unwrap();
        for i in 0..width {
            for j in 0..width {
                mask[i * width + j] = u8::from(j == 0 || j == i);
            }
        }
    }
    let params = ExecParams {
        n_valid: tokens.len(),
        past_len,
    };
    for exe in exes {
        exe.run(state, &params).unwrap();
    }
    let hidden = plan.boundaries.hidden[b.blocks.len() % 2];
    let d = plan.config.d_model;
    state.boundaries[hidden.0].view::<f32>().unwrap()[..tokens.len() * d].to_vec()
}

#[test]
fn layer_blocks_split_between_qnn_and_cpu_match_the_cpu() {
    let Some(runtime) = runtime() else { return };
    for (dtype, format, tolerance) in [
        // The CPU quantizes activations to 8 bits for Q8_0 weights, which
        // dominates the difference there (measured 1.2e-2 over 2 layers);
        // fp16 weights differ by fp16 rounding alone (3.6e-3); 4-bit
        // per-channel weights drop the file's per-32 block scales (0.2).
        (DType::Q8_0, WeightFormat::F16, 2.5e-2),
        (DType::F16, WeightFormat::F16, 8e-3),
        (DType::Q8_0, WeightFormat::Int8, 3e-2),
        (DType::Q4_1, WeightFormat::Int4, 0.35),
    ] {
        let qnn = QnnBackend::new(&runtime, format).unwrap();
        // A fresh CPU backend per model: it caches repacked weights by name.
        let cpu = CpuBackend::new(Some(1)).unwrap();
        let weights = tiny_weights(dtype, 5);
        let plan = tiny_plan(&weights);
        let mut cpu_state = SessionState::new(&plan);
        let mut mixed_state = SessionState::new(&plan);
        // A 6-token prefill in the 8-wide bucket (2 padding rows), then a
        // 3-row verify step in the 4-wide one, over the cached 6.
        let prefill: Vec<i32> = vec![1, 17, 42, 5, 88, 9];
        let verify: Vec<i32> = vec![33, 2, 71];
        let bucket_of = |w| plan.buckets.iter().position(|b| b.width == w).unwrap();
        for (tokens, width, past) in [(&prefill, 8, 0), (&verify, 4, prefill.len())] {
            let i = bucket_of(width);
            let want = run_blocks(&plan, i, &[&cpu], &weights, &mut cpu_state, tokens, past);
            let got = run_blocks(
                &plan,
                i,
                &[&qnn, &cpu],
                &weights,
                &mut mixed_state,
                tokens,
                past,
            );
            let err = relative_rms(&got, &want);
            eprintln!(
                "{dtype} -> {}: width {width}: hidden relative RMS {err:.2e}",
                format.name()
            );
            assert!(
                err <= tolerance,
                "{dtype} {format:?} width {width}: {err:.3e}"
            );
        }
    }
}

#[test]
fn full_layer_graphs_run_whole_blocks_and_match_the_cpu() {
    let Some(runtime) = runtime() else { return };
    let qnn = QnnBackend::new(&runtime, WeightFormat::F16)
        .unwrap()
        .with_scope(GraphScope::FullLayer);
    let cpu = CpuBackend::new(Some(1)).unwrap();
    let weights = tiny_weights(DType::F16, 5);
    let plan = tiny_plan(&weights);
    // Every op of a layer block runs on the HTP: one graph per block.
    for bucket in &plan.buckets {
        for block in &bucket.blocks {
            for op in &block.nodes {
                if let Err(e) = qnn.probe(op, block) {
                    panic!("{} in {}: {e}", op.name(), block.name);
                }
            }
            let pieces = partition(block, &[&qnn, &cpu]).unwrap();
            assert_eq!(pieces.len(), 1, "{}", block.name);
            assert_eq!(pieces[0].backend, 0);
        }
    }
    let mut cpu_state = SessionState::new(&plan);
    let mut qnn_state = SessionState::new(&plan);
    let bucket_of = |w| plan.buckets.iter().position(|b| b.width == w).unwrap();
    let mut past = 0;
    // Prefill with padding, a tree step (a chain), then single tokens.
    for (tokens, width) in [
        (vec![1, 17, 42, 5, 88, 9], 8),
        (vec![33, 2, 71], 4),
        (vec![6], 1),
        (vec![50], 1),
    ] {
        let i = bucket_of(width);
        let want = run_blocks(&plan, i, &[&cpu], &weights, &mut cpu_state, &tokens, past);
        let got = run_blocks(
            &plan,
            i,
            &[&qnn, &cpu],
            &weights,
            &mut qnn_state,
            &tokens,
            past,
        );
        let err = relative_rms(&got, &want);
        eprintln!("full-layer, width {width} after {past}: hidden relative RMS {err:.2e}");
        assert!(err <= 8e-3, "width {width}: {err:.3e}");
        past += tokens.len();
    }
    // The cache holds the same keys and values (fp16 either way).
    let values = |state: &mut SessionState, half: usize| -> Vec<f32> {
        let bytes = state.kv.half_mut(half).unwrap();
        bytes
            .chunks_exact(2)
            .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect()
    };
    for half in 0..cpu_state.kv.halves() {
        let (a, b) = (values(&mut cpu_state, half), values(&mut qnn_state, half));
        let err = relative_rms(&b, &a);
        assert!(err <= 8e-3, "cache half {half}: {err:.3e}");
    }
}

#[test]
fn a_saved_group_unloads_and_loads_back_with_the_same_outputs() {
    let Some(runtime) = runtime() else { return };
    let qnn = QnnBackend::new(&runtime, WeightFormat::F16).unwrap();
    let cpu = CpuBackend::new(Some(1)).unwrap();
    let weights = tiny_weights(DType::F16, 9);
    let plan = tiny_plan(&weights);
    let bucket = plan.buckets.iter().position(|b| b.width == 4).unwrap();
    let tokens = [3, 14, 15];
    let mut exes = compile_blocks(&plan, bucket, &[&qnn, &cpu], &weights);
    let mut run = || {
        let mut state = SessionState::new(&plan);
        run_compiled(&plan, bucket, &mut exes, &mut state, &tokens, 0)
    };
    let first = run();

    let group = qnn.group(&plan.buckets[bucket].blocks[0].name).unwrap();
    assert!(group.is_loaded());
    // Not saved yet: unloading would lose the graphs.
    assert!(group.unload().is_err());
    let dir = std::env::temp_dir().join(format!("coordgen-qnn-groups-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let bytes = qnn.save_cache(&dir, "entry").unwrap();
    assert!(bytes > 0);
    assert_eq!(qnn.groups().len(), 1, "one subgraph compiled, one group");

    group.unload().unwrap();
    assert!(!group.is_loaded());
    let took = group.load().unwrap();
    assert!(group.is_loaded() && took > std::time::Duration::ZERO);
    assert_eq!(run(), first, "a reloaded group computes what it did");

    // A run of an unloaded group loads it first.
    group.unload().unwrap();
    assert_eq!(run(), first);
    assert!(group.is_loaded());
    let _ = std::fs::remove_dir_all(dir);
}
