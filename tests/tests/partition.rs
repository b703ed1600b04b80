//! A layer block split between two backends computes exactly what the
//! whole block computes on one, and a piece binds only its own weights.

use coordgen_cpu::CpuBackend;
use coordgen_graph::*;
use coordgen_tests::synthetic::{tiny_config, MemWeights, Rng};
use std::collections::HashSet;

fn model() -> (Plan, MemWeights) {
    let c = tiny_config();
    let mut rng = Rng(7);
    let mut w = MemWeights::default();
    w.add(
        &mut rng,
        names::TOKEN_EMBD.into(),
        DType::Q8_0,
        vec![96, 64],
    );
    w.add(&mut rng, names::OUTPUT_NORM.into(), DType::F32, vec![64]);
    for l in 0..c.n_layers {
        // Repackable Q8_0, plain F16 and F32 matrices all cross pieces.
        for (what, dtype, shape) in [
            ("attn_norm", DType::F32, vec![64]),
            ("ffn_norm", DType::F32, vec![64]),
            ("attn_q", DType::Q8_0, vec![64, 64]),
            ("attn_k", DType::F16, vec![32, 64]),
            ("attn_v", DType::Q8_0, vec![32, 64]),
            ("attn_output", DType::F32, vec![64, 64]),
            ("ffn_gate", DType::Q8_0, vec![128, 64]),
            ("ffn_up", DType::F16, vec![128, 64]),
            ("ffn_down", DType::Q8_0, vec![64, 128]),
        ] {
            w.add(&mut rng, names::layer(l, what), dtype, shape);
        }
    }
    let opts = PlanOptions {
        prefill_widths: vec![8],
        verify_widths: vec![1, 4],
        layers_per_block: 2,
        context_length: 64,
    };
    (lower(&c, &w, &opts).expect("lowers"), w)
}

/// A CPU backend that claims only what an accelerator would run: linear
/// algebra and element-wise ops.
struct LinearOnly(CpuBackend);

impl Backend for LinearOnly {
    fn name(&self) -> &'static str {
        "linear-cpu"
    }

    fn supports(&self, op: &Op, graph: &Subgraph) -> bool {
        matches!(
            op,
            Op::MatMul { .. } | Op::RmsNorm { .. } | Op::Add { .. } | Op::SiluMul { .. }
        ) && self.0.supports(op, graph)
    }

    fn compile(
        &self,
        graph: &Subgraph,
        weights: &dyn WeightSource,
    ) -> Result<Box<dyn Executable>, Error> {
        self.0.compile(graph, weights)
    }

    fn compile_piece(
        &self,
        piece: &Piece,
        weights: &dyn WeightSource,
    ) -> Result<Box<dyn Executable>, Error> {
        self.0.compile_piece(piece, weights)
    }
}

/// One run of a block: its inputs and run parameters.
struct Step {
    kind: BucketKind,
    width: usize,
    n_valid: usize,
}

fn kv_bytes(state: &mut SessionState) -> Vec<Vec<u8>> {
    (0..state.kv.halves())
        .map(|h| state.kv.half_mut(h).expect("half").to_vec())
        .collect()
}

