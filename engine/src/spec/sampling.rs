//! Sampling-mode acceptance of a draft tree: the tokens it emits follow the
//! sampler's distribution exactly, as if they had been drawn one at a time.
//!
//! This is SpecInfer's multi-candidate speculative sampling specialised to
//! drafts that are deterministic (each proposed child has draft probability
//! 1, so the usual `min(1, p/q)` test becomes "accept with probability p").
//!
//! At a node, with target distribution `p` (the sampler's distribution of
//! that node's row, given the history and the path to the node), the
//! children `c_1..c_k` are tried in order: `c_i` is accepted with probability
//! `p(c_i)`; when rejected, `p(c_i)` is set to 0 and `p` renormalised before
//! the next child. An accepted child becomes the current node; when every
//! child is rejected (or there is none), the bonus token is drawn from what
//! is left of `p`.
//!
//! Why this is exact: the token emitted at a node has distribution `p`. By
//! induction on `k`: with no child it is drawn from `p`. Otherwise `c_1` is
//! emitted with probability `p(c_1)`, and with probability `1 - p(c_1)` the
//! rest runs on `p' = p` without `c_1`, renormalised; by induction it emits
//! any `x != c_1` with probability `p'(x) = p(x) / (1 - p(c_1))`, so in all
//! `(1 - p(c_1)) p'(x) = p(x)`. (Children hold distinct tokens, since the
//! tree is a trie.) When the emitted token is a child, the next one comes
//! from that child's row, whose logits and history are exactly those of the
//! emitted prefix, so it again follows the target given that prefix; a bonus
//! ends the step and the next step starts from the emitted prefix too. Every
//! emitted token thus follows the target distribution given the tokens
//! before it, which makes the whole sequence's distribution the target's.

use super::{Acceptance, DraftTree, NodeId};
use crate::{Error, Result, Sampler};

/// Sampling-mode acceptance with reusable scratch buffers, so that a step
/// does not allocate beyond the returned path (keep one per generation).
#[derive(Clone, Debug, Default)]
pub struct TreeSampling {
    /// What is left of the current node's distribution: `(token, weight)`,
    /// rejected children's weights set to 0 (weights need not sum to 1).
    residual: Vec<(u32, f32)>,
    /// The part of the history the repetition penalty can see, then the
    /// accepted path's tokens.
    history: Vec<u32>,
}

impl TreeSampling {
    pub fn new() -> Self {
        Self::default()
    }

    /// Accepts a path of `tree` and draws the bonus token after it, keeping
    /// `sampler`'s distribution exactly (see the module docs).
    ///
    /// - `logits`: the verify pass's rows, `vocab` values each: row 0 the
    ///   root, row `i + 1` node `i` (as [`DraftTree::rows`] packs them).
    /// - `history`: every token before row 0's prediction, the root token
    ///   included (the repetition penalty's window); a node's row is
    ///   sampled with the path's tokens appended to it.
    ///
    /// Draws come from the sampler's own seeded generator, so a fixed seed
    /// reproduces a run. Under a greedy config the result is
    /// [`DraftTree::accept_greedy`]'s on the rows' argmaxes.
    pub fn accept(
        &mut self,
        tree: &DraftTree,
        logits: &[f32],
        vocab: usize,
        sampler: &mut Sampler,
        history: &[u32],
    ) -> Result<Acceptance> {
        let rows = tree.len() + 1;
        if vocab == 0 || rows.checked_mul(vocab) != Some(logits.len()) {
            return Err(Error::TreeLogitsShape {
                rows,
                vocab,
                actual: logits.len(),
            });
        }
        // The penalty looks at the last `repeat_last_n` tokens only; copying
        // just those keeps the copy short whatever the history's length.
        let window = sampler.config().repeat_last_n;
        self.history.clear();
        self.history
            .extend_from_slice(&history[history.len().saturating_sub(window)..]);

        let mut path = Vec::new();
        let mut at: Option<NodeId> = None;
        loop {
            let row = at.map_or(0, |node| node + 1);
            let row_logits = &logits[row * vocab..(row + 1) * vocab];
            self.residual.clear();
            self.residual
                .extend_from_slice(sampler.distribution(row_logits, &self.history));
            match self.try_children(tree, at, sampler) {
                Some(child) => {
                    path.push(child);
                    self.history.push(tree.token(child));
                    at = Some(child);
                }
                None => {
                    let bonus = self.draw_residual(sampler);
                    return Ok(Acceptance { path, bonus });
                }
            }
        }
    }

