//! x86-64 SIMD kernels: AVX2 (+FMA, F16C) and AVX-512 (F, BW, VL) with VNNI.
//!
//! pulp's generic `Simd` trait has no int8 multiply or dot product, so the
//! quantized dots are written per instruction set with `core::arch`
//! intrinsics inside `#[target_feature]` functions; f32 kernels reuse the
//! generic pulp code of [`crate::simd_f32`] through pulp's `V3`/`V4` tokens.
//!
//! The `*_rows::<R>` kernels compute one weight row against `R` activation
//! rows. The weight-side work (nibble unpacking, scale conversion) is shared,
//! and each activation row goes through exactly the same sequence of float
//! operations whatever `R` is (Rust never contracts or reassociates float
//! ops), so `R = 4` gives per row bitwise the same result as `R = 1`: that is
//! what keeps [`crate::matmul()`] batch-invariant.
//!
//! Precondition shared with ggml: activation quants lie in `-127..=127`
//! (ggml's and our quantizers never produce -128); the sign trick of the
//! int8 × int8 dots would misread -128.
//!
//! Safety model: every `#[target_feature]` function here is private and only
//! reached through a [`KernelSet`] that [`KernelSet::for_tier`] builds after
//! the matching `*_available()` check succeeded.

use crate::attention::ScoreJob;
use crate::dispatch::{KernelSet, Tier};
use crate::quant::{q8_scale, BlockQ4_0, BlockQ4_1, BlockQ8_0, BlockQ8_1, QK};
use crate::scalar::assert_same_len;
use crate::simd_f32::{DotF32, ScaleF32};
use core::arch::x86_64::*;
use half::f16;
use pulp::x86::{V3, V4};
use pulp::Simd;

/// AVX2 tier: pulp's V3 (AVX2, FMA, BMI…) plus F16C for f16 conversions.
pub(crate) fn avx2_available() -> bool {
    V3::is_available() && is_x86_feature_detected!("f16c")
}

/// AVX-512 VNNI tier: pulp's V4 (AVX-512 F/BW/CD/DQ/VL) plus VNNI, on top of AVX2.
pub(crate) fn avx512vnni_available() -> bool {
    avx2_available() && V4::is_available() && is_x86_feature_detected!("avx512vnni")
}

pub(crate) fn avx2_kernel_set() -> KernelSet {
    KernelSet {
        tier: Tier::Avx2,
        vec_dot_q4_0_q8_0: avx2_vec_dot_q4_0_q8_0,
        vec_dot_q4_1_q8_1: avx2_vec_dot_q4_1_q8_1,
        vec_dot_q8_0_q8_0: avx2_vec_dot_q8_0_q8_0,
        dot_f32: avx2_dot_f32,
        dot_f16_f32: avx2_dot_f16_f32,
        quantize_row_q8_0: avx2_quantize_row_q8_0,
        quantize_row_q8_1: avx2_quantize_row_q8_1,
        vec_dot_q4_0_q8_0_x4: avx2_vec_dot_q4_0_q8_0_x4,
        vec_dot_q4_1_q8_1_x4: avx2_vec_dot_q4_1_q8_1_x4,
        vec_dot_q8_0_q8_0_x4: avx2_vec_dot_q8_0_q8_0_x4,
        axpy_f16_f32: avx2_axpy_f16_f32,
        scale_f32: avx2_scale_f32,
        // AVX2 has no `vscalefps`; the scalar twins are exact and cheap
        // next to the matmuls.
        scale_round_f16: avx2_scale_round_f16,
        exp_f32: crate::scalar::scalar_exp_f32,
        silu_mul_f32: crate::scalar::scalar_silu_mul_f32,
        hsum16_chunks: crate::scalar::scalar_hsum16_chunks,
        attn_scores_f16: avx2_attn_scores_f16,
        attn_values_f16: avx2_attn_values_f16,
        attn_values_f16_multi: avx2_attn_values_f16_multi,
        prefers_repacked: true,
        gemm_q4_0_x8: crate::x86_repack::avx2_gemm_q4_0_x8,
        gemm_q4_1_x8: crate::x86_repack::avx2_gemm_q4_1_x8,
        gemm_q8_0_x8: crate::x86_repack::avx2_gemm_q8_0_x8,
    }
}

pub(crate) fn avx512vnni_kernel_set() -> KernelSet {
    KernelSet {
        tier: Tier::Avx512Vnni,
        vec_dot_q4_0_q8_0: avx512vnni_vec_dot_q4_0_q8_0,
        vec_dot_q4_1_q8_1: avx512vnni_vec_dot_q4_1_q8_1,
        vec_dot_q8_0_q8_0: avx512vnni_vec_dot_q8_0_q8_0,
        dot_f32: avx512_dot_f32,
        dot_f16_f32: avx512_dot_f16_f32,
        quantize_row_q8_0: avx512_quantize_row_q8_0,
        quantize_row_q8_1: avx512_quantize_row_q8_1,
        vec_dot_q4_0_q8_0_x4: avx512vnni_vec_dot_q4_0_q8_0_x4,
        vec_dot_q4_1_q8_1_x4: avx512vnni_vec_dot_q4_1_q8_1_x4,
        vec_dot_q8_0_q8_0_x4: avx512vnni_vec_dot_q8_0_q8_0_x4,
        axpy_f16_f32: avx512_axpy_f16_f32,
        scale_f32: avx512_scale_f32,
        scale_round_f16: avx512_scale_round_f16,
        exp_f32: avx512_exp_f32,
        silu_mul_f32: avx512_silu_mul_f32,
        hsum16_chunks: avx512_hsum16_chunks,
        attn_scores_f16: avx512_attn_scores_f16,
        attn_values_f16: avx512_attn_values_f16,
        attn_values_f16_multi: avx512_attn_values_f16_multi,
        prefers_repacked: true,
        gemm_q4_0_x8: crate::x86_repack::avx512vnni_gemm_q4_0_x8,
        gemm_q4_1_x8: crate::x86_repack::avx512vnni_gemm_q4_1_x8,
        gemm_q8_0_x8: crate::x86_repack::avx512vnni_gemm_q8_0_x8,
    }
}

// ---------------------------------------------------------------------------
// Safe entry points (the function pointers of the kernel sets).
// ---------------------------------------------------------------------------

/// Defines the safe single-row and four-row entry points of a `*_rows::<R>`
/// kernel that needs the features checked by `$available`.
macro_rules! row_entry_points {
    ($single:ident, $x4:ident, $rows:ident, $wt:ty, $at:ty $(,)?) => {
        fn $single(x: &[$wt], y: &[$at]) -> f32 {
            assert_same_len(x.len(), y.len());
            // SAFETY: only installed in the KernelSet of the tier whose
            // `*_available()` check passed (see the module's safety model).
            let [dot] = unsafe { $rows::<1>(x, [y]) };
            dot
        }

        fn $x4(x: &[$wt], y: [&[$at]; 4]) -> [f32; 4] {
            for yr in &y {
                assert_same_len(x.len(), yr.len());
            }
            // SAFETY: only installed in the KernelSet of the tier whose
            // `*_available()` check passed (see the module's safety model).
            unsafe { $rows::<4>(x, y) }
        }
    };
}

row_entry_points!(
    avx2_vec_dot_q4_0_q8_0,
    avx2_vec_dot_q4_0_q8_0_x4,
    avx2_dot_q4_0_q8_0_rows,
    BlockQ4_0,
    BlockQ8_0,
);
row_entry_points!(
    avx2_vec_dot_q4_1_q8_1,
    avx2_vec_dot_q4_1_q8_1_x4,
    avx2_dot_q4_1_q8_1_rows,
    BlockQ4_1,
    BlockQ8_1,
);
row_entry_points!(
    avx2_vec_dot_q8_0_q8_0,
    avx2_vec_dot_q8_0_q8_0_x4,
    avx2_dot_q8_0_q8_0_rows,
    BlockQ8_0,
    BlockQ8_0,
);
row_entry_points!(
    avx512vnni_vec_dot_q4_0_q8_0,
    avx512vnni_vec_dot_q4_0_q8_0_x4,
    avx512vnni_dot_q4_0_q8_0_rows,
    BlockQ4_0,
    BlockQ8_0,
);
row_entry_points!(
    avx512vnni_vec_dot_q4_1_q8_1,
    avx512vnni_vec_dot_q4_1_q8_1_x4,
    avx512vnni_dot_q4_1_q8_1_rows,
    BlockQ4_1,
    BlockQ8_1,
);
row_entry_points!(
    avx512vnni_vec_dot_q8_0_q8_0,
    avx512vnni_vec_dot_q8_0_q8_0_x4,
    avx512vnni_dot_q8_0_q8_0_rows,
    BlockQ8_0,
    BlockQ8_0,
);

