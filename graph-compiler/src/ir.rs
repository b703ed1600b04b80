//! The IR: subgraphs of ops over tensors with static shapes and dtypes.
//!
//! Every tensor of a subgraph has a fixed shape chosen at lowering time (the
//! bucket width is part of the shape). What varies per run is carried by
//! [`ExecParams`](crate::ExecParams): how many rows are valid and how long
//! the cached context is. That keeps the graphs static for NPUs while a
//! partial chunk is padded and masked.

use serde::Serialize;

/// Element type of a tensor.
#[allow(non_camel_case_types)] // the ggml names (Q4_K, ...), kept recognisable
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
pub enum DType {
    F32,
    F16,
    BF16,
    Q4_0,
    Q4_1,
    Q8_0,
    Q4_K,
    Q5_K,
    Q6_K,
    I32,
    U8,
}

impl DType {
    /// Elements per block (1 for plain types).
    pub fn block_len(self) -> usize {
        match self {
            DType::Q4_0 | DType::Q4_1 | DType::Q8_0 => 32,
            DType::Q4_K | DType::Q5_K | DType::Q6_K => 256,
            _ => 1,
        }
    }

    /// Bytes per block.
    pub fn block_bytes(self) -> usize {
        match self {
            DType::F32 | DType::I32 => 4,
            DType::F16 | DType::BF16 => 2,
            DType::U8 => 1,
            DType::Q4_0 => 18,
            DType::Q4_1 => 20,
            DType::Q8_0 => 34,
            DType::Q4_K => 144,
            DType::Q5_K => 176,
            DType::Q6_K => 210,
        }
    }

    /// Bytes taken by `n` elements, or `None` when `n` is not a whole number
    /// of blocks or the size overflows.
    pub fn bytes_for(self, n: usize) -> Option<usize> {
        if !n.is_multiple_of(self.block_len()) {
            return None;
        }
        (n / self.block_len()).checked_mul(self.block_bytes())
    }

    pub fn is_quantized(self) -> bool {
        self.block_len() > 1
    }

    pub fn name(self) -> &'static str {
        match self {
            DType::F32 => "f32",
            DType::F16 => "f16",
            DType::BF16 => "bf16",
            DType::Q4_0 => "q4_0",
            DType::Q4_1 => "q4_1",
            DType::Q8_0 => "q8_0",
            DType::Q4_K => "q4_k",
            DType::Q5_K => "q5_k",
            DType::Q6_K => "q6_k",
            DType::I32 => "i32",
            DType::U8 => "u8",
        }
    }
}

impl std::fmt::Display for DType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Index of a tensor inside one [`Subgraph`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct TensorId(pub usize);

/// Index of a boundary buffer inside a [`Plan`](crate::Plan).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct BoundaryId(pub usize);

/// Slots per block of the K cache layout. A K half is whole blocks, each
/// holding every column of its 16 slots side by side: column `c` of slot
/// `t` sits at `(t / 16) · 16 · kv_dim + 16 · c + t % 16` (f16), so a score
/// kernel reads one column of 16 keys as one vector. A V half keeps one row
/// of `kv_dim` per slot. Both halves hold [`kv_capacity`] slots.
pub const KV_SLOT_BLOCK: usize = 16;

/// Slots of a KV cache planned for `context_length` tokens: whole blocks.
pub fn kv_capacity(context_length: usize) -> usize {
    context_length.div_ceil(KV_SLOT_BLOCK) * KV_SLOT_BLOCK
}

/// K or V half of a layer's cache.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
pub enum KvHalf {
    K,
    V,
}

impl KvHalf {
    /// The index of `layer`'s half in a session's [`KvCache`](crate::KvCache):
    /// `2 · layer` for K, `2 · layer + 1` for V.
    pub fn index(self, layer: usize) -> usize {
        2 * layer + usize::from(self == KvHalf::V)
    }
}

/// Where a tensor's memory comes from.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub enum TensorKind {
    /// A model weight, bound by name when the backend compiles the subgraph.
    Weight { name: String },
    /// A buffer shared between subgraphs (and between backends): hidden
    /// state, token ids, positions, the tree mask, logits. The subgraph sees
    /// the first `shape` elements of the boundary buffer.
    Boundary { id: BoundaryId },
    /// Per-session state that outlives a run: the KV cache of one layer.
    KvCache { layer: usize, half: KvHalf },
    /// Scratch that lives only inside the subgraph, at an arena offset.
    Intermediate { offset: usize },
}

/// A tensor of a subgraph: static shape (outermost dimension first) and dtype.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct TensorDecl {
    pub name: String,
    pub dtype: DType,
    pub shape: Vec<usize>,
    pub kind: TensorKind,
}

impl TensorDecl {
    pub fn n_elements(&self) -> usize {
        self.shape.iter().product()
    }

    /// Bytes of the tensor; `None` for a shape that is not whole blocks.
    pub fn n_bytes(&self) -> Option<usize> {
        self.dtype.bytes_for(self.n_elements())
    }
}

/// Which cache slots a row of an attention op may see.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum MaskKind {
    /// Row `i` sees every cached slot before it and rows `0..=i` of this run.
    Causal,
    /// Row `i` sees every cached slot before this run, plus the rows `j` of
    /// this run with `tree_mask[i][j] != 0` (its ancestors and itself).
    Tree,
}

/// Which rows of the input an output head keeps.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum RowSelection {
    /// Every row (verification needs all of them).
    All,
    /// Only the last valid row (plain prefill needs just that one).
    LastValid,
}

