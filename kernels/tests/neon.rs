//! Edge cases for the aarch64 kernel tiers (NEON, NEON + dotprod) against
//! their scalar twins, beyond the random data of `simd_vs_scalar.rs`:
//! full-range int8 quants (-128 included, which the NEON dots handle
//! exactly), extreme finite f16 scales, every f16 exponent, the whole domain
//! of the `exp` polynomial (subnormal results, overflow, the `|n| > 192`
//! cut-off), quantizer blocks with infinities, NaNs and subnormals, and
//! f32 → f16 rounding ties. All comparisons are bitwise, except that a NaN
//! only has to meet a NaN (Rust does not specify NaN payloads).

#![cfg(target_arch = "aarch64")]

mod common;

use common::{kernels_or_skip, Rng};
use coordgen_kernels::quant::*;
use coordgen_kernels::scalar::*;
use coordgen_kernels::{f16, KernelSet, Tier};

const TIERS: [Tier; 2] = [Tier::Neon, Tier::NeonDotprod];

fn same(what: &str, simd: f32, scalar: f32) {
    assert!(
        simd.to_bits() == scalar.to_bits() || (simd.is_nan() && scalar.is_nan()),
        "{what}: simd {simd:e} ({:#010x}) vs scalar {scalar:e} ({:#010x})",
        simd.to_bits(),
        scalar.to_bits()
    );
}

fn for_each_tier(mut f: impl FnMut(&KernelSet)) {
    for tier in TIERS {
        if let Some(ks) = kernels_or_skip(tier) {
            f(&ks);
        }
    }
}

/// A finite f16 with any exponent (subnormals and ±65504 included).
fn any_finite_f16(rng: &mut Rng) -> f16 {
    loop {
        let h = f16::from_bits(rng.next_u64() as u16);
        if h.is_finite() {
            return h;
        }
    }
}

/// A finite f32 spread over every exponent.
fn any_finite_f32(rng: &mut Rng) -> f32 {
    loop {
        let v = f32::from_bits(rng.next_u64() as u32);
        if v.is_finite() {
            return v;
        }
    }
}

fn full_range_qs(rng: &mut Rng) -> [i8; QK] {
    match rng.below(4) {
        0 => [-128; QK],
        1 => [127; QK],
        _ => std::array::from_fn(|_| rng.next_u64() as i8),
    }
}

#[test]
fn quantized_dots_full_range_quants_and_extreme_scales() {
    for_each_tier(|ks| {
        let mut rng = Rng::new(0x5eed_0001);
        for nb in [0usize, 1, 2, 3, 5, 8, 17, 64] {
            for _ in 0..8 {
                let q4_0: Vec<BlockQ4_0> = rng.vec(nb, |r| BlockQ4_0 {
                    d: any_finite_f16(r),
                    qs: std::array::from_fn(|_| r.next_u64() as u8),
                });
                let q4_1: Vec<BlockQ4_1> = rng.vec(nb, |r| BlockQ4_1 {
                    d: any_finite_f16(r),
                    m: any_finite_f16(r),
                    qs: std::array::from_fn(|_| r.next_u64() as u8),
                });
                let q8_0x: Vec<BlockQ8_0> = rng.vec(nb, |r| BlockQ8_0 {
                    d: any_finite_f16(r),
                    qs: full_range_qs(r),
                });
                let ys0: Vec<Vec<BlockQ8_0>> = (0..4)
                    .map(|_| {
                        rng.vec(nb, |r| BlockQ8_0 {
                            d: any_finite_f16(r),
                            qs: full_range_qs(r),
                        })
                    })
                    .collect();
                let ys1: Vec<Vec<BlockQ8_1>> = (0..4)
                    .map(|_| {
                        rng.vec(nb, |r| BlockQ8_1 {
                            d: any_finite_f16(r),
                            s: any_finite_f16(r),
                            qs: full_range_qs(r),
                        })
                    })
                    .collect();
                let y0 = [&ys0[0][..], &ys0[1], &ys0[2], &ys0[3]];
                let y1 = [&ys1[0][..], &ys1[1], &ys1[2], &ys1[3]];

                let x4 = (ks.vec_dot_q4_0_q8_0_x4)(&q4_0, y0);
                for (r, y) in y0.iter().enumerate() {
                    let want = scalar_vec_dot_q4_0_q8_0(&q4_0, y);
                    same("q4_0·q8_0", (ks.vec_dot_q4_0_q8_0)(&q4_0, y), want);
                    same("q4_0·q8_0 x4", x4[r], want);
                }
                let x4 = (ks.vec_dot_q4_1_q8_1_x4)(&q4_1, y1);
                for (r, y) in y1.iter().enumerate() {
                    let want = scalar_vec_dot_q4_1_q8_1(&q4_1, y);
                    same("q4_1·q8_1", (ks.vec_dot_q4_1_q8_1)(&q4_1, y), want);
                    same("q4_1·q8_1 x4", x4[r], want);
                }
                let x4 = (ks.vec_dot_q8_0_q8_0_x4)(&q8_0x, y0);
                for (r, y) in y0.iter().enumerate() {
                    let want = scalar_vec_dot_q8_0_q8_0(&q8_0x, y);
                    same("q8_0·q8_0", (ks.vec_dot_q8_0_q8_0)(&q8_0x, y), want);
                    same("q8_0·q8_0 x4", x4[r], want);
                }
            }
        }
    });
}

