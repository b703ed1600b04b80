//! Quick single-thread kernel timings (min over repetitions, robust to a noisy host):
//! `cargo run -p coordgen-kernels --release --example kernel_speed`.
use coordgen_kernels::quant::*;
use coordgen_kernels::{KernelSet, Tier};
use std::hint::black_box;
use std::time::Instant;

fn min_ns(reps: usize, inner: usize, mut f: impl FnMut()) -> f64 {
    let mut best = f64::MAX;
    for _ in 0..reps {
        let t = Instant::now();
        for _ in 0..inner {
            f();
        }
        best = best.min(t.elapsed().as_nanos() as f64 / inner as f64);
    }
    best
}

fn main() {
    if std::env::args().any(|a| a == "matmul") {
        matmul_speed();
        return;
    }
    let nb = 18; // 576 columns
    let xf: Vec<f32> = (0..nb * QK)
        .map(|i| ((i * 7919) % 1000) as f32 / 500.0 - 1.0)
        .collect();
    let mut q41 = vec![BlockQ4_1::default(); nb];
    quantize_row_q4_1(&xf, &mut q41);
    let mut q80 = vec![BlockQ8_0::default(); nb];
    quantize_row_q8_0(&xf, &mut q80);
    let mut q81 = vec![BlockQ8_1::default(); nb];
    quantize_row_q8_1(&xf, &mut q81);
    for tier in [Tier::Scalar, Tier::Avx2, Tier::Avx512Vnni] {
        let Some(ks) = KernelSet::for_tier(tier) else {
            continue;
        };
        let t1 = min_ns(50, 2000, || {
            black_box((ks.vec_dot_q4_1_q8_1)(black_box(&q41), black_box(&q81)));
        });
        let t4 = min_ns(50, 2000, || {
            black_box((ks.vec_dot_q4_1_q8_1_x4)(
                black_box(&q41),
                [&q81, &q81, &q81, &q81],
            ));
        });
        let t8 = min_ns(50, 2000, || {
            black_box((ks.vec_dot_q8_0_q8_0)(black_box(&q80), black_box(&q80)));
        });
        let t84 = min_ns(50, 2000, || {
            black_box((ks.vec_dot_q8_0_q8_0_x4)(
                black_box(&q80),
                [&q80, &q80, &q80, &q80],
            ));
        });
        let tq = min_ns(50, 2000, || {
            (ks.quantize_row_q8_1)(black_box(&xf), &mut q81);
        });
        println!(
            "{tier:>11}: q4_1·q8_1 {:.2} ns/block, x4 {:.2} ns/block/row | q8_0·q8_0 {:.2} ns/block, x4 {:.2} | quantize q8_1 {:.2} ns/block",
            t1 / nb as f64, t4 / nb as f64 / 4.0, t8 / nb as f64, t84 / nb as f64 / 4.0, tq / nb as f64
        );
    }
}

/// Matmul throughput (bytes of weights per second), best of many runs.
#[allow(dead_code)]
pub fn matmul_speed() {
    use coordgen_kernels::{matmul, MatmulScratch, WeightMatrix};
    let ks = KernelSet::best();
    let shapes: [(&str, usize, usize); 2] =
        [("q4_1 1536x576", 1536, 576), ("q8_0 49152x576", 49152, 576)];
    for (name, rows, cols) in shapes {
        let wf: Vec<f32> = (0..rows * cols)
            .map(|i| ((i * 7919) % 1000) as f32 / 500.0 - 1.0)
            .collect();
        let mut q41 = vec![BlockQ4_1::default(); rows * cols / QK];
        let mut q80 = vec![BlockQ8_0::default(); rows * cols / QK];
        let w = if name.starts_with("q4_1") {
            quantize_row_q4_1(&wf, &mut q41);
            WeightMatrix::Q4_1(&q41)
        } else {
            quantize_row_q8_0(&wf, &mut q80);
            WeightMatrix::Q8_0(&q80)
        };
        for n in [1usize, 4, 16] {
            let x: Vec<f32> = (0..n * cols)
                .map(|i| ((i * 31) % 200) as f32 / 100.0 - 1.0)
                .collect();
            let mut out = vec![0.0; n * rows];
            let mut scratch = MatmulScratch::default();
            let inner = 1;
            let t = min_ns(if rows > 10000 { 200 } else { 3000 }, inner, || {
                matmul(ks, &w, rows, cols, black_box(&x), n, &mut out, &mut scratch).unwrap();
            });
            println!(
                "{} {name} n={n:>2}: {:8.1} µs  {:6.1} GB/s of weights",
                ks.tier,
                t / 1e3,
                w.size_bytes() as f64 / t
            );
        }
    }
}
