//! Per-kernel throughput: every kernel family of `coordgen-kernels` on one
//! core (except `attention`), at SmolLM2-135M's sizes (d = 576, FFN 1536,
//! vocab 49152, 9 query heads / 3 KV heads of 64), on deterministic
//! pseudo-random data.
//!
//! # Running
//!
//! ```sh
//! cargo bench -p coordgen-kernels --bench kernels                  # everything, under 2 minutes
//! cargo bench -p coordgen-kernels --bench kernels -- gemm/         # one family (a regex on ids)
//! cargo bench -p coordgen-kernels --bench kernels -- 'dot/q4_1' --warm-up-time 0.3 --measurement-time 1
//! COORDGEN_BENCH_TIERS=all cargo bench -p coordgen-kernels --bench kernels -- dot/
//! ```
//!
//! Bench ids are `family/kernel[/shape]/tier`, e.g. `dot/q4_1_q8_1/avx512vnni`
//! or `gemm/q4_1_x8/n=4/scalar`. Each kernel of a [`KernelSet`] runs in the
//! best tier ([`KernelSet::best()`], which `COORDGEN_KERNEL_TIER` can lower)
//! and in the scalar reference tier for comparison;
//! `COORDGEN_BENCH_TIERS=all` runs every tier this CPU has instead (e.g.
//! AVX2 next to AVX-512 VNNI). The tierless ops of `coordgen_kernels::ops`
//! have no tier suffix.
//!
//! # Reading the numbers
//!
//! Criterion prints the time per iteration and, under `thrpt:`, a throughput:
//!
//! * **`GiB/s`** (`Throughput::Bytes`, binary gigabytes as in the `matmul`
//!   bench's `membw/read`) for memory-bound kernels. What is counted:
//!   * `dot/*`, `gemm/*`, `f16/*`: the **weight bytes** of the whole matrix,
//!     read once per iteration, activations not counted. So `_x4` and `n=4`
//!     (four activation rows against the same weights) do four times the
//!     arithmetic for the same bytes: four times their GiB/s over the
//!     one-row figure is how much a weight load serving four rows saves
//!     (4 = free extra rows, 1 = none). The matrices (0.5-1 MB)
//!     stay in L2, so these are kernel speeds, not DRAM speeds; for DRAM-bound
//!     matmuls see `benches/matmul.rs`.
//!   * `quantize/*`: f32 input read plus quantized blocks written.
//!   * `elementwise/*`, `ops/*`: every f32 read and written (e.g. 12 bytes an
//!     element for `silu_mul_f32`: gate, up, out).
//! * **`Gelem/s` (or `Melem/s`) read as GFLOP/s (MFLOP/s)**
//!   (`Throughput::Elements` whose "elements" are floating-point operations,
//!   a multiply-add counting two) for the
//!   compute-bound attention kernels:
//!   * `attn/scores_f16*` and `attn/values_f16`: 2 · slots · head_dim per query;
//!   * `attention/*`: 4 · Σ visible slots · heads · head_dim (scores plus
//!     values), i.e. 4 · rows · heads · slots · head_dim.
//!
//! Sizes: quantized dots and group GEMMs use the 1536 × 576 FFN gate/up
//! matrix (row-major for `dot/*`, repacked into 8-row groups for `gemm/*`);
//! the f16 kernels a 576 × 576 f16 projection; the attention kernels a
//! KV-cache-like layout (rows of stride 192 = 3 KV heads × 64, 1024 slots).
//!
//! All benches except `attention/*` run on the calling thread.
//! `attention/*` runs `coordgen_kernels::attention()`, which splits heads over
//! rayon's global pool (`RAYON_NUM_THREADS=1` for a one-core figure). On a
//! shared or busy machine, compare numbers from the same run only.

use coordgen_kernels::attention::{
    attention, AttentionShape, BlockedKeys, RowVisibility, ScoreJob,
};
use coordgen_kernels::quant::{
    quantize_row_q4_0, quantize_row_q4_1, quantize_row_q8_0, BlockQ8_0, BlockQ8_1, QK,
};
use coordgen_kernels::repack::{self, ActAux, GroupGemm, GROUP};
use coordgen_kernels::{f16, ops, BlockQ4_0x8, BlockQ4_1x8, BlockQ8_0x8, KernelSet};
use criterion::measurement::WallTime;
use criterion::{
    criterion_group, criterion_main, BatchSize, BenchmarkGroup, Criterion, Throughput,
};
use std::hint::black_box;
use std::time::Duration;

