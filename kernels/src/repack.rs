//! Weights repacked at load time into groups of eight interleaved rows, the
//! layout of the fast GEMV/GEMM kernels.
//!
//! Why: a plain row-major quantized row is a chain of blocks whose dot
//! product, in llama.cpp's order, is one FMA per block into the same eight
//! accumulators, so one row at a time is bound by FMA latency (about 17 GB/s
//! per core here, a third of what memory delivers). Eight rows side by side
//! give eight independent chains, and their block headers and quants sit in
//! a few contiguous cache lines, so 512-bit loads and one `vcvtph2ps` per
//! eight headers feed them.
//!
//! Layout: row group `g` (rows `8g..8g+8`) is `blocks_per_row` consecutive
//! `*x8` blocks; `*x8` block `i` holds block `i` of each of the eight rows,
//! headers first, then the quants of row 0, row 1, … The total size equals the
//! original tensor's. Values are unchanged, except that [`BlockQ8_0x8`]
//! stores its quants offset by +128 as `u8` (the kernels multiply unsigned
//! weights by signed activations and subtract `128 · Σ activations`, which
//! gives the same integer sums exactly).
//!
//! The kernels return, per row, bitwise what the row-major dot products of
//! [`crate::scalar`] return: same lanes, same FMAs, same horizontal sum. The
//! scalar twins here rebuild the row-major blocks and call those dots.

use crate::quant::{BlockQ4_0, BlockQ4_1, BlockQ8_0, BlockQ8_1, QK};
use crate::scalar;
use crate::{check_len, Error};
use bytemuck::{Pod, Zeroable};
use half::f16;

/// Rows per interleaved group.
pub const GROUP: usize = 8;

/// Block `i` of eight Q4_0 rows.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Pod, Zeroable)]
pub struct BlockQ4_0x8 {
    /// The eight rows' scales.
    pub d: [f16; GROUP],
    /// The eight rows' nibbles (each in [`BlockQ4_0::qs`] layout).
    pub qs: [[u8; QK / 2]; GROUP],
}

/// Block `i` of eight Q4_1 rows.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Pod, Zeroable)]
pub struct BlockQ4_1x8 {
    /// `[d, m]` of each row, row after row (one 32-byte load converts all).
    pub dm: [[f16; 2]; GROUP],
    /// The eight rows' nibbles (each in [`BlockQ4_1::qs`] layout).
    pub qs: [[u8; QK / 2]; GROUP],
}

/// Block `i` of eight Q8_0 rows, quants stored as `q + 128`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Pod, Zeroable)]
pub struct BlockQ8_0x8 {
    /// The eight rows' scales.
    pub d: [f16; GROUP],
    /// The eight rows' quants, each offset by +128 (`q as u8 ^ 0x80`).
    pub qs: [[u8; QK]; GROUP],
}

impl Default for BlockQ8_0x8 {
    fn default() -> Self {
        Self::zeroed()
    }
}

const _: () = assert!(core::mem::size_of::<BlockQ4_0x8>() == 8 * 18);
const _: () = assert!(core::mem::size_of::<BlockQ4_1x8>() == 8 * 20);
const _: () = assert!(core::mem::size_of::<BlockQ8_0x8>() == 8 * 34);
const _: () = assert!(core::mem::offset_of!(BlockQ4_1x8, qs) == 32);
const _: () = assert!(core::mem::offset_of!(BlockQ8_0x8, qs) == 16);
const _: () = assert!(core::mem::offset_of!(BlockQ4_0x8, qs) == 16);

/// What the kernels need of one activation block besides its quants, in the
/// form they use it: the scales as f32 (one broadcast load each) and, for
/// weights stored unsigned, the correction `-offset · Σ` of each four-quant
/// group, which starts the integer accumulation.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Pod, Zeroable)]
pub struct ActAux {
    /// The block's scale `d`.
    pub d: f32,
    /// Q8_1's `s` (`d · Σ q`), 0 for Q8_0.
    pub s: f32,
    /// `-offset · (q[4j] + … + q[4j+3])` for lane `j` (offset 8 for Q4_0
    /// weights, 128 for Q8_0; unused for Q4_1).
    pub bias: [i32; 8],
}

/// Fills `aux` for Q8_1 activation blocks (scales only).
pub fn act_aux_q8_1(act: &[BlockQ8_1], aux: &mut [ActAux]) {
    for (a, b) in aux.iter_mut().zip(act) {
        *a = ActAux {
            d: b.d.to_f32(),
            s: b.s.to_f32(),
            bias: [0; 8],
        };
    }
}

