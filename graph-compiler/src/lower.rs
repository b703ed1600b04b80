//! Lowering a llama-family model into static-shape subgraphs, per bucket.
//!
//! Each bucket width gets an embedding subgraph, one subgraph per block of
//! layers and two output heads (last valid row only, or every row). The
//! subgraphs hand the hidden state to each other through boundary buffers
//! that the session allocates once, at the widest bucket, so a switch between
//! subgraphs (or backends) binds a buffer instead of copying one.

use crate::config::{names, ModelConfig, WeightCatalog, WeightDesc};
use crate::ir::*;
use crate::memory::plan_arena;
use crate::Error;
use serde::Serialize;

/// Choices the lowering leaves to the caller.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct PlanOptions {
    /// Widths of the prefill chunk subgraphs (causal mask).
    pub prefill_widths: Vec<usize>,
    /// Widths of the decode / verify subgraphs (tree mask).
    pub verify_widths: Vec<usize>,
    /// Layers per block; the model is split into `ceil(n_layers / this)` blocks.
    pub layers_per_block: usize,
    /// Slots of the KV cache: the longest context a session can hold.
    pub context_length: usize,
}

impl Default for PlanOptions {
    fn default() -> Self {
        PlanOptions {
            prefill_widths: vec![32, 128],
            verify_widths: vec![1, 4, 8, 16, 32, 64],
            layers_per_block: 5,
            context_length: 4096,
        }
    }
}

/// Prefill chunk or decode/verify step.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum BucketKind {
    Prefill,
    Verify,
}

/// All subgraphs of one width.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Bucket {
    pub kind: BucketKind,
    pub width: usize,
    pub embed: Subgraph,
    pub blocks: Vec<Subgraph>,
    pub head_last: Subgraph,
    pub head_all: Subgraph,
}

impl Bucket {
    pub fn subgraphs(&self) -> impl Iterator<Item = &Subgraph> {
        std::iter::once(&self.embed)
            .chain(self.blocks.iter())
            .chain([&self.head_last, &self.head_all])
    }
}

/// A buffer that crosses subgraph boundaries, sized for the widest bucket.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct BoundaryDecl {
    pub name: String,
    pub dtype: DType,
    /// Elements at the widest bucket.
    pub elements: usize,
}

/// The boundary buffers every bucket uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Boundaries {
    pub tokens: BoundaryId,
    pub positions: BoundaryId,
    pub tree_mask: BoundaryId,
    /// Hidden state ping-pong: block `b` reads `hidden[b % 2]`.
    pub hidden: [BoundaryId; 2],
    pub logits: BoundaryId,
}

/// The compiled plan of a model: buckets, boundary buffers, KV cache layout.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Plan {
    pub config: ModelConfig,
    pub options: PlanOptions,
    pub buckets: Vec<Bucket>,
    pub boundary_decls: Vec<BoundaryDecl>,
    pub boundaries: Boundaries,
    /// Output head weight (tied to the embedding when the file has no `output.weight`).
    pub head_weight: String,
}

impl Plan {
    /// The bucket that runs `n` rows: the narrowest bucket of `kind` that fits
    /// them, or the widest one (the caller then splits into chunks).
    pub fn bucket_for(&self, kind: BucketKind, n: usize) -> Option<&Bucket> {
        let of_kind = || self.buckets.iter().filter(move |b| b.kind == kind);
        of_kind()
            .filter(|b| b.width >= n)
            .min_by_key(|b| b.width)
            .or_else(|| of_kind().max_by_key(|b| b.width))
    }

    pub fn max_width(&self) -> usize {
        self.buckets.iter().map(|b| b.width).max().unwrap_or(0)
    }

    /// Bytes of the KV cache at the planned context length (f16 K and V).
    pub fn kv_cache_bytes(&self) -> usize {
        let c = &self.config;
        2 * c.n_layers
            * crate::kv_capacity(self.options.context_length)
            * c.n_kv_heads
            * c.head_dim
            * 2
    }

    pub fn boundary_bytes(&self) -> usize {
        self.boundary_decls
            .iter()
            .map(|b| b.dtype.bytes_for(b.elements).unwrap_or(0))
            .sum()
    }
}

