//! aarch64 kernels over 8-row interleaved weights ([`crate::repack`]), for
//! [`crate::Tier::Neon`] and [`crate::Tier::NeonDotprod`].
//!
//! Per row and activation row the float operations are exactly those of the
//! scalar twins `repack::scalar_gemm_*_x8` (and so of the row-major kernels
//! and of llama.cpp's x86 order): lane `j` of a block is the exact integer
//! sum of the products of elements `4j..4j+4`, converted to f32 and
//! fused-multiply-added with `dx·dy` (a plain f32 multiply) into that row's
//! lane `j`; the eight lanes are summed in [`crate::scalar::hsum8`]'s order
//! at the end, and Q4_1 adds its `Σ fma(m, s)` term after that. The integer
//! lane sums are those of the row kernels in [`crate::aarch64`]: `smull` and
//! pairwise adds on [`crate::Tier::Neon`], one `sdot` per 16 bytes on
//! [`crate::Tier::NeonDotprod`]. Integer sums are exact in any order, and
//! both multiply signed bytes directly (Q4_0 nibbles become `q - 8`, Q8_0
//! quants lose their +128 offset with an `eor` first), so the lanes are the
//! scalar twins' for any quant value.
//!
//! How the work is laid out: a row keeps its eight lanes in two
//! `float32x4_t` (lanes 0..4 and 4..8), so one row group against `C`
//! activation rows needs `16·C` accumulators, and aarch64 has 32 vector
//! registers. A tile of `C` columns (4, 2 or 1, as `x86_repack`'s
//! `column_tiles!`) therefore runs in passes over the row group, each pass
//! taking `RB = 8 / C` rows (16 accumulators). Within a pass, each block's
//! eight f16 scales convert in one `fcvtl`/`fcvtl2` pair and are multiplied
//! by each column's `dy` four rows at a time (`fmul` by element), each
//! column's activation quants are loaded once and shared by the pass's rows,
//! and each row's weights are unpacked once and shared by the `C` columns;
//! the scaled accumulation is `fmla` by element. Every result is a chain of
//! per-block FMAs over the blocks in order, whatever the tile and pass, so
//! the split does not change any bit (and a row's result never depends on
//! the number of columns: batch invariance).
//!
//! Safety model as in [`crate::aarch64`]: the kernels are private
//! `#[target_feature]` functions (`neon`, or `neon,dotprod` for everything
//! that uses `sdot`) reached only through the plain-`fn` entry points below,
//! which are only installed in the [`crate::KernelSet`] of a tier whose
//! `*_available()` check passed.

// Passes index several per-column and per-row arrays in step; iterators
// would obscure that.
#![allow(clippy::needless_range_loop)]

use crate::aarch64::{
    fcvtl, fcvtl2, hsum8_f32x4x2, neon_lanes_q4, neon_lanes_q8, q4_0_values, q4_bytes, sdot_lanes,
};
use crate::quant::{BlockQ8_0, BlockQ8_1, QK};
use crate::repack::{check_group_gemm, ActAux, BlockQ4_0x8, BlockQ4_1x8, BlockQ8_0x8, GROUP};
use core::arch::aarch64::*;

/// Columns per tile: enough to share the weight-side unpacking, few enough
/// that a pass's accumulators, activations and weights fit in registers.
const TILE: usize = 4;

