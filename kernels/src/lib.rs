//! coordgen-kernels: the numeric core of coordgen.
//!
//! * [`quant`]: GGUF/ggml-compatible quantized block formats and their scalar
//!   (reference) quantize/dequantize routines.
//! * [`kquant`]: the K-quant super-block formats (Q4_K, Q5_K, Q6_K, Q8_K) with
//!   scalar quantize/dequantize and dot products.
//! * [`dispatch`]: a [`KernelSet`] of function pointers chosen once per
//!   process for the best instruction set the CPU has (scalar, AVX2,
//!   AVX-512 VNNI, NEON), so hot loops never re-check CPU features.
//! * [`matmul`]: `y = x · Wᵀ` over f32/f16/Q4_0/Q4_1/Q8_0 weights, threaded
//!   with rayon and batch-invariant (a row's result does not depend on how
//!   many rows are computed together).
//! * [`ops`]: f32 element-wise ops of the llama graph (RMSNorm, RoPE, SiLU·mul,
//!   softmax, argmax).
//! * [`attention`]: attention over an f16 KV cache, bitwise in the order of
//!   llama.cpp's batched (non-flash-attention) CPU path.
//!
//! Every SIMD kernel has a scalar twin in [`scalar`] doing the same float
//! operations in the same order (llama.cpp's batched CPU path on x86, so
//! coordgen's logits equal llama.cpp's bit for bit); tests compare them
//! bitwise.
#![warn(unsafe_op_in_unsafe_fn)]
#![warn(missing_docs)]

#[cfg(target_arch = "aarch64")]
mod aarch64;
#[cfg(target_arch = "aarch64")]
mod aarch64_repack;
pub mod attention;
pub mod dispatch;
pub mod kquant;
pub mod matmul;
pub mod ops;
pub mod quant;
pub mod repack;
pub mod scalar;
mod simd_f32;
#[cfg(target_arch = "x86_64")]
mod x86;
// Tiles index several per-column arrays in step; iterators would obscure that.
#[allow(clippy::needless_range_loop)]
#[cfg(target_arch = "x86_64")]
mod x86_repack;

pub use attention::{attention, AttentionJob, AttentionShape, RowVisibility};
pub use dispatch::{KernelSet, Tier};
pub use half::{bf16, f16};
pub use kquant::{BlockQ4K, BlockQ5K, BlockQ6K, BlockQ8K, QK_K};
pub use matmul::{
    matmul, matmul_unit_count, matmul_units, unit_count, MatmulScratch, SharedOut, WeightMatrix,
};
pub use quant::{BlockQ4_0, BlockQ4_1, BlockQ8_0, BlockQ8_1, QK};
pub use repack::{BlockQ4_0x8, BlockQ4_1x8, BlockQ8_0x8};

/// Errors of the kernel crate: all are caller mistakes about shapes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// A buffer or dimension does not have the length the other arguments imply.
    #[error("shape mismatch: {what}: expected {expected}, got {got}")]
    Shape {
        /// Which argument is wrong (e.g. `"x.len()"`).
        what: &'static str,
        /// The length the other arguments imply.
        expected: usize,
        /// The length that was passed.
        got: usize,
    },
    /// A dimension that must be a multiple of a block size or of another dimension is not.
    #[error("{what} = {got} must be a multiple of {multiple_of}")]
    NotMultiple {
        /// Which dimension.
        what: &'static str,
        /// The required divisor.
        multiple_of: usize,
        /// The value that was passed.
        got: usize,
    },
    /// An index (e.g. a KV slot) is out of range.
    #[error("{what}: index {index} out of range (limit {limit})")]
    OutOfRange {
        /// Which index.
        what: &'static str,
        /// The offending index.
        index: usize,
        /// The exclusive upper bound.
        limit: usize,
    },
}

/// Asks the CPU to bring `bytes` into its caches: a hint with no effect on
/// any result (nothing on targets without a prefetch instruction).
pub fn prefetch(bytes: &[u8]) {
    for line in bytes.chunks(64) {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: SSE is part of every x86-64 CPU; a prefetch never faults.
        unsafe {
            core::arch::x86_64::_mm_prefetch::<{ core::arch::x86_64::_MM_HINT_T0 }>(
                line.as_ptr().cast(),
            )
        };
        #[cfg(target_arch = "aarch64")]
        // SAFETY: PRFM only hints the memory system; it never faults and
        // changes no register or memory.
        unsafe {
            core::arch::asm!(
                "prfm pldl2keep, [{0}]",
                in(reg) line.as_ptr(),
                options(nostack, readonly, preserves_flags)
            )
        };
        #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
        let _ = line;
    }
}

pub(crate) fn check_len(what: &'static str, expected: usize, got: usize) -> Result<(), Error> {
    if expected == got {
        Ok(())
    } else {
        Err(Error::Shape {
            what,
            expected,
            got,
        })
    }
}
