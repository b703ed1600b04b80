//! x86-64 kernels over 8-row interleaved weights ([`crate::repack`]).
//!
//! Each kernel multiplies one row group by up to four activation rows at a
//! time. Per row and activation row the float operations are exactly those
//! of the row-major kernels (and of llama.cpp): lane `j` of a block is the
//! exact integer sum of elements `4j..4j+4`, converted to f32 and FMA'd with
//! `dx·dy` into that row's lane `j`; the eight lanes are summed in
//! `hsum_float_8` order (and Q4_1 adds its `Σ fma(m, s)` term last). The
//! lanes only live in other registers: AVX-512 keeps lanes 0..4 of four rows
//! in one register and lanes 4..8 in another, so the 16 byte halves of four
//! rows' nibbles are one 64-byte load.
//!
//! Safety model as in [`crate::x86`]: the `#[target_feature]` functions are
//! private and reached only through a [`crate::KernelSet`] built after the
//! tier's CPU-feature check.

use crate::quant::{BlockQ8_0, BlockQ8_1};
use crate::repack::{check_group_gemm, ActAux, BlockQ4_0x8, BlockQ4_1x8, BlockQ8_0x8, GROUP};
use core::arch::x86_64::*;

/// How far ahead (in bytes) the tiles prefetch weights: the hardware
/// prefetchers alone left the weight loads stalling on memory even when the
/// compute per block grows with the column count.
const PREFETCH_BYTES: usize = 8192;

/// Prefetches the cache lines `PREFETCH_BYTES` after `block` (which may lie
/// past the weights' end: prefetches never fault, and the address is only
/// computed with wrapping arithmetic).
#[inline(always)]
fn prefetch_ahead<T>(block: &T) {
    let p = (block as *const T)
        .cast::<i8>()
        .wrapping_add(PREFETCH_BYTES);
    for line in (0..core::mem::size_of::<T>()).step_by(64) {
        // SAFETY: `_mm_prefetch` is a hint that never faults, on any address.
        unsafe { _mm_prefetch::<_MM_HINT_T0>(p.wrapping_add(line)) };
    }
}

/// Columns per kernel call: enough to share the weight-side unpacking, few
/// enough that the accumulators stay in registers.
const TILE: usize = 4;

/// Runs `tile::<C>` over `out.len()` activation rows, four at a time, then
/// two, then one. Every column goes through the same per-column operations
/// whatever `C` is, so the split does not change any result.
macro_rules! column_tiles {
    ($w:expr, $act:expr, $aux:expr, $out:expr, $tile:ident) => {{
        let (w, act, aux, out) = ($w, $act, $aux, $out);
        let bpr = check_group_gemm(w, act, aux, out);
        let mut j = 0;
        let n = out.len();
        while j < n {
            let c = match n - j {
                k if k >= TILE => TILE,
                k if k >= 2 => 2,
                _ => 1,
            };
            let (a, x) = (&act[j * bpr..(j + c) * bpr], &aux[j * bpr..(j + c) * bpr]);
            let o = &mut out[j..j + c];
            // SAFETY: only installed in the KernelSet of the tier whose
            // feature check passed; slice lengths were checked above.
            unsafe {
                match c {
                    TILE => $tile::<TILE>(w, a, x, o),
                    2 => $tile::<2>(w, a, x, o),
                    _ => $tile::<1>(w, a, x, o),
                }
            }
            j += c;
        }
    }};
}

pub(crate) fn avx512vnni_gemm_q4_1_x8(
    w: &[BlockQ4_1x8],
    act: &[BlockQ8_1],
    aux: &[ActAux],
    out: &mut [[f32; GROUP]],
) {
    column_tiles!(w, act, aux, out, avx512_q4_1_tile)
}

pub(crate) fn avx512vnni_gemm_q4_0_x8(
    w: &[BlockQ4_0x8],
    act: &[BlockQ8_0],
    aux: &[ActAux],
    out: &mut [[f32; GROUP]],
) {
    column_tiles!(w, act, aux, out, avx512_q4_0_tile)
}

pub(crate) fn avx512vnni_gemm_q8_0_x8(
    w: &[BlockQ8_0x8],
    act: &[BlockQ8_0],
    aux: &[ActAux],
    out: &mut [[f32; GROUP]],
) {
    column_tiles!(w, act, aux, out, avx512_q8_0_tile)
}

