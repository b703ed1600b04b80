//! Partitioning subgraphs by backend capability: pieces, their inputs and
//! outputs, and chained execution.

use coordgen_graph::*;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

struct Catalog(HashMap<String, WeightDesc>);

impl WeightCatalog for Catalog {
    fn describe(&self, name: &str) -> Option<WeightDesc> {
        self.0.get(name).cloned()
    }
}

impl WeightSource for Catalog {
    fn bytes(&self, _: &str) -> Option<WeightBytes> {
        None
    }
}

fn plan(n_layers: usize) -> Plan {
    let c = ModelConfig {
        n_layers,
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
    for l in 0..n_layers {
        add(names::layer(l, "attn_norm"), DType::F32, vec![64]);
        add(names::layer(l, "ffn_norm"), DType::F32, vec![64]);
        add(names::layer(l, "attn_q"), DType::Q8_0, vec![64, 64]);
        add(names::layer(l, "attn_k"), DType::Q8_0, vec![32, 64]);
        add(names::layer(l, "attn_v"), DType::Q8_0, vec![32, 64]);
        add(names::layer(l, "attn_output"), DType::Q8_0, vec![64, 64]);
        add(names::layer(l, "ffn_gate"), DType::Q8_0, vec![128, 64]);
        add(names::layer(l, "ffn_up"), DType::Q8_0, vec![128, 64]);
        add(names::layer(l, "ffn_down"), DType::Q8_0, vec![64, 128]);
    }
    let opts = PlanOptions {
        prefill_widths: vec![8],
        verify_widths: vec![1, 4],
        layers_per_block: n_layers,
        context_length: 64,
    };
    lower(&c, &Catalog(w), &opts).expect("lowers")
}

/// Runs the ops an accelerator would: linear algebra and element-wise.
/// Its compile fails, so a test that compiles with it must not reach it.
struct Linear;

impl Backend for Linear {
    fn name(&self) -> &'static str {
        "linear"
    }
    fn supports(&self, op: &Op, _: &Subgraph) -> bool {
        matches!(
            op,
            Op::MatMul { .. } | Op::RmsNorm { .. } | Op::Add { .. } | Op::SiluMul { .. }
        )
    }
    fn compile(&self, g: &Subgraph, _: &dyn WeightSource) -> Result<Box<dyn Executable>, Error> {
        Err(Error::InvalidGraph(format!(
            "linear cannot compile {}",
            g.name
        )))
    }
}

/// Supports everything; compiles to an executable that logs its runs.
struct Everything {
    name: &'static str,
    log: Arc<Mutex<Vec<String>>>,
    fail: Option<String>,
}

struct Logged {
    name: String,
    log: Arc<Mutex<Vec<String>>>,
    fail: bool,
}

impl Executable for Logged {
    fn name(&self) -> &str {
        &self.name
    }
    fn run(&mut self, _: &mut SessionState, _: &ExecParams) -> Result<(), Error> {
        self.log.lock().expect("log").push(self.name.clone());
        if self.fail {
            return Err(Error::InvalidGraph(self.name.clone()));
        }
        Ok(())
    }
}

impl Backend for Everything {
    fn name(&self) -> &'static str {
        self.name
    }
    fn supports(&self, _: &Op, _: &Subgraph) -> bool {
        true
    }
    fn compile(&self, g: &Subgraph, _: &dyn WeightSource) -> Result<Box<dyn Executable>, Error> {
        Ok(Box::new(Logged {
            name: format!("{}:{}", self.name, g.name),
            log: self.log.clone(),
            fail: self.fail.as_deref() == Some(g.name.as_str()),
        }))
    }
}

fn everything(name: &'static str) -> Everything {
    Everything {
        name,
        log: Arc::default(),
        fail: None,
    }
}

fn id(g: &Subgraph, name: &str) -> TensorId {
    TensorId(
        g.tensors
            .iter()
            .position(|t| t.name == name)
            .unwrap_or_else(|| panic!("no tensor {name}")),
    )
}

fn ids(g: &Subgraph, names: &[&str]) -> Vec<TensorId> {
    names.iter().map(|n| id(g, n)).collect()
}

fn op_names(p: &Piece) -> Vec<&'static str> {
    p.graph.nodes.iter().map(Op::name).collect()
}

#[test]
fn one_layer_splits_around_attention() {
    let plan = plan(1);
    let g = &plan.buckets[0].blocks[0];
    let cpu = everything("cpu");
    let pieces = partition(g, &[&Linear, &cpu]).expect("partitions");
    assert_eq!(pieces.len(), 3);
    assert_eq!(
        pieces.iter().map(|p| p.backend).collect::<Vec<_>>(),
        [0, 1, 0]
    );
    assert_eq!(
        op_names(&pieces[0]),
        ["rms_norm", "matmul", "matmul", "matmul"]
    );
    assert_eq!(op_names(&pieces[1]), ["rope", "rope", "attention"]);
    assert_eq!(
        op_names(&pieces[2]),
        ["matmul", "add", "rms_norm", "matmul", "matmul", "silu_mul", "matmul", "add"]
    );
    for (i, p) in pieces.iter().enumerate() {
        assert_eq!(p.graph.name, format!("{}#{i}", g.name));
        assert_eq!(p.graph.tensors, g.tensors);
        assert_eq!(
            (p.graph.role, p.graph.width, p.graph.arena_bytes),
            (g.role, g.width, g.arena_bytes)
        );
    }
    let all: Vec<Op> = pieces.iter().flat_map(|p| p.graph.nodes.clone()).collect();
    assert_eq!(all, g.nodes);

    assert_eq!(pieces[0].inputs, ids(g, &["hidden.in"]));
    assert_eq!(pieces[0].outputs, ids(g, &["l0.q", "l0.k", "l0.v"]));
    assert_eq!(
        pieces[1].inputs,
        ids(
            g,
            &[
                "l0.q",
                "positions",
                "l0.k",
                "l0.v",
                "l0.k_cache",
                "l0.v_cache"
            ]
        )
    );
    assert_eq!(
        pieces[1].outputs,
        ids(g, &["l0.k_cache", "l0.v_cache", "l0.attn"])
    );
    assert_eq!(pieces[2].inputs, ids(g, &["l0.attn", "hidden.in"]));
    assert_eq!(pieces[2].outputs, ids(g, &["hidden.out"]));
    let hidden_in = id(g, "hidden.in");
    assert!(pieces.iter().all(|p| !p.outputs.contains(&hidden_in)));
}

