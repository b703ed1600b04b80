//! aarch64 kernels: NEON (Advanced SIMD, part of the aarch64 baseline) and
//! NEON with the dot-product extension (`sdot`, Armv8.2 `FEAT_DotProd`).
//!
//! Every kernel here does the float operations of its scalar twin in
//! [`crate::scalar`] (and [`crate::quant`] for the activation quantizers) in
//! the same order, so all tiers agree bitwise (the scalar twins follow
//! llama.cpp's x86 order, see there):
//!
//! * **Quantized dots** keep the scalar twins' eight f32 lanes as two
//!   `float32x4_t` (lanes 0..4 and 4..8). Per block, lane `j` receives the
//!   exact integer sum of the products of elements `4j..4j+4`, converted to
//!   f32, with one fused multiply-add (`vfmaq_f32`) by `dx * dy` (a plain
//!   f32 multiply); the lanes are summed in [`crate::scalar::hsum8`]'s order
//!   at the end. The integer part differs by tier: [`Tier::Neon`] widens
//!   with `smull`/`smull2` and adds neighbours pairwise (`addp`, `saddlp`),
//!   [`Tier::NeonDotprod`] uses one `sdot` per 16 bytes, whose lane `j` is by
//!   definition the sum of four consecutive byte products. Integer sums are
//!   exact in any order, so both give the same lanes. `vdotq_s32` is still
//!   unstable in Rust, so `sdot` is inline assembly inside functions compiled
//!   with `#[target_feature(enable = "neon,dotprod")]`.
//! * The `_x4` kernels share the weight-side work (nibble unpacking, scale
//!   conversion) between four activation rows, and each row goes through
//!   exactly the float operations of the single-row kernel (Rust never
//!   contracts or reassociates float ops), so they are bitwise equal per row.
//! * **f16 ↔ f32** conversions use `fcvtl`/`fcvtl2`/`fcvtn`/`fcvt` in inline
//!   assembly (base Armv8 instructions; Rust's float16 NEON types and
//!   intrinsics are unstable). f16 → f32 is exact; f32 → f16 rounds to
//!   nearest even under the default FPCR, as F16C and `half` do.
//! * `exp_f32` and `silu_mul_f32` evaluate ggml's `ggml_v_expf` polynomial
//!   with the same FMAs as [`crate::scalar::ggml_expf`]; its final
//!   `vscalefps` step (`j · 2^n`, rounded once) is two exact power-of-two
//!   multiplies, `j · 2^⌊n/2⌋` (exact: `j` is near 1 and `|n| <= 192`) and
//!   then `· 2^(n - ⌊n/2⌋)` (the single rounding, subnormal results
//!   included).
//! * `dot_f32` and `scale_f32` are the generic pulp code of
//!   [`crate::simd_f32`] run with pulp's NEON token.
//!
//! Unlike the x86 int8 dots (`vpmaddubsw`'s sign trick), `smull` and `sdot`
//! multiply signed bytes directly, so these kernels are exact for any quant
//! value, -128 included.
//!
//! **Why there is no i8mm (`smmla`) kernel.** `smmla` multiplies a 2×8 by
//! an 8×2 int8 matrix: each of its four i32 results sums *eight* consecutive
//! byte products. The bit-exact kernel sets need, per block, the sum of
//! each group of *four* consecutive products in its own f32 lane (lane `j`
//! is scaled and accumulated with its own FMA, and the lanes are only added
//! together at the end, in `hsum8` order), because that is the order of
//! llama.cpp's x86 path which every tier reproduces. An eight-product sum
//! merges lanes `2k` and `2k+1` before the FMA, which changes the rounding;
//! recovering the four-product sums would mean zeroing half of every
//! operand, doubling the work and losing what `smmla` gains. So i8mm is
//! deliberately not used here; it could only serve a kernel set that gives
//! up bitwise equality with the other tiers.
//!
//! Safety model as in the x86 module: the kernels here are private and only
//! reached through a [`KernelSet`] that [`KernelSet::for_tier`] built after
//! the matching `*_available()` check. The kernels and their helpers are
//! `#[target_feature(enable = "neon")]` functions (Rust asks for the
//! attribute even where NEON is in the target's baseline), everything that
//! uses `sdot` is a `#[target_feature(enable = "neon,dotprod")]` function,
//! and plain-`fn` entry points call them.

use crate::dispatch::{KernelSet, Tier, SCALAR_KERNELS};
use crate::quant::{q8_scale, BlockQ4_0, BlockQ4_1, BlockQ8_0, BlockQ8_1, QK};
use crate::scalar::{assert_same_len, hsum16};
use crate::simd_f32::{DotF32, ScaleF32};
use core::arch::aarch64::*;
use core::arch::asm;
use half::f16;
use pulp::aarch64::Neon;
use pulp::Simd;

pub(crate) fn neon_available() -> bool {
    Neon::is_available()
}

pub(crate) fn neon_dotprod_available() -> bool {
    neon_available() && std::arch::is_aarch64_feature_detected!("dotprod")
}

