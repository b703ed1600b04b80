//! Lowering and memory planning on a small synthetic llama config.

use coordgen_graph::*;
use std::collections::HashMap;

struct Catalog(HashMap<String, WeightDesc>);

impl WeightCatalog for Catalog {
    fn describe(&self, name: &str) -> Option<WeightDesc> {
        self.0.get(name).cloned()
    }
}

fn tiny() -> (ModelConfig, Catalog) {
    let c = ModelConfig {
        n_layers: 3,
        d_model: 64,
        d_ff: 128,
        n_heads: 4,
        n_kv_heads: 2,
        head_dim: 16,
        vocab_size: 96,
        train_context: 256,
        rope_theta: 10000.0,
        rms_eps: 1e-5,
    };
    let mut w = HashMap::new();
    let mut add = |name: String, dtype, shape: Vec<usize>| {
        w.insert(name, WeightDesc { dtype, shape });
    };
    add(names::TOKEN_EMBD.into(), DType::Q8_0, vec![96, 64]);
    add(names::OUTPUT_NORM.into(), DType::F32, vec![64]);
    for l in 0..3 {
        add(names::layer(l, "attn_norm"), DType::F32, vec![64]);
        add(names::layer(l, "ffn_norm"), DType::F32, vec![64]);
        add(names::layer(l, "attn_q"), DType::Q4_1, vec![64, 64]);
        add(names::layer(l, "attn_k"), DType::Q4_1, vec![32, 64]);
        add(names::layer(l, "attn_v"), DType::Q4_1, vec![32, 64]);
        add(names::layer(l, "attn_output"), DType::Q4_1, vec![64, 64]);
        add(names::layer(l, "ffn_gate"), DType::Q4_1, vec![128, 64]);
        add(names::layer(l, "ffn_up"), DType::Q4_1, vec![128, 64]);
        add(names::layer(l, "ffn_down"), DType::Q4_1, vec![64, 128]);
    }
    (c, Catalog(w))
}

#[test]
fn lowers_every_bucket_with_valid_arenas() {
    let (c, w) = tiny();
    let opts = PlanOptions {
        layers_per_block: 2,
        context_length: 256,
        ..PlanOptions::default()
    };
    let plan = lower(&c, &w, &opts).unwrap();
    assert_eq!(plan.buckets.len(), 8);
    assert_eq!(
        plan.head_weight,
        names::TOKEN_EMBD,
        "tied head without output.weight"
    );
    for bucket in &plan.buckets {
        assert_eq!(bucket.blocks.len(), 2);
        for g in bucket.subgraphs() {
            memory::validate_arena(g).unwrap();
            assert_eq!(g.width, bucket.width);
        }
        // Hidden state ping-pongs between the two hidden buffers.
        assert_eq!(
            bucket.embed.boundary_outputs(),
            vec![plan.boundaries.hidden[0]]
        );
        assert!(bucket.blocks[0]
            .boundary_inputs()
            .contains(&plan.boundaries.hidden[0]));
        assert_eq!(
            bucket.blocks[0].boundary_outputs(),
            vec![plan.boundaries.hidden[1]]
        );
        assert!(bucket.blocks[1]
            .boundary_inputs()
            .contains(&plan.boundaries.hidden[1]));
        assert!(bucket
            .head_last
            .boundary_inputs()
            .contains(&plan.boundaries.hidden[0]));
        let has_tree = bucket.blocks[0]
            .boundary_inputs()
            .contains(&plan.boundaries.tree_mask);
        assert_eq!(has_tree, bucket.kind == BucketKind::Verify);
    }
    let summary = plan.summary();
    assert!(summary.contains("prefill128/block1"));
    assert!(summary.contains("verify1/head_last"));
}

#[test]
fn arena_reuses_memory_across_layers() {
    let (c, w) = tiny();
    let one_block = PlanOptions {
        layers_per_block: 3,
        ..PlanOptions::default()
    };
    let plan = lower(&c, &w, &one_block).unwrap();
    let g = &plan.bucket_for(BucketKind::Prefill, 128).unwrap().blocks[0];
    let sum_of_all: usize = g
        .tensors
        .iter()
        .filter(|t| matches!(t.kind, TensorKind::Intermediate { .. }))
        .map(|t| t.n_bytes().unwrap())
        .sum();
    assert!(
        g.arena_bytes * 3 < sum_of_all,
        "{} vs {}",
        g.arena_bytes,
        sum_of_all
    );
}

#[test]
fn picks_the_narrowest_bucket_that_fits() {
    let (c, w) = tiny();
    let plan = lower(&c, &w, &PlanOptions::default()).unwrap();
    let width = |kind, n| plan.bucket_for(kind, n).unwrap().width;
    assert_eq!(width(BucketKind::Verify, 1), 1);
    assert_eq!(width(BucketKind::Verify, 5), 8);
    assert_eq!(width(BucketKind::Verify, 500), 64);
    assert_eq!(width(BucketKind::Prefill, 33), 128);
    assert_eq!(width(BucketKind::Prefill, 10), 32);
}

#[test]
fn rejects_bad_configs_and_weights() {
    let (c, mut w) = tiny();
    let mut bad = c.clone();
    bad.n_kv_heads = 3;
    assert!(matches!(
        lower(&bad, &w, &PlanOptions::default()),
        Err(Error::InvalidConfig(_))
    ));
    let no_decode = PlanOptions {
        verify_widths: vec![4, 8],
        ..PlanOptions::default()
    };
    assert!(lower(&c, &w, &no_decode).is_err());
    w.0.get_mut(&names::layer(1, "attn_k")).unwrap().shape = vec![64, 64];
    assert!(matches!(
        lower(&c, &w, &PlanOptions::default()),
        Err(Error::WeightShape { .. })
    ));
    w.0.remove(&names::layer(2, "ffn_up"));
    assert!(matches!(
        lower(&c, &w, &PlanOptions::default()),
        Err(Error::WeightShape { .. } | Error::MissingWeight { .. })
    ));
}

#[test]
fn k_quant_weights_are_rejected_until_the_cpu_matmul_runs_them() {
    let (c, mut w) = tiny();
    w.0.get_mut(&names::layer(0, "ffn_down")).unwrap().dtype = DType::Q4_K;
    assert!(matches!(
        lower(&c, &w, &PlanOptions::default()),
        Err(Error::WeightDType {
            dtype: DType::Q4_K,
            ..
        })
    ));
}
