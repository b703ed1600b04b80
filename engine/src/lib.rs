//! # coordgen
//!
//! An on-device LLM inference engine for context-augmented generation.
//! See the project README for the architecture and the crate map.

#![warn(unsafe_op_in_unsafe_fn)]

pub mod chat_template;
mod engine;
pub mod error;
mod fallback;
pub mod gguf;
pub mod model;
mod progressive;
pub mod sampler;
pub mod schedule;
mod session;
pub mod spec;
pub mod tokenizer;

pub use chat_template::{ChatMessage, ChatTemplate};
/// The QNN backend crate itself (library loading, for tools that check it).
pub use coordgen_qnn as qnn;
/// The QNN backend's SoC and weight-format choices.
pub use coordgen_qnn::{GraphScope, Soc, WeightFormat};
/// The Vulkan backend crate itself (device listing, for tools).
pub use coordgen_vulkan as vulkan;
pub use coordgen_vulkan::VulkanOptions;
pub use engine::{AcceleratorReport, Engine, EngineOptions, LoadProgress, QnnOptions};
pub use error::{Error, Result};
pub use progressive::{Switching, Timeline};
pub use sampler::{Sampler, SamplerConfig};
pub use session::{
    Drafting, GenerateParams, Generation, Session, SpecConfig, SpecStats, SpecStep, StopReason,
    Timings,
};
pub use tokenizer::{StreamDecoder, Tokenizer};

/// The graph compiler's plan types, for `coordgen compile` and tooling.
pub use coordgen_graph::{ModelConfig, Plan, PlanOptions};
/// Kernel tiers, to force a lower one in [`EngineOptions::kernel_tier`].
pub use coordgen_kernels::Tier;
