//! Execution of one compiled subgraph.

use crate::Error;
use coordgen_graph::{
    memory, DType, ExecParams, Executable, KvHalf, MaskKind, Op, RowSelection, SessionState,
    Subgraph, TensorDecl, TensorId, TensorKind, WeightBytes, WeightSource,
};
use coordgen_kernels::{
    attention, matmul, AttentionShape, BlockQ4_0, BlockQ4_0x8, BlockQ4_1, BlockQ4_1x8, BlockQ8_0,
    BlockQ8_0x8, KernelSet, MatmulScratch, RowVisibility, WeightMatrix,
};
use half::f16;
use std::sync::Arc;

/// Where the bytes of a tensor live during a run.
#[derive(Clone, Copy, Debug)]
enum Place {
    Weight(usize),
    Boundary(usize),
    Kv(usize),
    Arena(usize),
}

/// A subgraph compiled for the CPU.
pub struct CpuExecutable {
    graph: Subgraph,
    places: Vec<Place>,
    /// Bytes of every tensor (validated at compile time).
    sizes: Vec<usize>,
    weights: Vec<WeightBytes>,
    /// Per tensor: whether its bound weight bytes are repacked in 8-row groups.
    repacked: Vec<bool>,
    kernels: &'static KernelSet,
    pool: Arc<rayon::ThreadPool>,
    /// Base pointer of every tensor for the current run, reused across runs.
    tensor_ptrs: Vec<*mut u8>,
    scratch: OpScratch,
}

// SAFETY: `tensor_ptrs` only holds pointers while `run` executes (it is
// cleared before returning), so moving the executable to another thread
// moves no live borrow; every other field is Send.
unsafe impl Send for CpuExecutable {}

/// Buffers the ops reuse from run to run, so a steady-state run allocates
/// nothing here.
#[derive(Default)]
struct OpScratch {
    matmul: MatmulScratch,
    /// Extra visible cache slots of every row (tree attention), back to back.
    visible_slots: Vec<u32>,
    /// Per row: (prefix length, start, end) into `visible_slots`.
    visible_ranges: Vec<(usize, usize, usize)>,
    /// The attention kernel's per-row visibility list (empty between ops).
    visible_rows: Vec<RowVisibility<'static>>,
}

/// Empties `rows` and returns its allocation typed for a new borrow. The
/// standard library collects a mapped `vec::IntoIter` in place, so the
/// capacity carries over and nothing is allocated.
fn recycle<'a>(mut rows: Vec<RowVisibility<'_>>) -> Vec<RowVisibility<'a>> {
    rows.clear();
    // The vector is empty: the closure never runs, it only changes the type.
    rows.into_iter()
        .map(|row| RowVisibility {
            prefix_len: row.prefix_len,
            extra: &[],
        })
        .collect()
}

fn bad(graph: &Subgraph, message: impl Into<String>) -> Error {
    Error::BadGraph {
        graph: graph.name.clone(),
        message: message.into(),
    }
}

