//! # coordgen-vulkan
//!
//! The Vulkan compute backend: ash for the API, gpu-allocator for memory,
//! GLSL compute shaders compiled by glslc to SPIR-V that is committed
//! (`shaders/spv/`) and embedded, so building needs no shader tool.
//!
//! Every kernel follows the CPU backend's arithmetic operation for
//! operation: matmuls quantize their activations to 8-bit blocks exactly as
//! the CPU does and sum the same integer lanes in the same order; norms,
//! RoPE, SwiGLU and attention use the same roundings and summation trees.
//! On a device with IEEE-exact float arithmetic (lavapipe) the results are
//! bitwise the CPU's; each output row depends only on its own input row,
//! so the numerics do not depend on the batch width.
//!
//! What it needs from a device: 8- and 16-bit storage buffers. With f64 the
//! exact shader builds run (single-rounding FMAs, f64 norm and softmax sums,
//! as on the CPU); without it (most mobile GPUs), or with
//! [`VulkanOptions::f32_only`], the builds without f64 run: native FMAs and
//! f32 sums, within a stated tolerance of the CPU.

#![warn(unsafe_op_in_unsafe_fn)]

mod device;
mod exec;
mod memory;
mod pipelines;

use coordgen_graph::{Backend, DType, Executable, HostBuffer, Op, Piece, Subgraph, WeightSource};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

pub use device::{list_devices, Context, DeviceInfo, VulkanOptions};
pub use exec::VulkanExecutable;
pub use memory::{Buffer, Placement};

/// Errors of the Vulkan backend. They reach callers wrapped in
/// [`coordgen_graph::Error::Backend`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    #[error("cannot load the Vulkan loader (libvulkan.so.1): {0}; install a Vulkan driver, e.g. `apt-get install libvulkan1 mesa-vulkan-drivers`")]
    NoLoader(String),
    #[error("no usable Vulkan device: {0}")]
    NoDevice(String),
    #[error(
        "the Khronos validation layer is not installed (apt-get install vulkan-validationlayers)"
    )]
    NoValidationLayer,
    #[error("{call} failed: {result}")]
    Vulkan {
        call: &'static str,
        result: ash::vk::Result,
    },
    #[error("the Vulkan device was lost")]
    DeviceLost,
    #[error("device memory: {0}")]
    Memory(String),
    #[error("shader {0}")]
    Shader(String),
    #[error("pipeline cache {0}")]
    PipelineCache(String),
    #[error("the validation layer reported {} error(s): {}", .0.len(), .0.join(" | "))]
    Validation(Vec<String>),
    #[error("{graph}: {message}")]
    BadGraph { graph: String, message: String },
    #[error("weight {name}: {message}")]
    BadWeight { name: String, message: String },
    #[error("token id {id} is outside the vocabulary of {vocab} tokens")]
    TokenOutOfRange { id: i64, vocab: usize },
}

impl From<Error> for coordgen_graph::Error {
    fn from(e: Error) -> Self {
        coordgen_graph::Error::Backend {
            backend: "vulkan",
            cause: Box::new(e),
        }
    }
}

/// Model weights uploaded to the device, shared by every executable (all
/// buckets bind the same weights, so each is uploaded once).
///
/// Keyed by name and by the bytes' place in memory, so two models with the
/// same tensor names on one backend never share a buffer; each entry keeps
/// its source bytes alive, so that place cannot be reused by other data.
#[derive(Default)]
pub(crate) struct WeightStore {
    ctx: Option<Arc<Context>>,
    buffers: Mutex<HashMap<String, Vec<Uploaded>>>,
}

/// A weight's source bytes and its device copy.
type Uploaded = (coordgen_graph::WeightBytes, Arc<Buffer>);

