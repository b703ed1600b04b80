//! Test helpers: a tiny deterministic RNG and random data generators.
#![allow(dead_code)]

use coordgen_kernels::quant::*;
use coordgen_kernels::{f16, KernelSet, Tier};

/// xorshift64*: deterministic, seedable, good enough for test data.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    /// Uniform in [-1, 1).
    pub fn unit(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 23) as f32 - 1.0
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }
    /// A scale with a random magnitude in ~[1e-3, 1].
    pub fn scale(&mut self) -> f32 {
        let e = self.below(10) as i32;
        (0.5 + 0.5 * self.unit().abs()) * 2f32.powi(-e)
    }
    /// Activation-like vector: mostly moderate values, some outliers, some zero blocks.
    pub fn activations(&mut self, n: usize) -> Vec<f32> {
        let mut v: Vec<f32> = (0..n).map(|_| self.unit() * 3.0).collect();
        for chunk in v.chunks_mut(QK) {
            match self.below(8) {
                0 => chunk.fill(0.0),
                1 => {
                    // Exact ties: amax 127 → id = 1, so k + 0.5 rounds half-even.
                    for (i, x) in chunk.iter_mut().enumerate() {
                        *x = (self.below(200) as f32 - 100.0) + 0.5;
                        if i == 0 {
                            *x = 127.0;
                        }
                    }
                }
                2 => {
                    let k = self.below(chunk.len() as u64) as usize;
                    chunk[k] *= 100.0;
                }
                _ => {}
            }
        }
        v
    }
    pub fn q8_qs(&mut self) -> [i8; QK] {
        // -128 is excluded: ggml quantizers never produce it (see x86.rs).
        std::array::from_fn(|_| (self.below(255) as i32 - 127) as i8)
    }
    pub fn block_q4_0(&mut self) -> BlockQ4_0 {
        BlockQ4_0 {
            d: f16::from_f32(self.scale() * if self.below(2) == 0 { 1.0 } else { -1.0 }),
            qs: std::array::from_fn(|_| self.next_u64() as u8),
        }
    }
    pub fn block_q4_1(&mut self) -> BlockQ4_1 {
        BlockQ4_1 {
            d: f16::from_f32(self.scale()),
            m: f16::from_f32(-self.scale() * 8.0 * self.unit()),
            qs: std::array::from_fn(|_| self.next_u64() as u8),
        }
    }
    pub fn block_q8_0(&mut self) -> BlockQ8_0 {
        BlockQ8_0 {
            d: f16::from_f32(self.scale()),
            qs: self.q8_qs(),
        }
    }
    pub fn block_q8_1(&mut self) -> BlockQ8_1 {
        let qs = self.q8_qs();
        let d = self.scale();
        let sum: i32 = qs.iter().map(|&q| q as i32).sum();
        BlockQ8_1 {
            d: f16::from_f32(d),
            s: f16::from_f32(d * sum as f32),
            qs,
        }
    }
    pub fn vec<T>(&mut self, n: usize, f: impl Fn(&mut Self) -> T) -> Vec<T> {
        (0..n).map(|_| f(self)).collect()
    }
}

/// The kernels of `tier`, or `None` with a note on stderr when this CPU lacks it.
pub fn kernels_or_skip(tier: Tier) -> Option<KernelSet> {
    use std::sync::atomic::{AtomicBool, Ordering};
    static NOTED: [AtomicBool; Tier::ALL.len()] =
        [const { AtomicBool::new(false) }; Tier::ALL.len()];
    let ks = KernelSet::for_tier(tier);
    let index = Tier::ALL.iter().position(|&t| t == tier).unwrap_or(0);
    if ks.is_none() && !NOTED[index].swap(true, Ordering::Relaxed) {
        eprintln!("note: skipping {tier} checks: this CPU does not support it");
    }
    ks
}

/// Every tier this CPU can run, scalar first.
pub fn all_kernel_sets() -> Vec<KernelSet> {
    KernelSet::available()
        .into_iter()
        .filter_map(KernelSet::for_tier)
        .collect()
}
