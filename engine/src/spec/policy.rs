//! Adaptive drafting: how much of the drafters' candidates one verify pass
//! should check.
//!
//! A verify pass of width `w` is not free on a CPU: each extra row costs
//! compute, and a long draft whose first token is wrong only slows the step
//! down. So each step ranks the candidates' tokens by their estimated chance
//! of being accepted and keeps the number of them that maximises expected
//! tokens per second:
//!
//! `(1 + Σ P(node)) / cost(1 + nodes)`
//!
//! `P(node)` is the probability that the node's whole path is the model's
//! continuation; the sum over a trie whose branches start with distinct
//! tokens is exactly the expected number of accepted draft tokens. The
//! estimates are learned online from this request: per match length (how
//! long the context match behind a candidate was) and per rank, how often a
//! candidate's first token was right, and per depth how often a token was
//! right after a right prefix. Learning is counterfactual: every candidate is
//! scored against the tokens the model actually emitted, drafted or not, so
//! short drafts still teach what longer ones would have earned.
//!
//! `cost(w)` is the measured time of a verify pass of `w` rows
//! ([`crate::Session::measure_verify_costs`]).

use super::{Candidates, DraftTree};

/// Match-length buckets: 1, 2, ..., `MATCH_BUCKETS - 1` and longer.
const MATCH_BUCKETS: usize = 8;
/// Candidates per step considered, by distinct first token.
const RANKS: usize = 4;
/// Depths with their own continuation estimate (deeper ones share the last).
const DEPTHS: usize = 16;
/// Weight of the prior, in observations.
const PRIOR_WEIGHT: f64 = 2.0;
/// Prior chance that the best candidate's first token is right (later ranks
/// get this divided by their rank).
const PRIOR_FIRST: f64 = 0.3;
/// Prior chance that a token is right after a right prefix.
const PRIOR_NEXT: f64 = 0.7;

/// A success rate with a prior: `(hits + w·prior) / (tries + w)`.
#[derive(Clone, Copy, Debug)]
struct Rate {
    hits: f64,
    tries: f64,
    prior: f64,
}

impl Rate {
    fn new(prior: f64) -> Self {
        Rate {
            hits: 0.0,
            tries: 0.0,
            prior,
        }
    }

    fn estimate(&self) -> f64 {
        (self.hits + PRIOR_WEIGHT * self.prior) / (self.tries + PRIOR_WEIGHT)
    }

    fn record(&mut self, hit: bool) {
        self.tries += 1.0;
        if hit {
            self.hits += 1.0;
        }
    }
}

/// A draft node under consideration: candidate `rank`'s first `depth` tokens.
#[derive(Clone, Copy, Debug)]
struct Scored {
    probability: f64,
    rank: usize,
    depth: usize,
}

/// Per-request drafting policy (see the module docs).
#[derive(Clone, Debug)]
pub struct AdaptiveDrafting {
    /// `first[bucket][rank]`: the rank's first token is the model's next.
    first: Vec<[Rate; RANKS]>,
    /// `next[bucket][depth]`: token `depth` is right given the ones before.
    next: Vec<[Rate; DEPTHS]>,
    /// Verify pass time by width (index 0 unused; 1..).
    cost: Vec<f64>,
    /// This step's candidates with distinct first tokens: `(index in the
    /// candidate buffer, bucket)`.
    kept: Vec<(usize, usize)>,
    scored: Vec<Scored>,
}

impl AdaptiveDrafting {
    /// `cost[w]`: the time of a verify pass of `w` rows (`cost[0]` unused).
    /// Widths past the end of `cost` are never used.
    pub fn new(cost: Vec<f64>) -> Self {
        let first = std::array::from_fn(|rank| Rate::new(PRIOR_FIRST / (rank + 1) as f64));
        AdaptiveDrafting {
            first: vec![first; MATCH_BUCKETS],
            next: vec![[Rate::new(PRIOR_NEXT); DEPTHS]; MATCH_BUCKETS],
            cost,
            kept: Vec::with_capacity(RANKS),
            scored: Vec::new(),
        }
    }

    /// Forgets what was learned (a new request); keeps the costs.
    pub fn reset(&mut self) {
        let fresh = Self::new(std::mem::take(&mut self.cost));
        *self = fresh;
    }

    fn bucket(match_len: usize) -> usize {
        match_len.clamp(1, MATCH_BUCKETS) - 1
    }

    /// Keeps the candidates with distinct first tokens, best first.
    fn keep_distinct(&mut self, candidates: &Candidates) {
        self.kept.clear();
        for (i, (tokens, match_len)) in candidates.iter().enumerate() {
            let Some(&first) = tokens.first() else {
                continue;
            };
            let seen = self.kept.iter().any(|&(j, _)| {
                candidates
                    .get(j)
                    .is_some_and(|(t, _)| t.first() == Some(&first))
            });
            if !seen {
                self.kept.push((i, Self::bucket(match_len)));
                if self.kept.len() == RANKS {
                    break;
                }
            }
        }
    }

