//! Every SIMD kernel against its scalar twin, per instruction-set tier.
//!
//! Tolerances:
//! * quantized dots, the f16 dot, `axpy_f16_f32`, `exp_f32`, `silu_mul_f32`,
//!   the activation quantizers and `scale_f32`: bit-identical (every tier
//!   follows llama.cpp's order of float operations);
//! * `dot_f32`: `1e-5 · Σ |x_i·y_i|` (reassociated per tier);
//! * the `_x4` kernels: bitwise equal, per row, to the tier's single-row kernel;
//! * the fused attention kernels (`attn_scores_f16`, `attn_values_f16`) and
//!   the softmax chunk sums (`hsum16_chunks`): bitwise equal to their
//!   scalar twins;
//! * the 8-row group GEMMs (`gemm_*_x8`): bitwise equal to their scalar twins
//!   and, per row, to the scalar row-major dot of the unpacked row.
//!
//! A tier this CPU lacks is skipped with a note on stderr.

mod common;

use common::{kernels_or_skip, Rng};
use coordgen_kernels::attention::{key_cache_len, BlockedKeys, ScoreJob};
use coordgen_kernels::quant::*;
use coordgen_kernels::repack::*;
use coordgen_kernels::scalar::*;
use coordgen_kernels::{f16, Tier};
use proptest::prelude::*;

fn assert_close(what: &str, simd: f32, scalar: f32, bound: f32) {
    let tol = 1e-5 * bound + 1e-30;
    assert!(
        (simd - scalar).abs() <= tol,
        "{what}: simd {simd} vs scalar {scalar} (|diff| {} > tol {tol})",
        (simd - scalar).abs()
    );
}