    /// Tries the children of `parent` in order against the residual: the
    /// first accepted one, or `None` with the rejected ones zeroed.
    fn try_children(
        &mut self,
        tree: &DraftTree,
        parent: Option<NodeId>,
        sampler: &mut Sampler,
    ) -> Option<NodeId> {
        let mut mass: f32 = self.residual.iter().map(|entry| entry.1).sum();
        for child in (0..tree.len()).filter(|&node| tree.parent(node) == parent) {
            let token = tree.token(child);
            // A token the filters dropped (or outside the vocabulary) has
            // probability 0: rejected without a draw.
            let Some(entry) = self.residual.iter_mut().find(|entry| entry.0 == token) else {
                continue;
            };
            let weight = entry.1;
            if weight.is_nan() || weight <= 0.0 {
                continue;
            }
            // Accept with probability weight / mass. A child holding all the
            // mass needs no draw (greedy configs then use no randomness here).
            if weight >= mass || sampler.next_uniform() * mass < weight {
                return Some(child);
            }
            entry.1 = 0.0;
            // Rejection implies weight < mass, so what is left stays positive.
            mass -= weight;
        }
        None
    }

    /// Draws a token from the residual (renormalised by its own sum).
    fn draw_residual(&self, sampler: &mut Sampler) -> u32 {
        let mass: f32 = self.residual.iter().map(|entry| entry.1).sum();
        let target = sampler.next_uniform() * mass;
        let mut cumulative = 0.0;
        let mut last_possible = None;
        for &(token, weight) in &self.residual {
            if weight > 0.0 {
                cumulative += weight;
                last_possible = Some(token);
                if target < cumulative {
                    return token;
                }
            }
        }
        // Rounding left `target` at the very top: the last token that can
        // still be drawn (never a rejected child, whose weight is 0).
        last_possible
            .or_else(|| self.residual.first().map(|entry| entry.0))
            .unwrap_or(0)
    }
}