fn avx2_dot_f32(x: &[f32], y: &[f32]) -> f32 {
    assert_same_len(x.len(), y.len());
    // SAFETY: only installed in the AVX2 KernelSet, built after `avx2_available()`
    // (which includes `V3::is_available()`) returned true.
    let simd = unsafe { V3::new_unchecked() };
    Simd::vectorize(simd, DotF32 { x, y })
}

fn avx512_dot_f32(x: &[f32], y: &[f32]) -> f32 {
    assert_same_len(x.len(), y.len());
    // SAFETY: only installed in the AVX-512 KernelSet, built after
    // `avx512vnni_available()` (which includes `V4::is_available()`) returned true.
    let simd = unsafe { V4::new_unchecked() };
    Simd::vectorize(simd, DotF32 { x, y })
}

fn avx2_scale_f32(a: f32, x: &mut [f32]) {
    // SAFETY: as for `avx2_dot_f32`.
    let simd = unsafe { V3::new_unchecked() };
    Simd::vectorize(simd, ScaleF32 { a, x })
}

fn avx512_scale_f32(a: f32, x: &mut [f32]) {
    // SAFETY: as for `avx512_dot_f32`.
    let simd = unsafe { V4::new_unchecked() };
    Simd::vectorize(simd, ScaleF32 { a, x })
}

fn avx2_dot_f16_f32(x: &[f16], y: &[f32]) -> f32 {
    assert_same_len(x.len(), y.len());
    // SAFETY: only installed in the AVX2 KernelSet (after `avx2_available()`).
    unsafe { avx2_dot_f16_f32_impl(x, y) }
}

fn avx512_dot_f16_f32(x: &[f16], y: &[f32]) -> f32 {
    assert_same_len(x.len(), y.len());
    // SAFETY: only installed in the AVX-512 KernelSet (after `avx512vnni_available()`).
    unsafe { avx512_dot_f16_f32_impl(x, y) }
}

fn avx2_axpy_f16_f32(a: f32, x: &[f16], y: &mut [f32]) {
    assert_same_len(x.len(), y.len());
    // SAFETY: only installed in the AVX2 KernelSet (after `avx2_available()`).
    unsafe { avx2_axpy_f16_f32_impl(a, x, y) }
}

fn avx512_axpy_f16_f32(a: f32, x: &[f16], y: &mut [f32]) {
    assert_same_len(x.len(), y.len());
    // SAFETY: only installed in the AVX-512 KernelSet (after `avx512vnni_available()`).
    unsafe { avx512_axpy_f16_f32_impl(a, x, y) }
}

fn avx2_quantize_row_q8_0(x: &[f32], y: &mut [BlockQ8_0]) {
    assert_eq!(x.len(), y.len() * QK, "quantize_row_q8_0: slice lengths");
    for (xb, b) in x.chunks_exact(QK).zip(y.iter_mut()) {
        // SAFETY: only installed in the AVX2 KernelSet (after `avx2_available()`).
        let (d, _) = unsafe { avx2_quantize_block_q8(xb, &mut b.qs) };
        b.d = f16::from_f32(d);
    }
}

fn avx2_quantize_row_q8_1(x: &[f32], y: &mut [BlockQ8_1]) {
    assert_eq!(x.len(), y.len() * QK, "quantize_row_q8_1: slice lengths");
    for (xb, b) in x.chunks_exact(QK).zip(y.iter_mut()) {
        // SAFETY: only installed in the AVX2 KernelSet (after `avx2_available()`).
        let (d, sum) = unsafe { avx2_quantize_block_q8(xb, &mut b.qs) };
        b.d = f16::from_f32(d);
        b.s = f16::from_f32(d * sum as f32);
    }
}

fn avx512_quantize_row_q8_0(x: &[f32], y: &mut [BlockQ8_0]) {
    assert_eq!(x.len(), y.len() * QK, "quantize_row_q8_0: slice lengths");
    for (xb, b) in x.chunks_exact(QK).zip(y.iter_mut()) {
        // SAFETY: only installed in the AVX-512 KernelSet (after `avx512vnni_available()`).
        let (d, _) = unsafe { avx512_quantize_block_q8(xb, &mut b.qs) };
        b.d = f16::from_f32(d);
    }
}

fn avx512_quantize_row_q8_1(x: &[f32], y: &mut [BlockQ8_1]) {
    assert_eq!(x.len(), y.len() * QK, "quantize_row_q8_1: slice lengths");
    for (xb, b) in x.chunks_exact(QK).zip(y.iter_mut()) {
        // SAFETY: only installed in the AVX-512 KernelSet (after `avx512vnni_available()`).
        let (d, sum) = unsafe { avx512_quantize_block_q8(xb, &mut b.qs) };
        b.d = f16::from_f32(d);
        b.s = f16::from_f32(d * sum as f32);
    }
}

// ---------------------------------------------------------------------------
// Shared helpers.
// ---------------------------------------------------------------------------

/// The first four bytes of a block (its `d` and `m`/`s` fields) as one
/// little-endian word: one load instead of two 16-bit ones.
#[inline(always)]
fn header_u32<B: bytemuck::Pod>(block: &B) -> i32 {
    let bytes = bytemuck::bytes_of(block);
    i32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]])
}

/// Four f16 → `[a, b, c, d]` as f32.
#[inline]
#[target_feature(enable = "avx2,f16c")]
fn f16x4_to_f32x4(a: f16, b: f16, c: f16, d: f16) -> __m128 {
    let bits = a.to_bits() as u64
        | ((b.to_bits() as u64) << 16)
        | ((c.to_bits() as u64) << 32)
        | ((d.to_bits() as u64) << 48);
    _mm_cvtph_ps(_mm_cvtsi64_si128(bits as i64))
}

#[inline]
#[target_feature(enable = "avx2,f16c")]
fn f16_to_f32(v: f16) -> f32 {
    _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(v.to_bits() as i32)))
}

/// The four lanes of `v`.
#[inline]
#[target_feature(enable = "avx2")]
fn f32x4_lanes(v: __m128) -> [f32; 4] {
    let mut out = [0.0f32; 4];
    // SAFETY: `out` is 16 writable bytes; `storeu` has no alignment requirement.
    unsafe { _mm_storeu_ps(out.as_mut_ptr(), v) };
    out
}

/// Horizontal sum of 8 f32 lanes, in the order of ggml's `hsum_float_8`
/// (see [`crate::scalar`]).
#[inline]
#[target_feature(enable = "avx2")]
fn hsum_f32x8(v: __m256) -> f32 {
    let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    let s = _mm_add_ss(s, _mm_movehdup_ps(s));
    _mm_cvtss_f32(s)
}

/// Horizontal sum of 8 i32 lanes.
#[inline]
#[target_feature(enable = "avx2")]
fn hsum_i32x8(v: __m256i) -> i32 {
    let s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256::<1>(v));
    let s = _mm_add_epi32(s, _mm_unpackhi_epi64(s, s));
    let s = _mm_add_epi32(s, _mm_shuffle_epi32::<0b01>(s));
    _mm_cvtsi128_si32(s)
}

/// Loads 32 bytes of quants.
#[inline]
#[target_feature(enable = "avx2")]
fn load_i8x32(qs: &[i8; QK]) -> __m256i {
    // SAFETY: `qs` is 32 readable bytes; `loadu` has no alignment requirement.
    unsafe { _mm256_loadu_si256(qs.as_ptr().cast()) }
}

/// Loads 16 bytes of packed nibbles.
#[inline]
#[target_feature(enable = "avx2")]
fn load_u8x16(qs: &[u8; QK / 2]) -> __m128i {
    // SAFETY: `qs` is 16 readable bytes; `loadu` has no alignment requirement.
    unsafe { _mm_loadu_si128(qs.as_ptr().cast()) }
}

/// Unpacks 32 nibbles (ggml layout) into 32 bytes `0..=15` in element order:
/// low nibbles are elements 0..16, high nibbles elements 16..32.
#[inline]
#[target_feature(enable = "avx2")]
fn avx2_bytes_from_nibbles(qs: &[u8; QK / 2]) -> __m256i {
    let packed = load_u8x16(qs);
    let both = _mm256_set_m128i(_mm_srli_epi16::<4>(packed), packed);
    _mm256_and_si256(both, _mm256_set1_epi8(0x0F))
}