/// Bitwise equality: the SIMD kernels do the scalar twins' float operations
/// in the same order (llama.cpp's), so they must agree to the last bit.
fn assert_bits(what: &str, simd: f32, scalar: f32) {
    assert_eq!(
        simd.to_bits(),
        scalar.to_bits(),
        "{what}: simd {simd} vs scalar {scalar}"
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
        let simd = (ks.vec_dot_q4_0_q8_0)(&x, y);
        assert_bits("q4_0·q8_0", simd, scalar_vec_dot_q4_0_q8_0(&x, y));
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
        let simd = (ks.vec_dot_q4_1_q8_1)(&x, y);
        assert_bits("q4_1·q8_1", simd, scalar_vec_dot_q4_1_q8_1(&x, y));
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
        let simd = (ks.vec_dot_q8_0_q8_0)(&x, y);
        assert_bits("q8_0·q8_0", simd, scalar_vec_dot_q8_0_q8_0(&x, y));
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
    assert_bits(
        "dot_f16_f32",
        (ks.dot_f16_f32)(&x, &y),
        scalar_dot_f16_f32(&x, &y),
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
        assert_bits("axpy", ys[i], yr[i]);
    }
}

fn check_hsum16_chunks(tier: Tier, len: usize, seed: u64) {
    let Some(ks) = kernels_or_skip(tier) else {
        return;
    };
    let x = Rng::new(seed).vec(len, |r| r.unit().abs() * 3.0);
    let chunks = len / 16;
    let (mut got, mut want) = (vec![f32::NAN; chunks + 1], vec![f32::NAN; chunks + 1]);
    (ks.hsum16_chunks)(&x, &mut got);
    scalar_hsum16_chunks(&x, &mut want);
    for (g, w) in got.iter().zip(&want) {
        assert_bits("hsum16_chunks", *g, *w);
    }
}

fn check_exp_f32(tier: Tier, len: usize, seed: u64) {
    let Some(ks) = kernels_or_skip(tier) else {
        return;
    };
    let mut rng = Rng::new(seed);
    // Softmax and SiLU range, plus the edges of the polynomial's domain.
    let mut x0 = rng.vec(len, |r| r.unit() * 120.0);
    let specials = [
        f32::NEG_INFINITY,
        -104.0,
        -88.0,
        -0.0,
        0.0,
        88.0,
        89.0,
        1e-7,
    ];
    for (v, s) in x0.iter_mut().zip(specials) {
        *v = s;
    }
    let (mut xs, mut xr) = (x0.clone(), x0);
    (ks.exp_f32)(&mut xs);
    scalar_exp_f32(&mut xr);
    for (i, (&a, &b)) in xs.iter().zip(&xr).enumerate() {
        assert_bits(&format!("exp[{i}]"), a, b);
    }
}

fn check_silu_mul_f32(tier: Tier, len: usize, seed: u64) {
    let Some(ks) = kernels_or_skip(tier) else {
        return;
    };
    let mut rng = Rng::new(seed);
    let gate = rng.vec(len, |r| r.unit() * 20.0);
    let up = rng.vec(len, Rng::unit);
    let (mut os, mut or) = (vec![0.0; len], vec![0.0; len]);
    (ks.silu_mul_f32)(&gate, &up, &mut os);
    scalar_silu_mul_f32(&gate, &up, &mut or);
    for (i, (&a, &b)) in os.iter().zip(&or).enumerate() {
        assert_bits(&format!("silu_mul[{i}]"), a, b);
    }
}

fn check_scale_round_f16(tier: Tier, len: usize, seed: u64) {
    let Some(ks) = kernels_or_skip(tier) else {
        return;
    };
    let mut rng = Rng::new(seed);
    let a = rng.unit();
    // Probabilities in [0, 1], down into f16's subnormal range.
    let x0 = rng.vec(len, |r| r.unit().abs().powi(8));
    let (mut xs, mut xr) = (x0.clone(), x0);
    (ks.scale_round_f16)(a, &mut xs);
    scalar_scale_round_f16(a, &mut xr);
    for (i, (&p, &q)) in xs.iter().zip(&xr).enumerate() {
        assert_bits(&format!("scale_round_f16[{i}]"), p, q);
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

/// One random row group of `nb` blocks against `n` activation rows: the
/// tier's group kernel against the scalar twin and the row-major dot.
macro_rules! check_group_gemm {
    ($name:ident, $kernel:ident, $twin:ident, $wblock:ident, $ablock:ident, $aux:expr, $unpack:ident, $dot:ident) => {
        fn $name(tier: Tier, nb: usize, n: usize, seed: u64) {
            let Some(ks) = kernels_or_skip(tier) else {
                return;
            };
            let mut rng = Rng::new(seed);
            let rows: Vec<Vec<_>> = (0..GROUP).map(|_| rng.vec(nb, Rng::$wblock)).collect();
            let mut packed = vec![Default::default(); nb];
            let flat: Vec<_> = rows.iter().flatten().copied().collect();
            repack_rows(&flat, nb, &mut packed);
            let act: Vec<_> = rng.vec(n * nb, Rng::$ablock);
            let mut aux = vec![ActAux::default(); act.len()];
            $aux(&act, &mut aux);
            let mut got = vec![[0.0f32; GROUP]; n];
            let mut want = vec![[0.0f32; GROUP]; n];
            (ks.$kernel)(&packed, &act, &aux, &mut got);
            $twin(&packed, &act, &aux, &mut want);
            for j in 0..n {
                for r in 0..GROUP {
                    assert_bits(stringify!($kernel), got[j][r], want[j][r]);
                    let row: Vec<_> = $unpack(&packed, r).collect();
                    assert_bits(
                        "row-major",
                        got[j][r],
                        $dot(&row, &act[j * nb..(j + 1) * nb]),
                    );
                }
            }
        }
    };
}

/// Repacks `GROUP` rows of `nb` blocks (whatever the block type) via the
/// library's repack functions.
trait RepackRows: Sized {
    type Packed;
    fn repack(rows: &[Self], nb: usize, out: &mut [Self::Packed]);
}
impl RepackRows for BlockQ4_0 {
    type Packed = BlockQ4_0x8;
    fn repack(rows: &[Self], nb: usize, out: &mut [BlockQ4_0x8]) {
        repack_q4_0(rows, GROUP, nb * QK, out).unwrap()
    }
}
impl RepackRows for BlockQ4_1 {
    type Packed = BlockQ4_1x8;
    fn repack(rows: &[Self], nb: usize, out: &mut [BlockQ4_1x8]) {
        repack_q4_1(rows, GROUP, nb * QK, out).unwrap()
    }
}
impl RepackRows for BlockQ8_0 {
    type Packed = BlockQ8_0x8;
    fn repack(rows: &[Self], nb: usize, out: &mut [BlockQ8_0x8]) {
        repack_q8_0(rows, GROUP, nb * QK, out).unwrap()
    }
}
fn repack_rows<B: RepackRows>(rows: &[B], nb: usize, out: &mut [B::Packed]) {
    B::repack(rows, nb, out)
}

check_group_gemm!(
    check_gemm_q4_0_x8,
    gemm_q4_0_x8,
    scalar_gemm_q4_0_x8,
    block_q4_0,
    block_q8_0,
    |a: &[BlockQ8_0], x: &mut [ActAux]| act_aux_q8_0(a, 8, x),
    unpack_row_q4_0,
    scalar_vec_dot_q4_0_q8_0
);
check_group_gemm!(
    check_gemm_q4_1_x8,
    gemm_q4_1_x8,
    scalar_gemm_q4_1_x8,
    block_q4_1,
    block_q8_1,
    act_aux_q8_1,
    unpack_row_q4_1,
    scalar_vec_dot_q4_1_q8_1
);
check_group_gemm!(
    check_gemm_q8_0_x8,
    gemm_q8_0_x8,
    scalar_gemm_q8_0_x8,
    block_q8_0,
    block_q8_0,
    |a: &[BlockQ8_0], x: &mut [ActAux]| act_aux_q8_0(a, 128, x),
    unpack_row_q8_0,
    scalar_vec_dot_q8_0_q8_0
);

/// `n` consecutive KV slots of a cache with `stride` values per slot, head
/// at offset `off`, against the scalar twins (scores and value lanes).
fn check_attn(tier: Tier, n: usize, hd_chunks: usize, first: usize, seed: u64) {
    let Some(ks) = kernels_or_skip(tier) else {
        return;
    };
    let mut rng = Rng::new(seed);
    let hd = 16 * hd_chunks + usize::from(hd_chunks == 0) * 8;
    let (stride, off) = (hd * 3, hd);
    let len = n.max(1) * stride;
    let v: Vec<f16> = rng.vec(len, |r| f16::from_f32(r.unit() * 2.0));
    // Scores of 1 to 8 queries (query groups of every size) over slots
    // `first..first + n` of a blocked K cache (partial blocks at both ends).
    let m = 1 + (seed % 8) as usize;
    let k: Vec<f16> = rng.vec(key_cache_len(first + n, stride), |r| {
        f16::from_f32(r.unit() * 2.0)
    });
    let keys = BlockedKeys {
        cache: &k,
        kv_dim: stride,
        offset: off,
    };
    let qs: Vec<f32> = rng.vec(m * hd, |r| f16::from_f32(r.unit()).to_f32());
    let mut got = vec![0.0f32; m * (n + 3)];
    let mut want = vec![0.0f32; m * (n + 3)];
    let job = ScoreJob {
        q16: &qs,
        queries: m,
        keys,
        slots: first..first + n,
        scale: 0.125,
    };
    (ks.attn_scores_f16)(&job, &mut got, n + 3);
    scalar_attn_scores_f16(&job, &mut want, n + 3);
    for (g, w) in got.iter().zip(&want) {
        assert_bits("attn_scores_f16", *g, *w);
    }
    let pm: Vec<f32> = rng.vec(m * (n + 3), |r| r.unit().abs());
    let init: Vec<f32> = rng.vec(m * 16 * hd, |r| r.unit());
    let (mut got, mut want) = (init.clone(), init);
    (ks.attn_values_f16_multi)(&pm, n + 3, m, n, &v[off..], stride, first, &mut got);
    scalar_attn_values_f16_multi(&pm, n + 3, m, n, &v[off..], stride, first, &mut want);
    for (g, w) in got.iter().zip(&want) {
        assert_bits("attn_values_f16_multi", *g, *w);
    }
    let p: Vec<f32> = rng.vec(n, |r| r.unit().abs());
    let init: Vec<f32> = rng.vec(16 * hd, |r| r.unit());
    let (mut got, mut want) = (init.clone(), init);
    (ks.attn_values_f16)(&p, &v[off..], stride, first, &mut got);
    scalar_attn_values_f16(&p, &v[off..], stride, first, &mut want);
    for (g, w) in got.iter().zip(&want) {
        assert_bits("attn_values_f16", *g, *w);
    }
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
                #[test] fn scale_round_f16(len in 0usize..300, seed in any::<u64>()) { check_scale_round_f16(TIER, len, seed) }
                #[test] fn exp_f32(len in 0usize..300, seed in any::<u64>()) { check_exp_f32(TIER, len, seed) }
                #[test] fn hsum16_chunks(len in 0usize..900, seed in any::<u64>()) { check_hsum16_chunks(TIER, len, seed) }
                #[test] fn silu_mul_f32(len in 0usize..300, seed in any::<u64>()) { check_silu_mul_f32(TIER, len, seed) }
                #[test] fn attn_f16(n in 0usize..600, hd_chunks in 0usize..5, first in 0usize..40, seed in any::<u64>()) { check_attn(TIER, n, hd_chunks, first, seed) }
                #[test] fn gemm_q4_0_x8(nb in 0usize..40, n in 1usize..10, seed in any::<u64>()) { check_gemm_q4_0_x8(TIER, nb, n, seed) }
                #[test] fn gemm_q4_1_x8(nb in 0usize..40, n in 1usize..10, seed in any::<u64>()) { check_gemm_q4_1_x8(TIER, nb, n, seed) }
                #[test] fn gemm_q8_0_x8(nb in 0usize..40, n in 1usize..10, seed in any::<u64>()) { check_gemm_q8_0_x8(TIER, nb, n, seed) }
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
