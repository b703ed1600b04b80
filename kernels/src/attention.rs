//! Attention over an f16 KV cache: for each (query row, head), scores,
//! softmax and the weighted sum of values, with llama.cpp's roundings.
//!
//! The visible KV slots of a row are given explicitly (a causal prefix plus
//! extra slots), which covers plain decoding, chunked prefill and tree
//! verification (a draft token sees the prefix and its tree ancestors).
//!
//! **Key layout.** The K cache is blocked by [`KEY_BLOCK`] slots: a block
//! holds, for each of the `kv_dim` columns, that column of its 16 slots
//! side by side ([`key_index`]). A score kernel then loads one column of 16
//! slots as one vector and runs the 16-lane dot of every slot in a
//! register lane, so the keys are converted once per block for all the
//! queries of a task and no horizontal reduction is needed. The V cache
//! keeps one row per slot.
//!
//! **Batch invariance.** A (row, head) result depends only on its query, its
//! visible slots (in the given order) and the cache contents, whatever the
//! number of rows or the thread split.

use crate::dispatch::KernelSet;
use crate::matmul::SharedOut;
use crate::{check_len, Error};
use half::f16;
use half::slice::HalfFloatSliceExt;
use rayon::prelude::*;

/// Slots per block of the K cache layout (see the module docs).
pub const KEY_BLOCK: usize = 16;

/// Index of column `col` (`kv_head · head_dim + d`) of slot `slot` in a K
/// cache with `kv_dim` columns per slot.
#[inline(always)]
pub fn key_index(slot: usize, col: usize, kv_dim: usize) -> usize {
    (slot / KEY_BLOCK) * KEY_BLOCK * kv_dim + col * KEY_BLOCK + slot % KEY_BLOCK
}

/// Values a K cache of `capacity` slots holds: whole blocks only.
pub fn key_cache_len(capacity: usize, kv_dim: usize) -> usize {
    capacity
        .div_ceil(KEY_BLOCK)
        .saturating_mul(KEY_BLOCK)
        .saturating_mul(kv_dim)
}

/// Writes `rows.len() / kv_dim` keys (f32 rows of `kv_dim`, rounded to f16
/// with round-to-nearest-even) into slots `first_slot..` of a blocked K
/// cache.
///
/// Returns an error when `rows` is not whole rows or the slots do not fit.
pub fn store_keys(
    cache: &mut [f16],
    kv_dim: usize,
    first_slot: usize,
    rows: &[f32],
) -> Result<(), Error> {
    if kv_dim == 0 || !rows.len().is_multiple_of(kv_dim) {
        return Err(Error::NotMultiple {
            what: "key rows length",
            multiple_of: kv_dim,
            got: rows.len(),
        });
    }
    let end = first_slot.saturating_add(rows.len() / kv_dim);
    if key_cache_len(end, kv_dim) > cache.len() {
        return Err(Error::OutOfRange {
            what: "key slot",
            index: end.saturating_sub(1),
            limit: cache.len() / kv_dim,
        });
    }
    // half's slice conversion uses F16C / NEON when the CPU has them (the
    // same round-to-nearest-even as the per-value conversion).
    let mut converted = [f16::ZERO; 64];
    for (i, row) in rows.chunks_exact(kv_dim).enumerate() {
        let base = key_index(first_slot + i, 0, kv_dim);
        for (c0, part) in (0..).step_by(64).zip(row.chunks(64)) {
            let halves = &mut converted[..part.len()];
            halves.convert_from_f32_slice(part);
            for (c, &h) in (c0..).zip(halves.iter()) {
                cache[base + c * KEY_BLOCK] = h;
            }
        }
    }
    Ok(())
}