/// Σ of `u8 × i8` products of 32 lanes, as 8 partial i32 sums converted to
/// f32 (exact: |partial| < 2^24).
#[inline]
#[target_feature(enable = "avx2")]
fn avx2_mul_sum_u8_i8(ax: __m256i, sy: __m256i) -> __m256 {
    // maddubs cannot saturate here: |2 · 255 · 127| is too big in general, but
    // our operands are ≤ 128 unsigned × ≤ 127 signed, so |pair| ≤ 32512.
    let pairs = _mm256_maddubs_epi16(ax, sy);
    _mm256_cvtepi32_ps(_mm256_madd_epi16(pairs, _mm256_set1_epi16(1)))
}

/// Signed × signed via the sign trick: |x| (as u8) × (y with x's sign).
#[inline]
#[target_feature(enable = "avx2")]
fn avx2_mul_sum_i8_i8(x: __m256i, y: __m256i) -> __m256 {
    avx2_mul_sum_u8_i8(_mm256_sign_epi8(x, x), _mm256_sign_epi8(y, x))
}

// ---------------------------------------------------------------------------
// AVX2 int8 dots: one block per step, as ggml's AVX2 path.
// ---------------------------------------------------------------------------

/// # Safety
/// The CPU must support AVX2, FMA and F16C. Every `y[r]` must have at
/// least `x.len()` blocks.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn avx2_dot_q4_0_q8_0_rows<const R: usize>(
    x: &[BlockQ4_0],
    y: [&[BlockQ8_0]; R],
) -> [f32; R] {
    let mut acc = [_mm256_setzero_ps(); R];
    for (i, bx) in x.iter().enumerate() {
        let qx = _mm256_sub_epi8(avx2_bytes_from_nibbles(&bx.qs), _mm256_set1_epi8(8));
        let dx = f16_to_f32(bx.d);
        for r in 0..R {
            let by = &y[r][i];
            let d = _mm256_set1_ps(dx * f16_to_f32(by.d));
            let q = avx2_mul_sum_i8_i8(qx, load_i8x32(&by.qs));
            acc[r] = _mm256_fmadd_ps(d, q, acc[r]);
        }
    }
    acc.map(|a| hsum_f32x8(a))
}

/// # Safety
/// As [`avx2_dot_q4_0_q8_0_rows`].
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn avx2_dot_q4_1_q8_1_rows<const R: usize>(
    x: &[BlockQ4_1],
    y: [&[BlockQ8_1]; R],
) -> [f32; R] {
    let mut acc = [_mm256_setzero_ps(); R];
    let mut sum_ms = [0.0f32; R];
    for (i, bx) in x.iter().enumerate() {
        let qx = avx2_bytes_from_nibbles(&bx.qs);
        for r in 0..R {
            let by = &y[r][i];
            // [dx, mx, dy, sy] in one conversion.
            let s = f16x4_to_f32x4(bx.d, bx.m, by.d, by.s);
            let [dx, mx, dy, sy] = f32x4_lanes(s);
            // GCC contracts ggml's `summs += m * s` into an FMA; so do we.
            sum_ms[r] = mx.mul_add(sy, sum_ms[r]);
            let q = avx2_mul_sum_u8_i8(qx, load_i8x32(&by.qs));
            acc[r] = _mm256_fmadd_ps(_mm256_set1_ps(dx * dy), q, acc[r]);
        }
    }
    let mut out = [0.0f32; R];
    for r in 0..R {
        out[r] = hsum_f32x8(acc[r]) + sum_ms[r];
    }
    out
}

/// # Safety
/// As [`avx2_dot_q4_0_q8_0_rows`].
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn avx2_dot_q8_0_q8_0_rows<const R: usize>(
    x: &[BlockQ8_0],
    y: [&[BlockQ8_0]; R],
) -> [f32; R] {
    let mut acc = [_mm256_setzero_ps(); R];
    for (i, bx) in x.iter().enumerate() {
        let qx = load_i8x32(&bx.qs);
        let ax = _mm256_sign_epi8(qx, qx);
        let dx = f16_to_f32(bx.d);
        for r in 0..R {
            let by = &y[r][i];
            let d = _mm256_set1_ps(dx * f16_to_f32(by.d));
            let sy = _mm256_sign_epi8(load_i8x32(&by.qs), qx);
            acc[r] = _mm256_fmadd_ps(d, avx2_mul_sum_u8_i8(ax, sy), acc[r]);
        }
    }
    acc.map(|a| hsum_f32x8(a))
}

// ---------------------------------------------------------------------------
// AVX-512 VNNI int8 dots: one block per step in 256-bit lanes, exactly the
// float operations of the AVX2 kernels (and so of ggml's AVX2 `vec_dot`s and
// llamafile's `tinyBLAS_Q0_AVX`), with `vpdpbusd` (u8 × i8, four products
// summed per i32 lane, exact) for the integer part. A 512-bit layout would
// need another accumulation order and break bitwise equality with llama.cpp.
// ---------------------------------------------------------------------------

/// Σ of `u8 × i8` products of 32 lanes as 8 partial i32 sums (elements
/// `4j..4j+4` in lane `j`, exact) converted to f32.
#[inline]
#[target_feature(enable = "avx512f,avx512vl,avx512vnni,avx2")]
fn vnni_mul_sum_u8_i8(ax: __m256i, sy: __m256i) -> __m256 {
    _mm256_cvtepi32_ps(_mm256_dpbusd_epi32(_mm256_setzero_si256(), ax, sy))
}

/// # Safety
/// The CPU must support AVX-512 F/BW/VL, AVX-512 VNNI, AVX2, FMA and F16C.
/// Every `y[r]` must have at least `x.len()` blocks.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
unsafe fn avx512vnni_dot_q4_1_q8_1_rows<const R: usize>(
    x: &[BlockQ4_1],
    y: [&[BlockQ8_1]; R],
) -> [f32; R] {
    const { assert!(R <= 4) };
    let mut acc = [_mm256_setzero_ps(); R];
    // Lane r: row r's `summs`, updated with `fma(mx, sy, summs)` per block as
    // the scalar twin does (a 4-lane FMA is four independent scalar FMAs).
    let mut sum_ms = _mm_setzero_ps();
    // [d0, s0, d1, s1, ..] → [d0, d1, d2, d3 | s0, s1, s2, s3].
    let deinterleave = _mm256_setr_epi32(0, 2, 4, 6, 1, 3, 5, 7);
    for (i, bx) in x.iter().enumerate() {
        let qx = avx2_bytes_from_nibbles(&bx.qs);
        // The activation headers (d, s) of all R rows in one conversion.
        let mut hy = _mm_setzero_si128();
        for (r, yr) in y.iter().enumerate() {
            // SAFETY: `i < x.len() <= y[r].len()` (this function's precondition).
            let h = header_u32(unsafe { yr.get_unchecked(i) });
            hy = match r {
                0 => _mm_insert_epi32::<0>(hy, h),
                1 => _mm_insert_epi32::<1>(hy, h),
                2 => _mm_insert_epi32::<2>(hy, h),
                _ => _mm_insert_epi32::<3>(hy, h),
            };
        }
        let ds = _mm256_permutevar8x32_ps(_mm256_cvtph_ps(hy), deinterleave);
        let (dy, sy) = (_mm256_castps256_ps128(ds), _mm256_extractf128_ps::<1>(ds));
        let hx = _mm_cvtph_ps(_mm_cvtsi32_si128(header_u32(bx)));
        let dx = _mm_broadcastss_ps(hx);
        let mx = _mm_permute_ps::<0b01_01_01_01>(hx);
        let d = _mm_mul_ps(dx, dy); // lane r: dx · dy_r
        sum_ms = _mm_fmadd_ps(mx, sy, sum_ms);
        let d = _mm256_castps128_ps256(d);
        for r in 0..R {
            // SAFETY: as above.
            let by = unsafe { y[r].get_unchecked(i) };
            let q = vnni_mul_sum_u8_i8(qx, load_i8x32(&by.qs));
            let dr = _mm256_permutevar8x32_ps(d, _mm256_set1_epi32(r as i32));
            acc[r] = _mm256_fmadd_ps(dr, q, acc[r]);
        }
    }
    let ms = f32x4_lanes(sum_ms);
    let mut out = [0.0f32; R];
    for r in 0..R {
        out[r] = hsum_f32x8(acc[r]) + ms[r];
    }
    out
}

