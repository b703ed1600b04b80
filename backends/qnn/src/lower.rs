//! Lowering pieces of IR subgraphs into QNN graphs.
//!
//! An [`IoPlan`] lists, in order, what a piece's graph reads and writes:
//! session tensors read or written in place, the KV cache halves read in
//! place, and inputs computed per run (RoPE tables, the attention mask) or
//! outputs stored per run (new K/V rows). The plan is a function of the
//! piece alone, so a graph retrieved from a cached context binary is bound
//! exactly like the one that was built.

use crate::graph::{DataType, GraphBuilder, Param, Role, Scalar, TensorRef};
use crate::weights::{self, ConversionReport, WeightFormat};
use crate::{Error, Result};
use coordgen_graph::{
    DType, KvHalf, MaskKind, Op, Piece, Subgraph, TensorDecl, TensorId, TensorKind, WeightSource,
};
use std::collections::HashMap;
use std::sync::Mutex;

/// Which parts of a layer the HTP runs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum GraphScope {
    /// Norms, matmuls, residual adds and the SiLU gate; RoPE and attention
    /// over the growing KV cache on the CPU (the paper's split).
    #[default]
    Linear,
    /// Whole layers: RoPE and attention over the full, fixed-length KV cache
    /// (masked) in the graph too, so a block of layers is one graph.
    FullLayer,
}

impl GraphScope {
    pub const ALL: [GraphScope; 2] = [GraphScope::Linear, GraphScope::FullLayer];

    pub fn name(self) -> &'static str {
        match self {
            GraphScope::Linear => "linear",
            GraphScope::FullLayer => "full-layer",
        }
    }

    pub fn parse(name: &str) -> Option<GraphScope> {
        GraphScope::ALL
            .into_iter()
            .find(|s| s.name().eq_ignore_ascii_case(name))
    }
}

/// Where a session tensor read or written in place lives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Place {
    Boundary(usize),
    Arena(usize),
}

/// A session tensor's place and byte size.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Binding {
    pub place: Place,
    pub bytes: usize,
}

impl Binding {
    fn range(&self) -> (Place, usize, usize) {
        match self.place {
            Place::Boundary(id) => (Place::Boundary(id), 0, self.bytes),
            Place::Arena(offset) => (Place::Arena(0), offset, offset + self.bytes),
        }
    }

    pub fn overlaps(&self, other: &Binding) -> bool {
        let (a, s0, e0) = self.range();
        let (b, s1, e1) = other.range();
        a == b && s0 < e1 && s1 < e0
    }
}

/// A graph input.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Source {
    /// An f32 session tensor, read in place.
    Bound { tensor: TensorId, binding: Binding },
    /// A layer's K or V cache half (f16), read in place: K in the blocked
    /// layout of `coordgen_graph::KV_SLOT_BLOCK`, V a row per slot.
    Kv {
        tensor: TensorId,
        half: usize,
        key: bool,
        capacity: usize,
        kv_dim: usize,
    },
    /// The cosines (or sines) of each row's rotary angles, computed per run
    /// from the positions: `[W, 1, D/2, 1]` f16.
    Rope {
        positions: Binding,
        rows: usize,
        head_dim: usize,
        theta_bits: u32,
        sin: bool,
    },
    /// The additive attention mask of a run, computed per run from its
    /// cached length, valid rows and tree mask: `[1, G·W, C + W]` f16.
    Mask {
        tree_mask: Option<Binding>,
        rows: usize,
        capacity: usize,
        group: usize,
    },
}

/// A graph output.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Sink {
    /// An f32 session tensor, written in place.
    Bound { tensor: TensorId, binding: Binding },
    /// The run's new K (or V) rows, `[W, kv_dim]` f16, stored into the cache
    /// half after the run (valid rows only, after the cached ones).
    KvRows {
        of: TensorId,
        half: usize,
        key: bool,
        capacity: usize,
        kv_dim: usize,
    },
}

/// What a piece's graph reads and writes, in graph order.
#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct IoPlan {
    pub inputs: Vec<Source>,
    pub outputs: Vec<Sink>,
}

fn lowering_error(graph: &Subgraph, message: String) -> Error {
    Error::Lowering {
        graph: graph.name.clone(),
        message,
    }
}

fn decl(graph: &Subgraph, t: TensorId) -> Result<&TensorDecl> {
    graph
        .tensor(t)
        .ok_or_else(|| lowering_error(graph, format!("no tensor {}", t.0)))
}