/// An operation. Operands are tensors of the same subgraph.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub enum Op {
    /// `out[i] = table[ids[i]]`, dequantized to f32.
    Embedding {
        table: TensorId,
        ids: TensorId,
        out: TensorId,
    },
    /// Row-wise `x / rms(x) * weight`.
    RmsNorm {
        x: TensorId,
        weight: TensorId,
        eps: f32,
        out: TensorId,
    },
    /// `out = x · wᵀ`, `w` is `[out_features, in_features]`, possibly quantized.
    MatMul {
        x: TensorId,
        w: TensorId,
        out: TensorId,
    },
    /// Rotary embedding ("normal" mode: adjacent pairs) at per-row positions.
    Rope {
        x: TensorId,
        positions: TensorId,
        n_heads: usize,
        head_dim: usize,
        theta_base: f32,
        out: TensorId,
    },
    /// Stores the valid rows of `k`/`v` into the layer's cache after the
    /// cached context, then attends every valid row over the slots its mask
    /// allows. Padded rows produce zeros and are not cached.
    Attention {
        q: TensorId,
        k: TensorId,
        v: TensorId,
        k_cache: TensorId,
        v_cache: TensorId,
        mask: MaskKind,
        /// `[W, W]` u8 input, present for [`MaskKind::Tree`].
        tree_mask: Option<TensorId>,
        n_heads: usize,
        n_kv_heads: usize,
        head_dim: usize,
        out: TensorId,
    },
    /// `out = silu(gate) * up`.
    SiluMul {
        gate: TensorId,
        up: TensorId,
        out: TensorId,
    },
    /// `out = a + b`.
    Add {
        a: TensorId,
        b: TensorId,
        out: TensorId,
    },
    /// Copies the selected rows of `x` to `out` (the output head's input).
    SelectRows {
        x: TensorId,
        rows: RowSelection,
        out: TensorId,
    },
}

impl Op {
    pub fn name(&self) -> &'static str {
        match self {
            Op::Embedding { .. } => "embedding",
            Op::RmsNorm { .. } => "rms_norm",
            Op::MatMul { .. } => "matmul",
            Op::Rope { .. } => "rope",
            Op::Attention { .. } => "attention",
            Op::SiluMul { .. } => "silu_mul",
            Op::Add { .. } => "add",
            Op::SelectRows { .. } => "select_rows",
        }
    }

    /// Tensors the op reads.
    pub fn inputs(&self) -> Vec<TensorId> {
        match *self {
            Op::Embedding { table, ids, .. } => vec![table, ids],
            Op::RmsNorm { x, weight, .. } => vec![x, weight],
            Op::MatMul { x, w, .. } => vec![x, w],
            Op::Rope { x, positions, .. } => vec![x, positions],
            Op::Attention {
                q,
                k,
                v,
                k_cache,
                v_cache,
                tree_mask,
                ..
            } => {
                let mut ids = vec![q, k, v, k_cache, v_cache];
                ids.extend(tree_mask);
                ids
            }
            Op::SiluMul { gate, up, .. } => vec![gate, up],
            Op::Add { a, b, .. } => vec![a, b],
            Op::SelectRows { x, .. } => vec![x],
        }
    }

    /// The tensor the op writes (attention also writes its cache operands).
    pub fn output(&self) -> TensorId {
        match *self {
            Op::Embedding { out, .. }
            | Op::RmsNorm { out, .. }
            | Op::MatMul { out, .. }
            | Op::Rope { out, .. }
            | Op::Attention { out, .. }
            | Op::SiluMul { out, .. }
            | Op::Add { out, .. }
            | Op::SelectRows { out, .. } => out,
        }
    }
}

/// What a subgraph computes, so schedulers and partitioners can reason about it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum SubgraphRole {
    /// Token ids to the first hidden state.
    Embed,
    /// A block of transformer layers `first..first + count`.
    Layers {
        block: usize,
        first: usize,
        count: usize,
    },
    /// Final norm and output head.
    Head { rows: RowSelection },
}

/// A static-shape piece of the model for one bucket width.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Subgraph {
    pub name: String,
    pub role: SubgraphRole,
    /// Rows per run (the bucket width).
    pub width: usize,
    pub tensors: Vec<TensorDecl>,
    /// Ops in execution order.
    pub nodes: Vec<Op>,
    /// Bytes of the arena that holds the intermediates.
    pub arena_bytes: usize,
}

impl Subgraph {
    pub fn tensor(&self, id: TensorId) -> Option<&TensorDecl> {
        self.tensors.get(id.0)
    }

    /// Boundary buffers this subgraph reads before writing them.
    pub fn boundary_inputs(&self) -> Vec<BoundaryId> {
        self.boundaries(true)
    }

    /// Boundary buffers this subgraph writes.
    pub fn boundary_outputs(&self) -> Vec<BoundaryId> {
        self.boundaries(false)
    }

    fn boundaries(&self, read: bool) -> Vec<BoundaryId> {
        let mut ids = Vec::new();
        for node in &self.nodes {
            let candidates = if read {
                node.inputs()
            } else {
                vec![node.output()]
            };
            for t in candidates {
                if let Some(TensorKind::Boundary { id }) = self.tensor(t).map(|d| &d.kind) {
                    if !ids.contains(id) {
                        ids.push(*id);
                    }
                }
            }
        }
        ids
    }

    /// Names of the weights the subgraph binds.
    pub fn weight_names(&self) -> impl Iterator<Item = &str> {
        self.tensors.iter().filter_map(|t| match &t.kind {
            TensorKind::Weight { name } => Some(name.as_str()),
            _ => None,
        })
    }
}