#[test]
fn partitioned_block_is_bit_identical_to_the_whole_block() {
    let (plan, weights) = model();
    let cpu = CpuBackend::new(Some(2)).expect("cpu backend");
    let linear = LinearOnly(cpu.clone());
    let b = plan.boundaries;
    let d = plan.config.d_model;

    let mut whole_state = SessionState::new(&plan);
    let mut split_state = SessionState::new(&plan);
    let mut rng = Rng(11);
    let mut past = 0;
    // Full and padded runs of both buckets, each after the last.
    let steps = [
        Step {
            kind: BucketKind::Prefill,
            width: 8,
            n_valid: 8,
        },
        Step {
            kind: BucketKind::Verify,
            width: 4,
            n_valid: 4,
        },
        Step {
            kind: BucketKind::Verify,
            width: 4,
            n_valid: 3,
        },
        Step {
            kind: BucketKind::Prefill,
            width: 8,
            n_valid: 5,
        },
        Step {
            kind: BucketKind::Verify,
            width: 4,
            n_valid: 1,
        },
    ];
    for step in &steps {
        let bucket = plan.bucket_for(step.kind, step.width).expect("bucket");
        assert_eq!(bucket.width, step.width);
        let graph = &bucket.blocks[0];

        let mut whole = cpu.compile(graph, &weights).expect("compiles whole");
        let mut split =
            compile_partitioned(graph, &[&linear, &cpu], &weights).expect("compiles split");
        assert_eq!(split.name(), graph.name);
        let pieces = partition(graph, &[&linear, &cpu]).expect("partitions");
        assert_eq!(
            pieces.iter().map(|p| p.backend).collect::<Vec<_>>(),
            [0, 1, 0, 1, 0]
        );

        let hidden: Vec<f32> = rng.vec(step.width * d, 1.0);
        let positions: Vec<i32> = (0..step.width as i32).map(|i| past as i32 + i).collect();
        for state in [&mut whole_state, &mut split_state] {
            state.boundaries[b.hidden[0].0]
                .view_mut::<f32>()
                .expect("f32")[..hidden.len()]
                .copy_from_slice(&hidden);
            state.boundaries[b.positions.0]
                .view_mut::<i32>()
                .expect("i32")[..positions.len()]
                .copy_from_slice(&positions);
            if step.kind == BucketKind::Verify {
                // A chain of drafts: each row sees itself and every row before it.
                let mask = state.boundaries[b.tree_mask.0].as_bytes_mut();
                mask.fill(0);
                for r in 0..step.width {
                    for j in 0..=r {
                        mask[r * step.width + j] = 1;
                    }
                }
            }
        }
        let params = ExecParams {
            n_valid: step.n_valid,
            past_len: past,
        };
        whole.run(&mut whole_state, &params).expect("whole runs");
        split.run(&mut split_state, &params).expect("split runs");

        let out = |s: &SessionState| s.boundaries[b.hidden[1].0].as_bytes().to_vec();
        let whole_out = out(&whole_state);
        assert_eq!(whole_out, out(&split_state), "hidden after {}", graph.name);
        assert_eq!(
            kv_bytes(&mut whole_state),
            kv_bytes(&mut split_state),
            "KV cache after {}",
            graph.name
        );
        let rows: &[f32] = bytemuck::cast_slice(&whole_out[..step.n_valid * d * 4]);
        assert!(rows.iter().all(|v| v.is_finite()) && rows.iter().any(|&v| v != 0.0));
        past += step.n_valid;
    }
}

/// Weights the nodes of `graph` read.
fn used_weights(graph: &Subgraph) -> HashSet<String> {
    graph
        .nodes
        .iter()
        .flat_map(Op::inputs)
        .filter_map(|t| match &graph.tensors[t.0].kind {
            TensorKind::Weight { name } => Some(name.clone()),
            _ => None,
        })
        .collect()
}

#[test]
fn a_piece_binds_and_repacks_only_its_own_weights() {
    let (plan, weights) = model();
    let graph = &plan
        .bucket_for(BucketKind::Verify, 4)
        .expect("bucket")
        .blocks[0];
    let probe = CpuBackend::new(Some(1)).expect("cpu backend");
    let pieces = partition(graph, &[&LinearOnly(probe.clone()), &probe]).expect("partitions");
    for piece in &pieces {
        // A fresh backend each time, so its repack cache shows this piece alone.
        let cpu = CpuBackend::new(Some(1)).expect("cpu backend");
        let used = used_weights(&piece.graph);
        // The source lacks every other weight: binding one would fail.
        let only_used = weights.subset(&used);
        cpu.compile_piece(piece, &only_used)
            .unwrap_or_else(|e| panic!("{}: {e}", piece.graph.name));
        let repacked: HashSet<String> = cpu.repacked_weights().into_iter().collect();
        assert!(
            repacked.is_subset(&used),
            "{}: repacked {repacked:?}, uses {used:?}",
            piece.graph.name
        );
        if cpu.kernels().prefers_repacked {
            // Exactly the Q8_0 matrices of the piece (the F16/F32 ones stay).
            let q8: HashSet<String> = used
                .iter()
                .filter(|n| weights.describe(n).is_some_and(|d| d.dtype == DType::Q8_0))
                .cloned()
                .collect();
            assert_eq!(repacked, q8, "{}", piece.graph.name);
        }
    }
    // The attention pieces use no weight at all.
    assert!(used_weights(&pieces[1].graph).is_empty());
}
