//! Execution of one compiled subgraph.

use crate::team::{FailFlag, PhaseCell, SpinBarrier, TeamPool, WorkSplit};
use crate::Error;
use coordgen_graph::{
    memory, DType, ExecParams, Executable, MaskKind, Op, RowSelection, SessionState, Subgraph,
    TensorDecl, TensorId, TensorKind, WeightBytes, WeightSource,
};
use coordgen_kernels::{
    matmul, AttentionJob, AttentionShape, BlockQ4K, BlockQ4_0, BlockQ4_0x8, BlockQ4_1, BlockQ4_1x8,
    BlockQ5K, BlockQ6K, BlockQ8_0, BlockQ8_0x8, KernelSet, MatmulScratch, RowVisibility, SharedOut,
    WeightMatrix,
};
use half::f16;
use half::slice::HalfFloatSliceExt;
use std::sync::Arc;

// The K cache layout of the IR is the kernels' blocked key layout.
const _: () = assert!(coordgen_graph::KV_SLOT_BLOCK == coordgen_kernels::attention::KEY_BLOCK);

/// Where the bytes of a tensor live during a run.
#[derive(Clone, Copy, Debug)]
enum Place {
    Weight(usize),
    Boundary(usize),
    Kv(usize),
    Arena(usize),
    /// No op of the graph touches it (a piece of a partitioned subgraph
    /// keeps the whole tensor table): nothing is bound for it.
    Unused,
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
    pool: Arc<TeamPool>,
    /// The team's work split, reused by every run.
    work: WorkSplit,
    /// Base pointer of every tensor for the current run, reused across runs.
    tensor_ptrs: Vec<*mut u8>,
    scratch: OpScratch,
    /// The ops grouped into serial and parallel phases (see [`Step`]).
    schedule: Vec<Step>,
}

/// One phase of a team run ([`crate::team`]).
#[derive(Clone, Debug)]
enum Step {
    /// Ops that thread 0 runs alone (element-wise work, small next to the
    /// matmuls), by index into the graph's nodes.
    Serial(Vec<usize>),
    /// Matmuls that read none of each other's outputs: thread 0 quantizes
    /// their activations (once per distinct input, into the scratch slot
    /// given next to each op), then all threads split their units.
    Matmuls(MatmulPhase),
    /// One attention op: thread 0 writes the new K/V rows into the cache and
    /// lists each row's visible slots, then all threads split the (row,
    /// head) tasks.
    Attention(usize),
}

/// The matmuls of one phase and their work units, laid out back to back
/// (the counts depend only on the weights, so they are planned once).
#[derive(Clone, Debug, Default)]
struct MatmulPhase {
    /// `(op index, scratch slot, first unit, units)` of each matmul.
    ops: Vec<(usize, usize, usize, usize)>,
    /// Units of the whole phase.
    total: usize,
    /// The share of the next attention's KV cache this phase prefetches.
    kv_prefetch: Option<KvPrefetch>,
}

/// Part `part` of `parts` of the cached K and V of attention op `attention`:
/// the matmul phases before an attention bring its cache in, a share each,
/// so that the attention phase (bound by memory: every cached key and value
/// is read once per pass) finds it in cache, while the matmuls (bound by
/// arithmetic at verify widths) leave memory bandwidth to spare.
#[derive(Clone, Copy, Debug)]
struct KvPrefetch {
    attention: usize,
    part: usize,
    parts: usize,
}

/// Fewest rows a run needs for its matmul phases to prefetch the KV cache:
/// narrower matmuls are bound by memory themselves, so the prefetch would
/// only add its own instructions.
const KV_PREFETCH_MIN_ROWS: usize = 4;

/// Cached K bytes and V bytes of one attention op.
type KvBytes<'m> = (&'m [u8], &'m [u8]);

/// Most matmuls one phase holds (a layer's Q, K and V make three).
const MAX_PHASE_MATMULS: usize = 8;