/// The arena or boundary place of a session tensor.
pub(crate) fn binding(graph: &Subgraph, t: TensorId) -> Result<Binding> {
    let d = decl(graph, t)?;
    let bytes = d
        .n_bytes()
        .ok_or_else(|| lowering_error(graph, format!("{} has no whole size", d.name)))?;
    let place = match d.kind {
        TensorKind::Boundary { id } => Place::Boundary(id.0),
        TensorKind::Intermediate { offset } => Place::Arena(offset),
        _ => {
            return Err(lowering_error(
                graph,
                format!("{} is neither a boundary nor an intermediate", d.name),
            ))
        }
    };
    Ok(Binding { place, bytes })
}

/// The cache half of a KV tensor: `2 · layer` for K, `+ 1` for V.
fn kv_half(graph: &Subgraph, t: TensorId) -> Result<(usize, bool, usize, usize)> {
    let d = decl(graph, t)?;
    match (&d.kind, d.shape.as_slice()) {
        (TensorKind::KvCache { layer, half }, &[capacity, kv_dim]) => {
            Ok((half.index(*layer), *half == KvHalf::K, capacity, kv_dim))
        }
        _ => Err(lowering_error(
            graph,
            format!("{} is not a KV cache half", d.name),
        )),
    }
}

/// The IO plan of a piece (see the module docs).
pub(crate) fn io_plan(piece: &Piece) -> Result<IoPlan> {
    let graph = &piece.graph;
    let mut plan = IoPlan::default();
    for &t in &piece.inputs {
        let d = decl(graph, t)?;
        match d.kind {
            TensorKind::Boundary { .. } | TensorKind::Intermediate { .. }
                if d.dtype == DType::F32 =>
            {
                plan.inputs.push(Source::Bound {
                    tensor: t,
                    binding: binding(graph, t)?,
                });
            }
            // Positions, the tree mask and the cache reach the graph through
            // the per-run inputs of the ops that read them (below).
            TensorKind::Boundary { .. } | TensorKind::KvCache { .. } => {}
            _ => {
                return Err(lowering_error(
                    graph,
                    format!("input {} ({}) cannot be a QNN input", d.name, d.dtype),
                ))
            }
        }
    }
    let mut mask_planned = false;
    let mut ropes = Vec::new();
    for op in &graph.nodes {
        match *op {
            Op::Rope {
                positions,
                head_dim,
                theta_base,
                ..
            } => {
                let key = (head_dim, theta_base.to_bits());
                if !ropes.contains(&key) {
                    ropes.push(key);
                    for sin in [false, true] {
                        plan.inputs.push(Source::Rope {
                            positions: binding(graph, positions)?,
                            rows: graph.width,
                            head_dim,
                            theta_bits: theta_base.to_bits(),
                            sin,
                        });
                    }
                }
            }
            Op::Attention {
                k_cache,
                v_cache,
                mask,
                tree_mask,
                n_heads,
                n_kv_heads,
                ..
            } => {
                for t in [k_cache, v_cache] {
                    let (half, key, capacity, kv_dim) = kv_half(graph, t)?;
                    plan.inputs.push(Source::Kv {
                        tensor: t,
                        half,
                        key,
                        capacity,
                        kv_dim,
                    });
                }
                if !mask_planned {
                    mask_planned = true;
                    let tree_mask = match (mask, tree_mask) {
                        (MaskKind::Tree, Some(t)) => Some(binding(graph, t)?),
                        (MaskKind::Tree, None) => {
                            return Err(lowering_error(
                                graph,
                                "a tree mask op without its mask".into(),
                            ))
                        }
                        (MaskKind::Causal, _) => None,
                    };
                    let (_, _, capacity, _) = kv_half(graph, k_cache)?;
                    plan.inputs.push(Source::Mask {
                        tree_mask,
                        rows: graph.width,
                        capacity,
                        group: n_heads / n_kv_heads.max(1),
                    });
                }
            }
            _ => {}
        }
    }
    for &t in &piece.outputs {
        let d = decl(graph, t)?;
        match d.kind {
            TensorKind::Boundary { .. } | TensorKind::Intermediate { .. }
                if d.dtype == DType::F32 =>
            {
                plan.outputs.push(Sink::Bound {
                    tensor: t,
                    binding: binding(graph, t)?,
                });
            }
            TensorKind::KvCache { .. } => {}
            _ => {
                return Err(lowering_error(
                    graph,
                    format!("output {} ({}) cannot be a QNN output", d.name, d.dtype),
                ))
            }
        }
    }
    for op in &graph.nodes {
        if let Op::Attention {
            k,
            v,
            k_cache,
            v_cache,
            ..
        } = *op
        {
            for (of, cache) in [(k, k_cache), (v, v_cache)] {
                let (half, key, capacity, kv_dim) = kv_half(graph, cache)?;
                plan.outputs.push(Sink::KvRows {
                    of,
                    half,
                    key,
                    capacity,
                    kv_dim,
                });
            }
        }
    }
    Ok(plan)
}

