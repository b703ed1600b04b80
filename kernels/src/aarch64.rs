//! aarch64 kernels. The f32 kernels use pulp's NEON token; the int8 dots and
//! f16 kernels are still the scalar ones (a later issue adds NEON and `sdot`
//! versions — `vdotq_s32` is unstable, so `sdot` will need inline asm).
//!
//! Safety model as in the x86 module: the functions here are private and
//! only reached through a [`KernelSet`] that [`KernelSet::for_tier`] built
//! after the matching `*_available()` check.

use crate::dispatch::{KernelSet, Tier, SCALAR_KERNELS};
use crate::scalar::assert_same_len;
use crate::simd_f32::{DotF32, ScaleF32};
use pulp::aarch64::Neon;
use pulp::Simd;

pub(crate) fn neon_available() -> bool {
    Neon::is_available()
}

pub(crate) fn neon_dotprod_available() -> bool {
    neon_available() && std::arch::is_aarch64_feature_detected!("dotprod")
}

fn neon_dot_f32(x: &[f32], y: &[f32]) -> f32 {
    assert_same_len(x.len(), y.len());
    // SAFETY: only installed in NEON kernel sets, built after `neon_available()`.
    let simd = unsafe { Neon::new_unchecked() };
    Simd::vectorize(simd, DotF32 { x, y })
}

fn neon_scale_f32(a: f32, x: &mut [f32]) {
    // SAFETY: as for `neon_dot_f32`.
    let simd = unsafe { Neon::new_unchecked() };
    Simd::vectorize(simd, ScaleF32 { a, x })
}

pub(crate) fn neon_kernel_set() -> KernelSet {
    KernelSet {
        tier: Tier::Neon,
        dot_f32: neon_dot_f32,
        scale_f32: neon_scale_f32,
        ..SCALAR_KERNELS
    }
}

pub(crate) fn neon_dotprod_kernel_set() -> KernelSet {
    KernelSet {
        tier: Tier::NeonDotprod,
        ..neon_kernel_set()
    }
}
