//! Runtime choice of kernels: one [`KernelSet`] of function pointers per
//! instruction-set tier, picked once per process.
//!
//! Why function pointers: the hot loops (matmul over thousands of rows) call
//! a kernel per row; a pointer call is free next to a row's work, while
//! re-detecting CPU features or matching on an enum inside the kernels would
//! not be. Every pointer in a set for a SIMD tier points to a private
//! function that assumes the tier's CPU features; [`KernelSet::for_tier`]
//! only builds such a set after checking those features at run time.

use crate::attention::ScoreJob;
use crate::quant::{BlockQ4_0, BlockQ4_1, BlockQ8_0, BlockQ8_1};
use crate::repack::{self, BlockQ4_0x8, BlockQ4_1x8, BlockQ8_0x8, GroupGemm};
use crate::scalar;
use half::f16;
use std::fmt;
use std::sync::OnceLock;

/// An instruction-set tier that has its own kernels.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Tier {
    /// Portable Rust, the reference for every other tier.
    Scalar,
    /// x86-64 AVX2 + FMA + F16C (int8 dots via `vpmaddubsw`).
    Avx2,
    /// x86-64 AVX-512 (F, BW, VL) with VNNI (`vpdpbusd`).
    Avx512Vnni,
    /// aarch64 Advanced SIMD.
    Neon,
    /// aarch64 Advanced SIMD with the dot-product extension (`sdot`).
    NeonDotprod,
}

impl Tier {
    /// Every tier, lowest first within each architecture.
    pub const ALL: [Tier; 5] = [
        Tier::Scalar,
        Tier::Avx2,
        Tier::Avx512Vnni,
        Tier::Neon,
        Tier::NeonDotprod,
    ];

    /// The name used by `COORDGEN_KERNEL_TIER` and [`fmt::Display`].
    pub fn name(self) -> &'static str {
        match self {
            Tier::Scalar => "scalar",
            Tier::Avx2 => "avx2",
            Tier::Avx512Vnni => "avx512vnni",
            Tier::Neon => "neon",
            Tier::NeonDotprod => "neon-dotprod",
        }
    }

    /// Parses a tier name as written by [`Tier::name`] (case-insensitive).
    pub fn parse(s: &str) -> Option<Tier> {
        let s = s.trim().to_ascii_lowercase();
        Tier::ALL.into_iter().find(|t| t.name() == s)
    }

    /// Whether this CPU can run the tier's kernels (checked at run time).
    pub fn is_available(self) -> bool {
        match self {
            Tier::Scalar => true,
            #[cfg(target_arch = "x86_64")]
            Tier::Avx2 => crate::x86::avx2_available(),
            #[cfg(target_arch = "x86_64")]
            Tier::Avx512Vnni => crate::x86::avx512vnni_available(),
            #[cfg(target_arch = "aarch64")]
            Tier::Neon => crate::aarch64::neon_available(),
            #[cfg(target_arch = "aarch64")]
            Tier::NeonDotprod => crate::aarch64::neon_dotprod_available(),
            #[allow(unreachable_patterns)]
            _ => false,
        }
    }
}

impl fmt::Display for Tier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// `(job, scores, scores_stride)`: see [`scalar::scalar_attn_scores_f16`].
pub type AttnScores = fn(&ScoreJob, &mut [f32], usize);

/// `(p, p_stride, m, n, v, stride, first, lanes)`: see
/// [`scalar::scalar_attn_values_f16_multi`].
pub type AttnValuesMulti = fn(&[f32], usize, usize, usize, &[f16], usize, usize, &mut [f32]);