// SmolLM2-135M.
const D: usize = 576;
const FFN: usize = 1536;
const VOCAB: usize = 49152;
const N_HEADS: usize = 9;
const N_KV_HEADS: usize = 3;
const HEAD_DIM: usize = 64;
const ROPE_THETA: f32 = 100_000.0;
const RMS_EPS: f32 = 1e-5;
/// f16 elements between consecutive KV slots of one layer's cache.
const KV_STRIDE: usize = N_KV_HEADS * HEAD_DIM;
/// Cached KV slots the attention benches attend to.
const SLOTS: usize = 1024;
/// Batch size of the benches whose kernel overwrites its input (fresh input
/// each call; 64 copies stay in L2).
const BATCH: BatchSize = BatchSize::NumIterations(64);

/// Deterministic values in [-1, 1) (xorshift64).
fn random_f32(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s >> 40) as f32 / (1u64 << 23) as f32 - 1.0
        })
        .collect()
}

fn random_f16(n: usize, seed: u64) -> Vec<f16> {
    random_f32(n, seed).into_iter().map(f16::from_f32).collect()
}

fn bytes<T>(v: &[T]) -> u64 {
    std::mem::size_of_val(v) as u64
}

/// The kernel sets to compare: the best tier, then scalar (or, with
/// `COORDGEN_BENCH_TIERS=all`, every available tier, highest first).
fn kernel_sets() -> Vec<KernelSet> {
    let all = std::env::var("COORDGEN_BENCH_TIERS").is_ok_and(|v| v == "all");
    let candidates: Vec<KernelSet> = if all {
        KernelSet::available()
            .into_iter()
            .rev()
            .filter_map(KernelSet::for_tier)
            .collect()
    } else {
        vec![*KernelSet::best(), KernelSet::scalar()]
    };
    let mut sets: Vec<KernelSet> = Vec::new();
    for ks in candidates {
        if !sets.iter().any(|s| s.tier == ks.tier) {
            sets.push(ks);
        }
    }
    sets
}

fn group<'a>(c: &'a mut Criterion, name: &str) -> BenchmarkGroup<'a, WallTime> {
    c.benchmark_group(name)
}

/// A random `rows × cols` matrix quantized with `quantize`.
fn quantized<B: Clone + Default>(
    rows: usize,
    cols: usize,
    seed: u64,
    quantize: fn(&[f32], &mut [B]),
) -> Vec<B> {
    let wf = random_f32(rows * cols, seed);
    let mut q = vec![B::default(); rows * cols / QK];
    quantize(&wf, &mut q);
    q
}

/// Four activation rows of `cols`, quantized back to back by `quantize`.
fn activations<B: Clone + Default>(cols: usize, quantize: fn(&[f32], &mut [B])) -> Vec<B> {
    let x = random_f32(4 * cols, 11);
    let mut a = vec![B::default(); 4 * cols / QK];
    quantize(&x, &mut a);
    a
}

// ---------------------------------------------------------------- dot

/// One weight format's row dots (`name`) and their `_x4` variants: every row
/// of `w` against one (four) activation rows.
fn bench_dot_format<W, A>(
    g: &mut BenchmarkGroup<WallTime>,
    name: &str,
    w: &[W],
    bpr: usize,
    act: &[A],
    one: impl Fn(&KernelSet) -> fn(&[W], &[A]) -> f32,
    four: impl Fn(&KernelSet) -> fn(&[W], [&[A]; 4]) -> [f32; 4],
) {
    let rows = w.len() / bpr;
    let a: Vec<&[A]> = act.chunks_exact(bpr).collect();
    let a4 = [a[0], a[1], a[2], a[3]];
    g.throughput(Throughput::Bytes(bytes(w)));
    for ks in kernel_sets() {
        let dot = black_box(one(&ks));
        let mut out = vec![0.0f32; rows];
        g.bench_function(format!("{name}/{}", ks.tier), |b| {
            b.iter(|| {
                for (o, row) in out.iter_mut().zip(black_box(w).chunks_exact(bpr)) {
                    *o = dot(row, black_box(a4[0]));
                }
                black_box(&mut out);
            })
        });
    }
    for ks in kernel_sets() {
        let dot4 = black_box(four(&ks));
        let mut out = vec![[0.0f32; 4]; rows];
        g.bench_function(format!("{name}_x4/{}", ks.tier), |b| {
            b.iter(|| {
                for (o, row) in out.iter_mut().zip(black_box(w).chunks_exact(bpr)) {
                    *o = dot4(row, black_box(a4));
                }
                black_box(&mut out);
            })
        });
    }
}

