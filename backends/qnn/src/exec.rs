//! Running a finalized QNN graph over a session's buffers.

use crate::graph::IoTensor;
use crate::group::GraphGroup;
use crate::lower::{Binding, IoPlan, Place, Sink, Source, MASKED};
use crate::Error;
use coordgen_graph::{ExecParams, Executable, SessionState, KV_SLOT_BLOCK};
use half::f16;
use std::sync::Arc;

/// A finalized QNN graph bound to a session's buffers.
pub struct QnnExecutable {
    name: String,
    /// The group holding the graph (it may be swapped out between runs).
    group: Arc<GraphGroup>,
    graph_name: String,
    /// Byte sizes of the graph's inputs and outputs.
    input_bytes: Vec<usize>,
    plan: IoPlan,
    /// Per input: the buffer of an input computed per run (RoPE tables, the
    /// mask), else empty.
    computed: Vec<Vec<u8>>,
    /// Per output: a staging buffer for outputs that are not written in
    /// place (new KV rows, and session tensors whose bytes overlap an input
    /// or another output), else empty.
    staging: Vec<Vec<u8>>,
    input_ptrs: Vec<*const u8>,
    output_ptrs: Vec<*mut u8>,
}

// SAFETY: the pointer vectors only hold addresses during `run`.
unsafe impl Send for QnnExecutable {}

fn sizes(list: &[IoTensor]) -> Vec<usize> {
    list.iter().map(IoTensor::bytes).collect()
}

impl QnnExecutable {
    pub(crate) fn new(
        name: String,
        group: Arc<GraphGroup>,
        graph_name: String,
        plan: IoPlan,
    ) -> Result<Self, Error> {
        let (inputs, outputs) = group.io(&graph_name).ok_or_else(|| Error::Lowering {
            graph: name.clone(),
            message: format!("group {} has no graph {graph_name}", group.name()),
        })?;
        if plan.inputs.len() != inputs.len() || plan.outputs.len() != outputs.len() {
            return Err(Error::Lowering {
                graph: name,
                message: format!(
                    "the graph has {} inputs and {} outputs, its plan {} and {}",
                    inputs.len(),
                    outputs.len(),
                    plan.inputs.len(),
                    plan.outputs.len()
                ),
            });
        }
        let (input_bytes, output_bytes) = (sizes(&inputs), sizes(&outputs));
        // A session tensor is read or written in place: its size must be
        // the graph tensor's.
        let bound = plan
            .inputs
            .iter()
            .zip(&input_bytes)
            .filter_map(|(s, &n)| match s {
                Source::Bound { binding, .. } => Some((binding.bytes, n)),
                _ => None,
            })
            .chain(
                plan.outputs
                    .iter()
                    .zip(&output_bytes)
                    .filter_map(|(s, &n)| match s {
                        Sink::Bound { binding, .. } => Some((binding.bytes, n)),
                        _ => None,
                    }),
            );
        for (have, want) in bound {
            if have != want {
                return Err(Error::Lowering {
                    graph: name,
                    message: format!(
                        "a session tensor of {have} bytes for a graph tensor of {want}"
                    ),
                });
            }
        }
        let bound_inputs: Vec<Binding> = plan
            .inputs
            .iter()
            .filter_map(|s| match s {
                Source::Bound { binding, .. } => Some(*binding),
                _ => None,
            })
            .collect();
        let computed = plan
            .inputs
            .iter()
            .enumerate()
            .map(|(i, s)| match s {
                Source::Rope { .. } | Source::Mask { .. } => vec![0u8; input_bytes[i]],
                _ => Vec::new(),
            })
            .collect();
        let staging = plan
            .outputs
            .iter()
            .enumerate()
            .map(|(i, s)| {
                let staged = match s {
                    Sink::KvRows { .. } => true,
                    Sink::Bound { binding, .. } => {
                        bound_inputs.iter().any(|b| b.overlaps(binding))
                            || plan.outputs[..i].iter().any(|o| {
                                matches!(o, Sink::Bound { binding: other, .. } if other.overlaps(binding))
                            })
                    }
                };
                if staged {
                    vec![0u8; output_bytes[i]]
                } else {
                    Vec::new()
                }
            })
            .collect();
        Ok(QnnExecutable {
            name,
            group,
            graph_name,
            input_bytes,
            plan,
            computed,
            staging,
            input_ptrs: Vec::new(),
            output_ptrs: Vec::new(),
        })
    }

