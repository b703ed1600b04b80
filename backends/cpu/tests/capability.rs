//! The CPU backend's capability query is honest about weight types.

use coordgen_cpu::CpuBackend;
use coordgen_graph::{
    Backend, BoundaryId, DType, ExecParams, HostBuffer, Op, SessionState, Subgraph, SubgraphRole,
    TensorDecl, TensorId, TensorKind, WeightBytes, WeightCatalog, WeightDesc, WeightSource,
};
use coordgen_kernels::kquant;
use std::sync::Arc;

fn matmul_graph(weight: DType) -> Subgraph {
    let tensor = |name: &str, dtype, shape: Vec<usize>, kind| TensorDecl {
        name: name.into(),
        dtype,
        shape,
        kind,
    };
    Subgraph {
        name: "test".into(),
        role: SubgraphRole::Embed,
        width: 1,
        tensors: vec![
            tensor(
                "x",
                DType::F32,
                vec![1, 256],
                TensorKind::Boundary { id: BoundaryId(0) },
            ),
            tensor(
                "w",
                weight,
                vec![8, 256],
                TensorKind::Weight { name: "w".into() },
            ),
            tensor(
                "y",
                DType::F32,
                vec![1, 8],
                TensorKind::Boundary { id: BoundaryId(1) },
            ),
        ],
        nodes: vec![Op::MatMul {
            x: TensorId(0),
            w: TensorId(1),
            out: TensorId(2),
        }],
        arena_bytes: 0,
    }
}

#[test]
fn matmul_support_follows_the_kernels() {
    let cpu = CpuBackend::new(Some(1)).unwrap();
    for (dtype, supported) in [
        (DType::F32, true),
        (DType::F16, true),
        (DType::Q4_0, true),
        (DType::Q4_1, true),
        (DType::Q8_0, true),
        (DType::BF16, false),
        (DType::Q4_K, true),
        (DType::Q5_K, true),
        (DType::Q6_K, true),
    ] {
        let g = matmul_graph(dtype);
        assert_eq!(cpu.supports(&g.nodes[0], &g), supported, "{dtype}");
    }
}

/// One weight, served from memory.
struct OneWeight {
    dtype: DType,
    shape: Vec<usize>,
    bytes: Arc<Vec<u8>>,
}

impl WeightCatalog for OneWeight {
    fn describe(&self, name: &str) -> Option<WeightDesc> {
        (name == "w").then(|| WeightDesc {
            dtype: self.dtype,
            shape: self.shape.clone(),
        })
    }
}

impl WeightSource for OneWeight {
    fn bytes(&self, name: &str) -> Option<WeightBytes> {
        let owner: Arc<dyn AsRef<[u8]> + Send + Sync> = self.bytes.clone();
        (name == "w").then(|| WeightBytes::new(owner, 0..self.bytes.len()))?
    }
}

/// K-quant matmuls run end to end on the backend and agree with the
/// dequantized weights times the Q8_K-rounded activations.
#[test]
fn k_quant_matmuls_run() {
    let (rows, cols) = (8usize, 256usize);
    let wf: Vec<f32> = (0..rows * cols)
        .map(|i| ((i * 7919 % 1000) as f32 / 500.0 - 1.0) * 0.3)
        .collect();
    let x: Vec<f32> = (0..cols)
        .map(|i| (i * 31 % 97) as f32 / 48.0 - 1.0)
        .collect();
    let nb = rows * cols / kquant::QK_K;
    for dtype in [DType::Q4_K, DType::Q5_K, DType::Q6_K] {
        let mut deq = vec![0.0f32; rows * cols];
        let bytes: Vec<u8> = match dtype {
            DType::Q4_K => {
                let mut q = vec![kquant::BlockQ4K::default(); nb];
                kquant::quantize_row_q4_k(&wf, &mut q);
                kquant::dequantize_row_q4_k(&q, &mut deq);
                bytemuck::cast_slice(&q).to_vec()
            }
            DType::Q5_K => {
                let mut q = vec![kquant::BlockQ5K::default(); nb];
                kquant::quantize_row_q5_k(&wf, &mut q);
                kquant::dequantize_row_q5_k(&q, &mut deq);
                bytemuck::cast_slice(&q).to_vec()
            }
            _ => {
                let mut q = vec![kquant::BlockQ6K::default(); nb];
                kquant::quantize_row_q6_k(&wf, &mut q);
                kquant::dequantize_row_q6_k(&q, &mut deq);
                bytemuck::cast_slice(&q).to_vec()
            }
        };
        let weights = OneWeight {
            dtype,
            shape: vec![rows, cols],
            bytes: Arc::new(bytes),
        };
        let cpu = CpuBackend::new(Some(2)).unwrap();
        let mut exe = cpu.compile(&matmul_graph(dtype), &weights).unwrap();
        let mut input = HostBuffer::zeroed(cols * 4);
        input.view_mut::<f32>().unwrap().copy_from_slice(&x);
        let mut state = SessionState {
            boundaries: vec![input, HostBuffer::zeroed(rows * 4)],
            arena: HostBuffer::zeroed(0),
            kv: Default::default(),
        };
        exe.run(
            &mut state,
            &ExecParams {
                n_valid: 1,
                past_len: 0,
            },
        )
        .unwrap();
        let got = state.boundaries[1].view::<f32>().unwrap();
        // Reference: dequantized weights times the Q8_K-rounded activations.
        let mut xq = vec![kquant::BlockQ8K::default(); cols / kquant::QK_K];
        kquant::quantize_row_q8_k(&x, &mut xq);
        let mut xd = vec![0.0f32; cols];
        kquant::dequantize_row_q8_k(&xq, &mut xd);
        for r in 0..rows {
            let want: f64 = deq[r * cols..(r + 1) * cols]
                .iter()
                .zip(&xd)
                .map(|(&a, &b)| a as f64 * b as f64)
                .sum();
            let scale: f64 = deq[r * cols..(r + 1) * cols]
                .iter()
                .zip(&xd)
                .map(|(&a, &b)| (a as f64 * b as f64).abs())
                .sum();
            assert!(
                (got[r] as f64 - want).abs() <= 1e-4 * scale + 1e-5,
                "{dtype} row {r}: {} vs {want}",
                got[r]
            );
        }
    }
}