pub(crate) fn neon_kernel_set() -> KernelSet {
    KernelSet {
        tier: Tier::Neon,
        vec_dot_q4_0_q8_0: neon_vec_dot_q4_0_q8_0,
        vec_dot_q4_1_q8_1: neon_vec_dot_q4_1_q8_1,
        vec_dot_q8_0_q8_0: neon_vec_dot_q8_0_q8_0,
        dot_f32: neon_dot_f32,
        dot_f16_f32: neon_dot_f16_f32,
        quantize_row_q8_0: neon_quantize_row_q8_0,
        quantize_row_q8_1: neon_quantize_row_q8_1,
        vec_dot_q4_0_q8_0_x4: neon_vec_dot_q4_0_q8_0_x4,
        vec_dot_q4_1_q8_1_x4: neon_vec_dot_q4_1_q8_1_x4,
        vec_dot_q8_0_q8_0_x4: neon_vec_dot_q8_0_q8_0_x4,
        axpy_f16_f32: neon_axpy_f16_f32,
        scale_f32: neon_scale_f32,
        scale_round_f16: neon_scale_round_f16,
        exp_f32: neon_exp_f32,
        silu_mul_f32: neon_silu_mul_f32,
        attn_scores_f16: neon_attn_scores_f16,
        prefers_repacked: true,
        gemm_q4_0_x8: crate::aarch64_repack::neon_gemm_q4_0_x8,
        gemm_q4_1_x8: crate::aarch64_repack::neon_gemm_q4_1_x8,
        gemm_q8_0_x8: crate::aarch64_repack::neon_gemm_q8_0_x8,
        ..SCALAR_KERNELS
    }
}

/// The portable block kernel: on aarch64 the compiler vectorizes its
/// 16-slot rows with NEON FMAs (`f32::mul_add` is `fmla`).
fn neon_attn_scores_f16(
    job: &crate::attention::ScoreJob,
    scores: &mut [f32],
    scores_stride: usize,
) {
    crate::scalar::blocked_scores_portable(job, scores, scores_stride);
}

pub(crate) fn neon_dotprod_kernel_set() -> KernelSet {
    KernelSet {
        tier: Tier::NeonDotprod,
        vec_dot_q4_0_q8_0: dotprod_vec_dot_q4_0_q8_0,
        vec_dot_q4_1_q8_1: dotprod_vec_dot_q4_1_q8_1,
        vec_dot_q8_0_q8_0: dotprod_vec_dot_q8_0_q8_0,
        vec_dot_q4_0_q8_0_x4: dotprod_vec_dot_q4_0_q8_0_x4,
        vec_dot_q4_1_q8_1_x4: dotprod_vec_dot_q4_1_q8_1_x4,
        vec_dot_q8_0_q8_0_x4: dotprod_vec_dot_q8_0_q8_0_x4,
        prefers_repacked: true,
        gemm_q4_0_x8: crate::aarch64_repack::dotprod_gemm_q4_0_x8,
        gemm_q4_1_x8: crate::aarch64_repack::dotprod_gemm_q4_1_x8,
        gemm_q8_0_x8: crate::aarch64_repack::dotprod_gemm_q8_0_x8,
        ..neon_kernel_set()
    }
}

// ---------------------------------------------------------------------------
// Safe entry points (the function pointers of the kernel sets).
// ---------------------------------------------------------------------------

/// Defines the safe single-row and four-row entry points of a `*_rows::<R>`
/// kernel.
macro_rules! row_entry_points {
    ($single:ident, $x4:ident, $rows:ident, $wt:ty, $at:ty $(,)?) => {
        fn $single(x: &[$wt], y: &[$at]) -> f32 {
            assert_same_len(x.len(), y.len());
            // SAFETY: only installed in the KernelSet of the tier whose
            // `*_available()` check passed (see the module's safety model);
            // the lengths are checked above.
            let [dot] = unsafe { $rows::<1>(x, [y]) };
            dot
        }

        fn $x4(x: &[$wt], y: [&[$at]; 4]) -> [f32; 4] {
            for yr in &y {
                assert_same_len(x.len(), yr.len());
            }
            // SAFETY: only installed in the KernelSet of the tier whose
            // `*_available()` check passed (see the module's safety model);
            // the lengths are checked above.
            unsafe { $rows::<4>(x, y) }
        }
    };
}