/// Lowers `config` into a [`Plan`]; weight dtypes and shapes come from `weights`.
pub fn lower(
    config: &ModelConfig,
    weights: &dyn WeightCatalog,
    options: &PlanOptions,
) -> Result<Plan, Error> {
    validate(config, options)?;
    let head_weight = if weights.describe(names::OUTPUT).is_some() {
        names::OUTPUT.to_string()
    } else {
        names::TOKEN_EMBD.to_string()
    };
    check_weights(config, weights, &head_weight)?;

    let max_width = options
        .prefill_widths
        .iter()
        .chain(&options.verify_widths)
        .copied()
        .max()
        .unwrap_or(1);
    let max_verify = options.verify_widths.iter().copied().max().unwrap_or(1);
    let boundary_decls = vec![
        decl("tokens", DType::I32, max_width),
        decl("positions", DType::I32, max_width),
        decl("tree_mask", DType::U8, max_verify * max_verify),
        decl("hidden.0", DType::F32, max_width * config.d_model),
        decl("hidden.1", DType::F32, max_width * config.d_model),
        decl("logits", DType::F32, max_width * config.vocab_size),
    ];
    let boundaries = Boundaries {
        tokens: BoundaryId(0),
        positions: BoundaryId(1),
        tree_mask: BoundaryId(2),
        hidden: [BoundaryId(3), BoundaryId(4)],
        logits: BoundaryId(5),
    };

    let lowering = Lowering {
        config,
        weights,
        options,
        boundaries,
        head_weight: &head_weight,
    };
    let mut buckets = Vec::new();
    for &w in &options.prefill_widths {
        buckets.push(lowering.bucket(BucketKind::Prefill, w)?);
    }
    for &w in &options.verify_widths {
        buckets.push(lowering.bucket(BucketKind::Verify, w)?);
    }
    Ok(Plan {
        config: config.clone(),
        options: options.clone(),
        buckets,
        boundary_decls,
        boundaries,
        head_weight,
    })
}

fn decl(name: &str, dtype: DType, elements: usize) -> BoundaryDecl {
    BoundaryDecl {
        name: name.to_string(),
        dtype,
        elements,
    }
}

fn validate(c: &ModelConfig, o: &PlanOptions) -> Result<(), Error> {
    let bad = |m: String| Err(Error::InvalidConfig(m));
    if c.n_layers == 0 || c.d_model == 0 || c.d_ff == 0 || c.vocab_size == 0 {
        return bad("layers, widths and vocabulary must be nonzero".into());
    }
    if c.n_heads == 0 || c.n_kv_heads == 0 || !c.n_heads.is_multiple_of(c.n_kv_heads) {
        return bad(format!(
            "{} heads cannot share {} KV heads",
            c.n_heads, c.n_kv_heads
        ));
    }
    if c.head_dim == 0 || !c.head_dim.is_multiple_of(2) {
        return bad(format!("head dimension {} must be even", c.head_dim));
    }
    if !c.d_model.is_multiple_of(32)
        || !c.d_ff.is_multiple_of(32)
        || !(c.n_heads * c.head_dim).is_multiple_of(32)
    {
        return bad("widths must be multiples of 32 (quant block length)".into());
    }
    let positive = |v: f32| v.is_finite() && v > 0.0;
    if !positive(c.rms_eps) || !positive(c.rope_theta) {
        return bad("rms epsilon and rope theta must be positive".into());
    }
    if o.prefill_widths.is_empty() || o.verify_widths.is_empty() {
        return bad("at least one prefill and one verify width".into());
    }
    if o.prefill_widths
        .iter()
        .chain(&o.verify_widths)
        .any(|&w| w == 0 || w > 4096)
    {
        return bad("bucket widths must be in 1..=4096".into());
    }
    if !o.verify_widths.contains(&1) {
        return bad("the verify widths must include 1 (plain decoding)".into());
    }
    if o.layers_per_block == 0 {
        return bad("layers per block must be at least 1".into());
    }
    if o.context_length == 0 {
        return bad("context length must be nonzero".into());
    }
    Ok(())
}

