//! The one error type of the `coordgen` crate.
//!
//! Every failure that input can cause (a hostile GGUF file, an out-of-range
//! token id, a prompt longer than the context) ends up here as a typed variant
//! that names the problem. The library never panics on such input.

use std::path::PathBuf;

/// Errors returned by the `coordgen` engine.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    // === I/O ===
    #[error("cannot open {path}: {source}")]
    Open {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    // === GGUF ===
    // (GGUF reader variants go here.)

    // === Tokenizer and chat template ===
    // (Tokenizer / template variants go here.)

    // === Model, graph and backend ===
    #[error("graph compiler: {0}")]
    Graph(#[from] coordgen_graph::Error),
    #[error("CPU backend: {0}")]
    Cpu(#[from] coordgen_cpu::Error),
    // === Sessions and generation ===
    // (Session variants go here.)
}

/// Result alias for the engine.
pub type Result<T, E = Error> = std::result::Result<T, E>;
