//! K-quant formats (Q4_K, Q5_K, Q6_K, Q8_K): layouts, hand-built blocks,
//! quantize→dequantize error and the dot products.
//!
//! Stated bounds (data with block magnitude `amax` in ~[0.5, 64], where the
//! f16 super-scales are normal numbers; observed maxima over 60,000 random
//! blocks in parentheses):
//! * round trip, `max |x − x̂| <= c · amax`: Q4_K c = 0.15 (0.118), Q5_K 0.09
//!   (0.069), Q6_K 0.035 (0.024), Q8_K `0.5 / 127 · (1 + 1e-4)` (half a step);
//! * round trip, `rmse <= r · rms(x)`: Q4_K r = 0.11 (0.087), Q5_K 0.06
//!   (0.046), Q6_K 0.03 (0.021);
//! * dot products against the f64 dot of the dequantized operands:
//!   `|dot − ref| <= 1e-5 · Σ|terms|`, where `Σ|terms|` sums the magnitudes of
//!   both parts of each product (scale part and minimum part for Q4_K/Q5_K).
//!   Integer accumulation is exact; only the final f32 combination rounds.

mod common;

use bytemuck::Zeroable;
use common::Rng;
use coordgen_kernels::f16;
use coordgen_kernels::kquant::*;
use proptest::prelude::*;

const ROUND_TRIP_MAX: [(&str, f64); 3] = [("q4_k", 0.15), ("q5_k", 0.09), ("q6_k", 0.035)];
const ROUND_TRIP_RMS: [(&str, f64); 3] = [("q4_k", 0.11), ("q5_k", 0.06), ("q6_k", 0.03)];
const Q8_K_MAX: f64 = 0.5 / 127.0 * (1.0 + 1e-4);
const DOT_REL: f64 = 1e-5;

#[test]
fn block_sizes_match_ggml() {
    assert_eq!(std::mem::size_of::<BlockQ4K>(), 144);
    assert_eq!(std::mem::size_of::<BlockQ5K>(), 176);
    assert_eq!(std::mem::size_of::<BlockQ6K>(), 210);
    assert_eq!(std::mem::size_of::<BlockQ8K>(), 292);
    assert_eq!(QK_K, 256);
    assert_eq!(K_SCALE_SIZE, 12);
}

#[test]
fn fields_sit_at_ggml_offsets() {
    // Q4_K: d, dmin, scales, qs.
    let mut bytes = [0u8; 144];
    bytes[0..2].copy_from_slice(&f16::from_f32(1.0).to_le_bytes());
    bytes[2..4].copy_from_slice(&f16::from_f32(-2.0).to_le_bytes());
    bytes[4] = 7;
    bytes[16] = 0xAB;
    let b: BlockQ4K = bytemuck::pod_read_unaligned(&bytes);
    assert_eq!((b.d.to_f32(), b.dmin.to_f32()), (1.0, -2.0));
    assert_eq!((b.scales[0], b.qs[0]), (7, 0xAB));
    // Q5_K: d, dmin, scales, qh, qs.
    let mut bytes = [0u8; 176];
    bytes[16] = 0x11;
    bytes[48] = 0x22;
    let b: BlockQ5K = bytemuck::pod_read_unaligned(&bytes);
    assert_eq!((b.qh[0], b.qs[0]), (0x11, 0x22));
    // Q6_K: ql, qh, scales, d last.
    let mut bytes = [0u8; 210];
    bytes[128] = 0x33;
    bytes[192] = 0xFE;
    bytes[208..210].copy_from_slice(&f16::from_f32(0.5).to_le_bytes());
    let b: BlockQ6K = bytemuck::pod_read_unaligned(&bytes);
    assert_eq!((b.qh[0], b.scales[0], b.d.to_f32()), (0x33, -2, 0.5));
    // Q8_K: f32 d, qs, bsums.
    let mut bytes = [0u8; 292];
    bytes[0..4].copy_from_slice(&3.5f32.to_le_bytes());
    bytes[4] = 0x80;
    bytes[260..262].copy_from_slice(&(-300i16).to_le_bytes());
    let b: BlockQ8K = bytemuck::pod_read_unaligned(&bytes);
    assert_eq!((b.d, b.qs[0], b.bsums[0]), (3.5, -128, -300));
}

