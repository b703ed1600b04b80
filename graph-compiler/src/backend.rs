//! The contract between the graph compiler and a backend.
//!
//! A backend answers which ops it supports, compiles a [`Subgraph`] against
//! the model's weights, and runs it over a session's buffers. Buffers that
//! cross subgraph boundaries ([`SessionState`]) belong to the session, so the
//! output of one subgraph is the input of the next without a copy.

use crate::config::WeightCatalog;
use crate::ir::{DType, Op, Subgraph};
use crate::lower::Plan;
use crate::partition::Piece;
use crate::Error;
use std::ops::Range;
use std::sync::Arc;

/// Bytes of one weight, viewed in place in memory someone else owns (the
/// memory-mapped GGUF file).
#[derive(Clone)]
pub struct WeightBytes {
    owner: Arc<dyn AsRef<[u8]> + Send + Sync>,
    range: Range<usize>,
}

impl WeightBytes {
    /// `None` when `range` is not inside `owner`.
    pub fn new(owner: Arc<dyn AsRef<[u8]> + Send + Sync>, range: Range<usize>) -> Option<Self> {
        let len = (*owner).as_ref().len();
        (range.start <= range.end && range.end <= len).then_some(WeightBytes { owner, range })
    }

    pub fn as_slice(&self) -> &[u8] {
        // The range was checked against the owner in `new`, and owners never shrink.
        (*self.owner)
            .as_ref()
            .get(self.range.clone())
            .unwrap_or(&[])
    }
}

/// Weights by name: dtype, shape and bytes.
pub trait WeightSource: WeightCatalog + Send + Sync {
    fn bytes(&self, name: &str) -> Option<WeightBytes>;
}

/// The bytes of weight `name` for tensor `t` of a graph, checked against the
/// tensor's dtype, shape and size; the error says what differs (for a
/// backend to wrap with the weight's name).
pub fn weight_bytes_for(
    weights: &dyn WeightSource,
    name: &str,
    t: &crate::TensorDecl,
) -> Result<WeightBytes, String> {
    let desc = weights
        .describe(name)
        .ok_or_else(|| "not in the model".to_string())?;
    if desc.dtype != t.dtype || desc.shape != t.shape {
        return Err(format!(
            "model has {} {:?}, graph expects {} {:?}",
            desc.dtype, desc.shape, t.dtype, t.shape
        ));
    }
    let bytes = weights.bytes(name).ok_or_else(|| "no data".to_string())?;
    let size = t
        .n_bytes()
        .ok_or_else(|| "its shape is not whole blocks".to_string())?;
    if bytes.as_slice().len() != size {
        return Err(format!("{} bytes, expected {size}", bytes.as_slice().len()));
    }
    Ok(bytes)
}

/// What changes from one run of a static-shape subgraph to the next.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ExecParams {
    /// Rows that hold real tokens; the rest of the bucket is padding.
    pub n_valid: usize,
    /// Tokens already in the KV cache; this run's rows go after them.
    pub past_len: usize,
}

impl ExecParams {
    /// Fails with [`Error::BadParams`] unless `1 ..= graph.width` rows are valid.
    pub fn check(&self, graph: &Subgraph) -> Result<(), Error> {
        if self.n_valid == 0 || self.n_valid > graph.width {
            return Err(Error::BadParams {
                graph: graph.name.clone(),
                message: format!("{} valid rows in a bucket of {}", self.n_valid, graph.width),
            });
        }
        Ok(())
    }
}

/// Host memory for a tensor, 8-byte aligned so it can be viewed as any
/// element type the IR uses: plain heap memory, or memory a backend lent
/// (see [`LentMemory`]), e.g. a host-visible GPU buffer that the device then
/// reads and writes in place, without copies.
#[derive(Default)]
pub struct HostBuffer {
    storage: Storage,
    len: usize,
}

enum Storage {
    Owned(Vec<u64>),
    Lent(LentMemory),
}

impl Default for Storage {
    fn default() -> Self {
        Storage::Owned(Vec::new())
    }
}

/// `len` bytes at `ptr` that a backend lends a session, kept alive by
/// `owner` (which the backend recognizes again when it binds the buffer).
pub struct LentMemory {
    ptr: std::ptr::NonNull<u8>,
    len: usize,
    owner: Arc<dyn std::any::Any + Send + Sync>,
}

// SAFETY: the memory is owned by the `LentMemory` alone (see `new`), like
// a `Vec`'s; moving or sharing it between threads moves or shares that
// exclusive ownership, and `&`/`&mut` access follows the usual borrow rules
// through `HostBuffer`.
unsafe impl Send for LentMemory {}
// SAFETY: as above: shared references only read.
unsafe impl Sync for LentMemory {}

