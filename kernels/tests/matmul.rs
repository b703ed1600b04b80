//! matmul: batch invariance (bitwise), agreement with a dequantized f64
//! reference, agreement across tiers, and shape errors.

mod common;

use common::{all_kernel_sets, Rng};
use coordgen_kernels::quant::*;
use coordgen_kernels::repack::*;
use coordgen_kernels::{f16, matmul, Error, KernelSet, MatmulScratch, WeightMatrix};

/// Owned weights of every type, quantized from the same f32 matrix.
struct Weights {
    f32: Vec<f32>,
    f16: Vec<f16>,
    q4_0: Vec<BlockQ4_0>,
    q4_1: Vec<BlockQ4_1>,
    q8_0: Vec<BlockQ8_0>,
    /// The quantized weights repacked in 8-row groups (when rows % 8 == 0).
    repacked: Option<(Vec<BlockQ4_0x8>, Vec<BlockQ4_1x8>, Vec<BlockQ8_0x8>)>,
}

impl Weights {
    fn new(rows: usize, cols: usize, seed: u64) -> Self {
        let mut rng = Rng::new(seed);
        let f32: Vec<f32> = rng.vec(rows * cols, |r| r.unit() * 0.5);
        let nb = rows * cols / QK;
        let mut q4_0 = vec![BlockQ4_0::default(); nb];
        let mut q4_1 = vec![BlockQ4_1::default(); nb];
        let mut q8_0 = vec![BlockQ8_0::default(); nb];
        quantize_row_q4_0(&f32, &mut q4_0);
        quantize_row_q4_1(&f32, &mut q4_1);
        quantize_row_q8_0(&f32, &mut q8_0);
        let f16 = f32.iter().map(|&v| f16::from_f32(v)).collect();
        let repacked = rows.is_multiple_of(GROUP).then(|| {
            let ng = nb / GROUP;
            let mut a = vec![BlockQ4_0x8::default(); ng];
            let mut b = vec![BlockQ4_1x8::default(); ng];
            let mut c = vec![BlockQ8_0x8::default(); ng];
            repack_q4_0(&q4_0, rows, cols, &mut a).unwrap();
            repack_q4_1(&q4_1, rows, cols, &mut b).unwrap();
            repack_q8_0(&q8_0, rows, cols, &mut c).unwrap();
            (a, b, c)
        });
        Weights {
            f32,
            f16,
            q4_0,
            q4_1,
            q8_0,
            repacked,
        }
    }

    fn all(&self) -> Vec<(&'static str, WeightMatrix<'_>)> {
        let mut all = vec![
            ("f32", WeightMatrix::F32(&self.f32)),
            ("f16", WeightMatrix::F16(&self.f16)),
            ("q4_0", WeightMatrix::Q4_0(&self.q4_0)),
            ("q4_1", WeightMatrix::Q4_1(&self.q4_1)),
            ("q8_0", WeightMatrix::Q8_0(&self.q8_0)),
        ];
        if let Some((a, b, c)) = &self.repacked {
            all.push(("q4_0x8", WeightMatrix::Q4_0x8(a)));
            all.push(("q4_1x8", WeightMatrix::Q4_1x8(b)));
            all.push(("q8_0x8", WeightMatrix::Q8_0x8(c)));
        }
        all
    }

    /// The weights as the kernels see them, dequantized to f32.
    fn dequantized(&self, w: &WeightMatrix) -> Vec<f32> {
        let mut out = vec![0.0; self.f32.len()];
        match w {
            WeightMatrix::F32(v) => out.copy_from_slice(v),
            WeightMatrix::F16(v) => f16_to_f32_row(v, &mut out),
            WeightMatrix::Q4_0(v) => dequantize_row_q4_0(v, &mut out),
            WeightMatrix::Q4_1(v) => dequantize_row_q4_1(v, &mut out),
            WeightMatrix::Q8_0(v) => dequantize_row_q8_0(v, &mut out),
            WeightMatrix::Q4_0x8(_) => dequantize_row_q4_0(&self.q4_0, &mut out),
            WeightMatrix::Q4_1x8(_) => dequantize_row_q4_1(&self.q4_1, &mut out),
            WeightMatrix::Q8_0x8(_) => dequantize_row_q8_0(&self.q8_0, &mut out),
            WeightMatrix::Q4K(_) | WeightMatrix::Q5K(_) | WeightMatrix::Q6K(_) => {
                unreachable!("these tests build no K-quant weights")
            }
        }
        out
    }
}

