//! Element-wise ops, quant round trips and dispatch, against f64 references.

mod common;

use common::{all_kernel_sets, Rng};
use coordgen_kernels::ops::*;
use coordgen_kernels::quant::*;
use coordgen_kernels::{bf16, f16, Error, KernelSet, Tier};

#[test]
fn rms_norm_matches_f64() {
    let mut rng = Rng::new(1);
    let x = rng.vec(576, |r| r.unit() * 5.0);
    let w = rng.vec(576, |r| r.unit());
    let mut out = vec![0.0; 576];
    rms_norm(&x, &w, 1e-5, &mut out);
    let mean: f64 = x.iter().map(|&v| (v as f64).powi(2)).sum::<f64>() / 576.0;
    let scale = 1.0 / (mean + 1e-5).sqrt();
    for i in 0..576 {
        let exact = x[i] as f64 * scale * w[i] as f64;
        assert!(
            (out[i] as f64 - exact).abs() <= 1e-6 * (1.0 + exact.abs()),
            "{i}"
        );
    }
}

#[test]
fn rope_matches_f64_rotation_and_is_ggml_normal_mode() {
    let (n_heads, head_dim, base) = (3, 64, 100000.0f32);
    let x0 = Rng::new(2).vec(n_heads * head_dim, Rng::unit);
    for pos in [0, 1, 17, 4095] {
        let mut x = x0.clone();
        rope_norm_inplace(&mut x, n_heads, head_dim, pos, base).unwrap();
        for h in 0..n_heads {
            for i in 0..head_dim / 2 {
                let theta = pos as f64 * (base as f64).powf(-2.0 * i as f64 / head_dim as f64);
                let (s, c) = theta.sin_cos();
                let (a, b) = (
                    x0[h * head_dim + 2 * i] as f64,
                    x0[h * head_dim + 2 * i + 1] as f64,
                );
                // Tolerance: ggml's repeated f32 multiplication of theta drifts
                // by ~1e-7 relative per pair, i.e. ~1e-3 rad at pos 4095.
                let tol = 1e-5 + 1e-6 * pos as f64;
                assert!(
                    (x[h * head_dim + 2 * i] as f64 - (a * c - b * s)).abs() <= tol,
                    "pos {pos} h {h} i {i}"
                );
                assert!(
                    (x[h * head_dim + 2 * i + 1] as f64 - (a * s + b * c)).abs() <= tol,
                    "pos {pos} h {h} i {i}"
                );
            }
        }
    }
    let mut x = x0.clone();
    assert!(matches!(
        rope_norm_inplace(&mut x, 4, 64, 0, base),
        Err(Error::Shape { .. })
    ));
    assert!(matches!(
        rope_norm_inplace(&mut x[..189], 3, 63, 0, base),
        Err(Error::NotMultiple { .. })
    ));
}

#[test]
fn silu_mul_add_softmax_argmax() {
    let g = [-3.0f32, 0.0, 1.5, 20.0];
    let u = [2.0f32, 5.0, -1.0, 0.5];
    let mut out = [0.0; 4];
    silu_mul(&g, &u, &mut out);
    for i in 0..4 {
        let exact = g[i] as f64 / (1.0 + (-(g[i] as f64)).exp()) * u[i] as f64;
        assert!((out[i] as f64 - exact).abs() < 1e-6 * (1.0 + exact.abs()));
    }
    let mut x: Vec<f32> = (0..37).map(|i| i as f32).collect();
    add_inplace(&mut x, &[1.0; 37]);
    assert_eq!(x[36], 37.0);
    let mut s = vec![1.0f32, 2.0, 3.0, 1000.0, -1000.0];
    softmax_inplace(&mut s);
    assert!((s.iter().sum::<f32>() - 1.0).abs() < 1e-6);
    assert!(s[3] > 0.999 && s[4] == 0.0);
    let mut e: Vec<f32> = vec![];
    softmax_inplace(&mut e);
    assert_eq!(argmax(&[1.0, 3.0, f32::NAN, 3.0, 2.0]), 1);
    assert_eq!(argmax(&[]), 0);
}

