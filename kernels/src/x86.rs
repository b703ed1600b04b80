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

/// Two f16 bit patterns packed as `lo | hi << 16` → `[lo, hi, 0, 0]` as f32.
#[inline]
#[target_feature(enable = "avx2,f16c")]
fn f16x2_to_f32x4(lo: f16, hi: f16) -> __m128 {
    let bits = lo.to_bits() as u32 | ((hi.to_bits() as u32) << 16);
    _mm_cvtph_ps(_mm_cvtsi32_si128(bits as i32))
}

/// The first four bytes of a block (its `d` and `m`/`s` fields) as one
/// little-endian word: one load instead of two 16-bit ones.
#[inline(always)]
fn header_u32<B: bytemuck::Pod>(block: &B) -> i32 {
    let bytes = bytemuck::bytes_of(block);
    i32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]])
}

/// The headers (two f16 each) of blocks a and b → `[a.0, a.1, b.0, b.1]` as f32.
#[inline]
#[target_feature(enable = "avx2,f16c")]
fn headers_x2_to_f32x4<B: bytemuck::Pod>(a: &B, b: &B) -> __m128 {
    _mm_cvtph_ps(_mm_insert_epi32::<1>(
        _mm_cvtsi32_si128(header_u32(a)),
        header_u32(b),
    ))
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

/// Horizontal sum of 8 f32 lanes.
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
            let prod = _mm_mul_ps(s, _mm_movehl_ps(s, s)); // [dx·dy, mx·sy, ..]
            let d = _mm256_broadcastss_ps(prod);
            sum_ms[r] += _mm_cvtss_f32(_mm_movehdup_ps(prod));
            let q = avx2_mul_sum_u8_i8(qx, load_i8x32(&by.qs));
            acc[r] = _mm256_fmadd_ps(d, q, acc[r]);
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
// AVX-512 VNNI int8 dots: two blocks per 512-bit step.
//
// A step holds blocks a and b of the weight row, their quants in element
// order [a0..32 | b0..32], multiplied by the matching activation bytes with
// `vpdpbusd` (u8 × i8, four products summed per i32 lane, no saturation).
// Lanes 0..8 belong to block a and 8..16 to block b, so one vector of
// per-lane scales `[da·dya ×8, db·dyb ×8]` turns the partial sums into a
// float accumulator. Odd block counts finish with one scalar-exact block.
// ---------------------------------------------------------------------------

/// 64 weight nibbles of blocks a and b → 64 bytes `0..=15` in element order.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2")]
fn avx512_bytes_from_nibbles_x2(qa: &[u8; QK / 2], qb: &[u8; QK / 2]) -> __m512i {
    let packed = _mm256_set_m128i(load_u8x16(qb), load_u8x16(qa)); // [qa | qb]
    let high = _mm256_srli_epi16::<4>(packed);
    // [qa, qb, qa>>4, qb>>4] → 128-bit lanes reordered to [qa, qa>>4, qb, qb>>4].
    let t = _mm512_inserti64x4::<1>(_mm512_castsi256_si512(packed), high);
    let t = _mm512_shuffle_i64x2::<0b11_01_10_00>(t, t);
    _mm512_and_si512(t, _mm512_set1_epi8(0x0F))
}

/// The activation quants of blocks a and b as one vector.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2")]
fn avx512_load_i8x64(qa: &[i8; QK], qb: &[i8; QK]) -> __m512i {
    _mm512_inserti64x4::<1>(_mm512_castsi256_si512(load_i8x32(qa)), load_i8x32(qb))
}

/// Broadcasts lane `ia` of `s` to lanes 0..8 and lane `ib` to lanes 8..16.
#[inline]
#[target_feature(enable = "avx512f")]
fn avx512_two_scales(s: __m128, idx: __m512i) -> __m512 {
    _mm512_permutexvar_ps(idx, _mm512_castps128_ps512(s))
}

/// Exact integer dot of one Q4_x block (unsigned nibbles, `offset` subtracted)
/// with one Q8 block, for the odd last block.
#[inline]
fn block_dot_nibbles(qs: &[u8; QK / 2], offset: i32, y: &[i8; QK]) -> i32 {
    let mut sumi = 0;
    for j in 0..QK / 2 {
        sumi += ((qs[j] & 0x0F) as i32 - offset) * y[j] as i32;
        sumi += ((qs[j] >> 4) as i32 - offset) * y[j + QK / 2] as i32;
    }
    sumi
}

/// Scale lanes for [`avx512vnni_q4_1_pair`]: the products come as
/// `[dx_a·dy_a, mx_a·sy_a, dx_b·dy_b, mx_b·sy_b]`; lane 0 feeds block a's
/// eight i32 lanes, lane 2 block b's.
#[inline]
#[target_feature(enable = "avx512f")]
fn q4_1_scale_index() -> __m512i {
    _mm512_set_epi32(2, 2, 2, 2, 2, 2, 2, 2, 0, 0, 0, 0, 0, 0, 0, 0)
}

/// Blocks `$b` and `$b + 1` of Q4_1 row `$x` against the `R` Q8_1 rows `$y`,
/// accumulated into `$acc` (d terms, 16 lanes) and `$acc_ms` (m·s terms in
/// lanes 1 and 3). A macro rather than a function: LLVM does not inline
/// `#[target_feature]` helpers that take arrays of accumulators by reference,
/// and the call would cost as much as the work.
macro_rules! avx512vnni_q4_1_pair {
    ($x:expr, $y:expr, $b:expr, $acc:expr, $acc_ms:expr) => {{
        let b = $b;
        // SAFETY: callers pass `b + 1 < x.len() <= y[r].len()` (the
        // `*_rows` precondition), so the unchecked indexing is in bounds.
        let (xa, xb) = unsafe { ($x.get_unchecked(b), $x.get_unchecked(b + 1)) };
        let qx = avx512_bytes_from_nibbles_x2(&xa.qs, &xb.qs);
        let sx = headers_x2_to_f32x4(xa, xb);
        for r in 0..R {
            // SAFETY: as above.
            let (ya, yb) = unsafe { ($y[r].get_unchecked(b), $y[r].get_unchecked(b + 1)) };
            let qy = avx512_load_i8x64(&ya.qs, &yb.qs);
            let dot = _mm512_dpbusd_epi32(_mm512_setzero_si512(), qx, qy);
            let s = _mm_mul_ps(sx, headers_x2_to_f32x4(ya, yb));
            $acc_ms[r] = _mm_add_ps($acc_ms[r], s);
            $acc[r] = _mm512_fmadd_ps(
                avx512_two_scales(s, q4_1_scale_index()),
                _mm512_cvtepi32_ps(dot),
                $acc[r],
            );
        }
    }};
}

/// # Safety
/// The CPU must support AVX-512 F/BW/VL, AVX-512 VNNI, AVX2, FMA and F16C.
/// Every `y[r]` must have at least `x.len()` blocks.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
unsafe fn avx512vnni_dot_q4_1_q8_1_rows<const R: usize>(
    x: &[BlockQ4_1],
    y: [&[BlockQ8_1]; R],
) -> [f32; R] {
    // Two accumulator sets (even / odd pair) hide the FMA latency.
    let mut acc = [[_mm512_setzero_ps(); R]; 2];
    let mut acc_ms = [[_mm_setzero_ps(); R]; 2];
    let quads = x.len() / 4;
    for q in 0..quads {
        avx512vnni_q4_1_pair!(x, y, 4 * q, acc[0], acc_ms[0]);
        avx512vnni_q4_1_pair!(x, y, 4 * q + 2, acc[1], acc_ms[1]);
    }
    if x.len() % 4 >= 2 {
        avx512vnni_q4_1_pair!(x, y, 4 * quads, acc[0], acc_ms[0]);
    }
    let mut out = [0.0f32; R];
    for r in 0..R {
        let ms = _mm_add_ps(acc_ms[0][r], acc_ms[1][r]);
        let mut sum = _mm512_reduce_add_ps(_mm512_add_ps(acc[0][r], acc[1][r]))
            + (_mm_cvtss_f32(_mm_movehdup_ps(ms)) + _mm_cvtss_f32(_mm_shuffle_ps::<3>(ms, ms)));
        if x.len() % 2 == 1 {
            let (bx, by) = (&x[x.len() - 1], &y[r][x.len() - 1]);
            let sumi = block_dot_nibbles(&bx.qs, 0, &by.qs);
            sum += (f16_to_f32(bx.d) * f16_to_f32(by.d)) * sumi as f32
                + f16_to_f32(bx.m) * f16_to_f32(by.s);
        }
        out[r] = sum;
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
    // Scales as [dx_a, dx_b, 0, 0] · [dy_a, dy_b, 0, 0].
    let idx = _mm512_set_epi32(1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0);
    let eights = _mm512_set1_epi8(8);
    let mut acc = [_mm512_setzero_ps(); R];
    let pairs = x.len() / 2;
    for p in 0..pairs {
        let (xa, xb) = (&x[2 * p], &x[2 * p + 1]);
        let qx = avx512_bytes_from_nibbles_x2(&xa.qs, &xb.qs);
        let sx = f16x2_to_f32x4(xa.d, xb.d);
        for r in 0..R {
            let (ya, yb) = (&y[r][2 * p], &y[r][2 * p + 1]);
            let qy = avx512_load_i8x64(&ya.qs, &yb.qs);
            // Σ (q - 8)·y = Σ q·y - Σ 8·y, both exact in i32.
            let dot = _mm512_sub_epi32(
                _mm512_dpbusd_epi32(_mm512_setzero_si512(), qx, qy),
                _mm512_dpbusd_epi32(_mm512_setzero_si512(), eights, qy),
            );
            let s = _mm_mul_ps(sx, f16x2_to_f32x4(ya.d, yb.d));
            acc[r] = _mm512_fmadd_ps(avx512_two_scales(s, idx), _mm512_cvtepi32_ps(dot), acc[r]);
        }
    }
    let mut out = [0.0f32; R];
    for r in 0..R {
        let mut sum = _mm512_reduce_add_ps(acc[r]);
        if x.len() % 2 == 1 {
            let (bx, by) = (&x[x.len() - 1], &y[r][x.len() - 1]);
            let sumi = block_dot_nibbles(&bx.qs, 8, &by.qs);
            sum += (f16_to_f32(bx.d) * f16_to_f32(by.d)) * sumi as f32;
        }
        out[r] = sum;
    }
    out
}

/// # Safety
/// As [`avx512vnni_dot_q4_1_q8_1_rows`].
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
unsafe fn avx512vnni_dot_q8_0_q8_0_rows<const R: usize>(
    x: &[BlockQ8_0],
    y: [&[BlockQ8_0]; R],
) -> [f32; R] {
    let idx = _mm512_set_epi32(1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0);
    let mut acc = [_mm512_setzero_ps(); R];
    let pairs = x.len() / 2;
    for p in 0..pairs {
        // SAFETY: `2p + 1 < x.len() <= y[r].len()` (this function's precondition).
        let (xa, xb) = unsafe { (x.get_unchecked(2 * p), x.get_unchecked(2 * p + 1)) };
        let qx = avx512_load_i8x64(&xa.qs, &xb.qs);
        // vpdpbusd wants one unsigned operand: |x| as u8, and y takes x's sign
        // (AVX-512 has no vpsignb, so negate y where x < 0 under a mask).
        let ax = _mm512_abs_epi8(qx);
        let negative = _mm512_movepi8_mask(qx);
        let sx = f16x2_to_f32x4(xa.d, xb.d);
        for r in 0..R {
            // SAFETY: as above.
            let (ya, yb) = unsafe { (y[r].get_unchecked(2 * p), y[r].get_unchecked(2 * p + 1)) };
            let qy = avx512_load_i8x64(&ya.qs, &yb.qs);
            let sy = _mm512_mask_sub_epi8(qy, negative, _mm512_setzero_si512(), qy);
            let dot = _mm512_dpbusd_epi32(_mm512_setzero_si512(), ax, sy);
            let s = _mm_mul_ps(sx, f16x2_to_f32x4(ya.d, yb.d));
            acc[r] = _mm512_fmadd_ps(avx512_two_scales(s, idx), _mm512_cvtepi32_ps(dot), acc[r]);
        }
    }
    let mut out = [0.0f32; R];
    for r in 0..R {
        let mut sum = _mm512_reduce_add_ps(acc[r]);
        if x.len() % 2 == 1 {
            let (bx, by) = (&x[x.len() - 1], &y[r][x.len() - 1]);
            let sumi: i32 = bx
                .qs
                .iter()
                .zip(&by.qs)
                .map(|(&a, &b)| a as i32 * b as i32)
                .sum();
            sum += (f16_to_f32(bx.d) * f16_to_f32(by.d)) * sumi as f32;
        }
        out[r] = sum;
    }
    out
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

/// # Safety
/// The CPU must support AVX2, FMA and F16C; `y.len() >= x.len()`.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn avx2_dot_f16_f32_impl(x: &[f16], y: &[f32]) -> f32 {
    let n = x.len();
    let (xp, yp) = (x.as_ptr(), y.as_ptr());
    let mut acc = [_mm256_setzero_ps(); 4];
    let mut i = 0;
    // SAFETY (all loads below): `i + width <= n <= y.len()`, so every loaded
    // element is in bounds; unaligned loads are allowed.
    unsafe {
        while i + 32 <= n {
            for (k, a) in acc.iter_mut().enumerate() {
                let xv = _mm256_cvtph_ps(_mm_loadu_si128(xp.add(i + 8 * k).cast()));
                *a = _mm256_fmadd_ps(xv, _mm256_loadu_ps(yp.add(i + 8 * k)), *a);
            }
            i += 32;
        }
        while i + 8 <= n {
            let xv = _mm256_cvtph_ps(_mm_loadu_si128(xp.add(i).cast()));
            acc[0] = _mm256_fmadd_ps(xv, _mm256_loadu_ps(yp.add(i)), acc[0]);
            i += 8;
        }
    }
    let mut sum = hsum_f32x8(_mm256_add_ps(
        _mm256_add_ps(acc[0], acc[1]),
        _mm256_add_ps(acc[2], acc[3]),
    ));
    for j in i..n {
        sum += f16_to_f32(x[j]) * y[j];
    }
    sum
}

/// # Safety
/// The CPU must support AVX-512 F, AVX2, FMA and F16C; `y.len() >= x.len()`.
#[target_feature(enable = "avx512f,avx2,fma,f16c")]
unsafe fn avx512_dot_f16_f32_impl(x: &[f16], y: &[f32]) -> f32 {
    let n = x.len();
    let (xp, yp) = (x.as_ptr(), y.as_ptr());
    let mut acc = [_mm512_setzero_ps(); 4];
    let mut i = 0;
    // SAFETY (all loads below): `i + width <= n <= y.len()`.
    unsafe {
        while i + 64 <= n {
            for (k, a) in acc.iter_mut().enumerate() {
                let xv = _mm512_cvtph_ps(_mm256_loadu_si256(xp.add(i + 16 * k).cast()));
                *a = _mm512_fmadd_ps(xv, _mm512_loadu_ps(yp.add(i + 16 * k)), *a);
            }
            i += 64;
        }
        while i + 16 <= n {
            let xv = _mm512_cvtph_ps(_mm256_loadu_si256(xp.add(i).cast()));
            acc[0] = _mm512_fmadd_ps(xv, _mm512_loadu_ps(yp.add(i)), acc[0]);
            i += 16;
        }
    }
    let mut sum = _mm512_reduce_add_ps(_mm512_add_ps(
        _mm512_add_ps(acc[0], acc[1]),
        _mm512_add_ps(acc[2], acc[3]),
    ));
    for j in i..n {
        sum += f16_to_f32(x[j]) * y[j];
    }
    sum
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