fn run(
    ks: &KernelSet,
    w: &WeightMatrix,
    rows: usize,
    cols: usize,
    x: &[f32],
    n: usize,
) -> Vec<f32> {
    let mut out = vec![f32::NAN; n * rows];
    matmul(
        ks,
        w,
        rows,
        cols,
        x,
        n,
        &mut out,
        &mut MatmulScratch::default(),
    )
    .unwrap();
    out
}

#[test]
fn batch_invariance_every_weight_type_and_tier() {
    // 200 rows: not a multiple of the rows-per-task, so task edges move with n.
    let (rows, cols) = (200, 320);
    let weights = Weights::new(rows, cols, 1);
    let x = Rng::new(2).activations(32 * cols);
    for ks in all_kernel_sets() {
        for (name, w) in weights.all() {
            let wide7 = run(&ks, &w, rows, cols, &x[..7 * cols], 7);
            let wide32 = run(&ks, &w, rows, cols, &x, 32);
            for j in 0..32 {
                let single = run(&ks, &w, rows, cols, &x[j * cols..(j + 1) * cols], 1);
                let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
                assert_eq!(
                    bits(&single),
                    bits(&wide32[j * rows..(j + 1) * rows]),
                    "{} {name}: row {j} of n=32 differs from n=1",
                    ks.tier
                );
                if j < 7 {
                    assert_eq!(
                        bits(&single),
                        bits(&wide7[j * rows..(j + 1) * rows]),
                        "{} {name}: row {j} of n=7 differs from n=1",
                        ks.tier
                    );
                }
            }
        }
    }
}

#[test]
fn scratch_reuse_across_shapes_gives_same_results() {
    let ks = KernelSet::best();
    let (rows, cols) = (48, 128);
    let weights = Weights::new(rows, cols, 3);
    let x = Rng::new(4).activations(9 * cols);
    let mut scratch = MatmulScratch::default();
    for (name, w) in weights.all() {
        for n in [9, 1, 4, 2, 9] {
            let mut out = vec![0.0; n * rows];
            matmul(
                ks,
                &w,
                rows,
                cols,
                &x[..n * cols],
                n,
                &mut out,
                &mut scratch,
            )
            .unwrap();
            assert_eq!(
                out,
                run(ks, &w, rows, cols, &x[..n * cols], n),
                "{name} n={n}"
            );
        }
    }
}

