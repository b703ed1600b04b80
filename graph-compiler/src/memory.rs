//! Memory planning: intermediates of a subgraph share one arena.
//!
//! A tensor lives from the op that writes it to the last op that reads it.
//! Tensors whose lifetimes overlap get disjoint byte ranges; the others may
//! reuse the same bytes. Placement is greedy first-fit, largest first.

use crate::ir::{Subgraph, TensorKind};
use crate::Error;

/// Arena offsets are aligned to a cache line so SIMD loads stay aligned.
pub const ARENA_ALIGN: usize = 64;

fn align_up(n: usize) -> Option<usize> {
    n.checked_add(ARENA_ALIGN - 1)
        .map(|v| v / ARENA_ALIGN * ARENA_ALIGN)
}

/// Assigns arena offsets to every intermediate of `graph` and sets
/// `graph.arena_bytes`.
pub fn plan_arena(graph: &mut Subgraph) -> Result<(), Error> {
    let n = graph.tensors.len();
    let mut first_def = vec![usize::MAX; n];
    let mut last_use = vec![0usize; n];
    for (step, node) in graph.nodes.iter().enumerate() {
        let out = node.output().0;
        if out < n && first_def[out] == usize::MAX {
            first_def[out] = step;
        }
        for input in node.inputs() {
            if input.0 < n {
                last_use[input.0] = last_use[input.0].max(step);
            }
        }
        if out < n {
            last_use[out] = last_use[out].max(step);
        }
    }

    let mut order: Vec<usize> = (0..n)
        .filter(|&i| matches!(graph.tensors[i].kind, TensorKind::Intermediate { .. }))
        .collect();
    let sizes: Vec<usize> = graph
        .tensors
        .iter()
        .map(|t| t.n_bytes().and_then(align_up).unwrap_or(usize::MAX))
        .collect();
    for &i in &order {
        if sizes[i] == usize::MAX {
            return Err(Error::InvalidGraph(format!(
                "{}: tensor {} has an invalid size",
                graph.name, graph.tensors[i].name
            )));
        }
        if first_def[i] == usize::MAX {
            return Err(Error::InvalidGraph(format!(
                "{}: intermediate {} is never written",
                graph.name, graph.tensors[i].name
            )));
        }
    }
    order.sort_by(|&a, &b| sizes[b].cmp(&sizes[a]).then(a.cmp(&b)));

    let mut placed: Vec<(usize, usize, usize)> = Vec::new(); // (tensor, offset, end)
    let mut arena_bytes = 0usize;
    for &i in &order {
        let overlaps = |j: usize| first_def[i] <= last_use[j] && first_def[j] <= last_use[i];
        let mut busy: Vec<(usize, usize)> = placed
            .iter()
            .filter(|&&(j, _, _)| overlaps(j))
            .map(|&(_, start, end)| (start, end))
            .collect();
        busy.sort_unstable();
        let mut offset = 0usize;
        for (start, end) in busy {
            if offset + sizes[i] <= start {
                break;
            }
            offset = offset.max(end);
        }
        let end = offset + sizes[i];
        placed.push((i, offset, end));
        arena_bytes = arena_bytes.max(end);
        graph.tensors[i].kind = TensorKind::Intermediate { offset };
    }
    graph.arena_bytes = arena_bytes;
    Ok(())
}

/// Checks that no op reads and writes overlapping arena bytes and that every
/// intermediate fits in the arena. Backends call this before trusting offsets.
pub fn validate_arena(graph: &Subgraph) -> Result<(), Error> {
    let range = |id: crate::TensorId| -> Option<(usize, usize)> {
        let t = graph.tensor(id)?;
        match t.kind {
            TensorKind::Intermediate { offset } => Some((offset, offset + t.n_bytes()?)),
            _ => None,
        }
    };
    for t in &graph.tensors {
        if let TensorKind::Intermediate { offset } = t.kind {
            let end = t
                .n_bytes()
                .and_then(|b| offset.checked_add(b))
                .ok_or_else(|| Error::InvalidGraph(format!("{}: size overflow", t.name)))?;
            if end > graph.arena_bytes || offset % ARENA_ALIGN != 0 {
                return Err(Error::InvalidGraph(format!(
                    "{}: {} lies outside the arena or is misaligned",
                    graph.name, t.name
                )));
            }
        }
    }
    for node in &graph.nodes {
        if let Some((o0, o1)) = range(node.output()) {
            for input in node.inputs() {
                if input == node.output() {
                    return Err(Error::InvalidGraph(format!(
                        "{}: {} reads and writes the same tensor",
                        graph.name,
                        node.name()
                    )));
                }
                if let Some((i0, i1)) = range(input) {
                    if i0 < o1 && o0 < i1 {
                        return Err(Error::InvalidGraph(format!(
                            "{}: {} output overlaps an input in the arena",
                            graph.name,
                            node.name()
                        )));
                    }
                }
            }
        }
    }
    Ok(())
}