impl CpuExecutable {
    pub fn new(
        graph: &Subgraph,
        weights: &dyn WeightSource,
        kernels: &'static KernelSet,
        pool: Arc<rayon::ThreadPool>,
        repack: Option<&crate::RepackCache>,
    ) -> Result<Self, Error> {
        memory::validate_arena(graph).map_err(|e| bad(graph, e.to_string()))?;
        let mut places = Vec::with_capacity(graph.tensors.len());
        let mut sizes = Vec::with_capacity(graph.tensors.len());
        let mut bound = Vec::new();
        let mut repacked = vec![false; graph.tensors.len()];
        // Weights that this graph only uses as matmul matrices can be repacked.
        let mut matmul_only = vec![None::<bool>; graph.tensors.len()];
        for op in &graph.nodes {
            for input in op.inputs() {
                let is_matmul_w = matches!(*op, Op::MatMul { w, .. } if w == input);
                let slot = &mut matmul_only[input.0];
                *slot = Some(slot.unwrap_or(true) && is_matmul_w);
            }
        }
        for (ti, t) in graph.tensors.iter().enumerate() {
            let size = t.n_bytes().ok_or_else(|| {
                bad(
                    graph,
                    format!("{} has a shape that is not whole blocks", t.name),
                )
            })?;
            sizes.push(size);
            places.push(match &t.kind {
                TensorKind::Weight { name } => {
                    let desc = weights.describe(name).ok_or_else(|| Error::BadWeight {
                        name: name.clone(),
                        message: "not in the model".into(),
                    })?;
                    if desc.dtype != t.dtype || desc.shape != t.shape {
                        return Err(Error::BadWeight {
                            name: name.clone(),
                            message: format!(
                                "model has {} {:?}, graph expects {} {:?}",
                                desc.dtype, desc.shape, t.dtype, t.shape
                            ),
                        });
                    }
                    let mut bytes = weights.bytes(name).ok_or_else(|| Error::BadWeight {
                        name: name.clone(),
                        message: "no data".into(),
                    })?;
                    if bytes.as_slice().len() != size {
                        return Err(Error::BadWeight {
                            name: name.clone(),
                            message: format!("{} bytes, expected {size}", bytes.as_slice().len()),
                        });
                    }
                    if let (Some(cache), Some(true), &[rows, cols]) =
                        (repack, matmul_only[ti], t.shape.as_slice())
                    {
                        if crate::repack::repackable(t.dtype, rows, cols) {
                            bytes = cache.get(name, t.dtype, rows, cols, bytes.as_slice())?;
                            repacked[ti] = true;
                        }
                    }
                    bound.push(bytes);
                    Place::Weight(bound.len() - 1)
                }
                TensorKind::Boundary { id } => Place::Boundary(id.0),
                TensorKind::KvCache { layer, half } => {
                    Place::Kv(2 * layer + usize::from(*half == KvHalf::V))
                }
                TensorKind::Intermediate { offset } => Place::Arena(*offset),
            });
        }
        let exe = CpuExecutable {
            graph: graph.clone(),
            places,
            sizes,
            weights: bound,
            repacked,
            kernels,
            pool,
            tensor_ptrs: Vec::new(),
            scratch: OpScratch::default(),
        };
        exe.check_ops()?;
        Ok(exe)
    }

    fn decl(&self, t: TensorId) -> Result<&TensorDecl, Error> {
        self.graph
            .tensor(t)
            .ok_or_else(|| bad(&self.graph, format!("tensor {} does not exist", t.0)))
    }