/// Fills `aux` for Q8_0 activation blocks, with the group-sum correction for
/// weights stored as `q + offset`.
pub fn act_aux_q8_0(act: &[BlockQ8_0], offset: i32, aux: &mut [ActAux]) {
    for (a, b) in aux.iter_mut().zip(act) {
        let mut bias = [0i32; 8];
        for (j, g) in bias.iter_mut().enumerate() {
            let sum: i32 = b.qs[4 * j..4 * j + 4].iter().map(|&q| q as i32).sum();
            *g = -offset * sum;
        }
        *a = ActAux {
            d: b.d.to_f32(),
            s: 0.0,
            bias,
        };
    }
}

fn check_repack(rows: usize, cols: usize, blocks: usize, out_len: usize) -> Result<usize, Error> {
    if !rows.is_multiple_of(GROUP) {
        return Err(Error::NotMultiple {
            what: "rows (for 8-row interleaving)",
            multiple_of: GROUP,
            got: rows,
        });
    }
    if !cols.is_multiple_of(QK) {
        return Err(Error::NotMultiple {
            what: "cols",
            multiple_of: QK,
            got: cols,
        });
    }
    let bpr = cols / QK;
    check_len("weight blocks (rows * cols / 32)", rows * bpr, blocks)?;
    check_len(
        "repacked blocks (rows / 8 * cols / 32)",
        rows / GROUP * bpr,
        out_len,
    )?;
    Ok(bpr)
}

/// The shared repacking loop: `put(dst, r, src)` stores row `r`'s block
/// `src` into group block `dst`.
fn repack_with<S, D>(
    w: &[S],
    rows: usize,
    cols: usize,
    out: &mut [D],
    put: impl Fn(&mut D, usize, &S),
) -> Result<(), Error> {
    let bpr = check_repack(rows, cols, w.len(), out.len())?;
    if bpr == 0 {
        return Ok(());
    }
    for (g, group) in out.chunks_exact_mut(bpr).enumerate() {
        for (i, dst) in group.iter_mut().enumerate() {
            for r in 0..GROUP {
                put(dst, r, &w[(g * GROUP + r) * bpr + i]);
            }
        }
    }
    Ok(())
}

/// Repacks a row-major Q4_0 matrix (`rows × cols`) into row groups.
pub fn repack_q4_0(
    w: &[BlockQ4_0],
    rows: usize,
    cols: usize,
    out: &mut [BlockQ4_0x8],
) -> Result<(), Error> {
    repack_with(w, rows, cols, out, |dst: &mut BlockQ4_0x8, r, src| {
        dst.d[r] = src.d;
        dst.qs[r] = src.qs;
    })
}

/// Repacks a row-major Q4_1 matrix (`rows × cols`) into row groups.
pub fn repack_q4_1(
    w: &[BlockQ4_1],
    rows: usize,
    cols: usize,
    out: &mut [BlockQ4_1x8],
) -> Result<(), Error> {
    repack_with(w, rows, cols, out, |dst: &mut BlockQ4_1x8, r, src| {
        dst.dm[r] = [src.d, src.m];
        dst.qs[r] = src.qs;
    })
}

/// Repacks a row-major Q8_0 matrix (`rows × cols`) into row groups.
pub fn repack_q8_0(
    w: &[BlockQ8_0],
    rows: usize,
    cols: usize,
    out: &mut [BlockQ8_0x8],
) -> Result<(), Error> {
    repack_with(w, rows, cols, out, |dst: &mut BlockQ8_0x8, r, src| {
        dst.d[r] = src.d;
        dst.qs[r] = src.qs.map(|q| (q as u8) ^ 0x80);
    })
}

/// Row `r` (0..8) of a Q4_0 row group, as row-major blocks.
pub fn unpack_row_q4_0(group: &[BlockQ4_0x8], r: usize) -> impl Iterator<Item = BlockQ4_0> + '_ {
    group.iter().map(move |b| BlockQ4_0 {
        d: b.d[r],
        qs: b.qs[r],
    })
}

/// Row `r` (0..8) of a Q4_1 row group, as row-major blocks.
pub fn unpack_row_q4_1(group: &[BlockQ4_1x8], r: usize) -> impl Iterator<Item = BlockQ4_1> + '_ {
    group.iter().map(move |b| BlockQ4_1 {
        d: b.dm[r][0],
        m: b.dm[r][1],
        qs: b.qs[r],
    })
}