fn check_weights(c: &ModelConfig, w: &dyn WeightCatalog, head: &str) -> Result<(), Error> {
    let q_dim = c.n_heads * c.head_dim;
    let kv_dim = c.n_kv_heads * c.head_dim;
    let mut expected: Vec<(String, Vec<usize>)> = vec![
        (names::TOKEN_EMBD.into(), vec![c.vocab_size, c.d_model]),
        (names::OUTPUT_NORM.into(), vec![c.d_model]),
        (head.into(), vec![c.vocab_size, c.d_model]),
    ];
    for l in 0..c.n_layers {
        expected.extend([
            (names::layer(l, "attn_norm"), vec![c.d_model]),
            (names::layer(l, "attn_q"), vec![q_dim, c.d_model]),
            (names::layer(l, "attn_k"), vec![kv_dim, c.d_model]),
            (names::layer(l, "attn_v"), vec![kv_dim, c.d_model]),
            (names::layer(l, "attn_output"), vec![c.d_model, q_dim]),
            (names::layer(l, "ffn_norm"), vec![c.d_model]),
            (names::layer(l, "ffn_gate"), vec![c.d_ff, c.d_model]),
            (names::layer(l, "ffn_up"), vec![c.d_ff, c.d_model]),
            (names::layer(l, "ffn_down"), vec![c.d_model, c.d_ff]),
        ]);
    }
    for (name, shape) in expected {
        match w.describe(&name) {
            None => return Err(Error::MissingWeight { name }),
            Some(WeightDesc {
                shape: found,
                dtype,
            }) => {
                if found != shape {
                    return Err(Error::WeightShape {
                        name,
                        expected: shape,
                        found,
                    });
                }
                let is_vector = shape.len() == 1;
                let ok = if is_vector {
                    dtype == DType::F32
                } else {
                    let k_quant = matches!(dtype, DType::Q4_K | DType::Q5_K | DType::Q6_K);
                    // A K-quant row must be whole 256-value super-blocks.
                    (k_quant && shape[1].is_multiple_of(256))
                        || matches!(
                            dtype,
                            DType::F32
                                | DType::F16
                                | DType::BF16
                                | DType::Q4_0
                                | DType::Q4_1
                                | DType::Q8_0
                        )
                };
                if !ok {
                    return Err(Error::WeightDType { name, dtype });
                }
            }
        }
    }
    Ok(())
}

struct Lowering<'a> {
    config: &'a ModelConfig,
    weights: &'a dyn WeightCatalog,
    options: &'a PlanOptions,
    boundaries: Boundaries,
    head_weight: &'a str,
}

/// Builds one subgraph.
struct Builder<'a> {
    graph: Subgraph,
    weights: &'a dyn WeightCatalog,
}

impl<'a> Builder<'a> {
    fn new(name: String, role: SubgraphRole, width: usize, weights: &'a dyn WeightCatalog) -> Self {
        Builder {
            graph: Subgraph {
                name,
                role,
                width,
                tensors: Vec::new(),
                nodes: Vec::new(),
                arena_bytes: 0,
            },
            weights,
        }
    }

    fn tensor(
        &mut self,
        name: String,
        dtype: DType,
        shape: Vec<usize>,
        kind: TensorKind,
    ) -> TensorId {
        self.graph.tensors.push(TensorDecl {
            name,
            dtype,
            shape,
            kind,
        });
        TensorId(self.graph.tensors.len() - 1)
    }

    fn scratch(&mut self, name: String, shape: Vec<usize>) -> TensorId {
        self.tensor(
            name,
            DType::F32,
            shape,
            TensorKind::Intermediate { offset: 0 },
        )
    }

    fn boundary(
        &mut self,
        name: &str,
        dtype: DType,
        shape: Vec<usize>,
        id: BoundaryId,
    ) -> TensorId {
        self.tensor(name.to_string(), dtype, shape, TensorKind::Boundary { id })
    }

    fn weight(&mut self, name: &str) -> Result<TensorId, Error> {
        let desc = self
            .weights
            .describe(name)
            .ok_or_else(|| Error::MissingWeight { name: name.into() })?;
        Ok(self.tensor(
            name.to_string(),
            desc.dtype,
            desc.shape,
            TensorKind::Weight { name: name.into() },
        ))
    }

    fn op(&mut self, op: Op) {
        self.graph.nodes.push(op);
    }

    fn finish(mut self) -> Result<Subgraph, Error> {
        plan_arena(&mut self.graph)?;
        Ok(self.graph)
    }
}

