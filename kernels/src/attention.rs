//! Attention over an f16 KV cache: for each (query row, head), scores,
//! softmax and the weighted sum of values, with llama.cpp's roundings.
//!
//! The visible KV slots of a row are given explicitly (a causal prefix plus
//! extra slots), which covers plain decoding, chunked prefill and tree
//! verification (a draft token sees the prefix and its tree ancestors).
//!
//! **Batch invariance.** A (row, head) result depends only on its query, its
//! visible slots (in the given order) and the cache contents, whatever the
//! number of rows or the thread split.

use crate::dispatch::KernelSet;
use crate::matmul::SharedOut;
use crate::{check_len, Error};
use half::f16;
use rayon::prelude::*;

/// Attention head geometry.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AttentionShape {
    /// Query heads.
    pub n_heads: usize,
    /// Key/value heads (grouped-query attention: `n_heads % n_kv_heads == 0`).
    pub n_kv_heads: usize,
    /// Values per head.
    pub head_dim: usize,
    /// Score scale, usually `1 / sqrt(head_dim)`.
    pub scale: f32,
}

/// The KV slots one query row attends to: all of `0..prefix_len`, then each
/// slot in `extra` (ascending, each `< capacity`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RowVisibility<'a> {
    /// Slots `0..prefix_len` are visible.
    pub prefix_len: usize,
    /// Additional visible slots beyond the prefix (e.g. tree ancestors).
    pub extra: &'a [u32],
}

/// Below this many score·value multiply-adds everything runs on the calling thread.
const SEQUENTIAL_WORK_LIMIT: usize = 32 * 1024;

/// One attention call's operands, checked by [`AttentionJob::new`]; its
/// work is `tasks()` independent (query row, head) pairs that any number of
/// threads can split with [`AttentionJob::run_tasks`].
#[derive(Clone, Copy, Debug)]
pub struct AttentionJob<'a> {
    ks: &'a KernelSet,
    shape: AttentionShape,
    q: &'a [f32],
    k_cache: &'a [f16],
    v_cache: &'a [f16],
    rows: &'a [RowVisibility<'a>],
    /// Score·value multiply-adds of the whole call.
    work: usize,
}