row_entry_points!(
    neon_vec_dot_q4_0_q8_0,
    neon_vec_dot_q4_0_q8_0_x4,
    neon_dot_q4_0_q8_0_rows,
    BlockQ4_0,
    BlockQ8_0,
);
row_entry_points!(
    neon_vec_dot_q4_1_q8_1,
    neon_vec_dot_q4_1_q8_1_x4,
    neon_dot_q4_1_q8_1_rows,
    BlockQ4_1,
    BlockQ8_1,
);
row_entry_points!(
    neon_vec_dot_q8_0_q8_0,
    neon_vec_dot_q8_0_q8_0_x4,
    neon_dot_q8_0_q8_0_rows,
    BlockQ8_0,
    BlockQ8_0,
);
row_entry_points!(
    dotprod_vec_dot_q4_0_q8_0,
    dotprod_vec_dot_q4_0_q8_0_x4,
    dotprod_dot_q4_0_q8_0_rows,
    BlockQ4_0,
    BlockQ8_0,
);
row_entry_points!(
    dotprod_vec_dot_q4_1_q8_1,
    dotprod_vec_dot_q4_1_q8_1_x4,
    dotprod_dot_q4_1_q8_1_rows,
    BlockQ4_1,
    BlockQ8_1,
);
row_entry_points!(
    dotprod_vec_dot_q8_0_q8_0,
    dotprod_vec_dot_q8_0_q8_0_x4,
    dotprod_dot_q8_0_q8_0_rows,
    BlockQ8_0,
    BlockQ8_0,
);

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

/// Defines plain-`fn` entry points for `#[target_feature(enable = "neon")]`
/// kernels (function pointers in a [`KernelSet`] cannot have target
/// features).
macro_rules! neon_entry_points {
    ($($name:ident => $impl:ident($($arg:ident: $ty:ty),*) $(-> $ret:ty)?;)*) => {$(
        fn $name($($arg: $ty),*) $(-> $ret)? {
            // SAFETY: only installed in the NEON kernel sets, built after
            // `neon_available()`; the kernel has no other precondition.
            unsafe { $impl($($arg),*) }
        }
    )*};
}

neon_entry_points! {
    neon_quantize_row_q8_0 => neon_quantize_row_q8_0_impl(x: &[f32], y: &mut [BlockQ8_0]);
    neon_quantize_row_q8_1 => neon_quantize_row_q8_1_impl(x: &[f32], y: &mut [BlockQ8_1]);
    neon_dot_f16_f32 => neon_dot_f16_f32_impl(x: &[f16], y: &[f32]) -> f32;
    neon_axpy_f16_f32 => neon_axpy_f16_f32_impl(a: f32, x: &[f16], y: &mut [f32]);
    neon_scale_round_f16 => neon_scale_round_f16_impl(a: f32, x: &mut [f32]);
    neon_exp_f32 => neon_exp_f32_impl(x: &mut [f32]);
    neon_silu_mul_f32 => neon_silu_mul_f32_impl(gate: &[f32], up: &[f32], out: &mut [f32]);
}

// ---------------------------------------------------------------------------
// Shared helpers.
// ---------------------------------------------------------------------------

/// `fcvtl`: four f16 (bit patterns) → f32, exact.
#[inline]
#[target_feature(enable = "neon")]
pub(crate) fn fcvtl(h: uint16x4_t) -> float32x4_t {
    let out: float32x4_t;
    // SAFETY: `fcvtl` is a base Advanced SIMD instruction; it only reads and
    // writes the named vector registers (no memory, no flags).
    unsafe {
        asm!(
            "fcvtl {out:v}.4s, {h:v}.4h",
            out = lateout(vreg) out,
            h = in(vreg) h,
            options(pure, nomem, nostack, preserves_flags),
        );
    }
    out
}

/// `fcvtl2`: the upper four f16 of `h` → f32, exact.
#[inline]
#[target_feature(enable = "neon")]
pub(crate) fn fcvtl2(h: uint16x8_t) -> float32x4_t {
    let out: float32x4_t;
    // SAFETY: as for `fcvtl`.
    unsafe {
        asm!(
            "fcvtl2 {out:v}.4s, {h:v}.8h",
            out = lateout(vreg) out,
            h = in(vreg) h,
            options(pure, nomem, nostack, preserves_flags),
        );
    }
    out
}

/// `fcvtn`: four f32 → f16 bit patterns, rounded to nearest even (the
/// default FPCR rounding mode, which Rust code always runs under).
#[inline]
#[target_feature(enable = "neon")]
fn fcvtn(v: float32x4_t) -> uint16x4_t {
    let out: uint16x4_t;
    // SAFETY: as for `fcvtl`.
    unsafe {
        asm!(
            "fcvtn {out:v}.4h, {v:v}.4s",
            out = lateout(vreg) out,
            v = in(vreg) v,
            options(pure, nomem, nostack, preserves_flags),
        );
    }
    out
}

/// One f16 → f32 (exact), with `fcvt`.
#[inline]
#[target_feature(enable = "neon")]
fn f16_to_f32(h: f16) -> f32 {
    let out: f32;
    // SAFETY: as for `fcvtl` (`fcvt` is a base floating-point instruction).
    unsafe {
        asm!(
            "fcvt {out:s}, {h:h}",
            out = lateout(vreg) out,
            h = in(vreg) h.to_bits(),
            options(pure, nomem, nostack, preserves_flags),
        );
    }
    out
}

/// The four lanes of `v`.
#[inline]
#[target_feature(enable = "neon")]
fn f32x4_lanes(v: float32x4_t) -> [f32; 4] {
    let mut out = [0.0f32; 4];
    // SAFETY: `out` is 4 writable f32; NEON stores need no alignment.
    unsafe { vst1q_f32(out.as_mut_ptr(), v) };
    out
}

