//! f32 element-wise ops of the llama graph, numerically following ggml's CPU
//! ops (same accumulation types and rounding steps), so our activations stay
//! close to llama.cpp's.
//!
//! The purely element-wise parts (scale·weight, add) use pulp SIMD; they are
//! bitwise equal to a scalar loop (no FMA contraction, no reassociation), so
//! they need no tier selection. `cos`/`sin`/`pow` call libm per element as
//! ggml does; `exp` in SwiGLU is ggml's vectorized polynomial (see
//! [`crate::scalar::ggml_expf`]), bitwise equal in every tier.

use crate::simd_f32::{AddF32, ScaleMulF32};
use crate::Error;
use std::sync::OnceLock;

/// pulp's architecture token, detected once.
fn arch() -> pulp::Arch {
    static ARCH: OnceLock<pulp::Arch> = OnceLock::new();
    *ARCH.get_or_init(pulp::Arch::new)
}

/// RMSNorm of one row followed by the per-channel weight:
/// `out[i] = (x[i] * scale) * weight[i]`, `scale = 1 / sqrt(mean(x²) + eps)`.
///
/// As in ggml the sum of squares is accumulated in f64 (each square rounded
/// to f32 first), the mean and scale are f32.
///
/// # Panics
/// If `weight` or `out` is not as long as `x`.
pub fn rms_norm(x: &[f32], weight: &[f32], eps: f32, out: &mut [f32]) {
    assert_eq!(x.len(), weight.len(), "rms_norm: weight length");
    assert_eq!(x.len(), out.len(), "rms_norm: out length");
    if x.is_empty() {
        return;
    }
    let sum: f64 = x.iter().map(|&v| (v * v) as f64).sum();
    let mean = (sum / x.len() as f64) as f32;
    let scale = 1.0 / (mean + eps).sqrt();
    arch().dispatch(ScaleMulF32 {
        x,
        scale,
        w: weight,
        out,
    });
}

/// [`rms_norm`] of every row of `x` (rows of `weight.len()` values), bitwise
/// as row by row. The f64 sum of squares is one long chain of dependent
/// adds per row, so four rows at a time keep four chains in flight.
///
/// # Panics
/// If `x` is not whole rows or `out` is not as long as `x`.
pub fn rms_norm_rows(x: &[f32], weight: &[f32], eps: f32, out: &mut [f32]) {
    let cols = weight.len();
    assert_eq!(x.len(), out.len(), "rms_norm_rows: out length");
    if cols == 0 {
        return;
    }
    assert!(
        x.len().is_multiple_of(cols),
        "rms_norm_rows: x is not whole rows"
    );
    let mut xs = x.chunks_exact(4 * cols);
    let mut outs = out.chunks_exact_mut(4 * cols);
    for (x4, out4) in (&mut xs).zip(&mut outs) {
        let mut sums = [0.0f64; 4];
        for i in 0..cols {
            for (k, sum) in sums.iter_mut().enumerate() {
                let v = x4[k * cols + i];
                *sum += (v * v) as f64;
            }
        }
        for ((sum, row), out_row) in sums
            .iter()
            .zip(x4.chunks_exact(cols))
            .zip(out4.chunks_exact_mut(cols))
        {
            let mean = (sum / cols as f64) as f32;
            let scale = 1.0 / (mean + eps).sqrt();
            arch().dispatch(ScaleMulF32 {
                x: row,
                scale,
                w: weight,
                out: out_row,
            });
        }
    }
    for (row, out_row) in xs
        .remainder()
        .chunks_exact(cols)
        .zip(outs.into_remainder().chunks_exact_mut(cols))
    {
        rms_norm(row, weight, eps, out_row);
    }
}