/// [`TreeSampling::accept`] with fresh scratch buffers (keep a
/// [`TreeSampling`] instead to reuse them from step to step).
pub fn accept_sampled(
    tree: &DraftTree,
    logits: &[f32],
    vocab: usize,
    sampler: &mut Sampler,
    history: &[u32],
) -> Result<Acceptance> {
    TreeSampling::new().accept(tree, logits, vocab, sampler, history)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sampler::{argmax, Rng};
    use crate::SamplerConfig;
    use std::collections::HashMap;

    const VOCAB: usize = 12;
    /// Emitted tokens compared per draw: enough to reach depth 3 of the tree.
    const PREFIX: usize = 3;
    const DRAWS: usize = 30_000;
    /// Tokens before the first verify pass (root last); 3 and 6 are in the
    /// tree, so the repetition penalty touches its rows.
    const START: [u32; 3] = [9, 3, 6];

    /// Root children 3, 5, 7; 3 has children 1 and 6; 1 has child 4; 5 has
    /// child 2. Nodes: 0:3 1:1 2:4 3:6 4:5 5:2 6:7.
    fn branching_tree() -> DraftTree {
        let mut tree = DraftTree::new();
        for path in [&[3u32, 1, 4][..], &[3, 6], &[5, 2], &[7]] {
            tree.add_path(path, 64);
        }
        tree
    }

    /// The model of these tests: fixed, distinct logits for every emitted
    /// prefix (a hash of it), with the tree's tokens raised so that paths
    /// get accepted often.
    fn logits_after(prefix: &[u32], out: &mut Vec<f32>) {
        let key = prefix.iter().fold(0x5EED_u64, |key, &token| {
            Rng::new(key ^ u64::from(token)).next_u64()
        });
        out.clear();
        out.extend((0..VOCAB as u64).map(|token| {
            let noise = Rng::new(key.wrapping_add(token)).next_f32() * 4.0 - 2.0;
            let raised = if (1..=7).contains(&token) { 1.0 } else { 0.0 };
            noise + raised
        }));
    }

    /// The verify pass's rows for `tree` after `prefix`.
    fn tree_logits(tree: &DraftTree, prefix: &[u32]) -> Vec<f32> {
        let mut rows = Vec::with_capacity((tree.len() + 1) * VOCAB);
        let mut row = Vec::new();
        logits_after(prefix, &mut row);
        rows.extend_from_slice(&row);
        for node in 0..tree.len() {
            let mut path = vec![tree.token(node)];
            let mut at = tree.parent(node);
            while let Some(ancestor) = at {
                path.push(tree.token(ancestor));
                at = tree.parent(ancestor);
            }
            path.extend(prefix.iter().rev());
            path.reverse();
            logits_after(&path, &mut row);
            rows.extend_from_slice(&row);
        }
        rows
    }

    type Acceptor = dyn FnMut(&DraftTree, &[f32], &mut Sampler, &[u32]) -> Result<Acceptance>;

    /// Runs speculative steps (the same tree shape under every root) until
    /// `PREFIX` tokens are emitted; returns them.
    fn emit_prefix(accept: &mut Acceptor, sampler: &mut Sampler) -> [u32; PREFIX] {
        let tree = branching_tree();
        let mut history = START.to_vec();
        while history.len() < START.len() + PREFIX {
            let logits = tree_logits(&tree, &history[START.len()..]);
            let acceptance =
                accept(&tree, &logits, sampler, &history).expect("the rows fit the tree");
            history.extend(acceptance.path.iter().map(|&node| tree.token(node)));
            history.push(acceptance.bonus);
        }
        let mut prefix = [0; PREFIX];
        prefix.copy_from_slice(&history[START.len()..START.len() + PREFIX]);
        prefix
    }

    /// The target's exact probability of every `PREFIX`-token outcome:
    /// plain sequential sampling, one token at a time.
    fn target_joint(config: &SamplerConfig) -> HashMap<[u32; PREFIX], f64> {
        let mut sampler = Sampler::new(config.clone()).expect("valid config");
        let mut joint = HashMap::new();
        let mut logits = Vec::new();
        // Depth-first over prefixes: (emitted so far, its probability).
        let mut stack = vec![(Vec::new(), 1.0f64)];
        while let Some((prefix, probability)) = stack.pop() {
            if prefix.len() == PREFIX {
                let mut key = [0; PREFIX];
                key.copy_from_slice(&prefix);
                *joint.entry(key).or_insert(0.0) += probability;
                continue;
            }
            logits_after(&prefix, &mut logits);
            let history: Vec<u32> = START.iter().chain(&prefix).copied().collect();
            for &(token, p) in sampler.distribution(&logits, &history) {
                let mut longer = prefix.clone();
                longer.push(token);
                stack.push((longer, probability * f64::from(p)));
            }
        }
        joint
    }

    /// Pearson's chi-square of `observed` counts against the target joint
    /// (cells expected under 5 times pooled) and its p-value.
    fn chi_square(
        observed: &HashMap<[u32; PREFIX], usize>,
        joint: &HashMap<[u32; PREFIX], f64>,
        draws: usize,
    ) -> (f64, f64) {
        // (expected, observed) per cell; outcomes the target never produces
        // go to the pooled cell, where they weigh heavily.
        let mut cells: Vec<(f64, f64)> = joint
            .iter()
            .map(|(key, &p)| {
                let seen = observed.get(key).copied().unwrap_or(0);
                (p * draws as f64, seen as f64)
            })
            .collect();
        let impossible: usize = observed
            .iter()
            .filter(|(key, _)| !joint.contains_key(*key))
            .map(|(_, &count)| count)
            .sum();
        // Smallest first, each cell joins the pool until the pool is
        // expected 5 times; then the pool is a cell and a new one starts.
        cells.sort_by(|a, b| a.0.total_cmp(&b.0));
        let mut pooled = (0.0, impossible as f64);
        let mut kept: Vec<(f64, f64)> = Vec::new();
        for cell in cells {
            pooled.0 += cell.0;
            pooled.1 += cell.1;
            if pooled.0 >= 5.0 {
                kept.push(pooled);
                pooled = (0.0, 0.0);
            }
        }
        // What is left (less than 5 expected) joins the last pooled cell,
        // the one it is most like.
        match kept.last_mut() {
            Some(last) => {
                last.0 += pooled.0;
                last.1 += pooled.1;
            }
            None => kept.push(pooled),
        }
        let statistic: f64 = kept
            .iter()
            .map(|&(expected, seen)| (seen - expected).powi(2) / expected.max(1e-300))
            .sum();
        let degrees = kept.len().saturating_sub(1).max(1) as f64;
        (
            statistic,
            upper_regularized_gamma(degrees / 2.0, statistic / 2.0),
        )
    }

    /// ln Γ(x) for x > 0 (Lanczos, g = 7, 9 terms).
    fn ln_gamma(x: f64) -> f64 {
        const COEFFICIENTS: [f64; 9] = [
            0.999_999_999_999_809_9,
            676.520_368_121_885_1,
            -1_259.139_216_722_402_8,
            771.323_428_777_653_1,
            -176.615_029_162_140_6,
            12.507_343_278_686_905,
            -0.138_571_095_265_720_12,
            9.984_369_578_019_572e-6,
            1.505_632_735_149_311_6e-7,
        ];
        if x < 0.5 {
            // Reflection keeps the series in its accurate range.
            let pi = std::f64::consts::PI;
            return (pi / (pi * x).sin()).ln() - ln_gamma(1.0 - x);
        }
        let x = x - 1.0;
        let t = x + 7.5;
        let series = COEFFICIENTS[1..]
            .iter()
            .enumerate()
            .fold(COEFFICIENTS[0], |sum, (i, &c)| {
                sum + c / (x + i as f64 + 1.0)
            });
        0.5 * (2.0 * std::f64::consts::PI).ln() + (x + 0.5) * t.ln() - t + series.ln()
    }

    /// Q(a, x) = Γ(a, x) / Γ(a): the chi-square survival function at
    /// a = k/2, x = χ²/2. Series below a + 1, continued fraction above.
    fn upper_regularized_gamma(a: f64, x: f64) -> f64 {
        if x <= 0.0 {
            return 1.0;
        }
        let log_prefactor = a * x.ln() - x - ln_gamma(a);
        if x < a + 1.0 {
            let (mut term, mut sum, mut denominator) = (1.0 / a, 1.0 / a, a);
            for _ in 0..1000 {
                denominator += 1.0;
                term *= x / denominator;
                sum += term;
                if term.abs() < sum.abs() * 1e-15 {
                    break;
                }
            }
            return (1.0 - sum * log_prefactor.exp()).max(0.0);
        }
        // Modified Lentz for the continued fraction of Γ(a, x).
        let tiny = 1e-300;
        let mut b = x + 1.0 - a;
        let mut c = 1.0 / tiny;
        let mut d = 1.0 / b;
        let mut fraction = d;
        for i in 1..1000 {
            let an = -(i as f64) * (i as f64 - a);
            b += 2.0;
            d = an * d + b;
            d = if d.abs() < tiny { tiny } else { d };
            c = b + an / c;
            c = if c.abs() < tiny { tiny } else { c };
            d = 1.0 / d;
            let step = d * c;
            fraction *= step;
            if (step - 1.0).abs() < 1e-15 {
                break;
            }
        }
        (log_prefactor.exp() * fraction).clamp(0.0, 1.0)
    }

    /// Draws `DRAWS` prefixes with `accept` and returns the chi-square
    /// statistic against the target and its p-value.
    fn goodness_of_fit(config: &SamplerConfig, accept: &mut Acceptor) -> (f64, f64) {
        let mut sampler = Sampler::new(config.clone()).expect("valid config");
        let mut observed = HashMap::new();
        for _ in 0..DRAWS {
            *observed
                .entry(emit_prefix(accept, &mut sampler))
                .or_insert(0) += 1;
        }
        chi_square(&observed, &target_joint(config), DRAWS)
    }

    fn fair(
        tree: &DraftTree,
        logits: &[f32],
        sampler: &mut Sampler,
        history: &[u32],
    ) -> Result<Acceptance> {
        accept_sampled(tree, logits, VOCAB, sampler, history)
    }

    fn temperature_one() -> SamplerConfig {
        SamplerConfig {
            temperature: 1.0,
            top_k: 0,
            top_p: 1.0,
            min_p: 0.0,
            seed: 11,
            ..SamplerConfig::default()
        }
    }

    fn every_filter() -> SamplerConfig {
        SamplerConfig {
            temperature: 0.7,
            top_k: 8,
            top_p: 0.9,
            min_p: 0.08,
            repetition_penalty: 1.6,
            repeat_last_n: 64,
            seed: 23,
        }
    }

    /// How a deliberately wrong acceptance deviates.
    #[derive(Clone, Copy)]
    enum Bias {
        /// Accepts a child with probability min(1, 1.5 p).
        OverAccept,
        /// Tests later children against the original p, not the residual.
        NoRenormalisation,
    }

    /// Wrong on purpose: the tests must be able to tell. Works on dense
    /// probabilities, unlike the real code.
    fn biased(
        bias: Bias,
    ) -> impl FnMut(&DraftTree, &[f32], &mut Sampler, &[u32]) -> Result<Acceptance> {
        move |tree, logits, sampler, history| {
            let mut context = history.to_vec();
            let mut path = Vec::new();
            let mut at = None;
            loop {
                let row = at.map_or(0, |node: NodeId| node + 1);
                let mut original = [0.0f64; VOCAB];
                for &(token, p) in
                    sampler.distribution(&logits[row * VOCAB..(row + 1) * VOCAB], &context)
                {
                    original[token as usize] = f64::from(p);
                }
                let mut left = original;
                let accepted = (0..tree.len())
                    .filter(|&node| tree.parent(node) == at)
                    .find(|&child| {
                        let token = tree.token(child) as usize;
                        let renormalised = left[token] / left.iter().sum::<f64>();
                        let chance = match bias {
                            Bias::OverAccept => (1.5 * renormalised).min(1.0),
                            Bias::NoRenormalisation => original[token],
                        };
                        let taken = f64::from(sampler.next_uniform()) < chance;
                        left[token] = 0.0;
                        taken
                    });
                let Some(child) = accepted else {
                    let mut target = f64::from(sampler.next_uniform()) * left.iter().sum::<f64>();
                    let bonus = left.iter().position(|&weight| {
                        target -= weight;
                        weight > 0.0 && target < 0.0
                    });
                    return Ok(Acceptance {
                        path,
                        bonus: bonus.map_or(0, |token| token as u32),
                    });
                };
                path.push(child);
                context.push(tree.token(child));
                at = Some(child);
            }
        }
    }

    #[test]
    fn chi_square_p_values_match_tables() {
        for (degrees, statistic, p) in [
            (1.0, 3.841_459, 0.05),
            (2.0, 9.210_340, 0.01),
            (10.0, 23.209_251, 0.01),
            (100.0, 124.342_114, 0.05),
            (4.0, 1.063_623, 0.9),
        ] {
            let got = upper_regularized_gamma(degrees / 2.0, statistic / 2.0);
            assert!((got - p).abs() < 1e-5, "df {degrees}: {got} vs {p}");
        }
    }

    #[test]
    fn sampled_prefixes_follow_the_target_at_temperature_one() {
        let (statistic, p) = goodness_of_fit(&temperature_one(), &mut fair);
        eprintln!("temperature 1: chi-square {statistic:.1}, p = {p:.4}");
        assert!(p > 0.01, "chi-square {statistic:.1}, p = {p}");
    }

    #[test]
    fn sampled_prefixes_follow_the_target_with_every_filter_and_penalty() {
        let (statistic, p) = goodness_of_fit(&every_filter(), &mut fair);
        eprintln!("every filter: chi-square {statistic:.1}, p = {p:.4}");
        assert!(p > 0.01, "chi-square {statistic:.1}, p = {p}");
    }

    #[test]
    fn biased_acceptance_fails_the_same_test() {
        for (name, bias) in [
            ("over-accepting", Bias::OverAccept),
            ("not renormalising", Bias::NoRenormalisation),
        ] {
            for config in [temperature_one(), every_filter()] {
                let (statistic, p) = goodness_of_fit(&config, &mut biased(bias));
                eprintln!(
                    "{name}, temperature {}: chi-square {statistic:.1}, p = {p:.2e}",
                    config.temperature
                );
                assert!(p < 0.01, "{name}: chi-square {statistic:.1}, p = {p}");
            }
        }
    }

    #[test]
    fn greedy_config_gives_accept_greedys_result() {
        let tree = branching_tree();
        let mut sampler = Sampler::new(SamplerConfig::greedy()).expect("valid config");
        let mut scratch = TreeSampling::new();
        let mut paths_seen = std::collections::HashSet::new();
        for step in 0..200u32 {
            let prefix = [step % VOCAB as u32, step / VOCAB as u32];
            let mut logits = tree_logits(&tree, &prefix);
            // Make some steps follow the tree deep: node 0 (3) after the
            // root, node 1 (1) after it, node 2 (4) after that.
            if step % 3 == 0 {
                for (row, token) in [(0, 3), (1, 1), (2, 4)] {
                    logits[row * VOCAB + token] = 10.0;
                }
            }
            let predicted: Vec<u32> = logits.chunks_exact(VOCAB).map(argmax).collect();
            let want = tree.accept_greedy(&predicted).expect("a row per node");
            let got = scratch
                .accept(&tree, &logits, VOCAB, &mut sampler, &START)
                .expect("the rows fit the tree");
            assert_eq!(got, want, "step {step}");
            paths_seen.insert(got.path);
        }
        assert!(paths_seen.len() >= 3, "the steps took too few paths");
    }

    #[test]
    fn a_fixed_seed_reproduces_the_run() {
        let run = || {
            let mut sampler = Sampler::new(every_filter()).expect("valid config");
            (0..50)
                .map(|_| emit_prefix(&mut fair, &mut sampler))
                .collect::<Vec<_>>()
        };
        assert_eq!(run(), run());
    }

    #[test]
    fn an_empty_tree_draws_from_the_roots_distribution() {
        let mut sampler = Sampler::new(temperature_one()).expect("valid config");
        let logits = [0.0, 0.0, 50.0, 0.0];
        let acceptance = accept_sampled(&DraftTree::new(), &logits, 4, &mut sampler, &[])
            .expect("one row of four");
        assert_eq!(acceptance.path, Vec::<NodeId>::new());
        assert_eq!(acceptance.bonus, 2);
    }

    #[test]
    fn children_outside_the_vocabulary_are_rejected() {
        let mut tree = DraftTree::new();
        tree.add_path(&[1000], 8);
        tree.add_path(&[1], 8);
        let mut sampler = Sampler::new(temperature_one()).expect("valid config");
        let logits = [0.0, 50.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0];
        let acceptance =
            accept_sampled(&tree, &logits, 4, &mut sampler, &[]).expect("three rows of four");
        assert_eq!(acceptance.path, vec![1]);
    }

    #[test]
    fn logits_of_the_wrong_shape_are_an_error() {
        let tree = branching_tree();
        let mut sampler = Sampler::new(temperature_one()).expect("valid config");
        let rows = tree.len() + 1;
        for (logits, vocab) in [
            (vec![0.0; rows * VOCAB - 1], VOCAB),
            (vec![0.0; rows * VOCAB + VOCAB], VOCAB),
            (Vec::new(), 0),
            (vec![0.0; 4], usize::MAX),
        ] {
            assert!(matches!(
                accept_sampled(&tree, &logits, vocab, &mut sampler, &[]),
                Err(Error::TreeLogitsShape { .. })
            ));
        }
    }
}