/// `dx · dy[r]` for each row `r` (plain f32 multiplies, as the scalar
/// twins do), the `R` activation scales converted in one `fcvtl`.
#[inline]
#[target_feature(enable = "neon")]
fn row_scales<const R: usize>(dx: f32, dy: [f16; R]) -> [f32; R] {
    const { assert!(R >= 1 && R <= 4) };
    let mut bits = 0u64;
    for (r, h) in dy.iter().enumerate() {
        bits |= u64::from(h.to_bits()) << (16 * r);
    }
    let d = f32x4_lanes(vmulq_n_f32(fcvtl(vcreate_u16(bits)), dx));
    core::array::from_fn(|r| d[r])
}

/// The `(d, m)` or `(d, s)` header of a block as two f16 bit patterns in
/// one word (`d` in the low half).
#[inline(always)]
fn header_bits(d: f16, m: f16) -> u64 {
    u64::from(d.to_bits()) | (u64::from(m.to_bits()) << 16)
}

/// The `(d, s)` headers of up to four Q8_1 rows as `([d0..d3], [s0..s3])`
/// (missing rows are zero), in two `fcvtl`.
#[inline]
#[target_feature(enable = "neon")]
fn q8_1_headers<const R: usize>(h: [u64; R]) -> (float32x4_t, float32x4_t) {
    const { assert!(R >= 1 && R <= 4) };
    let mut lo = 0u64;
    let mut hi = 0u64;
    for (r, &bits) in h.iter().enumerate() {
        if r < 2 {
            lo |= bits << (32 * r);
        } else {
            hi |= bits << (32 * (r - 2));
        }
    }
    let a = fcvtl(vcreate_u16(lo)); // [d0, s0, d1, s1]
    let b = fcvtl(vcreate_u16(hi)); // [d2, s2, d3, s3]
    (vuzp1q_f32(a, b), vuzp2q_f32(a, b))
}

/// Sum of the eight lanes `[lo, hi]` in [`crate::scalar::hsum8`]'s order:
/// `t = hi + lo`, then `(t0 + t2) + (t1 + t3)`.
#[inline]
#[target_feature(enable = "neon")]
pub(crate) fn hsum8_f32x4x2([lo, hi]: [float32x4_t; 2]) -> f32 {
    let t = vaddq_f32(hi, lo);
    let u = vadd_f32(vget_low_f32(t), vget_high_f32(t));
    vget_lane_f32::<0>(u) + vget_lane_f32::<1>(u)
}

/// One block's scaled accumulation: `acc[j] = fma(d, lanes[j], acc[j])`
/// with lanes 0..4 from `lo` and 4..8 from `hi` (exact integers → f32).
#[inline]
#[target_feature(enable = "neon")]
fn block_fma(acc: &mut [float32x4_t; 2], d: f32, lo: int32x4_t, hi: int32x4_t) {
    let dv = vdupq_n_f32(d);
    acc[0] = vfmaq_f32(acc[0], dv, vcvtq_f32_s32(lo));
    acc[1] = vfmaq_f32(acc[1], dv, vcvtq_f32_s32(hi));
}

/// The 32 quants of an 8-bit block as elements 0..16 and 16..32.
#[inline]
#[target_feature(enable = "neon")]
fn load_q8(qs: &[i8; QK]) -> [int8x16_t; 2] {
    // SAFETY: `qs` is 32 readable bytes: loads at 0 and 16 of 16 bytes each
    // are in bounds; NEON loads need no alignment.
    unsafe { [vld1q_s8(qs.as_ptr()), vld1q_s8(qs.as_ptr().add(16))] }
}

/// 32 packed nibbles (ggml layout) as bytes `0..=15`: elements 0..16 (the
/// low nibbles) and 16..32 (the high nibbles).
#[inline]
#[target_feature(enable = "neon")]
pub(crate) fn q4_bytes(qs: &[u8; QK / 2]) -> [int8x16_t; 2] {
    // SAFETY: `qs` is 16 readable bytes; NEON loads need no alignment.
    let v = unsafe { vld1q_u8(qs.as_ptr()) };
    let lo = vandq_u8(v, vdupq_n_u8(0x0F));
    let hi = vshrq_n_u8::<4>(v);
    [vreinterpretq_s8_u8(lo), vreinterpretq_s8_u8(hi)]
}

/// Q4_0 nibbles as signed values `q - 8` (`-8..=7`).
#[inline]
#[target_feature(enable = "neon")]
pub(crate) fn q4_0_values(qs: &[u8; QK / 2]) -> [int8x16_t; 2] {
    let eight = vdupq_n_s8(8);
    q4_bytes(qs).map(|v| vsubq_s8(v, eight))
}