#[test]
fn scale_min_packing_known_bytes() {
    let mut scales = [0u8; 8];
    let mut mins = [0u8; 8];
    scales[4] = 0b11_0101; // 53: low nibble 5 in byte 8, high 2 bits in byte 0's top
    mins[7] = 0b10_1110; // 46: low nibble 14 in byte 11's top, high 2 bits in byte 7's top
    scales[1] = 9;
    mins[2] = 60;
    let packed = pack_scales_mins_k4(&scales, &mins);
    assert_eq!(
        packed,
        [0xC0, 9, 0, 0, 0, 0, 60, 0x80, 0x05, 0, 0, 0xE0],
        "{packed:02x?}"
    );
    assert_eq!(get_scale_min_k4(4, &packed), (53, 0));
    assert_eq!(get_scale_min_k4(7, &packed), (0, 46));
    assert_eq!(get_scale_min_k4(1, &packed), (9, 0));
    assert_eq!(get_scale_min_k4(2, &packed), (0, 60));
}

#[test]
fn scale_min_packing_round_trips_every_value() {
    for v in 0..64u8 {
        for j in 0..8 {
            let mut scales = [(v + 1) % 64; 8];
            let mut mins = [(v + 7) % 64; 8];
            scales[j] = v;
            mins[j] = 63 - v;
            let packed = pack_scales_mins_k4(&scales, &mins);
            for k in 0..8 {
                assert_eq!(get_scale_min_k4(k, &packed), (scales[k], mins[k]));
            }
            assert_eq!(unpack_scales_mins_k4(&packed), (scales, mins));
        }
    }
}

#[test]
fn hand_built_q4_k_and_q5_k() {
    let sc = [1u8, 17, 33, 63, 5, 20, 40, 63];
    let mn = [0u8, 16, 32, 63, 3, 48, 15, 62];
    let mut q4 = BlockQ4K::zeroed();
    q4.d = f16::from_f32(0.5);
    q4.dmin = f16::from_f32(0.25);
    q4.scales = pack_scales_mins_k4(&sc, &mn);
    for (l, q) in q4.qs.iter_mut().enumerate() {
        *q = (l % 16) as u8 | ((15 - (l % 16) as u8) << 4);
    }
    let quant = |i: usize| {
        let within = i % 64;
        if within < 32 {
            (2 * (i / 64), within % 16)
        } else {
            (2 * (i / 64) + 1, 15 - (within - 32) % 16)
        }
    };
    let mut y = vec![0f32; QK_K];
    dequantize_row_q4_k(&[q4], &mut y);
    for (i, &v) in y.iter().enumerate() {
        let (sub, q) = quant(i);
        let expected = 0.5 * sc[sub] as f32 * q as f32 - 0.25 * mn[sub] as f32;
        assert_eq!(v, expected, "q4_k value {i}");
    }
    let mut q5 = BlockQ5K::zeroed();
    q5.d = q4.d;
    q5.dmin = q4.dmin;
    q5.scales = q4.scales;
    q5.qs = q4.qs;
    for (l, h) in q5.qh.iter_mut().enumerate() {
        *h = if l % 2 == 0 { 0b1010_0101 } else { 0 };
    }
    dequantize_row_q5_k(&[q5], &mut y);
    for (i, &v) in y.iter().enumerate() {
        let (sub, q) = quant(i);
        let high = if i % 2 == 0 && (0b1010_0101 >> sub) & 1 == 1 {
            16
        } else {
            0
        };
        let expected = 0.5 * sc[sub] as f32 * (q + high) as f32 - 0.25 * mn[sub] as f32;
        assert_eq!(v, expected, "q5_k value {i}");
    }
}

