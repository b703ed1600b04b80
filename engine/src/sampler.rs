//! Token sampling: greedy, or seeded sampling with temperature, top-k,
//! top-p, min-p and a repetition penalty (applied in llama.cpp's order:
//! penalty, top-k, top-p, min-p, temperature, draw).

use crate::{Error, Result};

/// How to pick the next token. The default is greedy.
#[derive(Clone, Debug, PartialEq)]
pub struct SamplerConfig {
    /// 0 picks the most likely token (greedy); otherwise logits are divided by it.
    pub temperature: f32,
    /// Keep only the k most likely tokens (0: off).
    pub top_k: usize,
    /// Keep the smallest set of tokens whose probability reaches p (1: off).
    pub top_p: f32,
    /// Drop tokens less likely than `min_p` times the most likely one (0: off).
    pub min_p: f32,
    /// Divide positive logits (multiply negative ones) of recent tokens (1: off).
    pub repetition_penalty: f32,
    /// How many recent tokens the penalty looks at.
    pub repeat_last_n: usize,
    pub seed: u64,
}

impl Default for SamplerConfig {
    fn default() -> Self {
        SamplerConfig {
            temperature: 0.0,
            top_k: 40,
            top_p: 0.95,
            min_p: 0.05,
            repetition_penalty: 1.0,
            repeat_last_n: 64,
            seed: 0,
        }
    }
}

impl SamplerConfig {
    pub fn greedy() -> Self {
        SamplerConfig::default()
    }

    pub fn is_greedy(&self) -> bool {
        self.temperature <= 0.0
    }

    /// Rejects settings that have no meaning (negative or NaN values).
    pub fn validate(&self) -> Result<()> {
        let bad = |name: &'static str, value: f32| Error::InvalidSampler { name, value };
        if !(self.temperature >= 0.0 && self.temperature.is_finite()) {
            return Err(bad("temperature", self.temperature));
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return Err(bad("top_p", self.top_p));
        }
        if !(0.0..=1.0).contains(&self.min_p) {
            return Err(bad("min_p", self.min_p));
        }
        if !(self.repetition_penalty > 0.0 && self.repetition_penalty.is_finite()) {
            return Err(bad("repetition_penalty", self.repetition_penalty));
        }
        Ok(())
    }
}

/// A small, fast, seedable generator (SplitMix64): sampling needs
/// reproducibility, not cryptographic strength.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    pub fn next_f32(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 24) as f32
    }
}

/// Picks tokens from logits according to a [`SamplerConfig`].
#[derive(Clone, Debug)]
pub struct Sampler {
    config: SamplerConfig,
    rng: Rng,
    candidates: Vec<(u32, f32)>,
}

/// Index of the largest logit (the first one on ties).
pub fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0usize;
    for (i, &v) in logits.iter().enumerate() {
        if v > logits[best] {
            best = i;
        }
    }
    best as u32
}

impl Sampler {
    pub fn new(config: SamplerConfig) -> Result<Self> {
        config.validate()?;
        Ok(Sampler {
            rng: Rng::new(config.seed),
            config,
            candidates: Vec::new(),
        })
    }

    pub fn config(&self) -> &SamplerConfig {
        &self.config
    }