/// Lane `j` = Σ of `a[k] · b[k]` for `k` in `4j..4j+4`, exact, with plain
/// NEON, for `|a| <= 15` (4-bit weights): the byte products (`|p| <= 1920`)
/// and their pairwise sums fit in i16.
#[inline]
#[target_feature(enable = "neon")]
pub(crate) fn neon_lanes_q4(a: int8x16_t, b: int8x16_t) -> int32x4_t {
    let p0 = vmull_s8(vget_low_s8(a), vget_low_s8(b));
    let p1 = vmull_high_s8(a, b);
    vpaddlq_s16(vpaddq_s16(p0, p1))
}

/// As [`neon_lanes_q4`] for any int8 operands: pairs are widened to i32
/// before the second pairwise add (`2 · 128 · 128` overflows i16).
#[inline]
#[target_feature(enable = "neon")]
pub(crate) fn neon_lanes_q8(a: int8x16_t, b: int8x16_t) -> int32x4_t {
    let p0 = vmull_s8(vget_low_s8(a), vget_low_s8(b));
    let p1 = vmull_high_s8(a, b);
    vpaddq_s32(vpaddlq_s16(p0), vpaddlq_s16(p1))
}

/// Lane `j` = Σ of `a[k] · b[k]` for `k` in `4j..4j+4`, exact: one `sdot`
/// into a zeroed accumulator.
#[inline]
#[target_feature(enable = "neon,dotprod")]
pub(crate) fn sdot_lanes(a: int8x16_t, b: int8x16_t) -> int32x4_t {
    let mut acc = vdupq_n_s32(0);
    // SAFETY: `sdot` is available (this function's target features, checked
    // by `neon_dotprod_available()` before any caller is reachable); it only
    // reads and writes the named vector registers.
    unsafe {
        asm!(
            "sdot {acc:v}.4s, {a:v}.16b, {b:v}.16b",
            acc = inout(vreg) acc,
            a = in(vreg) a,
            b = in(vreg) b,
            options(pure, nomem, nostack, preserves_flags),
        );
    }
    acc
}

// ---------------------------------------------------------------------------
// Int8 dots, one block per step as the scalar twins: the same code for both
// tiers, with the tier's integer lane sums.
// ---------------------------------------------------------------------------

/// Defines the `*_rows::<R>` kernels (one weight row against `R <= 4`
/// activation rows) of one tier.
macro_rules! quant_dot_rows {
    (
        features: $features:literal,
        lanes_q4: $lanes_q4:ident,
        lanes_q8: $lanes_q8:ident,
        q4_0: $q4_0:ident,
        q4_1: $q4_1:ident,
        q8_0: $q8_0:ident $(,)?
    ) => {
        /// Q4_0 · Q8_0 for `R` activation rows, bitwise as
        /// [`crate::scalar::scalar_vec_dot_q4_0_q8_0`] per row.
        ///
        /// # Safety
        /// The CPU must support the target features this function is
        /// compiled with. Every `y[r]` must have at least `x.len()` blocks
        /// (otherwise it panics).
        #[target_feature(enable = $features)]
        unsafe fn $q4_0<const R: usize>(x: &[BlockQ4_0], y: [&[BlockQ8_0]; R]) -> [f32; R] {
            let n = x.len();
            let y = y.map(|yr| &yr[..n]);
            let mut acc = [[vdupq_n_f32(0.0); 2]; R];
            for (i, bx) in x.iter().enumerate() {
                let [xl, xh] = q4_0_values(&bx.qs);
                let d = row_scales::<R>(f16_to_f32(bx.d), core::array::from_fn(|r| y[r][i].d));
                for r in 0..R {
                    let [yl, yh] = load_q8(&y[r][i].qs);
                    let lo = $lanes_q4(xl, yl);
                    let hi = $lanes_q4(xh, yh);
                    block_fma(&mut acc[r], d[r], lo, hi);
                }
            }
            acc.map(|a| hsum8_f32x4x2(a))
        }

        /// Q4_1 · Q8_1 for `R` activation rows, bitwise as
        /// [`crate::scalar::scalar_vec_dot_q4_1_q8_1`] per row: the `m · s`
        /// terms are accumulated with one FMA per block (lane `r` of
        /// `summs` for row `r`) and added after the lane sum.
        ///
        /// # Safety
        /// As the Q4_0 kernel of this tier.
        #[target_feature(enable = $features)]
        unsafe fn $q4_1<const R: usize>(x: &[BlockQ4_1], y: [&[BlockQ8_1]; R]) -> [f32; R] {
            let n = x.len();
            let y = y.map(|yr| &yr[..n]);
            let mut acc = [[vdupq_n_f32(0.0); 2]; R];
            let mut summs = vdupq_n_f32(0.0);
            for (i, bx) in x.iter().enumerate() {
                let [xl, xh] = q4_bytes(&bx.qs);
                // [dx, mx, 0, 0]
                let hx = fcvtl(vcreate_u16(header_bits(bx.d, bx.m)));
                let (dy, sy) =
                    q8_1_headers::<R>(core::array::from_fn(|r| header_bits(y[r][i].d, y[r][i].s)));
                // Lane r: dy_r · dx (= dx · dy_r), and fma(mx, sy_r, summs_r).
                let d = f32x4_lanes(vmulq_laneq_f32::<0>(dy, hx));
                summs = vfmaq_laneq_f32::<1>(summs, sy, hx);
                for r in 0..R {
                    let [yl, yh] = load_q8(&y[r][i].qs);
                    let lo = $lanes_q4(xl, yl);
                    let hi = $lanes_q4(xh, yh);
                    block_fma(&mut acc[r], d[r], lo, hi);
                }
            }
            let ms = f32x4_lanes(summs);
            core::array::from_fn(|r| hsum8_f32x4x2(acc[r]) + ms[r])
        }

        /// Q8_0 · Q8_0 for `R` activation rows, bitwise as
        /// [`crate::scalar::scalar_vec_dot_q8_0_q8_0`] per row.
        ///
        /// # Safety
        /// As the Q4_0 kernel of this tier.
        #[target_feature(enable = $features)]
        unsafe fn $q8_0<const R: usize>(x: &[BlockQ8_0], y: [&[BlockQ8_0]; R]) -> [f32; R] {
            let n = x.len();
            let y = y.map(|yr| &yr[..n]);
            let mut acc = [[vdupq_n_f32(0.0); 2]; R];
            for (i, bx) in x.iter().enumerate() {
                let [xl, xh] = load_q8(&bx.qs);
                let d = row_scales::<R>(f16_to_f32(bx.d), core::array::from_fn(|r| y[r][i].d));
                for r in 0..R {
                    let [yl, yh] = load_q8(&y[r][i].qs);
                    let lo = $lanes_q8(xl, yl);
                    let hi = $lanes_q8(xh, yh);
                    block_fma(&mut acc[r], d[r], lo, hi);
                }
            }
            acc.map(|a| hsum8_f32x4x2(a))
        }
    };
}