#[test]
fn hand_built_q6_k() {
    let mut b = BlockQ6K::zeroed();
    b.d = f16::from_f32(0.25);
    for (i, s) in b.scales.iter_mut().enumerate() {
        *s = i as i8 - 8;
    }
    b.ql[0] = 0x21; // value 0 low 1, value 64 low 2
    b.ql[32] = 0x43; // value 32 low 3, value 96 low 4
    b.qh[0] = 0b11_10_01_00; // high bits: value 0 → 0, 32 → 1, 64 → 2, 96 → 3
    b.ql[64 + 5] = 0xF0; // value 133 low 0, value 197 low 15
    b.qh[32 + 5] = 0b0011_0000; // value 197 high 3
    let mut q = [0i32; QK_K];
    q[0] = 1;
    q[32] = 3 | (1 << 4);
    q[64] = 2 | (2 << 4);
    q[96] = 4 | (3 << 4);
    q[197] = 63;
    let mut y = vec![0f32; QK_K];
    dequantize_row_q6_k(&[b], &mut y);
    for (i, &v) in y.iter().enumerate() {
        let expected = 0.25 * b.scales[i / 16] as f32 * (q[i] - 32) as f32;
        assert_eq!(v, expected, "q6_k value {i}");
    }
}

#[test]
fn hand_built_q8_k() {
    let mut x = vec![0f32; QK_K];
    x[0] = -127.0;
    x[1] = 63.5; // tie: 63.5 rounds to even 64
    x[17] = 1.0;
    x[255] = 126.4;
    let mut b = [BlockQ8K::zeroed()];
    quantize_row_q8_k(&x, &mut b);
    // The largest magnitude, -127, maps to -127: iscale = -127 / max = 1, d = 1.
    assert_eq!(b[0].d, 1.0);
    assert_eq!(
        (b[0].qs[0], b[0].qs[1], b[0].qs[17], b[0].qs[255]),
        (-127, 64, 1, 126)
    );
    assert_eq!(
        (b[0].bsums[0], b[0].bsums[1], b[0].bsums[15]),
        (-63, 1, 126)
    );
    let mut y = vec![0f32; QK_K];
    dequantize_row_q8_k(&b, &mut y);
    assert_eq!((y[0], y[1], y[255]), (-127.0, 64.0, 126.0));
    // A positive largest value maps to -127 instead: d = -1.
    x[0] = 127.0;
    quantize_row_q8_k(&x, &mut b);
    assert_eq!((b[0].d, b[0].qs[0], b[0].qs[1]), (-1.0, -127, -64));
}

fn random_block_values(rng: &mut Rng, n_blocks: usize) -> Vec<f32> {
    let mut x = Vec::with_capacity(n_blocks * QK_K);
    for _ in 0..n_blocks {
        let scale = rng.scale() * 64.0;
        let mode = rng.below(3);
        x.extend((0..QK_K).map(|_| {
            let u = rng.unit();
            match mode {
                0 => u * scale,
                1 => (u + 0.7) * scale,
                _ => u * u * u * scale * 10.0,
            }
        }));
    }
    x
}

/// `(max |err| / amax, rmse / rms)` of one block.
fn block_errors(x: &[f32], y: &[f32]) -> (f64, f64) {
    let amax = x.iter().fold(0f64, |m, &v| m.max((v as f64).abs()));
    let rms = (x.iter().map(|&v| (v as f64).powi(2)).sum::<f64>() / x.len() as f64).sqrt();
    let max_err = x
        .iter()
        .zip(y)
        .fold(0f64, |m, (&a, &b)| m.max((a as f64 - b as f64).abs()));
    let rmse = (x
        .iter()
        .zip(y)
        .map(|(&a, &b)| (a as f64 - b as f64).powi(2))
        .sum::<f64>()
        / x.len() as f64)
        .sqrt();
    (max_err / amax, rmse / rms)
}