#[test]
fn quant_round_trips_within_half_a_step() {
    let x = Rng::new(3).activations(64 * QK);
    let mut y = vec![0.0; x.len()];
    let mut q40 = vec![BlockQ4_0::default(); 64];
    quantize_row_q4_0(&x, &mut q40);
    dequantize_row_q4_0(&q40, &mut y);
    for (b, (xb, yb)) in x.chunks(QK).zip(y.chunks(QK)).enumerate() {
        let d = q40[b].d.to_f32().abs();
        for (a, c) in xb.iter().zip(yb) {
            // Half a step plus the clamp at +7 of the positive side.
            assert!(
                (a - c).abs() <= d * 1.01 + 1e-6,
                "q4_0 block {b}: {a} vs {c} (d {d})"
            );
        }
    }
    let mut q41 = vec![BlockQ4_1::default(); 64];
    quantize_row_q4_1(&x, &mut q41);
    dequantize_row_q4_1(&q41, &mut y);
    for (b, (xb, yb)) in x.chunks(QK).zip(y.chunks(QK)).enumerate() {
        let tol = q41[b].d.to_f32() * 0.51 + q41[b].m.to_f32().abs() * 1e-3 + 1e-6;
        for (a, c) in xb.iter().zip(yb) {
            assert!((a - c).abs() <= tol, "q4_1 block {b}: {a} vs {c}");
        }
    }
    let mut q80 = vec![BlockQ8_0::default(); 64];
    quantize_row_q8_0(&x, &mut q80);
    dequantize_row_q8_0(&q80, &mut y);
    let mut q81 = vec![BlockQ8_1::default(); 64];
    quantize_row_q8_1(&x, &mut q81);
    for (b, (xb, yb)) in x.chunks(QK).zip(y.chunks(QK)).enumerate() {
        let d = q80[b].d.to_f32();
        for (a, c) in xb.iter().zip(yb) {
            assert!((a - c).abs() <= d * 0.51 + a.abs() * 1e-3, "q8_0 block {b}");
        }
        assert_eq!(q81[b].qs, q80[b].qs);
        let sum: i32 = q81[b].qs.iter().map(|&q| q as i32).sum();
        let s = q81[b].s.to_f32();
        assert!((s - d * sum as f32).abs() <= 2e-3 * (d * sum as f32).abs() + 1e-7);
        assert!(q80[b].qs.iter().all(|&q| q != i8::MIN));
    }
}

#[test]
fn q8_rounds_half_to_even() {
    // amax = 127 makes id exactly 1, so x.5 values are exact ties.
    let mut x = vec![0.0f32; QK];
    x[0] = 127.0;
    x[1] = 0.5;
    x[2] = 1.5;
    x[3] = -2.5;
    let mut q = [BlockQ8_0::default()];
    quantize_row_q8_0(&x, &mut q);
    assert_eq!(&q[0].qs[..4], &[127, 0, 2, -2]);
    assert_eq!(q[0].d.to_f32(), 1.0);
}

#[test]
fn block_layouts_are_ggml() {
    assert_eq!(std::mem::size_of::<BlockQ4_0>(), 18);
    assert_eq!(std::mem::size_of::<BlockQ4_1>(), 20);
    assert_eq!(std::mem::size_of::<BlockQ8_0>(), 34);
    assert_eq!(std::mem::size_of::<BlockQ8_1>(), 36);
    // Element j < 16 is the low nibble of qs[j], element j + 16 the high one.
    let mut b = BlockQ4_0 {
        d: f16::ONE,
        qs: [0x88; 16],
    };
    b.qs[0] = 0xF9; // element 0 → 9 - 8 = 1, element 16 → 15 - 8 = 7
    let mut y = [0.0; QK];
    dequantize_row_q4_0(&[b], &mut y);
    assert_eq!((y[0], y[16], y[1]), (1.0, 7.0, 0.0));
}

#[test]
fn half_conversions() {
    let v = [1.5f32, -0.0, 65504.0, 1e-8];
    let h: Vec<f16> = v.iter().map(|&x| f16::from_f32(x)).collect();
    let b: Vec<bf16> = v.iter().map(|&x| bf16::from_f32(x)).collect();
    let mut out = [0.0; 4];
    f16_to_f32_row(&h, &mut out);
    assert_eq!(out[..3], v[..3]);
    bf16_to_f32_row(&b, &mut out);
    for i in 0..4 {
        assert_eq!(out[i], b[i].to_f32());
    }
}

#[test]
fn dispatch_tiers() {
    let avail = KernelSet::available();
    assert_eq!(avail[0], Tier::Scalar);
    for t in Tier::ALL {
        assert_eq!(Tier::parse(&t.to_string()), Some(t));
        assert_eq!(KernelSet::for_tier(t).is_some(), avail.contains(&t));
        if let Some(ks) = KernelSet::for_tier(t) {
            assert_eq!(ks.tier, t);
        }
    }
    assert!(avail.contains(&KernelSet::best().tier));
    assert_eq!(Tier::parse("AVX512VNNI"), Some(Tier::Avx512Vnni));
    assert_eq!(Tier::parse("sse"), None);
    eprintln!(
        "available tiers: {avail:?}, best: {}",
        KernelSet::best().tier
    );
}

