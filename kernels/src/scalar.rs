//! Scalar reference kernels: the twins every SIMD kernel is tested against,
//! and the `Tier::Scalar` entries of the [`crate::KernelSet`].
//!
//! Accumulation order (per block: exact integer dot, then
//! `sumf += (dx * dy) * sumi`) follows ggml's reference C code.

use crate::quant::{BlockQ4_0, BlockQ4_1, BlockQ8_0, BlockQ8_1, QK};
use half::f16;

#[track_caller]
#[inline(always)]
pub(crate) fn assert_same_len(a: usize, b: usize) {
    assert_eq!(a, b, "dot product operands have different lengths");
}

/// Σ over blocks of `dx*dy * Σ (q4 - 8) * q8`.
///
/// # Panics
/// If the slices have different lengths (in blocks).
pub fn scalar_vec_dot_q4_0_q8_0(x: &[BlockQ4_0], y: &[BlockQ8_0]) -> f32 {
    assert_same_len(x.len(), y.len());
    let mut sumf = 0.0f32;
    for (bx, by) in x.iter().zip(y) {
        let mut sumi = 0i32;
        for j in 0..QK / 2 {
            let v0 = (bx.qs[j] & 0x0F) as i32 - 8;
            let v1 = (bx.qs[j] >> 4) as i32 - 8;
            sumi += v0 * by.qs[j] as i32 + v1 * by.qs[j + QK / 2] as i32;
        }
        sumf += (bx.d.to_f32() * by.d.to_f32()) * sumi as f32;
    }
    sumf
}

/// Σ over blocks of `dx*dy * Σ q4 * q8 + mx * sy`.
///
/// # Panics
/// If the slices have different lengths (in blocks).
pub fn scalar_vec_dot_q4_1_q8_1(x: &[BlockQ4_1], y: &[BlockQ8_1]) -> f32 {
    assert_same_len(x.len(), y.len());
    let mut sumf = 0.0f32;
    for (bx, by) in x.iter().zip(y) {
        let mut sumi = 0i32;
        for j in 0..QK / 2 {
            let v0 = (bx.qs[j] & 0x0F) as i32;
            let v1 = (bx.qs[j] >> 4) as i32;
            sumi += v0 * by.qs[j] as i32 + v1 * by.qs[j + QK / 2] as i32;
        }
        sumf += (bx.d.to_f32() * by.d.to_f32()) * sumi as f32 + bx.m.to_f32() * by.s.to_f32();
    }
    sumf
}

/// Σ over blocks of `dx*dy * Σ qx * qy`.
///
/// # Panics
/// If the slices have different lengths (in blocks).
pub fn scalar_vec_dot_q8_0_q8_0(x: &[BlockQ8_0], y: &[BlockQ8_0]) -> f32 {
    assert_same_len(x.len(), y.len());
    let mut sumf = 0.0f32;
    for (bx, by) in x.iter().zip(y) {
        let sumi: i32 = bx
            .qs
            .iter()
            .zip(&by.qs)
            .map(|(&a, &b)| a as i32 * b as i32)
            .sum();
        sumf += (bx.d.to_f32() * by.d.to_f32()) * sumi as f32;
    }
    sumf
}

/// Four dot products of one weight row against four activation rows; each
/// result is bitwise equal to [`scalar_vec_dot_q4_0_q8_0`] on that row.
pub fn scalar_vec_dot_q4_0_q8_0_x4(x: &[BlockQ4_0], y: [&[BlockQ8_0]; 4]) -> [f32; 4] {
    y.map(|yr| scalar_vec_dot_q4_0_q8_0(x, yr))
}

/// Four-row twin of [`scalar_vec_dot_q4_1_q8_1`] (bitwise equal per row).
pub fn scalar_vec_dot_q4_1_q8_1_x4(x: &[BlockQ4_1], y: [&[BlockQ8_1]; 4]) -> [f32; 4] {
    y.map(|yr| scalar_vec_dot_q4_1_q8_1(x, yr))
}

/// Four-row twin of [`scalar_vec_dot_q8_0_q8_0`] (bitwise equal per row).
pub fn scalar_vec_dot_q8_0_q8_0_x4(x: &[BlockQ8_0], y: [&[BlockQ8_0]; 4]) -> [f32; 4] {
    y.map(|yr| scalar_vec_dot_q8_0_q8_0(x, yr))
}

/// Sequential f32 dot product.
///
/// # Panics
/// If the slices have different lengths.
pub fn scalar_dot_f32(x: &[f32], y: &[f32]) -> f32 {
    assert_same_len(x.len(), y.len());
    x.iter().zip(y).fold(0.0f32, |acc, (&a, &b)| acc + a * b)
}

/// Sequential f16 × f32 dot product.
///
/// # Panics
/// If the slices have different lengths.
pub fn scalar_dot_f16_f32(x: &[f16], y: &[f32]) -> f32 {
    assert_same_len(x.len(), y.len());
    x.iter()
        .zip(y)
        .fold(0.0f32, |acc, (&a, &b)| acc + a.to_f32() * b)
}

/// `y += a * x` with `x` in f16 (the value accumulation of attention).
///
/// # Panics
/// If the slices have different lengths.
pub fn scalar_axpy_f16_f32(a: f32, x: &[f16], y: &mut [f32]) {
    assert_same_len(x.len(), y.len());
    for (o, &v) in y.iter_mut().zip(x) {
        *o += a * v.to_f32();
    }
}

/// `x *= a`.
pub fn scalar_scale_f32(a: f32, x: &mut [f32]) {
    for v in x {
        *v *= a;
    }
}