// SAFETY: `tensor_ptrs` only holds pointers while `run` executes (it is
// cleared before returning), so moving the executable to another thread
// moves no live borrow; every other field is Send.
unsafe impl Send for CpuExecutable {}
// SAFETY: shared references only exist during a team run, which has moved
// `tensor_ptrs` out of the executable; the other fields are read-only then.
unsafe impl Sync for CpuExecutable {}

/// Buffers the ops reuse from run to run, so a steady-state run allocates
/// nothing here.
#[derive(Default)]
struct OpScratch {
    /// RoPE angles of this run's positions, shared by every layer's Q and K.
    rope: RopeCache,
    /// One per distinct matmul input of a phase (see [`Step::Matmuls`]).
    matmul: Vec<MatmulScratch>,
    /// Extra visible cache slots of every row (tree attention), back to back.
    visible_slots: Vec<u32>,
    /// The sequence position of each entry of `visible_slots`.
    visible_positions: Vec<u32>,
    /// Per row: (prefix length, start, end) into `visible_slots`.
    visible_ranges: Vec<(usize, usize, usize)>,
}

/// Tasks of attention op `op` over `n_rows` rows (0 for other ops).
fn attention_tasks(op: &Op, n_rows: usize) -> usize {
    match *op {
        Op::Attention {
            n_heads,
            n_kv_heads,
            head_dim,
            ..
        } => AttentionJob::task_count(
            n_rows,
            &AttentionShape {
                n_heads,
                n_kv_heads,
                head_dim,
                scale: 1.0,
            },
        ),
        _ => 0,
    }
}

/// The RoPE angles of the last positions asked for.
#[derive(Default)]
struct RopeCache {
    positions: Vec<i32>,
    head_dim: usize,
    theta_bits: u32,
    /// `positions.len() × head_dim / 2` (sin, cos) pairs.
    angles: Vec<(f32, f32)>,
}

impl RopeCache {
    /// The angles of `positions`, computed unless the last call asked for
    /// the same ones (allocates only when the rows outgrow the buffers).
    fn angles(
        &mut self,
        positions: &[i32],
        head_dim: usize,
        theta_base: f32,
    ) -> Result<&[(f32, f32)], Error> {
        let half = head_dim / 2;
        if self.positions != positions
            || self.head_dim != head_dim
            || self.theta_bits != theta_base.to_bits()
        {
            self.positions.clear();
            self.positions.extend_from_slice(positions);
            self.head_dim = head_dim;
            self.theta_bits = theta_base.to_bits();
            self.angles.clear();
            self.angles.resize(positions.len() * half, (0.0, 0.0));
            if half > 0 {
                for (&p, row) in positions.iter().zip(self.angles.chunks_exact_mut(half)) {
                    coordgen_kernels::ops::rope_angles(p, head_dim, theta_base, row)?;
                }
            }
        }
        Ok(&self.angles)
    }
}

fn bad_tensor(t: TensorId, message: &str) -> Error {
    Error::BadWeight {
        name: format!("tensor {}", t.0),
        message: message.into(),
    }
}

fn bad(graph: &Subgraph, message: impl Into<String>) -> Error {
    Error::BadGraph {
        graph: graph.name.clone(),
        message: message.into(),
    }
}