pub(crate) fn avx2_gemm_q4_1_x8(
    w: &[BlockQ4_1x8],
    act: &[BlockQ8_1],
    aux: &[ActAux],
    out: &mut [[f32; GROUP]],
) {
    column_tiles!(w, act, aux, out, avx2_q4_1_tile)
}

pub(crate) fn avx2_gemm_q4_0_x8(
    w: &[BlockQ4_0x8],
    act: &[BlockQ8_0],
    aux: &[ActAux],
    out: &mut [[f32; GROUP]],
) {
    column_tiles!(w, act, aux, out, avx2_q4_0_tile)
}

pub(crate) fn avx2_gemm_q8_0_x8(
    w: &[BlockQ8_0x8],
    act: &[BlockQ8_0],
    aux: &[ActAux],
    out: &mut [[f32; GROUP]],
) {
    column_tiles!(w, act, aux, out, avx2_q8_0_tile)
}

// ---------------------------------------------------------------------------
// AVX-512 VNNI.
// ---------------------------------------------------------------------------

/// `hsum_float_8` of four rows at once: `lo` holds lanes 0..4 of rows
/// 0..4 (one 128-bit chunk per row), `hi` lanes 4..8. Returns the four sums
/// in lanes 0, 4, 8 and 12.
#[inline]
#[target_feature(enable = "avx512f")]
fn hsum4_rows_512(lo: __m512, hi: __m512) -> __m512 {
    // t_j = a[j + 4] + a[j]; then (t0 + t2) + (t1 + t3), as ggml.
    let t = _mm512_add_ps(hi, lo);
    let u = _mm512_add_ps(t, _mm512_permute_ps::<0b11_10_11_10>(t));
    _mm512_add_ps(u, _mm512_permute_ps::<0b01_01_01_01>(u))
}

/// `hsum_float_8` of two rows whose eight lanes fill one 256-bit half each.
/// Returns the sums in lanes 0 and 8.
#[inline]
#[target_feature(enable = "avx512f")]
fn hsum2_rows_512(a: __m512) -> __m512 {
    // Swap the 128-bit chunks within each half: chunk 0 + chunk 1 = a[j] + a[j + 4].
    let t = _mm512_add_ps(_mm512_shuffle_f32x4::<0b10_11_00_01>(a, a), a);
    let u = _mm512_add_ps(t, _mm512_permute_ps::<0b11_10_11_10>(t));
    _mm512_add_ps(u, _mm512_permute_ps::<0b01_01_01_01>(u))
}

#[inline]
#[target_feature(enable = "avx512f")]
fn lanes16(v: __m512) -> [f32; 16] {
    let mut out = [0.0f32; 16];
    // SAFETY: `out` is 64 writable bytes; `storeu` has no alignment requirement.
    unsafe { _mm512_storeu_ps(out.as_mut_ptr(), v) };
    out
}

/// Broadcasts 16 bytes to the four 128-bit chunks.
#[inline]
#[target_feature(enable = "avx512f")]
fn bcast_16_bytes(p: &[i8]) -> __m512i {
    let p = &p[..16];
    // SAFETY: `p` has 16 readable bytes; `loadu` has no alignment requirement.
    _mm512_broadcast_i32x4(unsafe { _mm_loadu_si128(p.as_ptr().cast()) })
}

/// Broadcasts 32 bytes to both 256-bit halves.
#[inline]
#[target_feature(enable = "avx512f")]
fn bcast_32_bytes(p: &[u8; 32]) -> __m512i {
    // SAFETY: `p` is 32 readable bytes; `loadu` has no alignment requirement.
    _mm512_broadcast_i64x4(unsafe { _mm256_loadu_si256(p.as_ptr().cast()) })
}

