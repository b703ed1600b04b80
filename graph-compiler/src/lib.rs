//! coordgen-graph: the IR, lowering, memory planning and the Backend trait.

/// Errors of the graph compiler.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    #[error("invalid model config: {0}")]
    InvalidConfig(String),
}
