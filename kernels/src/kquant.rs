//! GGUF/ggml-compatible K-quant ("super-block") formats: Q4_K, Q5_K, Q6_K and
//! the activation format Q8_K, with scalar reference kernels.
//!
//! A K-quant block holds [`QK_K`] = 256 values split into sub-blocks (8 of 32
//! for Q4_K/Q5_K, 16 of 16 for Q6_K). Each sub-block has its own small integer
//! scale (and, for Q4_K/Q5_K, a minimum) that the block's f16 super-scales
//! `d`/`dmin` multiply:
//!
//! * Q4_K: `x = d·sc·q − dmin·m`, `q` in 0..16, `sc`/`m` 6-bit, packed in
//!   12 bytes (see [`get_scale_min_k4`]);
//! * Q5_K: the same with a 5th bit per value in `qh`, `q` in 0..32;
//! * Q6_K: `x = d·sc·(q − 32)`, `q` in 0..64 (low 4 bits in `ql`, high 2 in
//!   `qh`), `sc` a signed 8-bit scale per 16 values;
//! * Q8_K: `x = d·q`, f32 `d`, plus `bsums`, the sums of each 16 quants, which
//!   the Q4_K/Q5_K dot products use for the minimum term.
//!
//! Layouts are byte-for-byte those of ggml's `ggml-common.h` (`#[repr(C)]`, no
//! padding; sizes asserted at compile time), so GGUF tensor bytes can be
//! viewed as `&[BlockQ4K]` etc. with `bytemuck::cast_slice`.
//!
//! The quantizers are ggml's reference (`quantize_row_*_ref`) algorithms,
//! including their scale searches (`make_qkx2_quants` for Q4_K/Q5_K,
//! `make_qx_quants` for Q6_K); the dot products follow ggml's portable
//! `ggml_vec_dot_*_q8_K_generic` arithmetic in the same order of float
//! operations. The dequantizers follow `dequantize_row_*`.

use bytemuck::{Pod, Zeroable};
use half::f16;

/// Values per K-quant super-block.
pub const QK_K: usize = 256;

/// Bytes holding the eight 6-bit scales and eight 6-bit minimums of a Q4_K/Q5_K block.
pub const K_SCALE_SIZE: usize = 12;

/// 4-bit K-quant block (ggml `block_q4_K`, 144 bytes per 256 values).
///
/// Value `32·j + l` of sub-block `j` is `d·sc_j·q − dmin·m_j` with
/// `(sc_j, m_j) = get_scale_min_k4(j, &scales)`. Sub-blocks `2i` and `2i + 1`
/// share the 32 bytes `qs[32i..32i + 32]`: the low nibbles are sub-block `2i`,
/// the high nibbles sub-block `2i + 1`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Pod, Zeroable)]
pub struct BlockQ4K {
    /// Super-block scale of the sub-block scales.
    pub d: f16,
    /// Super-block scale of the sub-block minimums.
    pub dmin: f16,
    /// Eight 6-bit scales and eight 6-bit minimums (see [`get_scale_min_k4`]).
    pub scales: [u8; K_SCALE_SIZE],
    /// 256 nibbles.
    pub qs: [u8; QK_K / 2],
}

/// 5-bit K-quant block (ggml `block_q5_K`, 176 bytes per 256 values).
///
/// Like [`BlockQ4K`], plus a fifth bit per value: bit `j` of `qh[l]` is the
/// high bit of value `32·j + l`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Pod, Zeroable)]
pub struct BlockQ5K {
    /// Super-block scale of the sub-block scales.
    pub d: f16,
    /// Super-block scale of the sub-block minimums.
    pub dmin: f16,
    /// Eight 6-bit scales and eight 6-bit minimums (see [`get_scale_min_k4`]).
    pub scales: [u8; K_SCALE_SIZE],
    /// High bits: bit `j` of `qh[l]` belongs to value `32·j + l`.
    pub qh: [u8; QK_K / 8],
    /// Low 4 bits, laid out as [`BlockQ4K::qs`].
    pub qs: [u8; QK_K / 2],
}

