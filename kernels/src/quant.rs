//! GGUF/ggml-compatible quantized block formats and their reference
//! (scalar) quantize/dequantize routines.
//!
//! Block layouts are byte-for-byte those of ggml (`#[repr(C)]`, no padding),
//! so a GGUF tensor's bytes can be reinterpreted as `&[BlockQ4_1]` etc. with
//! `bytemuck::cast_slice`. The 4-bit formats keep element `j < 16` of a block
//! in the low nibble of `qs[j]` and element `j + 16` in its high nibble.
//!
//! The activation quantizers ([`quantize_row_q8_0`], [`quantize_row_q8_1`])
//! follow ggml's AVX path (multiply by `127 / amax`, round to nearest even),
//! which the SIMD versions reproduce bit for bit. The weight quantizers
//! ([`quantize_row_q4_0`], [`quantize_row_q4_1`]) follow ggml's reference C
//! code; they exist for tests and tiny synthetic models.

use bytemuck::{Pod, Zeroable};
use half::{bf16, f16, slice::HalfFloatSliceExt};

/// Elements per quantization block (all formats here).
pub const QK: usize = 32;

/// 4-bit block, value = `(q - 8) * d` (ggml `block_q4_0`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Pod, Zeroable)]
pub struct BlockQ4_0 {
    /// Scale.
    pub d: f16,
    /// 32 nibbles: element `j` low nibble of `qs[j]`, element `j + 16` high nibble.
    pub qs: [u8; QK / 2],
}

/// 4-bit block with minimum, value = `q * d + m` (ggml `block_q4_1`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Pod, Zeroable)]
pub struct BlockQ4_1 {
    /// Scale.
    pub d: f16,
    /// Minimum (offset).
    pub m: f16,
    /// 32 nibbles, same layout as [`BlockQ4_0::qs`].
    pub qs: [u8; QK / 2],
}

/// 8-bit block, value = `q * d` (ggml `block_q8_0`).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Pod, Zeroable)]
pub struct BlockQ8_0 {
    /// Scale.
    pub d: f16,
    /// Quants.
    pub qs: [i8; QK],
}

/// 8-bit block with precomputed sum, value = `q * d` (ggml `block_q8_1`).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Pod, Zeroable)]
pub struct BlockQ8_1 {
    /// Scale.
    pub d: f16,
    /// `d * sum(qs)`, used by the Q4_1 dot product for the `m` term.
    pub s: f16,
    /// Quants.
    pub qs: [i8; QK],
}

impl Default for BlockQ8_0 {
    fn default() -> Self {
        Self::zeroed()
    }
}

impl Default for BlockQ8_1 {
    fn default() -> Self {
        Self::zeroed()
    }
}

// The layouts must match ggml exactly, or GGUF tensors would be misread.
const _: () = assert!(core::mem::size_of::<BlockQ4_0>() == 18);
const _: () = assert!(core::mem::size_of::<BlockQ4_1>() == 20);
const _: () = assert!(core::mem::size_of::<BlockQ8_0>() == 34);
const _: () = assert!(core::mem::size_of::<BlockQ8_1>() == 36);
const _: () = assert!(core::mem::align_of::<BlockQ4_0>() == 2);
const _: () = assert!(core::mem::align_of::<BlockQ8_1>() == 2);

#[track_caller]
fn assert_blocks(n_values: usize, n_blocks: usize) {
    assert_eq!(
        n_values,
        n_blocks * QK,
        "slice lengths: {n_values} values for {n_blocks} blocks of {QK}"
    );
}

/// Dequantizes Q4_0 blocks into `y`.
///
/// # Panics
/// If `y.len() != x.len() * QK`.
pub fn dequantize_row_q4_0(x: &[BlockQ4_0], y: &mut [f32]) {
    assert_blocks(y.len(), x.len());
    for (b, out) in x.iter().zip(y.chunks_exact_mut(QK)) {
        let d = b.d.to_f32();
        for j in 0..QK / 2 {
            out[j] = ((b.qs[j] & 0x0F) as i32 - 8) as f32 * d;
            out[j + QK / 2] = ((b.qs[j] >> 4) as i32 - 8) as f32 * d;
        }
    }
}

/// Dequantizes Q4_1 blocks into `y`.
///
/// # Panics
/// If `y.len() != x.len() * QK`.
pub fn dequantize_row_q4_1(x: &[BlockQ4_1], y: &mut [f32]) {
    assert_blocks(y.len(), x.len());
    for (b, out) in x.iter().zip(y.chunks_exact_mut(QK)) {
        let d = b.d.to_f32();
        let m = b.m.to_f32();
        for j in 0..QK / 2 {
            out[j] = (b.qs[j] & 0x0F) as f32 * d + m;
            out[j + QK / 2] = (b.qs[j] >> 4) as f32 * d + m;
        }
    }
}

/// Dequantizes Q8_0 blocks into `y`.
///
/// # Panics
/// If `y.len() != x.len() * QK`.
pub fn dequantize_row_q8_0(x: &[BlockQ8_0], y: &mut [f32]) {
    assert_blocks(y.len(), x.len());
    for (b, out) in x.iter().zip(y.chunks_exact_mut(QK)) {
        let d = b.d.to_f32();
        for (o, &q) in out.iter_mut().zip(&b.qs) {
            *o = q as f32 * d;
        }
    }
}

/// Dequantizes Q8_1 blocks into `y` (the `s` field is not needed).
///
/// # Panics
/// If `y.len() != x.len() * QK`.
pub fn dequantize_row_q8_1(x: &[BlockQ8_1], y: &mut [f32]) {
    assert_blocks(y.len(), x.len());
    for (b, out) in x.iter().zip(y.chunks_exact_mut(QK)) {
        let d = b.d.to_f32();
        for (o, &q) in out.iter_mut().zip(&b.qs) {
            *o = q as f32 * d;
        }
    }
}

