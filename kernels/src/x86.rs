//! x86-64 SIMD kernels: AVX2 (+FMA, F16C) and AVX-512 VNNI.
use crate::dispatch::{KernelSet, Tier, SCALAR_KERNELS};

pub(crate) fn avx2_available() -> bool {
    is_x86_feature_detected!("avx2")
        && is_x86_feature_detected!("fma")
        && is_x86_feature_detected!("f16c")
}

pub(crate) fn avx512vnni_available() -> bool {
    avx2_available()
        && is_x86_feature_detected!("avx512f")
        && is_x86_feature_detected!("avx512bw")
        && is_x86_feature_detected!("avx512vl")
        && is_x86_feature_detected!("avx512vnni")
}

pub(crate) fn avx2_kernel_set() -> KernelSet {
    KernelSet {
        tier: Tier::Avx2,
        ..SCALAR_KERNELS
    }
}

pub(crate) fn avx512vnni_kernel_set() -> KernelSet {
    KernelSet {
        tier: Tier::Avx512Vnni,
        ..SCALAR_KERNELS
    }
}
