//! # coordgen
//!
//! An on-device LLM inference engine for context-augmented generation.
//! See the project README for the architecture and the crate map.

#![warn(unsafe_op_in_unsafe_fn)]

pub mod chat_template;
pub mod error;
pub mod gguf;
pub mod tokenizer;

pub use error::{Error, Result};