/// Scale and its inverse for one block of activations, as ggml's AVX path
/// computes them: `d = amax / 127`, `id = 127 / amax` (0 for an all-zero block).
#[inline(always)]
pub(crate) fn q8_scale(amax: f32) -> (f32, f32) {
    let d = amax / 127.0;
    let id = if amax != 0.0 { 127.0 / amax } else { 0.0 };
    (d, id)
}

/// Quantizes one block of 32 activations to int8; returns `(d, sum of quants)`.
#[inline(always)]
fn quantize_block_q8(x: &[f32], qs: &mut [i8; QK]) -> (f32, i32) {
    let amax = x.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    let (d, id) = q8_scale(amax);
    let mut sum = 0i32;
    for (q, &v) in qs.iter_mut().zip(x) {
        // |v * id| <= 127 up to rounding, and round-half-even matches
        // `_mm256_round_ps(_MM_ROUND_NEAREST)` of the SIMD path.
        let r = (v * id).round_ties_even() as i8;
        *q = r;
        sum += r as i32;
    }
    (d, sum)
}

/// Reference Q8_0 activation quantizer (scalar; the dispatched one is
/// [`crate::KernelSet::quantize_row_q8_0`], bit-identical).
///
/// # Panics
/// If `x.len() != y.len() * QK`.
pub fn quantize_row_q8_0(x: &[f32], y: &mut [BlockQ8_0]) {
    assert_blocks(x.len(), y.len());
    for (xb, b) in x.chunks_exact(QK).zip(y.iter_mut()) {
        let (d, _) = quantize_block_q8(xb, &mut b.qs);
        b.d = f16::from_f32(d);
    }
}

/// Reference Q8_1 activation quantizer: like Q8_0 plus `s = d * sum(qs)`
/// (computed from the f32 `d`, as ggml does).
///
/// # Panics
/// If `x.len() != y.len() * QK`.
pub fn quantize_row_q8_1(x: &[f32], y: &mut [BlockQ8_1]) {
    assert_blocks(x.len(), y.len());
    for (xb, b) in x.chunks_exact(QK).zip(y.iter_mut()) {
        let (d, sum) = quantize_block_q8(xb, &mut b.qs);
        b.d = f16::from_f32(d);
        b.s = f16::from_f32(d * sum as f32);
    }
}

/// Reference Q4_0 quantizer (ggml `quantize_row_q4_0_ref`): the value with the
/// largest magnitude maps to -8.
///
/// # Panics
/// If `x.len() != y.len() * QK`.
pub fn quantize_row_q4_0(x: &[f32], y: &mut [BlockQ4_0]) {
    assert_blocks(x.len(), y.len());
    for (xb, b) in x.chunks_exact(QK).zip(y.iter_mut()) {
        let mut amax = 0.0f32;
        let mut max = 0.0f32;
        for &v in xb {
            if amax < v.abs() {
                amax = v.abs();
                max = v;
            }
        }
        let d = max / -8.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        b.d = f16::from_f32(d);
        for j in 0..QK / 2 {
            // `as i8` truncates toward zero like C's (int8_t) cast in range.
            let q0 = ((xb[j] * id + 8.5) as i8).min(15) as u8;
            let q1 = ((xb[j + QK / 2] * id + 8.5) as i8).min(15) as u8;
            b.qs[j] = q0 | (q1 << 4);
        }
    }
}

/// Reference Q4_1 quantizer (ggml `quantize_row_q4_1_ref`): min/max affine.
///
/// # Panics
/// If `x.len() != y.len() * QK`.
pub fn quantize_row_q4_1(x: &[f32], y: &mut [BlockQ4_1]) {
    assert_blocks(x.len(), y.len());
    for (xb, b) in x.chunks_exact(QK).zip(y.iter_mut()) {
        let mut min = f32::MAX;
        let mut max = -f32::MAX;
        for &v in xb {
            if v < min {
                min = v;
            }
            if v > max {
                max = v;
            }
        }
        let d = (max - min) / 15.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        b.d = f16::from_f32(d);
        b.m = f16::from_f32(min);
        for j in 0..QK / 2 {
            let q0 = (((xb[j] - min) * id + 0.5) as i8).min(15) as u8;
            let q1 = (((xb[j + QK / 2] - min) * id + 0.5) as i8).min(15) as u8;
            b.qs[j] = q0 | (q1 << 4);
        }
    }
}

/// Converts a row of f16 to f32 (uses F16C / NEON fp16 when available).
///
/// # Panics
/// If the lengths differ.
pub fn f16_to_f32_row(x: &[f16], y: &mut [f32]) {
    x.convert_to_f32_slice(y);
}

/// Converts a row of bf16 to f32 (exact: a bf16 is the top half of an f32).
///
/// # Panics
/// If the lengths differ.
pub fn bf16_to_f32_row(x: &[bf16], y: &mut [f32]) {
    assert_eq!(x.len(), y.len(), "bf16_to_f32_row: slice lengths differ");
    for (o, v) in y.iter_mut().zip(x) {
        *o = f32::from_bits((v.to_bits() as u32) << 16);
    }
}

/// Converts a row of f32 to f16 (round to nearest even), e.g. to fill a KV cache.
///
/// # Panics
/// If the lengths differ.
pub fn f32_to_f16_row(x: &[f32], y: &mut [f16]) {
    y.convert_from_f32_slice(x);
}