/// Weight bytes for lowering: the model's, or zeros for a validation probe.
pub(crate) trait WeightProvider {
    fn matrix(&self, name: &str, format: WeightFormat) -> Result<(DataType, Vec<u8>)>;
    fn vector_f16(&self, name: &str) -> Result<Vec<u8>>;
}

pub(crate) struct FileWeights<'a> {
    source: &'a dyn WeightSource,
    reports: &'a Mutex<Vec<ConversionReport>>,
}

impl FileWeights<'_> {
    fn load(
        &self,
        name: &str,
    ) -> Result<(coordgen_graph::WeightDesc, coordgen_graph::WeightBytes)> {
        let missing = || Error::BadWeight {
            name: name.to_string(),
            message: "the model has no such weight".into(),
        };
        let desc = self.source.describe(name).ok_or_else(missing)?;
        let bytes = self.source.bytes(name).ok_or_else(missing)?;
        Ok((desc, bytes))
    }
}

impl WeightProvider for FileWeights<'_> {
    fn matrix(&self, name: &str, format: WeightFormat) -> Result<(DataType, Vec<u8>)> {
        let (desc, bytes) = self.load(name)?;
        let converted = weights::convert_matrix(name, &desc, bytes.as_slice(), format)?;
        if let Ok(mut reports) = self.reports.lock() {
            if !reports.iter().any(|r| r.name == name) {
                reports.push(converted.report.clone());
            }
        }
        Ok((converted.data_type, converted.bytes))
    }

    fn vector_f16(&self, name: &str) -> Result<Vec<u8>> {
        let (desc, bytes) = self.load(name)?;
        Ok(weights::to_f16(&weights::dequantize(
            name,
            &desc,
            bytes.as_slice(),
        )?))
    }
}

/// Zero weights of the right shapes, for validation probes.
pub(crate) struct ZeroWeights<'a>(pub &'a Subgraph);

impl ZeroWeights<'_> {
    fn shape(&self, name: &str) -> Result<Vec<usize>> {
        self.0
            .tensors
            .iter()
            .find(|t| matches!(&t.kind, TensorKind::Weight { name: n } if n == name))
            .map(|t| t.shape.clone())
            .ok_or_else(|| Error::BadWeight {
                name: name.to_string(),
                message: "not a weight of this graph".into(),
            })
    }
}

impl WeightProvider for ZeroWeights<'_> {
    fn matrix(&self, name: &str, format: WeightFormat) -> Result<(DataType, Vec<u8>)> {
        let shape = self.shape(name)?;
        let n: usize = shape.iter().product();
        let rows = shape.first().copied().unwrap_or(1);
        Ok(match format {
            WeightFormat::F16 => (DataType::F16, vec![0; n * 2]),
            WeightFormat::Int8 | WeightFormat::Int4 => (
                DataType::SFixed8PerAxis {
                    axis: 0,
                    bitwidth: if format == WeightFormat::Int4 { 4 } else { 8 },
                    scales: vec![1.0; rows],
                },
                vec![0; n],
            ),
        })
    }

    fn vector_f16(&self, name: &str) -> Result<Vec<u8>> {
        let n: usize = self.shape(name)?.iter().product();
        Ok(vec![0; n * 2])
    }
}

/// The additive mask value of a hidden slot (finite: fp16 softmax stays
/// exact zero for it without infinities).
pub(crate) const MASKED: f32 = -30000.0;

/// Lowers the ops of one piece into one QNN graph, in fp16.
pub(crate) struct Lowering<'b, 'g> {
    builder: &'b mut GraphBuilder,
    graph: &'g Subgraph,
    format: WeightFormat,
    /// The fp16 tensor holding each IR tensor's value so far.
    values: HashMap<TensorId, TensorRef>,
    /// The cache halves read in place, by IR tensor.
    kv: HashMap<TensorId, TensorRef>,
    /// RoPE tables by (head_dim, theta bits, sin).
    rope: HashMap<(usize, u32, bool), TensorRef>,
    mask: Option<TensorRef>,
}

