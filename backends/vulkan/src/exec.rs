//! A subgraph (or a piece of one) compiled for Vulkan: device buffers for
//! every tensor it touches, one descriptor set per dispatch, and a command
//! buffer recorded per run (the valid rows and the cached length change the
//! dispatch sizes and push constants), submitted once and waited on with a
//! fence.
//!
//! The session's buffers stay host memory ([`SessionState`]); the
//! executable keeps host-visible, persistently mapped mirrors of the ones
//! it touches. A run copies the tensors the piece reads in, and the ones it
//! hands on back out: the valid rows only, and of the KV cache only the
//! slots up to this run's last one.

use crate::device::Context;
use crate::memory::{Buffer, Placement};
use crate::pipelines::{Pipeline, Pipelines, Shader, PUSH_BYTES, WORKGROUP};
use crate::{Error, WeightStore};
use ash::vk;
use coordgen_graph::{
    memory, DType, ExecParams, Executable, MaskKind, Op, RowSelection, SessionState, Subgraph,
    TensorDecl, TensorId, TensorKind, WeightSource, KV_SLOT_BLOCK,
};
use std::collections::HashMap;
use std::sync::Arc;

/// Bytes of one quantized activation block on the device (`Q8Block` in
/// the shaders: eight words of int8, then d and s as f32).
const Q8_BLOCK_BYTES: usize = 40;

/// Bytes of one Q8_K activation block on the device (`Q8KBlock`: d, 64
/// words of int8, 16 i32 block sums).
const Q8K_BLOCK_BYTES: usize = 324;

/// Bytes of the quantized activations of one row of `k` values for a
/// matrix of `dtype`.
fn act_row_bytes(dtype: DType, k: usize) -> usize {
    if dtype.block_len() == 256 {
        k / 256 * Q8K_BLOCK_BYTES
    } else {
        k / 32 * Q8_BLOCK_BYTES
    }
}

/// Where a tensor lives on the device.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Place {
    /// In the arena mirror at this byte offset.
    Arena(usize),
    /// In the mirror of boundary buffer `id`.
    Boundary(usize),
    /// In the mirror of KV half `id`.
    Kv(usize),
    /// Weight `index` of the executable's weight list.
    Weight(usize),
    /// No op touches it.
    Unused,
}

/// A buffer binding of one dispatch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Binding {
    buffer: vk::Buffer,
    offset: u64,
    range: u64,
}

/// A session buffer an executable binds: in place when the session lent it
/// from this device (zero-copy), else through the executable's mirror.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum Mem {
    Arena,
    Boundary(usize),
    Kv(usize),
}

/// What one binding of a dispatch refers to.
#[derive(Clone, Copy, Debug)]
enum Source {
    /// The executable's own buffers (weights, scratch, tables).
    Fixed(Binding),
    /// A session buffer, resolved per run.
    Session(Mem),
}

/// The memory a [`crate::VulkanBackend`] lends a session: a host-visible,
/// coherent, cached buffer of its device.
pub(crate) struct Lent {
    pub(crate) buffer: Buffer,
    /// The context it belongs to (by address), so another device's
    /// executables never bind it.
    pub(crate) context: usize,
}

/// One recorded step of a run.
enum Step {
    Dispatch {
        pipeline: Arc<Pipeline>,
        set: vk::DescriptorSet,
        sources: Vec<Source>,
        /// Fills the push constants and the group counts for a run.
        shape: Shape,
    },
    /// `vkCmdCopyBuffer` of the selected rows (SelectRows).
    CopyRows {
        src: Source,
        src_offset: u64,
        dst: Source,
        dst_offset: u64,
        row_bytes: u64,
        rows: RowSelection,
    },
}

/// What a run's dispatches depend on.
struct RunShape {
    n: usize,
    past: usize,
    /// Per attention op (by node index): the longest visible list.
    longest: HashMap<usize, usize>,
    /// Per attention op: offset of its rows' table in the visibility buffer.
    vis_offset: HashMap<usize, usize>,
    /// Per RoPE op: offset of its angles (in pairs) in the angle buffer.
    angle_offset: HashMap<usize, usize>,
}

/// A subgraph compiled for the Vulkan device.
pub struct VulkanExecutable {
    ctx: Arc<Context>,
    graph: Subgraph,
    places: Vec<Place>,
    /// Tensors copied in before a run / out after it.
    inputs: Vec<TensorId>,
    outputs: Vec<TensorId>,
    arena: Option<Buffer>,
    boundaries: HashMap<usize, Buffer>,
    kv: HashMap<usize, Buffer>,
    /// Device copies of the weights the graph binds (shared through the store).
    weights: Vec<Arc<Buffer>>,
    angles: Buffer,
    vis: Buffer,
    scores: Buffer,
    act: Buffer,
    steps: Vec<Step>,
    /// Session buffers every step binds, and where the last run bound them
    /// (descriptor sets are rewritten when that changes, i.e. per session).
    mems: Vec<Mem>,
    bound: Vec<Binding>,
    /// Attention ops (node index) and RoPE ops, prepared on the host per run.
    attention_ops: Vec<usize>,
    rope_ops: Vec<usize>,
    descriptor_pool: vk::DescriptorPool,
    command_pool: vk::CommandPool,
    command_buffer: vk::CommandBuffer,
    fence: vk::Fence,
}

/// The session buffer a place is in.
fn mem_of(place: Place) -> Option<Mem> {
    match place {
        Place::Arena(_) => Some(Mem::Arena),
        Place::Boundary(id) => Some(Mem::Boundary(id)),
        Place::Kv(id) => Some(Mem::Kv(id)),
        Place::Weight(_) | Place::Unused => None,
    }
}

fn bad(graph: &Subgraph, message: impl Into<String>) -> Error {
    Error::BadGraph {
        graph: graph.name.clone(),
        message: message.into(),
    }
}

fn vk_err(call: &'static str) -> impl Fn(vk::Result) -> Error {
    move |result| {
        if result == vk::Result::ERROR_DEVICE_LOST {
            Error::DeviceLost
        } else {
            Error::Vulkan { call, result }
        }
    }
}

/// Rows of `t` that hold data in a run of `n` valid rows (the CPU's rule:
/// a tensor whose first dimension is the bucket width has `n` rows).
fn active_rows(graph: &Subgraph, t: &TensorDecl, n: usize) -> usize {
    let rows = t.shape.first().copied().unwrap_or(1);
    if rows == graph.width {
        rows.min(n)
    } else {
        rows
    }
}

fn row_bytes(t: &TensorDecl) -> usize {
    let rows = t.shape.first().copied().unwrap_or(1).max(1);
    t.n_bytes().unwrap_or(0) / rows
}

fn cols(t: &TensorDecl) -> usize {
    t.shape.get(1).copied().unwrap_or(0)
}