    /// Checks dtypes, shapes and aliasing of every op once, so `run` can trust them.
    fn check_ops(&self) -> Result<(), Error> {
        let g = &self.graph;
        let f32_2d = |t: TensorId| -> Result<(usize, usize), Error> {
            let d = self.decl(t)?;
            match (d.dtype, d.shape.as_slice()) {
                (DType::F32, &[r, c]) => Ok((r, c)),
                _ => Err(bad(g, format!("{} must be a 2-D f32 tensor", d.name))),
            }
        };
        for op in &g.nodes {
            let out = op.output();
            for input in op.inputs() {
                if input == out {
                    return Err(bad(g, format!("{} reads its own output", op.name())));
                }
                if let (Place::Boundary(a), Place::Boundary(b)) =
                    (self.places[input.0], self.places[out.0])
                {
                    if a == b {
                        return Err(bad(
                            g,
                            format!("{} reads and writes one boundary buffer", op.name()),
                        ));
                    }
                }
            }
            if matches!(self.places[out.0], Place::Weight(_)) {
                return Err(bad(g, format!("{} writes a weight", op.name())));
            }
            match *op {
                Op::Embedding { table, ids, out } => {
                    let t = self.decl(table)?;
                    let (rows, cols) = f32_2d(out)?;
                    let id_decl = self.decl(ids)?;
                    if t.shape.len() != 2
                        || t.shape[1] != cols
                        || id_decl.dtype != DType::I32
                        || id_decl.n_elements() != rows
                    {
                        return Err(bad(g, "embedding shapes disagree"));
                    }
                }
                Op::RmsNorm { x, weight, out, .. } => {
                    let (r, c) = f32_2d(x)?;
                    let w = self.decl(weight)?;
                    if f32_2d(out)? != (r, c) || w.dtype != DType::F32 || w.n_elements() != c {
                        return Err(bad(g, "rms_norm shapes disagree"));
                    }
                }
                Op::MatMul { x, w, out } => {
                    let (n, k) = f32_2d(x)?;
                    let wd = self.decl(w)?;
                    let (on, m) = f32_2d(out)?;
                    if wd.shape.len() != 2 || wd.shape[1] != k || wd.shape[0] != m || on != n {
                        return Err(bad(g, format!("matmul {} shapes disagree", wd.name)));
                    }
                    if wd.dtype.is_quantized() && k % wd.dtype.block_len() != 0 {
                        return Err(bad(g, "matmul width is not whole blocks"));
                    }
                }
                Op::Rope {
                    x,
                    positions,
                    n_heads,
                    head_dim,
                    out,
                    ..
                } => {
                    let (r, c) = f32_2d(x)?;
                    let p = self.decl(positions)?;
                    if f32_2d(out)? != (r, c)
                        || c != n_heads * head_dim
                        || head_dim % 2 != 0
                        || p.dtype != DType::I32
                        || p.n_elements() < r
                    {
                        return Err(bad(g, "rope shapes disagree"));
                    }
                }
                Op::Attention {
                    q,
                    k,
                    v,
                    k_cache,
                    v_cache,
                    mask,
                    tree_mask,
                    n_heads,
                    n_kv_heads,
                    head_dim,
                    out,
                } => {
                    let (w, qd) = f32_2d(q)?;
                    let kv_dim = n_kv_heads * head_dim;
                    let kc = self.decl(k_cache)?;
                    let vc = self.decl(v_cache)?;
                    let cache_ok = |d: &TensorDecl| {
                        d.dtype == DType::F16 && d.shape.len() == 2 && d.shape[1] == kv_dim
                    };
                    if qd != n_heads * head_dim
                        || f32_2d(k)? != (w, kv_dim)
                        || f32_2d(v)? != (w, kv_dim)
                        || f32_2d(out)? != (w, qd)
                        || !cache_ok(kc)
                        || !cache_ok(vc)
                        || n_kv_heads == 0
                        || n_heads % n_kv_heads != 0
                    {
                        return Err(bad(g, "attention shapes disagree"));
                    }
                    if mask == MaskKind::Tree {
                        let m = tree_mask
                            .ok_or_else(|| bad(g, "tree attention without a tree mask"))?;
                        let md = self.decl(m)?;
                        if md.dtype != DType::U8 || md.shape != [w, w] {
                            return Err(bad(g, "tree mask must be [W, W] u8"));
                        }
                    }
                }
                Op::SiluMul {
                    gate: a,
                    up: b,
                    out,
                }
                | Op::Add { a, b, out } => {
                    let s = f32_2d(a)?;
                    if f32_2d(b)? != s || f32_2d(out)? != s {
                        return Err(bad(g, format!("{} shapes disagree", op.name())));
                    }
                }
                Op::SelectRows { x, rows, out } => {
                    let (_, c) = f32_2d(x)?;
                    let (r, oc) = f32_2d(out)?;
                    let want = if rows == RowSelection::LastValid {
                        1
                    } else {
                        f32_2d(x)?.0
                    };
                    if oc != c || r != want {
                        return Err(bad(g, "select_rows shapes disagree"));
                    }
                }
            }
        }
        Ok(())
    }
}

/// Raw views of every tensor for one run.
///
/// Ops get a shared view of each input and an exclusive view of their
/// output. `check_ops` and `memory::validate_arena` proved at compile time
/// that an op's output never overlaps one of its inputs, and `Memory::new`
/// checked every tensor lies inside its buffer, which the run borrows
/// exclusively for its whole duration.
struct Memory<'a> {
    ptrs: &'a [*mut u8],
    sizes: &'a [usize],
    weights: &'a [WeightBytes],
    places: &'a [Place],
}