/// Against an f64 product of the dequantized weights with the *unquantized*
/// activations. Tolerance per output, with `d_b` the Q8 scale of activation
/// block `b`: `Σ_k |w_k| · 0.6 · d_b(k)` (activation rounding: half a step
/// plus the f16 rounding of `d`), plus for Q4_1 `Σ_b |m_b| · |s_b| · 2^-9`
/// (the f16 `s` field), plus `1e-5 · Σ_k |w_k·x_k|` for f32 accumulation
/// (f32/f16 weights only get this last term).
#[test]
fn matches_dequantized_f64_reference() {
    let (rows, cols, n) = (37, 256, 3);
    let weights = Weights::new(rows, cols, 5);
    let x = Rng::new(6).activations(n * cols);
    for ks in all_kernel_sets() {
        for (name, w) in weights.all() {
            let wd = weights.dequantized(&w);
            let got = run(&ks, &w, rows, cols, &x, n);
            let quantized_acts = !matches!(w, WeightMatrix::F32(_) | WeightMatrix::F16(_));
            for j in 0..n {
                let xr = &x[j * cols..(j + 1) * cols];
                for r in 0..rows {
                    let wr = &wd[r * cols..(r + 1) * cols];
                    let exact: f64 = wr.iter().zip(xr).map(|(&a, &b)| a as f64 * b as f64).sum();
                    let mut tol: f64 = 1e-5
                        * wr.iter()
                            .zip(xr)
                            .map(|(&a, &b)| (a as f64 * b as f64).abs())
                            .sum::<f64>();
                    if quantized_acts {
                        for (wb, xb) in wr.chunks(QK).zip(xr.chunks(QK)) {
                            let d = xb.iter().fold(0.0f32, |m, v| m.max(v.abs())) as f64 / 127.0;
                            tol += wb.iter().map(|&v| v.abs() as f64).sum::<f64>() * 0.6 * d;
                            if let WeightMatrix::Q4_1(_) | WeightMatrix::Q4_1x8(_) = w {
                                let s: f64 = xb.iter().map(|&v| v.abs() as f64).sum();
                                let m = wb.iter().fold(f32::MAX, |m, &v| m.min(v)).abs() as f64;
                                tol += m * (s + 127.0 * d) * 2f64.powi(-9);
                            }
                        }
                    }
                    let g = got[j * rows + r] as f64;
                    assert!(
                        (g - exact).abs() <= tol + 1e-6,
                        "{} {name} [{j}][{r}]: {g} vs {exact} (tol {tol})",
                        ks.tier
                    );
                }
            }
        }
    }
}

/// Every tier agrees with the scalar tier (all tiers quantize activations
/// bit-identically, so only the dots' reassociation differs).
#[test]
fn tiers_agree_with_scalar() {
    let (rows, cols, n) = (64, 576, 5);
    let weights = Weights::new(rows, cols, 7);
    let x = Rng::new(8).activations(n * cols);
    let scalar = KernelSet::scalar();
    for ks in all_kernel_sets() {
        for (name, w) in weights.all() {
            let a = run(&ks, &w, rows, cols, &x, n);
            let b = run(&scalar, &w, rows, cols, &x, n);
            let scale = b.iter().fold(0.0f32, |m, v| m.max(v.abs())).max(1e-3);
            for (i, (p, q)) in a.iter().zip(&b).enumerate() {
                assert!(
                    (p - q).abs() <= 1e-4 * scale,
                    "{} {name} [{i}]: {p} vs {q}",
                    ks.tier
                );
            }
        }
    }
}

#[test]
fn shape_errors_are_errors() {
    let ks = KernelSet::best();
    let weights = Weights::new(4, 64, 9);
    let x = vec![0.0; 2 * 64];
    let mut out = vec![0.0; 2 * 4];
    let mut s = MatmulScratch::default();
    let q = WeightMatrix::Q4_1(&weights.q4_1);
    assert!(matches!(
        matmul(ks, &q, 4, 64, &x, 3, &mut out, &mut s),
        Err(Error::Shape { .. })
    ));
    assert!(matches!(
        matmul(ks, &q, 5, 64, &x, 2, &mut out, &mut s),
        Err(Error::Shape { .. })
    ));
    assert!(matches!(
        matmul(ks, &q, 4, 64, &x, 2, &mut out[..7], &mut s),
        Err(Error::Shape { .. })
    ));
    let f = WeightMatrix::F32(&weights.f32[..4 * 60]);
    assert!(matches!(
        matmul(ks, &f, 4, 60, &x, 2, &mut out, &mut s),
        Err(Error::Shape { .. })
    ));
    let q2 = WeightMatrix::Q8_0(&weights.q8_0[..6]);
    assert!(matches!(
        matmul(ks, &q2, 4, 48, &x[..96], 2, &mut out, &mut s),
        Err(Error::NotMultiple { .. })
    ));
    assert!(matmul(ks, &q, usize::MAX, 64, &x, 2, &mut out, &mut s).is_err());
    // n = 0 is a valid empty product.
    matmul(ks, &q, 4, 64, &[], 0, &mut [], &mut s).unwrap();
}

