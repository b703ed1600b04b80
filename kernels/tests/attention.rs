//! attention: batch invariance (bitwise), an f64 reference, tiers, errors.

mod common;

use common::{all_kernel_sets, Rng};
use coordgen_kernels::attention::{key_cache_len, store_keys};
use coordgen_kernels::{attention, f16, AttentionShape, Error, KernelSet, RowVisibility};

struct Case {
    shape: AttentionShape,
    /// The keys one row per slot (for the reference)...
    k_rows: Vec<f16>,
    /// ...and in the cache's blocked layout.
    k: Vec<f16>,
    v: Vec<f16>,
}

impl Case {
    fn new(seed: u64, capacity: usize) -> Self {
        let shape = AttentionShape {
            n_heads: 6,
            n_kv_heads: 2,
            head_dim: 40,
            scale: 1.0 / 40f32.sqrt(),
        };
        let mut rng = Rng::new(seed);
        let len = capacity * shape.n_kv_heads * shape.head_dim;
        let k_rows = rng.vec(len, |r| f16::from_f32(r.unit() * 2.0));
        let v = rng.vec(len, |r| f16::from_f32(r.unit()));
        let kv_dim = shape.n_kv_heads * shape.head_dim;
        let mut k = vec![f16::ZERO; key_cache_len(capacity, kv_dim)];
        let rows: Vec<f32> = k_rows.iter().map(|h| h.to_f32()).collect();
        store_keys(&mut k, kv_dim, 0, &rows).unwrap();
        Case {
            shape,
            k_rows,
            k,
            v,
        }
    }
    fn row_len(&self) -> usize {
        self.shape.n_heads * self.shape.head_dim
    }
    fn run(&self, ks: &KernelSet, q: &[f32], rows: &[RowVisibility]) -> Vec<f32> {
        let mut out = vec![f32::NAN; q.len()];
        attention(
            ks,
            &self.shape,
            q,
            rows.len(),
            &self.k,
            &self.v,
            rows,
            &mut out,
        )
        .unwrap();
        out
    }
}

/// A tree-verification-like batch: row i sees a prefix and some extra slots.
fn visibilities(prefix: usize, n_rows: usize, extras: &[Vec<u32>]) -> Vec<RowVisibility<'_>> {
    (0..n_rows)
        .map(|i| RowVisibility {
            prefix_len: prefix + (i % 3) * 50,
            extra: &extras[i],
            extra_positions: &[],
        })
        .collect()
}

#[test]
fn batch_invariance() {
    let case = Case::new(1, 400);
    let n_rows = 32;
    let q = Rng::new(2).vec(n_rows * case.row_len(), |r| r.unit());
    let extras: Vec<Vec<u32>> = (0..n_rows)
        .map(|i| {
            (0..(i as u32 % 5))
                .map(|k| 300 + 7 * k + i as u32)
                .collect()
        })
        .collect();
    let vis = visibilities(130, n_rows, &extras);
    for ks in all_kernel_sets() {
        let wide = case.run(&ks, &q, &vis);
        let wide7 = case.run(&ks, &q[..7 * case.row_len()], &vis[..7]);
        for i in 0..n_rows {
            let rl = case.row_len();
            let single = case.run(&ks, &q[i * rl..(i + 1) * rl], &vis[i..i + 1]);
            let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
            assert_eq!(
                bits(&single),
                bits(&wide[i * rl..(i + 1) * rl]),
                "{} row {i} (n=32)",
                ks.tier
            );
            if i < 7 {
                assert_eq!(
                    bits(&single),
                    bits(&wide7[i * rl..(i + 1) * rl]),
                    "{} row {i} (n=7)",
                    ks.tier
                );
            }
        }
    }
}