impl WeightStore {
    pub(crate) fn get(
        &self,
        name: &str,
        tensor: &coordgen_graph::TensorDecl,
        weights: &dyn WeightSource,
    ) -> Result<Arc<Buffer>, Error> {
        let source =
            coordgen_graph::weight_bytes_for(weights, name, tensor).map_err(|message| {
                Error::BadWeight {
                    name: name.into(),
                    message,
                }
            })?;
        let bytes = source.as_slice();
        let same = |b: &coordgen_graph::WeightBytes| {
            std::ptr::eq(b.as_slice().as_ptr(), bytes.as_ptr()) && b.as_slice().len() == bytes.len()
        };
        let mut buffers = self.buffers.lock().unwrap_or_else(|p| p.into_inner());
        let entries = buffers.entry(name.to_string()).or_default();
        if let Some((_, b)) = entries.iter().find(|(src, _)| same(src)) {
            return Ok(b.clone());
        }
        let ctx = self
            .ctx
            .as_ref()
            .ok_or_else(|| Error::Memory("weight store without a device".into()))?;
        let mut buffer = Buffer::new(ctx, name, bytes.len() as u64, Placement::Device)?;
        buffer.upload(0, bytes)?;
        let buffer = Arc::new(buffer);
        entries.push((source.clone(), buffer.clone()));
        Ok(buffer)
    }

    fn bytes(&self) -> u64 {
        let buffers = self.buffers.lock().unwrap_or_else(|p| p.into_inner());
        buffers.values().flatten().map(|(_, b)| b.size()).sum()
    }
}

/// Runs subgraphs on a Vulkan device.
pub struct VulkanBackend {
    ctx: Arc<Context>,
    pipelines: pipelines::Pipelines,
    weights: WeightStore,
}

impl VulkanBackend {
    /// Opens the device `options` asks for.
    pub fn new(options: &VulkanOptions) -> Result<Self, Error> {
        let ctx = Context::new(options)?;
        let pipelines = pipelines::Pipelines::new(&ctx, options.pipeline_cache.clone())?;
        Ok(VulkanBackend {
            weights: WeightStore {
                ctx: Some(ctx.clone()),
                buffers: Mutex::default(),
            },
            pipelines,
            ctx,
        })
    }

    /// The device in use.
    pub fn device(&self) -> &DeviceInfo {
        self.ctx.info()
    }

    pub fn context(&self) -> &Arc<Context> {
        &self.ctx
    }

    /// Treats the device as lost (as after a driver reset): every later
    /// submission fails with [`Error::DeviceLost`], which callers handle by
    /// moving to the CPU.
    pub fn mark_lost(&self) {
        self.ctx.mark_lost();
    }

    /// `len` zeroed bytes of session memory that this device reads and
    /// writes in place (zero-copy): a buffer of unified memory, mapped for
    /// the host. Where the device has no unified memory (a discrete GPU),
    /// plain heap memory: the executables then copy through their mirrors.
    pub fn session_buffer(&self, len: usize) -> Result<HostBuffer, Error> {
        if len == 0 {
            return Ok(HostBuffer::zeroed(0));
        }
        let mut buffer = Buffer::new(&self.ctx, "session", len as u64, Placement::Shared)?;
        if !buffer.unified() {
            return Ok(HostBuffer::zeroed(len));
        }
        let ptr = buffer
            .mapped_mut()
            .and_then(|m| std::ptr::NonNull::new(m.as_mut_ptr()))
            .ok_or_else(|| Error::Memory("session memory is not mapped".into()))?;
        let owner = Arc::new(exec::Lent {
            buffer,
            context: Arc::as_ptr(&self.ctx) as usize,
        });
        // SAFETY: the mapping stays valid while the buffer lives, and the
        // `Lent` owner (in the LentMemory) keeps it alive; `Buffer::new`
        // zeroed it and holds at least `len` bytes; the host reaches it only
        // through the returned HostBuffer, and the device only in the runs
        // of executables that borrow the session state holding it.
        let memory = unsafe { coordgen_graph::LentMemory::new(ptr, len, owner) };
        HostBuffer::lent(memory).ok_or_else(|| Error::Memory("session memory is misaligned".into()))
    }