#[test]
fn rope_with_cached_angles_is_bitwise_rope() {
    for (head_dim, theta) in [(64usize, 100000.0f32), (128, 10000.0), (2, 500.0), (0, 1.0)] {
        for pos in [0i32, 1, 7, 1023, 4095, 100_000] {
            let n_heads = 3;
            let x: Vec<f32> = (0..n_heads * head_dim)
                .map(|i| ((i * 37 % 101) as f32 - 50.0) / 7.0)
                .collect();
            let mut a = x.clone();
            coordgen_kernels::ops::rope_norm_inplace(&mut a, n_heads, head_dim, pos, theta)
                .unwrap();
            let mut angles = vec![(0.0, 0.0); head_dim / 2];
            coordgen_kernels::ops::rope_angles(pos, head_dim, theta, &mut angles).unwrap();
            let mut b = x.clone();
            coordgen_kernels::ops::rope_norm_with_angles(&mut b, n_heads, head_dim, &angles)
                .unwrap();
            assert_eq!(
                a.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                b.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                "head_dim {head_dim} pos {pos}"
            );
        }
    }
}

#[test]
fn softmax_probability_matches_an_f64_softmax() {
    let mut rng = Rng::new(77);
    let logits: Vec<f32> = rng.vec(1000, |r| r.unit() * 12.0);
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let sum: f64 = logits.iter().map(|&l| (l as f64 - max).exp()).sum();
    let mut scratch = Vec::new();
    for ks in all_kernel_sets() {
        for index in [0, 1, 500, 999] {
            let got = coordgen_kernels::ops::softmax_probability(&ks, &logits, index, &mut scratch);
            let want = (logits[index] as f64 - max).exp() / sum;
            assert!(
                (got as f64 - want).abs() <= 1e-5 * want + 1e-9,
                "{}: index {index}: {got} vs {want}",
                ks.tier
            );
        }
        assert!(
            coordgen_kernels::ops::softmax_probability(&ks, &logits, 1000, &mut scratch).is_nan()
        );
    }
}

#[test]
fn softmax_top_k_lists_the_likeliest_entries_in_order() {
    let mut rng = Rng::new(78);
    let mut logits: Vec<f32> = rng.vec(3000, |r| r.unit() * 10.0);
    logits[17] = logits[2999]; // a tie: the lower index first
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let sum: f64 = logits.iter().map(|&l| (l as f64 - max).exp()).sum();
    let mut order: Vec<usize> = (0..logits.len()).collect();
    order.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]).then(a.cmp(&b)));
    let (mut scratch, mut top) = (Vec::new(), Vec::new());
    for ks in all_kernel_sets() {
        for (k, index) in [(0, 3), (1, 5), (4, 2999), (8, 17), (3, 5000)] {
            let p = coordgen_kernels::ops::softmax_probability_top_k(
                &ks,
                &logits,
                index,
                k,
                &mut scratch,
                &mut top,
            );
            let plain =
                coordgen_kernels::ops::softmax_probability(&ks, &logits, index, &mut scratch);
            assert!(p.to_bits() == plain.to_bits() || (p.is_nan() && plain.is_nan()));
            assert_eq!(top.len(), k, "{}", ks.tier);
            for (rank, &(i, q)) in top.iter().enumerate() {
                assert_eq!(i as usize, order[rank], "{}: rank {rank}", ks.tier);
                let want = (logits[i as usize] as f64 - max).exp() / sum;
                assert!(
                    (q as f64 - want).abs() <= 1e-5 * want + 1e-9,
                    "{q} vs {want}"
                );
            }
        }
    }
}

#[test]
fn rms_norm_rows_equals_rms_norm_row_by_row() {
    let mut rng = Rng::new(91);
    for rows in 0..10 {
        let cols = 576;
        let x = rng.vec(rows * cols, |r| r.unit() * 4.0);
        let w = rng.vec(cols, |r| r.unit());
        let mut got = vec![0.0; rows * cols];
        rms_norm_rows(&x, &w, 1e-5, &mut got);
        let mut want = vec![0.0; rows * cols];
        for (row, out) in x.chunks_exact(cols).zip(want.chunks_exact_mut(cols)) {
            rms_norm(row, &w, 1e-5, out);
        }
        assert!(
            got.iter()
                .zip(&want)
                .all(|(a, b)| a.to_bits() == b.to_bits()),
            "{rows} rows"
        );
    }
}