/// Plain softmax attention in f64; tolerance 2e-5 + 1e-4·max|v| per output
/// (f32 scores and online-softmax rescaling).
#[test]
fn matches_f64_reference() {
    let case = Case::new(3, 150);
    let n_rows = 4;
    let q = Rng::new(4).vec(n_rows * case.row_len(), |r| r.unit() * 3.0);
    let extras: Vec<Vec<u32>> = vec![vec![], vec![140, 149], vec![0], vec![100, 120, 149]];
    let vis: Vec<RowVisibility> = vec![
        RowVisibility {
            prefix_len: 150,
            extra: &extras[0],
            extra_positions: &[],
        },
        RowVisibility {
            prefix_len: 65,
            extra: &extras[1],
            extra_positions: &[],
        },
        RowVisibility {
            prefix_len: 0,
            extra: &extras[2],
            extra_positions: &[],
        },
        RowVisibility {
            prefix_len: 64,
            extra: &extras[3],
            extra_positions: &[],
        },
    ];
    let AttentionShape {
        n_heads,
        n_kv_heads,
        head_dim,
        scale,
    } = case.shape;
    for ks in all_kernel_sets() {
        let out = case.run(&ks, &q, &vis);
        for (row, v) in vis.iter().enumerate() {
            let slots: Vec<usize> = (0..v.prefix_len)
                .chain(v.extra.iter().map(|&t| t as usize))
                .collect();
            for h in 0..n_heads {
                let kvh = h / (n_heads / n_kv_heads);
                // llama.cpp's roundings, which attention reproduces: the
                // query is rounded to f16 like the keys, the normalized
                // probabilities are rounded to f16 like the values.
                let qv: Vec<f32> = q[(row * n_heads + h) * head_dim..][..head_dim]
                    .iter()
                    .map(|&x| f16::from_f32(x).to_f32())
                    .collect();
                let at = |buf: &[f16], t: usize, d: usize| {
                    buf[(t * n_kv_heads + kvh) * head_dim + d].to_f32() as f64
                };
                let scores: Vec<f64> = slots
                    .iter()
                    .map(|&t| {
                        (0..head_dim)
                            .map(|d| qv[d] as f64 * at(&case.k_rows, t, d))
                            .sum::<f64>()
                            * scale as f64
                    })
                    .collect();
                let m = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let w: Vec<f64> = scores.iter().map(|s| (s - m).exp()).collect();
                let z: f64 = w.iter().sum();
                for d in 0..head_dim {
                    let exact: f64 = slots
                        .iter()
                        .zip(&w)
                        .map(|(&t, wi)| f16::from_f64(wi / z).to_f64() * at(&case.v, t, d))
                        .sum::<f64>();
                    let got = out[(row * n_heads + h) * head_dim + d] as f64;
                    assert!(
                        (got - exact).abs() <= 1.2e-4,
                        "{} row {row} head {h} d {d}: {got} vs {exact}",
                        ks.tier
                    );
                }
            }
        }
    }
}

#[test]
fn empty_visibility_gives_zeros() {
    let case = Case::new(5, 8);
    let q = vec![1.0; case.row_len()];
    let out = case.run(KernelSet::best(), &q, &[RowVisibility::default()]);
    assert!(out.iter().all(|&v| v == 0.0));
}

#[test]
fn shape_errors_are_errors() {
    let case = Case::new(6, 8);
    let ks = KernelSet::best();
    let rl = case.row_len();
    let q = vec![0.0; 2 * rl];
    let mut out = vec![0.0; 2 * rl];
    let vis = [RowVisibility::default(); 2];
    let bad_extra = [8u32];
    let call =
        |shape: &AttentionShape,
         q: &[f32],
         n,
         k: &[f16],
         rows: &[RowVisibility],
         out: &mut [f32]| { attention(ks, shape, q, n, k, &case.v, rows, out) };
    assert!(matches!(
        call(&case.shape, &q, 3, &case.k, &vis, &mut out),
        Err(Error::Shape { .. })
    ));
    assert!(matches!(
        call(&case.shape, &q, 2, &case.k, &vis[..1], &mut out),
        Err(Error::Shape { .. })
    ));
    assert!(matches!(
        call(
            &case.shape,
            &q,
            2,
            &case.k[..case.k.len() - 1],
            &vis,
            &mut out
        ),
        Err(Error::Shape { .. })
    ));
    let far = [
        RowVisibility {
            prefix_len: 9,
            extra: &[],
            extra_positions: &[],
        },
        RowVisibility::default(),
    ];
    assert!(matches!(
        call(&case.shape, &q, 2, &case.k, &far, &mut out),
        Err(Error::OutOfRange { .. })
    ));
    let extra = [
        RowVisibility {
            prefix_len: 1,
            extra: &bad_extra,
            extra_positions: &[],
        },
        RowVisibility::default(),
    ];
    assert!(matches!(
        call(&case.shape, &q, 2, &case.k, &extra, &mut out),
        Err(Error::OutOfRange { .. })
    ));
    let odd = AttentionShape {
        n_kv_heads: 4,
        ..case.shape
    };
    assert!(call(&odd, &q, 2, &case.k, &vis, &mut out).is_err());
    let zero = AttentionShape {
        n_kv_heads: 0,
        ..case.shape
    };
    assert!(call(&zero, &q, 2, &case.k, &vis, &mut out).is_err());
}