quant_dot_rows!(
    features: "neon",
    lanes_q4: neon_lanes_q4,
    lanes_q8: neon_lanes_q8,
    q4_0: neon_dot_q4_0_q8_0_rows,
    q4_1: neon_dot_q4_1_q8_1_rows,
    q8_0: neon_dot_q8_0_q8_0_rows,
);

quant_dot_rows!(
    features: "neon,dotprod",
    lanes_q4: sdot_lanes,
    lanes_q8: sdot_lanes,
    q4_0: dotprod_dot_q4_0_q8_0_rows,
    q4_1: dotprod_dot_q4_1_q8_1_rows,
    q8_0: dotprod_dot_q8_0_q8_0_rows,
);

// ---------------------------------------------------------------------------
// Activation quantizers (bit-identical to `quant::quantize_row_q8_*`).
// ---------------------------------------------------------------------------

#[target_feature(enable = "neon")]
fn neon_quantize_row_q8_0_impl(x: &[f32], y: &mut [BlockQ8_0]) {
    assert_eq!(x.len(), y.len() * QK, "quantize_row_q8_0: slice lengths");
    for (xb, b) in x.chunks_exact(QK).zip(y.iter_mut()) {
        let (d, _) = neon_quantize_block_q8(xb, &mut b.qs);
        b.d = f16::from_f32(d);
    }
}

#[target_feature(enable = "neon")]
fn neon_quantize_row_q8_1_impl(x: &[f32], y: &mut [BlockQ8_1]) {
    assert_eq!(x.len(), y.len() * QK, "quantize_row_q8_1: slice lengths");
    for (xb, b) in x.chunks_exact(QK).zip(y.iter_mut()) {
        let (d, sum) = neon_quantize_block_q8(xb, &mut b.qs);
        b.d = f16::from_f32(d);
        b.s = f16::from_f32(d * sum as f32);
    }
}

/// Quantizes one block of 32 values (`x` has exactly 32, from
/// `chunks_exact`); returns `(d, Σ quants)` like the scalar version: the
/// same `amax` (`fmaxnm` from 0, as `f32::max`; max is exact in any order),
/// the same `id`, the same IEEE multiply, round-half-even (`fcvtns`) and
/// saturation to i8 (`sqxtn`, as Rust's `as i8`).
#[inline]
#[target_feature(enable = "neon")]
fn neon_quantize_block_q8(x: &[f32], qs: &mut [i8; QK]) -> (f32, i32) {
    let x = &x[..QK];
    // SAFETY: `x` has 32 values, so the 4-lane loads at 0, 4, .., 28 are in
    // bounds; NEON loads need no alignment.
    let v: [float32x4_t; 8] = core::array::from_fn(|k| unsafe { vld1q_f32(x.as_ptr().add(4 * k)) });
    let mut max = vdupq_n_f32(0.0);
    for vk in v {
        max = vmaxnmq_f32(max, vabsq_f32(vk));
    }
    let (d, id) = q8_scale(vmaxnmvq_f32(max));
    let q = v.map(|vk| vcvtnq_s32_f32(vmulq_n_f32(vk, id)));
    let h: [int16x8_t; 4] =
        core::array::from_fn(|k| vqmovn_high_s32(vqmovn_s32(q[2 * k]), q[2 * k + 1]));
    let lo = vqmovn_high_s16(vqmovn_s16(h[0]), h[1]);
    let hi = vqmovn_high_s16(vqmovn_s16(h[2]), h[3]);
    let sum = i32::from(vaddlvq_s8(lo)) + i32::from(vaddlvq_s8(hi));
    // SAFETY: `qs` is 32 writable bytes: stores at 0 and 16 of 16 bytes each
    // are in bounds; NEON stores need no alignment.
    unsafe {
        vst1q_s8(qs.as_mut_ptr(), lo);
        vst1q_s8(qs.as_mut_ptr().add(16), hi);
    }
    (d, sum)
}