/// Runs `record` in a one-time command buffer and waits for it.
pub(crate) fn one_shot(
    ctx: &Arc<Context>,
    record: impl FnOnce(&ash::Device, vk::CommandBuffer),
) -> Result<(), Error> {
    let device = &ctx.device;
    let pool_info = vk::CommandPoolCreateInfo::default().queue_family_index(ctx.queue_family);
    // SAFETY: valid create infos on a live device; everything created here
    // is destroyed before returning, after the fence wait.
    unsafe {
        let pool = device
            .create_command_pool(&pool_info, None)
            .map_err(vk_err("vkCreateCommandPool"))?;
        let result = (|| {
            let alloc = vk::CommandBufferAllocateInfo::default()
                .command_pool(pool)
                .level(vk::CommandBufferLevel::PRIMARY)
                .command_buffer_count(1);
            let cmd = *device
                .allocate_command_buffers(&alloc)
                .map_err(vk_err("vkAllocateCommandBuffers"))?
                .first()
                .ok_or(Error::DeviceLost)?;
            let begin = vk::CommandBufferBeginInfo::default()
                .flags(vk::CommandBufferUsageFlags::ONE_TIME_SUBMIT);
            device
                .begin_command_buffer(cmd, &begin)
                .map_err(vk_err("vkBeginCommandBuffer"))?;
            record(device, cmd);
            device
                .end_command_buffer(cmd)
                .map_err(vk_err("vkEndCommandBuffer"))?;
            let fence = device
                .create_fence(&vk::FenceCreateInfo::default(), None)
                .map_err(vk_err("vkCreateFence"))?;
            let waited = submit_and_wait(ctx, cmd, fence);
            device.destroy_fence(fence, None);
            waited
        })();
        device.destroy_command_pool(pool, None);
        result
    }
}

/// Submits `cmd`, waits for `fence`, then checks the validation log.
fn submit_and_wait(ctx: &Context, cmd: vk::CommandBuffer, fence: vk::Fence) -> Result<(), Error> {
    if ctx.is_lost() {
        return Err(Error::DeviceLost);
    }
    let lost = |e: Error| {
        if matches!(e, Error::DeviceLost) {
            ctx.mark_lost();
        }
        e
    };
    let cmds = [cmd];
    let submit = [vk::SubmitInfo::default().command_buffers(&cmds)];
    {
        let queue = ctx.queue.lock().unwrap_or_else(|p| p.into_inner());
        // SAFETY: the queue is externally synchronized by its mutex; the
        // command buffer is fully recorded and the fence unsignaled.
        unsafe { ctx.device.queue_submit(*queue, &submit, fence) }
            .map_err(vk_err("vkQueueSubmit"))
            .map_err(lost)?;
    }
    // SAFETY: the fence belongs to this device.
    unsafe { ctx.device.wait_for_fences(&[fence], true, u64::MAX) }
        .map_err(vk_err("vkWaitForFences"))
        .map_err(lost)?;
    ctx.check_validation()
}

/// The global barrier between steps: every compute or transfer write
/// before it is visible to every compute or transfer access after it.
fn barrier(device: &ash::Device, cmd: vk::CommandBuffer, to_host: bool) {
    let stages = vk::PipelineStageFlags::COMPUTE_SHADER | vk::PipelineStageFlags::TRANSFER;
    let (dst_stage, dst_access) = if to_host {
        (vk::PipelineStageFlags::HOST, vk::AccessFlags::HOST_READ)
    } else {
        (
            stages,
            vk::AccessFlags::SHADER_READ
                | vk::AccessFlags::SHADER_WRITE
                | vk::AccessFlags::TRANSFER_READ
                | vk::AccessFlags::TRANSFER_WRITE,
        )
    };
    let memory = [vk::MemoryBarrier::default()
        .src_access_mask(vk::AccessFlags::SHADER_WRITE | vk::AccessFlags::TRANSFER_WRITE)
        .dst_access_mask(dst_access)];
    // SAFETY: `cmd` is in the recording state.
    unsafe {
        device.cmd_pipeline_barrier(
            cmd,
            stages,
            dst_stage,
            vk::DependencyFlags::empty(),
            &memory,
            &[],
            &[],
        )
    };
}