impl<'a> Memory<'a> {
    fn new(
        exe: &'a CpuExecutable,
        ptrs: &'a mut Vec<*mut u8>,
        state: &mut SessionState,
    ) -> Result<Self, Error> {
        if state.arena.len() < exe.graph.arena_bytes {
            return Err(bad(
                &exe.graph,
                format!(
                    "session arena holds {} bytes, needs {}",
                    state.arena.len(),
                    exe.graph.arena_bytes
                ),
            ));
        }
        let arena = state.arena.as_mut_ptr();
        ptrs.clear();
        for (i, place) in exe.places.iter().enumerate() {
            let size = exe.sizes[i];
            let ptr = match *place {
                Place::Weight(_) => std::ptr::null_mut(),
                Place::Arena(offset) => {
                    // SAFETY: validate_arena proved offset + size <= arena_bytes,
                    // and the session arena is at least that long (checked above).
                    unsafe { arena.add(offset) }
                }
                Place::Boundary(id) | Place::Kv(id) => {
                    let buffers = if matches!(place, Place::Boundary(_)) {
                        &mut state.boundaries
                    } else {
                        &mut state.kv
                    };
                    let buf = buffers.get_mut(id).ok_or_else(|| {
                        bad(
                            &exe.graph,
                            format!(
                                "session has no buffer {id} for {}",
                                exe.graph.tensors[i].name
                            ),
                        )
                    })?;
                    if buf.len() < size {
                        return Err(bad(
                            &exe.graph,
                            format!(
                                "buffer for {} holds {} bytes, needs {size}",
                                exe.graph.tensors[i].name,
                                buf.len()
                            ),
                        ));
                    }
                    buf.as_mut_ptr()
                }
            };
            ptrs.push(ptr);
        }
        Ok(Memory {
            ptrs: ptrs.as_slice(),
            sizes: &exe.sizes,
            weights: &exe.weights,
            places: &exe.places,
        })
    }

    fn bytes(&self, t: TensorId) -> &[u8] {
        match self.places[t.0] {
            Place::Weight(w) => self.weights[w].as_slice(),
            // SAFETY: see the type's docs: in bounds, exclusively borrowed by
            // the run, and not written while this view lives.
            _ => unsafe { std::slice::from_raw_parts(self.ptrs[t.0], self.sizes[t.0]) },
        }
    }

    #[allow(clippy::mut_from_ref)] // Disjointness is proved at compile time, see the type's docs.
    fn bytes_mut(&self, t: TensorId) -> &mut [u8] {
        match self.places[t.0] {
            Place::Weight(_) => &mut [],
            // SAFETY: see the type's docs: in bounds, and no other view of
            // these bytes is alive while the op writes its output.
            _ => unsafe { std::slice::from_raw_parts_mut(self.ptrs[t.0], self.sizes[t.0]) },
        }
    }

    fn typed<T: bytemuck::Pod>(&self, t: TensorId) -> Result<&[T], Error> {
        bytemuck::try_cast_slice(self.bytes(t)).map_err(|e| Error::BadWeight {
            name: format!("tensor {}", t.0),
            message: format!("cannot view as {}: {e}", std::any::type_name::<T>()),
        })
    }

    #[allow(clippy::mut_from_ref)] // Disjointness is proved at compile time, see the type's docs.
    fn typed_mut<T: bytemuck::Pod>(&self, t: TensorId) -> Result<&mut [T], Error> {
        bytemuck::try_cast_slice_mut(self.bytes_mut(t)).map_err(|e| Error::BadWeight {
            name: format!("tensor {}", t.0),
            message: format!("cannot view as {}: {e}", std::any::type_name::<T>()),
        })
    }