    /// Puts the best part of `candidates` into `tree` (cleared by the
    /// caller), at most `budget` nodes: the set of nodes with the highest
    /// expected accepted tokens per unit of verify cost.
    pub fn choose(&mut self, candidates: &Candidates, budget: usize, tree: &mut DraftTree) {
        self.keep_distinct(candidates);
        self.scored.clear();
        for (rank, &(index, bucket)) in self.kept.iter().enumerate() {
            let Some((tokens, _)) = candidates.get(index) else {
                continue;
            };
            let mut probability = self.first[bucket][rank].estimate();
            for depth in 1..=tokens.len().min(budget) {
                if depth > 1 {
                    probability *= self.next[bucket][(depth - 1).min(DEPTHS - 1)].estimate();
                }
                self.scored.push(Scored {
                    probability,
                    rank,
                    depth,
                });
            }
        }
        // A node is never likelier than its parent, so any prefix of this
        // order is a valid tree.
        self.scored
            .sort_by(|a, b| b.probability.total_cmp(&a.probability));
        let widest = budget.min(self.cost.len().saturating_sub(2));
        let Some(&single) = self.cost.get(1) else {
            return;
        };
        let (mut best_rate, mut best_nodes) = (1.0 / single, 0);
        let mut expected = 0.0;
        for (n, node) in self.scored.iter().take(widest).enumerate() {
            expected += node.probability;
            let rate = (1.0 + expected) / self.cost[n + 2];
            if rate > best_rate {
                (best_rate, best_nodes) = (rate, n + 1);
            }
        }
        // Each chosen node's path: the deepest chosen node per rank.
        let mut deepest = [0usize; RANKS];
        for node in &self.scored[..best_nodes] {
            deepest[node.rank] = deepest[node.rank].max(node.depth);
        }
        for (rank, &(index, _)) in self.kept.iter().enumerate() {
            if let Some((tokens, _)) = candidates.get(index) {
                let depth = deepest[rank].min(tokens.len());
                if depth > 0 {
                    tree.add_path(&tokens[..depth], budget);
                }
            }
        }
    }

    /// Learns from a step: `emitted` are the tokens the model produced after
    /// the root (the accepted draft tokens, then the bonus token), scored
    /// against every candidate kept by the last [`AdaptiveDrafting::choose`].
    pub fn learn(&mut self, candidates: &Candidates, emitted: &[u32]) {
        for (rank, &(index, bucket)) in self.kept.iter().enumerate() {
            let Some((tokens, _)) = candidates.get(index) else {
                continue;
            };
            let (Some(&first), Some(&truth)) = (tokens.first(), emitted.first()) else {
                continue;
            };
            self.first[bucket][rank].record(first == truth);
            if first != truth {
                continue;
            }
            for (depth, (&drafted, &actual)) in tokens.iter().zip(emitted).enumerate().skip(1) {
                self.next[bucket][depth.min(DEPTHS - 1)].record(drafted == actual);
                if drafted != actual {
                    break;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn linear_costs(step: f64, widest: usize) -> Vec<f64> {
        (0..=widest).map(|w| 1.0 + step * w as f64).collect()
    }

    #[test]
    fn free_rows_take_the_whole_budget_and_costly_rows_none() {
        let mut candidates = Candidates::default();
        candidates.push(&[1, 2, 3, 4, 5], 3);
        candidates.push(&[6, 7], 3);
        let mut tree = DraftTree::new();
        AdaptiveDrafting::new(vec![1.0; 17]).choose(&candidates, 6, &mut tree);
        assert_eq!(tree.len(), 6);
        tree.clear();
        AdaptiveDrafting::new(linear_costs(10.0, 16)).choose(&candidates, 6, &mut tree);
        assert!(tree.is_empty());
    }

    #[test]
    fn learning_follows_the_candidates_record() {
        let mut candidates = Candidates::default();
        candidates.push(&[1, 2, 3, 4, 5, 6, 7, 8], 2);
        let costs = linear_costs(0.25, 16);
        let mut always_right = AdaptiveDrafting::new(costs.clone());
        let mut always_wrong = AdaptiveDrafting::new(costs);
        let mut tree = DraftTree::new();
        for _ in 0..20 {
            tree.clear();
            always_right.choose(&candidates, 8, &mut tree);
            always_right.learn(&candidates, &[1, 2, 3, 4, 5, 6, 7, 8, 9]);
            tree.clear();
            always_wrong.choose(&candidates, 8, &mut tree);
            always_wrong.learn(&candidates, &[9]);
        }
        tree.clear();
        always_right.choose(&candidates, 8, &mut tree);
        assert_eq!(tree.len(), 8);
        tree.clear();
        always_wrong.choose(&candidates, 8, &mut tree);
        assert!(tree.is_empty());
    }

    #[test]
    fn the_tree_holds_prefixes_of_the_candidates() {
        let mut candidates = Candidates::default();
        candidates.push(&[1, 2, 3], 1);
        candidates.push(&[1, 9, 9], 1); // same first token: dropped
        candidates.push(&[4, 5], 1);
        let mut tree = DraftTree::new();
        AdaptiveDrafting::new(vec![1.0; 9]).choose(&candidates, 8, &mut tree);
        assert_eq!(tree.len(), 5);
        assert!(tree.child(None, 1).is_some() && tree.child(None, 4).is_some());
    }
}