fn dot(c: &mut Criterion) {
    let (rows, cols) = (FFN, D);
    let bpr = cols / QK;
    let w40 = quantized(rows, cols, 1, quantize_row_q4_0);
    let w41 = quantized(rows, cols, 2, quantize_row_q4_1);
    let w80 = quantized(rows, cols, 3, quantize_row_q8_0);
    let best = KernelSet::best();
    let a80 = activations(cols, best.quantize_row_q8_0);
    let a81 = activations(cols, best.quantize_row_q8_1);
    let mut g = group(c, "dot");
    bench_dot_format(
        &mut g,
        "q4_0_q8_0",
        &w40,
        bpr,
        &a80,
        |k| k.vec_dot_q4_0_q8_0,
        |k| k.vec_dot_q4_0_q8_0_x4,
    );
    bench_dot_format(
        &mut g,
        "q4_1_q8_1",
        &w41,
        bpr,
        &a81,
        |k| k.vec_dot_q4_1_q8_1,
        |k| k.vec_dot_q4_1_q8_1_x4,
    );
    bench_dot_format(
        &mut g,
        "q8_0_q8_0",
        &w80,
        bpr,
        &a80,
        |k| k.vec_dot_q8_0_q8_0,
        |k| k.vec_dot_q8_0_q8_0_x4,
    );
    g.finish();
}

// ---------------------------------------------------------------- gemm

/// One format's 8-row group GEMM over all row groups of `packed`, against 1
/// and 4 activation rows (`act`/`aux`: four rows back to back).
fn bench_gemm_format<W, A>(
    g: &mut BenchmarkGroup<WallTime>,
    name: &str,
    packed: &[W],
    bpr: usize,
    act: &[A],
    aux: &[ActAux],
    pick: impl Fn(&KernelSet) -> GroupGemm<W, A>,
) {
    let groups = packed.len() / bpr;
    g.throughput(Throughput::Bytes(bytes(packed)));
    for n in [1, 4] {
        let (act, aux) = (&act[..n * bpr], &aux[..n * bpr]);
        for ks in kernel_sets() {
            let gemm = black_box(pick(&ks));
            let mut out = vec![[0.0f32; GROUP]; groups * n];
            g.bench_function(format!("{name}/n={n}/{}", ks.tier), |b| {
                b.iter(|| {
                    let w = black_box(packed);
                    for (wg, o) in w.chunks_exact(bpr).zip(out.chunks_exact_mut(n)) {
                        gemm(wg, black_box(act), aux, o);
                    }
                    black_box(&mut out);
                })
            });
        }
    }
}

fn gemm(c: &mut Criterion) {
    let (rows, cols) = (FFN, D);
    let bpr = cols / QK;
    let groups = rows / GROUP;
    let best = KernelSet::best();

    let mut p40 = vec![BlockQ4_0x8::default(); groups * bpr];
    repack::repack_q4_0(
        &quantized(rows, cols, 1, quantize_row_q4_0),
        rows,
        cols,
        &mut p40,
    )
    .unwrap();
    let mut p41 = vec![BlockQ4_1x8::default(); groups * bpr];
    repack::repack_q4_1(
        &quantized(rows, cols, 2, quantize_row_q4_1),
        rows,
        cols,
        &mut p41,
    )
    .unwrap();
    let mut p80 = vec![BlockQ8_0x8::default(); groups * bpr];
    repack::repack_q8_0(
        &quantized(rows, cols, 3, quantize_row_q8_0),
        rows,
        cols,
        &mut p80,
    )
    .unwrap();

    let a80 = activations(cols, best.quantize_row_q8_0);
    let a81 = activations(cols, best.quantize_row_q8_1);
    let mut aux_q4_0 = vec![ActAux::default(); a80.len()];
    repack::act_aux_q8_0(&a80, 8, &mut aux_q4_0);
    let mut aux_q8_0 = vec![ActAux::default(); a80.len()];
    repack::act_aux_q8_0(&a80, 128, &mut aux_q8_0);
    let mut aux_q4_1 = vec![ActAux::default(); a81.len()];
    repack::act_aux_q8_1(&a81, &mut aux_q4_1);

    let mut g = group(c, "gemm");
    bench_gemm_format(&mut g, "q4_0_x8", &p40, bpr, &a80, &aux_q4_0, |k| {
        k.gemm_q4_0_x8
    });
    bench_gemm_format(&mut g, "q4_1_x8", &p41, bpr, &a81, &aux_q4_1, |k| {
        k.gemm_q4_1_x8
    });
    bench_gemm_format(&mut g, "q8_0_x8", &p80, bpr, &a80, &aux_q8_0, |k| {
        k.gemm_q8_0_x8
    });
    g.finish();
}

