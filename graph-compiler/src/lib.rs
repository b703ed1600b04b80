//! # coordgen-graph
//!
//! The IR of coordgen (ops over static-shape tensors), the lowering of a
//! llama-family model into bucketed subgraphs, memory planning with arena
//! offsets, and the [`Backend`] trait that a compute target implements.
//! This crate depends on nothing else of coordgen.

#![warn(unsafe_op_in_unsafe_fn)]

pub mod backend;
pub mod config;
pub mod ir;
pub mod lower;
pub mod memory;
pub mod partition;
mod summary;

pub use backend::{
    weight_bytes_for, Backend, ExecParams, Executable, HostBuffer, KvCache, LentMemory,
    SessionState, WeightBytes, WeightSource,
};
pub use config::{names, ModelConfig, WeightCatalog, WeightDesc};
pub use ir::*;
pub use lower::{lower, Boundaries, BoundaryDecl, Bucket, BucketKind, Plan, PlanOptions};
pub use partition::{compile_partitioned, partition, ChainExecutable, Piece};

/// Errors of the graph compiler and of the backends that run its graphs.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    #[error("invalid model config: {0}")]
    InvalidConfig(String),
    #[error("the model has no weight named {name}")]
    MissingWeight { name: String },
    #[error("weight {name} has shape {found:?}, expected {expected:?}")]
    WeightShape {
        name: String,
        expected: Vec<usize>,
        found: Vec<usize>,
    },
    #[error("weight {name} has dtype {dtype}, which this op cannot use")]
    WeightDType { name: String, dtype: DType },
    #[error("invalid graph: {0}")]
    InvalidGraph(String),
    #[error("{backend} backend cannot run {op} in {graph}")]
    Unsupported {
        backend: &'static str,
        op: &'static str,
        graph: String,
    },
    #[error("no backend of {backends:?} can run {op} in {graph}")]
    NoBackend {
        op: &'static str,
        graph: String,
        /// The backends asked, in order of preference.
        backends: Vec<&'static str>,
    },
    #[error("run parameters out of range for {graph}: {message}")]
    BadParams { graph: String, message: String },
    /// A backend's own error. Its text is in the message, not in
    /// `source()`, so a printed error chain does not repeat it.
    #[error("{backend} backend: {cause}")]
    Backend {
        backend: &'static str,
        cause: Box<dyn std::error::Error + Send + Sync>,
    },
}