    fn weight_matrix(
        &self,
        t: TensorId,
        dtype: DType,
        repacked: bool,
    ) -> Result<WeightMatrix<'_>, Error> {
        Ok(match dtype {
            DType::Q4_0 if repacked => WeightMatrix::Q4_0x8(self.typed::<BlockQ4_0x8>(t)?),
            DType::Q4_1 if repacked => WeightMatrix::Q4_1x8(self.typed::<BlockQ4_1x8>(t)?),
            DType::Q8_0 if repacked => WeightMatrix::Q8_0x8(self.typed::<BlockQ8_0x8>(t)?),
            DType::F32 => WeightMatrix::F32(self.typed::<f32>(t)?),
            DType::F16 => WeightMatrix::F16(self.typed::<f16>(t)?),
            DType::Q4_0 => WeightMatrix::Q4_0(self.typed::<BlockQ4_0>(t)?),
            DType::Q4_1 => WeightMatrix::Q4_1(self.typed::<BlockQ4_1>(t)?),
            DType::Q8_0 => WeightMatrix::Q8_0(self.typed::<BlockQ8_0>(t)?),
            other => {
                return Err(Error::BadWeight {
                    name: format!("tensor {}", t.0),
                    message: format!("{other} is not a weight type"),
                })
            }
        })
    }
}

/// Dequantizes row `row` of an embedding table of `cols` columns into `out`.
fn embedding_row(
    table: &[u8],
    dtype: DType,
    row: usize,
    cols: usize,
    out: &mut [f32],
) -> Result<(), Error> {
    let row_bytes = dtype.bytes_for(cols).unwrap_or(0);
    let start = row * row_bytes;
    let bytes = table
        .get(start..start + row_bytes)
        .ok_or(Error::TokenOutOfRange {
            id: row as i64,
            vocab: table.len() / row_bytes.max(1),
        })?;
    let cast_err = |e: bytemuck::PodCastError| Error::BadWeight {
        name: "token_embd.weight".into(),
        message: e.to_string(),
    };
    use coordgen_kernels::quant as k;
    match dtype {
        DType::F32 => out.copy_from_slice(bytemuck::try_cast_slice(bytes).map_err(cast_err)?),
        DType::F16 => k::f16_to_f32_row(bytemuck::try_cast_slice(bytes).map_err(cast_err)?, out),
        DType::BF16 => k::bf16_to_f32_row(bytemuck::try_cast_slice(bytes).map_err(cast_err)?, out),
        DType::Q4_0 => {
            k::dequantize_row_q4_0(bytemuck::try_cast_slice(bytes).map_err(cast_err)?, out)
        }
        DType::Q4_1 => {
            k::dequantize_row_q4_1(bytemuck::try_cast_slice(bytes).map_err(cast_err)?, out)
        }
        DType::Q8_0 => {
            k::dequantize_row_q8_0(bytemuck::try_cast_slice(bytes).map_err(cast_err)?, out)
        }
        other => {
            return Err(Error::BadWeight {
                name: "token_embd.weight".into(),
                message: format!("{other} cannot be an embedding table"),
            })
        }
    }
    Ok(())
}

impl Executable for CpuExecutable {
    fn name(&self) -> &str {
        &self.graph.name
    }

    fn run(
        &mut self,
        state: &mut SessionState,
        params: &ExecParams,
    ) -> Result<(), coordgen_graph::Error> {
        let width = self.graph.width;
        if params.n_valid == 0 || params.n_valid > width {
            return Err(coordgen_graph::Error::BadParams {
                graph: self.graph.name.clone(),
                message: format!("{} valid rows in a bucket of {width}", params.n_valid),
            });
        }
        let pool = self.pool.clone();
        pool.install(|| self.run_nodes(state, params))
            .map_err(Into::into)
    }
}

