//! Scalar reference kernels: the twins every SIMD kernel is tested against,
//! and the `Tier::Scalar` entries of the [`crate::KernelSet`].
//!
//! Accumulation orders follow llama.cpp's batched (prompt-processing) CPU
//! path on x86 bit for bit: the quantized dots keep eight f32 lanes updated
//! with one FMA per block (ggml's AVX2 `vec_dot`s and llamafile's
//! `tinyBLAS_Q0_AVX`), the f16 dot keeps sixteen (llamafile's f16
//! `tinyBLAS`). The SIMD twins do exactly the same float operations, so the
//! tiers agree bitwise and coordgen's logits match llama.cpp's.

use crate::attention::ScoreJob;
use crate::quant::{BlockQ4_0, BlockQ4_1, BlockQ8_0, BlockQ8_1, QK};
use half::f16;

#[track_caller]
#[inline(always)]
pub(crate) fn assert_same_len(a: usize, b: usize) {
    assert_eq!(a, b, "dot product operands have different lengths");
}

/// Sum of 8 lanes in the order of ggml's `hsum_float_8` / tinyBLAS's
/// `hsum(__m256)`: upper half plus lower half, then the two 64-bit halves,
/// then the last pair. Matching it keeps our logits bitwise equal to
/// llama.cpp's batched CPU path.
#[inline(always)]
pub(crate) fn hsum8(a: &[f32; 8]) -> f32 {
    let t = [a[4] + a[0], a[5] + a[1], a[6] + a[2], a[7] + a[3]];
    (t[0] + t[2]) + (t[1] + t[3])
}

/// Sum of 16 lanes in the order of GCC's `_mm512_reduce_add_ps` (upper
/// 256 bits plus lower, then as [`hsum8`]), which tinyBLAS and ggml's
/// softmax use.
#[inline(always)]
pub(crate) fn hsum16(a: &[f32; 16]) -> f32 {
    let mut t = [0.0f32; 8];
    for k in 0..8 {
        t[k] = a[k + 8] + a[k];
    }
    hsum8(&t)
}

/// The eight i32 lanes of an AVX2 int8 block dot: lane `j` is the exact sum
/// of the products of elements `4j..4j+4`, converted to f32.
#[inline(always)]
pub(crate) fn block_lanes(x: impl Fn(usize) -> i32, y: &[i8; QK]) -> [f32; 8] {
    let mut lanes = [0.0f32; 8];
    for (j, lane) in lanes.iter_mut().enumerate() {
        let s: i32 = (4 * j..4 * j + 4).map(|e| x(e) * y[e] as i32).sum();
        *lane = s as f32;
    }
    lanes
}

/// `acc[j] = fma(d, lanes[j], acc[j])`, ggml's per-block accumulation.
#[inline(always)]
pub(crate) fn fma_lanes(acc: &mut [f32; 8], d: f32, lanes: &[f32; 8]) {
    for (a, &l) in acc.iter_mut().zip(lanes) {
        *a = d.mul_add(l, *a);
    }
}

/// Σ over blocks of `dx*dy * Σ (q4 - 8) * q8`, in the order of ggml's AVX2
/// `ggml_vec_dot_q4_0_q8_0`: eight f32 lanes, one FMA per block and lane,
/// then [`hsum8`].
///
/// # Panics
/// If the slices have different lengths (in blocks).
pub fn scalar_vec_dot_q4_0_q8_0(x: &[BlockQ4_0], y: &[BlockQ8_0]) -> f32 {
    assert_same_len(x.len(), y.len());
    let mut acc = [0.0f32; 8];
    for (bx, by) in x.iter().zip(y) {
        let lanes = block_lanes(|e| nibble(&bx.qs, e) - 8, &by.qs);
        fma_lanes(&mut acc, bx.d.to_f32() * by.d.to_f32(), &lanes);
    }
    hsum8(&acc)
}

/// Element `e` of a block of 32 packed nibbles (ggml layout: low nibbles are
/// elements 0..16, high nibbles 16..32).
#[inline(always)]
pub(crate) fn nibble(qs: &[u8; QK / 2], e: usize) -> i32 {
    if e < QK / 2 {
        (qs[e] & 0x0F) as i32
    } else {
        (qs[e - QK / 2] >> 4) as i32
    }
}