/// In-place RoPE, ggml "normal" mode (rotates adjacent pairs `x[2i], x[2i+1]`)
/// for one token: `x` holds `n_heads × head_dim` values.
///
/// Angles are computed as ggml does: `theta` starts at `pos` (as f32) and is
/// multiplied by `theta_scale = theta_base^(-2/head_dim)` after each pair;
/// `cos`/`sin` are f32.
///
/// Returns an error if `x.len() != n_heads * head_dim` or `head_dim` is odd.
pub fn rope_norm_inplace(
    x: &mut [f32],
    n_heads: usize,
    head_dim: usize,
    pos: i32,
    theta_base: f32,
) -> Result<(), Error> {
    check_even_head_dim(head_dim)?;
    crate::check_len(
        "x.len() (n_heads * head_dim)",
        n_heads.saturating_mul(head_dim),
        x.len(),
    )?;
    if head_dim == 0 {
        return Ok(());
    }
    let theta_scale = theta_base.powf(-2.0 / head_dim as f32);
    let mut theta = pos as f32;
    // Pairs outer, heads inner: each angle's cos/sin is computed once per
    // token (like ggml's rope cache) without a buffer.
    for i in (0..head_dim).step_by(2) {
        let (sin_t, cos_t) = theta.sin_cos();
        theta *= theta_scale;
        for head in x.chunks_exact_mut(head_dim) {
            let x0 = head[i];
            let x1 = head[i + 1];
            // ggml's `rotate_pairs` as GCC vectorizes and contracts it
            // (`vfmaddsub` of x0 against the cached [cos, sin] pair), checked
            // bitwise against llama.cpp's tensors:
            // `fma(x0, cos, -(x1·sin))` and `fma(x0, sin, x1·cos)`.
            head[i] = x0.mul_add(cos_t, -(x1 * sin_t));
            head[i + 1] = x0.mul_add(sin_t, x1 * cos_t);
        }
    }
    Ok(())
}

/// `out[i] = silu(gate[i]) * up[i]` with `silu(g) = g / (1 + exp(0 - g))`,
/// `exp` being ggml's `ggml_v_expf` polynomial (bitwise what llama.cpp's
/// `ggml_vec_swiglu_f32` computes, in every tier).
///
/// # Panics
/// If the three slices differ in length.
pub fn silu_mul(gate: &[f32], up: &[f32], out: &mut [f32]) {
    assert_eq!(gate.len(), up.len(), "silu_mul: up length");
    assert_eq!(gate.len(), out.len(), "silu_mul: out length");
    (crate::KernelSet::best().silu_mul_f32)(gate, up, out);
}

/// `x += y`.
///
/// # Panics
/// If the slices differ in length.
pub fn add_inplace(x: &mut [f32], y: &[f32]) {
    assert_eq!(x.len(), y.len(), "add_inplace: lengths differ");
    arch().dispatch(AddF32 { x, y });
}

/// Numerically stable softmax in place: `exp(x - max) / Σ`, the sum
/// accumulated in f64 as ggml does. An empty slice is left as is.
pub fn softmax_inplace(x: &mut [f32]) {
    if x.is_empty() {
        return;
    }
    let max = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut sum = 0.0f64;
    for v in x.iter_mut() {
        let e = (*v - max).exp();
        sum += e as f64;
        *v = e;
    }
    let inv = (1.0 / sum) as f32;
    for v in x.iter_mut() {
        *v *= inv;
    }
}

/// The softmax probability of entry `index` of `logits`,
/// `exp(x[index] - max) / Σ exp(x - max)`, with the tier's vectorized `exp`
/// on a copy in `scratch` (no exactness promised: for estimates such as the
/// model's confidence in a token). NaN when `index` is out of range.
pub fn softmax_probability(
    ks: &crate::KernelSet,
    logits: &[f32],
    index: usize,
    scratch: &mut Vec<f32>,
) -> f32 {
    if index >= logits.len() {
        return f32::NAN;
    }
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    scratch.clear();
    scratch.extend(logits.iter().map(|&v| v - max));
    (ks.exp_f32)(scratch);
    // Eight partial sums, so the loop vectorizes.
    let mut lanes = [0.0f32; 8];
    let mut chunks = scratch.chunks_exact(8);
    for chunk in &mut chunks {
        for (l, &e) in lanes.iter_mut().zip(chunk) {
            *l += e;
        }
    }
    let sum: f32 = lanes.iter().sum::<f32>() + chunks.remainder().iter().sum::<f32>();
    scratch[index] / sum
}

