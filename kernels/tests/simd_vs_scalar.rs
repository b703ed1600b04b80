//! Every SIMD kernel against its scalar twin, per instruction-set tier.
//!
//! Tolerances:
//! * quantized dots: `|simd - scalar| <= 1e-5 · B` where
//!   `B = Σ_blocks (|dx·dy| · Σ_j |qx_j·qy_j| + |mx·sy|)` bounds every partial
//!   sum either order can form, so the slack is only f32 reassociation;
//! * f32 / f16 dots: `1e-5 · Σ |x_i·y_i|`;
//! * `axpy_f16_f32`: per element `2^-22 · (|a·x| + |y|)` (FMA vs mul+add);
//! * activation quantizers and `scale_f32`: bit-identical;
//! * the `_x4` kernels: bitwise equal, per row, to the tier's single-row kernel.
//!
//! A tier this CPU lacks is skipped with a note on stderr.

mod common;

use common::{kernels_or_skip, Rng};
use coordgen_kernels::quant::*;
use coordgen_kernels::scalar::*;
use coordgen_kernels::{f16, Tier};
use proptest::prelude::*;

fn q4_bound(dxdy: f32, qx: impl Fn(usize) -> i32, qy: &[i8; QK]) -> f32 {
    (0..QK)
        .map(|j| (qx(j) * qy[j] as i32).abs() as f32)
        .sum::<f32>()
        * dxdy.abs()
}

fn nib(qs: &[u8; 16], j: usize) -> i32 {
    if j < 16 {
        (qs[j] & 15) as i32
    } else {
        (qs[j - 16] >> 4) as i32
    }
}

fn assert_close(what: &str, simd: f32, scalar: f32, bound: f32) {
    let tol = 1e-5 * bound + 1e-30;
    assert!(
        (simd - scalar).abs() <= tol,
        "{what}: simd {simd} vs scalar {scalar} (|diff| {} > tol {tol})",
        (simd - scalar).abs()
    );
}

fn check_q4_0(tier: Tier, nb: usize, seed: u64) {
    let Some(ks) = kernels_or_skip(tier) else {
        return;
    };
    let mut rng = Rng::new(seed);
    let x = rng.vec(nb, Rng::block_q4_0);
    let ys: Vec<Vec<BlockQ8_0>> = (0..4).map(|_| rng.vec(nb, Rng::block_q8_0)).collect();
    for y in &ys {
        let bound: f32 = x
            .iter()
            .zip(y)
            .map(|(a, b)| q4_bound(a.d.to_f32() * b.d.to_f32(), |j| nib(&a.qs, j) - 8, &b.qs))
            .sum();
        let simd = (ks.vec_dot_q4_0_q8_0)(&x, y);
        assert_close("q4_0·q8_0", simd, scalar_vec_dot_q4_0_q8_0(&x, y), bound);
    }
    let x4 = (ks.vec_dot_q4_0_q8_0_x4)(&x, [&ys[0], &ys[1], &ys[2], &ys[3]]);
    for (r, y) in ys.iter().enumerate() {
        assert_eq!(
            x4[r].to_bits(),
            (ks.vec_dot_q4_0_q8_0)(&x, y).to_bits(),
            "x4 row {r}"
        );
    }
}