/// 6-bit K-quant block (ggml `block_q6_K`, 210 bytes per 256 values).
///
/// In each half `h` (128 values), for `l < 32`: values `l`, `l + 32`,
/// `l + 64`, `l + 96` take their low 4 bits from the low nibble of
/// `ql[64h + l]`, the low nibble of `ql[64h + l + 32]`, the high nibble of
/// `ql[64h + l]`, the high nibble of `ql[64h + l + 32]`, and their high 2 bits
/// from bits 0-1, 2-3, 4-5, 6-7 of `qh[32h + l]`. Value `i` is
/// `d·scales[i / 16]·(q − 32)`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Pod, Zeroable)]
pub struct BlockQ6K {
    /// Low 4 bits of the quants.
    pub ql: [u8; QK_K / 2],
    /// High 2 bits of the quants.
    pub qh: [u8; QK_K / 4],
    /// One signed 8-bit scale per 16 values.
    pub scales: [i8; QK_K / 16],
    /// Super-block scale.
    pub d: f16,
}

/// 8-bit activation block for the K-quant dot products (ggml `block_q8_K`,
/// 292 bytes per 256 values), value = `d·q`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Pod, Zeroable)]
pub struct BlockQ8K {
    /// Scale (f32, unlike the 32-value formats).
    pub d: f32,
    /// Quants.
    pub qs: [i8; QK_K],
    /// `bsums[j]` = sum of `qs[16j..16j + 16]`.
    pub bsums: [i16; QK_K / 16],
}

macro_rules! zeroed_default {
    ($($ty:ty),*) => {$(
        impl Default for $ty {
            fn default() -> Self {
                Self::zeroed()
            }
        }
    )*};
}
zeroed_default!(BlockQ4K, BlockQ5K, BlockQ6K, BlockQ8K);

// The layouts must match ggml exactly, or GGUF tensors would be misread.
const _: () = assert!(core::mem::size_of::<BlockQ4K>() == 144);
const _: () = assert!(core::mem::size_of::<BlockQ5K>() == 176);
const _: () = assert!(core::mem::size_of::<BlockQ6K>() == 210);
const _: () = assert!(core::mem::size_of::<BlockQ8K>() == 292);
const _: () = assert!(core::mem::align_of::<BlockQ4K>() == 2);
const _: () = assert!(core::mem::align_of::<BlockQ5K>() == 2);
const _: () = assert!(core::mem::align_of::<BlockQ6K>() == 2);
const _: () = assert!(core::mem::align_of::<BlockQ8K>() == 4);

#[track_caller]
fn assert_super_blocks(n_values: usize, n_blocks: usize) {
    assert_eq!(
        n_values,
        n_blocks * QK_K,
        "slice lengths: {n_values} values for {n_blocks} blocks of {QK_K}"
    );
}

#[track_caller]
fn assert_same_blocks(x: usize, y: usize) {
    assert_eq!(x, y, "dot product operands have different block counts");
}

/// ggml's `nearest_int`: round to nearest, ties to even. ggml asserts
/// `|v| <= 4194303`; here larger values saturate and NaN gives 0.
#[inline(always)]
fn nearest_int(v: f32) -> i32 {
    v.round_ties_even() as i32
}

// ---------------------------------------------------------------------------
// Scale / minimum packing of Q4_K and Q5_K
// ---------------------------------------------------------------------------

/// The 6-bit scale and minimum of sub-block `j` (0..8) of a Q4_K/Q5_K block
/// (ggml `get_scale_min_k4`).
///
/// Sub-blocks 0-3 keep their scale in the low 6 bits of `scales[j]` and their
/// minimum in the low 6 bits of `scales[j + 4]`. Sub-blocks 4-7 keep the low
/// 4 bits of the scale and minimum in the low and high nibble of
/// `scales[j + 4]`, and the high 2 bits in the top 2 bits of `scales[j - 4]`
/// (scale) and `scales[j]` (minimum).
///
/// # Panics
/// If `j >= 8`.
#[inline]
pub fn get_scale_min_k4(j: usize, scales: &[u8; K_SCALE_SIZE]) -> (u8, u8) {
    assert!(j < 8, "get_scale_min_k4: sub-block {j} out of range 0..8");
    if j < 4 {
        (scales[j] & 63, scales[j + 4] & 63)
    } else {
        let scale = (scales[j + 4] & 0x0F) | ((scales[j - 4] >> 6) << 4);
        let min = (scales[j + 4] >> 4) | ((scales[j] >> 6) << 4);
        (scale, min)
    }
}

/// Packs eight 6-bit scales and minimums into the 12-byte layout that
/// [`get_scale_min_k4`] reads (as ggml's quantizers do). Bits above the
/// sixth are dropped.
pub fn pack_scales_mins_k4(scales: &[u8; 8], mins: &[u8; 8]) -> [u8; K_SCALE_SIZE] {
    let mut packed = [0u8; K_SCALE_SIZE];
    for j in 0..8 {
        let (scale, min) = (scales[j] & 63, mins[j] & 63);
        if j < 4 {
            packed[j] |= scale;
            packed[j + 4] |= min;
        } else {
            packed[j + 4] = (scale & 0x0F) | ((min & 0x0F) << 4);
            packed[j - 4] |= (scale >> 4) << 6;
            packed[j] |= (min >> 4) << 6;
        }
    }
    packed
}