impl CpuExecutable {
    pub(crate) fn new(
        graph: &Subgraph,
        weights: &dyn WeightSource,
        kernels: &'static KernelSet,
        pool: Arc<TeamPool>,
        repack: Option<&crate::RepackCache>,
    ) -> Result<Self, Error> {
        memory::validate_arena(graph).map_err(|e| bad(graph, e.to_string()))?;
        let n_tensors = graph.tensors.len();
        let mut places = Vec::with_capacity(n_tensors);
        let mut sizes = Vec::with_capacity(n_tensors);
        let mut bound = Vec::new();
        let mut repacked = vec![false; n_tensors];
        // Per tensor: whether an op touches it, so a piece of a partitioned
        // graph binds (and repacks) only its own weights.
        let mut used = vec![false; n_tensors];
        // Weights that this graph only uses as matmul matrices can be repacked.
        let mut matmul_only = vec![None::<bool>; n_tensors];
        for op in &graph.nodes {
            let out = op.output();
            *used
                .get_mut(out.0)
                .ok_or_else(|| bad(graph, format!("{} writes no tensor", op.name())))? = true;
            for input in op.inputs() {
                let is_matmul_w = matches!(*op, Op::MatMul { w, .. } if w == input);
                let slot = matmul_only
                    .get_mut(input.0)
                    .ok_or_else(|| bad(graph, format!("{} reads no tensor", op.name())))?;
                *slot = Some(slot.unwrap_or(true) && is_matmul_w);
                used[input.0] = true;
            }
        }
        for (ti, t) in graph.tensors.iter().enumerate() {
            if !used[ti] {
                sizes.push(0);
                places.push(Place::Unused);
                continue;
            }
            let size = t.n_bytes().ok_or_else(|| {
                bad(
                    graph,
                    format!("{} has a shape that is not whole blocks", t.name),
                )
            })?;
            sizes.push(size);
            places.push(match &t.kind {
                TensorKind::Weight { name } => {
                    let mut bytes =
                        coordgen_graph::weight_bytes_for(weights, name, t).map_err(|message| {
                            Error::BadWeight {
                                name: name.clone(),
                                message,
                            }
                        })?;
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
                TensorKind::KvCache { layer, half } => Place::Kv(half.index(*layer)),
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
            work: WorkSplit::new(pool.threads()),
            pool,
            tensor_ptrs: Vec::new(),
            scratch: OpScratch::default(),
            schedule: Vec::new(),
        };
        exe.check_ops()?;
        let (schedule, slots) = exe.build_schedule();
        let mut exe = exe;
        exe.schedule = schedule;
        exe.scratch.matmul = (0..slots).map(|_| MatmulScratch::default()).collect();
        Ok(exe)
    }

    /// Groups the ops into phases; returns them and the number of matmul
    /// scratch slots a phase needs at most.
    fn build_schedule(&self) -> (Vec<Step>, usize) {
        let mut steps: Vec<Step> = Vec::new();
        let mut max_slots = 0;
        // The current Matmuls step's slots: (input, dtype, repacked).
        let mut slot_keys: Vec<(TensorId, DType, bool)> = Vec::new();
        for (i, op) in self.graph.nodes.iter().enumerate() {
            match *op {
                Op::MatMul { x, w, .. } => {
                    let key = (x, self.graph.tensors[w.0].dtype, self.repacked[w.0]);
                    let joins = match steps.last() {
                        // Must not read an output of the phase's other matmuls.
                        Some(Step::Matmuls(phase)) => {
                            phase.ops.len() < MAX_PHASE_MATMULS
                                && phase
                                    .ops
                                    .iter()
                                    .all(|&(j, ..)| self.graph.nodes[j].output() != x)
                        }
                        _ => false,
                    };
                    if !joins {
                        slot_keys.clear();
                        steps.push(Step::Matmuls(MatmulPhase::default()));
                    }
                    let slot = match slot_keys.iter().position(|k| *k == key) {
                        Some(slot) => slot,
                        None => {
                            slot_keys.push(key);
                            slot_keys.len() - 1
                        }
                    };
                    max_slots = max_slots.max(slot_keys.len());
                    let rows = self.graph.tensors[w.0].shape.first().copied().unwrap_or(0);
                    let units = coordgen_kernels::unit_count(rows, self.repacked[w.0]);
                    if let Some(Step::Matmuls(phase)) = steps.last_mut() {
                        phase.ops.push((i, slot, phase.total, units));
                        phase.total += units;
                    }
                }
                Op::Attention { .. } => steps.push(Step::Attention(i)),
                _ => match steps.last_mut() {
                    Some(Step::Serial(ops)) => ops.push(i),
                    _ => steps.push(Step::Serial(vec![i])),
                },
            }
        }
        // The matmul phases since the previous attention prefetch the next one's cache.
        let mut since_attention: Vec<usize> = Vec::new();
        for s in 0..steps.len() {
            let attention = match steps[s] {
                Step::Matmuls(_) => {
                    since_attention.push(s);
                    None
                }
                Step::Attention(op) => Some(op),
                Step::Serial(_) => None,
            };
            if let Some(op) = attention {
                {
                    let parts = since_attention.len();
                    for (part, &m) in since_attention.iter().enumerate() {
                        if let Step::Matmuls(phase) = &mut steps[m] {
                            phase.kv_prefetch = Some(KvPrefetch {
                                attention: op,
                                part,
                                parts,
                            });
                        }
                    }
                    since_attention.clear();
                }
            }
        }
        (steps, max_slots)
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

// SAFETY: a `Memory` is shared by the threads of one team run, which follow
// the phase discipline of `crate::team`: in a serial phase only thread 0
// touches tensors; in a parallel phase threads read the inputs and write
// disjoint parts of the outputs (matmul units, attention tasks) through raw
// pointers. No `&mut` view of a tensor is alive in two threads at once.
unsafe impl Sync for Memory<'_> {}

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
                Place::Weight(_) | Place::Unused => std::ptr::null_mut(),
                Place::Arena(offset) => {
                    // SAFETY: validate_arena proved offset + size <= arena_bytes,
                    // and the session arena is at least that long (checked above).
                    unsafe { arena.add(offset) }
                }
                Place::Boundary(id) | Place::Kv(id) => {
                    let buf: Option<&mut [u8]> = if matches!(place, Place::Boundary(_)) {
                        state.boundaries.get_mut(id).map(|b| b.as_bytes_mut())
                    } else {
                        state.kv.half_mut(id)
                    };
                    let buf = buf.ok_or_else(|| {
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
            Place::Unused => &[],
            // SAFETY: see the type's docs: in bounds, exclusively borrowed by
            // the run, and not written while this view lives.
            _ => unsafe { std::slice::from_raw_parts(self.ptrs[t.0], self.sizes[t.0]) },
        }
    }

    #[allow(clippy::mut_from_ref)] // Disjointness is proved at compile time, see the type's docs.
    fn bytes_mut(&self, t: TensorId) -> &mut [u8] {
        match self.places[t.0] {
            Place::Weight(_) | Place::Unused => &mut [],
            // SAFETY: see the type's docs: in bounds, and no other view of
            // these bytes is alive while the op writes its output.
            _ => unsafe { std::slice::from_raw_parts_mut(self.ptrs[t.0], self.sizes[t.0]) },
        }
    }

    /// The first `len` f32 of tensor `t` as a [`SharedOut`], for ops whose
    /// threads write disjoint parts of it.
    fn shared_out(&self, t: TensorId, len: usize) -> Result<SharedOut, Error> {
        if matches!(self.places[t.0], Place::Weight(_) | Place::Unused)
            || len.saturating_mul(4) > self.sizes[t.0]
            || !(self.ptrs[t.0] as usize).is_multiple_of(std::mem::align_of::<f32>())
        {
            return Err(bad_tensor(t, "cannot be written as f32"));
        }
        // SAFETY: in bounds and aligned (checked above; see the type's docs);
        // the slice only lives for this call, so no `&mut` outlives it, and
        // the `SharedOut` is used under the team's disjointness contract.
        let slice = unsafe { std::slice::from_raw_parts_mut(self.ptrs[t.0].cast::<f32>(), len) };
        Ok(SharedOut::new(slice))
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
            DType::Q4_K => WeightMatrix::Q4K(self.typed::<BlockQ4K>(t)?),
            DType::Q5_K => WeightMatrix::Q5K(self.typed::<BlockQ5K>(t)?),
            DType::Q6_K => WeightMatrix::Q6K(self.typed::<BlockQ6K>(t)?),
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
        DType::Q4_K => coordgen_kernels::kquant::dequantize_row_q4_k(
            bytemuck::try_cast_slice(bytes).map_err(cast_err)?,
            out,
        ),
        DType::Q5_K => coordgen_kernels::kquant::dequantize_row_q5_k(
            bytemuck::try_cast_slice(bytes).map_err(cast_err)?,
            out,
        ),
        DType::Q6_K => coordgen_kernels::kquant::dequantize_row_q6_k(
            bytemuck::try_cast_slice(bytes).map_err(cast_err)?,
            out,
        ),
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
        params.check(&self.graph)?;
        self.run_team(state, params).map_err(Into::into)
    }
}

/// Every thread's share of a parallel phase.
type ParallelPart<'f> = dyn Fn(&OpScratch) -> Result<(), Error> + 'f;

/// What the threads of one team run share.
struct TeamRun<'a> {
    exe: &'a CpuExecutable,
    mem: Memory<'a>,
    params: &'a ExecParams,
    scratch: PhaseCell<OpScratch>,
    barrier: SpinBarrier,
    work: &'a WorkSplit,
    failed: FailFlag,
    error: std::sync::Mutex<Option<Error>>,
}

impl TeamRun<'_> {
    fn fail(&self, e: Error) {
        let mut slot = self.error.lock().unwrap_or_else(|p| p.into_inner());
        slot.get_or_insert(e);
        self.failed.set();
    }

    /// Runs `f`, turning an error or a panic into a failure of the run (a
    /// thread that unwound past a barrier would leave the others waiting).
    fn guarded(&self, f: impl FnOnce() -> Result<(), Error>) {
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
            Ok(Ok(())) => {}
            Ok(Err(e)) => self.fail(e),
            Err(panic) => {
                let message = panic
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "unknown panic".into());
                self.fail(bad(&self.exe.graph, format!("internal error: {message}")));
            }
        }
    }

    /// Thread 0's serial part of a phase, then (for parallel phases) the
    /// barrier, every thread's share, and the closing barrier. Returns
    /// `false` when the run failed and every thread must stop.
    fn phase(
        &self,
        index: usize,
        serial: impl FnOnce(&mut OpScratch) -> Result<(), Error>,
        parallel: Option<&ParallelPart>,
    ) -> bool {
        if index == 0 {
            self.guarded(|| {
                // SAFETY: serial part: only thread 0 runs here; the others
                // are waiting at the next barrier (or have not started).
                serial(unsafe { self.scratch.get_mut() })
            });
        }
        let Some(parallel) = parallel else {
            return true;
        };
        self.barrier.wait();
        if self.failed.is_set() {
            return false;
        }
        self.guarded(|| {
            // SAFETY: parallel part: nobody writes the scratch until the
            // barrier below.
            parallel(unsafe { self.scratch.get() })
        });
        self.barrier.wait();
        !self.failed.is_set()
    }

    /// The whole schedule as seen by thread `index`.
    fn thread_main(&self, index: usize) {
        let exe = self.exe;
        let (mem, params, work) = (&self.mem, self.params, &self.work);
        for step in &exe.schedule {
            let go_on = match step {
                Step::Serial(ops) => self.phase(
                    index,
                    |scratch| {
                        for &i in ops {
                            exe.run_op(mem, &exe.graph.nodes[i], params, scratch)?;
                        }
                        Ok(())
                    },
                    None,
                ),
                Step::Matmuls(phase) => self.phase(
                    index,
                    |scratch| {
                        work.reset(phase.total);
                        exe.prepare_matmuls(mem, phase, params, scratch)
                    },
                    Some(&|scratch| exe.run_matmul_units(mem, phase, params, scratch, work, index)),
                ),
                Step::Attention(i) => {
                    let op = &exe.graph.nodes[*i];
                    self.phase(
                        index,
                        |scratch| {
                            exe.prepare_attention(mem, op, params, scratch)?;
                            work.reset(attention_tasks(op, scratch.visible_ranges.len()));
                            Ok(())
                        },
                        Some(&|scratch| {
                            exe.run_attention_tasks(mem, op, params, scratch, work, index)
                        }),
                    )
                }
            };
            if !go_on {
                return;
            }
        }
    }
}

impl CpuExecutable {
    /// Runs the schedule on every member of the team.
    fn run_team(&mut self, state: &mut SessionState, params: &ExecParams) -> Result<(), Error> {
        let scratch = std::mem::take(&mut self.scratch);
        let mut ptrs = std::mem::take(&mut self.tensor_ptrs);
        let pool = self.pool.clone();
        let threads = pool.threads();
        let (result, scratch) = match Memory::new(self, &mut ptrs, state) {
            Err(e) => (Err(e), scratch),
            Ok(mem) => {
                let team = TeamRun {
                    exe: self,
                    mem,
                    params,
                    scratch: PhaseCell::new(scratch),
                    barrier: SpinBarrier::new(threads),
                    work: &self.work,
                    failed: FailFlag::default(),
                    error: std::sync::Mutex::new(None),
                };
                pool.run(&|index| team.thread_main(index));
                let error = team.error.into_inner().unwrap_or_else(|p| p.into_inner());
                (error.map_or(Ok(()), Err), team.scratch.into_inner())
            }
        };
        self.scratch = scratch;
        ptrs.clear();
        self.tensor_ptrs = ptrs;
        result
    }