    /// Outputs written through a staging copy: the new KV rows, plus any
    /// session tensor that shares bytes with an input (none in a layer
    /// block: the arena keeps a piece's inputs and outputs apart).
    pub fn staged_outputs(&self) -> usize {
        self.staging.iter().filter(|s| !s.is_empty()).count()
    }

    /// The group holding this executable's graph.
    pub fn group(&self) -> &Arc<GraphGroup> {
        &self.group
    }

    fn error(&self, message: String) -> Error {
        Error::Lowering {
            graph: self.name.clone(),
            message,
        }
    }

    fn bound<'s>(state: &'s mut SessionState, b: &Binding) -> Option<&'s mut [u8]> {
        let (buffer, start) = match b.place {
            Place::Boundary(id) => (state.boundaries.get_mut(id)?, 0),
            Place::Arena(offset) => (&mut state.arena, offset),
        };
        let end = start.checked_add(b.bytes)?;
        buffer.as_bytes_mut().get_mut(start..end)
    }

    /// Fills the inputs computed per run.
    fn compute_inputs(
        &mut self,
        state: &mut SessionState,
        params: &ExecParams,
    ) -> Result<(), Error> {
        for (i, source) in self.plan.inputs.iter().enumerate() {
            match *source {
                Source::Rope {
                    positions,
                    rows,
                    head_dim,
                    theta_bits,
                    sin,
                } => {
                    let bytes = Self::bound(state, &positions)
                        .ok_or_else(|| self.error("no positions buffer".into()))?;
                    let positions: Vec<i32> = bytes
                        .chunks_exact(4)
                        .take(rows)
                        .map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                        .collect();
                    let half = head_dim / 2;
                    let mut angles = vec![(0f32, 0f32); half];
                    let out = &mut self.computed[i];
                    for (r, &p) in positions.iter().enumerate() {
                        coordgen_kernels::ops::rope_angles(
                            p,
                            head_dim,
                            f32::from_bits(theta_bits),
                            &mut angles,
                        )
                        .map_err(|e| Error::Lowering {
                            graph: self.name.clone(),
                            message: e.to_string(),
                        })?;
                        for (j, &(s, c)) in angles.iter().enumerate() {
                            let v = f16::from_f32(if sin { s } else { c }).to_le_bytes();
                            let at = (r * half + j) * 2;
                            out[at..at + 2].copy_from_slice(&v);
                        }
                    }
                }
                Source::Mask {
                    tree_mask,
                    rows,
                    capacity,
                    group,
                } => {
                    let tree: Option<Vec<u8>> = match tree_mask {
                        Some(b) => Some(
                            Self::bound(state, &b)
                                .ok_or_else(|| self.error("no tree mask buffer".into()))?
                                .to_vec(),
                        ),
                        None => None,
                    };
                    let slots = capacity + rows;
                    let open = f16::ZERO.to_le_bytes();
                    let closed = f16::from_f32(MASKED).to_le_bytes();
                    let out = &mut self.computed[i];
                    for g in 0..group {
                        for r in 0..rows {
                            let row = (g * rows + r) * slots;
                            for j in 0..slots {
                                let visible = if r >= params.n_valid {
                                    // Padding sees itself only, so its
                                    // softmax stays defined.
                                    j == capacity + r
                                } else if j < capacity {
                                    j < params.past_len
                                } else {
                                    let c = j - capacity;
                                    c < params.n_valid
                                        && match &tree {
                                            Some(m) => m.get(r * rows + c).is_some_and(|&v| v != 0),
                                            None => c <= r,
                                        }
                                };
                                let at = (row + j) * 2;
                                out[at..at + 2].copy_from_slice(if visible {
                                    &open
                                } else {
                                    &closed
                                });
                            }
                        }
                    }
                }
                Source::Bound { .. } | Source::Kv { .. } => {}
            }
        }
        Ok(())
    }

    /// Stores the valid new K/V rows into their cache halves.
    fn store_kv_rows(&self, state: &mut SessionState, params: &ExecParams) -> Result<(), Error> {
        for (sink, staged) in self.plan.outputs.iter().zip(&self.staging) {
            let Sink::KvRows {
                half,
                key,
                capacity,
                kv_dim,
                ..
            } = *sink
            else {
                continue;
            };
            if params.past_len + params.n_valid > capacity {
                return Err(self.error(format!(
                    "{} cached and {} new rows exceed the cache of {capacity}",
                    params.past_len, params.n_valid
                )));
            }
            let cache = state
                .kv
                .half_mut(half)
                .ok_or_else(|| self.error(format!("no KV cache half {half}")))?;
            for r in 0..params.n_valid {
                let slot = params.past_len + r;
                for c in 0..kv_dim {
                    let from = (r * kv_dim + c) * 2;
                    let to = if key {
                        (slot / KV_SLOT_BLOCK) * KV_SLOT_BLOCK * kv_dim
                            + KV_SLOT_BLOCK * c
                            + slot % KV_SLOT_BLOCK
                    } else {
                        slot * kv_dim + c
                    } * 2;
                    let (Some(dst), Some(src)) =
                        (cache.get_mut(to..to + 2), staged.get(from..from + 2))
                    else {
                        return Err(self.error("a KV row outside its buffers".into()));
                    };
                    dst.copy_from_slice(src);
                }
            }
        }
        Ok(())
    }
}