/// All eight scales and minimums of a Q4_K/Q5_K block at once, with the
/// 32-bit mask arithmetic of ggml's dot products (the `utmp`/`kmask` idiom).
/// Equal to calling [`get_scale_min_k4`] for `j` in 0..8.
pub fn unpack_scales_mins_k4(scales: &[u8; K_SCALE_SIZE]) -> ([u8; 8], [u8; 8]) {
    const KMASK1: u32 = 0x3f3f_3f3f;
    const KMASK2: u32 = 0x0f0f_0f0f;
    const KMASK3: u32 = 0x0303_0303;
    let word = |i: usize| {
        u32::from_le_bytes([
            scales[4 * i],
            scales[4 * i + 1],
            scales[4 * i + 2],
            scales[4 * i + 3],
        ])
    };
    let (w0, w1, w2) = (word(0), word(1), word(2));
    let scales_lo = w0 & KMASK1;
    let scales_hi = (w2 & KMASK2) | (((w0 >> 6) & KMASK3) << 4);
    let mins_lo = w1 & KMASK1;
    let mins_hi = ((w2 >> 4) & KMASK2) | (((w1 >> 6) & KMASK3) << 4);
    let mut sc = [0u8; 8];
    let mut mn = [0u8; 8];
    sc[..4].copy_from_slice(&scales_lo.to_le_bytes());
    sc[4..].copy_from_slice(&scales_hi.to_le_bytes());
    mn[..4].copy_from_slice(&mins_lo.to_le_bytes());
    mn[4..].copy_from_slice(&mins_hi.to_le_bytes());
    (sc, mn)
}

// ---------------------------------------------------------------------------
// Dequantization
// ---------------------------------------------------------------------------

/// Dequantizes Q4_K blocks into `y` (ggml `dequantize_row_q4_K`).
///
/// # Panics
/// If `y.len() != x.len() * QK_K`.
pub fn dequantize_row_q4_k(x: &[BlockQ4K], y: &mut [f32]) {
    assert_super_blocks(y.len(), x.len());
    for (b, out) in x.iter().zip(y.chunks_exact_mut(QK_K)) {
        let d = b.d.to_f32();
        let dmin = b.dmin.to_f32();
        for (pair, (q, out)) in
            b.qs.chunks_exact(32)
                .zip(out.chunks_exact_mut(64))
                .enumerate()
        {
            let (sc_lo, m_lo) = get_scale_min_k4(2 * pair, &b.scales);
            let (sc_hi, m_hi) = get_scale_min_k4(2 * pair + 1, &b.scales);
            let (d_lo, min_lo) = (d * sc_lo as f32, dmin * m_lo as f32);
            let (d_hi, min_hi) = (d * sc_hi as f32, dmin * m_hi as f32);
            for l in 0..32 {
                out[l] = d_lo * (q[l] & 0x0F) as f32 - min_lo;
                out[l + 32] = d_hi * (q[l] >> 4) as f32 - min_hi;
            }
        }
    }
}

/// Dequantizes Q5_K blocks into `y` (ggml `dequantize_row_q5_K`).
///
/// # Panics
/// If `y.len() != x.len() * QK_K`.
pub fn dequantize_row_q5_k(x: &[BlockQ5K], y: &mut [f32]) {
    assert_super_blocks(y.len(), x.len());
    for (b, out) in x.iter().zip(y.chunks_exact_mut(QK_K)) {
        let d = b.d.to_f32();
        let dmin = b.dmin.to_f32();
        for (pair, (q, out)) in
            b.qs.chunks_exact(32)
                .zip(out.chunks_exact_mut(64))
                .enumerate()
        {
            let (sc_lo, m_lo) = get_scale_min_k4(2 * pair, &b.scales);
            let (sc_hi, m_hi) = get_scale_min_k4(2 * pair + 1, &b.scales);
            let (d_lo, min_lo) = (d * sc_lo as f32, dmin * m_lo as f32);
            let (d_hi, min_hi) = (d * sc_hi as f32, dmin * m_hi as f32);
            let (bit_lo, bit_hi) = (1u8 << (2 * pair), 1u8 << (2 * pair + 1));
            for l in 0..32 {
                let high_lo = if b.qh[l] & bit_lo != 0 { 16 } else { 0 };
                let high_hi = if b.qh[l] & bit_hi != 0 { 16 } else { 0 };
                out[l] = d_lo * ((q[l] & 0x0F) + high_lo) as f32 - min_lo;
                out[l + 32] = d_hi * ((q[l] >> 4) + high_hi) as f32 - min_hi;
            }
        }
    }
}