// ---------------------------------------------------------------- quantize

fn quantize(c: &mut Criterion) {
    // The FFN down projection's input, the longest activation row of a decode step.
    let x = random_f32(FFN, 5);
    let mut q80 = vec![BlockQ8_0::default(); FFN / QK];
    let mut q81 = vec![BlockQ8_1::default(); FFN / QK];
    let mut g = group(c, "quantize");
    g.throughput(Throughput::Bytes(bytes(&x) + bytes(&q80)));
    for ks in kernel_sets() {
        let f = black_box(ks.quantize_row_q8_0);
        g.bench_function(format!("q8_0/{}", ks.tier), |b| {
            b.iter(|| f(black_box(&x), black_box(&mut q80)))
        });
    }
    g.throughput(Throughput::Bytes(bytes(&x) + bytes(&q81)));
    for ks in kernel_sets() {
        let f = black_box(ks.quantize_row_q8_1);
        g.bench_function(format!("q8_1/{}", ks.tier), |b| {
            b.iter(|| f(black_box(&x), black_box(&mut q81)))
        });
    }
    g.finish();
}

// ---------------------------------------------------------------- f16

fn f16_kernels(c: &mut Criterion) {
    // A 576 × 576 f16 projection (e.g. attention's output projection in an F16 GGUF).
    let (rows, cols) = (D, D);
    let w = random_f16(rows * cols, 6);
    let x = random_f32(cols, 7);
    let coef: Vec<f32> = random_f32(rows, 8)
        .iter()
        .map(|v| v / rows as f32)
        .collect();
    let mut g = group(c, "f16");
    g.throughput(Throughput::Bytes(bytes(&w)));
    for ks in kernel_sets() {
        let dot = black_box(ks.dot_f16_f32);
        let mut out = vec![0.0f32; rows];
        g.bench_function(format!("dot_f16_f32/{}", ks.tier), |b| {
            b.iter(|| {
                for (o, row) in out.iter_mut().zip(black_box(&w).chunks_exact(cols)) {
                    *o = dot(row, black_box(&x));
                }
                black_box(&mut out);
            })
        });
    }
    for ks in kernel_sets() {
        let axpy = black_box(ks.axpy_f16_f32);
        // y accumulates across iterations: a random walk of bounded size.
        let mut y = vec![0.0f32; cols];
        g.bench_function(format!("axpy_f16_f32/{}", ks.tier), |b| {
            b.iter(|| {
                for (&a, row) in coef.iter().zip(black_box(&w).chunks_exact(cols)) {
                    axpy(a, row, &mut y);
                }
                black_box(&mut y);
            })
        });
    }
    g.finish();
}

// ---------------------------------------------------------------- attn