    /// The probability distribution the sampler draws from, after every
    /// filter: `(token, probability)` pairs, most likely first.
    pub fn distribution(&mut self, logits: &[f32], history: &[u32]) -> &[(u32, f32)] {
        let c = &self.config;
        self.candidates.clear();
        self.candidates
            .extend(logits.iter().enumerate().map(|(i, &l)| (i as u32, l)));
        if c.repetition_penalty != 1.0 {
            let recent = &history[history.len().saturating_sub(c.repeat_last_n)..];
            let mut seen = std::collections::HashSet::new();
            for &t in recent {
                if seen.insert(t) {
                    if let Some(entry) = self.candidates.get_mut(t as usize) {
                        entry.1 = if entry.1 > 0.0 {
                            entry.1 / c.repetition_penalty
                        } else {
                            entry.1 * c.repetition_penalty
                        };
                    }
                }
            }
        }
        if c.is_greedy() {
            let best = self
                .candidates
                .iter()
                .copied()
                .fold(
                    (0u32, f32::NEG_INFINITY),
                    |a, b| if b.1 > a.1 { b } else { a },
                );
            self.candidates.clear();
            self.candidates.push((best.0, 1.0));
            return &self.candidates;
        }
        let by_logit = |a: &(u32, f32), b: &(u32, f32)| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0));
        let k = if c.top_k == 0 {
            self.candidates.len()
        } else {
            c.top_k.min(self.candidates.len())
        };
        if k < self.candidates.len() {
            self.candidates.select_nth_unstable_by(k - 1, by_logit);
            self.candidates.truncate(k);
        }
        self.candidates.sort_unstable_by(by_logit);
        // Softmax at temperature 1 for the top-p and min-p filters, as llama.cpp does.
        let softmax = |cands: &mut Vec<(u32, f32)>, temperature: f32| {
            let max = cands.first().map_or(0.0, |x| x.1);
            let mut sum = 0.0f32;
            for x in cands.iter_mut() {
                x.1 = ((x.1 - max) / temperature).exp();
                sum += x.1;
            }
            for x in cands.iter_mut() {
                x.1 /= sum;
            }
        };
        let mut probs = self.candidates.clone();
        softmax(&mut probs, 1.0);
        let mut keep = probs.len();
        if c.top_p < 1.0 {
            let mut cum = 0.0;
            for (i, p) in probs.iter().enumerate() {
                cum += p.1;
                if cum >= c.top_p {
                    keep = i + 1;
                    break;
                }
            }
        }
        if c.min_p > 0.0 {
            let floor = probs.first().map_or(0.0, |p| p.1) * c.min_p;
            keep = keep.min(probs.iter().take_while(|p| p.1 >= floor).count().max(1));
        }
        self.candidates.truncate(keep.max(1));
        softmax(&mut self.candidates, c.temperature);
        &self.candidates
    }

    /// A uniform draw in [0, 1) from the sampler's seeded generator, for
    /// callers that draw from a [`Sampler::distribution`] themselves
    /// (speculative sampling's accept/reject tests), so that a fixed seed
    /// still reproduces a whole run.
    pub fn next_uniform(&mut self) -> f32 {
        self.rng.next_f32()
    }

    /// Draws the next token.
    pub fn sample(&mut self, logits: &[f32], history: &[u32]) -> u32 {
        if self.config.is_greedy() && self.config.repetition_penalty == 1.0 {
            return argmax(logits);
        }
        let u = self.rng.next_f32();
        let dist = self.distribution(logits, history);
        let mut cum = 0.0;
        for &(t, p) in dist {
            cum += p;
            if u < cum {
                return t;
            }
        }
        dist.last().map_or(0, |x| x.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greedy_takes_the_first_maximum() {
        let mut s = Sampler::new(SamplerConfig::greedy()).unwrap();
        assert_eq!(s.sample(&[0.1, 3.0, 3.0, -1.0], &[]), 1);
    }

    #[test]
    fn seeded_sampling_is_reproducible_and_respects_top_k() {
        let logits: Vec<f32> = (0..100).map(|i| (i as f32 * 0.37).sin() * 3.0).collect();
        let config = SamplerConfig {
            temperature: 0.8,
            top_k: 5,
            top_p: 1.0,
            min_p: 0.0,
            seed: 42,
            ..SamplerConfig::default()
        };
        let mut a = Sampler::new(config.clone()).unwrap();
        let mut b = Sampler::new(config).unwrap();
        let mut top5: Vec<u32> = (0..100u32).collect();
        top5.sort_by(|&x, &y| logits[y as usize].total_cmp(&logits[x as usize]));
        top5.truncate(5);
        for _ in 0..200 {
            let t = a.sample(&logits, &[]);
            assert_eq!(t, b.sample(&logits, &[]));
            assert!(top5.contains(&t));
        }
    }

    #[test]
    fn min_p_and_top_p_cut_the_tail() {
        let logits = [5.0, 4.9, 0.0, -3.0];
        let mut s = Sampler::new(SamplerConfig {
            temperature: 1.0,
            top_k: 0,
            top_p: 1.0,
            min_p: 0.5,
            ..SamplerConfig::default()
        })
        .unwrap();
        let d: Vec<u32> = s.distribution(&logits, &[]).iter().map(|x| x.0).collect();
        assert_eq!(d, vec![0, 1]);
        let mut s = Sampler::new(SamplerConfig {
            temperature: 1.0,
            top_k: 0,
            top_p: 0.5,
            min_p: 0.0,
            ..SamplerConfig::default()
        })
        .unwrap();
        assert_eq!(s.distribution(&logits, &[]).len(), 1);
    }

    #[test]
    fn repetition_penalty_demotes_recent_tokens() {
        let mut s = Sampler::new(SamplerConfig {
            repetition_penalty: 2.0,
            ..SamplerConfig::greedy()
        })
        .unwrap();
        assert_eq!(s.sample(&[3.0, 2.0], &[0]), 1);
    }

    #[test]
    fn rejects_meaningless_settings() {
        for bad in [
            SamplerConfig {
                temperature: -1.0,
                ..Default::default()
            },
            SamplerConfig {
                top_p: 0.0,
                ..Default::default()
            },
            SamplerConfig {
                min_p: f32::NAN,
                ..Default::default()
            },
            SamplerConfig {
                repetition_penalty: 0.0,
                ..Default::default()
            },
        ] {
            assert!(Sampler::new(bad).is_err());
        }
    }
}
