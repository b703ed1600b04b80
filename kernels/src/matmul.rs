//! `y = x · Wᵀ` for GGUF-layout weight matrices, threaded and batch-invariant.
//!
//! `W` has `rows` output features × `cols` input features, each output row
//! stored contiguously (as a run of quant blocks for quantized types).
//! Activations are quantized the way llama.cpp does it (Q8_1 for Q4_1
//! weights, Q8_0 for Q4_0 and Q8_0 weights) so our int8 dot products match
//! its numerics; f32/f16 weights use the f32 activations directly.
//!
//! **Batch invariance.** Every output element `out[j][r]` is produced by one
//! call of the same dot kernel on (weight row `r`, activation row `j`), and
//! activation row `j` is quantized on its own. Neither the batch width `n`
//! nor the thread split changes which kernel runs or its accumulation order;
//! the four-row kernels (`*_x4`) are required to be bitwise equal to the
//! single-row ones, which the tests check.
//!
//! **Threading.** rayon tasks own blocks of output rows; within a task a
//! weight row is read once from memory and then reused (from L1) against
//! all `n` activation rows.

use crate::dispatch::KernelSet;
use crate::quant::{BlockQ4_0, BlockQ4_1, BlockQ8_0, BlockQ8_1, QK};
use crate::{check_len, Error};
use half::f16;
use rayon::prelude::*;