/// # Safety
/// As [`avx512vnni_dot_q4_1_q8_1_rows`].
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
unsafe fn avx512vnni_dot_q4_0_q8_0_rows<const R: usize>(
    x: &[BlockQ4_0],
    y: [&[BlockQ8_0]; R],
) -> [f32; R] {
    let mut acc = [_mm256_setzero_ps(); R];
    for (i, bx) in x.iter().enumerate() {
        let qx = _mm256_sub_epi8(avx2_bytes_from_nibbles(&bx.qs), _mm256_set1_epi8(8));
        let ax = _mm256_sign_epi8(qx, qx);
        let dx = f16_to_f32(bx.d);
        for r in 0..R {
            // SAFETY: `i < x.len() <= y[r].len()` (this function's precondition).
            let by = unsafe { y[r].get_unchecked(i) };
            let d = _mm256_set1_ps(dx * f16_to_f32(by.d));
            let sy = _mm256_sign_epi8(load_i8x32(&by.qs), qx);
            acc[r] = _mm256_fmadd_ps(d, vnni_mul_sum_u8_i8(ax, sy), acc[r]);
        }
    }
    acc.map(|a| hsum_f32x8(a))
}

/// # Safety
/// As [`avx512vnni_dot_q4_1_q8_1_rows`].
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
unsafe fn avx512vnni_dot_q8_0_q8_0_rows<const R: usize>(
    x: &[BlockQ8_0],
    y: [&[BlockQ8_0]; R],
) -> [f32; R] {
    let mut acc = [_mm256_setzero_ps(); R];
    for (i, bx) in x.iter().enumerate() {
        let qx = load_i8x32(&bx.qs);
        let ax = _mm256_sign_epi8(qx, qx);
        let dx = f16_to_f32(bx.d);
        for r in 0..R {
            // SAFETY: `i < x.len() <= y[r].len()` (this function's precondition).
            let by = unsafe { y[r].get_unchecked(i) };
            let d = _mm256_set1_ps(dx * f16_to_f32(by.d));
            let sy = _mm256_sign_epi8(load_i8x32(&by.qs), qx);
            acc[r] = _mm256_fmadd_ps(d, vnni_mul_sum_u8_i8(ax, sy), acc[r]);
        }
    }
    acc.map(|a| hsum_f32x8(a))
}

// ---------------------------------------------------------------------------
// Activation quantizers (bit-identical to `quant::quantize_row_q8_*`).
// ---------------------------------------------------------------------------

const ROUND_NEAREST_EVEN: i32 = _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC;

/// Quantizes 32 values; returns `(d, Σ quants)` like the scalar version:
/// same `amax` (max is exact in any order), same `id`, same IEEE multiply,
/// same round-half-even.
///
/// # Safety
/// The CPU must support AVX2 and FMA; `x` must hold at least 32 values.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn avx2_quantize_block_q8(x: &[f32], qs: &mut [i8; QK]) -> (f32, i32) {
    let x = &x[..QK];
    // SAFETY: `x` has 32 values, so each 8-lane load at 0, 8, 16, 24 is in bounds.
    let v: [__m256; 4] =
        core::array::from_fn(|k| unsafe { _mm256_loadu_ps(x.as_ptr().add(8 * k)) });
    let sign_bit = _mm256_set1_ps(-0.0);
    let mut max = _mm256_andnot_ps(sign_bit, v[0]);
    for vk in &v[1..] {
        max = _mm256_max_ps(max, _mm256_andnot_ps(sign_bit, *vk));
    }
    let m4 = _mm_max_ps(_mm256_castps256_ps128(max), _mm256_extractf128_ps::<1>(max));
    let m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
    let m4 = _mm_max_ss(m4, _mm_movehdup_ps(m4));
    let (d, id) = q8_scale(_mm_cvtss_f32(m4));
    let mul = _mm256_set1_ps(id);
    let q: [__m256i; 4] = v.map(|vk| {
        _mm256_cvttps_epi32(_mm256_round_ps::<ROUND_NEAREST_EVEN>(_mm256_mul_ps(
            vk, mul,
        )))
    });
    let sum = hsum_i32x8(_mm256_add_epi32(
        _mm256_add_epi32(q[0], q[1]),
        _mm256_add_epi32(q[2], q[3]),
    ));
    // Pack 32 × i32 → 32 × i8; the packs interleave 128-bit lanes, the
    // permute restores element order.
    let p01 = _mm256_packs_epi32(q[0], q[1]);
    let p23 = _mm256_packs_epi32(q[2], q[3]);
    let p = _mm256_packs_epi16(p01, p23);
    let p = _mm256_permutevar8x32_epi32(p, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
    // SAFETY: `qs` is 32 writable bytes; `storeu` has no alignment requirement.
    unsafe { _mm256_storeu_si256(qs.as_mut_ptr().cast(), p) };
    (d, sum)
}

/// AVX-512 twin of [`avx2_quantize_block_q8`].
///
/// # Safety
/// The CPU must support AVX-512 F/BW/VL; `x` must hold at least 32 values.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
unsafe fn avx512_quantize_block_q8(x: &[f32], qs: &mut [i8; QK]) -> (f32, i32) {
    let x = &x[..QK];
    // SAFETY: `x` has 32 values: loads at 0 and 16 of 16 lanes are in bounds.
    let (v0, v1) = unsafe {
        (
            _mm512_loadu_ps(x.as_ptr()),
            _mm512_loadu_ps(x.as_ptr().add(16)),
        )
    };
    let amax = _mm512_reduce_max_ps(_mm512_max_ps(_mm512_abs_ps(v0), _mm512_abs_ps(v1)));
    let (d, id) = q8_scale(amax);
    let mul = _mm512_set1_ps(id);
    let q0 = _mm512_cvttps_epi32(_mm512_roundscale_ps::<ROUND_NEAREST_EVEN>(_mm512_mul_ps(
        v0, mul,
    )));
    let q1 = _mm512_cvttps_epi32(_mm512_roundscale_ps::<ROUND_NEAREST_EVEN>(_mm512_mul_ps(
        v1, mul,
    )));
    let sum = _mm512_reduce_add_epi32(_mm512_add_epi32(q0, q1));
    let packed = _mm256_set_m128i(_mm512_cvtsepi32_epi8(q1), _mm512_cvtsepi32_epi8(q0));
    // SAFETY: `qs` is 32 writable bytes; `storeu` has no alignment requirement.
    unsafe { _mm256_storeu_si256(qs.as_mut_ptr().cast(), packed) };
    (d, sum)
}

// ---------------------------------------------------------------------------
// f16 × f32 kernels (attention over the f16 KV cache, f16 weights).
// ---------------------------------------------------------------------------

/// Sixteen-lane f16 × f32 dot (lanes 0..8 in `lo`, 8..16 in `hi`), the
/// order of llamafile's f16 `tinyBLAS` and of [`crate::scalar::scalar_dot_f16_f32`]:
/// element `i` is FMA'd into lane `i % 16`, then the lanes are summed as
/// GCC's `_mm512_reduce_add_ps` does.
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C; `y.len() >= x.len()`.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn avx2_dot_f16_f32_impl(x: &[f16], y: &[f32]) -> f32 {
    let n = x.len();
    let (xp, yp) = (x.as_ptr(), y.as_ptr());
    let mut lo = _mm256_setzero_ps();
    let mut hi = _mm256_setzero_ps();
    let mut i = 0;
    // SAFETY: (all loads below) `i + 16 <= n <= y.len()`, so every loaded
    // element is in bounds; unaligned loads are allowed.
    unsafe {
        while i + 16 <= n {
            let x0 = _mm256_cvtph_ps(_mm_loadu_si128(xp.add(i).cast()));
            let x1 = _mm256_cvtph_ps(_mm_loadu_si128(xp.add(i + 8).cast()));
            lo = _mm256_fmadd_ps(x0, _mm256_loadu_ps(yp.add(i)), lo);
            hi = _mm256_fmadd_ps(x1, _mm256_loadu_ps(yp.add(i + 8)), hi);
            i += 16;
        }
    }
    let mut lanes = [0.0f32; 16];
    // SAFETY: `lanes` is 64 writable bytes; unaligned stores are allowed.
    unsafe {
        _mm256_storeu_ps(lanes.as_mut_ptr(), lo);
        _mm256_storeu_ps(lanes.as_mut_ptr().add(8), hi);
    }
    for j in i..n {
        lanes[j % 16] = f16_to_f32(x[j]).mul_add(y[j], lanes[j % 16]);
    }
    crate::scalar::hsum16(&lanes)
}