/// One row group against `C` activation rows (`act`/`aux`: `C · bpr`
/// blocks, row after row).
///
/// # Safety
/// The CPU must support AVX-512 F/BW/VL/VNNI, AVX2, FMA and F16C; `act` and
/// `aux` hold `C · w.len()` blocks and `out` `C` rows.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
unsafe fn avx512_q4_1_tile<const C: usize>(
    w: &[BlockQ4_1x8],
    act: &[BlockQ8_1],
    aux: &[ActAux],
    out: &mut [[f32; GROUP]],
) {
    let bpr = w.len();
    let zero = _mm512_setzero_ps();
    let (mut lo0, mut hi0, mut lo1, mut hi1) = ([zero; C], [zero; C], [zero; C], [zero; C]);
    let mut summ = [zero; C];
    // [d0 m0 d1 m1 …] → the scale of row k in lanes 4k..4k+4, rows 0..4 / 4..8.
    let rows_0_3 = _mm512_setr_epi32(0, 0, 0, 0, 2, 2, 2, 2, 4, 4, 4, 4, 6, 6, 6, 6);
    let rows_4_7 = _mm512_setr_epi32(8, 8, 8, 8, 10, 10, 10, 10, 12, 12, 12, 12, 14, 14, 14, 14);
    let low_nibbles = _mm512_set1_epi8(0x0F);
    let izero = _mm512_setzero_si512();
    for (i, b) in w.iter().enumerate() {
        prefetch_ahead(b);
        // SAFETY: `dm` is 32 bytes and `qs` 128 (two 64-byte loads at rows 0 and 4).
        let (hdr, n0, n1) = unsafe {
            (
                _mm512_cvtph_ps(_mm256_loadu_si256(b.dm.as_ptr().cast())),
                _mm512_loadu_si512(b.qs[0].as_ptr().cast()),
                _mm512_loadu_si512(b.qs[4].as_ptr().cast()),
            )
        };
        let d0 = _mm512_permutexvar_ps(rows_0_3, hdr);
        let d1 = _mm512_permutexvar_ps(rows_4_7, hdr);
        let q_lo0 = _mm512_and_si512(n0, low_nibbles);
        let q_hi0 = _mm512_and_si512(_mm512_srli_epi16::<4>(n0), low_nibbles);
        let q_lo1 = _mm512_and_si512(n1, low_nibbles);
        let q_hi1 = _mm512_and_si512(_mm512_srli_epi16::<4>(n1), low_nibbles);
        for c in 0..C {
            // SAFETY: `c * bpr + i < C * bpr`, the length of `act` and `aux`.
            let (a, x) = unsafe {
                (
                    act.get_unchecked(c * bpr + i),
                    aux.get_unchecked(c * bpr + i),
                )
            };
            let a_lo = bcast_16_bytes(&a.qs[..16]);
            let a_hi = bcast_16_bytes(&a.qs[16..]);
            let dy = _mm512_set1_ps(x.d);
            // Odd lanes: fma(m_k, s, summs_k), GCC's contraction of ggml's `summs += m * s`.
            summ[c] = _mm512_fmadd_ps(hdr, _mm512_set1_ps(x.s), summ[c]);
            let s0 = _mm512_mul_ps(d0, dy);
            let s1 = _mm512_mul_ps(d1, dy);
            let dot = |q, a| _mm512_cvtepi32_ps(_mm512_dpbusd_epi32(izero, q, a));
            lo0[c] = _mm512_fmadd_ps(s0, dot(q_lo0, a_lo), lo0[c]);
            hi0[c] = _mm512_fmadd_ps(s0, dot(q_hi0, a_hi), hi0[c]);
            lo1[c] = _mm512_fmadd_ps(s1, dot(q_lo1, a_lo), lo1[c]);
            hi1[c] = _mm512_fmadd_ps(s1, dot(q_hi1, a_hi), hi1[c]);
        }
    }
    for c in 0..C {
        let r0 = lanes16(hsum4_rows_512(lo0[c], hi0[c]));
        let r1 = lanes16(hsum4_rows_512(lo1[c], hi1[c]));
        let ms = lanes16(summ[c]);
        for k in 0..4 {
            out[c][k] = r0[4 * k] + ms[2 * k + 1];
            out[c][k + 4] = r1[4 * k] + ms[2 * (k + 4) + 1];
        }
    }
}