/// Copies the key of slot `src` over the key of slot `dst` (KV compaction
/// after a verification step).
///
/// Returns an error when a slot is beyond the cache.
pub fn move_key(cache: &mut [f16], kv_dim: usize, src: usize, dst: usize) -> Result<(), Error> {
    let limit = cache.len() / kv_dim.max(1);
    for slot in [src, dst] {
        if kv_dim == 0 || key_cache_len(slot + 1, kv_dim) > cache.len() {
            return Err(Error::OutOfRange {
                what: "key slot",
                index: slot,
                limit,
            });
        }
    }
    let (from, to) = (key_index(src, 0, kv_dim), key_index(dst, 0, kv_dim));
    for c in 0..kv_dim {
        cache[to + c * KEY_BLOCK] = cache[from + c * KEY_BLOCK];
    }
    Ok(())
}

/// The tree-attention slots row `r` of a verification run sees beyond the
/// cached prefix, in order: `visit(slot, position)` for every row `j < n`
/// with `mask[r · width + j] != 0`. Row `j` sits in slot `past + j` but
/// stands at its depth in the sequence (its visible rows, itself included,
/// minus one): that position picks its softmax chunk and value lane (see
/// [`RowVisibility::extra_positions`]).
pub fn tree_row_extras(
    mask: &[u8],
    width: usize,
    n: usize,
    past: usize,
    r: usize,
    mut visit: impl FnMut(u32, u32),
) {
    let row = |i: usize| mask.get(i * width..i * width + n).unwrap_or(&[]);
    for (j, &seen) in row(r).iter().enumerate() {
        if seen != 0 {
            let depth = row(j).iter().filter(|&&v| v != 0).count();
            visit((past + j) as u32, (past + depth.saturating_sub(1)) as u32);
        }
    }
}

/// One KV head's keys in a blocked K cache (see [`key_index`]).
#[derive(Clone, Copy, Debug)]
pub struct BlockedKeys<'a> {
    /// The layer's whole K cache: whole blocks of `kv_dim × 16` values.
    pub cache: &'a [f16],
    /// Columns per slot (`n_kv_heads · head_dim`).
    pub kv_dim: usize,
    /// The head's first column (`kv_head · head_dim`).
    pub offset: usize,
}

impl BlockedKeys<'_> {
    /// Element `d` of slot `slot`'s key.
    #[inline(always)]
    pub fn get(&self, slot: usize, d: usize) -> f16 {
        self.cache[key_index(slot, self.offset + d, self.kv_dim)]
    }

    /// Slot `slot`'s key (`out.len()` elements).
    pub fn gather(&self, slot: usize, out: &mut [f16]) {
        let base = key_index(slot, self.offset, self.kv_dim);
        for (d, o) in out.iter_mut().enumerate() {
            *o = self.cache[base + d * KEY_BLOCK];
        }
    }

    /// The `16 · head_dim` values of block `block` for this head: column
    /// `d` of the block's 16 slots at `16 · d..16 · d + 16`.
    #[inline(always)]
    pub fn block(&self, block: usize, head_dim: usize) -> &[f16] {
        let base = block * KEY_BLOCK * self.kv_dim + self.offset * KEY_BLOCK;
        &self.cache[base..base + KEY_BLOCK * head_dim]
    }

    /// Panics unless the slots before `end` and columns `offset..offset +
    /// head_dim` are inside the cache (the kernels' common precondition).
    #[track_caller]
    pub(crate) fn assert_covers(&self, end: usize, head_dim: usize) {
        assert!(
            self.offset + head_dim <= self.kv_dim
                && key_cache_len(end, self.kv_dim) <= self.cache.len(),
            "attn_scores: key cache too short"
        );
    }
}

/// One call of a score kernel ([`crate::KernelSet::attn_scores_f16`]):
/// `queries` queries, already rounded to f16 and held as f32 (`q16`, one
/// after another), against the keys of `slots`, times `scale`.
#[derive(Clone, Debug)]
pub struct ScoreJob<'a> {
    /// The queries, `queries × head_dim` values.
    pub q16: &'a [f32],
    /// How many queries `q16` holds.
    pub queries: usize,
    /// One KV head's keys.
    pub keys: BlockedKeys<'a>,
    /// The slots scored, in order.
    pub slots: std::ops::Range<usize>,
    /// Factor of every score (usually `1 / sqrt(head_dim)`).
    pub scale: f32,
}