/// Native-endian i32 values of `bytes` (a partial last value is ignored).
fn i32s(bytes: &[u8]) -> Vec<i32> {
    bytes
        .chunks_exact(4)
        .map(|c| i32::from_ne_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

fn groups(n: usize) -> u32 {
    n.div_ceil(WORKGROUP as usize) as u32
}

/// Push constants from a list of words (the rest zero).
fn push(words: &[u32]) -> [u32; 16] {
    let mut out = [0u32; 16];
    for (o, &w) in out.iter_mut().zip(words) {
        *o = w;
    }
    out
}

/// Dispatch shape from push constants and group counts.
type Shape = Box<dyn Fn(&RunShape) -> ([u32; 16], [u32; 3]) + Send + Sync>;

/// The row chunks of a `rows × row_bytes` weight that each fit one binding:
/// `(first row, rows, byte offset)`; chunk offsets respect the device's
/// storage-buffer offset alignment.
fn weight_chunks(
    rows: usize,
    row_bytes: usize,
    max_binding: u64,
    align: u64,
) -> Option<Vec<(usize, usize, u64)>> {
    let row = row_bytes as u64;
    if row == 0 || row > max_binding {
        return None;
    }
    let mut per = (max_binding / row) as usize;
    let align = align.max(1);
    // Chunk starts must be multiples of `align` bytes.
    let step = (align / gcd(row, align)) as usize;
    per -= per % step;
    if per == 0 {
        return None;
    }
    let mut chunks = Vec::new();
    let mut first = 0;
    while first < rows {
        let count = per.min(rows - first);
        chunks.push((first, count, first as u64 * row));
        first += count;
    }
    Some(chunks)
}

fn gcd(a: u64, b: u64) -> u64 {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

/// The chunks a weight is bound in (see [`weight_chunks`]).
pub(crate) fn chunks_for(ctx: &Context, t: &TensorDecl) -> Option<Vec<(usize, usize, u64)>> {
    let rows = t.shape.first().copied().unwrap_or(1);
    weight_chunks(
        rows,
        row_bytes(t),
        ctx.max_binding_bytes,
        ctx.limits.min_storage_buffer_offset_alignment,
    )
}

/// The weight-type variant of the embedding shader (the matmul shaders
/// take the first three, and the K-quants minus 5).
pub(crate) fn block_variant(dtype: DType) -> Option<u32> {
    match dtype {
        DType::Q4_0 => Some(0),
        DType::Q4_1 => Some(1),
        DType::Q8_0 => Some(2),
        DType::F16 => Some(3),
        DType::F32 => Some(4),
        DType::Q4_K => Some(5),
        DType::Q5_K => Some(6),
        DType::Q6_K => Some(7),
        DType::BF16 | DType::I32 | DType::U8 => None,
    }
}

impl VulkanExecutable {
    pub(crate) fn new(
        ctx: &Arc<Context>,
        pipelines: &Pipelines,
        store: &WeightStore,
        graph: &Subgraph,
        inputs: Vec<TensorId>,
        outputs: Vec<TensorId>,
        weights: &dyn WeightSource,
    ) -> Result<Self, Error> {
        memory::validate_arena(graph).map_err(|e| bad(graph, e.to_string()))?;
        let n_tensors = graph.tensors.len();
        let mut used = vec![false; n_tensors];
        for op in &graph.nodes {
            for t in op.inputs().into_iter().chain([op.output()]) {
                *used
                    .get_mut(t.0)
                    .ok_or_else(|| bad(graph, format!("{} names no tensor", op.name())))? = true;
            }
        }
        let mut places = Vec::with_capacity(n_tensors);
        let mut weight_buffers = Vec::new();
        let mut boundaries = HashMap::new();
        let mut kv = HashMap::new();
        let mut uses_arena = false;
        for (ti, t) in graph.tensors.iter().enumerate() {
            if !used[ti] {
                places.push(Place::Unused);
                continue;
            }
            let size = t.n_bytes().ok_or_else(|| {
                bad(
                    graph,
                    format!("{} has a shape that is not whole blocks", t.name),
                )
            })?;
            places.push(match &t.kind {
                TensorKind::Weight { name } => {
                    weight_buffers.push(store.get(name, t, weights)?);
                    Place::Weight(weight_buffers.len() - 1)
                }
                TensorKind::Boundary { id } => {
                    let grow = boundaries.get(&id.0).map_or(0, |b: &Buffer| b.size());
                    if (size as u64) > grow {
                        boundaries.insert(
                            id.0,
                            Buffer::new(ctx, &t.name, size as u64, Placement::Shared)?,
                        );
                    }
                    Place::Boundary(id.0)
                }
                TensorKind::KvCache { layer, half } => {
                    let index = half.index(*layer);
                    if let std::collections::hash_map::Entry::Vacant(slot) = kv.entry(index) {
                        slot.insert(Buffer::new(ctx, &t.name, size as u64, Placement::Shared)?);
                    }
                    Place::Kv(index)
                }
                TensorKind::Intermediate { offset } => {
                    if offset % 4 != 0 {
                        return Err(bad(graph, format!("{} is not 4-byte aligned", t.name)));
                    }
                    uses_arena = true;
                    Place::Arena(*offset)
                }
            });
        }
        let arena = if uses_arena {
            Some(Buffer::new(
                ctx,
                "arena",
                graph.arena_bytes as u64,
                Placement::Shared,
            )?)
        } else {
            None
        };

        // Per-run tables and scratch, sized for the whole bucket.
        let width = graph.width;
        let mut act_bytes = 0usize;
        let mut angle_pairs = 0usize;
        let mut vis_words = 0usize;
        let mut score_floats = 0usize;
        let mut sets_needed = 0u32;
        let mut descriptors = 0u32;
        for op in &graph.nodes {
            match *op {
                Op::MatMul { w, .. } => {
                    let wd = &graph.tensors[w.0];
                    let chunks = chunks_for(ctx, wd)
                        .ok_or_else(|| bad(graph, format!("{} rows exceed a binding", wd.name)))?
                        .len() as u32;
                    if wd.dtype.is_quantized() {
                        act_bytes = act_bytes.max(width * act_row_bytes(wd.dtype, cols(wd)));
                        sets_needed += 1;
                        descriptors += 2;
                    }
                    sets_needed += chunks;
                    descriptors += 3 * chunks;
                }
                Op::Embedding { table, .. } => {
                    let td = &graph.tensors[table.0];
                    let chunks = chunks_for(ctx, td)
                        .ok_or_else(|| bad(graph, format!("{} rows exceed a binding", td.name)))?
                        .len() as u32;
                    sets_needed += chunks;
                    descriptors += 3 * chunks;
                }
                Op::Rope { head_dim, .. } => {
                    angle_pairs += width * head_dim / 2;
                    sets_needed += 1;
                    descriptors += 3;
                }
                Op::Attention {
                    k_cache, n_heads, ..
                } => {
                    let capacity = graph.tensors[k_cache.0].shape[0];
                    vis_words += 3 * width + 2 * width * width;
                    score_floats = score_floats.max(width * n_heads * capacity);
                    sets_needed += 4;
                    descriptors += 14;
                }
                Op::SelectRows { .. } => {}
                _ => {
                    sets_needed += 1;
                    descriptors += 3;
                }
            }
        }
        let act = Buffer::new(ctx, "q8 activations", act_bytes as u64, Placement::Device)?;
        let angles = Buffer::new(
            ctx,
            "rope angles",
            (angle_pairs * 8) as u64,
            Placement::Shared,
        )?;
        let vis = Buffer::new(ctx, "visibility", (vis_words * 4) as u64, Placement::Shared)?;
        let scores = Buffer::new(ctx, "scores", (score_floats * 4) as u64, Placement::Device)?;

        let device = &ctx.device;
        let pool_sizes = [vk::DescriptorPoolSize::default()
            .ty(vk::DescriptorType::STORAGE_BUFFER)
            .descriptor_count(descriptors.max(1))];
        let pool_info = vk::DescriptorPoolCreateInfo::default()
            .max_sets(sets_needed.max(1))
            .pool_sizes(&pool_sizes);
        // SAFETY: valid create infos on a live device. The objects are owned
        // by the executable (destroyed in Drop) from the moment it exists;
        // until then a failure leaks nothing because `Owned` destroys them.
        let mut owned = Owned::new(ctx.clone());
        owned.descriptor_pool = unsafe { device.create_descriptor_pool(&pool_info, None) }
            .map_err(vk_err("vkCreateDescriptorPool"))?;
        let cmd_pool_info = vk::CommandPoolCreateInfo::default()
            .queue_family_index(ctx.queue_family)
            .flags(vk::CommandPoolCreateFlags::RESET_COMMAND_BUFFER);
        // SAFETY: as above.
        owned.command_pool = unsafe { device.create_command_pool(&cmd_pool_info, None) }
            .map_err(vk_err("vkCreateCommandPool"))?;
        let alloc = vk::CommandBufferAllocateInfo::default()
            .command_pool(owned.command_pool)
            .level(vk::CommandBufferLevel::PRIMARY)
            .command_buffer_count(1);
        // SAFETY: the pool was just created.
        let command_buffer = *unsafe { device.allocate_command_buffers(&alloc) }
            .map_err(vk_err("vkAllocateCommandBuffers"))?
            .first()
            .ok_or(Error::DeviceLost)?;
        // SAFETY: as above.
        owned.fence = unsafe { device.create_fence(&vk::FenceCreateInfo::default(), None) }
            .map_err(vk_err("vkCreateFence"))?;

        let mut exe = VulkanExecutable {
            ctx: ctx.clone(),
            graph: graph.clone(),
            places,
            inputs,
            outputs,
            arena,
            boundaries,
            kv,
            weights: weight_buffers,
            angles,
            vis,
            scores,
            act,
            steps: Vec::new(),
            mems: Vec::new(),
            bound: Vec::new(),
            attention_ops: Vec::new(),
            rope_ops: Vec::new(),
            descriptor_pool: owned.descriptor_pool,
            command_pool: owned.command_pool,
            command_buffer,
            fence: owned.fence,
        };
        owned.forget();
        exe.build_steps(pipelines)?;
        let mut mems: Vec<Mem> = exe.places.iter().filter_map(|&p| mem_of(p)).collect();
        mems.sort();
        mems.dedup();
        exe.mems = mems;
        exe.bound = exe
            .mems
            .iter()
            .map(|&m| exe.mirror_binding(m))
            .collect::<Result<_, _>>()?;
        Ok(exe)
    }

    /// The binding of tensor `t` (its whole buffer; arena tensors carry
    /// their offset in the push constants instead) and its element offset
    /// in units of `elem` bytes.
    fn bind(&self, t: TensorId, elem: usize) -> Result<(Source, u32), Error> {
        let missing = || bad(&self.graph, format!("tensor {} has no device buffer", t.0));
        match self.places.get(t.0).copied() {
            Some(Place::Arena(offset)) => Ok((Source::Session(Mem::Arena), (offset / elem) as u32)),
            Some(Place::Boundary(id)) => Ok((Source::Session(Mem::Boundary(id)), 0)),
            Some(Place::Kv(id)) => Ok((Source::Session(Mem::Kv(id)), 0)),
            Some(Place::Weight(i)) => {
                Ok((Self::whole(self.weights.get(i).ok_or_else(missing)?), 0))
            }
            _ => Err(missing()),
        }
    }

    fn weight_binding(&self, t: TensorId, offset: u64, range: u64) -> Result<Source, Error> {
        match self.places.get(t.0).copied() {
            Some(Place::Weight(i)) => {
                let buffer = self
                    .weights
                    .get(i)
                    .ok_or_else(|| bad(&self.graph, "weight missing"))?;
                Ok(Source::Fixed(Binding {
                    buffer: buffer.buffer,
                    offset,
                    range,
                }))
            }
            _ => Err(bad(&self.graph, format!("tensor {} is not a weight", t.0))),
        }
    }

    fn whole(buffer: &Buffer) -> Source {
        Source::Fixed(Binding {
            buffer: buffer.buffer,
            offset: 0,
            range: vk::WHOLE_SIZE,
        })
    }

    /// The executable's mirror of session buffer `mem`.
    fn mirror_binding(&self, mem: Mem) -> Result<Binding, Error> {
        let buffer = match mem {
            Mem::Arena => self.arena.as_ref(),
            Mem::Boundary(id) => self.boundaries.get(&id),
            Mem::Kv(id) => self.kv.get(&id),
        };
        let buffer = buffer.ok_or_else(|| bad(&self.graph, format!("no mirror of {mem:?}")))?;
        Ok(Binding {
            buffer: buffer.buffer,
            offset: 0,
            range: vk::WHOLE_SIZE,
        })
    }

    /// Session buffer `mem` in place, when the session lent it from this
    /// device and its offset suits a binding.
    fn session_binding(&self, state: &SessionState, mem: Mem) -> Option<Binding> {
        let (host, offset, range) = match mem {
            Mem::Arena => (&state.arena, 0, vk::WHOLE_SIZE),
            Mem::Boundary(id) => (state.boundaries.get(id)?, 0, vk::WHOLE_SIZE),
            Mem::Kv(id) => (
                state.kv.buffer(),
                state.kv.half_offset(id)? as u64,
                state.kv.half_bytes() as u64,
            ),
        };
        let lent = host.lent_owner()?.downcast_ref::<Lent>()?;
        let aligned =
            offset.is_multiple_of(self.ctx.limits.min_storage_buffer_offset_alignment.max(1));
        (lent.context == Arc::as_ptr(&self.ctx) as usize && aligned).then_some(Binding {
            buffer: lent.buffer.buffer,
            offset,
            range,
        })
    }

    /// Where a source points under the current bindings.
    fn resolve(&self, source: Source) -> Binding {
        match source {
            Source::Fixed(b) => b,
            Source::Session(mem) => self
                .mems
                .iter()
                .position(|&m| m == mem)
                .and_then(|i| self.bound.get(i).copied())
                .unwrap_or(Binding {
                    buffer: vk::Buffer::null(),
                    offset: 0,
                    range: 0,
                }),
        }
    }

    /// Binds each session buffer in place where the session lent it, else
    /// its mirror; rewrites the descriptor sets when that changed. Returns
    /// which session buffers are bound in place.
    fn bind_session(&mut self, state: &SessionState) -> Result<Vec<bool>, Error> {
        let mut in_place = Vec::with_capacity(self.mems.len());
        let mut bound = Vec::with_capacity(self.mems.len());
        for &mem in &self.mems {
            match self.session_binding(state, mem) {
                Some(b) => {
                    in_place.push(true);
                    bound.push(b);
                }
                None => {
                    in_place.push(false);
                    bound.push(self.mirror_binding(mem)?);
                }
            }
        }
        if bound != self.bound {
            self.bound = bound;
            for step in &self.steps {
                if let Step::Dispatch { set, sources, .. } = step {
                    let bindings: Vec<Binding> = sources.iter().map(|&s| self.resolve(s)).collect();
                    self.write_set(*set, &bindings);
                }
            }
        }
        Ok(in_place)
    }

    fn count_copied(&self, bytes: usize) {
        self.ctx
            .copied
            .fetch_add(bytes as u64, std::sync::atomic::Ordering::Relaxed);
    }

    /// Whether tensor `t` lives in a session buffer bound in place.
    fn in_place(&self, t: TensorId, in_place: &[bool]) -> bool {
        mem_of(self.places[t.0])
            .and_then(|m| self.mems.iter().position(|&x| x == m))
            .and_then(|i| in_place.get(i).copied())
            .unwrap_or(false)
    }

    /// Allocates and writes one descriptor set.
    fn descriptor_set(
        &self,
        pipeline: &Pipeline,
        bindings: &[Binding],
    ) -> Result<vk::DescriptorSet, Error> {
        let set = self.allocate_set(pipeline)?;
        self.write_set(set, bindings);
        Ok(set)
    }

    fn allocate_set(&self, pipeline: &Pipeline) -> Result<vk::DescriptorSet, Error> {
        let layouts = [pipeline.set_layout];
        let alloc = vk::DescriptorSetAllocateInfo::default()
            .descriptor_pool(self.descriptor_pool)
            .set_layouts(&layouts);
        // SAFETY: the pool was sized for every set of the graph.
        let set = *unsafe { self.ctx.device.allocate_descriptor_sets(&alloc) }
            .map_err(vk_err("vkAllocateDescriptorSets"))?
            .first()
            .ok_or(Error::DeviceLost)?;
        Ok(set)
    }

    /// Points the bindings of `set` at `bindings` (no run is pending: each
    /// run waits for its fence).
    fn write_set(&self, set: vk::DescriptorSet, bindings: &[Binding]) {
        let infos: Vec<[vk::DescriptorBufferInfo; 1]> = bindings
            .iter()
            .map(|b| {
                [vk::DescriptorBufferInfo::default()
                    .buffer(b.buffer)
                    .offset(b.offset)
                    .range(b.range)]
            })
            .collect();
        let writes: Vec<_> = infos
            .iter()
            .enumerate()
            .map(|(i, info)| {
                vk::WriteDescriptorSet::default()
                    .dst_set(set)
                    .dst_binding(i as u32)
                    .descriptor_type(vk::DescriptorType::STORAGE_BUFFER)
                    .buffer_info(info)
            })
            .collect();
        // SAFETY: the set and every buffer exist and outlive the set's use
        // (session buffers outlive the run that binds them); the set is not
        // in use by a pending command buffer.
        unsafe { self.ctx.device.update_descriptor_sets(&writes, &[]) };
    }

    fn dispatch(
        &mut self,
        pipelines: &Pipelines,
        shader: Shader,
        variant: u32,
        sources: &[Source],
        shape: Shape,
    ) -> Result<(), Error> {
        let pipeline = pipelines.get(shader, variant)?;
        if sources.len() != shader.bindings() as usize {
            return Err(bad(
                &self.graph,
                format!("{} takes {} buffers", shader.name(), shader.bindings()),
            ));
        }
        // Written for real by the first run's `bind_session`; mirrors until then.
        let bindings: Vec<Binding> = sources
            .iter()
            .map(|&s| match s {
                Source::Fixed(b) => Ok(b),
                Source::Session(m) => self.mirror_binding(m),
            })
            .collect::<Result<_, _>>()?;
        let set = self.descriptor_set(&pipeline, &bindings)?;
        self.steps.push(Step::Dispatch {
            pipeline,
            set,
            sources: sources.to_vec(),
            shape,
        });
        Ok(())
    }

    /// Lowers every op to its dispatches.
    fn build_steps(&mut self, pipelines: &Pipelines) -> Result<(), Error> {
        let nodes = self.graph.nodes.clone();
        let mut angle_pairs = 0usize;
        let mut vis_words = 0usize;
        for (index, op) in nodes.iter().enumerate() {
            let decl = |t: TensorId| self.graph.tensors[t.0].clone();
            match *op {
                Op::Embedding { table, ids, out } => {
                    let td = decl(table);
                    let c = cols(&decl(out));
                    let variant = block_variant(td.dtype)
                        .ok_or_else(|| bad(&self.graph, format!("embedding of {}", td.dtype)))?;
                    let (ib, ioff) = self.bind(ids, 4)?;
                    let (ob, ooff) = self.bind(out, 4)?;
                    let rb = row_bytes(&td);
                    let chunks = chunks_for(&self.ctx, &td)
                        .ok_or_else(|| bad(&self.graph, "embedding rows exceed a binding"))?;
                    for (first, rows, offset) in chunks {
                        let tb = self.weight_binding(table, offset, (rows * rb) as u64)?;
                        self.dispatch(
                            pipelines,
                            Shader::Embedding,
                            variant,
                            &[tb, ib, ob],
                            Box::new(move |s| {
                                (
                                    push(&[
                                        ioff,
                                        ooff,
                                        s.n as u32,
                                        c as u32,
                                        rb as u32,
                                        first as u32,
                                        rows as u32,
                                    ]),
                                    [groups(s.n * c), 1, 1],
                                )
                            }),
                        )?;
                    }
                }
                Op::RmsNorm {
                    x,
                    weight,
                    eps,
                    out,
                } => {
                    let c = cols(&decl(x));
                    let (xb, xoff) = self.bind(x, 4)?;
                    let (wb, _) = self.bind(weight, 4)?;
                    let (ob, ooff) = self.bind(out, 4)?;
                    let rows_x = decl(x).shape[0];
                    self.dispatch(
                        pipelines,
                        Shader::RmsNorm,
                        0,
                        &[xb, wb, ob],
                        Box::new(move |s| {
                            (
                                push(&[xoff, ooff, c as u32, eps.to_bits()]),
                                [s.n.min(rows_x) as u32, 1, 1],
                            )
                        }),
                    )?;
                }
                Op::MatMul { x, w, out } => {
                    let wd = decl(w);
                    let (m, k) = (wd.shape[0], wd.shape[1]);
                    let (xb, xoff) = self.bind(x, 4)?;
                    let (ob, ooff) = self.bind(out, 4)?;
                    let rows_x = decl(x).shape[0];
                    let chunks = chunks_for(&self.ctx, &wd)
                        .ok_or_else(|| bad(&self.graph, "matmul rows exceed a binding"))?;
                    let rb = row_bytes(&wd);
                    // Quantized weights read the activations quantized
                    // first (`blocks` per row); f16 / f32 read them as they are.
                    let (shader, variant, source, depth, x_at) = if wd.dtype.is_quantized() {
                        let variant = block_variant(wd.dtype)
                            .ok_or_else(|| bad(&self.graph, format!("matmul of {}", wd.dtype)))?;
                        let kquant = wd.dtype.block_len() == 256;
                        let blocks = k / wd.dtype.block_len();
                        let act = Self::whole(&self.act);
                        self.dispatch(
                            pipelines,
                            if kquant {
                                Shader::QuantizeQ8K
                            } else {
                                Shader::QuantizeQ8
                            },
                            0,
                            &[xb, act],
                            Box::new(move |s| {
                                let n = s.n.min(rows_x);
                                (
                                    push(&[xoff, n as u32, blocks as u32]),
                                    [groups(n * blocks), 1, 1],
                                )
                            }),
                        )?;
                        if kquant {
                            (Shader::MatmulK, variant - 5, act, blocks, 0)
                        } else {
                            (Shader::MatmulQ, variant, act, blocks, 0)
                        }
                    } else {
                        let shader = match wd.dtype {
                            DType::F16 => Shader::MatmulF16,
                            DType::F32 => Shader::MatmulF32,
                            other => return Err(bad(&self.graph, format!("matmul of {other}"))),
                        };
                        (shader, 0, xb, k, xoff)
                    };
                    for (first, rows, offset) in chunks {
                        let wb = self.weight_binding(w, offset, (rows * rb) as u64)?;
                        self.dispatch(
                            pipelines,
                            shader,
                            variant,
                            &[wb, source, ob],
                            Box::new(move |s| {
                                let n = s.n.min(rows_x);
                                let words =
                                    [0, rows, first, m, depth, n, ooff as usize, x_at as usize];
                                (push(&words.map(|w| w as u32)), [groups(rows), n as u32, 1])
                            }),
                        )?;
                    }
                }
                Op::Rope {
                    x,
                    n_heads,
                    head_dim,
                    out,
                    ..
                } => {
                    let (xb, xoff) = self.bind(x, 4)?;
                    let (ob, ooff) = self.bind(out, 4)?;
                    let ab = Self::whole(&self.angles);
                    let rows_x = decl(x).shape[0];
                    self.rope_ops.push(index);
                    angle_pairs += self.graph.width * head_dim / 2;
                    self.dispatch(
                        pipelines,
                        Shader::Rope,
                        0,
                        &[xb, ab, ob],
                        Box::new(move |s| {
                            let n = s.n.min(rows_x);
                            let at = s.angle_offset.get(&index).copied().unwrap_or(0);
                            (
                                push(&[
                                    xoff,
                                    ooff,
                                    at as u32,
                                    n as u32,
                                    n_heads as u32,
                                    head_dim as u32,
                                ]),
                                [groups(n * n_heads * head_dim / 2), 1, 1],
                            )
                        }),
                    )?;
                }
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
                } => {
                    let (qb, qoff) = self.bind(q, 4)?;
                    let (kb, koff) = self.bind(k, 4)?;
                    let (vb, voff) = self.bind(v, 4)?;
                    let (kcb, _) = self.bind(k_cache, 2)?;
                    let (vcb, _) = self.bind(v_cache, 2)?;
                    let (ob, ooff) = self.bind(out, 4)?;
                    let visb = Self::whole(&self.vis);
                    let sb = Self::whole(&self.scores);
                    let kv_dim = n_kv_heads * head_dim;
                    let scale = 1.0f32 / (head_dim as f32).sqrt();
                    self.attention_ops.push(index);
                    vis_words += 3 * self.graph.width + 2 * self.graph.width * self.graph.width;
                    self.dispatch(
                        pipelines,
                        Shader::KvStore,
                        0,
                        &[kb, vb, kcb, vcb],
                        Box::new(move |s| {
                            (
                                push(&[koff, voff, s.n as u32, kv_dim as u32, s.past as u32]),
                                [groups(s.n * kv_dim), 1, 1],
                            )
                        }),
                    )?;
                    let longest = move |s: &RunShape| s.longest.get(&index).copied().unwrap_or(0);
                    let vis_at =
                        move |s: &RunShape| s.vis_offset.get(&index).copied().unwrap_or(0) as u32;
                    self.dispatch(
                        pipelines,
                        Shader::AttnScores,
                        0,
                        &[visb, qb, kcb, sb],
                        Box::new(move |s| {
                            let l = longest(s);
                            (
                                push(&[
                                    vis_at(s),
                                    qoff,
                                    n_heads as u32,
                                    n_kv_heads as u32,
                                    head_dim as u32,
                                    l as u32,
                                    scale.to_bits(),
                                ]),
                                [groups(l), n_heads as u32, s.n as u32],
                            )
                        }),
                    )?;
                    self.dispatch(
                        pipelines,
                        Shader::AttnSoftmax,
                        0,
                        &[visb, sb],
                        Box::new(move |s| {
                            (
                                push(&[vis_at(s), s.n as u32, n_heads as u32, longest(s) as u32]),
                                [groups(s.n * n_heads), 1, 1],
                            )
                        }),
                    )?;
                    self.dispatch(
                        pipelines,
                        Shader::AttnValues,
                        0,
                        &[visb, sb, vcb, ob],
                        Box::new(move |s| {
                            (
                                push(&[
                                    vis_at(s),
                                    ooff,
                                    n_heads as u32,
                                    n_kv_heads as u32,
                                    head_dim as u32,
                                    longest(s) as u32,
                                ]),
                                [groups(head_dim), n_heads as u32, s.n as u32],
                            )
                        }),
                    )?;
                }
                Op::SiluMul {
                    gate: a,
                    up: b,
                    out,
                }
                | Op::Add { a, b, out } => {
                    let variant = u32::from(matches!(op, Op::SiluMul { .. }));
                    let od = decl(out);
                    let c = cols(&od);
                    let rows_out = od.shape[0];
                    let (ab, aoff) = self.bind(a, 4)?;
                    let (bb, boff) = self.bind(b, 4)?;
                    let (ob, ooff) = self.bind(out, 4)?;
                    self.dispatch(
                        pipelines,
                        Shader::Eltwise,
                        variant,
                        &[ab, bb, ob],
                        Box::new(move |s| {
                            let len = s.n.min(rows_out) * c;
                            (push(&[aoff, boff, ooff, len as u32]), [groups(len), 1, 1])
                        }),
                    )?;
                }
                Op::SelectRows { x, rows, out } => {
                    let (xb, xoff) = self.bind(x, 1)?;
                    let (ob, ooff) = self.bind(out, 1)?;
                    self.steps.push(Step::CopyRows {
                        src: xb,
                        src_offset: xoff as u64,
                        dst: ob,
                        dst_offset: ooff as u64,
                        row_bytes: (cols(&decl(x)) * 4) as u64,
                        rows,
                    });
                }
            }
        }
        debug_assert!(angle_pairs * 8 <= self.angles.size() as usize);
        debug_assert!(vis_words * 4 <= self.vis.size() as usize);
        Ok(())
    }

    /// The host bytes of tensor `t` in the session (`None` for weights).
    fn host<'s>(&self, state: &'s mut SessionState, t: TensorId) -> Result<&'s mut [u8], Error> {
        let decl = &self.graph.tensors[t.0];
        let size = decl.n_bytes().unwrap_or(0);
        let short = || {
            bad(
                &self.graph,
                format!("the session has no room for {}", decl.name),
            )
        };
        let bytes: &mut [u8] = match self.places[t.0] {
            Place::Arena(offset) => state
                .arena
                .as_bytes_mut()
                .get_mut(offset..offset + size)
                .ok_or_else(short)?,
            Place::Boundary(id) => state
                .boundaries
                .get_mut(id)
                .and_then(|b| b.as_bytes_mut().get_mut(..size))
                .ok_or_else(short)?,
            Place::Kv(id) => state
                .kv
                .half_mut(id)
                .and_then(|b| b.get_mut(..size))
                .ok_or_else(short)?,
            _ => {
                return Err(bad(
                    &self.graph,
                    format!("{} is not session memory", decl.name),
                ))
            }
        };
        Ok(bytes)
    }

    /// The device mirror of tensor `t` and the tensor's byte offset in it.
    fn mirror(&mut self, t: TensorId) -> Result<(&mut [u8], usize), Error> {
        let place = self.places[t.0];
        let name = self.graph.tensors[t.0].name.clone();
        let buffer = match place {
            Place::Arena(_) => self.arena.as_mut(),
            Place::Boundary(id) => self.boundaries.get_mut(&id),
            Place::Kv(id) => self.kv.get_mut(&id),
            _ => None,
        };
        let offset = match place {
            Place::Arena(offset) => offset,
            _ => 0,
        };
        let bytes = buffer
            .and_then(|b| b.mapped_mut())
            .ok_or_else(|| Error::Memory(format!("{name}: mirror is not host-visible")))?;
        Ok((bytes, offset))
    }

    /// The byte range of tensor `t` a run of `n` rows after `past` cached
    /// tokens touches: valid rows, or the KV slots up to this run's last.
    fn live_range(
        &self,
        t: TensorId,
        n: usize,
        past: usize,
        written: bool,
    ) -> std::ops::Range<usize> {
        let decl = &self.graph.tensors[t.0];
        match decl.kind {
            TensorKind::KvCache { half, .. } => {
                let kv_dim = cols(decl);
                let end_slot = past + n;
                match half {
                    coordgen_graph::KvHalf::K => {
                        let block = KV_SLOT_BLOCK * kv_dim * 2;
                        let first = if written {
                            past / KV_SLOT_BLOCK * block
                        } else {
                            0
                        };
                        first..end_slot.div_ceil(KV_SLOT_BLOCK) * block
                    }
                    coordgen_graph::KvHalf::V => {
                        let first = if written { past * kv_dim * 2 } else { 0 };
                        first..end_slot * kv_dim * 2
                    }
                }
            }
            _ => 0..active_rows(&self.graph, decl, n) * row_bytes(decl),
        }
    }

    /// Host-side work of a run: rope angles and attention visibility.
    fn prepare(
        &mut self,
        state: &mut SessionState,
        params: &ExecParams,
    ) -> Result<RunShape, Error> {
        let n = params.n_valid;
        let past = params.past_len;
        let mut shape = RunShape {
            n,
            past,
            longest: HashMap::new(),
            vis_offset: HashMap::new(),
            angle_offset: HashMap::new(),
        };
        let nodes = self.graph.nodes.clone();
        let mut pairs_at = 0usize;
        let mut angles: Vec<[f32; 2]> = Vec::new();
        for &i in &self.rope_ops.clone() {
            let Op::Rope {
                positions,
                head_dim,
                theta_base,
                ..
            } = nodes[i]
            else {
                continue;
            };
            let pos: Vec<i32> = i32s(
                self.host(state, positions)?
                    .get(..n * 4)
                    .ok_or_else(|| bad(&self.graph, "rope positions shorter than its rows"))?,
            );
            let half = head_dim / 2;
            let mut row = vec![(0.0f32, 0.0f32); half];
            shape.angle_offset.insert(i, pairs_at);
            for &p in &pos {
                coordgen_kernels::ops::rope_angles(p, head_dim, theta_base, &mut row)
                    .map_err(|e| bad(&self.graph, e.to_string()))?;
                angles.extend(row.iter().map(|&(s, c)| [s, c]));
            }
            pairs_at += n * half;
        }
        if !angles.is_empty() {
            let bytes: &[u8] = bytemuck::cast_slice(&angles);
            let dst = self
                .angles
                .mapped_mut()
                .ok_or_else(|| Error::Memory("angle table is not host-visible".into()))?;
            dst.get_mut(..bytes.len())
                .ok_or_else(|| Error::Memory("angle table too small".into()))?
                .copy_from_slice(bytes);
        }
        let mut words: Vec<u32> = Vec::new();
        for &i in &self.attention_ops.clone() {
            let Op::Attention {
                q,
                k_cache,
                mask,
                tree_mask,
                ..
            } = nodes[i]
            else {
                continue;
            };
            let width = self.graph.tensors[q.0].shape[0];
            let capacity = self.graph.tensors[k_cache.0].shape[0];
            if n > width || past.checked_add(n).is_none_or(|end| end > capacity) {
                return Err(bad(
                    &self.graph,
                    format!("{past} cached + {n} new tokens exceed the KV cache of {capacity}"),
                ));
            }
            let tree: Option<Vec<u8>> = match (mask, tree_mask) {
                (MaskKind::Tree, Some(m)) => Some(self.host(state, m)?.to_vec()),
                _ => None,
            };
            let base = words.len();
            shape.vis_offset.insert(i, base);
            words.resize(base + 3 * n, 0);
            let mut longest = 0;
            for r in 0..n {
                let start = words.len();
                let prefix_len = match &tree {
                    None => past + r + 1,
                    Some(m) => {
                        coordgen_kernels::attention::tree_row_extras(
                            m,
                            width,
                            n,
                            past,
                            r,
                            |s, p| {
                                words.push(s);
                                words.push(p);
                            },
                        );
                        past
                    }
                };
                let extras = (words.len() - start) / 2;
                words[base + 3 * r] = prefix_len as u32;
                words[base + 3 * r + 1] = start as u32;
                words[base + 3 * r + 2] = extras as u32;
                longest = longest.max(prefix_len + extras);
            }
            shape.longest.insert(i, longest);
        }
        if !words.is_empty() {
            let bytes: &[u8] = bytemuck::cast_slice(&words);
            let dst = self
                .vis
                .mapped_mut()
                .ok_or_else(|| Error::Memory("visibility table is not host-visible".into()))?;
            dst.get_mut(..bytes.len())
                .ok_or_else(|| Error::Memory("visibility table too small".into()))?
                .copy_from_slice(bytes);
        }
        Ok(shape)
    }

    /// Checks the token ids of every embedding before anything runs.
    fn check_ids(&self, state: &mut SessionState, n: usize) -> Result<(), Error> {
        for op in &self.graph.nodes {
            if let Op::Embedding { table, ids, .. } = *op {
                let vocab = self.graph.tensors[table.0].shape[0];
                let ids_bytes = self.host(state, ids)?;
                let ids: Vec<i32> = i32s(
                    ids_bytes
                        .get(..n * 4)
                        .ok_or_else(|| bad(&self.graph, "token ids shorter than the rows"))?,
                );
                if let Some(&id) = ids.iter().find(|&&id| id < 0 || id as usize >= vocab) {
                    return Err(Error::TokenOutOfRange {
                        id: id.into(),
                        vocab,
                    });
                }
            }
        }
        Ok(())
    }

    fn record(&self, shape: &RunShape) -> Result<(), Error> {
        let device = &self.ctx.device;
        let cmd = self.command_buffer;
        let begin = vk::CommandBufferBeginInfo::default()
            .flags(vk::CommandBufferUsageFlags::ONE_TIME_SUBMIT);
        // SAFETY: the command buffer is not pending (every run waits for its
        // fence) and its pool allows resets; all handles recorded belong to
        // this executable, which outlives the submission.
        unsafe {
            device
                .reset_command_buffer(cmd, vk::CommandBufferResetFlags::empty())
                .map_err(vk_err("vkResetCommandBuffer"))?;
            device
                .begin_command_buffer(cmd, &begin)
                .map_err(vk_err("vkBeginCommandBuffer"))?;
            for step in &self.steps {
                match step {
                    Step::Dispatch {
                        pipeline,
                        set,
                        shape: f,
                        ..
                    } => {
                        let (words, g) = f(shape);
                        if g.contains(&0) {
                            continue;
                        }
                        device.cmd_bind_pipeline(
                            cmd,
                            vk::PipelineBindPoint::COMPUTE,
                            pipeline.pipeline,
                        );
                        device.cmd_bind_descriptor_sets(
                            cmd,
                            vk::PipelineBindPoint::COMPUTE,
                            pipeline.layout,
                            0,
                            &[*set],
                            &[],
                        );
                        let bytes: &[u8] = bytemuck::cast_slice(&words);
                        device.cmd_push_constants(
                            cmd,
                            pipeline.layout,
                            vk::ShaderStageFlags::COMPUTE,
                            0,
                            &bytes[..PUSH_BYTES as usize],
                        );
                        device.cmd_dispatch(cmd, g[0], g[1], g[2]);
                    }
                    Step::CopyRows {
                        src,
                        src_offset,
                        dst,
                        dst_offset,
                        row_bytes,
                        rows,
                    } => {
                        let (from, count) = match rows {
                            RowSelection::All => (0, shape.n as u64),
                            RowSelection::LastValid => (shape.n as u64 - 1, 1),
                        };
                        let (src, dst) = (self.resolve(*src), self.resolve(*dst));
                        let region = vk::BufferCopy::default()
                            .src_offset(src.offset + src_offset + from * row_bytes)
                            .dst_offset(dst.offset + *dst_offset)
                            .size(count * row_bytes);
                        device.cmd_copy_buffer(cmd, src.buffer, dst.buffer, &[region]);
                    }
                }
                barrier(device, cmd, false);
            }
            barrier(device, cmd, true);
            device
                .end_command_buffer(cmd)
                .map_err(vk_err("vkEndCommandBuffer"))?;
        }
        Ok(())
    }

    fn run_inner(&mut self, state: &mut SessionState, params: &ExecParams) -> Result<(), Error> {
        let (n, past) = (params.n_valid, params.past_len);
        if state.arena.len() < self.graph.arena_bytes {
            return Err(bad(
                &self.graph,
                "the session arena is smaller than the graph's",
            ));
        }
        self.check_ids(state, n)?;
        let shape = self.prepare(state, params)?;
        let in_place = self.bind_session(state)?;
        for t in self.inputs.clone() {
            if self.in_place(t, &in_place) {
                continue;
            }
            let range = self.live_range(t, n, past, false);
            let src = self.host(state, t)?.get(range.clone()).map(<[u8]>::to_vec);
            let src = src.ok_or_else(|| bad(&self.graph, "input range outside its tensor"))?;
            self.count_copied(range.len());
            let (dst, offset) = self.mirror(t)?;
            dst.get_mut(offset + range.start..offset + range.end)
                .ok_or_else(|| Error::Memory("mirror smaller than its tensor".into()))?
                .copy_from_slice(&src);
        }
        self.record(&shape)?;
        // SAFETY: the fence is not in use (the previous run waited for it).
        unsafe { self.ctx.device.reset_fences(&[self.fence]) }.map_err(vk_err("vkResetFences"))?;
        submit_and_wait(&self.ctx, self.command_buffer, self.fence)?;
        for t in self.outputs.clone() {
            if self.in_place(t, &in_place) {
                continue;
            }
            let range = self.live_range(t, n, past, true);
            self.count_copied(range.len());
            let (src, offset) = self.mirror(t)?;
            let src = src
                .get(offset + range.start..offset + range.end)
                .map(<[u8]>::to_vec)
                .ok_or_else(|| Error::Memory("mirror smaller than its tensor".into()))?;
            self.host(state, t)?
                .get_mut(range)
                .ok_or_else(|| bad(&self.graph, "output range outside its tensor"))?
                .copy_from_slice(&src);
        }
        Ok(())
    }
}