/// The 256 quants of a Q6_K block, centred (in -32..32), in value order.
#[inline(always)]
fn q6_k_quants(b: &BlockQ6K) -> [i8; QK_K] {
    let mut q = [0i8; QK_K];
    for half in 0..2 {
        let ql = &b.ql[64 * half..64 * half + 64];
        let qh = &b.qh[32 * half..32 * half + 32];
        let out = &mut q[128 * half..128 * half + 128];
        for l in 0..32 {
            out[l] = ((ql[l] & 0x0F) | ((qh[l] & 3) << 4)) as i8 - 32;
            out[l + 32] = ((ql[l + 32] & 0x0F) | (((qh[l] >> 2) & 3) << 4)) as i8 - 32;
            out[l + 64] = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) as i8 - 32;
            out[l + 96] = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) as i8 - 32;
        }
    }
    q
}

/// Dequantizes Q6_K blocks into `y` (ggml `dequantize_row_q6_K`:
/// `d * scale * q`, multiplied left to right).
///
/// # Panics
/// If `y.len() != x.len() * QK_K`.
pub fn dequantize_row_q6_k(x: &[BlockQ6K], y: &mut [f32]) {
    assert_super_blocks(y.len(), x.len());
    for (b, out) in x.iter().zip(y.chunks_exact_mut(QK_K)) {
        let d = b.d.to_f32();
        let q = q6_k_quants(b);
        for (i, (o, &qi)) in out.iter_mut().zip(&q).enumerate() {
            *o = d * b.scales[i / 16] as f32 * qi as f32;
        }
    }
}

/// Dequantizes Q8_K blocks into `y`.
///
/// # Panics
/// If `y.len() != x.len() * QK_K`.
pub fn dequantize_row_q8_k(x: &[BlockQ8K], y: &mut [f32]) {
    assert_super_blocks(y.len(), x.len());
    for (b, out) in x.iter().zip(y.chunks_exact_mut(QK_K)) {
        for (o, &q) in out.iter_mut().zip(&b.qs) {
            *o = b.d * q as f32;
        }
    }
}

// ---------------------------------------------------------------------------
// Quantization
// ---------------------------------------------------------------------------

/// ggml `make_qkx2_quants`: fits `x ≈ scale·L − min_neg` with `L` in
/// `0..=nmax` under `weights`, trying `n_steps + 1` candidate inverse scales
/// `(rmin + rdelta·step + nmax) / (max − min)` and keeping the least weighted
/// squared error. Returns `(scale, minimum)`, the minimum as a non-negative
/// offset to subtract; `levels` receives `L`.
#[allow(clippy::too_many_arguments)]
fn make_qkx2_quants(
    nmax: i32,
    x: &[f32; 32],
    weights: &[f32; 32],
    levels: &mut [u8; 32],
    rmin: f32,
    rdelta: f32,
    n_steps: i32,
) -> (f32, f32) {
    let mut min = x[0];
    let mut max = x[0];
    let mut sum_w = weights[0];
    let mut sum_x = sum_w * x[0];
    for i in 1..32 {
        min = min.min(x[i]);
        max = max.max(x[i]);
        let w = weights[i];
        sum_w += w;
        sum_x += w * x[i];
    }
    if min > 0.0 {
        min = 0.0;
    }
    if max == min {
        levels.fill(0);
        return (0.0, -min);
    }
    let mut iscale = nmax as f32 / (max - min);
    let mut scale = 1.0 / iscale;
    let mut best_error = 0.0f32;
    for i in 0..32 {
        let l = nearest_int(iscale * (x[i] - min)).clamp(0, nmax);
        levels[i] = l as u8;
        let diff = scale * l as f32 + min - x[i];
        best_error += weights[i] * (diff * diff);
    }
    let mut candidate = [0u8; 32];
    for step in 0..=n_steps {
        iscale = (rmin + rdelta * step as f32 + nmax as f32) / (max - min);
        let (mut sum_l, mut sum_l2, mut sum_xl) = (0.0f32, 0.0f32, 0.0f32);
        for i in 0..32 {
            let l = nearest_int(iscale * (x[i] - min)).clamp(0, nmax);
            candidate[i] = l as u8;
            let (w, lf) = (weights[i], l as f32);
            sum_l += w * lf;
            sum_l2 += w * lf * lf;
            sum_xl += w * lf * x[i];
        }
        let det = sum_w * sum_l2 - sum_l * sum_l;
        if det > 0.0 {
            let mut this_scale = (sum_w * sum_xl - sum_x * sum_l) / det;
            let mut this_min = (sum_l2 * sum_x - sum_l * sum_xl) / det;
            if this_min > 0.0 {
                this_min = 0.0;
                this_scale = sum_xl / sum_l2;
            }
            let mut error = 0.0f32;
            for i in 0..32 {
                let diff = this_scale * candidate[i] as f32 + this_min - x[i];
                error += weights[i] * (diff * diff);
            }
            if error < best_error {
                *levels = candidate;
                best_error = error;
                scale = this_scale;
                min = this_min;
            }
        }
    }
    (scale, -min)
}

