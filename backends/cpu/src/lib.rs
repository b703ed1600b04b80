//! # coordgen-cpu
//!
//! The CPU backend: it runs every op of the IR with `coordgen-kernels`, so it
//! is both the reference the other backends are checked against and the
//! fallback for the ops they cannot run.
//!
//! A compiled subgraph owns its arena (the planned intermediates) and views
//! its weights in place in the memory-mapped model. Rows past
//! [`ExecParams::n_valid`] are padding: they are neither computed nor cached.

#![warn(unsafe_op_in_unsafe_fn)]

mod exec;
mod repack;
mod team;

use coordgen_graph::{Backend, DType, Executable, Op, Subgraph, WeightSource};
use coordgen_kernels::KernelSet;
use std::sync::Arc;

pub use repack::RepackCache;

pub use exec::CpuExecutable;

/// Errors of the CPU backend. They reach callers wrapped in
/// [`coordgen_graph::Error::Backend`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    #[error("cannot start a pool of {threads} threads: {message}")]
    ThreadPool { threads: usize, message: String },
    #[error("{graph}: {message}")]
    BadGraph { graph: String, message: String },
    #[error("weight {name}: {message}")]
    BadWeight { name: String, message: String },
    #[error("token id {id} is outside the vocabulary of {vocab} tokens")]
    TokenOutOfRange { id: i64, vocab: usize },
    #[error("kernel: {0}")]
    Kernel(#[from] coordgen_kernels::Error),
}

impl From<Error> for coordgen_graph::Error {
    fn from(e: Error) -> Self {
        coordgen_graph::Error::Backend {
            backend: "cpu",
            cause: Box::new(e),
        }
    }
}

/// Runs subgraphs on this machine's cores.
#[derive(Clone)]
pub struct CpuBackend {
    kernels: &'static KernelSet,
    pool: Arc<team::TeamPool>,
    /// Matmul weights repacked in 8-row groups, shared by every subgraph
    /// (all buckets use the same weights, so each is repacked once).
    repacked: RepackCache,
}

impl CpuBackend {
    /// A backend with the best kernels this CPU supports and `threads`
    /// worker threads (`None`: one per core).
    pub fn new(threads: Option<usize>) -> Result<Self, Error> {
        Self::with_kernels(KernelSet::best(), threads)
    }

    /// A backend with a given kernel set, e.g. a lower tier for comparison.
    pub fn with_kernels(
        kernels: &'static KernelSet,
        threads: Option<usize>,
    ) -> Result<Self, Error> {
        let threads =
            threads.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
        let pool = team::TeamPool::new(threads).map_err(|e| Error::ThreadPool {
            threads,
            message: e.to_string(),
        })?;
        Ok(CpuBackend {
            kernels,
            pool: Arc::new(pool),
            repacked: RepackCache::default(),
        })
    }

    pub fn kernels(&self) -> &'static KernelSet {
        self.kernels
    }

    pub fn threads(&self) -> usize {
        self.pool.threads()
    }

    /// Weights this backend holds in a repacked copy of its own (its
    /// matmuls never read their original bytes).
    pub fn repacked_weights(&self) -> Vec<String> {
        self.repacked.names()
    }
}

impl Backend for CpuBackend {
    fn name(&self) -> &'static str {
        "cpu"
    }

    /// The CPU runs every op of the IR, except matmuls over BF16 matrices
    /// (BF16 embedding tables are fine). K-quant matmuls run the scalar
    /// reference dots (no SIMD twins yet).
    fn supports(&self, op: &Op, graph: &Subgraph) -> bool {
        let weight = match *op {
            Op::MatMul { w, .. } => w,
            Op::Embedding { table, .. } => table,
            _ => return true,
        };
        graph.tensor(weight).is_some_and(|t| match t.dtype {
            DType::F32
            | DType::F16
            | DType::Q4_0
            | DType::Q4_1
            | DType::Q8_0
            | DType::Q4_K
            | DType::Q5_K
            | DType::Q6_K => true,
            DType::BF16 => matches!(op, Op::Embedding { .. }),
            _ => false,
        })
    }

    fn compile(
        &self,
        graph: &Subgraph,
        weights: &dyn WeightSource,
    ) -> Result<Box<dyn Executable>, coordgen_graph::Error> {
        if let Some(op) = graph.nodes.iter().find(|op| !self.supports(op, graph)) {
            return Err(coordgen_graph::Error::Unsupported {
                backend: "cpu",
                op: op.name(),
                graph: graph.name.clone(),
            });
        }
        let repack = self.kernels.prefers_repacked.then_some(&self.repacked);
        let exe = CpuExecutable::new(graph, weights, self.kernels, self.pool.clone(), repack)?;
        Ok(Box::new(exe))
    }
}