impl Executable for VulkanExecutable {
    fn name(&self) -> &str {
        &self.graph.name
    }

    fn run(
        &mut self,
        state: &mut SessionState,
        params: &ExecParams,
    ) -> Result<(), coordgen_graph::Error> {
        params.check(&self.graph)?;
        self.run_inner(state, params).map_err(Into::into)
    }
}

/// Objects of an executable under construction, destroyed on failure.
struct Owned {
    ctx: Arc<Context>,
    descriptor_pool: vk::DescriptorPool,
    command_pool: vk::CommandPool,
    fence: vk::Fence,
}

impl Owned {
    fn new(ctx: Arc<Context>) -> Self {
        Owned {
            ctx,
            descriptor_pool: vk::DescriptorPool::null(),
            command_pool: vk::CommandPool::null(),
            fence: vk::Fence::null(),
        }
    }

    fn forget(mut self) {
        self.descriptor_pool = vk::DescriptorPool::null();
        self.command_pool = vk::CommandPool::null();
        self.fence = vk::Fence::null();
    }
}

impl Drop for Owned {
    fn drop(&mut self) {
        // SAFETY: created in `VulkanExecutable::new` and never submitted.
        unsafe {
            let d = &self.ctx.device;
            if self.fence != vk::Fence::null() {
                d.destroy_fence(self.fence, None);
            }
            if self.command_pool != vk::CommandPool::null() {
                d.destroy_command_pool(self.command_pool, None);
            }
            if self.descriptor_pool != vk::DescriptorPool::null() {
                d.destroy_descriptor_pool(self.descriptor_pool, None);
            }
        }
    }
}

impl Drop for VulkanExecutable {
    fn drop(&mut self) {
        // SAFETY: every run waited for its fence, so nothing is pending;
        // descriptor sets go with their pool, the command buffer with its.
        unsafe {
            let d = &self.ctx.device;
            d.destroy_fence(self.fence, None);
            d.destroy_command_pool(self.command_pool, None);
            d.destroy_descriptor_pool(self.descriptor_pool, None);
        }
    }
}