fn attn(c: &mut Criterion) {
    // One KV head's keys/values over SLOTS slots of a 3-KV-head cache (the
    // keys in the blocked layout).
    let k = random_f16(SLOTS * KV_STRIDE, 9);
    let v = random_f16(SLOTS * KV_STRIDE, 10);
    let q16: Vec<f32> = random_f16(6 * HEAD_DIM, 12)
        .iter()
        .map(|h| h.to_f32())
        .collect();
    let p: Vec<f32> = random_f32(SLOTS, 13)
        .iter()
        .map(|&r| f16::from_f32((r + 1.0) / SLOTS as f32).to_f32())
        .collect();
    let scale = 1.0 / (HEAD_DIM as f32).sqrt();
    // Throughput::Elements counts FLOPs here (an FMA is two), so criterion's
    // "elem/s" reads as FLOP/s.
    let flops_one = (2 * SLOTS * HEAD_DIM) as u64;
    let mut g = group(c, "attn");
    g.throughput(Throughput::Elements(flops_one));
    let keys = BlockedKeys {
        cache: &k,
        kv_dim: KV_STRIDE,
        offset: HEAD_DIM,
    };
    for m in [1, 4, 6] {
        g.throughput(Throughput::Elements(m as u64 * flops_one));
        for ks in kernel_sets() {
            let f = black_box(ks.attn_scores_f16);
            let mut scores = vec![0.0f32; m * SLOTS];
            let job = ScoreJob {
                q16: &q16[..m * HEAD_DIM],
                queries: m,
                keys,
                slots: 0..SLOTS,
                scale,
            };
            g.bench_function(format!("scores_f16/m={m}/{}", ks.tier), |b| {
                b.iter(|| {
                    f(black_box(&job), &mut scores, SLOTS);
                    black_box(&mut scores);
                })
            });
        }
    }
    let m = 4;
    g.throughput(Throughput::Elements(m as u64 * flops_one));
    for ks in kernel_sets() {
        let f = black_box(ks.attn_values_f16_multi);
        let pm: Vec<f32> = (0..m).flat_map(|_| p.iter().copied()).collect();
        let mut lanes = vec![0.0f32; m * 16 * HEAD_DIM];
        g.bench_function(format!("values_f16_multi/m={m}/{}", ks.tier), |b| {
            b.iter(|| {
                f(
                    black_box(&pm),
                    SLOTS,
                    m,
                    SLOTS,
                    black_box(&v),
                    KV_STRIDE,
                    0,
                    &mut lanes,
                );
                black_box(&mut lanes);
            })
        });
    }
    g.throughput(Throughput::Elements(flops_one));
    for ks in kernel_sets() {
        let f = black_box(ks.attn_values_f16);
        // The 16 lanes accumulate across iterations (bounded random walk).
        let mut lanes = vec![0.0f32; 16 * HEAD_DIM];
        g.bench_function(format!("values_f16/{}", ks.tier), |b| {
            b.iter(|| {
                f(black_box(&p), black_box(&v), KV_STRIDE, 0, &mut lanes);
                black_box(&mut lanes);
            })
        });
    }
    g.finish();
}

// ---------------------------------------------------------------- elementwise

fn elementwise(c: &mut Criterion) {
    // Attention scores minus their max, as `exp_f32` sees them.
    let scores: Vec<f32> = random_f32(SLOTS, 14)
        .iter()
        .map(|v| 5.0 * (v - 1.0))
        .collect();
    let gate = random_f32(FFN, 15)
        .iter()
        .map(|v| 4.0 * v)
        .collect::<Vec<_>>();
    let up = random_f32(FFN, 16);
    let mut g = group(c, "elementwise");
    g.throughput(Throughput::Bytes(2 * bytes(&scores)));
    for ks in kernel_sets() {
        let f = black_box(ks.exp_f32);
        g.bench_function(format!("exp_f32/{}", ks.tier), |b| {
            b.iter_batched_ref(|| scores.clone(), |x| f(x), BATCH)
        });
    }
    g.throughput(Throughput::Bytes(3 * bytes(&gate)));
    for ks in kernel_sets() {
        let f = black_box(ks.silu_mul_f32);
        let mut out = vec![0.0f32; FFN];
        g.bench_function(format!("silu_mul_f32/{}", ks.tier), |b| {
            b.iter(|| {
                f(black_box(&gate), black_box(&up), &mut out);
                black_box(&mut out);
            })
        });
    }
    // Exps times 1/Σ, rounded to f16: attention's probabilities.
    let exps: Vec<f32> = scores.iter().map(|v| v.exp()).collect();
    let inv_sum = 1.0 / exps.iter().sum::<f32>();
    g.throughput(Throughput::Bytes(2 * bytes(&exps)));
    for ks in kernel_sets() {
        let f = black_box(ks.scale_round_f16);
        g.bench_function(format!("scale_round_f16/{}", ks.tier), |b| {
            b.iter_batched_ref(|| exps.clone(), |x| f(black_box(inv_sum), x), BATCH)
        });
    }
    g.finish();
}