/// The kernels of one tier, as plain function pointers.
///
/// All quantized dots take a weight row first and an activation row second,
/// with equal lengths in blocks; mismatched lengths panic (callers such as
/// [`crate::matmul()`] validate shapes first). The `_x4` variants compute one
/// weight row against four activation rows and must return, per row,
/// exactly (bitwise) what the single-row kernel returns: [`crate::matmul()`]
/// relies on that for batch invariance.
#[derive(Clone, Copy, Debug)]
pub struct KernelSet {
    /// Which tier these kernels belong to.
    pub tier: Tier,
    /// Q4_0 weights · Q8_0 activations.
    pub vec_dot_q4_0_q8_0: fn(&[BlockQ4_0], &[BlockQ8_0]) -> f32,
    /// Q4_1 weights · Q8_1 activations.
    pub vec_dot_q4_1_q8_1: fn(&[BlockQ4_1], &[BlockQ8_1]) -> f32,
    /// Q8_0 weights · Q8_0 activations.
    pub vec_dot_q8_0_q8_0: fn(&[BlockQ8_0], &[BlockQ8_0]) -> f32,
    /// f32 · f32.
    pub dot_f32: fn(&[f32], &[f32]) -> f32,
    /// f16 · f32 (f16 weights or the K cache against f32 queries), in the
    /// 16-lane order of llamafile's f16 `tinyBLAS` (bitwise equal across tiers).
    pub dot_f16_f32: fn(&[f16], &[f32]) -> f32,
    /// Activation quantizer for Q4_0/Q8_0 weights (bit-identical across tiers).
    pub quantize_row_q8_0: fn(&[f32], &mut [BlockQ8_0]),
    /// Activation quantizer for Q4_1 weights (bit-identical across tiers).
    pub quantize_row_q8_1: fn(&[f32], &mut [BlockQ8_1]),
    /// One Q4_0 row against four Q8_0 rows; per row bitwise equal to `vec_dot_q4_0_q8_0`.
    pub vec_dot_q4_0_q8_0_x4: fn(&[BlockQ4_0], [&[BlockQ8_0]; 4]) -> [f32; 4],
    /// One Q4_1 row against four Q8_1 rows; per row bitwise equal to `vec_dot_q4_1_q8_1`.
    pub vec_dot_q4_1_q8_1_x4: fn(&[BlockQ4_1], [&[BlockQ8_1]; 4]) -> [f32; 4],
    /// One Q8_0 row against four Q8_0 rows; per row bitwise equal to `vec_dot_q8_0_q8_0`.
    pub vec_dot_q8_0_q8_0_x4: fn(&[BlockQ8_0], [&[BlockQ8_0]; 4]) -> [f32; 4],
    /// `y += a * x` with f16 `x` (attention's value accumulation).
    pub axpy_f16_f32: fn(f32, &[f16], &mut [f32]),
    /// `x *= a`.
    pub scale_f32: fn(f32, &mut [f32]),
    /// `x[i] = f16(x[i] * a)` (round to nearest even, held as f32): attention's
    /// probabilities as llama.cpp hands them to its f16 matmul.
    pub scale_round_f16: fn(f32, &mut [f32]),
    /// `x[i] = exp(x[i])` with ggml's `ggml_v_expf` polynomial
    /// (bitwise equal to [`scalar::ggml_expf`] in every tier).
    pub exp_f32: fn(&mut [f32]),
    /// `out[i] = silu(gate[i]) * up[i]` as ggml's `ggml_vec_swiglu_f32`
    /// (bitwise equal across tiers).
    pub silu_mul_f32: fn(&[f32], &[f32], &mut [f32]),
    /// `out[c] = hsum16(x[16c..16c + 16])` for every whole 16 of `x`: the
    /// per-chunk exp sums of attention's softmax (see
    /// [`scalar::scalar_hsum16_chunks`]; bitwise equal to it).
    pub hsum16_chunks: fn(&[f32], &mut [f32]),
    /// Attention scores of several queries over consecutive slots of a
    /// blocked K cache (see [`scalar::scalar_attn_scores_f16`]; bitwise
    /// equal to it).
    pub attn_scores_f16: AttnScores,
    /// Value accumulation of several queries over the same consecutive KV
    /// slots (see [`scalar::scalar_attn_values_f16_multi`]; bitwise equal
    /// to it): the values are converted once for all queries.
    pub attn_values_f16_multi: AttnValuesMulti,
    /// Attention value accumulation into 16 lanes (see
    /// [`scalar::scalar_attn_values_f16`]; bitwise equal to it).
    pub attn_values_f16: fn(&[f32], &[f16], usize, usize, &mut [f32]),
    /// Whether weights should be repacked into 8-row groups for this tier
    /// (its `gemm_*_x8` kernels are faster than its row kernels).
    pub prefers_repacked: bool,
    /// Q4_0 row group × Q8_0 activation rows (see [`crate::repack`]); per
    /// result bitwise equal to `vec_dot_q4_0_q8_0` on the unpacked row.
    pub gemm_q4_0_x8: GroupGemm<BlockQ4_0x8, BlockQ8_0>,
    /// Q4_1 row group × Q8_1 activation rows; bitwise as `vec_dot_q4_1_q8_1`.
    pub gemm_q4_1_x8: GroupGemm<BlockQ4_1x8, BlockQ8_1>,
    /// Q8_0 row group × Q8_0 activation rows; bitwise as `vec_dot_q8_0_q8_0`.
    pub gemm_q8_0_x8: GroupGemm<BlockQ8_0x8, BlockQ8_0>,
}

