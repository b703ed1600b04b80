//! The CPU backend's capability query is honest about weight types.

use coordgen_cpu::CpuBackend;
use coordgen_graph::{
    Backend, BoundaryId, DType, Op, Subgraph, SubgraphRole, TensorDecl, TensorId, TensorKind,
};

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
        (DType::Q4_K, false),
        (DType::Q6_K, false),
    ] {
        let g = matmul_graph(dtype);
        assert_eq!(cpu.supports(&g.nodes[0], &g), supported, "{dtype}");
    }
}