impl Lowering<'_> {
    fn bucket(&self, kind: BucketKind, width: usize) -> Result<Bucket, Error> {
        let prefix = match kind {
            BucketKind::Prefill => format!("prefill{width}"),
            BucketKind::Verify => format!("verify{width}"),
        };
        let n_blocks = self.config.n_layers.div_ceil(self.options.layers_per_block);
        let mut blocks = Vec::with_capacity(n_blocks);
        for b in 0..n_blocks {
            let first = b * self.options.layers_per_block;
            let count = self
                .options
                .layers_per_block
                .min(self.config.n_layers - first);
            blocks.push(self.layers(kind, &prefix, width, b, first, count)?);
        }
        let last_hidden = self.boundaries.hidden[n_blocks % 2];
        Ok(Bucket {
            kind,
            width,
            embed: self.embed(&prefix, width)?,
            blocks,
            head_last: self.head(&prefix, width, RowSelection::LastValid, last_hidden)?,
            head_all: self.head(&prefix, width, RowSelection::All, last_hidden)?,
        })
    }

    fn embed(&self, prefix: &str, width: usize) -> Result<Subgraph, Error> {
        let d = self.config.d_model;
        let mut b = Builder::new(
            format!("{prefix}/embed"),
            SubgraphRole::Embed,
            width,
            self.weights,
        );
        let table = b.weight(names::TOKEN_EMBD)?;
        let ids = b.boundary("tokens", DType::I32, vec![width], self.boundaries.tokens);
        let out = b.boundary(
            "hidden",
            DType::F32,
            vec![width, d],
            self.boundaries.hidden[0],
        );
        b.op(Op::Embedding { table, ids, out });
        b.finish()
    }

    fn layers(
        &self,
        kind: BucketKind,
        prefix: &str,
        width: usize,
        block: usize,
        first: usize,
        count: usize,
    ) -> Result<Subgraph, Error> {
        let c = self.config;
        let (d, q_dim, kv_dim) = (c.d_model, c.n_heads * c.head_dim, c.n_kv_heads * c.head_dim);
        let role = SubgraphRole::Layers {
            block,
            first,
            count,
        };
        let mut b = Builder::new(format!("{prefix}/block{block}"), role, width, self.weights);
        let input = b.boundary(
            "hidden.in",
            DType::F32,
            vec![width, d],
            self.boundaries.hidden[block % 2],
        );
        let output = b.boundary(
            "hidden.out",
            DType::F32,
            vec![width, d],
            self.boundaries.hidden[(block + 1) % 2],
        );
        let positions = b.boundary(
            "positions",
            DType::I32,
            vec![width],
            self.boundaries.positions,
        );
        let (mask, tree_mask) = match kind {
            BucketKind::Prefill => (MaskKind::Causal, None),
            BucketKind::Verify => (
                MaskKind::Tree,
                Some(b.boundary(
                    "tree_mask",
                    DType::U8,
                    vec![width, width],
                    self.boundaries.tree_mask,
                )),
            ),
        };
        let capacity = crate::kv_capacity(self.options.context_length);
        let mut hidden = input;
        for l in first..first + count {
            let last = l + 1 == first + count;
            let s = |what: &str| format!("l{l}.{what}");
            let attn_norm_w = b.weight(&names::layer(l, "attn_norm"))?;
            let wq = b.weight(&names::layer(l, "attn_q"))?;
            let wk = b.weight(&names::layer(l, "attn_k"))?;
            let wv = b.weight(&names::layer(l, "attn_v"))?;
            let wo = b.weight(&names::layer(l, "attn_output"))?;
            let ffn_norm_w = b.weight(&names::layer(l, "ffn_norm"))?;
            let w_gate = b.weight(&names::layer(l, "ffn_gate"))?;
            let w_up = b.weight(&names::layer(l, "ffn_up"))?;
            let w_down = b.weight(&names::layer(l, "ffn_down"))?;
            let k_cache = b.tensor(
                s("k_cache"),
                DType::F16,
                vec![capacity, kv_dim],
                TensorKind::KvCache {
                    layer: l,
                    half: KvHalf::K,
                },
            );
            let v_cache = b.tensor(
                s("v_cache"),
                DType::F16,
                vec![capacity, kv_dim],
                TensorKind::KvCache {
                    layer: l,
                    half: KvHalf::V,
                },
            );

            let x = b.scratch(s("attn_norm"), vec![width, d]);
            b.op(Op::RmsNorm {
                x: hidden,
                weight: attn_norm_w,
                eps: c.rms_eps,
                out: x,
            });
            let q = b.scratch(s("q"), vec![width, q_dim]);
            let k = b.scratch(s("k"), vec![width, kv_dim]);
            let v = b.scratch(s("v"), vec![width, kv_dim]);
            b.op(Op::MatMul { x, w: wq, out: q });
            b.op(Op::MatMul { x, w: wk, out: k });
            b.op(Op::MatMul { x, w: wv, out: v });
            let q_rot = b.scratch(s("q_rope"), vec![width, q_dim]);
            let k_rot = b.scratch(s("k_rope"), vec![width, kv_dim]);
            let rope = |x, out, n_heads| Op::Rope {
                x,
                positions,
                n_heads,
                head_dim: c.head_dim,
                theta_base: c.rope_theta,
                out,
            };
            b.op(rope(q, q_rot, c.n_heads));
            b.op(rope(k, k_rot, c.n_kv_heads));
            let attn = b.scratch(s("attn"), vec![width, q_dim]);
            b.op(Op::Attention {
                q: q_rot,
                k: k_rot,
                v,
                k_cache,
                v_cache,
                mask,
                tree_mask,
                n_heads: c.n_heads,
                n_kv_heads: c.n_kv_heads,
                head_dim: c.head_dim,
                out: attn,
            });
            let proj = b.scratch(s("attn_out"), vec![width, d]);
            b.op(Op::MatMul {
                x: attn,
                w: wo,
                out: proj,
            });
            let resid = b.scratch(s("resid_attn"), vec![width, d]);
            b.op(Op::Add {
                a: hidden,
                b: proj,
                out: resid,
            });

            let x = b.scratch(s("ffn_norm"), vec![width, d]);
            b.op(Op::RmsNorm {
                x: resid,
                weight: ffn_norm_w,
                eps: c.rms_eps,
                out: x,
            });
            let gate = b.scratch(s("gate"), vec![width, c.d_ff]);
            let up = b.scratch(s("up"), vec![width, c.d_ff]);
            b.op(Op::MatMul {
                x,
                w: w_gate,
                out: gate,
            });
            b.op(Op::MatMul {
                x,
                w: w_up,
                out: up,
            });
            let act = b.scratch(s("silu_mul"), vec![width, c.d_ff]);
            b.op(Op::SiluMul { gate, up, out: act });
            let down = b.scratch(s("ffn_out"), vec![width, d]);
            b.op(Op::MatMul {
                x: act,
                w: w_down,
                out: down,
            });
            let next = if last {
                output
            } else {
                b.scratch(s("out"), vec![width, d])
            };
            b.op(Op::Add {
                a: resid,
                b: down,
                out: next,
            });
            hidden = next;
        }
        b.finish()
    }

    fn head(
        &self,
        prefix: &str,
        width: usize,
        rows: RowSelection,
        hidden: BoundaryId,
    ) -> Result<Subgraph, Error> {
        let c = self.config;
        let (suffix, n_out) = match rows {
            RowSelection::All => ("head_all", width),
            RowSelection::LastValid => ("head_last", 1),
        };
        let mut b = Builder::new(
            format!("{prefix}/{suffix}"),
            SubgraphRole::Head { rows },
            width,
            self.weights,
        );
        let input = b.boundary("hidden", DType::F32, vec![width, c.d_model], hidden);
        let norm_w = b.weight(names::OUTPUT_NORM)?;
        let head_w = b.weight(self.head_weight)?;
        let logits = b.boundary(
            "logits",
            DType::F32,
            vec![n_out, c.vocab_size],
            self.boundaries.logits,
        );
        let selected = b.scratch("selected".into(), vec![n_out, c.d_model]);
        b.op(Op::SelectRows {
            x: input,
            rows,
            out: selected,
        });
        let x = b.scratch("output_norm".into(), vec![n_out, c.d_model]);
        b.op(Op::RmsNorm {
            x: selected,
            weight: norm_w,
            eps: c.rms_eps,
            out: x,
        });
        b.op(Op::MatMul {
            x,
            w: head_w,
            out: logits,
        });
        b.finish()
    }
}