/// # Safety
/// As [`avx512_q4_1_tile`].
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
unsafe fn avx512_q4_0_tile<const C: usize>(
    w: &[BlockQ4_0x8],
    act: &[BlockQ8_0],
    aux: &[ActAux],
    out: &mut [[f32; GROUP]],
) {
    let bpr = w.len();
    let zero = _mm512_setzero_ps();
    let (mut lo0, mut hi0, mut lo1, mut hi1) = ([zero; C], [zero; C], [zero; C], [zero; C]);
    let rows_0_3 = _mm512_setr_epi32(0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3);
    let rows_4_7 = _mm512_setr_epi32(4, 4, 4, 4, 5, 5, 5, 5, 6, 6, 6, 6, 7, 7, 7, 7);
    let low_nibbles = _mm512_set1_epi8(0x0F);
    for (i, b) in w.iter().enumerate() {
        prefetch_ahead(b);
        // SAFETY: `d` is 16 bytes and `qs` 128 (two 64-byte loads at rows 0 and 4).
        let (hdr, n0, n1) = unsafe {
            (
                _mm512_castps256_ps512(_mm256_cvtph_ps(_mm_loadu_si128(b.d.as_ptr().cast()))),
                _mm512_loadu_si512(b.qs[0].as_ptr().cast()),
                _mm512_loadu_si512(b.qs[4].as_ptr().cast()),
            )
        };
        let d0 = _mm512_permutexvar_ps(rows_0_3, hdr);
        let d1 = _mm512_permutexvar_ps(rows_4_7, hdr);
        let q_lo0 = _mm512_and_si512(n0, low_nibbles);
        let q_hi0 = _mm512_and_si512(_mm512_srli_epi16::<4>(n0), low_nibbles);
        let q_lo1 = _mm512_and_si512(n1, low_nibbles);
        let q_hi1 = _mm512_and_si512(_mm512_srli_epi16::<4>(n1), low_nibbles);
        for c in 0..C {
            // SAFETY: `c * bpr + i < C * bpr`, the length of `act` and `aux`.
            let (a, x) = unsafe {
                (
                    act.get_unchecked(c * bpr + i),
                    aux.get_unchecked(c * bpr + i),
                )
            };
            let a_lo = bcast_16_bytes(&a.qs[..16]);
            let a_hi = bcast_16_bytes(&a.qs[16..]);
            // SAFETY: `bias` is 32 bytes: lanes 0..4 at 0, lanes 4..8 at 16.
            let (b_lo, b_hi) = unsafe {
                (
                    _mm512_broadcast_i32x4(_mm_loadu_si128(x.bias.as_ptr().cast())),
                    _mm512_broadcast_i32x4(_mm_loadu_si128(x.bias[4..].as_ptr().cast())),
                )
            };
            let dy = _mm512_set1_ps(x.d);
            let s0 = _mm512_mul_ps(d0, dy);
            let s1 = _mm512_mul_ps(d1, dy);
            // Σ (q - 8)·a = Σ q·a - 8·Σ a: start from the bias, exact in i32.
            let dot = |bias, q, a| _mm512_cvtepi32_ps(_mm512_dpbusd_epi32(bias, q, a));
            lo0[c] = _mm512_fmadd_ps(s0, dot(b_lo, q_lo0, a_lo), lo0[c]);
            hi0[c] = _mm512_fmadd_ps(s0, dot(b_hi, q_hi0, a_hi), hi0[c]);
            lo1[c] = _mm512_fmadd_ps(s1, dot(b_lo, q_lo1, a_lo), lo1[c]);
            hi1[c] = _mm512_fmadd_ps(s1, dot(b_hi, q_hi1, a_hi), hi1[c]);
        }
    }
    for c in 0..C {
        let r0 = lanes16(hsum4_rows_512(lo0[c], hi0[c]));
        let r1 = lanes16(hsum4_rows_512(lo1[c], hi1[c]));
        for k in 0..4 {
            out[c][k] = r0[4 * k];
            out[c][k + 4] = r1[4 * k];
        }
    }
}