/// [`softmax_probability`] that also puts the `k` likeliest entries in
/// `top` as `(index, probability)`, likeliest first (lower index on ties):
/// the model's alternatives at a position, for draft calibration. One more
/// pass over the exponentials, which are in `scratch` afterwards.
pub fn softmax_probability_top_k(
    ks: &crate::KernelSet,
    logits: &[f32],
    index: usize,
    k: usize,
    scratch: &mut Vec<f32>,
    top: &mut Vec<(u32, f32)>,
) -> f32 {
    top.clear();
    let probability = softmax_probability(ks, logits, index, scratch);
    if k == 0 || scratch.len() != logits.len() {
        return probability;
    }
    // Insertion into a short sorted list. Once it is full, whole chunks
    // whose largest entry does not beat its last are skipped (a max that
    // vectorizes), so the scan costs little more than reading the row.
    let mut floor = f32::NEG_INFINITY;
    const CHUNK: usize = 32;
    for (c, chunk) in scratch.chunks(CHUNK).enumerate() {
        if top.len() == k && chunk.iter().fold(f32::NEG_INFINITY, |m, &e| m.max(e)) <= floor {
            continue;
        }
        for (j, &e) in chunk.iter().enumerate() {
            if e <= floor && top.len() == k {
                continue;
            }
            let at = top.partition_point(|&(_, v)| v >= e);
            if at < k {
                if top.len() == k {
                    top.pop();
                }
                top.insert(at, ((c * CHUNK + j) as u32, e));
                if top.len() == k {
                    floor = top[k - 1].1;
                }
            }
        }
    }
    let sum = if probability > 0.0 && index < scratch.len() {
        scratch[index] / probability
    } else {
        scratch.iter().sum::<f32>()
    };
    for entry in top.iter_mut() {
        entry.1 /= sum;
    }
    probability
}

/// Index of the largest value; the first one on ties, NaNs never win.
/// Returns 0 for an empty slice.
pub fn argmax(x: &[f32]) -> usize {
    let mut best = 0;
    let mut best_v = f32::NEG_INFINITY;
    for (i, &v) in x.iter().enumerate() {
        if v > best_v {
            best = i;
            best_v = v;
        }
    }
    best
}

/// The `(sin, cos)` of every dimension pair of a head at position `pos`,
/// exactly as [`rope_norm_inplace`] computes them (`theta` from `pos`, times
/// `theta_base^(-2/head_dim)` per pair). The angles depend only on the
/// position, so a caller that rotates many tensors at the same positions
/// (every layer's Q and K) computes them once.
///
/// Returns an error if `head_dim` is odd or `out.len() != head_dim / 2`.
pub fn rope_angles(
    pos: i32,
    head_dim: usize,
    theta_base: f32,
    out: &mut [(f32, f32)],
) -> Result<(), Error> {
    check_even_head_dim(head_dim)?;
    crate::check_len("angles (head_dim / 2)", head_dim / 2, out.len())?;
    if head_dim == 0 {
        return Ok(());
    }
    let theta_scale = theta_base.powf(-2.0 / head_dim as f32);
    let mut theta = pos as f32;
    for a in out.iter_mut() {
        *a = theta.sin_cos();
        theta *= theta_scale;
    }
    Ok(())
}

/// [`rope_norm_inplace`] with angles from [`rope_angles`] (bitwise equal).
///
/// Returns an error if `x.len() != n_heads * head_dim` or the angles do not
/// cover `head_dim / 2` pairs.
pub fn rope_norm_with_angles(
    x: &mut [f32],
    n_heads: usize,
    head_dim: usize,
    angles: &[(f32, f32)],
) -> Result<(), Error> {
    crate::check_len(
        "x.len() (n_heads * head_dim)",
        n_heads.saturating_mul(head_dim),
        x.len(),
    )?;
    crate::check_len("angles (head_dim / 2)", head_dim / 2, angles.len())?;
    if head_dim == 0 {
        return Ok(());
    }
    // Under pulp's dispatch the `mul_add`s compile to FMA instructions
    // instead of calls to libm's `fmaf` (same results, much faster).
    arch().dispatch(|| {
        for head in x.chunks_exact_mut(head_dim) {
            for (pair, &(sin_t, cos_t)) in head.chunks_exact_mut(2).zip(angles) {
                let (x0, x1) = (pair[0], pair[1]);
                pair[0] = x0.mul_add(cos_t, -(x1 * sin_t));
                pair[1] = x0.mul_add(sin_t, x1 * cos_t);
            }
        }
    });
    Ok(())
}

fn check_even_head_dim(head_dim: usize) -> Result<(), Error> {
    if head_dim.is_multiple_of(2) {
        Ok(())
    } else {
        Err(Error::NotMultiple {
            what: "head_dim",
            multiple_of: 2,
            got: head_dim,
        })
    }
}