#[test]
fn f16_kernels_every_exponent() {
    for_each_tier(|ks| {
        let mut rng = Rng::new(0x5eed_0002);
        for len in (0..70).chain([127, 128, 129, 255, 1000]) {
            let x: Vec<f16> = rng.vec(len, any_finite_f16);
            // Keep Σ x·y finite: |y| <= 2^-40 · 2^(0..32).
            let y: Vec<f32> = rng.vec(len, |r| r.unit() * 2f32.powi(r.below(32) as i32 - 40));
            same(
                &format!("dot_f16_f32 len {len}"),
                (ks.dot_f16_f32)(&x, &y),
                scalar_dot_f16_f32(&x, &y),
            );
            let a = rng.unit() * 2f32.powi(rng.below(40) as i32 - 20);
            let (mut ys, mut yr) = (y.clone(), y.clone());
            (ks.axpy_f16_f32)(a, &x, &mut ys);
            scalar_axpy_f16_f32(a, &x, &mut yr);
            for (i, (&p, &q)) in ys.iter().zip(&yr).enumerate() {
                same(&format!("axpy_f16_f32[{i}] len {len}"), p, q);
            }
        }
    });
}

#[test]
fn scale_round_f16_ties_overflow_subnormals() {
    for_each_tier(|ks| {
        let mut rng = Rng::new(0x5eed_0003);
        // Exact midpoints between neighbouring f16 values (a = 1 keeps them),
        // across normal and subnormal f16, plus values around f16's max.
        let mut x: Vec<f32> = Vec::new();
        for _ in 0..2000 {
            let h = f16::from_bits(rng.next_u64() as u16 & 0x7bff);
            let lo = h.to_f32();
            let hi = f16::from_bits(h.to_bits() + 1).to_f32();
            let mid = lo + (hi - lo) / 2.0;
            let sign = if rng.below(2) == 0 { 1.0 } else { -1.0 };
            x.extend([sign * mid, sign * lo, sign * hi]);
        }
        x.extend([
            65504.0, 65519.99, 65520.0, 65536.0, 1e30, -1e30, 0.0, -0.0, 1e-10, -1e-10, 5.96e-8,
            2.98e-8, 2.99e-8,
        ]);
        x.push(f32::INFINITY);
        x.push(f32::NEG_INFINITY);
        x.push(f32::NAN);
        let (mut xs, mut xr) = (x.clone(), x.clone());
        (ks.scale_round_f16)(1.0, &mut xs);
        scalar_scale_round_f16(1.0, &mut xr);
        for (i, (&p, &q)) in xs.iter().zip(&xr).enumerate() {
            same(&format!("scale_round_f16(1)[{i}] of {}", x[i]), p, q);
        }
        let x: Vec<f32> = rng.vec(3001, any_finite_f32);
        for a in [0.5f32, 3.0, 1.0e-3, 7.5e4] {
            let (mut xs, mut xr) = (x.clone(), x.clone());
            (ks.scale_round_f16)(a, &mut xs);
            scalar_scale_round_f16(a, &mut xr);
            for (i, (&p, &q)) in xs.iter().zip(&xr).enumerate() {
                same(&format!("scale_round_f16({a})[{i}] of {}", x[i]), p, q);
            }
        }
    });
}