impl CpuExecutable {
    fn run_nodes(&mut self, state: &mut SessionState, params: &ExecParams) -> Result<(), Error> {
        let mut scratch = std::mem::take(&mut self.scratch);
        let mut ptrs = std::mem::take(&mut self.tensor_ptrs);
        let result = (|| {
            let mem = Memory::new(self, &mut ptrs, state)?;
            for op in &self.graph.nodes {
                self.run_op(&mem, op, params, &mut scratch)?;
            }
            Ok(())
        })();
        self.scratch = scratch;
        ptrs.clear();
        self.tensor_ptrs = ptrs;
        result
    }

    /// Rows of `t` that hold real data in this run.
    fn active_rows(&self, t: TensorId, params: &ExecParams) -> usize {
        let rows = self.graph.tensors[t.0].shape.first().copied().unwrap_or(0);
        rows.min(params.n_valid)
    }

    fn run_op(
        &self,
        mem: &Memory,
        op: &Op,
        params: &ExecParams,
        scratch: &mut OpScratch,
    ) -> Result<(), Error> {
        let g = &self.graph;
        let cols = |t: TensorId| g.tensors[t.0].shape.get(1).copied().unwrap_or(0);
        match *op {
            Op::Embedding { table, ids, out } => {
                let d = cols(out);
                let table_decl = &g.tensors[table.0];
                let vocab = table_decl.shape[0];
                let ids = mem.typed::<i32>(ids)?;
                let out_rows = mem.typed_mut::<f32>(out)?;
                for r in 0..params.n_valid {
                    let id = ids[r];
                    if id < 0 || id as usize >= vocab {
                        return Err(Error::TokenOutOfRange {
                            id: id.into(),
                            vocab,
                        });
                    }
                    embedding_row(
                        mem.bytes(table),
                        table_decl.dtype,
                        id as usize,
                        d,
                        &mut out_rows[r * d..(r + 1) * d],
                    )?;
                }
            }
            Op::RmsNorm {
                x,
                weight,
                eps,
                out,
            } => {
                let c = cols(x);
                let n = self
                    .active_rows(x, params)
                    .min(self.active_rows(out, params));
                let (x, w, out) = (
                    mem.typed::<f32>(x)?,
                    mem.typed::<f32>(weight)?,
                    mem.typed_mut::<f32>(out)?,
                );
                for r in 0..n {
                    coordgen_kernels::ops::rms_norm(
                        &x[r * c..(r + 1) * c],
                        w,
                        eps,
                        &mut out[r * c..(r + 1) * c],
                    );
                }
            }
            Op::MatMul { x, w, out } => {
                let wd = &g.tensors[w.0];
                let (m, k) = (wd.shape[0], wd.shape[1]);
                let n = self
                    .active_rows(x, params)
                    .min(self.active_rows(out, params));
                let wm = mem.weight_matrix(w, wd.dtype, self.repacked[w.0])?;
                let x = &mem.typed::<f32>(x)?[..n * k];
                let out = &mut mem.typed_mut::<f32>(out)?[..n * m];
                matmul(self.kernels, &wm, m, k, x, n, out, &mut scratch.matmul)?;
            }
            Op::Rope {
                x,
                positions,
                n_heads,
                head_dim,
                theta_base,
                out,
            } => {
                let c = cols(x);
                let n = self.active_rows(x, params);
                let pos = mem.typed::<i32>(positions)?;
                let (x, out) = (mem.typed::<f32>(x)?, mem.typed_mut::<f32>(out)?);
                out[..n * c].copy_from_slice(&x[..n * c]);
                for r in 0..n {
                    coordgen_kernels::ops::rope_norm_inplace(
                        &mut out[r * c..(r + 1) * c],
                        n_heads,
                        head_dim,
                        pos[r],
                        theta_base,
                    )?;
                }
            }
            Op::Attention {
                q,
                k,
                v,
                k_cache,
                v_cache,
                mask,
                tree_mask,
                n_heads,
                n_kv_heads,
                head_dim,
                out,
            } => {
                let width = g.tensors[q.0].shape[0];
                let capacity = g.tensors[k_cache.0].shape[0];
                let n = params.n_valid.min(width);
                let past = params.past_len;
                if past.checked_add(n).is_none_or(|end| end > capacity) {
                    return Err(bad(
                        g,
                        format!("{past} cached + {n} new tokens exceed the KV cache of {capacity}"),
                    ));
                }
                let kv_dim = n_kv_heads * head_dim;
                {
                    let (k_new, v_new) = (mem.typed::<f32>(k)?, mem.typed::<f32>(v)?);
                    let kc = mem.typed_mut::<f16>(k_cache)?;
                    for (dst, src) in kc[past * kv_dim..(past + n) * kv_dim]
                        .iter_mut()
                        .zip(&k_new[..n * kv_dim])
                    {
                        *dst = f16::from_f32(*src);
                    }
                    let vc = mem.typed_mut::<f16>(v_cache)?;
                    for (dst, src) in vc[past * kv_dim..(past + n) * kv_dim]
                        .iter_mut()
                        .zip(&v_new[..n * kv_dim])
                    {
                        *dst = f16::from_f32(*src);
                    }
                }
                let OpScratch {
                    visible_slots: slots,
                    visible_ranges: ranges,
                    visible_rows,
                    ..
                } = scratch;
                slots.clear();
                ranges.clear();
                let tree = match (mask, tree_mask) {
                    (MaskKind::Tree, Some(m)) => Some(mem.typed::<u8>(m)?),
                    _ => None,
                };
                for r in 0..n {
                    let start = slots.len();
                    let prefix = match tree {
                        None => past + r + 1,
                        Some(m) => {
                            for j in 0..n {
                                if m[r * width + j] != 0 {
                                    slots.push((past + j) as u32);
                                }
                            }
                            past
                        }
                    };
                    ranges.push((prefix, start, slots.len()));
                }
                let mut rows = recycle(std::mem::take(visible_rows));
                rows.extend(ranges.iter().map(|&(prefix_len, a, b)| RowVisibility {
                    prefix_len,
                    extra: &slots[a..b],
                }));
                let shape = AttentionShape {
                    n_heads,
                    n_kv_heads,
                    head_dim,
                    scale: 1.0 / (head_dim as f32).sqrt(),
                };
                let q_dim = n_heads * head_dim;
                let qv = &mem.typed::<f32>(q)?[..n * q_dim];
                let out = &mut mem.typed_mut::<f32>(out)?[..n * q_dim];
                let (kc, vc) = (mem.typed::<f16>(k_cache)?, mem.typed::<f16>(v_cache)?);
                let result = attention(self.kernels, &shape, qv, n, kc, vc, &rows, out);
                *visible_rows = recycle(rows);
                result?;
            }
            Op::SiluMul { gate, up, out } => {
                let len = self.active_rows(out, params) * cols(out);
                let (a, b, o) = (
                    mem.typed::<f32>(gate)?,
                    mem.typed::<f32>(up)?,
                    mem.typed_mut::<f32>(out)?,
                );
                coordgen_kernels::ops::silu_mul(&a[..len], &b[..len], &mut o[..len]);
            }
            Op::Add { a, b, out } => {
                let len = self.active_rows(out, params) * cols(out);
                let (a, b, o) = (
                    mem.typed::<f32>(a)?,
                    mem.typed::<f32>(b)?,
                    mem.typed_mut::<f32>(out)?,
                );
                o[..len].copy_from_slice(&a[..len]);
                coordgen_kernels::ops::add_inplace(&mut o[..len], &b[..len]);
            }
            Op::SelectRows { x, rows, out } => {
                let c = cols(x);
                let (x, o) = (mem.typed::<f32>(x)?, mem.typed_mut::<f32>(out)?);
                match rows {
                    RowSelection::All => {
                        let len = params.n_valid * c;
                        o[..len].copy_from_slice(&x[..len]);
                    }
                    RowSelection::LastValid => {
                        let r = params.n_valid - 1;
                        o[..c].copy_from_slice(&x[r * c..(r + 1) * c]);
                    }
                }
            }
        }
        Ok(())
    }
}