impl LentMemory {
    /// # Safety
    /// `ptr` must be 8-byte aligned and valid for reads and writes of `len`
    /// zero-initialized bytes for as long as `owner` lives, and nothing but
    /// the returned value may access those bytes from the host (a backend
    /// may access them only during a run that borrows the session state).
    pub unsafe fn new(
        ptr: std::ptr::NonNull<u8>,
        len: usize,
        owner: Arc<dyn std::any::Any + Send + Sync>,
    ) -> Self {
        LentMemory { ptr, len, owner }
    }

    /// What keeps the memory alive, for the backend that lent it.
    pub fn owner(&self) -> &Arc<dyn std::any::Any + Send + Sync> {
        &self.owner
    }
}

impl HostBuffer {
    pub fn zeroed(len: usize) -> Self {
        HostBuffer {
            storage: Storage::Owned(vec![0; len.div_ceil(8)]),
            len,
        }
    }

    /// A buffer over lent memory (`None` if it is not 8-byte aligned).
    pub fn lent(memory: LentMemory) -> Option<Self> {
        if !(memory.ptr.as_ptr() as usize).is_multiple_of(8) {
            return None;
        }
        let len = memory.len;
        Some(HostBuffer {
            storage: Storage::Lent(memory),
            len,
        })
    }

    /// The owner of lent memory (`None` for heap memory).
    pub fn lent_owner(&self) -> Option<&Arc<dyn std::any::Any + Send + Sync>> {
        match &self.storage {
            Storage::Lent(m) => Some(m.owner()),
            Storage::Owned(_) => None,
        }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn as_bytes(&self) -> &[u8] {
        match &self.storage {
            Storage::Owned(words) => {
                let bytes: &[u8] = bytemuck::cast_slice(words);
                &bytes[..self.len]
            }
            // SAFETY: valid for `len` bytes while the owner lives (`LentMemory::new`),
            // and `&self` excludes writers.
            Storage::Lent(m) => unsafe { std::slice::from_raw_parts(m.ptr.as_ptr(), m.len) },
        }
    }

    pub fn as_bytes_mut(&mut self) -> &mut [u8] {
        match &mut self.storage {
            Storage::Owned(words) => {
                let bytes: &mut [u8] = bytemuck::cast_slice_mut(words);
                &mut bytes[..self.len]
            }
            // SAFETY: as in `as_bytes`; `&mut self` makes this view exclusive.
            Storage::Lent(m) => unsafe { std::slice::from_raw_parts_mut(m.ptr.as_ptr(), m.len) },
        }
    }

    /// Base pointer, for executors that hand disjoint views to kernels.
    pub fn as_mut_ptr(&mut self) -> *mut u8 {
        self.as_bytes_mut().as_mut_ptr()
    }

    /// Typed view of the whole buffer (`None` if the size is not a multiple).
    pub fn view<T: bytemuck::Pod>(&self) -> Option<&[T]> {
        bytemuck::try_cast_slice(self.as_bytes()).ok()
    }

    pub fn view_mut<T: bytemuck::Pod>(&mut self) -> Option<&mut [T]> {
        bytemuck::try_cast_slice_mut(self.as_bytes_mut()).ok()
    }
}

/// A copy in heap memory: lent memory is never shared by two buffers.
impl Clone for HostBuffer {
    fn clone(&self) -> Self {
        let mut copy = HostBuffer::zeroed(self.len);
        copy.as_bytes_mut().copy_from_slice(self.as_bytes());
        copy
    }
}

impl std::fmt::Debug for HostBuffer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HostBuffer")
            .field("len", &self.len)
            .field("lent", &matches!(self.storage, Storage::Lent(_)))
            .finish()
    }
}

/// A session's buffers: the boundary buffers of its plan, its KV cache and
/// the arena its subgraphs plan their intermediates in. Subgraphs of one
/// session run one after another, so they share one arena.
#[derive(Clone, Debug)]
pub struct SessionState {
    pub boundaries: Vec<HostBuffer>,
    /// Sized for the largest subgraph arena of the plan.
    pub arena: HostBuffer,
    /// Two halves per layer: K then V, each [`crate::kv_capacity`] slots of
    /// `n_kv_heads * head_dim` f16 (K in the blocked layout of
    /// [`crate::KV_SLOT_BLOCK`]).
    pub kv: KvCache,
}

/// A session's KV cache: every layer's K and V half in one allocation.
///
/// Why one: a cache of this size is above the allocator's mmap threshold, so
/// it always gets fresh zero pages that only become resident as tokens fill
/// them. Per-half buffers are small enough for the allocator to recycle
/// freed memory, which `calloc` must then zero, touching (and keeping
/// resident) the whole cache of every new session.
#[derive(Clone, Debug, Default)]
pub struct KvCache {
    buf: HostBuffer,
    half_bytes: usize,
    /// Distance between halves: `half_bytes` plus a few cache lines, so that
    /// the same row of different halves (K and V of a layer, read together)
    /// does not land in the same cache sets.
    half_stride: usize,
    halves: usize,
}

