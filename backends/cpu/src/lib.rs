//! coordgen-cpu: executes IR subgraphs on the CPU.

/// Errors of the CPU backend.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    #[error("unsupported op: {0}")]
    Unsupported(String),
}