// ---------------------------------------------------------------------------
// f16 × f32 kernels (attention over the f16 KV cache, f16 weights).
// ---------------------------------------------------------------------------

/// Sixteen-lane f16 × f32 dot (lanes `4k..4k+4` in `acc[k]`), the order of
/// [`crate::scalar::scalar_dot_f16_f32`]: element `i` is FMA'd into lane
/// `i % 16`, then the lanes are summed as [`crate::scalar::hsum16`] does.
#[target_feature(enable = "neon")]
fn neon_dot_f16_f32_impl(x: &[f16], y: &[f32]) -> f32 {
    assert_same_len(x.len(), y.len());
    let xc = x.chunks_exact(16);
    let yc = y.chunks_exact(16);
    let (xt, yt) = (xc.remainder(), yc.remainder());
    let mut acc = [vdupq_n_f32(0.0); 4];
    for (xb, yb) in xc.zip(yc) {
        // SAFETY: both chunks hold 16 elements, so the 8 × f16 loads at 0 and
        // 8 and the 4 × f32 loads at 0, 4, 8, 12 are in bounds (f16 is a
        // transparent u16); NEON loads need no alignment.
        let (h0, h1, yv) = unsafe {
            let yp = yb.as_ptr();
            (
                vld1q_u16(xb.as_ptr().cast()),
                vld1q_u16(xb.as_ptr().add(8).cast()),
                [
                    vld1q_f32(yp),
                    vld1q_f32(yp.add(4)),
                    vld1q_f32(yp.add(8)),
                    vld1q_f32(yp.add(12)),
                ],
            )
        };
        acc[0] = vfmaq_f32(acc[0], fcvtl(vget_low_u16(h0)), yv[0]);
        acc[1] = vfmaq_f32(acc[1], fcvtl2(h0), yv[1]);
        acc[2] = vfmaq_f32(acc[2], fcvtl(vget_low_u16(h1)), yv[2]);
        acc[3] = vfmaq_f32(acc[3], fcvtl2(h1), yv[3]);
    }
    if xt.is_empty() {
        // hsum16: t[k] = a[k + 8] + a[k], then hsum8(t).
        return hsum8_f32x4x2([vaddq_f32(acc[2], acc[0]), vaddq_f32(acc[3], acc[1])]);
    }
    let mut lanes = [0.0f32; 16];
    for (k, a) in acc.iter().enumerate() {
        lanes[4 * k..4 * k + 4].copy_from_slice(&f32x4_lanes(*a));
    }
    // The tail starts at a multiple of 16: its element j goes to lane j.
    for ((l, &a), &b) in lanes.iter_mut().zip(xt).zip(yt) {
        *l = a.to_f32().mul_add(b, *l);
    }
    hsum16(&lanes)
}

/// `y += a * x` with f16 `x`: `y[i] = fma(a, x[i], y[i])` as the scalar twin.
#[target_feature(enable = "neon")]
fn neon_axpy_f16_f32_impl(a: f32, x: &[f16], y: &mut [f32]) {
    assert_same_len(x.len(), y.len());
    let va = vdupq_n_f32(a);
    let mut xc = x.chunks_exact(8);
    let mut yc = y.chunks_exact_mut(8);
    for (xb, yb) in (&mut xc).zip(&mut yc) {
        // SAFETY: both chunks hold 8 elements: the 8 × f16 load and the two
        // 4 × f32 loads and stores at 0 and 4 are in bounds; NEON loads and
        // stores need no alignment.
        unsafe {
            let h = vld1q_u16(xb.as_ptr().cast());
            let yp = yb.as_mut_ptr();
            let y0 = vfmaq_f32(vld1q_f32(yp), va, fcvtl(vget_low_u16(h)));
            let y1 = vfmaq_f32(vld1q_f32(yp.add(4)), va, fcvtl2(h));
            vst1q_f32(yp, y0);
            vst1q_f32(yp.add(4), y1);
        }
    }
    for (o, &v) in yc.into_remainder().iter_mut().zip(xc.remainder()) {
        *o = a.mul_add(v.to_f32(), *o);
    }
}