/// Sum of 16 lanes in GCC's `_mm512_reduce_add_ps` order (see
/// [`crate::scalar::hsum16`]).
#[inline]
#[target_feature(enable = "avx512f,avx2")]
fn hsum_f32x16(v: __m512) -> f32 {
    hsum_f32x8(_mm256_add_ps(
        _mm512_extractf32x8_ps_compat(v),
        _mm512_castps512_ps256(v),
    ))
}

/// The upper 256 bits of `v` (`vextractf64x4`, which needs only AVX-512 F).
#[inline]
#[target_feature(enable = "avx512f")]
fn _mm512_extractf32x8_ps_compat(v: __m512) -> __m256 {
    _mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(_mm512_castps_pd(v)))
}

/// AVX-512 twin of [`avx2_dot_f16_f32_impl`] (same lanes, same order).
///
/// # Safety
/// The CPU must support AVX-512 F, AVX2, FMA and F16C; `y.len() >= x.len()`.
#[target_feature(enable = "avx512f,avx2,fma,f16c")]
unsafe fn avx512_dot_f16_f32_impl(x: &[f16], y: &[f32]) -> f32 {
    let n = x.len();
    let (xp, yp) = (x.as_ptr(), y.as_ptr());
    let mut acc = _mm512_setzero_ps();
    let mut i = 0;
    // SAFETY: (all loads below) `i + 16 <= n <= y.len()`.
    unsafe {
        while i + 16 <= n {
            let xv = _mm512_cvtph_ps(_mm256_loadu_si256(xp.add(i).cast()));
            acc = _mm512_fmadd_ps(xv, _mm512_loadu_ps(yp.add(i)), acc);
            i += 16;
        }
    }
    if i == n {
        return hsum_f32x16(acc);
    }
    let mut lanes = [0.0f32; 16];
    // SAFETY: `lanes` is 64 writable bytes; unaligned stores are allowed.
    unsafe { _mm512_storeu_ps(lanes.as_mut_ptr(), acc) };
    for j in i..n {
        lanes[j % 16] = f16_to_f32(x[j]).mul_add(y[j], lanes[j % 16]);
    }
    crate::scalar::hsum16(&lanes)
}

/// # Safety
/// The CPU must support AVX2, FMA and F16C; `y.len() >= x.len()`.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn avx2_axpy_f16_f32_impl(a: f32, x: &[f16], y: &mut [f32]) {
    let n = x.len();
    let va = _mm256_set1_ps(a);
    let mut i = 0;
    while i + 8 <= n {
        // SAFETY: `i + 8 <= n <= y.len()`: loads and the store are in bounds.
        unsafe {
            let xv = _mm256_cvtph_ps(_mm_loadu_si128(x.as_ptr().add(i).cast()));
            let yp = y.as_mut_ptr().add(i);
            _mm256_storeu_ps(yp, _mm256_fmadd_ps(va, xv, _mm256_loadu_ps(yp)));
        }
        i += 8;
    }
    for j in i..n {
        y[j] = a.mul_add(f16_to_f32(x[j]), y[j]);
    }
}

/// # Safety
/// The CPU must support AVX-512 F, AVX2, FMA and F16C; `y.len() >= x.len()`.
#[target_feature(enable = "avx512f,avx2,fma,f16c")]
unsafe fn avx512_axpy_f16_f32_impl(a: f32, x: &[f16], y: &mut [f32]) {
    let n = x.len();
    let va = _mm512_set1_ps(a);
    let mut i = 0;
    while i + 16 <= n {
        // SAFETY: `i + 16 <= n <= y.len()`: loads and the store are in bounds.
        unsafe {
            let xv = _mm512_cvtph_ps(_mm256_loadu_si256(x.as_ptr().add(i).cast()));
            let yp = y.as_mut_ptr().add(i);
            _mm512_storeu_ps(yp, _mm512_fmadd_ps(va, xv, _mm512_loadu_ps(yp)));
        }
        i += 16;
    }
    for j in i..n {
        y[j] = a.mul_add(f16_to_f32(x[j]), y[j]);
    }
}

// ---------------------------------------------------------------------------
// ggml's `ggml_v_expf` / `ggml_v_silu` (AVX-512), for softmax and SwiGLU.
// ---------------------------------------------------------------------------

fn avx512_exp_f32(x: &mut [f32]) {
    // SAFETY: only installed in the AVX-512 KernelSet, built after
    // `avx512vnni_available()` succeeded.
    unsafe { avx512_exp_f32_impl(x) }
}

fn avx512_silu_mul_f32(gate: &[f32], up: &[f32], out: &mut [f32]) {
    assert_same_len(gate.len(), up.len());
    assert_same_len(gate.len(), out.len());
    // SAFETY: as `avx512_exp_f32`; the lengths are checked above.
    unsafe { avx512_silu_mul_f32_impl(gate, up, out) }
}

/// ggml's AVX-512 `ggml_v_expf`, operation for operation (see
/// [`crate::scalar::ggml_expf`], its scalar twin).
#[inline]
#[target_feature(enable = "avx512f,avx2,fma")]
fn avx512_expf(x: __m512) -> __m512 {
    let c = |bits: u32| _mm512_set1_ps(f32::from_bits(bits));
    let r = c(0x4b40_0000);
    let z = _mm512_fmadd_ps(x, c(0x3fb8_aa3b), r);
    let n = _mm512_sub_ps(z, r);
    let b = _mm512_fnmadd_ps(n, c(0x35bf_be8e), _mm512_fnmadd_ps(n, c(0x3f31_7200), x));
    let d = _mm512_cmp_ps_mask::<_CMP_GT_OQ>(_mm512_abs_ps(n), _mm512_set1_ps(192.0));
    let u = _mm512_mul_ps(b, b);
    let j = _mm512_fmadd_ps(
        _mm512_fmadd_ps(
            _mm512_fmadd_ps(c(0x3c07_2010), b, c(0x3d2b_9f17)),
            u,
            _mm512_fmadd_ps(c(0x3e2a_af33), b, c(0x3eff_fedb)),
        ),
        u,
        _mm512_fmadd_ps(c(0x3f7f_fff6), b, _mm512_set1_ps(1.0)),
    );
    let res = _mm512_scalef_ps(j, n);
    if d == 0 {
        return res;
    }
    let zero = _mm512_setzero_ps();
    let alt = _mm512_mask_blend_ps(
        _mm512_cmp_ps_mask::<_CMP_LE_OQ>(n, zero),
        _mm512_set1_ps(f32::INFINITY),
        zero,
    );
    _mm512_mask_blend_ps(d, res, alt)
}

/// # Safety
/// The CPU must support AVX-512 F, AVX2 and FMA.
#[target_feature(enable = "avx512f,avx2,fma")]
unsafe fn avx512_exp_f32_impl(x: &mut [f32]) {
    let mut chunks = x.chunks_exact_mut(16);
    for ch in &mut chunks {
        // SAFETY: `ch` is 16 f32; unaligned loads/stores are allowed.
        unsafe {
            let v = _mm512_loadu_ps(ch.as_ptr());
            _mm512_storeu_ps(ch.as_mut_ptr(), avx512_expf(v));
        }
    }
    // The tail through the same vector code (element for element the
    // scalar twin's result), padded with zeros.
    let rest = chunks.into_remainder();
    if !rest.is_empty() {
        let mut pad = [0.0f32; 16];
        pad[..rest.len()].copy_from_slice(rest);
        // SAFETY: `pad` is 16 f32.
        unsafe {
            let v = _mm512_loadu_ps(pad.as_ptr());
            _mm512_storeu_ps(pad.as_mut_ptr(), avx512_expf(v));
        }
        rest.copy_from_slice(&pad[..rest.len()]);
    }
}