/// Defines the plain-`fn` entry point of a row-group GEMM: tiles of four,
/// then two, then one column, each run as the passes `$pass::<C, RB, R0>`
/// over rows `R0..R0 + RB` (`C · RB = 8`), then `$after::<C>` if given.
macro_rules! group_gemm_entry {
    ($name:ident, $pass:ident, $wt:ty, $at:ty $(, then $after:ident)? $(,)?) => {
        pub(crate) fn $name(w: &[$wt], act: &[$at], aux: &[ActAux], out: &mut [[f32; GROUP]]) {
            let bpr = check_group_gemm(w, act, aux, out);
            let n = out.len();
            let mut j = 0;
            while j < n {
                let c = match n - j {
                    k if k >= TILE => TILE,
                    k if k >= 2 => 2,
                    _ => 1,
                };
                let (a, x) = (&act[j * bpr..(j + c) * bpr], &aux[j * bpr..(j + c) * bpr]);
                let o = &mut out[j..j + c];
                // SAFETY: only installed in the KernelSet of the tier whose
                // `*_available()` check passed (see the module's safety
                // model); `a` and `x` hold `c · bpr` blocks and `o` `c` rows
                // (lengths checked by `check_group_gemm` above).
                unsafe {
                    match c {
                        TILE => {
                            $pass::<TILE, 2, 0>(w, a, x, o);
                            $pass::<TILE, 2, 2>(w, a, x, o);
                            $pass::<TILE, 2, 4>(w, a, x, o);
                            $pass::<TILE, 2, 6>(w, a, x, o);
                            $($after::<TILE>(w, x, o);)?
                        }
                        2 => {
                            $pass::<2, 4, 0>(w, a, x, o);
                            $pass::<2, 4, 4>(w, a, x, o);
                            $($after::<2>(w, x, o);)?
                        }
                        _ => {
                            $pass::<1, 8, 0>(w, a, x, o);
                            $($after::<1>(w, x, o);)?
                        }
                    }
                }
                j += c;
            }
        }
    };
}

group_gemm_entry!(neon_gemm_q4_0_x8, neon_q4_0_pass, BlockQ4_0x8, BlockQ8_0);
group_gemm_entry!(neon_gemm_q4_1_x8, neon_q4_1_pass, BlockQ4_1x8, BlockQ8_1, then q4_1_add_summs);
group_gemm_entry!(neon_gemm_q8_0_x8, neon_q8_0_pass, BlockQ8_0x8, BlockQ8_0);
group_gemm_entry!(
    dotprod_gemm_q4_0_x8,
    dotprod_q4_0_pass,
    BlockQ4_0x8,
    BlockQ8_0
);
group_gemm_entry!(dotprod_gemm_q4_1_x8, dotprod_q4_1_pass, BlockQ4_1x8, BlockQ8_1, then q4_1_add_summs);
group_gemm_entry!(
    dotprod_gemm_q8_0_x8,
    dotprod_q8_0_pass,
    BlockQ8_0x8,
    BlockQ8_0
);

// ---------------------------------------------------------------------------
// Helpers of the group kernels (the conversions, integer lanes and `hsum8`
// they share with the row kernels come from `crate::aarch64`).
// ---------------------------------------------------------------------------

/// Eight f16 (bit patterns) → f32 as lanes 0..4 and 4..8, exact.
#[inline]
#[target_feature(enable = "neon")]
fn f16x8_to_f32(h: uint16x8_t) -> [float32x4_t; 2] {
    [fcvtl(vget_low_u16(h)), fcvtl2(h)]
}

/// `fma(s[lane], x, acc)` per lane (`fmla` by element: one rounding).
#[inline]
#[target_feature(enable = "neon")]
fn fma_by_lane(acc: float32x4_t, x: float32x4_t, s: float32x4_t, lane: usize) -> float32x4_t {
    match lane {
        0 => vfmaq_laneq_f32::<0>(acc, x, s),
        1 => vfmaq_laneq_f32::<1>(acc, x, s),
        2 => vfmaq_laneq_f32::<2>(acc, x, s),
        _ => vfmaq_laneq_f32::<3>(acc, x, s),
    }
}

/// One block of one row and column: `acc[h][j] = fma(d, lanes, acc[h][j])`
/// with the integer lanes 0..4 in `lo` and 4..8 in `hi` (exact → f32), and
/// the row's `d = dx · dy` in lane `row % 4` of `s`.
#[inline]
#[target_feature(enable = "neon")]
fn block_fma(acc: &mut [float32x4_t; 2], lo: int32x4_t, hi: int32x4_t, s: float32x4_t, row: usize) {
    acc[0] = fma_by_lane(acc[0], vcvtq_f32_s32(lo), s, row % 4);
    acc[1] = fma_by_lane(acc[1], vcvtq_f32_s32(hi), s, row % 4);
}

