//! Decode/verify matmul throughput, in bytes of weights read per second.
//!
//! Shapes are SmolLM2-135M's: the FFN projection (1536 × 576, Q4_1) and the
//! tied output head (49152 × 576, Q8_0), at widths n = 1 (decode) and 4, 16
//! (verification). Run with `cargo bench -p coordgen-kernels --bench matmul`;
//! `COORDGEN_KERNEL_TIER=scalar` etc. compares tiers.

use coordgen_kernels::quant::*;
use coordgen_kernels::{matmul, KernelSet, MatmulScratch, WeightMatrix};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
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

fn bench_shape(c: &mut Criterion, name: &str, w: WeightMatrix, rows: usize, cols: usize) {
    let ks = KernelSet::best();
    let mut group = c.benchmark_group(format!("matmul/{name}/{}", ks.tier));
    group.throughput(Throughput::Bytes(w.size_bytes() as u64));
    for n in [1usize, 4, 16] {
        let x = random_f32(n * cols, 7);
        let mut out = vec![0.0f32; n * rows];
        let mut scratch = MatmulScratch::default();
        group.bench_function(format!("n={n}"), |b| {
            b.iter(|| {
                matmul(ks, &w, rows, cols, black_box(&x), n, &mut out, &mut scratch).unwrap();
                black_box(&out);
            })
        });
    }
    group.finish();
}

fn benches(c: &mut Criterion) {
    let (rows, cols) = (1536, 576);
    let wf = random_f32(rows * cols, 1);
    let mut q4_1 = vec![BlockQ4_1::default(); rows * cols / QK];
    quantize_row_q4_1(&wf, &mut q4_1);
    bench_shape(c, "q4_1_1536x576", WeightMatrix::Q4_1(&q4_1), rows, cols);

    let (rows, cols) = (49152, 576);
    let wf = random_f32(rows * cols, 2);
    let mut q8_0 = vec![BlockQ8_0::default(); rows * cols / QK];
    quantize_row_q8_0(&wf, &mut q8_0);
    bench_shape(c, "q8_0_49152x576", WeightMatrix::Q8_0(&q8_0), rows, cols);
}

criterion_group! {
    name = matmul_benches;
    config = Criterion::default()
        .sample_size(30)
        .warm_up_time(std::time::Duration::from_millis(500))
        .measurement_time(std::time::Duration::from_secs(2));
    targets = benches
}
criterion_main!(matmul_benches);