/// Shared by the Q4_K and Q5_K quantizers: sub-block fits, then the 6-bit
/// scales/minimums and the super-scales, then the final levels (in `0..=nmax`)
/// recomputed against the rounded scales, as ggml does.
/// Returns `(d, dmin, packed scales, levels)`.
fn quantize_super_block_affine(
    x: &[f32],
    nmax: i32,
    rmin: f32,
    n_steps: i32,
) -> (f16, f16, [u8; K_SCALE_SIZE], [u8; QK_K]) {
    let mut levels = [0u8; QK_K];
    let mut scales = [0f32; 8];
    let mut mins = [0f32; 8];
    let mut max_scale = 0.0f32;
    let mut max_min = 0.0f32;
    for j in 0..8 {
        let mut sub = [0f32; 32];
        sub.copy_from_slice(&x[32 * j..32 * j + 32]);
        let sum_x2 = sub.iter().fold(0.0f32, |s, &v| s + v * v);
        let av_x = (sum_x2 / 32.0).sqrt();
        let weights: [f32; 32] = std::array::from_fn(|l| av_x + sub[l].abs());
        let mut sub_levels = [0u8; 32];
        let (scale, min) =
            make_qkx2_quants(nmax, &sub, &weights, &mut sub_levels, rmin, 0.1, n_steps);
        levels[32 * j..32 * j + 32].copy_from_slice(&sub_levels);
        scales[j] = scale;
        mins[j] = min;
        if scale > max_scale {
            max_scale = scale;
        }
        if min > max_min {
            max_min = min;
        }
    }
    let inv_scale = if max_scale > 0.0 {
        63.0 / max_scale
    } else {
        0.0
    };
    let inv_min = if max_min > 0.0 { 63.0 / max_min } else { 0.0 };
    // C stores `nearest_int(..)` into a uint8_t before `MIN(63, ..)`.
    let six_bits = |v: f32| (nearest_int(v) as u8).min(63);
    let ls: [u8; 8] = std::array::from_fn(|j| six_bits(inv_scale * scales[j]));
    let lm: [u8; 8] = std::array::from_fn(|j| six_bits(inv_min * mins[j]));
    let packed = pack_scales_mins_k4(&ls, &lm);
    let d = f16::from_f32(max_scale / 63.0);
    let dmin = f16::from_f32(max_min / 63.0);
    for j in 0..8 {
        let (sc, m) = get_scale_min_k4(j, &packed);
        let sub_d = d.to_f32() * sc as f32;
        if sub_d == 0.0 {
            continue;
        }
        let sub_dm = dmin.to_f32() * m as f32;
        for i in 32 * j..32 * j + 32 {
            levels[i] = nearest_int((x[i] + sub_dm) / sub_d).clamp(0, nmax) as u8;
        }
    }
    (d, dmin, packed, levels)
}

/// Reference Q4_K quantizer (ggml `quantize_row_q4_K_ref`, with its
/// `make_qkx2_quants` scale search: 21 candidate scales per 32 values).
///
/// # Panics
/// If `x.len() != y.len() * QK_K`.
pub fn quantize_row_q4_k(x: &[f32], y: &mut [BlockQ4K]) {
    assert_super_blocks(x.len(), y.len());
    for (xb, b) in x.chunks_exact(QK_K).zip(y.iter_mut()) {
        let (d, dmin, scales, levels) = quantize_super_block_affine(xb, 15, -1.0, 20);
        b.d = d;
        b.dmin = dmin;
        b.scales = scales;
        for (pair, q) in b.qs.chunks_exact_mut(32).enumerate() {
            let base = 64 * pair;
            for l in 0..32 {
                q[l] = levels[base + l] | (levels[base + l + 32] << 4);
            }
        }
    }
}