impl<'a> AttentionJob<'a> {
    /// Checks the operands: `q` is `n_rows × n_heads × head_dim` (`n_rows =
    /// rows.len()`); `k_cache` and `v_cache` are `capacity × n_kv_heads ×
    /// head_dim` f16. Head `h` reads KV head `h / (n_heads / n_kv_heads)`.
    ///
    /// Returns an error when the slices do not match the shape or a visible
    /// slot is beyond the cache capacity.
    pub fn new(
        ks: &'a KernelSet,
        shape: &AttentionShape,
        q: &'a [f32],
        k_cache: &'a [f16],
        v_cache: &'a [f16],
        rows: &'a [RowVisibility<'a>],
    ) -> Result<Self, Error> {
        let &AttentionShape {
            n_heads,
            n_kv_heads,
            head_dim,
            ..
        } = shape;
        if n_kv_heads == 0 || n_heads % n_kv_heads != 0 {
            return Err(Error::NotMultiple {
                what: "n_heads",
                multiple_of: n_kv_heads,
                got: n_heads,
            });
        }
        let q_len = rows.len().saturating_mul(n_heads).saturating_mul(head_dim);
        check_len("q.len() (n_rows * n_heads * head_dim)", q_len, q.len())?;
        check_len(
            "v_cache.len() (== k_cache.len())",
            k_cache.len(),
            v_cache.len(),
        )?;
        let kv_stride = n_kv_heads * head_dim;
        if kv_stride == 0 || !k_cache.len().is_multiple_of(kv_stride) {
            return Err(Error::NotMultiple {
                what: "k_cache.len()",
                multiple_of: kv_stride,
                got: k_cache.len(),
            });
        }
        let capacity = k_cache.len() / kv_stride;
        let mut work = 0usize;
        for vis in rows {
            if vis.prefix_len > capacity {
                return Err(Error::OutOfRange {
                    what: "prefix_len",
                    index: vis.prefix_len,
                    limit: capacity + 1,
                });
            }
            if let Some(&bad) = vis.extra.iter().find(|&&t| t as usize >= capacity) {
                return Err(Error::OutOfRange {
                    what: "extra slot",
                    index: bad as usize,
                    limit: capacity,
                });
            }
            work = work.saturating_add(vis.prefix_len + vis.extra.len());
        }
        Ok(AttentionJob {
            ks,
            shape: *shape,
            q,
            k_cache,
            v_cache,
            rows,
            work: work.saturating_mul(n_heads * head_dim),
        })
    }

    /// Independent tasks: one head over a run of up to [`ROWS_PER_TASK`]
    /// query rows (see [`AttentionJob::task_count`]).
    pub fn tasks(&self) -> usize {
        Self::task_count(self.rows.len(), self.shape.n_heads)
    }

    /// Tasks of a call over `n_rows` rows and `n_heads` heads.
    pub fn task_count(n_rows: usize, n_heads: usize) -> usize {
        n_rows.div_ceil(ROWS_PER_TASK) * n_heads
    }

    /// Elements of the output (`n_rows × n_heads × head_dim`).
    pub fn out_len(&self) -> usize {
        self.q.len()
    }

    /// Computes tasks `tasks`: task `i` is head `i % n_heads` over rows
    /// `ROWS_PER_TASK · (i / n_heads)..` (consecutive tasks use nearby KV heads).
    ///
    /// # Safety
    /// `out` must wrap a live slice of [`AttentionJob::out_len`] elements and
    /// no other thread may touch the outputs of these tasks meanwhile;
    /// `tasks.end <= self.tasks()`.
    pub unsafe fn run_tasks(&self, out: SharedOut, tasks: std::ops::Range<usize>) {
        let AttentionShape {
            n_heads,
            n_kv_heads,
            head_dim,
            ..
        } = self.shape;
        let group = n_heads / n_kv_heads;
        let n_rows = self.rows.len();
        for idx in tasks {
            let head = idx % n_heads;
            let first = (idx / n_heads) * ROWS_PER_TASK;
            let rows = first..(first + ROWS_PER_TASK).min(n_rows);
            let mut dsts: [&mut [f32]; ROWS_PER_TASK] = Default::default();
            for (d, r) in dsts.iter_mut().zip(rows.clone()) {
                let at = (r * n_heads + head) * head_dim;
                // SAFETY: the caller owns this task's outputs (row r, this
                // head), which lie inside `out`.
                *d = unsafe { out.slice_mut(at, head_dim) };
            }
            attend_rows(self, head, (head / group) * head_dim, rows, &mut dsts);
        }
    }
}

/// Query rows one attention task takes together: their scores against the
/// shared visible prefix convert each key once for all of them.
pub const ROWS_PER_TASK: usize = 4;

/// Computes attention for `n_rows` query rows, on rayon's threads when the
/// work is large enough (see [`AttentionJob`] for the shapes).
///
/// Returns an error when the slices do not match the shape or a visible
/// slot is beyond the cache capacity.
#[allow(clippy::too_many_arguments)]
pub fn attention(
    ks: &KernelSet,
    shape: &AttentionShape,
    q: &[f32],
    n_rows: usize,
    k_cache: &[f16],
    v_cache: &[f16],
    rows: &[RowVisibility],
    out: &mut [f32],
) -> Result<(), Error> {
    check_len("rows.len() (n_rows)", n_rows, rows.len())?;
    let job = AttentionJob::new(ks, shape, q, k_cache, v_cache, rows)?;
    check_len(
        "out.len() (n_rows * n_heads * head_dim)",
        job.out_len(),
        out.len(),
    )?;
    let tasks = job.tasks();
    let shared = SharedOut::new(out);
    // SAFETY: `out` is borrowed for the whole call and every task index is
    // handed to exactly one closure call.
    let run = |t: usize| unsafe { job.run_tasks(shared, t..t + 1) };
    if job.work >= SEQUENTIAL_WORK_LIMIT {
        (0..tasks).into_par_iter().for_each(run);
    } else {
        (0..tasks).for_each(run);
    }
    Ok(())
}