    /// Thread 0, before a [`Step::Matmuls`] phase: quantizes each distinct
    /// input once, into its scratch slot.
    fn prepare_matmuls(
        &self,
        mem: &Memory,
        phase: &MatmulPhase,
        params: &ExecParams,
        scratch: &mut OpScratch,
    ) -> Result<(), Error> {
        let mut prepared = [false; MAX_PHASE_MATMULS];
        for &(i, slot, ..) in &phase.ops {
            if prepared.get(slot).copied().unwrap_or(true) {
                continue;
            }
            let (wm, _, k, n, x) = self.matmul_operands(mem, i, params)?;
            let s = scratch
                .matmul
                .get_mut(slot)
                .ok_or_else(|| bad(&self.graph, "matmul scratch slot missing"))?;
            s.prepare(self.kernels, &wm, k, x, n)?;
            prepared[slot] = true;
        }
        Ok(())
    }

    /// The weight matrix, rows, cols, valid rows and input of matmul op `i`.
    #[allow(clippy::type_complexity)]
    fn matmul_operands<'m>(
        &self,
        mem: &'m Memory,
        i: usize,
        params: &ExecParams,
    ) -> Result<(WeightMatrix<'m>, usize, usize, usize, &'m [f32]), Error> {
        let Op::MatMul { x, w, out } = self.graph.nodes[i] else {
            return Err(bad(&self.graph, "matmul phase holds another op"));
        };
        let wd = &self.graph.tensors[w.0];
        let (m, k) = (wd.shape[0], wd.shape[1]);
        let n = self
            .active_rows(x, params)
            .min(self.active_rows(out, params));
        let wm = mem.weight_matrix(w, wd.dtype, self.repacked[w.0])?;
        let xs = mem
            .typed::<f32>(x)?
            .get(..n * k)
            .ok_or_else(|| bad(&self.graph, "matmul input shorter than its rows"))?;
        Ok((wm, m, k, n, xs))
    }