/// Activation blocks with 32 int8 quants (Q8_0, Q8_1).
trait ActQuants {
    fn quants(&self) -> &[i8; QK];
}

impl ActQuants for BlockQ8_0 {
    #[inline(always)]
    fn quants(&self) -> &[i8; QK] {
        &self.qs
    }
}

impl ActQuants for BlockQ8_1 {
    #[inline(always)]
    fn quants(&self) -> &[i8; QK] {
        &self.qs
    }
}

/// What block `i` of each of `C` activation rows contributes to a pass: its
/// quants (elements 0..16 and 16..32) and the scales `dx · dy` of rows 0..4
/// and 4..8 (plain f32 multiplies, as the scalar twins).
///
/// # Safety
/// `act` and `aux` must hold at least `(C - 1) · bpr + i + 1` blocks.
#[inline]
#[target_feature(enable = "neon")]
unsafe fn column_operands<A: ActQuants, const C: usize>(
    act: &[A],
    aux: &[ActAux],
    bpr: usize,
    i: usize,
    dx: [float32x4_t; 2],
) -> ([[int8x16_t; 2]; C], [[float32x4_t; 2]; C]) {
    let mut y = [[vdupq_n_s8(0); 2]; C];
    let mut s = [[vdupq_n_f32(0.0); 2]; C];
    for c in 0..C {
        // SAFETY: `c * bpr + i < act.len()` and `< aux.len()` (the contract).
        let (a, x) = unsafe {
            (
                act.get_unchecked(c * bpr + i),
                aux.get_unchecked(c * bpr + i),
            )
        };
        let qs = a.quants();
        // SAFETY: `qs` is 32 readable bytes: loads at 0 and 16 of 16 bytes
        // each are in bounds; NEON loads need no alignment.
        y[c] = unsafe { [vld1q_s8(qs.as_ptr()), vld1q_s8(qs.as_ptr().add(16))] };
        s[c] = [vmulq_n_f32(dx[0], x.d), vmulq_n_f32(dx[1], x.d)];
    }
    (y, s)
}

/// Q8_0 quants stored `+128` as `u8`, back to signed: elements 0..16 and
/// 16..32.
#[inline]
#[target_feature(enable = "neon")]
fn q8_0x8_values(qs: &[u8; QK]) -> [int8x16_t; 2] {
    // SAFETY: `qs` is 32 readable bytes: loads at 0 and 16 of 16 bytes each
    // are in bounds; NEON loads need no alignment.
    let (lo, hi) = unsafe { (vld1q_u8(qs.as_ptr()), vld1q_u8(qs.as_ptr().add(16))) };
    let flip = vdupq_n_u8(0x80);
    [
        vreinterpretq_s8_u8(veorq_u8(lo, flip)),
        vreinterpretq_s8_u8(veorq_u8(hi, flip)),
    ]
}

/// The eight rows' `d` of a Q4_0 / Q8_0 block, as f32.
#[inline]
#[target_feature(enable = "neon")]
fn scales_x8(d: &[half::f16; GROUP]) -> [float32x4_t; 2] {
    // SAFETY: `d` is 8 f16 (`repr(transparent)` u16), 16 readable bytes;
    // NEON loads need no alignment.
    f16x8_to_f32(unsafe { vld1q_u16(d.as_ptr().cast()) })
}

/// The eight rows' `(d, m)` of a Q4_1 block as f32: `([d0..d8], [m0..m8])`.
#[inline]
#[target_feature(enable = "neon")]
fn headers_q4_1_x8(dm: &[[half::f16; 2]; GROUP]) -> ([float32x4_t; 2], [float32x4_t; 2]) {
    // SAFETY: `dm` is 16 f16 (`repr(transparent)` u16), 32 readable bytes;
    // `ld2` de-interleaves them into the eight `d` and the eight `m`; NEON
    // loads need no alignment.
    let h = unsafe { vld2q_u16(dm.as_ptr().cast()) };
    (f16x8_to_f32(h.0), f16x8_to_f32(h.1))
}