/// Lanes of llama.cpp's f16 `tinyBLAS` (512-bit vectors of f32).
const LANES: usize = 16;

/// One head over a few query rows, each bitwise as llama.cpp's batched
/// non-flash-attention CPU path with an f16 cache computes it (so
/// conformance holds):
///
/// * scores: the query rounded to f16, `k · q` in tinyBLAS's 16-lane order
///   ([`KernelSet::dot_f16_f32`]), times `scale`; over the prefix that all
///   the rows see, [`KernelSet::attn_scores_f16_multi`] does every row at once;
/// * softmax: `ggml_v_expf(s - max)`; the exps are summed per 16-slot chunk
///   of the KV cache (slot `t` in chunk `t / 16`, lane `t % 16`, invisible
///   slots contributing exact zeros as llama.cpp's masked ones do) with
///   GCC's `_mm512_reduce_add_ps` order, chunk sums added in f64; the
///   probabilities `e · (1/sum)` are rounded to f16;
/// * output: tinyBLAS again over the slots, so slot `t` is FMA'd into lane
///   `t % 16` ([`KernelSet::attn_values_f16`]), and the 16 lanes are summed
///   per output value at the end.
///
/// A row's result does not depend on the other rows of its task. The
/// visible slots must be ascending (they are: a prefix, then `extra`). The
/// per-thread buffers grow to the rows' visible length; no score matrix
/// over all rows is materialized.
fn attend_rows(
    job: &AttentionJob,
    head: usize,
    kv_off: usize,
    rows: std::ops::Range<usize>,
    dsts: &mut [&mut [f32]; ROWS_PER_TASK],
) {
    let ks = job.ks;
    let AttentionShape {
        n_heads,
        n_kv_heads,
        head_dim,
        scale,
    } = job.shape;
    let kv_stride = n_kv_heads * head_dim;
    let vis = &job.rows[rows.clone()];
    let m = vis.len();
    let common = vis.iter().map(|v| v.prefix_len).min().unwrap_or(0);
    let longest = vis
        .iter()
        .map(|v| v.prefix_len + v.extra.len())
        .max()
        .unwrap_or(0);
    let key_of = |t: usize| -> std::ops::Range<usize> {
        let base = t * kv_stride + kv_off;
        base..base + head_dim
    };
    SCRATCH.with(|cell| {
        let mut scratch = cell.borrow_mut();
        let Scratch { q16, scores, lanes } = &mut *scratch;
        q16.clear();
        for r in rows.clone() {
            let q = &job.q[(r * n_heads + head) * head_dim..][..head_dim];
            q16.extend(q.iter().map(|&v| f16::from_f32(v).to_f32()));
        }
        scores.clear();
        scores.resize(m * longest, 0.0);
        if common > 0 {
            (ks.attn_scores_f16_multi)(
                q16,
                m,
                &job.k_cache[kv_off..],
                kv_stride,
                scale,
                common,
                scores,
                longest,
            );
        }
        for (j, (v, dst)) in vis.iter().zip(dsts.iter_mut()).enumerate() {
            let q = &q16[j * head_dim..(j + 1) * head_dim];
            let n = v.prefix_len + v.extra.len();
            let sc = &mut scores[j * longest..j * longest + n];
            if v.prefix_len > common {
                (ks.attn_scores_f16)(
                    q,
                    &job.k_cache[common * kv_stride + kv_off..],
                    kv_stride,
                    scale,
                    &mut sc[common..v.prefix_len],
                );
            }
            for (s, &t) in sc[v.prefix_len..].iter_mut().zip(v.extra) {
                *s = (ks.dot_f16_f32)(&job.k_cache[key_of(t as usize)], q) * scale;
            }
            softmax_and_values(ks, v, sc, job.v_cache, kv_stride, kv_off, lanes, dst);
        }
    });
}

