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