fn check_q4_1(tier: Tier, nb: usize, seed: u64) {
    let Some(ks) = kernels_or_skip(tier) else {
        return;
    };
    let mut rng = Rng::new(seed);
    let x = rng.vec(nb, Rng::block_q4_1);
    let ys: Vec<Vec<BlockQ8_1>> = (0..4).map(|_| rng.vec(nb, Rng::block_q8_1)).collect();
    for y in &ys {
        let bound: f32 = x
            .iter()
            .zip(y)
            .map(|(a, b)| {
                q4_bound(a.d.to_f32() * b.d.to_f32(), |j| nib(&a.qs, j), &b.qs)
                    + (a.m.to_f32() * b.s.to_f32()).abs()
            })
            .sum();
        let simd = (ks.vec_dot_q4_1_q8_1)(&x, y);
        assert_close("q4_1·q8_1", simd, scalar_vec_dot_q4_1_q8_1(&x, y), bound);
    }
    let x4 = (ks.vec_dot_q4_1_q8_1_x4)(&x, [&ys[0], &ys[1], &ys[2], &ys[3]]);
    for (r, y) in ys.iter().enumerate() {
        assert_eq!(
            x4[r].to_bits(),
            (ks.vec_dot_q4_1_q8_1)(&x, y).to_bits(),
            "x4 row {r}"
        );
    }
}

fn check_q8_0(tier: Tier, nb: usize, seed: u64) {
    let Some(ks) = kernels_or_skip(tier) else {
        return;
    };
    let mut rng = Rng::new(seed);
    let x = rng.vec(nb, Rng::block_q8_0);
    let ys: Vec<Vec<BlockQ8_0>> = (0..4).map(|_| rng.vec(nb, Rng::block_q8_0)).collect();
    for y in &ys {
        let bound: f32 = x
            .iter()
            .zip(y)
            .map(|(a, b)| q4_bound(a.d.to_f32() * b.d.to_f32(), |j| a.qs[j] as i32, &b.qs))
            .sum();
        let simd = (ks.vec_dot_q8_0_q8_0)(&x, y);
        assert_close("q8_0·q8_0", simd, scalar_vec_dot_q8_0_q8_0(&x, y), bound);
    }
    let x4 = (ks.vec_dot_q8_0_q8_0_x4)(&x, [&ys[0], &ys[1], &ys[2], &ys[3]]);
    for (r, y) in ys.iter().enumerate() {
        assert_eq!(
            x4[r].to_bits(),
            (ks.vec_dot_q8_0_q8_0)(&x, y).to_bits(),
            "x4 row {r}"
        );
    }
}

fn check_quantize_q8_0(tier: Tier, nb: usize, seed: u64) {
    let Some(ks) = kernels_or_skip(tier) else {
        return;
    };
    let x = Rng::new(seed).activations(nb * QK);
    let mut a = vec![BlockQ8_0::default(); nb];
    let mut b = vec![BlockQ8_0::default(); nb];
    (ks.quantize_row_q8_0)(&x, &mut a);
    quantize_row_q8_0(&x, &mut b);
    assert_eq!(
        bytemuck::cast_slice::<_, u8>(&a),
        bytemuck::cast_slice::<_, u8>(&b)
    );
}

fn check_quantize_q8_1(tier: Tier, nb: usize, seed: u64) {
    let Some(ks) = kernels_or_skip(tier) else {
        return;
    };
    let x = Rng::new(seed).activations(nb * QK);
    let mut a = vec![BlockQ8_1::default(); nb];
    let mut b = vec![BlockQ8_1::default(); nb];
    (ks.quantize_row_q8_1)(&x, &mut a);
    quantize_row_q8_1(&x, &mut b);
    assert_eq!(
        bytemuck::cast_slice::<_, u8>(&a),
        bytemuck::cast_slice::<_, u8>(&b)
    );
}

fn check_dot_f32(tier: Tier, len: usize, seed: u64) {
    let Some(ks) = kernels_or_skip(tier) else {
        return;
    };
    let mut rng = Rng::new(seed);
    let x = rng.vec(len, Rng::unit);
    let y = rng.vec(len, Rng::unit);
    let bound: f32 = x.iter().zip(&y).map(|(a, b)| (a * b).abs()).sum();
    assert_close(
        "dot_f32",
        (ks.dot_f32)(&x, &y),
        scalar_dot_f32(&x, &y),
        bound,
    );
}