/// # Safety
/// The CPU must support AVX-512 F, AVX2 and FMA; the slices have equal lengths.
#[target_feature(enable = "avx512f,avx2,fma")]
unsafe fn avx512_silu_mul_f32_impl(gate: &[f32], up: &[f32], out: &mut [f32]) {
    let n = gate.len();
    let mut i = 0;
    while i + 16 <= n {
        // SAFETY: `i + 16 <= n`, the length of all three slices.
        unsafe {
            let g = _mm512_loadu_ps(gate.as_ptr().add(i));
            let e = avx512_expf(_mm512_sub_ps(_mm512_setzero_ps(), g));
            let silu = _mm512_div_ps(g, _mm512_add_ps(_mm512_set1_ps(1.0), e));
            let y = _mm512_mul_ps(silu, _mm512_loadu_ps(up.as_ptr().add(i)));
            _mm512_storeu_ps(out.as_mut_ptr().add(i), y);
        }
        i += 16;
    }
    crate::scalar::scalar_silu_mul_f32(&gate[i..], &up[i..], &mut out[i..]);
}

// ---------------------------------------------------------------------------
// `x = f16(x · a)` (attention probabilities), F16C round-to-nearest-even.
// ---------------------------------------------------------------------------

const F16_RNE: i32 = _MM_FROUND_TO_NEAREST_INT;

fn avx2_scale_round_f16(a: f32, x: &mut [f32]) {
    // SAFETY: only installed in the AVX2 KernelSet, built after
    // `avx2_available()` (AVX2 + F16C) succeeded.
    unsafe { avx2_scale_round_f16_impl(a, x) }
}

fn avx512_scale_round_f16(a: f32, x: &mut [f32]) {
    // SAFETY: only installed in the AVX-512 KernelSet, built after
    // `avx512vnni_available()` succeeded.
    unsafe { avx512_scale_round_f16_impl(a, x) }
}

/// # Safety
/// The CPU must support AVX2 and F16C.
#[target_feature(enable = "avx2,f16c")]
unsafe fn avx2_scale_round_f16_impl(a: f32, x: &mut [f32]) {
    let va = _mm256_set1_ps(a);
    let mut chunks = x.chunks_exact_mut(8);
    for ch in &mut chunks {
        // SAFETY: `ch` is 8 f32; unaligned loads/stores are allowed.
        unsafe {
            let v = _mm256_mul_ps(_mm256_loadu_ps(ch.as_ptr()), va);
            let h = _mm256_cvtps_ph::<F16_RNE>(v);
            _mm256_storeu_ps(ch.as_mut_ptr(), _mm256_cvtph_ps(h));
        }
    }
    crate::scalar::scalar_scale_round_f16(a, chunks.into_remainder());
}

/// # Safety
/// The CPU must support AVX-512 F, AVX2 and F16C.
#[target_feature(enable = "avx512f,avx2,f16c")]
unsafe fn avx512_scale_round_f16_impl(a: f32, x: &mut [f32]) {
    let va = _mm512_set1_ps(a);
    let mut chunks = x.chunks_exact_mut(16);
    for ch in &mut chunks {
        // SAFETY: `ch` is 16 f32; unaligned loads/stores are allowed.
        unsafe {
            let v = _mm512_mul_ps(_mm512_loadu_ps(ch.as_ptr()), va);
            let h = _mm512_cvtps_ph::<F16_RNE>(v);
            _mm512_storeu_ps(ch.as_mut_ptr(), _mm512_cvtph_ps(h));
        }
    }
    crate::scalar::scalar_scale_round_f16(a, chunks.into_remainder());
}

// ---------------------------------------------------------------------------
// Attention over the f16 KV cache, sixteen slots at a time.
// ---------------------------------------------------------------------------

fn avx512_attn_scores_f16(job: &ScoreJob, scores: &mut [f32], scores_stride: usize) {
    let Some(hd) = job.head_dim() else {
        return;
    };
    if !hd.is_multiple_of(16) {
        crate::scalar::scalar_attn_scores_f16(job, scores, scores_stride);
        return;
    }
    let m = job.queries;
    job.keys.assert_covers(job.slots.end, hd);
    assert!(
        scores.len() >= (m - 1) * scores_stride + job.slots.len(),
        "attn_scores: scores too short"
    );
    // Queries per pass: as even as possible, at most BLOCK_QUERIES.
    let passes = m.div_ceil(BLOCK_QUERIES);
    let mut j0 = 0;
    for pass in 0..passes {
        let q = (m - j0) / (passes - pass);
        let part = ScoreJob {
            q16: &job.q16[j0 * hd..(j0 + q) * hd],
            queries: q,
            ..job.clone()
        };
        let out = &mut scores[j0 * scores_stride..];
        // SAFETY: only installed in the AVX-512 KernelSet (after
        // `avx512vnni_available()`); keys, queries and scores are in bounds
        // (checked above) and `hd` is a positive multiple of 16.
        unsafe {
            match q {
                1 => blocked_scores::<1>(&part, out, scores_stride),
                2 => blocked_scores::<2>(&part, out, scores_stride),
                3 => blocked_scores::<3>(&part, out, scores_stride),
                4 => blocked_scores::<4>(&part, out, scores_stride),
                5 => blocked_scores::<5>(&part, out, scores_stride),
                _ => blocked_scores::<6>(&part, out, scores_stride),
            }
        }
        j0 += q;
    }
}

fn avx512_hsum16_chunks(x: &[f32], out: &mut [f32]) {
    let chunks = x.len() / 16;
    assert!(out.len() >= chunks, "hsum16_chunks: out too short");
    let whole = chunks / 16 * 16;
    for (group, sums) in x[..16 * whole]
        .chunks_exact(256)
        .zip(out[..whole].chunks_exact_mut(16))
    {
        // SAFETY: only installed in the AVX-512 KernelSet; `group` holds
        // 16 × 16 values and `sums` 16.
        unsafe {
            let acc: [__m512; 16] =
                core::array::from_fn(|c| _mm512_loadu_ps(group.as_ptr().add(16 * c)));
            _mm512_storeu_ps(sums.as_mut_ptr(), hsum16_x16(&acc));
        }
    }
    crate::scalar::scalar_hsum16_chunks(&x[16 * whole..16 * chunks], &mut out[whole..chunks]);
}

/// `hsum16` (GCC's `_mm512_reduce_add_ps` order) of sixteen registers at
/// once, transposing as it adds: t[j] = a[j + 8] + a[j], u[j] = t[j + 4] +
/// t[j], then (u0 + u2) + (u1 + u3).
#[inline]
#[target_feature(enable = "avx512f")]
fn hsum16_x16(acc: &[__m512; 16]) -> __m512 {
    let t: [__m512; 8] = core::array::from_fn(|p| {
        let (a, b) = (acc[2 * p], acc[2 * p + 1]);
        _mm512_add_ps(
            _mm512_shuffle_f32x4::<0b11_10_11_10>(a, b),
            _mm512_shuffle_f32x4::<0b01_00_01_00>(a, b),
        )
    });
    let u: [__m512; 4] = core::array::from_fn(|p| {
        let (a, b) = (t[2 * p], t[2 * p + 1]);
        _mm512_add_ps(
            _mm512_shuffle_f32x4::<0b11_01_11_01>(a, b),
            _mm512_shuffle_f32x4::<0b10_00_10_00>(a, b),
        )
    });
    let w = u.map(|up| {
        let v = _mm512_add_ps(up, _mm512_permute_ps::<0b01_00_11_10>(up));
        _mm512_add_ps(v, _mm512_permute_ps::<0b00_00_00_01>(v))
    });
    // Lanes 0, 4, 8, 12 of w[0..4] hold sums 0..16 in order.
    let pick = _mm512_setr_epi32(0, 4, 8, 12, 16, 20, 24, 28, 0, 4, 8, 12, 16, 20, 24, 28);
    let lo = _mm512_permutex2var_ps(w[0], pick, w[1]);
    let hi = _mm512_permutex2var_ps(w[2], pick, w[3]);
    _mm512_shuffle_f32x4::<0b01_00_01_00>(lo, hi)
}

/// Queries whose scores one pass over the key blocks computes together.
const BLOCK_QUERIES: usize = 6;

/// How many key blocks ahead [`blocked_scores`] prefetches.
const PREFETCH_BLOCKS: usize = 3;

