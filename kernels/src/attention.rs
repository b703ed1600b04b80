//! Fused attention over an f16 KV cache: for each (query row, head), scores,
//! softmax and the weighted sum of values in one pass with an online
//! (running-max) softmax, so no score matrix is materialized.
//!
//! The visible KV slots of a row are given explicitly (a causal prefix plus
//! extra slots), which covers plain decoding, chunked prefill and tree
//! verification (a draft token sees the prefix and its tree ancestors).
//!
//! **Batch invariance.** A (row, head) result depends only on its query, its
//! visible slots (in the given order) and the cache contents: slots are
//! processed in fixed chunks of [`CHUNK`] in visibility order, whatever the
//! number of rows or the thread split.

use crate::dispatch::KernelSet;
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

/// Scores computed (and exponentiated) per online-softmax step.
pub const CHUNK: usize = 64;

/// Below this many score·value multiply-adds everything runs on the calling thread.
const SEQUENTIAL_WORK_LIMIT: usize = 32 * 1024;

/// Computes attention for `n_rows` query rows.
///
/// `q` and `out` are `n_rows × n_heads × head_dim`; `k_cache` and `v_cache`
/// are `capacity × n_kv_heads × head_dim` f16. Head `h` reads KV head
/// `h / (n_heads / n_kv_heads)`. A row with no visible slot gets zeros.
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
    let &AttentionShape {
        n_heads,
        n_kv_heads,
        head_dim,
        scale,
    } = shape;
    if n_kv_heads == 0 || n_heads % n_kv_heads != 0 {
        return Err(Error::NotMultiple {
            what: "n_heads",
            multiple_of: n_kv_heads,
            got: n_heads,
        });
    }
    let q_len = n_rows.saturating_mul(n_heads).saturating_mul(head_dim);
    check_len("q.len() (n_rows * n_heads * head_dim)", q_len, q.len())?;
    check_len("out.len() (n_rows * n_heads * head_dim)", q_len, out.len())?;
    check_len("rows.len() (n_rows)", n_rows, rows.len())?;
    check_len(
        "v_cache.len() (== k_cache.len())",
        k_cache.len(),
        v_cache.len(),
    )?;
    if q_len == 0 {
        return Ok(());
    }
    let kv_stride = n_kv_heads * head_dim;
    if !k_cache.len().is_multiple_of(kv_stride) {
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
    work = work.saturating_mul(n_heads * head_dim);

    let group = n_heads / n_kv_heads;
    let task = |(idx, dst): (usize, &mut [f32])| {
        let row = idx / n_heads;
        let head = idx % n_heads;
        let kv_off = (head / group) * head_dim;
        let qv = &q[idx * head_dim..(idx + 1) * head_dim];
        let vis = &rows[row];
        let slots = (0..vis.prefix_len).chain(vis.extra.iter().map(|&t| t as usize));
        attend_one(
            ks,
            qv,
            scale,
            slots,
            |t| {
                let base = t * kv_stride + kv_off;
                (
                    &k_cache[base..base + head_dim],
                    &v_cache[base..base + head_dim],
                )
            },
            dst,
        );
    };
    if work >= SEQUENTIAL_WORK_LIMIT {
        out.par_chunks_mut(head_dim).enumerate().for_each(task);
    } else {
        out.chunks_mut(head_dim).enumerate().for_each(task);
    }
    Ok(())
}

/// One (row, head): online softmax over `slots`, in chunks of [`CHUNK`].
fn attend_one<'c>(
    ks: &KernelSet,
    q: &[f32],
    scale: f32,
    mut slots: impl Iterator<Item = usize>,
    kv: impl Fn(usize) -> (&'c [f16], &'c [f16]),
    acc: &mut [f32],
) {
    acc.fill(0.0);
    let mut running_max = f32::NEG_INFINITY;
    let mut denom = 0.0f32;
    let mut idx = [0usize; CHUNK];
    let mut scores = [0.0f32; CHUNK];
    loop {
        let mut len = 0;
        for t in slots.by_ref().take(CHUNK) {
            idx[len] = t;
            len += 1;
        }
        if len == 0 {
            break;
        }
        let mut chunk_max = f32::NEG_INFINITY;
        for (s, &t) in scores[..len].iter_mut().zip(&idx[..len]) {
            *s = (ks.dot_f16_f32)(kv(t).0, q) * scale;
            chunk_max = chunk_max.max(*s);
        }
        if chunk_max > running_max {
            if running_max != f32::NEG_INFINITY {
                let alpha = (running_max - chunk_max).exp();
                (ks.scale_f32)(alpha, acc);
                denom *= alpha;
            }
            running_max = chunk_max;
        }
        for (&s, &t) in scores[..len].iter().zip(&idx[..len]) {
            let p = (s - running_max).exp();
            denom += p;
            (ks.axpy_f16_f32)(p, kv(t).1, acc);
        }
    }
    if denom > 0.0 {
        (ks.scale_f32)(1.0 / denom, acc);
    }
}