fn check_dot_f16_f32(tier: Tier, len: usize, seed: u64) {
    let Some(ks) = kernels_or_skip(tier) else {
        return;
    };
    let mut rng = Rng::new(seed);
    let x: Vec<f16> = rng.vec(len, |r| f16::from_f32(r.unit() * 4.0));
    let y = rng.vec(len, Rng::unit);
    let bound: f32 = x.iter().zip(&y).map(|(a, b)| (a.to_f32() * b).abs()).sum();
    assert_close(
        "dot_f16_f32",
        (ks.dot_f16_f32)(&x, &y),
        scalar_dot_f16_f32(&x, &y),
        bound,
    );
}

fn check_axpy_f16_f32(tier: Tier, len: usize, seed: u64) {
    let Some(ks) = kernels_or_skip(tier) else {
        return;
    };
    let mut rng = Rng::new(seed);
    let a = rng.unit();
    let x: Vec<f16> = rng.vec(len, |r| f16::from_f32(r.unit() * 4.0));
    let y0 = rng.vec(len, Rng::unit);
    let (mut ys, mut yr) = (y0.clone(), y0.clone());
    (ks.axpy_f16_f32)(a, &x, &mut ys);
    scalar_axpy_f16_f32(a, &x, &mut yr);
    for i in 0..len {
        let tol = 2f32.powi(-22) * ((a * x[i].to_f32()).abs() + y0[i].abs());
        assert!(
            (ys[i] - yr[i]).abs() <= tol,
            "axpy[{i}]: {} vs {}",
            ys[i],
            yr[i]
        );
    }
}

fn check_scale_f32(tier: Tier, len: usize, seed: u64) {
    let Some(ks) = kernels_or_skip(tier) else {
        return;
    };
    let mut rng = Rng::new(seed);
    let a = rng.unit();
    let x0 = rng.vec(len, Rng::unit);
    let (mut xs, mut xr) = (x0.clone(), x0);
    (ks.scale_f32)(a, &mut xs);
    scalar_scale_f32(a, &mut xr);
    assert_eq!(xs, xr);
}

/// One proptest per kernel for each listed tier.
macro_rules! simd_twin_tests {
    ($($module:ident => $tier:expr),* $(,)?) => {$(
        mod $module {
            use super::*;
            const TIER: Tier = $tier;
            proptest! {
                #![proptest_config(ProptestConfig::with_cases(96))]
                #[test] fn vec_dot_q4_0_q8_0(nb in 0usize..70, seed in any::<u64>()) { check_q4_0(TIER, nb, seed) }
                #[test] fn vec_dot_q4_1_q8_1(nb in 0usize..70, seed in any::<u64>()) { check_q4_1(TIER, nb, seed) }
                #[test] fn vec_dot_q8_0_q8_0(nb in 0usize..70, seed in any::<u64>()) { check_q8_0(TIER, nb, seed) }
                #[test] fn quantize_row_q8_0(nb in 0usize..40, seed in any::<u64>()) { check_quantize_q8_0(TIER, nb, seed) }
                #[test] fn quantize_row_q8_1(nb in 0usize..40, seed in any::<u64>()) { check_quantize_q8_1(TIER, nb, seed) }
                #[test] fn dot_f32(len in 0usize..600, seed in any::<u64>()) { check_dot_f32(TIER, len, seed) }
                #[test] fn dot_f16_f32(len in 0usize..600, seed in any::<u64>()) { check_dot_f16_f32(TIER, len, seed) }
                #[test] fn axpy_f16_f32(len in 0usize..300, seed in any::<u64>()) { check_axpy_f16_f32(TIER, len, seed) }
                #[test] fn scale_f32(len in 0usize..300, seed in any::<u64>()) { check_scale_f32(TIER, len, seed) }
            }
        }
    )*};
}

simd_twin_tests!(
    avx2 => Tier::Avx2,
    avx512vnni => Tier::Avx512Vnni,
    neon => Tier::Neon,
    neon_dotprod => Tier::NeonDotprod,
);