/// A borrowed weight matrix in one of the supported storage types.
#[derive(Clone, Copy, Debug)]
pub enum WeightMatrix<'a> {
    /// `rows * cols` f32 values.
    F32(&'a [f32]),
    /// `rows * cols` f16 values.
    F16(&'a [f16]),
    /// `rows * cols / 32` Q4_0 blocks.
    Q4_0(&'a [BlockQ4_0]),
    /// `rows * cols / 32` Q4_1 blocks.
    Q4_1(&'a [BlockQ4_1]),
    /// `rows * cols / 32` Q8_0 blocks.
    Q8_0(&'a [BlockQ8_0]),
}

impl WeightMatrix<'_> {
    /// Number of stored elements (values, or blocks for quantized types).
    fn stored_len(&self) -> usize {
        match self {
            WeightMatrix::F32(w) => w.len(),
            WeightMatrix::F16(w) => w.len(),
            WeightMatrix::Q4_0(w) => w.len(),
            WeightMatrix::Q4_1(w) => w.len(),
            WeightMatrix::Q8_0(w) => w.len(),
        }
    }

    fn is_quantized(&self) -> bool {
        !matches!(self, WeightMatrix::F32(_) | WeightMatrix::F16(_))
    }

    /// Bytes of weight data (what a GEMV has to stream from memory).
    pub fn size_bytes(&self) -> usize {
        match self {
            WeightMatrix::F32(w) => std::mem::size_of_val(*w),
            WeightMatrix::F16(w) => std::mem::size_of_val(*w),
            WeightMatrix::Q4_0(w) => std::mem::size_of_val(*w),
            WeightMatrix::Q4_1(w) => std::mem::size_of_val(*w),
            WeightMatrix::Q8_0(w) => std::mem::size_of_val(*w),
        }
    }
}

/// Reusable buffers for [`matmul`]: quantized activations and a
/// row-major-by-weight-row staging area. They only grow, so a steady-state
/// caller (same shapes every step) allocates nothing.
#[derive(Debug, Default)]
pub struct MatmulScratch {
    q8_0: Vec<BlockQ8_0>,
    q8_1: Vec<BlockQ8_1>,
    /// `rows × n` results, transposed into `out` at the end when `n > 1`.
    out_by_row: Vec<f32>,
}

fn grow<T: Copy + bytemuck::Zeroable>(v: &mut Vec<T>, len: usize) -> &mut [T] {
    if v.len() < len {
        v.resize(len, T::zeroed());
    }
    &mut v[..len]
}

/// Output rows per rayon task: few enough that a task's weights stay in
/// cache while all activation rows use them, many enough that task overhead
/// (~1 µs) is small next to the task's work.
const ROWS_PER_TASK: usize = 16;

/// Below this many multiply-adds the whole product runs on the calling
/// thread: waking rayon workers would cost more than it saves.
const SEQUENTIAL_WORK_LIMIT: usize = 64 * 1024;

/// Computes `out = x · Wᵀ`: `x` is `n × cols` row-major, `out` is `n × rows`.
///
/// Returns [`Error::Shape`] / [`Error::NotMultiple`] when the slices do not
/// match `rows`, `cols` and `n` (quantized weights need `cols % 32 == 0`).
#[allow(clippy::too_many_arguments)]
pub fn matmul(
    ks: &KernelSet,
    w: &WeightMatrix,
    rows: usize,
    cols: usize,
    x: &[f32],
    n: usize,
    out: &mut [f32],
    scratch: &mut MatmulScratch,
) -> Result<(), Error> {
    let n_weights = rows.checked_mul(cols).ok_or(Error::Shape {
        what: "rows * cols",
        expected: usize::MAX,
        got: rows,
    })?;
    if w.is_quantized() {
        if !cols.is_multiple_of(QK) {
            return Err(Error::NotMultiple {
                what: "cols",
                multiple_of: QK,
                got: cols,
            });
        }
        check_len("weight blocks", n_weights / QK, w.stored_len())?;
    } else {
        check_len("weight values", n_weights, w.stored_len())?;
    }
    check_len("x.len() (n * cols)", n.saturating_mul(cols), x.len())?;
    check_len("out.len() (n * rows)", n.saturating_mul(rows), out.len())?;
    if n == 0 || rows == 0 {
        return Ok(());
    }
    if cols == 0 {
        out.fill(0.0);
        return Ok(());
    }

    let parallel = n_weights.saturating_mul(n) >= SEQUENTIAL_WORK_LIMIT;
    let blocks_per_row = cols / QK;
    let MatmulScratch {
        q8_0,
        q8_1,
        out_by_row,
    } = scratch;

    // Results land row-major by weight row (`rows × n`), so each task writes
    // one contiguous range; for n == 1 that *is* `out`.
    let staging: &mut [f32] = if n == 1 {
        out
    } else {
        grow(out_by_row, rows * n)
    };

    match *w {
        WeightMatrix::F32(wv) => {
            run_rows(staging, n, parallel, |r, dst| {
                let wr = &wv[r * cols..(r + 1) * cols];
                for (o, xr) in dst.iter_mut().zip(x.chunks_exact(cols)) {
                    *o = (ks.dot_f32)(wr, xr);
                }
            });
        }
        WeightMatrix::F16(wv) => {
            run_rows(staging, n, parallel, |r, dst| {
                let wr = &wv[r * cols..(r + 1) * cols];
                for (o, xr) in dst.iter_mut().zip(x.chunks_exact(cols)) {
                    *o = (ks.dot_f16_f32)(wr, xr);
                }
            });
        }
        WeightMatrix::Q4_0(wv) => {
            let act = quantize_activations(
                x,
                cols,
                grow(q8_0, n * blocks_per_row),
                ks.quantize_row_q8_0,
            );
            run_quant_rows(
                staging,
                n,
                parallel,
                wv,
                act,
                blocks_per_row,
                ks.vec_dot_q4_0_q8_0,
                ks.vec_dot_q4_0_q8_0_x4,
            );
        }
        WeightMatrix::Q4_1(wv) => {
            let act = quantize_activations(
                x,
                cols,
                grow(q8_1, n * blocks_per_row),
                ks.quantize_row_q8_1,
            );
            run_quant_rows(
                staging,
                n,
                parallel,
                wv,
                act,
                blocks_per_row,
                ks.vec_dot_q4_1_q8_1,
                ks.vec_dot_q4_1_q8_1_x4,
            );
        }
        WeightMatrix::Q8_0(wv) => {
            let act = quantize_activations(
                x,
                cols,
                grow(q8_0, n * blocks_per_row),
                ks.quantize_row_q8_0,
            );
            run_quant_rows(
                staging,
                n,
                parallel,
                wv,
                act,
                blocks_per_row,
                ks.vec_dot_q8_0_q8_0,
                ks.vec_dot_q8_0_q8_0_x4,
            );
        }
    }

    if n > 1 {
        // Transpose `rows × n` staging into `n × rows` output.
        for (r, src) in out_by_row[..rows * n].chunks_exact(n).enumerate() {
            for (j, &v) in src.iter().enumerate() {
                out[j * rows + r] = v;
            }
        }
    }
    Ok(())
}

/// Quantizes each activation row on its own (so a row's quants never depend
/// on `n`), returning the filled blocks.
fn quantize_activations<'s, B: Send>(
    x: &[f32],
    cols: usize,
    dst: &'s mut [B],
    quantize: fn(&[f32], &mut [B]),
) -> &'s [B] {
    let blocks_per_row = cols / QK;
    dst.chunks_exact_mut(blocks_per_row)
        .zip(x.chunks_exact(cols))
        .for_each(|(q, xr)| quantize(xr, q));
    dst
}

/// Runs `row_fn(r, dst)` for every weight row `r`, where `dst` is the
/// `n`-element slice of results for that row; in parallel blocks of rows when
/// `parallel`.
fn run_rows<F>(staging: &mut [f32], n: usize, parallel: bool, row_fn: F)
where
    F: Fn(usize, &mut [f32]) + Sync,
{
    let task = |(t, chunk): (usize, &mut [f32])| {
        for (i, dst) in chunk.chunks_exact_mut(n).enumerate() {
            row_fn(t * ROWS_PER_TASK + i, dst);
        }
    };
    if parallel {
        staging
            .par_chunks_mut(ROWS_PER_TASK * n)
            .enumerate()
            .for_each(task);
    } else {
        staging
            .chunks_mut(ROWS_PER_TASK * n)
            .enumerate()
            .for_each(task);
    }
}

/// Quantized rows: four activation rows at a time through the `_x4` kernel
/// (bitwise equal to the single-row kernel), the rest one by one.
#[allow(clippy::too_many_arguments)]
fn run_quant_rows<W: Sync, A: Sync>(
    staging: &mut [f32],
    n: usize,
    parallel: bool,
    weights: &[W],
    act: &[A],
    blocks_per_row: usize,
    dot: fn(&[W], &[A]) -> f32,
    dot_x4: fn(&[W], [&[A]; 4]) -> [f32; 4],
) {
    run_rows(staging, n, parallel, |r, dst| {
        let wr = &weights[r * blocks_per_row..(r + 1) * blocks_per_row];
        let arow = |j: usize| &act[j * blocks_per_row..(j + 1) * blocks_per_row];
        let mut j = 0;
        while j + 4 <= n {
            let res = dot_x4(wr, [arow(j), arow(j + 1), arow(j + 2), arow(j + 3)]);
            dst[j..j + 4].copy_from_slice(&res);
            j += 4;
        }
        while j < n {
            dst[j] = dot(wr, arow(j));
            j += 1;
        }
    });
}