    /// Bytes copied so far between session memory and the executables'
    /// mirrors: zero while every session lives in memory from
    /// [`VulkanBackend::session_buffer`] on unified memory.
    pub fn bytes_copied(&self) -> u64 {
        self.ctx.copied.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Bytes of weights uploaded so far.
    pub fn weight_bytes(&self) -> u64 {
        self.weights.bytes()
    }

    /// Pipelines created so far (they are created on first use).
    pub fn pipeline_count(&self) -> usize {
        self.pipelines.count()
    }

    /// Persists the pipeline cache (when a path was given); returns its bytes.
    pub fn save_pipeline_cache(&self) -> Result<usize, Error> {
        self.pipelines.save()
    }

    /// Why the backend cannot run `op` in `graph`, or `None` when it can.
    pub fn unsupported_reason(&self, op: &Op, graph: &Subgraph) -> Option<String> {
        let dtype_of = |t| graph.tensor(t).map(|d| d.dtype);
        let fits = |t| {
            graph
                .tensor(t)
                .is_some_and(|d| exec::chunks_for(&self.ctx, d).is_some())
        };
        match *op {
            Op::MatMul { w, .. } => match dtype_of(w) {
                Some(
                    DType::Q4_0
                    | DType::Q4_1
                    | DType::Q8_0
                    | DType::Q4_K
                    | DType::Q5_K
                    | DType::Q6_K
                    | DType::F16
                    | DType::F32,
                ) if fits(w) => None,
                Some(d) if exec::block_variant(d).is_some() => {
                    Some("one weight row exceeds the storage-buffer binding limit".into())
                }
                Some(d) => Some(format!("no {d} matmul kernel")),
                None => Some("no weight".into()),
            },
            Op::Embedding { table, .. } => match dtype_of(table) {
                Some(d) if exec::block_variant(d).is_some() && fits(table) => None,
                Some(d) => Some(format!("no {d} embedding kernel")),
                None => Some("no table".into()),
            },
            _ => None,
        }
    }
}

impl Backend for VulkanBackend {
    fn name(&self) -> &'static str {
        "vulkan"
    }

    /// Every op of the IR, with matmul and embedding weights in Q4_0, Q4_1,
    /// Q8_0, Q4_K, Q5_K, Q6_K, f16 or f32 (BF16 stays on the CPU).
    fn supports(&self, op: &Op, graph: &Subgraph) -> bool {
        self.unsupported_reason(op, graph).is_none()
    }

    fn compile(
        &self,
        graph: &Subgraph,
        weights: &dyn WeightSource,
    ) -> Result<Box<dyn Executable>, coordgen_graph::Error> {
        let pieces = coordgen_graph::partition(graph, &[self as &dyn Backend])?;
        match pieces.as_slice() {
            [piece] => {
                let mut piece = piece.clone();
                piece.graph.name.clone_from(&graph.name);
                self.compile_piece(&piece, weights)
            }
            _ => Err(coordgen_graph::Error::InvalidGraph(format!(
                "{} partitioned into several pieces on one backend",
                graph.name
            ))),
        }
    }

    fn compile_piece(
        &self,
        piece: &Piece,
        weights: &dyn WeightSource,
    ) -> Result<Box<dyn Executable>, coordgen_graph::Error> {
        if let Some(op) = piece
            .graph
            .nodes
            .iter()
            .find(|op| !self.supports(op, &piece.graph))
        {
            return Err(coordgen_graph::Error::Unsupported {
                backend: "vulkan",
                op: op.name(),
                graph: piece.graph.name.clone(),
            });
        }
        let exe = VulkanExecutable::new(
            &self.ctx,
            &self.pipelines,
            &self.weights,
            &piece.graph,
            piece.inputs.clone(),
            piece.outputs.clone(),
            weights,
        )?;
        Ok(Box::new(exe))
    }
}

impl Drop for VulkanBackend {
    fn drop(&mut self) {
        // A cache that cannot be written only costs the next start its
        // pipeline compiles.
        let _ = self.pipelines.save();
    }
}