/// # Safety
/// As [`avx512_q4_1_tile`].
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
unsafe fn avx512_q8_0_tile<const C: usize>(
    w: &[BlockQ8_0x8],
    act: &[BlockQ8_0],
    aux: &[ActAux],
    out: &mut [[f32; GROUP]],
) {
    let bpr = w.len();
    let zero = _mm512_setzero_ps();
    // acc[c][k]: rows 2k (lanes 0..8) and 2k + 1 (lanes 8..16).
    let mut acc = [[zero; 4]; C];
    let pair = |k: i32| {
        let (a, b) = (2 * k, 2 * k + 1);
        _mm512_setr_epi32(a, a, a, a, a, a, a, a, b, b, b, b, b, b, b, b)
    };
    let pairs = [pair(0), pair(1), pair(2), pair(3)];
    for (i, b) in w.iter().enumerate() {
        prefetch_ahead(b);
        // SAFETY: `d` is 16 bytes.
        let hdr = unsafe {
            _mm512_castps256_ps512(_mm256_cvtph_ps(_mm_loadu_si128(b.d.as_ptr().cast())))
        };
        let d = pairs.map(|p| _mm512_permutexvar_ps(p, hdr));
        // SAFETY: `qs` is 256 bytes: four 64-byte loads of two rows each.
        let q: [__m512i; 4] =
            core::array::from_fn(|k| unsafe { _mm512_loadu_si512(b.qs[2 * k].as_ptr().cast()) });
        for c in 0..C {
            // SAFETY: `c * bpr + i < C * bpr`, the length of `act` and `aux`.
            let (a, x) = unsafe {
                (
                    act.get_unchecked(c * bpr + i),
                    aux.get_unchecked(c * bpr + i),
                )
            };
            let av = bcast_32_bytes(bytemuck::cast_ref(&a.qs));
            let bias = bcast_32_bytes(bytemuck::cast_ref(&x.bias));
            let dy = _mm512_set1_ps(x.d);
            for k in 0..4 {
                // Σ (q + 128)·a - 128·Σ a = Σ q·a, exact in i32.
                let isum = _mm512_cvtepi32_ps(_mm512_dpbusd_epi32(bias, q[k], av));
                acc[c][k] = _mm512_fmadd_ps(_mm512_mul_ps(d[k], dy), isum, acc[c][k]);
            }
        }
    }
    for c in 0..C {
        for k in 0..4 {
            let s = lanes16(hsum2_rows_512(acc[c][k]));
            out[c][2 * k] = s[0];
            out[c][2 * k + 1] = s[8];
        }
    }
}

// ---------------------------------------------------------------------------
// AVX2: two rows' 16 nibble bytes per register (Q4), one row per register (Q8).
// ---------------------------------------------------------------------------

/// `hsum_float_8` of two rows: `lo` holds lanes 0..4 of row a (low 128
/// bits) and row b (high), `hi` lanes 4..8. Returns the sums in lanes 0 and 4.
#[inline]
#[target_feature(enable = "avx2")]
fn hsum2_rows_256(lo: __m256, hi: __m256) -> [f32; 8] {
    let t = _mm256_add_ps(hi, lo);
    let u = _mm256_add_ps(t, _mm256_permute_ps::<0b11_10_11_10>(t));
    let v = _mm256_add_ps(u, _mm256_permute_ps::<0b01_01_01_01>(u));
    let mut out = [0.0f32; 8];
    // SAFETY: `out` is 32 writable bytes; `storeu` has no alignment requirement.
    unsafe { _mm256_storeu_ps(out.as_mut_ptr(), v) };
    out
}

/// `hsum_float_8` of one row held in one register.
#[inline]
#[target_feature(enable = "avx2")]
fn hsum1_row_256(v: __m256) -> f32 {
    let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    let s = _mm_add_ss(s, _mm_movehdup_ps(s));
    _mm_cvtss_f32(s)
}

/// Exact `Σ u8 × i8` over groups of four bytes (operands ≤ 15 or ≤ 128
/// unsigned times ≤ 127 signed, so `maddubs` cannot saturate).
#[inline]
#[target_feature(enable = "avx2")]
fn avx2_dot4(u: __m256i, s: __m256i) -> __m256i {
    _mm256_madd_epi16(_mm256_maddubs_epi16(u, s), _mm256_set1_epi16(1))
}

#[inline]
#[target_feature(enable = "avx2")]
fn bcast2_16_bytes(p: &[i8]) -> __m256i {
    let p = &p[..16];
    // SAFETY: `p` has 16 readable bytes; `loadu` has no alignment requirement.
    _mm256_broadcastsi128_si256(unsafe { _mm_loadu_si128(p.as_ptr().cast()) })
}