/// Σ over blocks of `dx*dy * Σ q4 * q8 + mx * sy`, in the order of ggml's
/// AVX2 `ggml_vec_dot_q4_1_q8_1` (the kernel llama.cpp runs for Q4_1 on
/// x86): eight f32 lanes with one FMA per block, and the `m·s` terms summed
/// separately with an FMA each (GCC contracts ggml's `summs += m * s`),
/// added after [`hsum8`].
///
/// # Panics
/// If the slices have different lengths (in blocks).
pub fn scalar_vec_dot_q4_1_q8_1(x: &[BlockQ4_1], y: &[BlockQ8_1]) -> f32 {
    assert_same_len(x.len(), y.len());
    let mut acc = [0.0f32; 8];
    let mut summs = 0.0f32;
    for (bx, by) in x.iter().zip(y) {
        summs = bx.m.to_f32().mul_add(by.s.to_f32(), summs);
        let lanes = block_lanes(|e| nibble(&bx.qs, e), &by.qs);
        fma_lanes(&mut acc, bx.d.to_f32() * by.d.to_f32(), &lanes);
    }
    hsum8(&acc) + summs
}

/// Σ over blocks of `dx*dy * Σ qx * qy`, in the order of llama.cpp's
/// batched Q8_0 path (llamafile `tinyBLAS_Q0_AVX`, the same as ggml's AVX2
/// `ggml_vec_dot_q8_0_q8_0`): eight lanes, one FMA per block, [`hsum8`].
///
/// # Panics
/// If the slices have different lengths (in blocks).
pub fn scalar_vec_dot_q8_0_q8_0(x: &[BlockQ8_0], y: &[BlockQ8_0]) -> f32 {
    assert_same_len(x.len(), y.len());
    let mut acc = [0.0f32; 8];
    for (bx, by) in x.iter().zip(y) {
        let lanes = block_lanes(|e| bx.qs[e] as i32, &by.qs);
        fma_lanes(&mut acc, bx.d.to_f32() * by.d.to_f32(), &lanes);
    }
    hsum8(&acc)
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

/// f16 × f32 dot product in the order of llama.cpp's batched f16 path
/// (llamafile `tinyBLAS<16, __m512, ..>`): element `i` goes to lane
/// `i % 16` with an FMA, the lanes start at zero and are summed by
/// [`hsum16`]. Attention uses it for the scores so they match bitwise.
///
/// # Panics
/// If the slices have different lengths.
pub fn scalar_dot_f16_f32(x: &[f16], y: &[f32]) -> f32 {
    assert_same_len(x.len(), y.len());
    let mut acc = [0.0f32; 16];
    for (i, (&a, &b)) in x.iter().zip(y).enumerate() {
        acc[i % 16] = a.to_f32().mul_add(b, acc[i % 16]);
    }
    hsum16(&acc)
}

/// `y += a * x` with `x` in f16 (the value accumulation of attention).
///
/// # Panics
/// If the slices have different lengths.
pub fn scalar_axpy_f16_f32(a: f32, x: &[f16], y: &mut [f32]) {
    assert_same_len(x.len(), y.len());
    for (o, &v) in y.iter_mut().zip(x) {
        *o = a.mul_add(v.to_f32(), *o);
    }
}

/// `x[i] = f16(x[i] * a)` as f32 (the product rounded to f32, then to f16
/// with round-to-nearest-even, as F16C's `vcvtps2ph` does).
pub fn scalar_scale_round_f16(a: f32, x: &mut [f32]) {
    for v in x {
        *v = f16::from_f32(*v * a).to_f32();
    }
}

/// `x *= a`.
pub fn scalar_scale_f32(a: f32, x: &mut [f32]) {
    for v in x {
        *v *= a;
    }
}

/// Constants of ggml's vectorized `ggml_v_expf` (ARM optimized-routines
/// polynomial), as bit patterns because Rust has no hex float literals.
mod expf_consts {
    /// `0x1.8p23`: adding it rounds to an integer.
    pub const SHIFT: u32 = 0x4b40_0000;
    /// `0x1.715476p+0` = log2(e).
    pub const LOG2E: u32 = 0x3fb8_aa3b;
    /// `0x1.62e4p-1`: ln(2), high part.
    pub const LN2_HI: u32 = 0x3f31_7200;
    /// `0x1.7f7d1cp-20`: ln(2), low part.
    pub const LN2_LO: u32 = 0x35bf_be8e;
    /// Polynomial coefficients `0x1.0e4020p-7`, `0x1.573e2ep-5`,
    /// `0x1.555e66p-3`, `0x1.fffdb6p-2`, `0x1.ffffecp-1`.
    pub const C5: u32 = 0x3c07_2010;
    pub const C4: u32 = 0x3d2b_9f17;
    pub const C3: u32 = 0x3e2a_af33;
    pub const C2: u32 = 0x3eff_fedb;
    pub const C1: u32 = 0x3f7f_fff6;
}

/// `exp(x)` exactly as ggml's AVX-512 `ggml_v_expf` computes it lane by lane
/// (same FMAs, same `scalef`), which llama.cpp's softmax and SwiGLU use;
/// libm's `expf` differs in the last bit often enough to change int8
/// roundings downstream.
#[inline]
pub fn ggml_expf(x: f32) -> f32 {
    use expf_consts::*;
    let c = f32::from_bits;
    let r = c(SHIFT);
    let z = x.mul_add(c(LOG2E), r);
    let n = z - r;
    let b = (-n).mul_add(c(LN2_LO), (-n).mul_add(c(LN2_HI), x));
    if n.abs() > 192.0 {
        return if n <= 0.0 { 0.0 } else { f32::INFINITY };
    }
    let u = b * b;
    let j = c(C5)
        .mul_add(b, c(C4))
        .mul_add(u, c(C3).mul_add(b, c(C2)))
        .mul_add(u, c(C1).mul_add(b, 1.0));
    // `vscalefps`: j · 2^n rounded once; the f64 product is exact
    // (|n| <= 192), so the cast is that single rounding. 2^n is built from
    // its exponent bits (`powi` is a slow library call).
    let two_n = f64::from_bits(((n as i64 + 1023) as u64) << 52);
    (j as f64 * two_n) as f32
}

/// `x[i] = ggml_expf(x[i])`.
pub fn scalar_exp_f32(x: &mut [f32]) {
    for v in x {
        *v = ggml_expf(*v);
    }
}

/// `out[i] = silu(gate[i]) * up[i]` as ggml's `ggml_vec_swiglu_f32`:
/// `silu(g) = g / (1 + ggml_expf(0 - g))`.
///
/// # Panics
/// If the slices differ in length.
pub fn scalar_silu_mul_f32(gate: &[f32], up: &[f32], out: &mut [f32]) {
    assert_same_len(gate.len(), up.len());
    assert_same_len(gate.len(), out.len());
    for ((o, &g), &u) in out.iter_mut().zip(gate).zip(up) {
        *o = (g / (1.0 + ggml_expf(0.0 - g))) * u;
    }
}

/// Attention scores of a [`ScoreJob`]: query `j`'s score of slot
/// `slots.start + i` goes to `scores[j * scores_stride + i]` and equals
/// `scalar_dot_f16_f32(key, query) * scale` (sixteen lanes, element `d`
/// FMA'd into lane `d % 16`, then [`hsum16`]).
///
/// # Panics
/// If `q16` is not whole queries, or the keys or `scores` are too short.
pub fn scalar_attn_scores_f16(job: &ScoreJob, scores: &mut [f32], scores_stride: usize) {
    let Some(hd) = job.head_dim() else {
        return;
    };
    job.keys.assert_covers(job.slots.end, hd);
    for (j, q) in job.q16.chunks_exact(hd).enumerate() {
        for (i, t) in job.slots.clone().enumerate() {
            let mut acc = [0.0f32; 16];
            for (d, &x) in q.iter().enumerate() {
                acc[d % 16] = job.keys.get(t, d).to_f32().mul_add(x, acc[d % 16]);
            }
            scores[j * scores_stride + i] = hsum16(&acc) * job.scale;
        }
    }
}

/// `out[c] = hsum16(x[16c..16c + 16])` for `c < x.len() / 16` (a partial
/// last 16 is ignored).
///
/// # Panics
/// If `out` is shorter than `x.len() / 16`.
pub fn scalar_hsum16_chunks(x: &[f32], out: &mut [f32]) {
    for (o, chunk) in out[..x.len() / 16].iter_mut().zip(x.chunks_exact(16)) {
        let mut a = [0.0f32; 16];
        a.copy_from_slice(chunk);
        *o = hsum16(&a);
    }
}

/// Longest head the block score kernels hold on the stack.
pub(crate) const MAX_BLOCK_HEAD_DIM: usize = 256;

/// [`scalar_attn_scores_f16`] a key block at a time, in plain arrays that
/// the compiler vectorizes across the block's 16 slots (each slot's 16-lane
/// dot runs in the 16 columns of `acc`, in the same FMA order). Inlined
/// into the tiers' `#[target_feature]` functions (half's slice conversion
/// picks the CPU's f16 instructions; every route gives the same values).
#[inline(always)]
pub(crate) fn blocked_scores_portable(job: &ScoreJob, scores: &mut [f32], scores_stride: usize) {
    use half::slice::HalfFloatSliceExt;
    let Some(hd) = job.head_dim() else {
        return;
    };
    if hd > MAX_BLOCK_HEAD_DIM {
        scalar_attn_scores_f16(job, scores, scores_stride);
        return;
    }
    let ScoreJob {
        q16,
        keys,
        ref slots,
        scale,
        ..
    } = *job;
    keys.assert_covers(slots.end, hd);
    let mut block_keys = [0.0f32; 16 * MAX_BLOCK_HEAD_DIM];
    let block_keys = &mut block_keys[..16 * hd];
    let mut t = slots.start;
    while t < slots.end {
        let block = t / 16;
        let (lo, hi) = (t % 16, (slots.end - 16 * block).min(16));
        keys.block(block, hd).convert_to_f32_slice(block_keys);
        for (j, q) in q16.chunks_exact(hd).enumerate() {
            let mut acc = [[0.0f32; 16]; 16];
            for (d, (&x, column)) in q.iter().zip(block_keys.chunks_exact(16)).enumerate() {
                let a = &mut acc[d % 16];
                for s in 0..16 {
                    a[s] = column[s].mul_add(x, a[s]);
                }
            }
            let sums = hsum16_columns(&acc);
            // Slot `16 · block + lo` is the `16 · block + lo - start`-th.
            let out = &mut scores[j * scores_stride + 16 * block + lo - slots.start..];
            for (o, &sum) in out.iter_mut().zip(&sums[lo..hi]) {
                *o = sum * scale;
            }
        }
        t = 16 * block + hi;
    }
}

/// [`hsum16`] of every column of `acc` (`acc[lane][column]`), as
/// element-wise adds of whole rows.
#[inline(always)]
#[allow(clippy::needless_range_loop)]
fn hsum16_columns(acc: &[[f32; 16]; 16]) -> [f32; 16] {
    let mut t = [[0.0f32; 16]; 8];
    for k in 0..8 {
        for s in 0..16 {
            t[k][s] = acc[k + 8][s] + acc[k][s];
        }
    }
    let mut u = [[0.0f32; 16]; 4];
    for k in 0..4 {
        for s in 0..16 {
            u[k][s] = t[k + 4][s] + t[k][s];
        }
    }
    let mut out = [0.0f32; 16];
    for s in 0..16 {
        out[s] = (u[0][s] + u[2][s]) + (u[1][s] + u[3][s]);
    }
    out
}

/// Attention value accumulation over `p.len()` consecutive KV slots
/// starting at slot `first`: slot `t = first + i` (value row
/// `v[i * stride..i * stride + head_dim]`) is added with weight `p[i]` into
/// lane `t % 16` of `lanes` (`16 × head_dim`), in slot order, as
/// [`scalar_axpy_f16_f32`] does; the lanes are llama.cpp's f16 `tinyBLAS`
/// accumulators.
///
/// # Panics
/// If `lanes.len()` is not a multiple of 16 or `v` is too short.
pub fn scalar_attn_values_f16(
    p: &[f32],
    v: &[f16],
    stride: usize,
    first: usize,
    lanes: &mut [f32],
) {
    assert!(
        lanes.len().is_multiple_of(16),
        "attn_values: lanes must be 16 × head_dim"
    );
    let hd = lanes.len() / 16;
    for (i, &w) in p.iter().enumerate() {
        let lane = (first + i) % 16;
        scalar_axpy_f16_f32(
            w,
            &v[i * stride..i * stride + hd],
            &mut lanes[lane * hd..(lane + 1) * hd],
        );
    }
}

/// Value accumulation of `m` queries over the same `n` consecutive KV slots
/// from slot `first`, as `m` calls of [`scalar_attn_values_f16`]: query
/// `j`'s weights are `p[j * p_stride..][..n]` and its lanes
/// `lanes[j * 16 * head_dim..][..16 * head_dim]`.
///
/// # Panics
/// If `lanes.len()` is not `m · 16 · head_dim` for some `head_dim`, or a
/// slice is too short.
#[allow(clippy::too_many_arguments)]
pub fn scalar_attn_values_f16_multi(
    p: &[f32],
    p_stride: usize,
    m: usize,
    n: usize,
    v: &[f16],
    stride: usize,
    first: usize,
    lanes: &mut [f32],
) {
    values_per_query(
        scalar_attn_values_f16,
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

/// `m` calls of a one-query value kernel, the multi-query kernels' shape.
#[allow(clippy::too_many_arguments)]
pub(crate) fn values_per_query(
    one: fn(&[f32], &[f16], usize, usize, &mut [f32]),
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
    for j in 0..m {
        one(
            &p[j * p_stride..j * p_stride + n],
            v,
            stride,
            first,
            &mut lanes[j * per..(j + 1) * per],
        );
    }
}