/// Reference Q5_K quantizer (ggml `quantize_row_q5_K_ref`, with its
/// `make_qkx2_quants` scale search: 16 candidate scales per 32 values).
///
/// # Panics
/// If `x.len() != y.len() * QK_K`.
pub fn quantize_row_q5_k(x: &[f32], y: &mut [BlockQ5K]) {
    assert_super_blocks(x.len(), y.len());
    for (xb, b) in x.chunks_exact(QK_K).zip(y.iter_mut()) {
        let (d, dmin, scales, levels) = quantize_super_block_affine(xb, 31, -0.5, 15);
        b.d = d;
        b.dmin = dmin;
        b.scales = scales;
        b.qh = [0; QK_K / 8];
        for (pair, q) in b.qs.chunks_exact_mut(32).enumerate() {
            let base = 64 * pair;
            let (bit_lo, bit_hi) = (1u8 << (2 * pair), 1u8 << (2 * pair + 1));
            for l in 0..32 {
                let (lo, hi) = (levels[base + l], levels[base + l + 32]);
                if lo > 15 {
                    b.qh[l] |= bit_lo;
                }
                if hi > 15 {
                    b.qh[l] |= bit_hi;
                }
                q[l] = (lo & 0x0F) | ((hi & 0x0F) << 4);
            }
        }
    }
}

/// Values below this magnitude count as zero in the scale searches
/// (ggml `GROUP_MAX_EPS`).
const GROUP_MAX_EPS: f32 = 1e-15;

/// ggml `make_qx_quants` with `rmse_type = 1` (weights `x²`) and no
/// importance weights: fits `x ≈ scale·L` with `L` in `-nmax..nmax`, trying
/// inverse scales `-(nmax + 0.1·is) / max` for `is` in -9..=9. Returns the
/// scale; `levels` receives `L + nmax`.
fn make_qx_quants(nmax: i32, x: &[f32; 16], levels: &mut [u8; 16]) -> f32 {
    let mut max = 0.0f32;
    let mut amax = 0.0f32;
    for &v in x {
        if v.abs() > amax {
            amax = v.abs();
            max = v;
        }
    }
    if amax < GROUP_MAX_EPS {
        levels.fill(0);
        return 0.0;
    }
    let level = |iscale: f32, v: f32| nearest_int(iscale * v).clamp(-nmax, nmax - 1);
    let sums = |iscale: f32| {
        let (mut sum_lx, mut sum_l2) = (0.0f32, 0.0f32);
        for &v in x {
            let l = level(iscale, v) as f32;
            let w = v * v;
            sum_lx += w * v * l;
            sum_l2 += w * l * l;
        }
        (sum_lx, sum_l2)
    };
    let mut iscale = -(nmax as f32) / max;
    for (out, &v) in levels.iter_mut().zip(x) {
        *out = (nmax + level(iscale, v)) as u8;
    }
    let (sum_lx, sum_l2) = sums(iscale);
    let mut scale = if sum_l2 != 0.0 { sum_lx / sum_l2 } else { 0.0 };
    let mut best = scale * sum_lx;
    for is in (-9..=9).filter(|&is| is != 0) {
        iscale = -(nmax as f32 + 0.1 * is as f32) / max;
        let (sum_lx, sum_l2) = sums(iscale);
        if sum_l2 > 0.0 && sum_lx * sum_lx > best * sum_l2 {
            for (out, &v) in levels.iter_mut().zip(x) {
                *out = (nmax + level(iscale, v)) as u8;
            }
            scale = sum_lx / sum_l2;
            best = scale * sum_lx;
        }
    }
    scale
}