/// Repacked weights give, per output, bitwise what the row-major kernels
/// give (and so what llama.cpp gives), in every tier and at every width.
#[test]
fn repacked_weights_match_row_major_bitwise() {
    let (rows, cols) = (48, 576);
    let weights = Weights::new(rows, cols, 11);
    let (a, b, c) = weights.repacked.as_ref().unwrap();
    let x = Rng::new(12).activations(33 * cols);
    let bits = |v: Vec<f32>| v.into_iter().map(f32::to_bits).collect::<Vec<_>>();
    for ks in all_kernel_sets() {
        for n in [1, 2, 3, 4, 5, 7, 8, 9, 17, 33] {
            let x = &x[..n * cols];
            for (name, packed, plain) in [
                (
                    "q4_0",
                    WeightMatrix::Q4_0x8(a),
                    WeightMatrix::Q4_0(&weights.q4_0),
                ),
                (
                    "q4_1",
                    WeightMatrix::Q4_1x8(b),
                    WeightMatrix::Q4_1(&weights.q4_1),
                ),
                (
                    "q8_0",
                    WeightMatrix::Q8_0x8(c),
                    WeightMatrix::Q8_0(&weights.q8_0),
                ),
            ] {
                assert_eq!(
                    bits(run(&ks, &packed, rows, cols, x, n)),
                    bits(run(&KernelSet::scalar(), &plain, rows, cols, x, n)),
                    "{} {name} n={n}: repacked differs from the scalar row kernels",
                    ks.tier
                );
            }
        }
    }
}

/// Q8_0 weights may hold -128 in a (hostile or foreign) file: the repacked
/// kernels still compute the exact integer sums.
#[test]
fn repacked_q8_0_handles_minus_128() {
    let (rows, cols, n) = (8, 64, 3);
    let mut w = Weights::new(rows, cols, 13).q8_0;
    for b in w.iter_mut().step_by(3) {
        b.qs[5] = -128;
        b.qs[31] = -128;
    }
    let mut packed = vec![BlockQ8_0x8::default(); w.len() / GROUP];
    repack_q8_0(&w, rows, cols, &mut packed).unwrap();
    let x = Rng::new(14).activations(n * cols);
    for ks in all_kernel_sets() {
        let got = run(&ks, &WeightMatrix::Q8_0x8(&packed), rows, cols, &x, n);
        let want = run(
            &KernelSet::scalar(),
            &WeightMatrix::Q8_0(&w),
            rows,
            cols,
            &x,
            n,
        );
        assert_eq!(
            got.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
            want.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
            "{}",
            ks.tier
        );
    }
}

#[test]
fn repack_shape_errors_are_errors() {
    let w = Weights::new(8, 64, 15);
    let mut out = vec![BlockQ4_1x8::default(); 2];
    assert!(repack_q4_1(&w.q4_1, 8, 64, &mut out).is_ok());
    assert!(matches!(
        repack_q4_1(&w.q4_1[..14], 7, 64, &mut out),
        Err(Error::NotMultiple { .. })
    ));
    assert!(matches!(
        repack_q4_1(&w.q4_1, 8, 64, &mut out[..1]),
        Err(Error::Shape { .. })
    ));
    let ks = KernelSet::best();
    let x = vec![0.0; 64];
    let mut o = [0.0; 8];
    let packed = WeightMatrix::Q4_1x8(&out);
    assert!(matches!(
        matmul(
            ks,
            &packed,
            4,
            64,
            &x,
            1,
            &mut o[..4],
            &mut MatmulScratch::default()
        ),
        Err(Error::NotMultiple { .. })
    ));
}