impl<'b, 'g> Lowering<'b, 'g> {
    pub fn new(builder: &'b mut GraphBuilder, graph: &'g Subgraph, format: WeightFormat) -> Self {
        Lowering {
            builder,
            graph,
            format,
            values: HashMap::new(),
            kv: HashMap::new(),
            rope: HashMap::new(),
            mask: None,
        }
    }

    /// Lowers a whole piece: its inputs, ops and outputs, in plan order.
    pub fn piece(
        &mut self,
        piece: &Piece,
        plan: &IoPlan,
        weights: &dyn WeightProvider,
    ) -> Result<()> {
        for source in &plan.inputs {
            self.source(source)?;
        }
        for op in &piece.graph.nodes {
            self.op(op, weights)?;
        }
        for sink in &plan.outputs {
            self.sink(sink)?;
        }
        Ok(())
    }

    fn decl(&self, t: TensorId) -> Result<&'g TensorDecl> {
        decl(self.graph, t)
    }

    fn unsupported(&self, what: String) -> Error {
        lowering_error(self.graph, what)
    }

    fn source(&mut self, source: &Source) -> Result<()> {
        match *source {
            Source::Bound { tensor, .. } => {
                let d = self.decl(tensor)?;
                let input =
                    self.builder
                        .tensor(&d.name, Role::Input, DataType::F32, &d.shape, None)?;
                let half = self.native(tensor)?;
                self.builder.node("Cast", &[input], &[half], &[])?;
                self.values.insert(tensor, half);
            }
            Source::Kv {
                tensor,
                key,
                capacity,
                kv_dim,
                ..
            } => {
                let block = coordgen_graph::KV_SLOT_BLOCK;
                let dims = if key {
                    vec![capacity / block, kv_dim, block]
                } else {
                    vec![capacity, kv_dim]
                };
                let name = &self.decl(tensor)?.name;
                let input = self
                    .builder
                    .tensor(name, Role::Input, DataType::F16, &dims, None)?;
                self.kv.insert(tensor, input);
            }
            Source::Rope {
                rows,
                head_dim,
                theta_bits,
                sin,
                ..
            } => {
                let name = if sin { "rope_sin" } else { "rope_cos" };
                let input = self.builder.tensor(
                    name,
                    Role::Input,
                    DataType::F16,
                    &[rows, 1, head_dim / 2, 1],
                    None,
                )?;
                self.rope.insert((head_dim, theta_bits, sin), input);
            }
            Source::Mask {
                rows,
                capacity,
                group,
                ..
            } => {
                let input = self.builder.tensor(
                    "attention_mask",
                    Role::Input,
                    DataType::F16,
                    &[1, group * rows, capacity + rows],
                    None,
                )?;
                self.mask = Some(input);
            }
        }
        Ok(())
    }

    fn sink(&mut self, sink: &Sink) -> Result<()> {
        match *sink {
            Sink::Bound { tensor, .. } => {
                let d = self.decl(tensor)?;
                let value = self.values.get(&tensor).copied().ok_or_else(|| {
                    self.unsupported(format!("output {} is never computed", d.name))
                })?;
                let out =
                    self.builder
                        .tensor(&d.name, Role::Output, DataType::F32, &d.shape, None)?;
                self.builder.node("Cast", &[value], &[out], &[])
            }
            Sink::KvRows { of, kv_dim, .. } => {
                let value = self.value(of)?;
                let out = self.builder.tensor(
                    "kv_rows",
                    Role::Output,
                    DataType::F16,
                    &[self.graph.width, kv_dim],
                    None,
                )?;
                self.reshape(value, out)
            }
        }
    }

    /// A new fp16 tensor of `t`'s shape, inside the graph.
    fn native(&mut self, t: TensorId) -> Result<TensorRef> {
        let d = self.decl(t)?;
        self.builder
            .tensor(&d.name, Role::Native, DataType::F16, &d.shape, None)
    }

    /// A new fp16 tensor of any shape, inside the graph.
    fn scratch(&mut self, name: &str, dims: &[usize]) -> Result<TensorRef> {
        self.builder
            .tensor(name, Role::Native, DataType::F16, dims, None)
    }

    fn value(&self, t: TensorId) -> Result<TensorRef> {
        self.values.get(&t).copied().ok_or_else(|| {
            let name = self.decl(t).map(|d| d.name.clone()).unwrap_or_default();
            self.unsupported(format!("{name} is read before it is computed or bound"))
        })
    }

    fn reshape(&mut self, x: TensorRef, out: TensorRef) -> Result<()> {
        self.builder.node("Reshape", &[x], &[out], &[])
    }

    fn reshaped(&mut self, name: &str, x: TensorRef, dims: &[usize]) -> Result<TensorRef> {
        let out = self.scratch(name, dims)?;
        self.reshape(x, out)?;
        Ok(out)
    }

    fn transposed(
        &mut self,
        name: &str,
        x: TensorRef,
        perm: &[u32],
        dims: &[usize],
    ) -> Result<TensorRef> {
        let out = self.scratch(name, dims)?;
        let perm = self.builder.u32_param_tensor("perm", perm)?;
        self.builder
            .node("Transpose", &[x], &[out], &[Param::Tensor("perm", perm)])?;
        Ok(out)
    }

    fn binary(
        &mut self,
        op: &str,
        a: TensorRef,
        b: TensorRef,
        dims: &[usize],
    ) -> Result<TensorRef> {
        let out = self.scratch(op, dims)?;
        self.builder.node(op, &[a, b], &[out], &[])?;
        Ok(out)
    }

    fn weight_name(&self, t: TensorId) -> Result<&'g str> {
        match &self.decl(t)?.kind {
            TensorKind::Weight { name } => Ok(name),
            _ => Err(self.unsupported(format!("{} is not a weight", self.decl(t)?.name))),
        }
    }

    pub fn op(&mut self, op: &Op, weights: &dyn WeightProvider) -> Result<()> {
        match *op {
            Op::RmsNorm {
                x,
                weight,
                eps,
                out,
            } => {
                let x = self.value(x)?;
                let name = self.weight_name(weight)?;
                let d = self.decl(weight)?;
                let gamma_bytes = weights.vector_f16(name)?;
                let gamma = self.builder.tensor(
                    name,
                    Role::Static,
                    DataType::F16,
                    &[d.n_elements()],
                    Some(&gamma_bytes),
                )?;
                let rank = self.decl(out)?.shape.len();
                let axes = self
                    .builder
                    .u32_param_tensor("axes", &[rank.saturating_sub(1) as u32])?;
                let y = self.native(out)?;
                self.builder.node(
                    "RmsNorm",
                    &[x, gamma],
                    &[y],
                    &[
                        Param::Scalar("epsilon", Scalar::F32(eps)),
                        Param::Tensor("axes", axes),
                    ],
                )?;
                self.values.insert(out, y);
            }
            Op::MatMul { x, w, out } => {
                let x = self.value(x)?;
                let name = self.weight_name(w)?;
                let d = self.decl(w)?;
                let (data_type, bytes) = weights.matrix(name, self.format)?;
                let w =
                    self.builder
                        .tensor(name, Role::Static, data_type, &d.shape, Some(&bytes))?;
                let y = self.native(out)?;
                self.builder.node("FullyConnected", &[x, w], &[y], &[])?;
                self.values.insert(out, y);
            }
            Op::Add { a, b, out } => {
                let (a, b) = (self.value(a)?, self.value(b)?);
                let y = self.native(out)?;
                self.builder.node("ElementWiseAdd", &[a, b], &[y], &[])?;
                self.values.insert(out, y);
            }
            Op::SiluMul { gate, up, out } => {
                let (gate, up) = (self.value(gate)?, self.value(up)?);
                let sigmoid = self.native(out)?;
                let silu = self.native(out)?;
                let y = self.native(out)?;
                self.builder.node("Sigmoid", &[gate], &[sigmoid], &[])?;
                self.builder
                    .node("ElementWiseMultiply", &[gate, sigmoid], &[silu], &[])?;
                self.builder
                    .node("ElementWiseMultiply", &[silu, up], &[y], &[])?;
                self.values.insert(out, y);
            }
            Op::Rope {
                x,
                n_heads,
                head_dim,
                theta_base,
                out,
                ..
            } => self.rope(x, n_heads, head_dim, theta_base, out)?,
            Op::Attention {
                q,
                k,
                v,
                k_cache,
                v_cache,
                n_heads,
                n_kv_heads,
                head_dim,
                out,
                ..
            } => self.attention(
                q, k, v, k_cache, v_cache, n_heads, n_kv_heads, head_dim, out,
            )?,
            _ => return Err(self.unsupported(format!("{} is not lowered to QNN", op.name()))),
        }
        Ok(())
    }

    /// Rotates adjacent pairs `(x[2i], x[2i+1])` of every head by the
    /// row's angles: `x0·cos − x1·sin`, `x0·sin + x1·cos`.
    fn rope(
        &mut self,
        x: TensorId,
        heads: usize,
        head_dim: usize,
        theta: f32,
        out: TensorId,
    ) -> Result<()> {
        let rows = self.graph.width;
        let half = head_dim / 2;
        let table = |s: &Self, sin| {
            s.rope
                .get(&(head_dim, theta.to_bits(), sin))
                .copied()
                .ok_or_else(|| s.unsupported("RoPE without its angle tables".into()))
        };
        let (cos, sin) = (table(self, false)?, table(self, true)?);
        let x = self.value(x)?;
        let pairs = [rows, heads, half, 2];
        let lane = [rows, heads, half, 1];
        let x4 = self.reshaped("rope_pairs", x, &pairs)?;
        let mut parts = Vec::new();
        for first in [0i32, 1] {
            let ranges: Vec<i32> = [
                [0, rows as i32, 1],
                [0, heads as i32, 1],
                [0, half as i32, 1],
                [first, first + 1, 1],
            ]
            .concat();
            let bytes: Vec<u8> = ranges.iter().flat_map(|v| v.to_le_bytes()).collect();
            let ranges = self.builder.tensor(
                "ranges",
                Role::Static,
                DataType::I32,
                &[4, 3],
                Some(&bytes),
            )?;
            let part = self.scratch("rope_lane", &lane)?;
            self.builder.node(
                "StridedSlice",
                &[x4],
                &[part],
                &[Param::Tensor("ranges", ranges)],
            )?;
            parts.push(part);
        }
        let (x0, x1) = (parts[0], parts[1]);
        let a = self.binary("ElementWiseMultiply", x0, cos, &lane)?;
        let b = self.binary("ElementWiseMultiply", x1, sin, &lane)?;
        let out0 = self.binary("ElementWiseSubtract", a, b, &lane)?;
        let c = self.binary("ElementWiseMultiply", x0, sin, &lane)?;
        let d = self.binary("ElementWiseMultiply", x1, cos, &lane)?;
        let out1 = self.binary("ElementWiseAdd", c, d, &lane)?;
        let joined = self.scratch("rope_joined", &pairs)?;
        self.builder.node(
            "Concat",
            &[out0, out1],
            &[joined],
            &[Param::Scalar("axis", Scalar::U32(3))],
        )?;
        let y = self.native(out)?;
        self.reshape(joined, y)?;
        self.values.insert(out, y);
        Ok(())
    }

    /// Attention of this run's rows over every cache slot and the run's own
    /// rows, with the per-run additive mask choosing what each row sees.
    #[allow(clippy::too_many_arguments)]
    fn attention(
        &mut self,
        q: TensorId,
        k: TensorId,
        v: TensorId,
        k_cache: TensorId,
        v_cache: TensorId,
        heads: usize,
        kv_heads: usize,
        head_dim: usize,
        out: TensorId,
    ) -> Result<()> {
        let w = self.graph.width;
        let kvh = kv_heads.max(1);
        let group = heads / kvh;
        let kv_dim = kvh * head_dim;
        let (_, _, capacity, _) = kv_half(self.graph, k_cache)?;
        let block = coordgen_graph::KV_SLOT_BLOCK;
        let mask = self
            .mask
            .ok_or_else(|| self.unsupported("attention without its mask".into()))?;
        let cache = |s: &Self, t| {
            s.kv.get(&t)
                .copied()
                .ok_or_else(|| s.unsupported("attention without its cache".into()))
        };
        let (kc, vc) = (cache(self, k_cache)?, cache(self, v_cache)?);

        // Q: [W, H·D] → [H, W, D] → [KV, G·W, D], scaled by 1/√D.
        let q = self.value(q)?;
        let q3 = self.reshaped("q_heads", q, &[w, heads, head_dim])?;
        let qt = self.transposed("q_t", q3, &[1, 0, 2], &[heads, w, head_dim])?;
        let qg = self.reshaped("q_groups", qt, &[kvh, group * w, head_dim])?;
        let scale = f16_bytes(&[1.0 / (head_dim as f32).sqrt()]);
        let scale =
            self.builder
                .tensor("scale", Role::Static, DataType::F16, &[1], Some(&scale))?;
        let qs = self.binary(
            "ElementWiseMultiply",
            qg,
            scale,
            &[kvh, group * w, head_dim],
        )?;

        // K: the blocked cache [C/16, KV·D, 16] → [C, KV, D] → [KV, C, D],
        // then the run's rows after it.
        let kc_t = self.transposed(
            "k_cache_rows",
            kc,
            &[0, 2, 1],
            &[capacity / block, block, kv_dim],
        )?;
        let kc3 = self.reshaped("k_cache_heads", kc_t, &[capacity, kvh, head_dim])?;
        let kc_h = self.transposed("k_cache_t", kc3, &[1, 0, 2], &[kvh, capacity, head_dim])?;
        let k_all = self.with_run_rows(kc_h, k, kvh, head_dim, capacity)?;
        // V: [C, KV·D] → [KV, C, D], then the run's rows.
        let vc3 = self.reshaped("v_cache_heads", vc, &[capacity, kvh, head_dim])?;
        let vc_h = self.transposed("v_cache_t", vc3, &[1, 0, 2], &[kvh, capacity, head_dim])?;
        let v_all = self.with_run_rows(vc_h, v, kvh, head_dim, capacity)?;

        let slots = capacity + w;
        let scores = self.scratch("scores", &[kvh, group * w, slots])?;
        self.builder.node(
            "MatMul",
            &[qs, k_all],
            &[scores],
            &[
                Param::Scalar("transpose_in0", Scalar::Bool(false)),
                Param::Scalar("transpose_in1", Scalar::Bool(true)),
            ],
        )?;
        let masked = self.binary("ElementWiseAdd", scores, mask, &[kvh, group * w, slots])?;
        let probs = self.scratch("probs", &[kvh, group * w, slots])?;
        self.builder.node(
            "Softmax",
            &[masked],
            &[probs],
            &[
                Param::Scalar("axis", Scalar::U32(2)),
                Param::Scalar("beta", Scalar::F32(1.0)),
            ],
        )?;
        let o = self.scratch("attn_heads", &[kvh, group * w, head_dim])?;
        self.builder.node(
            "MatMul",
            &[probs, v_all],
            &[o],
            &[
                Param::Scalar("transpose_in0", Scalar::Bool(false)),
                Param::Scalar("transpose_in1", Scalar::Bool(false)),
            ],
        )?;
        // [KV, G·W, D] → [H, W, D] → [W, H, D] → [W, H·D].
        let oh = self.reshaped("attn_h", o, &[heads, w, head_dim])?;
        let ot = self.transposed("attn_t", oh, &[1, 0, 2], &[w, heads, head_dim])?;
        let y = self.native(out)?;
        self.reshape(ot, y)?;
        self.values.insert(out, y);
        Ok(())
    }

    /// `[KV, C, D]` cache heads with the run's rows of `t` (`[W, KV·D]`)
    /// appended: `[KV, C + W, D]`.
    fn with_run_rows(
        &mut self,
        cache: TensorRef,
        t: TensorId,
        kvh: usize,
        d: usize,
        capacity: usize,
    ) -> Result<TensorRef> {
        let w = self.graph.width;
        let rows = self.value(t)?;
        let r3 = self.reshaped("run_heads", rows, &[w, kvh, d])?;
        let rt = self.transposed("run_t", r3, &[1, 0, 2], &[kvh, w, d])?;
        let all = self.scratch("kv_all", &[kvh, capacity + w, d])?;
        self.builder.node(
            "Concat",
            &[cache, rt],
            &[all],
            &[Param::Scalar("axis", Scalar::U32(1))],
        )?;
        Ok(all)
    }
}

pub(crate) fn f16_bytes(values: &[f32]) -> Vec<u8> {
    values
        .iter()
        .flat_map(|&v| half::f16::from_f32(v).to_le_bytes())
        .collect()
}

/// Weights by name for [`FileWeights`]: conversion reports land in `reports`.
pub(crate) fn file_weights<'a>(
    source: &'a dyn WeightSource,
    reports: &'a Mutex<Vec<ConversionReport>>,
) -> FileWeights<'a> {
    FileWeights { source, reports }
}