/// The portable reference set.
pub(crate) const SCALAR_KERNELS: KernelSet = KernelSet {
    tier: Tier::Scalar,
    vec_dot_q4_0_q8_0: scalar::scalar_vec_dot_q4_0_q8_0,
    vec_dot_q4_1_q8_1: scalar::scalar_vec_dot_q4_1_q8_1,
    vec_dot_q8_0_q8_0: scalar::scalar_vec_dot_q8_0_q8_0,
    dot_f32: scalar::scalar_dot_f32,
    dot_f16_f32: scalar::scalar_dot_f16_f32,
    quantize_row_q8_0: crate::quant::quantize_row_q8_0,
    quantize_row_q8_1: crate::quant::quantize_row_q8_1,
    vec_dot_q4_0_q8_0_x4: scalar::scalar_vec_dot_q4_0_q8_0_x4,
    vec_dot_q4_1_q8_1_x4: scalar::scalar_vec_dot_q4_1_q8_1_x4,
    vec_dot_q8_0_q8_0_x4: scalar::scalar_vec_dot_q8_0_q8_0_x4,
    axpy_f16_f32: scalar::scalar_axpy_f16_f32,
    scale_f32: scalar::scalar_scale_f32,
    scale_round_f16: scalar::scalar_scale_round_f16,
    exp_f32: scalar::scalar_exp_f32,
    silu_mul_f32: scalar::scalar_silu_mul_f32,
    hsum16_chunks: scalar::scalar_hsum16_chunks,
    attn_scores_f16: scalar::scalar_attn_scores_f16,
    attn_values_f16: scalar::scalar_attn_values_f16,
    attn_values_f16_multi: scalar::scalar_attn_values_f16_multi,
    prefers_repacked: false,
    gemm_q4_0_x8: repack::scalar_gemm_q4_0_x8,
    gemm_q4_1_x8: repack::scalar_gemm_q4_1_x8,
    gemm_q8_0_x8: repack::scalar_gemm_q8_0_x8,
};

/// Environment variable that forces a lower tier (e.g. `scalar`) for debugging
/// and for comparing tiers end to end.
pub const TIER_ENV_VAR: &str = "COORDGEN_KERNEL_TIER";

impl KernelSet {
    /// The best tier this CPU supports, detected once per process.
    ///
    /// `COORDGEN_KERNEL_TIER=scalar|avx2|avx512vnni|neon|neon-dotprod` picks
    /// another tier; a name that is unknown or not available on this CPU is
    /// ignored with a warning on stderr.
    pub fn best() -> &'static KernelSet {
        static BEST: OnceLock<KernelSet> = OnceLock::new();
        BEST.get_or_init(|| {
            let detected = *Self::available().last().unwrap_or(&Tier::Scalar);
            let tier = match std::env::var(TIER_ENV_VAR) {
                Ok(name) => match Tier::parse(&name) {
                    Some(t) if t.is_available() => t,
                    Some(t) => {
                        eprintln!(
                            "coordgen-kernels: {TIER_ENV_VAR}={t} is not available on this CPU; using {detected}"
                        );
                        detected
                    }
                    None => {
                        eprintln!(
                            "coordgen-kernels: unknown {TIER_ENV_VAR}={name:?}; using {detected}"
                        );
                        detected
                    }
                },
                Err(_) => detected,
            };
            Self::for_tier(tier).unwrap_or(SCALAR_KERNELS)
        })
    }

    /// The kernels of `tier`, or `None` when this CPU cannot run them.
    pub fn for_tier(tier: Tier) -> Option<KernelSet> {
        if !tier.is_available() {
            return None;
        }
        match tier {
            Tier::Scalar => Some(SCALAR_KERNELS),
            #[cfg(target_arch = "x86_64")]
            Tier::Avx2 => Some(crate::x86::avx2_kernel_set()),
            #[cfg(target_arch = "x86_64")]
            Tier::Avx512Vnni => Some(crate::x86::avx512vnni_kernel_set()),
            #[cfg(target_arch = "aarch64")]
            Tier::Neon => Some(crate::aarch64::neon_kernel_set()),
            #[cfg(target_arch = "aarch64")]
            Tier::NeonDotprod => Some(crate::aarch64::neon_dotprod_kernel_set()),
            #[allow(unreachable_patterns)]
            _ => None,
        }
    }

    /// Tiers this CPU can run, lowest first (always starts with `Scalar`).
    pub fn available() -> Vec<Tier> {
        Tier::ALL.into_iter().filter(|t| t.is_available()).collect()
    }

    /// The portable scalar set (always available).
    pub fn scalar() -> KernelSet {
        SCALAR_KERNELS
    }
}