/// Reference Q6_K quantizer (ggml `quantize_row_q6_K_ref`, with the
/// `make_qx_quants` scale search per 16 values).
///
/// # Panics
/// If `x.len() != y.len() * QK_K`.
pub fn quantize_row_q6_k(x: &[f32], y: &mut [BlockQ6K]) {
    assert_super_blocks(x.len(), y.len());
    for (xb, b) in x.chunks_exact(QK_K).zip(y.iter_mut()) {
        let mut levels = [0u8; QK_K];
        let mut scales = [0f32; QK_K / 16];
        let mut max_scale = 0.0f32;
        let mut max_abs_scale = 0.0f32;
        for (ib, scale) in scales.iter_mut().enumerate() {
            let mut sub = [0f32; 16];
            sub.copy_from_slice(&xb[16 * ib..16 * ib + 16]);
            let mut sub_levels = [0u8; 16];
            *scale = make_qx_quants(32, &sub, &mut sub_levels);
            levels[16 * ib..16 * ib + 16].copy_from_slice(&sub_levels);
            if scale.abs() > max_abs_scale {
                max_abs_scale = scale.abs();
                max_scale = *scale;
            }
        }
        if max_abs_scale < GROUP_MAX_EPS {
            *b = BlockQ6K::zeroed();
            continue;
        }
        let iscale = -128.0 / max_scale;
        b.d = f16::from_f32(1.0 / iscale);
        for (out, &s) in b.scales.iter_mut().zip(&scales) {
            // |iscale·s| <= 128 since |s| <= |max_scale|; +128 becomes 127.
            *out = nearest_int(iscale * s).clamp(-128, 127) as i8;
        }
        for (j, &sc) in b.scales.iter().enumerate() {
            let sub_d = b.d.to_f32() * sc as f32;
            if sub_d == 0.0 {
                continue;
            }
            for i in 16 * j..16 * j + 16 {
                levels[i] = (nearest_int(xb[i] / sub_d).clamp(-32, 31) + 32) as u8;
            }
        }
        for half in 0..2 {
            let lv = &levels[128 * half..128 * half + 128];
            let ql = &mut b.ql[64 * half..64 * half + 64];
            let qh = &mut b.qh[32 * half..32 * half + 32];
            for l in 0..32 {
                let (q1, q2, q3, q4) = (lv[l], lv[l + 32], lv[l + 64], lv[l + 96]);
                ql[l] = (q1 & 0x0F) | ((q3 & 0x0F) << 4);
                ql[l + 32] = (q2 & 0x0F) | ((q4 & 0x0F) << 4);
                qh[l] = (q1 >> 4) | ((q2 >> 4) << 2) | ((q3 >> 4) << 4) | ((q4 >> 4) << 6);
            }
        }
    }
}

/// Reference Q8_K activation quantizer (ggml `quantize_row_q8_K_ref`): the
/// value of largest magnitude maps to ∓127, `d = 1 / iscale` in f32, and
/// `bsums` are the sums of each 16 quants. An all-zero block gets `d = 0` and
/// zero quants and sums.
///
/// # Panics
/// If `x.len() != y.len() * QK_K`.
pub fn quantize_row_q8_k(x: &[f32], y: &mut [BlockQ8K]) {
    assert_super_blocks(x.len(), y.len());
    for (xb, b) in x.chunks_exact(QK_K).zip(y.iter_mut()) {
        let mut max = 0.0f32;
        let mut amax = 0.0f32;
        for &v in xb {
            if v.abs() > amax {
                amax = v.abs();
                max = v;
            }
        }
        if amax == 0.0 {
            *b = BlockQ8K::zeroed();
            continue;
        }
        let iscale = -127.0 / max;
        for (q, &v) in b.qs.iter_mut().zip(xb) {
            // |iscale·v| <= 127 up to rounding; the clamp keeps `as i8` exact.
            *q = nearest_int(iscale * v).clamp(-128, 127) as i8;
        }
        for (sum, qs) in b.bsums.iter_mut().zip(b.qs.chunks_exact(16)) {
            *sum = qs.iter().map(|&q| q as i16).sum();
        }
        b.d = 1.0 / iscale;
    }
}

// ---------------------------------------------------------------------------
// Dot products (ggml's `*_generic` order of operations)
// ---------------------------------------------------------------------------

/// The integer part shared by all three K-quant dots: for each group of 8
/// lanes `l`, `acc[l] += scale(group of 16 or 32) · Σ q8·q`, exactly as
/// ggml's `aux16`/`aux32` loops (products of i8 by small quants fit i16).
#[inline(always)]
fn accumulate_scaled_lanes(
    quants: &[i8; QK_K],
    q8: &[i8; QK_K],
    sub_len: usize,
    scale: impl Fn(usize) -> i32,
) -> [i32; 8] {
    let mut acc = [0i32; 8];
    for (chunk, (a, q)) in quants.chunks_exact(8).zip(q8.chunks_exact(8)).enumerate() {
        let s = scale(chunk * 8 / sub_len);
        for l in 0..8 {
            let product = (q[l] as i16) * (a[l] as i16);
            acc[l] += s * product as i32;
        }
    }
    acc
}