/// Extra bytes between halves (17 cache lines: odd, so strides never align).
const HALF_STAGGER: usize = 17 * 64;

impl KvCache {
    /// `halves` halves of `half_bytes` each (a multiple of 8 keeps every
    /// half 8-byte aligned).
    pub fn zeroed(halves: usize, half_bytes: usize) -> Self {
        Self::zeroed_in(halves, half_bytes, &mut HostBuffer::zeroed)
    }

    /// [`KvCache::zeroed`] in memory from `alloc` (zeroed, `len` bytes).
    pub fn zeroed_in(
        halves: usize,
        half_bytes: usize,
        alloc: &mut dyn FnMut(usize) -> HostBuffer,
    ) -> Self {
        let half_bytes = half_bytes.next_multiple_of(8);
        let half_stride = half_bytes.saturating_add(HALF_STAGGER);
        KvCache {
            buf: alloc(halves.saturating_mul(half_stride)),
            half_bytes,
            half_stride,
            halves,
        }
    }

    /// Number of halves (two per layer).
    pub fn halves(&self) -> usize {
        self.halves
    }

    /// Bytes of one half.
    pub fn half_bytes(&self) -> usize {
        self.half_bytes
    }

    /// Bytes of the whole cache.
    pub fn len(&self) -> usize {
        self.buf.len()
    }

    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    /// Byte offset of half `id` in [`KvCache::buffer`], if it exists.
    pub fn half_offset(&self, id: usize) -> Option<usize> {
        (id < self.halves).then(|| id * self.half_stride)
    }

    /// The one buffer that holds every half.
    pub fn buffer(&self) -> &HostBuffer {
        &self.buf
    }

    /// Half `id` (`2 · layer` for K, `2 · layer + 1` for V), if it exists.
    pub fn half_mut(&mut self, id: usize) -> Option<&mut [u8]> {
        if id >= self.halves {
            return None;
        }
        let start = id * self.half_stride;
        self.buf
            .as_bytes_mut()
            .get_mut(start..start + self.half_bytes)
    }
}

impl SessionState {
    pub fn new(plan: &Plan) -> Self {
        Self::new_in(plan, &mut HostBuffer::zeroed)
    }

    /// A state whose buffers come from `alloc` (zeroed, `len` bytes each):
    /// e.g. memory a GPU backend can bind in place.
    pub fn new_in(plan: &Plan, alloc: &mut dyn FnMut(usize) -> HostBuffer) -> Self {
        let boundaries = plan
            .boundary_decls
            .iter()
            .map(|b| alloc(b.dtype.bytes_for(b.elements).unwrap_or(0)))
            .collect();
        let c = &plan.config;
        let per_half = crate::kv_capacity(plan.options.context_length)
            * c.n_kv_heads
            * c.head_dim
            * DType::F16.block_bytes();
        let kv = KvCache::zeroed_in(2 * c.n_layers, per_half, alloc);
        let arena_bytes = plan
            .buckets
            .iter()
            .flat_map(|b| b.subgraphs())
            .map(|g| g.arena_bytes)
            .max()
            .unwrap_or(0);
        SessionState {
            boundaries,
            arena: alloc(arena_bytes),
            kv,
        }
    }

    /// Bytes held by the state.
    pub fn bytes(&self) -> usize {
        self.boundaries.iter().map(HostBuffer::len).sum::<usize>() + self.kv.len()
    }
}

/// A subgraph compiled for one backend.
pub trait Executable: Send {
    fn name(&self) -> &str;
    fn run(&mut self, state: &mut SessionState, params: &ExecParams) -> Result<(), Error>;
}

/// A compute target.
pub trait Backend: Send + Sync {
    fn name(&self) -> &'static str;
    /// Whether the backend can run `op` as it appears in `graph`.
    fn supports(&self, op: &Op, graph: &Subgraph) -> bool;
    fn compile(
        &self,
        graph: &Subgraph,
        weights: &dyn WeightSource,
    ) -> Result<Box<dyn Executable>, Error>;
    /// Compiles one piece of a partitioned subgraph. The default compiles
    /// the piece's graph like any other; an accelerator overrides it to use
    /// the piece's `inputs` and `outputs` (what crosses to the other
    /// backends) instead of working them out again.
    fn compile_piece(
        &self,
        piece: &Piece,
        weights: &dyn WeightSource,
    ) -> Result<Box<dyn Executable>, Error> {
        self.compile(&piece.graph, weights)
    }
}