/// Writes `hsum8` of each accumulated row to `out[c][R0 + r]`.
#[inline]
#[target_feature(enable = "neon")]
fn store_rows<const C: usize, const RB: usize, const R0: usize>(
    acc: [[[float32x4_t; 2]; RB]; C],
    out: &mut [[f32; GROUP]],
) {
    for (o, a) in out.iter_mut().zip(acc) {
        for r in 0..RB {
            o[R0 + r] = hsum8_f32x4x2(a[r]);
        }
    }
}

/// Adds Q4_1's `m·s` terms to the lane sums that the passes wrote in
/// `out`: per row `r` and column `c`, `Σ fma(m, s)` over the blocks in
/// order (GCC's contraction of ggml's `summs += m * s`), then
/// `out[c][r] = hsum8 + summs` as the scalar twin.
///
/// # Safety
/// The CPU must support NEON; `aux` holds `C · w.len()` blocks and `out` `C`
/// rows.
#[target_feature(enable = "neon")]
unsafe fn q4_1_add_summs<const C: usize>(
    w: &[BlockQ4_1x8],
    aux: &[ActAux],
    out: &mut [[f32; GROUP]],
) {
    let bpr = w.len();
    let mut summ = [[vdupq_n_f32(0.0); 2]; C];
    for (i, b) in w.iter().enumerate() {
        let (_, m) = headers_q4_1_x8(&b.dm);
        for c in 0..C {
            // SAFETY: `c * bpr + i < C * bpr`, the length of `aux` (the contract).
            let s = unsafe { aux.get_unchecked(c * bpr + i) }.s;
            summ[c][0] = vfmaq_n_f32(summ[c][0], m[0], s);
            summ[c][1] = vfmaq_n_f32(summ[c][1], m[1], s);
        }
    }
    for (o, [lo, hi]) in out.iter_mut().zip(summ) {
        let mut ms = [0.0f32; GROUP];
        // SAFETY: `ms` is 8 writable f32: stores at 0 and 4 of 4 each are in
        // bounds; NEON stores need no alignment.
        unsafe {
            vst1q_f32(ms.as_mut_ptr(), lo);
            vst1q_f32(ms.as_mut_ptr().add(4), hi);
        }
        for (v, m) in o.iter_mut().zip(ms) {
            *v += m;
        }
    }
}

// ---------------------------------------------------------------------------
// The passes: the same code for both tiers, with the tier's integer lanes.
// ---------------------------------------------------------------------------