impl ScoreJob<'_> {
    /// Values per query; `None` when there is nothing to compute.
    ///
    /// # Panics
    /// If `q16` is not `queries` queries of equal length.
    pub fn head_dim(&self) -> Option<usize> {
        if self.queries == 0 || self.q16.is_empty() || self.slots.is_empty() {
            return None;
        }
        assert!(
            self.q16.len().is_multiple_of(self.queries),
            "attn_scores: q16 is not `queries` queries"
        );
        Some(self.q16.len() / self.queries)
    }
}

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
/// slot in `extra` (each `< capacity`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RowVisibility<'a> {
    /// Slots `0..prefix_len` are visible.
    pub prefix_len: usize,
    /// Additional visible slots beyond the prefix (e.g. tree ancestors).
    pub extra: &'a [u32],
    /// The sequence position of each `extra` slot (ascending), when it
    /// differs from the slot: a draft-tree node sits in the slot of its row
    /// but stands at its depth in the sequence. Softmax chunks and value
    /// lanes follow the position, so a tree row computes bitwise what
    /// sequential decoding of its path computes. Empty: positions are the
    /// slots.
    pub extra_positions: &'a [u32],
}

impl RowVisibility<'_> {
    /// Sequence position of extra slot `i`.
    #[inline]
    fn extra_position(&self, i: usize) -> usize {
        self.extra_positions
            .get(i)
            .copied()
            .unwrap_or(self.extra[i]) as usize
    }
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
    /// rows.len()`); `v_cache` is `capacity × n_kv_heads × head_dim` f16 and
    /// `k_cache` the same slots in the blocked layout ([`key_cache_len`]
    /// values). Head `h` reads KV head `h / (n_heads / n_kv_heads)`.
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
        let kv_stride = n_kv_heads * head_dim;
        if kv_stride == 0 || !v_cache.len().is_multiple_of(kv_stride) {
            return Err(Error::NotMultiple {
                what: "v_cache.len()",
                multiple_of: kv_stride,
                got: v_cache.len(),
            });
        }
        let capacity = v_cache.len() / kv_stride;
        check_len(
            "k_cache.len() (the V cache's slots in whole key blocks)",
            key_cache_len(capacity, kv_stride),
            k_cache.len(),
        )?;
        let mut work = 0usize;
        for vis in rows {
            if vis.prefix_len > capacity {
                return Err(Error::OutOfRange {
                    what: "prefix_len",
                    index: vis.prefix_len,
                    limit: capacity + 1,
                });
            }
            if !vis.extra_positions.is_empty() && vis.extra_positions.len() != vis.extra.len() {
                return Err(Error::Shape {
                    what: "extra_positions.len() (extra.len())",
                    expected: vis.extra.len(),
                    got: vis.extra_positions.len(),
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

    /// Independent tasks (see [`AttentionJob::task_count`]).
    pub fn tasks(&self) -> usize {
        Self::task_count(self.rows.len(), &self.shape)
    }

    /// Tasks of a call over `n_rows` rows: each takes a run of rows and
    /// either one head or all the heads of one KV head (see [`TaskSplit`]).
    pub fn task_count(n_rows: usize, shape: &AttentionShape) -> usize {
        let split = TaskSplit::new(n_rows, shape);
        n_rows.div_ceil(split.rows) * (shape.n_heads / split.heads.max(1))
    }

    /// Elements of the output (`n_rows × n_heads × head_dim`).
    pub fn out_len(&self) -> usize {
        self.q.len()
    }

    /// Computes tasks `tasks` (task `i`: row run `i / (n_heads / heads)`,
    /// head run `i % (n_heads / heads)`).
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
        let split = TaskSplit::new(n_rows, &self.shape);
        let head_runs = n_heads / split.heads;
        for idx in tasks {
            let first_row = (idx / head_runs) * split.rows;
            let rows = first_row..(first_row + split.rows).min(n_rows);
            let first_head = (idx % head_runs) * split.heads;
            let heads = first_head..first_head + split.heads;
            let mut dsts: [&mut [f32]; MAX_TASK_QUERIES] = Default::default();
            let mut m = 0;
            for r in rows.clone() {
                for h in heads.clone() {
                    let at = (r * n_heads + h) * head_dim;
                    // SAFETY: the caller owns this task's outputs (these rows
                    // and heads), which lie inside `out`.
                    dsts[m] = unsafe { out.slice_mut(at, head_dim) };
                    m += 1;
                }
            }
            let kv_off = (first_head / group) * head_dim;
            attend_group(self, heads, kv_off, rows, &mut dsts[..m]);
        }
    }
}

/// Queries (rows × heads) one attention task holds at most.
const MAX_TASK_QUERIES: usize = 16;

/// How attention work is cut into tasks. The queries of a task share one
/// KV head and the prefix all its rows see, so each key and value there is
/// converted once for all of them; a single row keeps one head per task, so
/// that two threads still have enough tasks to share.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TaskSplit {
    /// Query rows per task.
    pub rows: usize,
    /// Heads per task: 1, or every head of one KV head.
    pub heads: usize,
}

impl TaskSplit {
    /// The split used for `n_rows` rows (results never depend on it).
    pub fn new(n_rows: usize, shape: &AttentionShape) -> Self {
        let group = (shape.n_heads / shape.n_kv_heads.max(1)).max(1);
        if n_rows <= 1 || group > MAX_TASK_QUERIES {
            return TaskSplit {
                rows: n_rows.clamp(1, MAX_TASK_QUERIES),
                heads: 1,
            };
        }
        TaskSplit {
            rows: n_rows
                .div_ceil(2)
                .clamp(1, (MAX_TASK_QUERIES / group).clamp(1, 4)),
            heads: group,
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

/// One head over a few query rows, each bitwise as llama.cpp's batched
/// non-flash-attention CPU path with an f16 cache computes it (so
/// conformance holds):
///
/// * scores: the query rounded to f16, `k · q` in tinyBLAS's 16-lane order
///   ([`KernelSet::dot_f16_f32`]), times `scale`; over the prefix that all
///   the rows see, [`KernelSet::attn_scores_f16`] does every query of the
///   task at once, and over a row's own slots every head of the row;
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
fn attend_group(
    job: &AttentionJob,
    heads: std::ops::Range<usize>,
    kv_off: usize,
    rows: std::ops::Range<usize>,
    dsts: &mut [&mut [f32]],
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
    let n_heads_here = heads.len();
    let m = vis.len() * n_heads_here;
    let common = vis.iter().map(|v| v.prefix_len).min().unwrap_or(0);
    let longest = vis
        .iter()
        .map(|v| v.prefix_len + v.extra.len())
        .max()
        .unwrap_or(0);
    let keys = BlockedKeys {
        cache: job.k_cache,
        kv_dim: kv_stride,
        offset: kv_off,
    };
    let value_of = |t: usize| -> std::ops::Range<usize> {
        let base = t * kv_stride + kv_off;
        base..base + head_dim
    };
    SCRATCH.with(|cell| {
        let mut scratch = cell.borrow_mut();
        let Scratch {
            q16,
            scores,
            lanes,
            key,
            chunk_sums,
        } = &mut *scratch;
        q16.clear();
        for r in rows.clone() {
            for h in heads.clone() {
                q16.extend_from_slice(&job.q[(r * n_heads + h) * head_dim..][..head_dim]);
            }
        }
        // The queries rounded to f16 (`x · 1.0` is exact, then RNE to f16).
        (ks.scale_round_f16)(1.0, q16);
        scores.clear();
        scores.resize(m * longest, 0.0);
        if common > 0 {
            let job = ScoreJob {
                q16,
                queries: m,
                keys,
                slots: 0..common,
                scale,
            };
            (ks.attn_scores_f16)(&job, scores, longest);
        }
        key.clear();
        key.resize(head_dim, f16::ZERO);
        // Each row's own slots, for all the heads of the row at once.
        for (i, v) in vis.iter().enumerate() {
            let first = i * n_heads_here;
            let qs = &q16[first * head_dim..(first + n_heads_here) * head_dim];
            let sc = &mut scores[first * longest..];
            if v.prefix_len > common {
                let job = ScoreJob {
                    q16: qs,
                    queries: n_heads_here,
                    keys,
                    slots: common..v.prefix_len,
                    scale,
                };
                (ks.attn_scores_f16)(&job, &mut sc[common..], longest);
            }
            for (e, &t) in v.extra.iter().enumerate() {
                keys.gather(t as usize, key);
                for (h, q) in qs.chunks_exact(head_dim).enumerate() {
                    sc[h * longest + v.prefix_len + e] = (ks.dot_f16_f32)(key, q) * scale;
                }
            }
        }
        for j in 0..m {
            let v = &vis[j / n_heads_here];
            softmax(
                ks,
                v,
                &mut scores[j * longest..j * longest + v.prefix_len + v.extra.len()],
                chunk_sums,
            );
        }
        let per = LANES * head_dim;
        lanes.clear();
        lanes.resize(m * per, 0.0);
        if common > 0 {
            (ks.attn_values_f16_multi)(
                scores,
                longest,
                m,
                common,
                &job.v_cache[kv_off..],
                kv_stride,
                0,
                lanes,
            );
        }
        for (j, dst) in dsts.iter_mut().enumerate() {
            let v = &vis[j / n_heads_here];
            let sc = &scores[j * longest..j * longest + v.prefix_len + v.extra.len()];
            let lj = &mut lanes[j * per..(j + 1) * per];
            if v.prefix_len > common {
                (ks.attn_values_f16)(
                    &sc[common..v.prefix_len],
                    &job.v_cache[common * kv_stride + kv_off..],
                    kv_stride,
                    common,
                    lj,
                );
            }
            for (i, (&p, &t)) in sc[v.prefix_len..].iter().zip(v.extra).enumerate() {
                let lane = v.extra_position(i) % LANES;
                (ks.axpy_f16_f32)(
                    p,
                    &job.v_cache[value_of(t as usize)],
                    &mut lj[lane * head_dim..(lane + 1) * head_dim],
                );
            }
            reduce_lanes(lj, head_dim, dst);
        }
    });
}

/// A row's scores in place → probabilities: `ggml_v_expf(s - max)`, summed
/// per 16-slot chunk of the KV cache in `hsum16` order with the chunk sums
/// added in f64, then `e · (1/sum)` rounded to f16.
fn softmax(ks: &KernelSet, vis: &RowVisibility, scores: &mut [f32], chunk_sums: &mut Vec<f32>) {
    if scores.is_empty() {
        return;
    }
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
    chunk_sums.clear();
    chunk_sums.resize(full, 0.0);
    (ks.hsum16_chunks)(&scores[..full * LANES], chunk_sums);
    for &c in chunk_sums.iter() {
        sum += c as f64;
    }
    let rest = (full * LANES..prefix).chain((0..vis.extra.len()).map(|i| vis.extra_position(i)));
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
}

/// `hsum16` over the 16 lanes (`16 × head_dim`) of every output value,
/// written as element-wise adds of whole lane rows (the same tree per
/// value) so it vectorizes across `head_dim`.
fn reduce_lanes(lanes: &mut [f32], head_dim: usize, acc: &mut [f32]) {
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

/// Per-thread buffers of [`attend_group`].
#[derive(Default)]
struct Scratch {
    /// The task's queries rounded to f16 (held as f32), row after row.
    q16: Vec<f32>,
    /// Scores, then exps, of the visible slots, one stretch per row.
    scores: Vec<f32>,
    /// `16 × head_dim` per-lane partial outputs of each query.
    lanes: Vec<f32>,
    /// One gathered key (tree slots outside the prefix).
    key: Vec<f16>,
    /// A row's exp sums per 16-slot chunk.
    chunk_sums: Vec<f32>,
}

thread_local! {
    /// Per-thread buffers, so attention allocates only when a context grows
    /// past what the thread has seen.
    static SCRATCH: std::cell::RefCell<Scratch> = std::cell::RefCell::new(Scratch::default());
}