/// The rest of one row after its scores: softmax, then the value sum into `acc`.
#[allow(clippy::too_many_arguments)]
fn softmax_and_values(
    ks: &KernelSet,
    vis: &RowVisibility,
    scores: &mut [f32],
    v_cache: &[f16],
    kv_stride: usize,
    kv_off: usize,
    lanes: &mut Vec<f32>,
    acc: &mut [f32],
) {
    acc.fill(0.0);
    if scores.is_empty() {
        return;
    }
    let head_dim = acc.len();
    let prefix = vis.prefix_len;
    let max = scores.iter().fold(f32::NEG_INFINITY, |m, &s| m.max(s));
    for s in scores.iter_mut() {
        *s -= max;
    }
    (ks.exp_f32)(scores);
    // Whole 16-slot chunks of the prefix first (their lanes are exactly
    // their slots), then the slots after them chunk by chunk.
    let mut sum = 0.0f64;
    let full = prefix / LANES;
    for chunk in scores[..full * LANES].chunks_exact(LANES) {
        let mut c = [0.0f32; LANES];
        c.copy_from_slice(chunk);
        sum += crate::scalar::hsum16(&c) as f64;
    }
    let rest = (full * LANES..prefix).chain(vis.extra.iter().map(|&t| t as usize));
    let mut chunk = [0.0f32; LANES];
    let mut chunk_id = usize::MAX;
    for (&e, t) in scores[full * LANES..].iter().zip(rest) {
        if t / LANES != chunk_id {
            if chunk_id != usize::MAX {
                sum += crate::scalar::hsum16(&chunk) as f64;
            }
            chunk = [0.0; LANES];
            chunk_id = t / LANES;
        }
        chunk[t % LANES] = e;
    }
    if chunk_id != usize::MAX {
        sum += crate::scalar::hsum16(&chunk) as f64;
    }
    (ks.scale_round_f16)((1.0 / sum) as f32, scores);
    lanes.clear();
    lanes.resize(LANES * head_dim, 0.0);
    if prefix > 0 {
        (ks.attn_values_f16)(&scores[..prefix], &v_cache[kv_off..], kv_stride, 0, lanes);
    }
    for (&p, &t) in scores[prefix..].iter().zip(vis.extra) {
        let lane = t as usize % LANES;
        let base = t as usize * kv_stride + kv_off;
        (ks.axpy_f16_f32)(
            p,
            &v_cache[base..base + head_dim],
            &mut lanes[lane * head_dim..(lane + 1) * head_dim],
        );
    }
    // `hsum16` over the 16 lanes of every output value, written as
    // element-wise adds of whole lane rows (the same tree per value) so
    // it vectorizes across `head_dim`.
    let (lo, hi) = lanes.split_at_mut(8 * head_dim);
    for (l, h) in lo.iter_mut().zip(hi.iter()) {
        *l += *h; // t[k] = a[k] + a[k + 8]
    }
    let (t0, t1) = lo.split_at_mut(4 * head_dim);
    for (l, h) in t0.iter_mut().zip(t1.iter()) {
        *l += *h; // u[k] = t[k] + t[k + 4]
    }
    let row = |k: usize| &t0[k * head_dim..(k + 1) * head_dim];
    for (d, o) in acc.iter_mut().enumerate() {
        *o = (row(0)[d] + row(2)[d]) + (row(1)[d] + row(3)[d]);
    }
}

/// Per-thread buffers of [`attend_rows`].
#[derive(Default)]
struct Scratch {
    /// The task's queries rounded to f16 (held as f32), row after row.
    q16: Vec<f32>,
    /// Scores, then exps, of the visible slots, one stretch per row.
    scores: Vec<f32>,
    /// `16 × head_dim` per-lane partial outputs.
    lanes: Vec<f32>,
}

thread_local! {
    /// Per-thread buffers, so attention allocates only when a context grows
    /// past what the thread has seen.
    static SCRATCH: std::cell::RefCell<Scratch> = std::cell::RefCell::new(Scratch::default());
}