/// Defines one tier's `*_pass::<C, RB, R0>` kernels: rows `R0..R0 + RB` of
/// one row group against `C` activation rows.
macro_rules! group_passes {
    (
        features: $features:literal,
        lanes_q4: $lanes_q4:ident,
        lanes_q8: $lanes_q8:ident,
        q4_0: $q4_0:ident,
        q4_1: $q4_1:ident,
        q8_0: $q8_0:ident $(,)?
    ) => {
        /// Rows `R0..R0 + RB` of a Q4_0 row group against `C` Q8_0
        /// activation rows (`act`/`aux`: `C · w.len()` blocks, row after
        /// row), into `out[c][R0..R0 + RB]`; bitwise as
        /// [`crate::repack::scalar_gemm_q4_0_x8`].
        ///
        /// # Safety
        /// The CPU must support this function's target features; `act` and
        /// `aux` hold `C · w.len()` blocks and `out` at least `C` rows.
        #[target_feature(enable = $features)]
        unsafe fn $q4_0<const C: usize, const RB: usize, const R0: usize>(
            w: &[BlockQ4_0x8],
            act: &[BlockQ8_0],
            aux: &[ActAux],
            out: &mut [[f32; GROUP]],
        ) {
            const { assert!(C * RB == GROUP && R0 + RB <= GROUP) };
            let bpr = w.len();
            let mut acc = [[[vdupq_n_f32(0.0); 2]; RB]; C];
            for (i, b) in w.iter().enumerate() {
                let dx = scales_x8(&b.d);
                // SAFETY: `act` and `aux` hold `C · bpr` blocks and `i < bpr`.
                let (y, s) = unsafe { column_operands::<_, C>(act, aux, bpr, i, dx) };
                for r in 0..RB {
                    let k = R0 + r;
                    let [xl, xh] = q4_0_values(&b.qs[k]);
                    for c in 0..C {
                        let lo = $lanes_q4(xl, y[c][0]);
                        let hi = $lanes_q4(xh, y[c][1]);
                        block_fma(&mut acc[c][r], lo, hi, s[c][k / 4], k);
                    }
                }
            }
            store_rows::<C, RB, R0>(acc, out);
        }

        /// Rows `R0..R0 + RB` of a Q4_1 row group against `C` Q8_1
        /// activation rows: the lane sums of
        /// [`crate::repack::scalar_gemm_q4_1_x8`] (the `m·s` terms are
        /// added by [`q4_1_add_summs`]).
        ///
        /// # Safety
        /// As the Q4_0 pass of this tier.
        #[target_feature(enable = $features)]
        unsafe fn $q4_1<const C: usize, const RB: usize, const R0: usize>(
            w: &[BlockQ4_1x8],
            act: &[BlockQ8_1],
            aux: &[ActAux],
            out: &mut [[f32; GROUP]],
        ) {
            const { assert!(C * RB == GROUP && R0 + RB <= GROUP) };
            let bpr = w.len();
            let mut acc = [[[vdupq_n_f32(0.0); 2]; RB]; C];
            for (i, b) in w.iter().enumerate() {
                let (dx, _) = headers_q4_1_x8(&b.dm);
                // SAFETY: `act` and `aux` hold `C · bpr` blocks and `i < bpr`.
                let (y, s) = unsafe { column_operands::<_, C>(act, aux, bpr, i, dx) };
                for r in 0..RB {
                    let k = R0 + r;
                    let [xl, xh] = q4_bytes(&b.qs[k]);
                    for c in 0..C {
                        let lo = $lanes_q4(xl, y[c][0]);
                        let hi = $lanes_q4(xh, y[c][1]);
                        block_fma(&mut acc[c][r], lo, hi, s[c][k / 4], k);
                    }
                }
            }
            store_rows::<C, RB, R0>(acc, out);
        }

        /// Rows `R0..R0 + RB` of a Q8_0 row group against `C` Q8_0
        /// activation rows; bitwise as
        /// [`crate::repack::scalar_gemm_q8_0_x8`].
        ///
        /// # Safety
        /// As the Q4_0 pass of this tier.
        #[target_feature(enable = $features)]
        unsafe fn $q8_0<const C: usize, const RB: usize, const R0: usize>(
            w: &[BlockQ8_0x8],
            act: &[BlockQ8_0],
            aux: &[ActAux],
            out: &mut [[f32; GROUP]],
        ) {
            const { assert!(C * RB == GROUP && R0 + RB <= GROUP) };
            let bpr = w.len();
            let mut acc = [[[vdupq_n_f32(0.0); 2]; RB]; C];
            for (i, b) in w.iter().enumerate() {
                let dx = scales_x8(&b.d);
                // SAFETY: `act` and `aux` hold `C · bpr` blocks and `i < bpr`.
                let (y, s) = unsafe { column_operands::<_, C>(act, aux, bpr, i, dx) };
                for r in 0..RB {
                    let k = R0 + r;
                    let [xl, xh] = q8_0x8_values(&b.qs[k]);
                    for c in 0..C {
                        let lo = $lanes_q8(xl, y[c][0]);
                        let hi = $lanes_q8(xh, y[c][1]);
                        block_fma(&mut acc[c][r], lo, hi, s[c][k / 4], k);
                    }
                }
            }
            store_rows::<C, RB, R0>(acc, out);
        }
    };
}

group_passes!(
    features: "neon",
    lanes_q4: neon_lanes_q4,
    lanes_q8: neon_lanes_q8,
    q4_0: neon_q4_0_pass,
    q4_1: neon_q4_1_pass,
    q8_0: neon_q8_0_pass,
);

group_passes!(
    features: "neon,dotprod",
    lanes_q4: sdot_lanes,
    lanes_q8: sdot_lanes,
    q4_0: dotprod_q4_0_pass,
    q4_1: dotprod_q4_1_pass,
    q8_0: dotprod_q8_0_pass,
);