/// Quantizes and dequantizes `x` with each K-quant weight format.
fn round_trips(x: &[f32]) -> [(&'static str, Vec<f32>); 3] {
    let nb = x.len() / QK_K;
    let mut y4 = vec![0f32; x.len()];
    let mut b4 = vec![BlockQ4K::zeroed(); nb];
    quantize_row_q4_k(x, &mut b4);
    dequantize_row_q4_k(&b4, &mut y4);
    let mut y5 = vec![0f32; x.len()];
    let mut b5 = vec![BlockQ5K::zeroed(); nb];
    quantize_row_q5_k(x, &mut b5);
    dequantize_row_q5_k(&b5, &mut y5);
    let mut y6 = vec![0f32; x.len()];
    let mut b6 = vec![BlockQ6K::zeroed(); nb];
    quantize_row_q6_k(x, &mut b6);
    dequantize_row_q6_k(&b6, &mut y6);
    [("q4_k", y4), ("q5_k", y5), ("q6_k", y6)]
}

fn check_round_trip(x: &[f32]) {
    for (k, (name, y)) in round_trips(x).iter().enumerate() {
        for (xb, yb) in x.chunks_exact(QK_K).zip(y.chunks_exact(QK_K)) {
            let (max_rel, rms_rel) = block_errors(xb, yb);
            assert!(
                max_rel <= ROUND_TRIP_MAX[k].1,
                "{name}: max err / amax {max_rel}"
            );
            assert!(
                rms_rel <= ROUND_TRIP_RMS[k].1,
                "{name}: rmse / rms {rms_rel}"
            );
        }
    }
    let mut b8 = vec![BlockQ8K::zeroed(); x.len() / QK_K];
    let mut y8 = vec![0f32; x.len()];
    quantize_row_q8_k(x, &mut b8);
    dequantize_row_q8_k(&b8, &mut y8);
    for (b, (xb, yb)) in b8
        .iter()
        .zip(x.chunks_exact(QK_K).zip(y8.chunks_exact(QK_K)))
    {
        let (max_rel, _) = block_errors(xb, yb);
        assert!(max_rel <= Q8_K_MAX, "q8_k: max err / amax {max_rel}");
        for (j, s) in b.bsums.iter().enumerate() {
            let sum: i32 = b.qs[16 * j..16 * j + 16].iter().map(|&q| q as i32).sum();
            assert_eq!(*s as i32, sum);
        }
    }
}

#[test]
fn round_trip_error_bounds() {
    let mut rng = Rng::new(11);
    for _ in 0..50 {
        check_round_trip(&random_block_values(&mut rng, 8));
    }
}

#[test]
fn zero_constant_and_non_finite_blocks_do_not_panic() {
    let zeros = vec![0f32; QK_K];
    for (name, y) in round_trips(&zeros) {
        assert!(y.iter().all(|&v| v == 0.0), "{name}");
    }
    let constant = vec![1.5f32; QK_K];
    for (name, y) in round_trips(&constant) {
        assert!(
            y.iter().all(|&v| (v - 1.5).abs() <= 0.15 * 1.5),
            "{name}: {y:?}"
        );
    }
    for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY, f32::MAX, 1e-30] {
        let mut x = vec![0.5f32; QK_K];
        x[3] = bad;
        let _ = round_trips(&x);
        let mut b8 = [BlockQ8K::zeroed()];
        quantize_row_q8_k(&x, &mut b8);
    }
}

/// Σ|terms| of the dot of `magnitudes` (values with both parts made
/// non-negative) and the dequantized activations.
fn magnitude_bound(magnitudes: &[f32], act: &[f32]) -> f64 {
    magnitudes
        .iter()
        .zip(act)
        .map(|(&a, &b)| (a as f64 * b as f64).abs())
        .sum()
}

fn dot_f64(a: &[f32], b: &[f32]) -> f64 {
    a.iter().zip(b).map(|(&x, &y)| x as f64 * y as f64).sum()
}

fn assert_dot(name: &str, dot: f32, reference: f64, bound: f64) {
    let tol = DOT_REL * bound + 1e-30;
    assert!(
        (dot as f64 - reference).abs() <= tol,
        "{name}: dot {dot} vs f64 reference {reference} (tol {tol})"
    );
}