/// Scores of `Q` queries over `slots`, a key block at a time: a column of
/// the block (16 slots) is one vector, so lane `s` of `a[l]` is the FMA
/// chain over elements `l, l + 16, …` of slot `s`'s dot, exactly as
/// [`crate::scalar::scalar_attn_scores_f16`]; the 16 lanes are then summed
/// in `hsum16` order with element-wise adds (`t[l] = a[l + 8] + a[l]`,
/// `u[l] = t[l + 4] + t[l]`, `(u0 + u2) + (u1 + u3)`). Each converted
/// column feeds the FMAs of all `Q` queries.
///
/// # Safety
/// The CPU must support AVX-512 F, AVX2, FMA and F16C; `job` holds `Q`
/// queries of a positive multiple of 16 values; its keys cover its slots
/// and `out` holds `Q` rows of `out_stride` covering them.
#[target_feature(enable = "avx512f,avx2,fma,f16c")]
unsafe fn blocked_scores<const Q: usize>(job: &ScoreJob, out: &mut [f32], out_stride: usize) {
    let ScoreJob {
        q16: qs,
        keys,
        ref slots,
        scale,
        ..
    } = *job;
    let hd = qs.len() / Q;
    let q_ptr = qs.as_ptr();
    let scale_v = _mm512_set1_ps(scale);
    let mut t = slots.start;
    while t < slots.end {
        let block = t / 16;
        let (lo, hi) = (t % 16, (slots.end - 16 * block).min(16));
        let kb = keys.block(block, hd).as_ptr();
        // The blocks of a head lie `16 · kv_dim` values apart, a stride the
        // hardware prefetchers miss; fetch a later block's head columns.
        let ahead = block + PREFETCH_BLOCKS;
        if 16 * ahead < slots.end {
            let next = keys.block(ahead, hd).as_ptr().cast::<i8>();
            for line in (0..32 * hd).step_by(64) {
                // SAFETY: a prefetch never faults; the address is inside
                // the cache (block `ahead` holds slots before `slots.end`).
                unsafe { _mm_prefetch::<_MM_HINT_T0>(next.add(line)) };
            }
        }
        // Lane `l` of every query: the FMA chain of elements l, l + 16, ….
        let lane = |l: usize| -> [__m512; Q] {
            let mut acc = [_mm512_setzero_ps(); Q];
            let mut d = l;
            while d < hd {
                // SAFETY: column `d < hd` of the block lies inside it.
                let k = unsafe { _mm512_cvtph_ps(_mm256_loadu_si256(kb.add(16 * d).cast())) };
                for (q, a) in acc.iter_mut().enumerate() {
                    // SAFETY: element `d` of query `q < Q` is inside `qs`.
                    let x = _mm512_set1_ps(unsafe { *q_ptr.add(q * hd + d) });
                    *a = _mm512_fmadd_ps(k, x, *a);
                }
                d += 16;
            }
            acc
        };
        let add = |a: [__m512; Q], b: [__m512; Q]| -> [__m512; Q] {
            core::array::from_fn(|q| _mm512_add_ps(a[q], b[q]))
        };
        let pair = |l: usize| add(lane(l + 8), lane(l));
        let quad = |l: usize| add(pair(l + 4), pair(l));
        let u02 = {
            let u0 = quad(0);
            add(u0, quad(2))
        };
        let u13 = {
            let u1 = quad(1);
            add(u1, quad(3))
        };
        let sums = add(u02, u13);
        // Slot `16 · block + lo` is the `16 · block + lo - start`-th.
        let first = 16 * block + lo - slots.start;
        for (q, v) in sums.iter().enumerate() {
            let v = _mm512_mul_ps(*v, scale_v);
            let at = q * out_stride + first;
            if lo == 0 && hi == 16 {
                // SAFETY: slots `16 · block..+16` are all in `slots`, so
                // `out` holds them for query `q`.
                unsafe { _mm512_storeu_ps(out.as_mut_ptr().add(at), v) };
            } else {
                let mut tmp = [0.0f32; 16];
                // SAFETY: `tmp` holds 16 values.
                unsafe { _mm512_storeu_ps(tmp.as_mut_ptr(), v) };
                out[at..at + hi - lo].copy_from_slice(&tmp[lo..hi]);
            }
        }
        t = 16 * block + hi;
    }
}

fn avx512_attn_values_f16(p: &[f32], v: &[f16], stride: usize, first: usize, lanes: &mut [f32]) {
    assert!(
        lanes.len().is_multiple_of(16),
        "attn_values: lanes must be 16 × head_dim"
    );
    let hd = lanes.len() / 16;
    if let Some(last) = p.len().checked_sub(1) {
        assert!(
            v.len() >= last * stride + hd,
            "attn_values: value cache too short"
        );
    }
    // Slots before the first multiple of 16, and all of them when the head
    // does not fill whole registers, go one by one.
    let head = if hd.is_multiple_of(16) && hd > 0 {
        ((16 - first % 16) % 16).min(p.len())
    } else {
        p.len()
    };
    let one = |i: usize, lanes: &mut [f32]| {
        let lane = (first + i) % 16;
        avx512_axpy_f16_f32(
            p[i],
            &v[i * stride..i * stride + hd],
            &mut lanes[lane * hd..(lane + 1) * hd],
        );
    };
    for i in 0..head {
        one(i, lanes);
    }
    let blocks = (p.len() - head) / 16;
    if blocks > 0 {
        // SAFETY: only installed in the AVX-512 KernelSet; `head + 16 · blocks`
        // slots are in bounds (checked above), `hd` is a multiple of 16, and
        // slot `first + head` sits in lane 0.
        unsafe {
            avx512_attn_values_f16_impl(
                &p[head..head + 16 * blocks],
                &v[head * stride..],
                stride,
                lanes,
            )
        };
    }
    for i in head + 16 * blocks..p.len() {
        one(i, lanes);
    }
}

/// Sixteen slots per block, slot `16b + s` into lane `s`; per lane and
/// element the FMAs run in slot order, as `avx512_axpy_f16_f32_impl` does.
///
/// # Safety
/// The CPU must support AVX-512 F, AVX2, FMA and F16C; `p.len()` is a
/// multiple of 16, `lanes.len()` a multiple of 256, and `v` holds every
/// slot's value row.
#[target_feature(enable = "avx512f,avx2,fma,f16c")]
unsafe fn avx512_attn_values_f16_impl(p: &[f32], v: &[f16], stride: usize, lanes: &mut [f32]) {
    let hd = lanes.len() / 16;
    for c in (0..hd).step_by(16) {
        // SAFETY: lane `l`'s elements `c..c + 16` are inside `lanes`.
        let mut acc: [__m512; 16] =
            core::array::from_fn(|l| unsafe { _mm512_loadu_ps(lanes.as_ptr().add(l * hd + c)) });
        for (b, pb) in p.chunks_exact(16).enumerate() {
            for (s, a) in acc.iter_mut().enumerate() {
                // SAFETY: slot `16b + s` is in bounds (the caller's contract).
                let x = unsafe {
                    _mm512_cvtph_ps(_mm256_loadu_si256(
                        v.as_ptr().add((16 * b + s) * stride + c).cast(),
                    ))
                };
                *a = _mm512_fmadd_ps(_mm512_set1_ps(pb[s]), x, *a);
            }
        }
        for (l, a) in acc.iter().enumerate() {
            // SAFETY: as the loads above.
            unsafe { _mm512_storeu_ps(lanes.as_mut_ptr().add(l * hd + c), *a) };
        }
    }
}

/// Slots whose value rows the multi-query value kernel keeps in L1 while
/// its 16 lane passes run over them (256 rows of a 64-value head: 32 KiB).
const VALUES_BLOCK: usize = 256;

/// Queries the multi-query value kernel keeps in registers at once.
const VALUES_QUERIES: usize = 6;

