//! Single-thread decode attention timing (one query row, 9 heads, 3 KV heads,
//! head_dim 64) over a long context:
//! `cargo run -p coordgen-kernels --release --example attn_speed`.
use coordgen_kernels::{attention, f16, AttentionShape, KernelSet, RowVisibility};
use std::time::Instant;

fn main() {
    let ks = KernelSet::best();
    let (n_heads, n_kv, hd, ctx) = (9, 3, 64, 1200);
    let shape = AttentionShape {
        n_heads,
        n_kv_heads: n_kv,
        head_dim: hd,
        scale: 0.125,
    };
    let kv_len = 2048 * n_kv * hd;
    let k: Vec<f16> = (0..kv_len)
        .map(|i| f16::from_f32(((i * 7919) % 1000) as f32 / 500.0 - 1.0))
        .collect();
    let v: Vec<f16> = (0..kv_len)
        .map(|i| f16::from_f32(((i * 104729) % 1000) as f32 / 500.0 - 1.0))
        .collect();
    let q: Vec<f32> = (0..n_heads * hd)
        .map(|i| ((i * 31) % 100) as f32 / 50.0 - 1.0)
        .collect();
    let mut out = vec![0.0f32; n_heads * hd];
    let rows = [RowVisibility {
        prefix_len: ctx,
        extra: &[],
        extra_positions: &[],
    }];
    let mut best = f64::MAX;
    for _ in 0..30 {
        let t = Instant::now();
        for _ in 0..20 {
            attention(ks, &shape, &q, 1, &k, &v, &rows, &mut out).unwrap_or(());
        }
        best = best.min(t.elapsed().as_secs_f64() * 1e6 / 20.0);
    }
    println!(
        "{}: decode attention, {ctx} slots, {n_heads} heads: {best:.1} µs",
        ks.tier
    );
}