/// # Safety
/// The CPU must support AVX2, FMA and F16C; `act` and `aux` hold
/// `C · w.len()` blocks and `out` `C` rows.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn avx2_q4_1_tile<const C: usize>(
    w: &[BlockQ4_1x8],
    act: &[BlockQ8_1],
    aux: &[ActAux],
    out: &mut [[f32; GROUP]],
) {
    let bpr = w.len();
    let zero = _mm256_setzero_ps();
    // lo[c][p] / hi[c][p]: rows 2p (low 128 bits) and 2p + 1 (high).
    let mut lo = [[zero; 4]; C];
    let mut hi = [[zero; 4]; C];
    let mut summ = [[zero; 2]; C];
    let pair_a = _mm256_setr_epi32(0, 0, 0, 0, 2, 2, 2, 2);
    let pair_b = _mm256_setr_epi32(4, 4, 4, 4, 6, 6, 6, 6);
    let low_nibbles = _mm256_set1_epi8(0x0F);
    for (i, b) in w.iter().enumerate() {
        // SAFETY: `dm` is 32 bytes (two 16-byte halves); `qs` is 128 (four 32-byte loads).
        let (h0, h1, n) = unsafe {
            (
                _mm256_cvtph_ps(_mm_loadu_si128(b.dm.as_ptr().cast())),
                _mm256_cvtph_ps(_mm_loadu_si128(b.dm[4..].as_ptr().cast())),
                [0, 2, 4, 6].map(|r| _mm256_loadu_si256(b.qs[r].as_ptr().cast())),
            )
        };
        let d = [
            _mm256_permutevar8x32_ps(h0, pair_a),
            _mm256_permutevar8x32_ps(h0, pair_b),
            _mm256_permutevar8x32_ps(h1, pair_a),
            _mm256_permutevar8x32_ps(h1, pair_b),
        ];
        for c in 0..C {
            // SAFETY: `c * bpr + i < C * bpr`, the length of `act` and `aux`.
            let (a, x) = unsafe {
                (
                    act.get_unchecked(c * bpr + i),
                    aux.get_unchecked(c * bpr + i),
                )
            };
            let a_lo = bcast2_16_bytes(&a.qs[..16]);
            let a_hi = bcast2_16_bytes(&a.qs[16..]);
            let dy = _mm256_set1_ps(x.d);
            let sy = _mm256_set1_ps(x.s);
            summ[c][0] = _mm256_fmadd_ps(h0, sy, summ[c][0]);
            summ[c][1] = _mm256_fmadd_ps(h1, sy, summ[c][1]);
            for p in 0..4 {
                let s = _mm256_mul_ps(d[p], dy);
                let q_lo = _mm256_and_si256(n[p], low_nibbles);
                let q_hi = _mm256_and_si256(_mm256_srli_epi16::<4>(n[p]), low_nibbles);
                lo[c][p] = _mm256_fmadd_ps(s, _mm256_cvtepi32_ps(avx2_dot4(q_lo, a_lo)), lo[c][p]);
                hi[c][p] = _mm256_fmadd_ps(s, _mm256_cvtepi32_ps(avx2_dot4(q_hi, a_hi)), hi[c][p]);
            }
        }
    }
    for c in 0..C {
        let mut ms = [0.0f32; 16];
        // SAFETY: `ms` is 64 writable bytes.
        unsafe {
            _mm256_storeu_ps(ms.as_mut_ptr(), summ[c][0]);
            _mm256_storeu_ps(ms.as_mut_ptr().add(8), summ[c][1]);
        }
        for p in 0..4 {
            let s = hsum2_rows_256(lo[c][p], hi[c][p]);
            out[c][2 * p] = s[0] + ms[2 * (2 * p) + 1];
            out[c][2 * p + 1] = s[4] + ms[2 * (2 * p + 1) + 1];
        }
    }
}

