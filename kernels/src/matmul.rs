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
//! **Weights repacked in 8-row groups** ([`crate::repack`]) go through the
//! group kernels, which give per row the same bits as the row kernels.
//!
//! **Threading.** The work is cut into *units* (a row group, or
//! [`ROWS_PER_UNIT`] rows of a row-major matrix); each unit is computed
//! against all `n` activation rows while its weights are in L1, and writes
//! its own output elements. [`matmul`] spreads units over rayon; an executor
//! with its own threads calls [`MatmulScratch::prepare`] once and
//! [`matmul_units`] from every thread on disjoint unit ranges.

use crate::dispatch::KernelSet;
use crate::kquant::{self, BlockQ4K, BlockQ5K, BlockQ6K, BlockQ8K, QK_K};
use crate::quant::{BlockQ4_0, BlockQ4_1, BlockQ8_0, BlockQ8_1, QK};
use crate::repack::{self, ActAux, BlockQ4_0x8, BlockQ4_1x8, BlockQ8_0x8, GROUP};
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
    /// Q4_0 repacked in 8-row groups: `rows / 8 * cols / 32` group blocks.
    Q4_0x8(&'a [BlockQ4_0x8]),
    /// Q4_1 repacked in 8-row groups.
    Q4_1x8(&'a [BlockQ4_1x8]),
    /// Q8_0 repacked in 8-row groups.
    Q8_0x8(&'a [BlockQ8_0x8]),
    /// `rows * cols / 256` Q4_K super-blocks (scalar dots against Q8_K).
    Q4K(&'a [BlockQ4K]),
    /// `rows * cols / 256` Q5_K super-blocks.
    Q5K(&'a [BlockQ5K]),
    /// `rows * cols / 256` Q6_K super-blocks.
    Q6K(&'a [BlockQ6K]),
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
            WeightMatrix::Q4_0x8(w) => w.len(),
            WeightMatrix::Q4_1x8(w) => w.len(),
            WeightMatrix::Q8_0x8(w) => w.len(),
            WeightMatrix::Q4K(w) => w.len(),
            WeightMatrix::Q5K(w) => w.len(),
            WeightMatrix::Q6K(w) => w.len(),
        }
    }

    /// Values per quantization block along a row (1 for f32/f16).
    fn block_len(&self) -> usize {
        match self {
            WeightMatrix::F32(_) | WeightMatrix::F16(_) => 1,
            WeightMatrix::Q4K(_) | WeightMatrix::Q5K(_) | WeightMatrix::Q6K(_) => QK_K,
            _ => QK,
        }
    }

    /// Rows per stored element row: 8 for repacked groups, 1 otherwise.
    fn rows_per_group(&self) -> usize {
        match self {
            WeightMatrix::Q4_0x8(_) | WeightMatrix::Q4_1x8(_) | WeightMatrix::Q8_0x8(_) => GROUP,
            _ => 1,
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
            WeightMatrix::Q4_0x8(w) => std::mem::size_of_val(*w),
            WeightMatrix::Q4_1x8(w) => std::mem::size_of_val(*w),
            WeightMatrix::Q8_0x8(w) => std::mem::size_of_val(*w),
            WeightMatrix::Q4K(w) => std::mem::size_of_val(*w),
            WeightMatrix::Q5K(w) => std::mem::size_of_val(*w),
            WeightMatrix::Q6K(w) => std::mem::size_of_val(*w),
        }
    }

    /// Checks the matrix against `rows × cols`.
    fn check(&self, rows: usize, cols: usize) -> Result<(), Error> {
        let n_weights = rows.checked_mul(cols).ok_or(Error::Shape {
            what: "rows * cols",
            expected: usize::MAX,
            got: rows,
        })?;
        if self.is_quantized() {
            let qk = self.block_len();
            if !cols.is_multiple_of(qk) {
                return Err(Error::NotMultiple {
                    what: "cols",
                    multiple_of: qk,
                    got: cols,
                });
            }
            let g = self.rows_per_group();
            if !rows.is_multiple_of(g) {
                return Err(Error::NotMultiple {
                    what: "rows of a repacked matrix",
                    multiple_of: g,
                    got: rows,
                });
            }
            check_len("weight blocks", n_weights / qk / g, self.stored_len())
        } else {
            check_len("weight values", n_weights, self.stored_len())
        }
    }
}

/// Reusable buffers for [`matmul`]: the quantized activations. They only
/// grow, so a steady-state caller (same shapes every step) allocates nothing.
#[derive(Debug, Default)]
pub struct MatmulScratch {
    q8_0: Vec<BlockQ8_0>,
    q8_1: Vec<BlockQ8_1>,
    q8_k: Vec<BlockQ8K>,
    aux: Vec<ActAux>,
}

fn grow<T: Copy + bytemuck::Zeroable>(v: &mut Vec<T>, len: usize) -> &mut [T] {
    if v.len() < len {
        v.resize(len, T::zeroed());
    }
    &mut v[..len]
}

/// Output rows per work unit of a row-major (not repacked) matrix: few
/// enough that the unit's weights stay in cache while all activation rows
/// use them, many enough that scheduling is cheap next to the work.
pub const ROWS_PER_UNIT: usize = 16;

/// Below this many multiply-adds [`matmul`] runs on the calling thread:
/// waking rayon workers would cost more than it saves.
const SEQUENTIAL_WORK_LIMIT: usize = 64 * 1024;

/// Activation rows per group-kernel call (the kernel tiles them by four).
const COLS_PER_CALL: usize = 16;

impl MatmulScratch {
    /// Quantizes the `n × cols` activations `x` as `w` needs them (each row
    /// on its own, so a row's quants never depend on `n`).
    pub fn prepare(
        &mut self,
        ks: &KernelSet,
        w: &WeightMatrix,
        cols: usize,
        x: &[f32],
        n: usize,
    ) -> Result<(), Error> {
        check_len("x.len() (n * cols)", n.saturating_mul(cols), x.len())?;
        if !w.is_quantized() || cols == 0 {
            return Ok(());
        }
        let qk = w.block_len();
        if !cols.is_multiple_of(qk) {
            return Err(Error::NotMultiple {
                what: "cols",
                multiple_of: qk,
                got: cols,
            });
        }
        let blocks = n * (cols / qk);
        match w {
            WeightMatrix::Q4K(_) | WeightMatrix::Q5K(_) | WeightMatrix::Q6K(_) => {
                quantize_activations(
                    x,
                    cols,
                    grow(&mut self.q8_k, blocks),
                    kquant::quantize_row_q8_k,
                );
            }
            WeightMatrix::Q4_1(_) | WeightMatrix::Q4_1x8(_) => {
                let q = quantize_activations(
                    x,
                    cols,
                    grow(&mut self.q8_1, blocks),
                    ks.quantize_row_q8_1,
                );
                if matches!(w, WeightMatrix::Q4_1x8(_)) {
                    repack::act_aux_q8_1(q, grow(&mut self.aux, blocks));
                }
            }
            _ => {
                let q = quantize_activations(
                    x,
                    cols,
                    grow(&mut self.q8_0, blocks),
                    ks.quantize_row_q8_0,
                );
                match w {
                    WeightMatrix::Q4_0x8(_) => {
                        repack::act_aux_q8_0(q, 8, grow(&mut self.aux, blocks))
                    }
                    WeightMatrix::Q8_0x8(_) => {
                        repack::act_aux_q8_0(q, 128, grow(&mut self.aux, blocks))
                    }
                    _ => {}
                }
            }
        }
        Ok(())
    }
}

/// Number of work units of a `rows`-row matrix (see [`matmul_units`]).
pub fn matmul_unit_count(w: &WeightMatrix, rows: usize) -> usize {
    unit_count(rows, w.rows_per_group() > 1)
}

/// Work units of a `rows`-row matrix, repacked in 8-row groups or not (the
/// count depends on nothing else, so an executor can plan it once).
pub fn unit_count(rows: usize, repacked: bool) -> usize {
    if repacked {
        rows / GROUP
    } else {
        rows.div_ceil(ROWS_PER_UNIT)
    }
}

/// Where [`matmul_units`] writes: an `n × rows` row-major f32 matrix that
/// several threads fill at once, each through its own disjoint units.
#[derive(Clone, Copy, Debug)]
pub struct SharedOut {
    ptr: *mut f32,
    len: usize,
}

// SAFETY: a `SharedOut` is only a pointer and a length; `matmul_units`'s
// contract (disjoint units per thread) makes concurrent writes disjoint.
unsafe impl Send for SharedOut {}
// SAFETY: as above.
unsafe impl Sync for SharedOut {}

impl SharedOut {
    /// Wraps `out`; the borrow must outlive every use of the result.
    pub fn new(out: &mut [f32]) -> Self {
        SharedOut {
            ptr: out.as_mut_ptr(),
            len: out.len(),
        }
    }

    /// Elements of the wrapped slice.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the wrapped slice is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The elements `start..start + len` as a mutable slice (clamped to the
    /// wrapped slice).
    ///
    /// # Safety
    /// No other thread may touch these elements while the result lives, and
    /// the slice passed to [`SharedOut::new`] must still be borrowed.
    #[allow(clippy::mut_from_ref)]
    pub unsafe fn slice_mut(&self, start: usize, len: usize) -> &mut [f32] {
        let start = start.min(self.len);
        let len = len.min(self.len - start);
        // SAFETY: in bounds (clamped above); exclusive by the caller's contract.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.add(start), len) }
    }

    /// # Safety
    /// `i < len`, no other thread writes or reads element `i` meanwhile, and
    /// the slice passed to [`SharedOut::new`] is still borrowed.
    #[inline(always)]
    unsafe fn write(&self, i: usize, v: f32) {
        debug_assert!(i < self.len);
        // SAFETY: the caller's contract.
        unsafe { *self.ptr.add(i) = v };
    }
}

/// Computes the work units `units` of `out = x · Wᵀ` (`out` is `n × rows`),
/// after [`MatmulScratch::prepare`] quantized `x` for `w`. Shapes must have
/// been checked (as [`matmul`] does) and `units` must lie within
/// [`matmul_unit_count`].
///
/// # Safety
/// `out` must wrap a live `n × rows` slice, and no other thread may touch
/// the output elements of `units` meanwhile (threads working on disjoint
/// unit ranges of the same product is the intended use).
#[allow(clippy::too_many_arguments)]
pub unsafe fn matmul_units(
    ks: &KernelSet,
    w: &WeightMatrix,
    rows: usize,
    cols: usize,
    x: &[f32],
    n: usize,
    scratch: &MatmulScratch,
    out: SharedOut,
    units: std::ops::Range<usize>,
) {
    let bpr = cols / w.block_len();
    // SAFETY (all `out.write`s below): element `j * rows + r` with `r` a row
    // of a unit in `units`, so in bounds and owned by this caller.
    let row_units = |row_fn: &dyn Fn(usize, usize) -> f32| {
        for u in units.clone() {
            for r in u * ROWS_PER_UNIT..((u + 1) * ROWS_PER_UNIT).min(rows) {
                for j in 0..n {
                    unsafe { out.write(j * rows + r, row_fn(r, j)) };
                }
            }
        }
    };
    macro_rules! rows_q {
        ($wv:expr, $act:expr, $dot:expr, $dot4:expr) => {{
            let (wv, act) = ($wv, $act);
            for u in units.clone() {
                for r in u * ROWS_PER_UNIT..((u + 1) * ROWS_PER_UNIT).min(rows) {
                    let wr = &wv[r * bpr..(r + 1) * bpr];
                    let arow = |j: usize| &act[j * bpr..(j + 1) * bpr];
                    let mut j = 0;
                    while j + 4 <= n {
                        let res = $dot4(wr, [arow(j), arow(j + 1), arow(j + 2), arow(j + 3)]);
                        for (k, v) in res.into_iter().enumerate() {
                            unsafe { out.write((j + k) * rows + r, v) };
                        }
                        j += 4;
                    }
                    while j < n {
                        unsafe { out.write(j * rows + r, $dot(wr, arow(j))) };
                        j += 1;
                    }
                }
            }
        }};
    }
    macro_rules! groups {
        ($wv:expr, $act:expr, $kernel:expr) => {{
            let (wv, act, aux) = ($wv, $act, &scratch.aux[..n * bpr]);
            let mut res = [[0.0f32; GROUP]; COLS_PER_CALL];
            for g in units.clone() {
                let wg = &wv[g * bpr..(g + 1) * bpr];
                let mut j = 0;
                while j < n {
                    let c = (n - j).min(COLS_PER_CALL);
                    $kernel(
                        wg,
                        &act[j * bpr..(j + c) * bpr],
                        &aux[j * bpr..(j + c) * bpr],
                        &mut res[..c],
                    );
                    for (k, rr) in res[..c].iter().enumerate() {
                        for (i, &v) in rr.iter().enumerate() {
                            unsafe { out.write((j + k) * rows + g * GROUP + i, v) };
                        }
                    }
                    j += c;
                }
            }
        }};
    }
    match *w {
        WeightMatrix::F32(wv) => row_units(&|r, j| {
            (ks.dot_f32)(&wv[r * cols..(r + 1) * cols], &x[j * cols..(j + 1) * cols])
        }),
        WeightMatrix::F16(wv) => row_units(&|r, j| {
            (ks.dot_f16_f32)(&wv[r * cols..(r + 1) * cols], &x[j * cols..(j + 1) * cols])
        }),
        WeightMatrix::Q4_0(wv) => rows_q!(
            wv,
            &scratch.q8_0[..n * bpr],
            ks.vec_dot_q4_0_q8_0,
            ks.vec_dot_q4_0_q8_0_x4
        ),
        WeightMatrix::Q4_1(wv) => rows_q!(
            wv,
            &scratch.q8_1[..n * bpr],
            ks.vec_dot_q4_1_q8_1,
            ks.vec_dot_q4_1_q8_1_x4
        ),
        WeightMatrix::Q8_0(wv) => rows_q!(
            wv,
            &scratch.q8_0[..n * bpr],
            ks.vec_dot_q8_0_q8_0,
            ks.vec_dot_q8_0_q8_0_x4
        ),
        WeightMatrix::Q4_0x8(wv) => groups!(wv, &scratch.q8_0[..n * bpr], ks.gemm_q4_0_x8),
        WeightMatrix::Q4_1x8(wv) => groups!(wv, &scratch.q8_1[..n * bpr], ks.gemm_q4_1_x8),
        WeightMatrix::Q8_0x8(wv) => groups!(wv, &scratch.q8_0[..n * bpr], ks.gemm_q8_0_x8),
        // K-quants: the scalar reference dots of `kquant` (no SIMD twins yet).
        WeightMatrix::Q4K(wv) => rows_q!(
            wv,
            &scratch.q8_k[..n * bpr],
            kquant::vec_dot_q4_k_q8_k,
            |w, a: [&[BlockQ8K]; 4]| a.map(|y| kquant::vec_dot_q4_k_q8_k(w, y))
        ),
        WeightMatrix::Q5K(wv) => rows_q!(
            wv,
            &scratch.q8_k[..n * bpr],
            kquant::vec_dot_q5_k_q8_k,
            |w, a: [&[BlockQ8K]; 4]| a.map(|y| kquant::vec_dot_q5_k_q8_k(w, y))
        ),
        WeightMatrix::Q6K(wv) => rows_q!(
            wv,
            &scratch.q8_k[..n * bpr],
            kquant::vec_dot_q6_k_q8_k,
            |w, a: [&[BlockQ8K]; 4]| a.map(|y| kquant::vec_dot_q6_k_q8_k(w, y))
        ),
    }
}

/// Computes `out = x · Wᵀ`: `x` is `n × cols` row-major, `out` is `n × rows`.
///
/// Returns [`Error::Shape`] / [`Error::NotMultiple`] when the slices do not
/// match `rows`, `cols` and `n` (quantized weights need `cols % 32 == 0`,
/// repacked ones `rows % 8 == 0`).
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
    w.check(rows, cols)?;
    check_len("x.len() (n * cols)", n.saturating_mul(cols), x.len())?;
    check_len("out.len() (n * rows)", n.saturating_mul(rows), out.len())?;
    if n == 0 || rows == 0 {
        return Ok(());
    }
    if cols == 0 {
        out.fill(0.0);
        return Ok(());
    }
    scratch.prepare(ks, w, cols, x, n)?;
    let units = matmul_unit_count(w, rows);
    let shared = SharedOut::new(out);
    let scratch = &*scratch;
    // SAFETY: shapes are checked above, `out` stays borrowed for the whole
    // call, and each unit range below is handed to exactly one task.
    let run = |range: std::ops::Range<usize>| unsafe {
        matmul_units(ks, w, rows, cols, x, n, scratch, shared, range)
    };
    if rows.saturating_mul(cols).saturating_mul(n) < SEQUENTIAL_WORK_LIMIT {
        run(0..units);
    } else {
        // A few units per task: enough tasks for balance, little overhead.
        let per_task = (units / (4 * rayon::current_num_threads()).max(1)).clamp(1, 16);
        (0..units.div_ceil(per_task))
            .into_par_iter()
            .for_each(|t| run(t * per_task..((t + 1) * per_task).min(units)));
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
    let blocks_per_row = dst.len() / (x.len() / cols).max(1);
    if blocks_per_row == 0 {
        return dst;
    }
    dst.chunks_exact_mut(blocks_per_row)
        .zip(x.chunks_exact(cols))
        .for_each(|(q, xr)| quantize(xr, q));
    dst
}
