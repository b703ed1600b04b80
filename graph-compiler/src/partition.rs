//! Splitting a subgraph into runs of consecutive ops by backend capability.
//!
//! A layer block can then run its matmuls and norms on an accelerator and
//! the ops it lacks (RoPE, attention) on the CPU. Every piece keeps the
//! whole tensor table of the original subgraph, so tensor ids, boundary ids
//! and arena offsets mean the same in every piece: the pieces of one
//! subgraph run one after another over one session's buffers, and an
//! intermediate written by one piece is still at its planned offset when a
//! later piece reads it (the arena was planned over the whole op sequence).

use crate::backend::{Backend, ExecParams, Executable, SessionState, WeightSource};
use crate::ir::{Op, Subgraph, TensorId, TensorKind};
use crate::Error;

/// A run of consecutive ops of a subgraph that one backend executes.
#[derive(Clone, Debug, PartialEq)]
pub struct Piece {
    /// Index into the backend slice given to [`partition`].
    pub backend: usize,
    /// The original subgraph with only this piece's nodes (same tensor
    /// table, role, width and arena size), named `"{original}#{index}"`.
    pub graph: Subgraph,
    /// Non-weight tensors the piece reads before writing them, in first-use
    /// order: what an accelerator must be handed before it runs.
    pub inputs: Vec<TensorId>,
    /// Tensors the piece writes that a later piece reads or that outlive
    /// the subgraph (boundary buffers, KV cache), in write order: what an
    /// accelerator must hand back.
    pub outputs: Vec<TensorId>,
}

/// Tensors `op` writes, in the order it writes them. Attention stores the
/// new K/V rows in its cache operands before it attends.
fn written(op: &Op) -> Vec<TensorId> {
    match *op {
        Op::Attention {
            k_cache,
            v_cache,
            out,
            ..
        } => vec![k_cache, v_cache, out],
        _ => vec![op.output()],
    }
}

fn push_unique(list: &mut Vec<TensorId>, t: TensorId) {
    if !list.contains(&t) {
        list.push(t);
    }
}

/// Splits `graph` into pieces: each op goes to the first backend of
/// `backends` (in order of preference) that supports it, and consecutive
/// ops with the same backend form one piece.
pub fn partition(graph: &Subgraph, backends: &[&dyn Backend]) -> Result<Vec<Piece>, Error> {
    let mut runs: Vec<(usize, Vec<Op>)> = Vec::new();
    for op in &graph.nodes {
        let backend = backends
            .iter()
            .position(|b| b.supports(op, graph))
            .ok_or_else(|| Error::NoBackend {
                op: op.name(),
                graph: graph.name.clone(),
                backends: backends.iter().map(|b| b.name()).collect(),
            })?;
        match runs.last_mut() {
            Some((b, ops)) if *b == backend => ops.push(op.clone()),
            _ => runs.push((backend, vec![op.clone()])),
        }
    }

    // Per tensor: the last piece that reads it, to tell which writes a
    // later piece needs.
    let mut last_reader: Vec<Option<usize>> = vec![None; graph.tensors.len()];
    for (p, (_, ops)) in runs.iter().enumerate() {
        for t in ops.iter().flat_map(Op::inputs) {
            let slot = last_reader.get_mut(t.0).ok_or_else(|| unknown(graph, t))?;
            *slot = Some(p);
        }
    }

    let mut pieces = Vec::with_capacity(runs.len());
    for (p, (backend, nodes)) in runs.into_iter().enumerate() {
        let mut inputs = Vec::new();
        let mut outputs = Vec::new();
        let mut written_here: Vec<TensorId> = Vec::new();
        for op in &nodes {
            for t in op.inputs() {
                let kind = &graph.tensor(t).ok_or_else(|| unknown(graph, t))?.kind;
                if !matches!(kind, TensorKind::Weight { .. }) && !written_here.contains(&t) {
                    push_unique(&mut inputs, t);
                }
            }
            for t in written(op) {
                let kind = &graph.tensor(t).ok_or_else(|| unknown(graph, t))?.kind;
                let outlives = matches!(
                    kind,
                    TensorKind::Boundary { .. } | TensorKind::KvCache { .. }
                );
                let read_later = last_reader
                    .get(t.0)
                    .copied()
                    .flatten()
                    .is_some_and(|r| r > p);
                if outlives || read_later {
                    push_unique(&mut outputs, t);
                }
                push_unique(&mut written_here, t);
            }
        }
        pieces.push(Piece {
            backend,
            graph: Subgraph {
                name: format!("{}#{p}", graph.name),
                role: graph.role,
                width: graph.width,
                tensors: graph.tensors.clone(),
                nodes,
                arena_bytes: graph.arena_bytes,
            },
            inputs,
            outputs,
        });
    }
    Ok(pieces)
}

fn unknown(graph: &Subgraph, t: TensorId) -> Error {
    Error::InvalidGraph(format!(
        "{}: an op names tensor {}, which does not exist",
        graph.name, t.0
    ))
}

/// Partitions `graph` over `backends` and compiles every piece on its
/// backend. A graph that one backend runs whole comes back as that
/// backend's executable (under the graph's own name); otherwise the pieces
/// run in order as a [`ChainExecutable`].
pub fn compile_partitioned(
    graph: &Subgraph,
    backends: &[&dyn Backend],
    weights: &dyn WeightSource,
) -> Result<Box<dyn Executable>, Error> {
    let mut pieces = partition(graph, backends)?;
    let backend_of = |piece: &Piece| {
        backends.get(piece.backend).copied().ok_or_else(|| {
            Error::InvalidGraph(format!("{}: piece names no backend", piece.graph.name))
        })
    };
    if let [piece] = pieces.as_mut_slice() {
        // Nothing was split: keep the name callers know the graph by.
        piece.graph.name.clone_from(&graph.name);
        return backend_of(piece)?.compile_piece(piece, weights);
    }
    let parts = pieces
        .iter()
        .map(|piece| backend_of(piece)?.compile_piece(piece, weights))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Box::new(ChainExecutable::new(graph.name.clone(), parts)))
}

/// Executables that run one after another over the same session state: the
/// compiled pieces of a partitioned subgraph.
pub struct ChainExecutable {
    name: String,
    parts: Vec<Box<dyn Executable>>,
}

impl ChainExecutable {
    pub fn new(name: impl Into<String>, parts: Vec<Box<dyn Executable>>) -> Self {
        ChainExecutable {
            name: name.into(),
            parts,
        }
    }

    pub fn parts(&self) -> &[Box<dyn Executable>] {
        &self.parts
    }
}

impl Executable for ChainExecutable {
    fn name(&self) -> &str {
        &self.name
    }

    /// Runs the parts in order; the first error stops the chain.
    fn run(&mut self, state: &mut SessionState, params: &ExecParams) -> Result<(), Error> {
        for part in &mut self.parts {
            part.run(state, params)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{names, ModelConfig, WeightCatalog, WeightDesc};
    use crate::ir::DType;
    use crate::lower::{lower, BucketKind, PlanOptions};
    use crate::WeightBytes;
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

    fn plan(n_layers: usize) -> crate::Plan {
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
        fn compile(
            &self,
            g: &Subgraph,
            _: &dyn WeightSource,
        ) -> Result<Box<dyn Executable>, Error> {
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
        fn compile(
            &self,
            g: &Subgraph,
            _: &dyn WeightSource,
        ) -> Result<Box<dyn Executable>, Error> {
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
}