#[test]
fn two_layers_merge_the_linear_ops_between_attentions() {
    let plan = plan(2);
    let verify = plan
        .bucket_for(BucketKind::Verify, 4)
        .expect("verify bucket");
    let g = &verify.blocks[0];
    let cpu = everything("cpu");
    let pieces = partition(g, &[&Linear, &cpu]).expect("partitions");
    assert_eq!(
        pieces.iter().map(|p| p.backend).collect::<Vec<_>>(),
        [0, 1, 0, 1, 0]
    );
    assert_eq!(pieces[2].graph.nodes.len(), 8 + 4);
    assert_eq!(
        pieces[1].inputs,
        ids(
            g,
            &[
                "l0.q",
                "positions",
                "l0.k",
                "l0.v",
                "l0.k_cache",
                "l0.v_cache",
                "tree_mask"
            ]
        )
    );
    // The first layer's output feeds the second layer's residual add,
    // two pieces later.
    assert_eq!(
        pieces[2].outputs,
        ids(g, &["l0.out", "l1.q", "l1.k", "l1.v"])
    );
    assert_eq!(pieces[2].inputs, ids(g, &["l0.attn", "hidden.in"]));
    assert_eq!(pieces[4].inputs, ids(g, &["l1.attn", "l0.out"]));
    assert_eq!(pieces[4].outputs, ids(g, &["hidden.out"]));
}

#[test]
fn one_backend_keeps_one_piece_and_the_graph_name() {
    let plan = plan(1);
    let g = &plan.buckets[0].blocks[0];
    let cpu = everything("cpu");
    let pieces = partition(g, &[&cpu, &Linear]).expect("partitions");
    assert_eq!(pieces.len(), 1);
    assert_eq!(pieces[0].graph.nodes, g.nodes);
    assert_eq!(pieces[0].inputs[0], id(g, "hidden.in"));
    let exe = compile_partitioned(g, &[&cpu], &Catalog(HashMap::new())).expect("compiles");
    assert_eq!(exe.name(), format!("cpu:{}", g.name));
}

#[test]
fn an_op_no_backend_runs_is_an_error() {
    let plan = plan(1);
    let g = &plan.buckets[0].blocks[0];
    match partition(g, &[&Linear]) {
        Err(Error::NoBackend {
            op,
            graph,
            backends,
        }) => {
            assert_eq!((op, backends), ("rope", vec!["linear"]));
            assert_eq!(graph, g.name);
        }
        other => panic!("expected NoBackend, got {other:?}"),
    }
    assert!(matches!(partition(g, &[]), Err(Error::NoBackend { .. })));
}

#[test]
fn a_chain_runs_its_parts_in_order_and_stops_at_an_error() {
    let plan = plan(1);
    let g = &plan.buckets[0].blocks[0];
    let (a, mut b) = (everything("a"), everything("b"));
    // `a` takes the linear ops, `b` the rest.
    struct Only<'x>(&'x Everything);
    impl Backend for Only<'_> {
        fn name(&self) -> &'static str {
            self.0.name()
        }
        fn supports(&self, op: &Op, g: &Subgraph) -> bool {
            Linear.supports(op, g)
        }
        fn compile(
            &self,
            g: &Subgraph,
            w: &dyn WeightSource,
        ) -> Result<Box<dyn Executable>, Error> {
            self.0.compile(g, w)
        }
    }
    b.log = a.log.clone();
    let weights = Catalog(HashMap::new());
    let mut state = SessionState::new(&plan);
    let params = ExecParams {
        n_valid: 1,
        past_len: 0,
    };
    let mut exe = compile_partitioned(g, &[&Only(&a), &b], &weights).expect("compiles");
    assert_eq!(exe.name(), g.name);
    exe.run(&mut state, &params).expect("runs");
    let expected: Vec<String> = ["a", "b", "a"]
        .iter()
        .enumerate()
        .map(|(i, be)| format!("{be}:{}#{i}", g.name))
        .collect();
    assert_eq!(*a.log.lock().expect("log"), expected);

    a.log.lock().expect("log").clear();
    b.fail = Some(format!("{}#1", g.name));
    let mut exe = compile_partitioned(g, &[&Only(&a), &b], &weights).expect("compiles");
    assert!(exe.run(&mut state, &params).is_err());
    assert_eq!(*a.log.lock().expect("log"), expected[..2]);
}

#[test]
fn bad_tensor_ids_are_errors() {
    let plan = plan(1);
    let mut g = plan.buckets[0].blocks[0].clone();
    if let Some(Op::MatMul { x, .. }) = g.nodes.get_mut(1) {
        *x = TensorId(10_000);
    }
    let cpu = everything("cpu");
    assert!(matches!(
        partition(&g, &[&Linear, &cpu]),
        Err(Error::InvalidGraph(_))
    ));
}