fn check_dots(weights: &[f32], activations: &[f32]) {
    let n = weights.len();
    let nb = n / QK_K;
    let mut act = vec![BlockQ8K::zeroed(); nb];
    quantize_row_q8_k(activations, &mut act);
    let mut a = vec![0f32; n];
    dequantize_row_q8_k(&act, &mut a);
    let mut w = vec![0f32; n];
    let mut magnitudes = vec![0f32; n];

    let mut b4 = vec![BlockQ4K::zeroed(); nb];
    quantize_row_q4_k(weights, &mut b4);
    dequantize_row_q4_k(&b4, &mut w);
    // With dmin negated each value is d·sc·q + dmin·m: the magnitudes of both parts.
    let flipped: Vec<BlockQ4K> = b4
        .iter()
        .map(|b| BlockQ4K {
            dmin: -b.dmin,
            ..*b
        })
        .collect();
    dequantize_row_q4_k(&flipped, &mut magnitudes);
    let dot = vec_dot_q4_k_q8_k(&b4, &act);
    assert_dot(
        "q4_k",
        dot,
        dot_f64(&w, &a),
        magnitude_bound(&magnitudes, &a),
    );

    let mut b5 = vec![BlockQ5K::zeroed(); nb];
    quantize_row_q5_k(weights, &mut b5);
    dequantize_row_q5_k(&b5, &mut w);
    let flipped: Vec<BlockQ5K> = b5
        .iter()
        .map(|b| BlockQ5K {
            dmin: -b.dmin,
            ..*b
        })
        .collect();
    dequantize_row_q5_k(&flipped, &mut magnitudes);
    let dot = vec_dot_q5_k_q8_k(&b5, &act);
    assert_dot(
        "q5_k",
        dot,
        dot_f64(&w, &a),
        magnitude_bound(&magnitudes, &a),
    );

    let mut b6 = vec![BlockQ6K::zeroed(); nb];
    quantize_row_q6_k(weights, &mut b6);
    dequantize_row_q6_k(&b6, &mut w);
    let dot = vec_dot_q6_k_q8_k(&b6, &act);
    assert_dot("q6_k", dot, dot_f64(&w, &a), magnitude_bound(&w, &a));
}

#[test]
fn dots_match_f64_reference() {
    let mut rng = Rng::new(5);
    for nb in [1, 2, 3, 8, 16] {
        for _ in 0..20 {
            let weights = random_block_values(&mut rng, nb);
            let activations = rng.activations(nb * QK_K);
            check_dots(&weights, &activations);
        }
    }
}

#[test]
fn dot_of_hand_built_blocks() {
    // Weights all 1·1·q − 0 with q = 1 (Q4_K), activations q8 = 2 with d = 0.5:
    // every product is 1, so the dot is 256 per block.
    let mut w = BlockQ4K::zeroed();
    w.d = f16::from_f32(1.0);
    w.scales = pack_scales_mins_k4(&[1; 8], &[0; 8]);
    w.qs = [0x11; QK_K / 2];
    let mut a = BlockQ8K::zeroed();
    a.d = 0.5;
    a.qs = [2; QK_K];
    a.bsums = [32; QK_K / 16];
    assert_eq!(vec_dot_q4_k_q8_k(&[w, w], &[a, a]), 512.0);
    // With a minimum of 1 · dmin 0.5, every weight is 0.5: the dot halves.
    w.dmin = f16::from_f32(0.5);
    w.scales = pack_scales_mins_k4(&[1; 8], &[1; 8]);
    assert_eq!(vec_dot_q4_k_q8_k(&[w], &[a]), 128.0);
}

#[test]
#[should_panic(expected = "different block counts")]
fn dot_length_mismatch_panics() {
    let _ = vec_dot_q6_k_q8_k(&[BlockQ6K::zeroed()], &[]);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn proptest_round_trip_and_dots(
        seed in any::<u64>(),
        nb in 1usize..5,
        magnitude in 0.5f32..64.0,
        offset in -1.0f32..1.0,
    ) {
        let mut rng = Rng::new(seed);
        let weights: Vec<f32> =
            (0..nb * QK_K).map(|_| (rng.unit() + offset) * magnitude).collect();
        check_round_trip(&weights);
        let activations = rng.activations(nb * QK_K);
        check_dots(&weights, &activations);
    }

    #[test]
    fn proptest_scale_min_unpack_matches_get_scale_min(bytes in any::<[u8; 12]>()) {
        let (scales, mins) = unpack_scales_mins_k4(&bytes);
        for j in 0..8 {
            prop_assert_eq!(get_scale_min_k4(j, &bytes), (scales[j], mins[j]));
        }
    }
}