impl Executable for QnnExecutable {
    fn name(&self) -> &str {
        &self.name
    }

    fn run(
        &mut self,
        state: &mut SessionState,
        params: &ExecParams,
    ) -> Result<(), coordgen_graph::Error> {
        // Padding rows run too (the graph is static): the linear ops are
        // row-wise and the mask keeps padding out of valid rows.
        self.compute_inputs(state, params)?;
        self.input_ptrs.clear();
        self.output_ptrs.clear();
        for (i, source) in self.plan.inputs.iter().enumerate() {
            let bytes = self.input_bytes[i];
            let ptr = match source {
                Source::Bound { binding, .. } => Self::bound(state, binding).map(|s| s.as_ptr()),
                Source::Kv { half, .. } => state
                    .kv
                    .half_mut(*half)
                    .filter(|h| h.len() >= bytes)
                    .map(|h| h.as_ptr()),
                Source::Rope { .. } | Source::Mask { .. } => {
                    Some(self.computed[i].as_ptr()).filter(|_| self.computed[i].len() == bytes)
                }
            };
            let ptr =
                ptr.ok_or_else(|| self.error(format!("input {i} has no buffer of {bytes} bytes")))?;
            self.input_ptrs.push(ptr);
        }
        for (i, sink) in self.plan.outputs.iter().enumerate() {
            let ptr = if !self.staging[i].is_empty() {
                Some(self.staging[i].as_mut_ptr())
            } else {
                match sink {
                    Sink::Bound { binding, .. } => {
                        Self::bound(state, binding).map(|s| s.as_mut_ptr())
                    }
                    Sink::KvRows { .. } => None,
                }
            };
            let ptr = ptr.ok_or_else(|| self.error(format!("output {i} has no buffer")))?;
            self.output_ptrs.push(ptr);
        }
        // SAFETY: every pointer addresses as many bytes as its graph tensor
        // inside the session's buffers (bounds checked just above), the
        // executable's own per-run buffers, or a staging buffer of that
        // size; `state` is borrowed mutably for the whole call; outputs
        // overlap no input or other output (overlapping ones are staged).
        let (inputs, outputs) = (&self.input_ptrs, &self.output_ptrs);
        let result = self.group.with_graph(&self.graph_name, |graph| unsafe {
            graph.execute_raw(inputs, outputs)
        });
        self.input_ptrs.clear();
        self.output_ptrs.clear();
        result?;
        for (sink, staged) in self.plan.outputs.iter().zip(&self.staging) {
            if let (Sink::Bound { binding, .. }, false) = (sink, staged.is_empty()) {
                let dst = Self::bound(state, binding)
                    .ok_or_else(|| self.error("an output without its buffer".into()))?;
                dst.copy_from_slice(staged);
            }
        }
        self.store_kv_rows(state, params)?;
        Ok(())
    }
}