    /// Every thread, in a [`Step::Matmuls`] phase: takes chunks of the
    /// phase's units (all its matmuls' units back to back) until none is left.
    fn run_matmul_units(
        &self,
        mem: &Memory,
        phase: &MatmulPhase,
        params: &ExecParams,
        scratch: &OpScratch,
        work: &WorkSplit,
        me: usize,
    ) -> Result<(), Error> {
        // Steps of ~1/16 of a thread's share: stealing stays fine-grained,
        // the owner's atomics stay rare.
        let step = phase.total / (16 * work.threads());
        let kv_lines = self.kv_prefetch_lines(mem, phase, params)?;
        while let Some(range) = work.take(me, step) {
            if let Some((k, v)) = kv_lines {
                // This range's share of the phase's part of the cache.
                for bytes in [k, v] {
                    let at = |u: usize| bytes.len() * u / phase.total.max(1);
                    coordgen_kernels::prefetch(&bytes[at(range.start)..at(range.end)]);
                }
            }
            for &(i, slot, first, count) in &phase.ops {
                let (start, end) = (range.start.max(first), range.end.min(first + count));
                if start >= end {
                    continue;
                }
                let (wm, m, k, n, x) = self.matmul_operands(mem, i, params)?;
                let Op::MatMul { out, .. } = self.graph.nodes[i] else {
                    continue;
                };
                let out = mem.shared_out(out, n * m)?;
                let s = scratch
                    .matmul
                    .get(slot)
                    .ok_or_else(|| bad(&self.graph, "matmul scratch slot missing"))?;
                // SAFETY: shapes were checked at compile time (check_ops),
                // the activations were prepared for this op's slot, and the
                // work counter hands each unit to exactly one thread, so the
                // output elements written here are this thread's alone.
                unsafe {
                    coordgen_kernels::matmul_units(
                        self.kernels,
                        &wm,
                        m,
                        k,
                        x,
                        n,
                        s,
                        out,
                        start - first..end - first,
                    )
                };
            }
        }
        Ok(())
    }

