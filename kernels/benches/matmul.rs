//! Matmul throughput in bytes of weights read per second (criterion prints
//! GB/s), next to the machine's plain memory-read bandwidth.
//!
//! * `membw/read`: summing a 1 GiB buffer on every rayon thread: the ceiling.
//! * `gemv_64MB/q4_1{,x8}`: one activation row against a 64 MB Q4_1 matrix,
//!   row-major and repacked in 8-row groups; the target is ≥ 70 % of
//!   `membw/read`.
//! * `matmul/<shape>`: SmolLM2-135M's FFN projection (Q4_1) and tied output
//!   head (Q8_0) at widths 1 (decode) and 4, 16, 64 (verification, prefill).
//!
//! `cargo bench -p coordgen-kernels --bench matmul`; `COORDGEN_KERNEL_TIER`
//! compares tiers; `RAYON_NUM_THREADS` sets the thread count.

use coordgen_kernels::quant::*;
use coordgen_kernels::repack::*;
use coordgen_kernels::{matmul, KernelSet, MatmulScratch, WeightMatrix};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use rayon::prelude::*;
use std::hint::black_box;

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

fn bench_widths(
    c: &mut Criterion,
    group: &str,
    name: &str,
    w: WeightMatrix,
    rows: usize,
    cols: usize,
    widths: &[usize],
) {
    let ks = KernelSet::best();
    let mut g = c.benchmark_group(format!("{group}/{}", ks.tier));
    g.throughput(Throughput::Bytes(w.size_bytes() as u64));
    for &n in widths {
        let x = random_f32(n * cols, 7);
        let mut out = vec![0.0f32; n * rows];
        let mut scratch = MatmulScratch::default();
        g.bench_function(format!("{name}/n={n}"), |b| {
            b.iter(|| {
                matmul(ks, &w, rows, cols, black_box(&x), n, &mut out, &mut scratch).unwrap();
                black_box(&out);
            })
        });
    }
    g.finish();
}

fn q4_1_pair(rows: usize, cols: usize, seed: u64) -> (Vec<BlockQ4_1>, Vec<BlockQ4_1x8>) {
    let wf = random_f32(rows * cols, seed);
    let mut q = vec![BlockQ4_1::default(); rows * cols / QK];
    quantize_row_q4_1(&wf, &mut q);
    let mut p = vec![BlockQ4_1x8::default(); q.len() / GROUP];
    repack_q4_1(&q, rows, cols, &mut p).unwrap();
    (q, p)
}

fn membw(c: &mut Criterion) {
    let words = (1usize << 30) / 8;
    let buf: Vec<u64> = (0..words as u64).collect();
    let mut g = c.benchmark_group("membw");
    g.throughput(Throughput::Bytes((words * 8) as u64));
    g.sample_size(10);
    g.bench_function("read", |b| {
        b.iter(|| {
            let s: u64 = buf
                .par_chunks(1 << 16)
                .map(|ch| ch.iter().fold(0u64, |a, &v| a.wrapping_add(v)))
                .reduce(|| 0, u64::wrapping_add);
            black_box(s)
        })
    });
    g.finish();
}

fn gemv_64mb(c: &mut Criterion) {
    // 52224 × 2048 Q4_1 = 66.8 MB, far beyond every cache.
    let (rows, cols) = (52224, 2048);
    let (q, p) = q4_1_pair(rows, cols, 3);
    bench_widths(
        c,
        "gemv_64MB",
        "q4_1",
        WeightMatrix::Q4_1(&q),
        rows,
        cols,
        &[1],
    );
    bench_widths(
        c,
        "gemv_64MB",
        "q4_1x8",
        WeightMatrix::Q4_1x8(&p),
        rows,
        cols,
        &[1],
    );
}

fn model_shapes(c: &mut Criterion) {
    let widths = [1, 4, 16, 64];
    let (rows, cols) = (1536, 576);
    let (q, p) = q4_1_pair(rows, cols, 1);
    bench_widths(
        c,
        "matmul",
        "q4_1_1536x576",
        WeightMatrix::Q4_1(&q),
        rows,
        cols,
        &widths,
    );
    bench_widths(
        c,
        "matmul",
        "q4_1x8_1536x576",
        WeightMatrix::Q4_1x8(&p),
        rows,
        cols,
        &widths,
    );

    let (rows, cols) = (49152, 576);
    let wf = random_f32(rows * cols, 2);
    let mut q8 = vec![BlockQ8_0::default(); rows * cols / QK];
    quantize_row_q8_0(&wf, &mut q8);
    let mut p8 = vec![BlockQ8_0x8::default(); q8.len() / GROUP];
    repack_q8_0(&q8, rows, cols, &mut p8).unwrap();
    bench_widths(
        c,
        "matmul",
        "q8_0_49152x576",
        WeightMatrix::Q8_0(&q8),
        rows,
        cols,
        &widths[..2],
    );
    bench_widths(
        c,
        "matmul",
        "q8_0x8_49152x576",
        WeightMatrix::Q8_0x8(&p8),
        rows,
        cols,
        &widths[..2],
    );
}

criterion_group! {
    name = matmul_benches;
    config = Criterion::default()
        .sample_size(20)
        .warm_up_time(std::time::Duration::from_millis(500))
        .measurement_time(std::time::Duration::from_secs(2));
    targets = membw, gemv_64mb, model_shapes
}
criterion_main!(matmul_benches);
