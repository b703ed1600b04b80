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

    /// Independent (row, head) tasks: `n_rows × n_heads`.
    pub fn tasks(&self) -> usize {
        self.rows.len() * self.shape.n_heads
    }

    /// Elements of the output (`n_rows × n_heads × head_dim`).
    pub fn out_len(&self) -> usize {
        self.q.len()
    }

    /// Computes tasks `tasks` (row `i / n_heads`, head `i % n_heads`).
    ///
    /// # Safety
    /// `out` must wrap a live slice of [`AttentionJob::out_len`] elements and
    /// no other thread may touch the `head_dim` outputs of these tasks
    /// meanwhile; `tasks.end <= self.tasks()`.
    pub unsafe fn run_tasks(&self, out: SharedOut, tasks: std::ops::Range<usize>) {
        let AttentionShape {
            n_heads,
            n_kv_heads,
            head_dim,
            scale,
        } = self.shape;
        let kv_stride = n_kv_heads * head_dim;
        let group = n_heads / n_kv_heads;
        for idx in tasks {
            let row = idx / n_heads;
            let head = idx % n_heads;
            let kv_off = (head / group) * head_dim;
            let qv = &self.q[idx * head_dim..(idx + 1) * head_dim];
            // SAFETY: the caller owns this task's outputs, which lie inside `out`.
            let dst = unsafe { out.slice_mut(idx * head_dim, head_dim) };
            attend_one(
                self.ks,
                qv,
                scale,
                &self.rows[row],
                self.k_cache,
                self.v_cache,
                kv_stride,
                kv_off,
                dst,
            );
        }
    }
}

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

/// One (row, head), bitwise as llama.cpp's batched non-flash-attention CPU
/// path with an f16 cache computes it (so conformance holds):
///
/// * scores: the query rounded to f16, `k · q` in tinyBLAS's 16-lane order
///   ([`KernelSet::dot_f16_f32`]), times `scale`;
/// * softmax: `ggml_v_expf(s - max)`; the exps are summed per 16-slot chunk
///   of the KV cache (slot `t` in chunk `t / 16`, lane `t % 16`, invisible
///   slots contributing exact zeros as llama.cpp's masked ones do) with
///   GCC's `_mm512_reduce_add_ps` order, chunk sums added in f64; the
///   probabilities `e · (1/sum)` are rounded to f16;
/// * output: tinyBLAS again over the slots, so slot `t` is FMA'd into lane
///   `t % 16` (one [`KernelSet::axpy_f16_f32`] into that lane's row), and
///   the 16 lanes are summed per output value at the end.
///
/// The visible slots must be ascending (they are: a prefix, then `extra`).
/// The per-thread buffers grow to the row's visible length; no score matrix
/// over all rows is materialized.
#[allow(clippy::too_many_arguments)]
fn attend_one(
    ks: &KernelSet,
    q: &[f32],
    scale: f32,
    vis: &RowVisibility,
    k_cache: &[f16],
    v_cache: &[f16],
    kv_stride: usize,
    kv_off: usize,
    acc: &mut [f32],
) {
    acc.fill(0.0);
    let head_dim = acc.len();
    let prefix = vis.prefix_len;
    let slots = (0..prefix).chain(vis.extra.iter().map(|&t| t as usize));
    fn row(cache: &[f16], t: usize, kv_stride: usize, kv_off: usize, head_dim: usize) -> &[f16] {
        let base = t * kv_stride + kv_off;
        &cache[base..base + head_dim]
    }
    SCRATCH.with(|cell| {
        let mut scratch = cell.borrow_mut();
        let Scratch { q16, scores, lanes } = &mut *scratch;
        q16.clear();
        q16.extend(q.iter().map(|&v| f16::from_f32(v).to_f32()));
        scores.clear();
        scores.resize(prefix, 0.0);
        if prefix > 0 {
            (ks.attn_scores_f16)(q16, &k_cache[kv_off..], kv_stride, scale, scores);
        }
        for &t in vis.extra {
            scores.push((ks.dot_f16_f32)(row(k_cache, t as usize, kv_stride, kv_off, head_dim), q16) * scale);
        }
        if scores.is_empty() {
            return;
        }
        let max = scores.iter().fold(f32::NEG_INFINITY, |m, &s| m.max(s));
        for s in scores.iter_mut() {
            *s -= max;
        }
        (ks.exp_f32)(scores);
        let mut sum = 0.0f64;
        let mut chunk = [0.0f32; LANES];
        let mut chunk_id = usize::MAX;
        for (&e, t) in scores.iter().zip(slots.clone()) {
            if t / LANES != chunk_id {
                if chunk_id != usize::MAX {
                    sum += crate::scalar::hsum16(&chunk) as f64;
                }
                chunk = [0.0; LANES];
                chunk_id = t / LANES;
            }
            chunk[t % LANES] = e;
        }
        sum += crate::scalar::hsum16(&chunk) as f64;
        (ks.scale_round_f16)((1.0 / sum) as f32, scores);
        lanes.clear();
        lanes.resize(LANES * head_dim, 0.0);
        if prefix > 0 {
            (ks.attn_values_f16)(&scores[..prefix], &v_cache[kv_off..], kv_stride, 0, lanes);
        }
        for (&p, &t) in scores[prefix..].iter().zip(vis.extra) {
            let lane = t as usize % LANES;
            (ks.axpy_f16_f32)(
                p,
                row(v_cache, t as usize, kv_stride, kv_off, head_dim),
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
    });
}

/// Per-thread buffers of [`attend_one`].
#[derive(Default)]
struct Scratch {
    /// The query rounded to f16 (held as f32).
    q16: Vec<f32>,
    /// Scores, then exps, of the visible slots.
    scores: Vec<f32>,
    /// `16 × head_dim` per-lane partial outputs.
    lanes: Vec<f32>,
}

thread_local! {
    /// Per-thread buffers, so attention allocates only when a context grows
    /// past what the thread has seen.
    static SCRATCH: std::cell::RefCell<Scratch> = std::cell::RefCell::new(Scratch::default());
}