#[allow(clippy::too_many_arguments)]
fn avx512_attn_values_f16_multi(
    p: &[f32],
    p_stride: usize,
    m: usize,
    n: usize,
    v: &[f16],
    stride: usize,
    first: usize,
    lanes: &mut [f32],
) {
    if m == 0 {
        return;
    }
    assert!(
        lanes.len().is_multiple_of(16 * m),
        "attn_values_multi: lanes are not m × 16 × head_dim"
    );
    let per = lanes.len() / m;
    let hd = per / 16;
    if n > 0 {
        assert!(
            v.len() >= (n - 1) * stride + hd,
            "attn_values_multi: value cache too short"
        );
        assert!(
            p.len() >= (m - 1) * p_stride + n,
            "attn_values_multi: weights too short"
        );
    }
    // Slots before lane 0, slots after the last whole 16, and heads that
    // do not fill registers go through the one-query kernel.
    let head = if hd.is_multiple_of(16) && hd > 0 && m > 1 {
        ((16 - first % 16) % 16).min(n)
    } else {
        n
    };
    let main = (n - head) / 16 * 16;
    let tail = head + main;
    for j in 0..m {
        let lj = &mut lanes[j * per..(j + 1) * per];
        avx512_attn_values_f16(&p[j * p_stride..j * p_stride + head], v, stride, first, lj);
    }
    if main > 0 {
        // SAFETY: only installed in the AVX-512 KernelSet; slots
        // `head..tail` are in bounds (checked above), start at lane 0, and
        // `hd` is a positive multiple of 16.
        unsafe {
            avx512_attn_values_f16_multi_impl(
                &p[head..],
                p_stride,
                m,
                main,
                &v[head * stride..],
                stride,
                lanes,
            )
        };
    }
    if tail < n {
        for j in 0..m {
            let lj = &mut lanes[j * per..(j + 1) * per];
            avx512_attn_values_f16(
                &p[j * p_stride + tail..j * p_stride + n],
                &v[tail * stride..],
                stride,
                first + tail,
                lj,
            );
        }
    }
}

/// Lane by lane over blocks of slots: for lane `l`, the accumulators of up
/// to [`VALUES_QUERIES`] queries × 4 columns of 16 stay in registers over
/// slots `l, l + 16, …` of the block (slot order within the lane, as the
/// one-query kernel); each slot's value columns are converted once for all
/// the queries, and each weight is broadcast once for all the columns.
///
/// # Safety
/// The CPU must support AVX-512 F, AVX2, FMA and F16C; `n` is a multiple
/// of 16; `v` holds `n` slots; `lanes` is `m × 16 × hd` with `hd` a
/// positive multiple of 16; `p` holds `m` rows of `p_stride` covering `n`.
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx512f,avx2,fma,f16c")]
unsafe fn avx512_attn_values_f16_multi_impl(
    p: &[f32],
    p_stride: usize,
    m: usize,
    n: usize,
    v: &[f16],
    stride: usize,
    lanes: &mut [f32],
) {
    let per = lanes.len() / m;
    let hd = per / 16;
    let groups = m.div_ceil(VALUES_QUERIES);
    let mut j0 = 0;
    for group in 0..groups {
        let q = (m - j0) / (groups - group);
        for c0 in (0..hd).step_by(64) {
            let ch = ((hd - c0) / 16).min(4);
            let job = ValuesJob {
                p: p.as_ptr().wrapping_add(j0 * p_stride),
                p_stride,
                n,
                v: v.as_ptr(),
                stride,
                lanes: lanes.as_mut_ptr().wrapping_add(j0 * per),
                per,
                hd,
                c0,
            };
            macro_rules! run {
                ($($q:literal),*; $($c:literal),*) => {
                    run!(@q [$($q),*] [$($c),*])
                };
                (@q [$($q:literal),*] $cs:tt) => {
                    match q {
                        $( $q => run!(@c $q $cs), )*
                        _ => unreachable!("query group of {q}"),
                    }
                };
                (@c $q:literal [$($c:literal),*]) => {
                    match ch {
                        // SAFETY: this function's contract, restated per
                        // group of queries and columns.
                        $( $c => unsafe { values_group::<$q, $c>(&job) }, )*
                        _ => unreachable!("column group of {ch}"),
                    }
                };
            }
            run!(1, 2, 3, 4, 5, 6; 1, 2, 3, 4);
        }
        j0 += q;
    }
}

/// The operands of one [`values_group`] call, as raw pointers (the caller
/// checked every bound).
struct ValuesJob {
    /// Weights of the group's first query.
    p: *const f32,
    p_stride: usize,
    n: usize,
    v: *const f16,
    stride: usize,
    /// Lanes of the group's first query.
    lanes: *mut f32,
    per: usize,
    hd: usize,
    /// First column of this group of columns.
    c0: usize,
}

/// `Q` queries × `CH` columns of 16 (see [`avx512_attn_values_f16_multi_impl`]).
///
/// # Safety
/// As [`avx512_attn_values_f16_multi_impl`], for queries `0..Q` and columns
/// `c0..c0 + 16 · CH` of `job`.
#[inline]
#[target_feature(enable = "avx512f,avx2,fma,f16c")]
unsafe fn values_group<const Q: usize, const CH: usize>(job: &ValuesJob) {
    let &ValuesJob {
        p,
        p_stride,
        n,
        v,
        stride,
        lanes,
        per,
        hd,
        c0,
    } = job;
    let row = |s: usize| v.wrapping_add(s * stride + c0).cast::<i8>();
    let row_bytes = 32 * CH;
    for s in 0..n.min(VALUES_BLOCK) {
        for line in (0..row_bytes).step_by(64) {
            // A prefetch never faults.
            _mm_prefetch::<_MM_HINT_T0>(row(s).wrapping_add(line));
        }
    }
    for b0 in (0..n).step_by(VALUES_BLOCK) {
        let end = (b0 + VALUES_BLOCK).min(n);
        // The next block's rows come in while this one is computed: one
        // row per slot visited.
        let mut next = b0 + VALUES_BLOCK;
        for l in 0..16 {
            // SAFETY: lane `l`, columns `c0..c0 + 16 · CH` of queries `0..Q`.
            let mut acc: [[__m512; CH]; Q] = core::array::from_fn(|q| {
                core::array::from_fn(|c| unsafe {
                    _mm512_loadu_ps(lanes.add(q * per + l * hd + c0 + 16 * c))
                })
            });
            let mut s = b0 + l;
            while s < end {
                if next < n {
                    for line in (0..row_bytes).step_by(64) {
                        // A prefetch never faults.
                        _mm_prefetch::<_MM_HINT_T0>(row(next).wrapping_add(line));
                    }
                    next += 1;
                }
                // SAFETY: slot `s < n`, columns `c0..c0 + 16 · CH` are in `v`.
                let x: [__m512; CH] = core::array::from_fn(|c| unsafe {
                    _mm512_cvtph_ps(_mm256_loadu_si256(v.add(s * stride + c0 + 16 * c).cast()))
                });
                for (q, a) in acc.iter_mut().enumerate() {
                    // SAFETY: query `q`'s weight of slot `s` is in `p`.
                    let w = _mm512_set1_ps(unsafe { *p.add(q * p_stride + s) });
                    for (ac, xc) in a.iter_mut().zip(&x) {
                        *ac = _mm512_fmadd_ps(w, *xc, *ac);
                    }
                }
                s += 16;
            }
            for (q, a) in acc.iter().enumerate() {
                for (c, ac) in a.iter().enumerate() {
                    // SAFETY: as the loads above.
                    unsafe { _mm512_storeu_ps(lanes.add(q * per + l * hd + c0 + 16 * c), *ac) };
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------
// AVX2 attention: the portable block score kernel, and values slot by slot
// with the AVX2 axpy (the same operations as the scalar twins).
// ---------------------------------------------------------------------------

fn avx2_attn_scores_f16(job: &ScoreJob, scores: &mut [f32], scores_stride: usize) {
    // SAFETY: only installed in the AVX2 KernelSet (after `avx2_available()`).
    unsafe { avx2_attn_scores_f16_impl(job, scores, scores_stride) }
}

/// # Safety
/// The CPU must support AVX2, FMA and F16C.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn avx2_attn_scores_f16_impl(job: &ScoreJob, scores: &mut [f32], scores_stride: usize) {
    crate::scalar::blocked_scores_portable(job, scores, scores_stride);
}

fn avx2_attn_values_f16(p: &[f32], v: &[f16], stride: usize, first: usize, lanes: &mut [f32]) {
    assert!(
        lanes.len().is_multiple_of(16),
        "attn_values: lanes must be 16 × head_dim"
    );
    let hd = lanes.len() / 16;
    for (i, &w) in p.iter().enumerate() {
        let lane = (first + i) % 16;
        avx2_axpy_f16_f32(
            w,
            &v[i * stride..i * stride + hd],
            &mut lanes[lane * hd..(lane + 1) * hd],
        );
    }
}

#[allow(clippy::too_many_arguments)]
fn avx2_attn_values_f16_multi(
    p: &[f32],
    p_stride: usize,
    m: usize,
    n: usize,
    v: &[f16],
    stride: usize,
    first: usize,
    lanes: &mut [f32],
) {
    crate::scalar::values_per_query(
        avx2_attn_values_f16,
        p,
        p_stride,
        m,
        n,
        v,
        stride,
        first,
        lanes,
    );
}