    /// The cached K and V bytes that matmul phase `phase` prefetches for the
    /// attention after it (its part of the slots before this run's rows).
    fn kv_prefetch_lines<'m>(
        &self,
        mem: &'m Memory,
        phase: &MatmulPhase,
        params: &ExecParams,
    ) -> Result<Option<KvBytes<'m>>, Error> {
        let Some(KvPrefetch {
            attention,
            part,
            parts,
        }) = phase.kv_prefetch
        else {
            return Ok(None);
        };
        if params.n_valid < KV_PREFETCH_MIN_ROWS {
            return Ok(None);
        }
        let Some(&Op::Attention {
            k_cache,
            v_cache,
            n_kv_heads,
            head_dim,
            ..
        }) = self.graph.nodes.get(attention)
        else {
            return Err(bad(&self.graph, "KV prefetch names no attention op"));
        };
        let kv_dim = n_kv_heads * head_dim;
        let share = |bytes: &'m [u8], len: usize| {
            let len = len.min(bytes.len());
            &bytes[len * part / parts..len * (part + 1) / parts]
        };
        let past = params.past_len;
        Ok(Some((
            share(
                mem.bytes(k_cache),
                2 * coordgen_kernels::attention::key_cache_len(past, kv_dim),
            ),
            share(mem.bytes(v_cache), 2 * past * kv_dim),
        )))
    }

    /// Thread 0, before an attention phase: appends this run's K/V rows to
    /// the cache (as f16) and lists the slots each query row sees.
    fn prepare_attention(
        &self,
        mem: &Memory,
        op: &Op,
        params: &ExecParams,
        scratch: &mut OpScratch,
    ) -> Result<(), Error> {
        let g = &self.graph;
        let Op::Attention {
            q,
            k,
            v,
            k_cache,
            v_cache,
            mask,
            tree_mask,
            n_kv_heads,
            head_dim,
            ..
        } = *op
        else {
            return Err(bad(g, "attention phase holds another op"));
        };
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
        let (k_new, v_new) = (mem.typed::<f32>(k)?, mem.typed::<f32>(v)?);
        // half's slice conversion uses F16C when the CPU has it (same
        // round-to-nearest-even as the per-value conversion).
        coordgen_kernels::attention::store_keys(
            mem.typed_mut::<f16>(k_cache)?,
            kv_dim,
            past,
            &k_new[..n * kv_dim],
        )?;
        let vc = mem.typed_mut::<f16>(v_cache)?;
        vc[past * kv_dim..(past + n) * kv_dim].convert_from_f32_slice(&v_new[..n * kv_dim]);
        let OpScratch {
            visible_slots: slots,
            visible_positions: positions,
            visible_ranges: ranges,
            ..
        } = scratch;
        slots.clear();
        positions.clear();
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
                    coordgen_kernels::attention::tree_row_extras(m, width, n, past, r, |s, p| {
                        slots.push(s);
                        positions.push(p);
                    });
                    past
                }
            };
            ranges.push((prefix, start, slots.len()));
        }
        Ok(())
    }

    /// Every thread, in an attention phase: takes chunks of (row, head)
    /// tasks until none is left.
    fn run_attention_tasks(
        &self,
        mem: &Memory,
        op: &Op,
        _params: &ExecParams,
        scratch: &OpScratch,
        work: &WorkSplit,
        me: usize,
    ) -> Result<(), Error> {
        let Op::Attention {
            q,
            k_cache,
            v_cache,
            n_heads,
            n_kv_heads,
            head_dim,
            out,
            ..
        } = *op
        else {
            return Err(bad(&self.graph, "attention phase holds another op"));
        };
        let n = scratch.visible_ranges.len();
        // A stack list for the common case; tree rows or long buckets use a
        // vector (verification and prefill, where it is small next to the work).
        let mut stack = [RowVisibility::default(); 16];
        let mut heap = Vec::new();
        let rows: &[RowVisibility] =
            if n <= stack.len() {
                for (row, &(prefix_len, a, b)) in stack.iter_mut().zip(&scratch.visible_ranges) {
                    *row = RowVisibility {
                        prefix_len,
                        extra: &scratch.visible_slots[a..b],
                        extra_positions: &scratch.visible_positions[a..b],
                    };
                }
                &stack[..n]
            } else {
                heap.extend(scratch.visible_ranges.iter().map(|&(prefix_len, a, b)| {
                    RowVisibility {
                        prefix_len,
                        extra: &scratch.visible_slots[a..b],
                        extra_positions: &scratch.visible_positions[a..b],
                    }
                }));
                &heap
            };
        let shape = AttentionShape {
            n_heads,
            n_kv_heads,
            head_dim,
            scale: 1.0 / (head_dim as f32).sqrt(),
        };
        let q_dim = n_heads * head_dim;
        let qv = &mem.typed::<f32>(q)?[..n * q_dim];
        let (kc, vc) = (mem.typed::<f16>(k_cache)?, mem.typed::<f16>(v_cache)?);
        let job = AttentionJob::new(self.kernels, &shape, qv, kc, vc, rows)?;
        let out = mem.shared_out(out, job.out_len())?;
        let step = job.tasks() / (2 * work.threads());
        while let Some(range) = work.take(me, step) {
            // SAFETY: `out` wraps this op's output of `out_len` elements, and
            // the work counter hands each task to exactly one thread.
            unsafe { job.run_tasks(out, range) };
        }
        Ok(())
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
                coordgen_kernels::ops::rms_norm_rows(&x[..n * c], w, eps, &mut out[..n * c]);
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
                let s = scratch
                    .matmul
                    .first_mut()
                    .ok_or_else(|| bad(g, "matmul scratch slot missing"))?;
                matmul(self.kernels, &wm, m, k, x, n, out, s)?;
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
                let pos = pos
                    .get(..n)
                    .ok_or_else(|| bad(g, "rope positions shorter than its rows"))?;
                let angles = scratch.rope.angles(pos, head_dim, theta_base)?;
                for (r, row_angles) in angles.chunks_exact((head_dim / 2).max(1)).enumerate() {
                    coordgen_kernels::ops::rope_norm_with_angles(
                        &mut out[r * c..(r + 1) * c],
                        n_heads,
                        head_dim,
                        row_angles,
                    )?;
                }
            }
            Op::Attention { .. } => {
                // Normally a phase of its own; here on this thread alone.
                self.prepare_attention(mem, op, params, scratch)?;
                let work = WorkSplit::new(1);
                work.reset(attention_tasks(op, scratch.visible_ranges.len()));
                self.run_attention_tasks(mem, op, params, scratch, &work, 0)?;
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