// ---------------------------------------------------------------- ops

fn ops_benches(c: &mut Criterion) {
    let x = random_f32(D, 17);
    let weight: Vec<f32> = random_f32(D, 18).iter().map(|v| 1.0 + 0.5 * v).collect();
    let mut out = vec![0.0f32; D];
    let mut g = group(c, "ops");
    g.throughput(Throughput::Bytes(3 * bytes(&x)));
    g.bench_function("rms_norm/576", |b| {
        b.iter(|| {
            ops::rms_norm(black_box(&x), &weight, RMS_EPS, &mut out);
            black_box(&mut out);
        })
    });
    g.bench_function("add_inplace/576", |b| {
        b.iter(|| {
            ops::add_inplace(black_box(&mut out), black_box(&x));
        })
    });
    // The query of one token (9 heads × 64); rotations keep it bounded when
    // applied again and again.
    let mut q = random_f32(N_HEADS * HEAD_DIM, 19);
    g.throughput(Throughput::Bytes(2 * bytes(&q)));
    g.bench_function("rope_norm_inplace/9x64", |b| {
        b.iter(|| {
            ops::rope_norm_inplace(
                black_box(&mut q),
                N_HEADS,
                HEAD_DIM,
                black_box(1000),
                ROPE_THETA,
            )
            .unwrap();
        })
    });
    // Logits over the vocabulary: softmax of a softmax stays well-scaled.
    let mut logits: Vec<f32> = random_f32(VOCAB, 20).iter().map(|v| 8.0 * v).collect();
    g.throughput(Throughput::Bytes(2 * bytes(&logits)));
    g.bench_function("softmax_inplace/49152", |b| {
        b.iter(|| ops::softmax_inplace(black_box(&mut logits)))
    });
    let logits = random_f32(VOCAB, 21);
    g.throughput(Throughput::Bytes(bytes(&logits)));
    g.bench_function("argmax/49152", |b| {
        b.iter(|| ops::argmax(black_box(&logits)))
    });
    g.finish();
}

// ---------------------------------------------------------------- attention

fn attention_benches(c: &mut Criterion) {
    let shape = AttentionShape {
        n_heads: N_HEADS,
        n_kv_heads: N_KV_HEADS,
        head_dim: HEAD_DIM,
        scale: 1.0 / (HEAD_DIM as f32).sqrt(),
    };
    let k = random_f16(SLOTS * KV_STRIDE, 22);
    let v = random_f16(SLOTS * KV_STRIDE, 23);
    let mut g = group(c, "attention");
    // Decode: one row sees all SLOTS slots. Verify/prefill: 8 rows, the
    // last 8 slots of the cache being their own (causal).
    let cases: [(&str, Vec<RowVisibility>); 2] = [
        (
            "decode_1x1024",
            vec![RowVisibility {
                prefix_len: SLOTS,
                extra: &[],
                extra_positions: &[],
            }],
        ),
        (
            "rows_8x1024",
            (0..8)
                .map(|i| RowVisibility {
                    prefix_len: SLOTS - 7 + i,
                    extra: &[],
                    extra_positions: &[],
                })
                .collect(),
        ),
    ];
    for (name, rows) in &cases {
        let n_rows = rows.len();
        let visible: usize = rows.iter().map(|r| r.prefix_len + r.extra.len()).sum();
        // FLOPs (scores and values, 2 each per slot and value): "elem/s" reads as FLOP/s.
        g.throughput(Throughput::Elements(
            (4 * visible * N_HEADS * HEAD_DIM) as u64,
        ));
        let q = random_f32(n_rows * N_HEADS * HEAD_DIM, 24);
        let mut out = vec![0.0f32; q.len()];
        for ks in kernel_sets() {
            g.bench_function(format!("{name}/{}", ks.tier), |b| {
                b.iter(|| {
                    attention(&ks, &shape, black_box(&q), n_rows, &k, &v, rows, &mut out).unwrap();
                    black_box(&mut out);
                })
            });
        }
    }
    g.finish();
}

criterion_group! {
    name = kernel_benches;
    // Short runs: the whole file takes about two minutes by default.
    config = Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_millis(1000))
        .nresamples(20_000);
    targets = dot, gemm, quantize, f16_kernels, attn, elementwise, ops_benches, attention_benches
}
criterion_main!(kernel_benches);