/// Inputs covering all of `ggml_expf`'s paths.
fn exp_inputs() -> Vec<f32> {
    let mut x: Vec<f32> = (-16_000..=16_000).map(|i| i as f32 * 0.012_5).collect();
    // ±(192 · ln 2) ≈ ±133.08 is where |n| crosses 192; results become
    // subnormal below -87.34, round to zero below -103.97 and overflow
    // above 88.72.
    for centre in [-133.084f32, 133.084, -87.336, -103.97, 88.722] {
        let mut v = centre;
        for _ in 0..300 {
            x.push(v);
            v = f32::from_bits(v.to_bits() + 1);
        }
        let mut v = centre;
        for _ in 0..300 {
            x.push(v);
            v = f32::from_bits(v.to_bits() - 1);
        }
    }
    x.extend([
        f32::INFINITY,
        f32::NEG_INFINITY,
        f32::MAX,
        f32::MIN,
        f32::MIN_POSITIVE,
        -f32::MIN_POSITIVE,
        1e-45,
        -1e-45,
        0.0,
        -0.0,
        1e10,
        -1e10,
        f32::NAN,
    ]);
    let mut rng = Rng::new(0x5eed_0004);
    x.extend(rng.vec(4000, any_finite_f32));
    x
}

#[test]
fn exp_whole_domain() {
    for_each_tier(|ks| {
        let x0 = exp_inputs();
        let mut xs = x0.clone();
        (ks.exp_f32)(&mut xs);
        for (i, (&x, &e)) in x0.iter().zip(&xs).enumerate() {
            same(&format!("exp[{i}]({x:e})"), e, ggml_expf(x));
        }
    });
}

#[test]
fn silu_mul_whole_domain() {
    for_each_tier(|ks| {
        let gate = exp_inputs();
        let mut rng = Rng::new(0x5eed_0005);
        let up: Vec<f32> = rng.vec(gate.len(), |r| r.unit() * 4.0);
        let (mut os, mut or) = (vec![0.0; gate.len()], vec![0.0; gate.len()]);
        (ks.silu_mul_f32)(&gate, &up, &mut os);
        scalar_silu_mul_f32(&gate, &up, &mut or);
        for (i, (&p, &q)) in os.iter().zip(&or).enumerate() {
            same(&format!("silu_mul[{i}]({:e})", gate[i]), p, q);
        }
    });
}

#[test]
fn quantizers_special_blocks() {
    for_each_tier(|ks| {
        let mut rng = Rng::new(0x5eed_0006);
        let mut x: Vec<f32> = Vec::new();
        for kind in 0..12 {
            let mut b: Vec<f32> = rng.vec(QK, |r| r.unit() * 3.0);
            match kind {
                0 => b.fill(-0.0),
                1 => b[7] = f32::INFINITY,
                2 => b[3] = f32::NAN,
                3 => b.fill(f32::NAN),
                4 => b.iter_mut().for_each(|v| *v *= 1e-42),
                5 => b.iter_mut().for_each(|v| *v *= 1e38),
                6 => b.fill(-2.5),
                7 => {
                    b.fill(0.0);
                    b[31] = -1e-3;
                }
                8 => b[0] = f32::NEG_INFINITY,
                9 => b = rng.vec(QK, any_finite_f32),
                10 => b.iter_mut().for_each(|v| *v = (*v * 40.0).round() + 0.5),
                _ => {}
            }
            x.extend(b);
        }
        let nb = x.len() / QK;
        let mut a = vec![BlockQ8_0::default(); nb];
        let mut b = vec![BlockQ8_0::default(); nb];
        (ks.quantize_row_q8_0)(&x, &mut a);
        quantize_row_q8_0(&x, &mut b);
        for (i, (p, q)) in a.iter().zip(&b).enumerate() {
            assert_eq!(p.qs, q.qs, "quantize_row_q8_0 block {i}: quants");
            same(&format!("q8_0 block {i}: d"), p.d.to_f32(), q.d.to_f32());
        }
        let mut a = vec![BlockQ8_1::default(); nb];
        let mut b = vec![BlockQ8_1::default(); nb];
        (ks.quantize_row_q8_1)(&x, &mut a);
        quantize_row_q8_1(&x, &mut b);
        for (i, (p, q)) in a.iter().zip(&b).enumerate() {
            assert_eq!(p.qs, q.qs, "quantize_row_q8_1 block {i}: quants");
            same(&format!("q8_1 block {i}: d"), p.d.to_f32(), q.d.to_f32());
            same(&format!("q8_1 block {i}: s"), p.s.to_f32(), q.s.to_f32());
        }
    });
}