/// `d·Σ acc[l]` into the eight float lanes, the final reduction of the dots.
#[inline(always)]
fn add_lanes(sums: &mut [f32; 8], d: f32, acc: &[i32; 8]) {
    for (s, &a) in sums.iter_mut().zip(acc) {
        *s += d * a as f32;
    }
}

/// The min term of the Q4_K/Q5_K dots: `Σ_j bsums[j] · m[j / 2]`.
#[inline(always)]
fn bsums_times_mins(bsums: &[i16; QK_K / 16], mins: &[u8; 8]) -> i32 {
    bsums
        .iter()
        .enumerate()
        .map(|(j, &s)| s as i32 * mins[j / 2] as i32)
        .sum()
}

/// Q4_K · Q8_K dot product over whole rows (ggml `ggml_vec_dot_q4_K_q8_K_generic`).
///
/// # Panics
/// If `x.len() != y.len()`.
pub fn vec_dot_q4_k_q8_k(x: &[BlockQ4K], y: &[BlockQ8K]) -> f32 {
    assert_same_blocks(x.len(), y.len());
    let mut sums = [0f32; 8];
    let mut sumf = 0.0f32;
    for (xb, yb) in x.iter().zip(y) {
        let mut quants = [0i8; QK_K];
        for (pair, q) in xb.qs.chunks_exact(32).enumerate() {
            for l in 0..32 {
                quants[64 * pair + l] = (q[l] & 0x0F) as i8;
                quants[64 * pair + l + 32] = (q[l] >> 4) as i8;
            }
        }
        let (scales, mins) = unpack_scales_mins_k4(&xb.scales);
        let sumi = bsums_times_mins(&yb.bsums, &mins);
        let acc = accumulate_scaled_lanes(&quants, &yb.qs, 32, |j| scales[j] as i32);
        add_lanes(&mut sums, xb.d.to_f32() * yb.d, &acc);
        let dmin = xb.dmin.to_f32() * yb.d;
        sumf -= dmin * sumi as f32;
    }
    sums.iter().fold(sumf, |s, &v| s + v)
}

/// Q5_K · Q8_K dot product over whole rows (ggml `ggml_vec_dot_q5_K_q8_K_generic`).
///
/// # Panics
/// If `x.len() != y.len()`.
pub fn vec_dot_q5_k_q8_k(x: &[BlockQ5K], y: &[BlockQ8K]) -> f32 {
    assert_same_blocks(x.len(), y.len());
    let mut sums = [0f32; 8];
    let mut sumf = 0.0f32;
    for (xb, yb) in x.iter().zip(y) {
        let mut quants = [0i8; QK_K];
        for (pair, q) in xb.qs.chunks_exact(32).enumerate() {
            let (bit_lo, bit_hi) = (1u8 << (2 * pair), 1u8 << (2 * pair + 1));
            for l in 0..32 {
                let high_lo = if xb.qh[l] & bit_lo != 0 { 16 } else { 0 };
                let high_hi = if xb.qh[l] & bit_hi != 0 { 16 } else { 0 };
                quants[64 * pair + l] = ((q[l] & 0x0F) + high_lo) as i8;
                quants[64 * pair + l + 32] = ((q[l] >> 4) + high_hi) as i8;
            }
        }
        let (scales, mins) = unpack_scales_mins_k4(&xb.scales);
        let sumi = bsums_times_mins(&yb.bsums, &mins);
        let acc = accumulate_scaled_lanes(&quants, &yb.qs, 32, |j| scales[j] as i32);
        add_lanes(&mut sums, xb.d.to_f32() * yb.d, &acc);
        let dmin = xb.dmin.to_f32() * yb.d;
        sumf -= dmin * sumi as f32;
    }
    sums.iter().fold(sumf, |s, &v| s + v)
}

/// Q6_K · Q8_K dot product over whole rows (ggml `ggml_vec_dot_q6_K_q8_K_generic`).
///
/// # Panics
/// If `x.len() != y.len()`.
pub fn vec_dot_q6_k_q8_k(x: &[BlockQ6K], y: &[BlockQ8K]) -> f32 {
    assert_same_blocks(x.len(), y.len());
    let mut sums = [0f32; 8];
    for (xb, yb) in x.iter().zip(y) {
        let quants = q6_k_quants(xb);
        let acc = accumulate_scaled_lanes(&quants, &yb.qs, 16, |j| xb.scales[j] as i32);
        add_lanes(&mut sums, xb.d.to_f32() * yb.d, &acc);
    }
    sums.iter().fold(0.0f32, |s, &v| s + v)
}
