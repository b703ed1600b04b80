//! aarch64 kernels. For now the int8 dots are the scalar ones (a later issue
//! adds NEON `sdot` versions); f32 kernels use pulp's NEON.
use crate::dispatch::{KernelSet, Tier, SCALAR_KERNELS};

pub(crate) fn neon_available() -> bool {
    std::arch::is_aarch64_feature_detected!("neon")
}

pub(crate) fn neon_dotprod_available() -> bool {
    neon_available() && std::arch::is_aarch64_feature_detected!("dotprod")
}

pub(crate) fn neon_kernel_set() -> KernelSet {
    KernelSet {
        tier: Tier::Neon,
        ..SCALAR_KERNELS
    }
}

pub(crate) fn neon_dotprod_kernel_set() -> KernelSet {
    KernelSet {
        tier: Tier::NeonDotprod,
        ..SCALAR_KERNELS
    }
}