/// `x[i] = f16(x[i] * a)` held as f32: an f32 multiply, `fcvtn` (round to
/// nearest even) and `fcvtl` back.
#[target_feature(enable = "neon")]
fn neon_scale_round_f16_impl(a: f32, x: &mut [f32]) {
    let mut chunks = x.chunks_exact_mut(4);
    for ch in &mut chunks {
        // SAFETY: `ch` holds 4 f32: the load and the store are in bounds;
        // NEON loads and stores need no alignment.
        unsafe {
            let v = vmulq_n_f32(vld1q_f32(ch.as_ptr()), a);
            vst1q_f32(ch.as_mut_ptr(), fcvtl(fcvtn(v)));
        }
    }
    crate::scalar::scalar_scale_round_f16(a, chunks.into_remainder());
}

// ---------------------------------------------------------------------------
// ggml's `ggml_v_expf` (in the scalar twin's AVX-512 form), for softmax and
// SwiGLU.
// ---------------------------------------------------------------------------

/// [`crate::scalar::ggml_expf`] on four lanes, operation for operation.
#[inline]
#[target_feature(enable = "neon")]
fn neon_expf(x: float32x4_t) -> float32x4_t {
    let c = |bits: u32| vdupq_n_f32(f32::from_bits(bits));
    let r = c(0x4b40_0000);
    // z = fma(x, log2(e), r); n = z - r
    let z = vfmaq_f32(r, x, c(0x3fb8_aa3b));
    let n = vsubq_f32(z, r);
    // b = fma(-n, ln2_lo, fma(-n, ln2_hi, x)) (`fmls` is a - b·c, fused).
    let b = vfmsq_f32(vfmsq_f32(x, n, c(0x3f31_7200)), n, c(0x35bf_be8e));
    let u = vmulq_f32(b, b);
    let j = vfmaq_f32(
        vfmaq_f32(vdupq_n_f32(1.0), c(0x3f7f_fff6), b),
        vfmaq_f32(
            vfmaq_f32(c(0x3eff_fedb), c(0x3e2a_af33), b),
            vfmaq_f32(c(0x3d2b_9f17), c(0x3c07_2010), b),
            u,
        ),
        u,
    );
    // j · 2^n rounded once (`vscalefps`): for |n| <= 192, 2^n1 and 2^n2 with
    // n1 = ⌊n/2⌋, n2 = n - n1 are normal floats, j · 2^n1 is exact (j is
    // within [0.7, 1.5]) and the second multiply is the single rounding.
    let ni = vcvtq_s32_f32(n);
    let n1 = vshrq_n_s32::<1>(ni);
    let n2 = vsubq_s32(ni, n1);
    let pow2 =
        |k: int32x4_t| vreinterpretq_f32_s32(vshlq_n_s32::<23>(vaddq_s32(k, vdupq_n_s32(127))));
    let res = vmulq_f32(vmulq_f32(j, pow2(n1)), pow2(n2));
    // |n| > 192: 0 when n <= 0, else +inf (NaN lanes compare false: kept).
    let big = vcagtq_f32(n, vdupq_n_f32(192.0));
    let alt = vbslq_f32(vclezq_f32(n), vdupq_n_f32(0.0), vdupq_n_f32(f32::INFINITY));
    vbslq_f32(big, alt, res)
}

/// `x[i] = ggml_expf(x[i])`.
#[target_feature(enable = "neon")]
fn neon_exp_f32_impl(x: &mut [f32]) {
    let mut chunks = x.chunks_exact_mut(4);
    for ch in &mut chunks {
        // SAFETY: `ch` holds 4 f32: the load and the store are in bounds;
        // NEON loads and stores need no alignment.
        unsafe {
            let v = vld1q_f32(ch.as_ptr());
            vst1q_f32(ch.as_mut_ptr(), neon_expf(v));
        }
    }
    crate::scalar::scalar_exp_f32(chunks.into_remainder());
}

/// `out[i] = (g / (1 + ggml_expf(0 - g))) * up[i]` as the scalar twin.
#[target_feature(enable = "neon")]
fn neon_silu_mul_f32_impl(gate: &[f32], up: &[f32], out: &mut [f32]) {
    assert_same_len(gate.len(), up.len());
    assert_same_len(gate.len(), out.len());
    let mut gc = gate.chunks_exact(4);
    let mut uc = up.chunks_exact(4);
    let mut oc = out.chunks_exact_mut(4);
    for ((g, u), o) in (&mut gc).zip(&mut uc).zip(&mut oc) {
        // SAFETY: all three chunks hold 4 f32: the loads and the store are
        // in bounds; NEON loads and stores need no alignment.
        unsafe {
            let g = vld1q_f32(g.as_ptr());
            let e = neon_expf(vsubq_f32(vdupq_n_f32(0.0), g));
            let silu = vdivq_f32(g, vaddq_f32(vdupq_n_f32(1.0), e));
            vst1q_f32(o.as_mut_ptr(), vmulq_f32(silu, vld1q_f32(u.as_ptr())));
        }
    }
    crate::scalar::scalar_silu_mul_f32(gc.remainder(), uc.remainder(), oc.into_remainder());
}