/// # Safety
/// As [`avx2_q4_1_tile`].
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn avx2_q4_0_tile<const C: usize>(
    w: &[BlockQ4_0x8],
    act: &[BlockQ8_0],
    aux: &[ActAux],
    out: &mut [[f32; GROUP]],
) {
    let bpr = w.len();
    let zero = _mm256_setzero_ps();
    let mut lo = [[zero; 4]; C];
    let mut hi = [[zero; 4]; C];
    let low_nibbles = _mm256_set1_epi8(0x0F);
    for (i, b) in w.iter().enumerate() {
        // SAFETY: `d` is 16 bytes; `qs` is 128 (four 32-byte loads).
        let (hdr, n) = unsafe {
            (
                _mm256_cvtph_ps(_mm_loadu_si128(b.d.as_ptr().cast())),
                [0, 2, 4, 6].map(|r| _mm256_loadu_si256(b.qs[r].as_ptr().cast())),
            )
        };
        let d: [__m256; 4] = core::array::from_fn(|p| {
            let (a, b) = (2 * p as i32, 2 * p as i32 + 1);
            _mm256_permutevar8x32_ps(hdr, _mm256_setr_epi32(a, a, a, a, b, b, b, b))
        });
        for c in 0..C {
            // SAFETY: `c * bpr + i < C * bpr`, the length of `act` and `aux`.
            let (a, x) = unsafe {
                (
                    act.get_unchecked(c * bpr + i),
                    aux.get_unchecked(c * bpr + i),
                )
            };
            let a_lo = bcast2_16_bytes(&a.qs[..16]);
            let a_hi = bcast2_16_bytes(&a.qs[16..]);
            // SAFETY: `bias` is 32 bytes: lanes 0..4 at 0, lanes 4..8 at 16.
            let (b_lo, b_hi) = unsafe {
                (
                    _mm256_broadcastsi128_si256(_mm_loadu_si128(x.bias.as_ptr().cast())),
                    _mm256_broadcastsi128_si256(_mm_loadu_si128(x.bias[4..].as_ptr().cast())),
                )
            };
            let dy = _mm256_set1_ps(x.d);
            for p in 0..4 {
                let s = _mm256_mul_ps(d[p], dy);
                let q_lo = _mm256_and_si256(n[p], low_nibbles);
                let q_hi = _mm256_and_si256(_mm256_srli_epi16::<4>(n[p]), low_nibbles);
                let i_lo = _mm256_add_epi32(avx2_dot4(q_lo, a_lo), b_lo);
                let i_hi = _mm256_add_epi32(avx2_dot4(q_hi, a_hi), b_hi);
                lo[c][p] = _mm256_fmadd_ps(s, _mm256_cvtepi32_ps(i_lo), lo[c][p]);
                hi[c][p] = _mm256_fmadd_ps(s, _mm256_cvtepi32_ps(i_hi), hi[c][p]);
            }
        }
    }
    for c in 0..C {
        for p in 0..4 {
            let s = hsum2_rows_256(lo[c][p], hi[c][p]);
            out[c][2 * p] = s[0];
            out[c][2 * p + 1] = s[4];
        }
    }
}

/// # Safety
/// As [`avx2_q4_1_tile`].
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn avx2_q8_0_tile<const C: usize>(
    w: &[BlockQ8_0x8],
    act: &[BlockQ8_0],
    aux: &[ActAux],
    out: &mut [[f32; GROUP]],
) {
    let bpr = w.len();
    let mut acc = [[_mm256_setzero_ps(); GROUP]; C];
    let flip = _mm256_set1_epi8(-128);
    for (i, b) in w.iter().enumerate() {
        // SAFETY: `d` is 16 bytes.
        let hdr = unsafe { _mm256_cvtph_ps(_mm_loadu_si128(b.d.as_ptr().cast())) };
        let mut dx = [0.0f32; GROUP];
        // SAFETY: `dx` is 32 writable bytes.
        unsafe { _mm256_storeu_ps(dx.as_mut_ptr(), hdr) };
        for r in 0..GROUP {
            // SAFETY: `qs[r]` is 32 bytes. Undo the +128 offset, then use the
            // sign trick (|q| · sign(a, q)), as ggml's AVX2 Q8_0 dot.
            let q = unsafe { _mm256_xor_si256(_mm256_loadu_si256(b.qs[r].as_ptr().cast()), flip) };
            let uq = _mm256_sign_epi8(q, q);
            for c in 0..C {
                // SAFETY: `c * bpr + i < C * bpr`, the length of `act` and `aux`.
                let (a, x) = unsafe {
                    (
                        act.get_unchecked(c * bpr + i),
                        aux.get_unchecked(c * bpr + i),
                    )
                };
                // SAFETY: `a.qs` is 32 bytes.
                let av = unsafe { _mm256_loadu_si256(a.qs.as_ptr().cast()) };
                let isum = _mm256_cvtepi32_ps(avx2_dot4(uq, _mm256_sign_epi8(av, q)));
                acc[c][r] = _mm256_fmadd_ps(_mm256_set1_ps(dx[r] * x.d), isum, acc[c][r]);
            }
        }
    }
    for c in 0..C {
        for r in 0..GROUP {
            out[c][r] = hsum1_row_256(acc[c][r]);
        }
    }
}