/// Row `r` (0..8) of a Q8_0 row group, as row-major blocks.
pub fn unpack_row_q8_0(group: &[BlockQ8_0x8], r: usize) -> impl Iterator<Item = BlockQ8_0> + '_ {
    group.iter().map(move |b| BlockQ8_0 {
        d: b.d[r],
        qs: b.qs[r].map(|q| (q ^ 0x80) as i8),
    })
}

/// Signature of a row-group GEMM kernel: one row group (`blocks_per_row`
/// `*x8` blocks) against `out.len()` activation rows of `blocks_per_row`
/// blocks each (`act` and `aux` back to back, row after row); `out[j][r]` is
/// the dot product of group row `r` with activation row `j`.
pub type GroupGemm<W, A> = fn(w: &[W], act: &[A], aux: &[ActAux], out: &mut [[f32; GROUP]]);

/// Checks a [`GroupGemm`] call's slice lengths; returns `blocks_per_row`.
#[track_caller]
pub(crate) fn check_group_gemm<W, A>(
    w: &[W],
    act: &[A],
    aux: &[ActAux],
    out: &[[f32; GROUP]],
) -> usize {
    let bpr = w.len();
    assert_eq!(act.len(), bpr * out.len(), "group gemm: activation blocks");
    assert_eq!(aux.len(), act.len(), "group gemm: activation aux");
    bpr
}

/// Scalar twin of the Q4_0 row-group kernels (per row and activation row,
/// [`scalar::scalar_vec_dot_q4_0_q8_0`]'s operations).
pub fn scalar_gemm_q4_0_x8(
    w: &[BlockQ4_0x8],
    act: &[BlockQ8_0],
    aux: &[ActAux],
    out: &mut [[f32; GROUP]],
) {
    let bpr = check_group_gemm(w, act, aux, out);
    for (j, o) in out.iter_mut().enumerate() {
        let a = &act[j * bpr..(j + 1) * bpr];
        for (r, res) in o.iter_mut().enumerate() {
            let mut acc = [0.0f32; 8];
            for (bx, by) in w.iter().zip(a) {
                let lanes = scalar::block_lanes(|e| scalar::nibble(&bx.qs[r], e) - 8, &by.qs);
                scalar::fma_lanes(&mut acc, bx.d[r].to_f32() * by.d.to_f32(), &lanes);
            }
            *res = scalar::hsum8(&acc);
        }
    }
}

/// Scalar twin of the Q4_1 row-group kernels (per row and activation row,
/// [`scalar::scalar_vec_dot_q4_1_q8_1`]'s operations).
pub fn scalar_gemm_q4_1_x8(
    w: &[BlockQ4_1x8],
    act: &[BlockQ8_1],
    aux: &[ActAux],
    out: &mut [[f32; GROUP]],
) {
    let bpr = check_group_gemm(w, act, aux, out);
    for (j, o) in out.iter_mut().enumerate() {
        let a = &act[j * bpr..(j + 1) * bpr];
        for (r, res) in o.iter_mut().enumerate() {
            let mut acc = [0.0f32; 8];
            let mut summs = 0.0f32;
            for (bx, by) in w.iter().zip(a) {
                let [d, m] = bx.dm[r];
                summs = m.to_f32().mul_add(by.s.to_f32(), summs);
                let lanes = scalar::block_lanes(|e| scalar::nibble(&bx.qs[r], e), &by.qs);
                scalar::fma_lanes(&mut acc, d.to_f32() * by.d.to_f32(), &lanes);
            }
            *res = scalar::hsum8(&acc) + summs;
        }
    }
}

/// Scalar twin of the Q8_0 row-group kernels (per row and activation row,
/// [`scalar::scalar_vec_dot_q8_0_q8_0`]'s operations).
pub fn scalar_gemm_q8_0_x8(
    w: &[BlockQ8_0x8],
    act: &[BlockQ8_0],
    aux: &[ActAux],
    out: &mut [[f32; GROUP]],
) {
    let bpr = check_group_gemm(w, act, aux, out);
    for (j, o) in out.iter_mut().enumerate() {
        let a = &act[j * bpr..(j + 1) * bpr];
        for (r, res) in o.iter_mut().enumerate() {
            let mut acc = [0.0f32; 8];
            for (bx, by) in w.iter().zip(a) {
                let lanes = scalar::block_lanes(|e| ((bx.qs[r][e] ^ 0x80) as i8) as i32, &by.qs);
                scalar::fma_lanes(&mut acc, bx.d[r].to_f32() * by.d.to_f32(), &lanes);
            }
            *res = scalar::hsum8(&acc);
        }
    }
}
