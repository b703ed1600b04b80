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
//! estimates are learned online from this request. A candidate that copies
//! the context is *context-aligned*: where the copied tokens stand in the
//! sequence, the session knows how confident the model was in each of them
//! ([`crate::Session::confidence`]: from the prefill logits for the prompt,
//! from the verify passes for the output). A copied token the model itself
//! found near-certain there is likely again; one it found surprising, at the
//! start of a new sentence say, is not. So the rates are kept per confidence
//! bucket: for the first token, also per match length (how long the context
//! match behind a candidate was) and rank; for later tokens, per depth, given
//! a right prefix. Learning is counterfactual: every candidate is scored
//! against the tokens the model actually emitted, drafted or not, so short
//! drafts still teach what longer ones would have earned.
//!
//! `cost(w)` is the measured time of a verify pass of `w` rows
//! ([`crate::Session::measure_verify_costs`]).

use super::{CandidateKind, Candidates, DraftTree};

/// Match-length buckets: 1, 2, ..., `MATCH_BUCKETS - 1` and longer.
const MATCH_BUCKETS: usize = 4;
/// Candidates per step considered, in the drafters' order.
const MAX_CANDIDATES: usize = 24;
/// Candidate classes with their own rates: the best literal copy, the other
/// literal copies, calibrated branches, reused segments.
const CLASSES: usize = 4;
/// Depth buckets of the continuation rates: 1, 2-3, 4-7, 8 and deeper.
const DEPTH_BUCKETS: usize = 4;
/// Upper bounds of the confidence buckets; one more bucket above the last,
/// and [`UNKNOWN`] for tokens whose confidence is not known.
const CONFIDENCE_EDGES: [f64; 6] = [0.2, 0.4, 0.6, 0.8, 0.9, 0.97];
/// Confidence buckets: the bounded ones, the top one and [`UNKNOWN`].
const CONFIDENCE_BUCKETS: usize = CONFIDENCE_EDGES.len() + 2;
/// The bucket of a token whose confidence is not known.
const UNKNOWN: usize = CONFIDENCE_BUCKETS - 1;
/// Weight of the newest pass in the running averages of pass costs.
const COST_EMA: f64 = 0.2;
/// Weight of the prior, in observations.
const PRIOR_WEIGHT: f64 = 2.0;
/// Prior chance that the best candidate's first token is right when its
/// confidence is not known.
const PRIOR_FIRST: f64 = 0.3;
/// Prior chance that a token is right after a right prefix, confidence unknown.
const PRIOR_NEXT: f64 = 0.7;
/// Per class: the share of a token's confidence its prior first-token rate
/// takes, and the prior when the confidence is unknown.
const CLASS_PRIORS: [(f64, f64); CLASSES] = [
    (0.8, PRIOR_FIRST),
    (0.3, PRIOR_FIRST / 2.0),
    (0.5, PRIOR_FIRST / 2.0),
    (0.3, PRIOR_FIRST / 2.0),
];

/// The confidence bucket of `confidence` (NaN: [`UNKNOWN`]).
fn confidence_bucket(confidence: f32) -> usize {
    if confidence.is_nan() {
        return UNKNOWN;
    }
    CONFIDENCE_EDGES
        .iter()
        .position(|&edge| (confidence as f64) < edge)
        .unwrap_or(CONFIDENCE_EDGES.len())
}

/// A typical confidence of bucket `b` (its middle), the prior of its rates.
fn bucket_prior(b: usize, unknown: f64) -> f64 {
    if b == UNKNOWN {
        return unknown;
    }
    let low = if b == 0 { 0.0 } else { CONFIDENCE_EDGES[b - 1] };
    let high = CONFIDENCE_EDGES.get(b).copied().unwrap_or(1.0);
    (low + high) / 2.0
}

fn depth_bucket(depth: usize) -> usize {
    match depth {
        0 | 1 => 0,
        2..=3 => 1,
        4..=7 => 2,
        _ => 3,
    }
}

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

/// A node of the step's candidate trie.
#[derive(Clone, Copy, Debug)]
struct TrieNode {
    token: u32,
    parent: Option<usize>,
    depth: usize,
    /// The likeliest estimate, over the candidates through this node, that
    /// its whole path is the model's continuation.
    probability: f64,
}

/// A candidate considered this step: `(index in the buffer, class, match
/// bucket)`.
type Kept = (usize, usize, usize);

/// Per-request drafting policy (see the module docs).
#[derive(Clone, Debug)]
pub struct AdaptiveDrafting {
    /// `first[class][match bucket][confidence bucket]`: the candidate's
    /// first token is the model's next.
    first: [[[Rate; CONFIDENCE_BUCKETS]; MATCH_BUCKETS]; CLASSES],
    /// `next[class][depth bucket][confidence bucket]`: a token is right
    /// given the ones before.
    next: [[[Rate; CONFIDENCE_BUCKETS]; DEPTH_BUCKETS]; CLASSES],
    /// Verify pass time by width (index 0 unused; 1..).
    cost: Vec<f64>,
    /// This request's width-1 pass time (a running average), once seen.
    single_pass: Option<f64>,
    /// What this request's extra rows cost, relative to what `cost` says
    /// (a running average; 1 until passes of both kinds were seen). The
    /// table was measured at one depth; rows cost more on a deeper cache.
    row_scale: f64,
    kept: Vec<Kept>,
    trie: Vec<TrieNode>,
    order: Vec<usize>,
    path: Vec<u32>,
    /// Scratch of [`AdaptiveDrafting::normalize_siblings`].
    sums: Vec<f64>,
    conditional: Vec<f64>,
}

impl AdaptiveDrafting {
    /// `cost[w]`: the time of a verify pass of `w` rows (`cost[0]` unused).
    /// Widths past the end of `cost` are never used.
    pub fn new(cost: Vec<f64>) -> Self {
        let first = std::array::from_fn(|class| {
            let (scale, unknown) = CLASS_PRIORS[class];
            [std::array::from_fn(|b| {
                Rate::new(if b == UNKNOWN {
                    unknown
                } else {
                    scale * bucket_prior(b, unknown)
                })
            }); MATCH_BUCKETS]
        });
        let next = [[std::array::from_fn(|b| Rate::new(bucket_prior(b, PRIOR_NEXT)));
            DEPTH_BUCKETS]; CLASSES];
        AdaptiveDrafting {
            first,
            next,
            cost,
            single_pass: None,
            row_scale: 1.0,
            kept: Vec::with_capacity(MAX_CANDIDATES),
            trie: Vec::new(),
            order: Vec::new(),
            path: Vec::new(),
            sums: Vec::new(),
            conditional: Vec::new(),
        }
    }

    /// Forgets what was learned (a new request); keeps the costs.
    pub fn reset(&mut self) {
        let fresh = Self::new(std::mem::take(&mut self.cost));
        *self = fresh;
    }

    /// Learns the cost of the request's passes: `ms` for a pass of `rows`
    /// rows.
    pub fn observe_pass(&mut self, rows: usize, ms: f64) {
        if !(ms.is_finite() && ms > 0.0) {
            return;
        }
        if rows == 1 {
            self.single_pass = Some(self.single_pass.map_or(ms, |t| t + COST_EMA * (ms - t)));
            return;
        }
        let (Some(single), Some(&table_single), Some(&table_rows)) =
            (self.single_pass, self.cost.get(1), self.cost.get(rows))
        else {
            return;
        };
        let table_extra = (table_rows - table_single) / table_single;
        if table_extra <= 1e-6 {
            return;
        }
        let sample = ((ms - single) / single / table_extra).clamp(0.25, 4.0);
        self.row_scale += COST_EMA * (sample - self.row_scale);
    }

    /// The cost of a pass of `rows` rows, with the request's row scale.
    fn pass_cost(&self, rows: usize) -> f64 {
        let single = self.cost[1];
        single + self.row_scale * (self.cost[rows] - single)
    }

    fn bucket(match_len: usize) -> usize {
        match_len.clamp(1, MATCH_BUCKETS) - 1
    }

    /// The confidence bucket of token `i` of candidate `index`: the
    /// probability it carries, else the model's confidence where the copied
    /// token stands in the sequence.
    fn token_bucket(candidates: &Candidates, index: usize, i: usize, confidence: &[f32]) -> usize {
        if let Some(c) = candidates.confidence(index, i) {
            return confidence_bucket(c);
        }
        candidates
            .source(index)
            .and_then(|source| (source + i).checked_sub(1))
            .and_then(|p| confidence.get(p))
            .map_or(UNKNOWN, |&c| confidence_bucket(c))
    }

    /// The candidates this step considers, with their classes.
    fn keep(&mut self, candidates: &Candidates) {
        self.kept.clear();
        let mut literals = 0;
        for i in 0..candidates.len().min(MAX_CANDIDATES) {
            let (Some((_, match_len)), Some(kind)) = (candidates.get(i), candidates.kind(i)) else {
                continue;
            };
            let class = match kind {
                CandidateKind::Literal => {
                    literals += 1;
                    usize::from(literals > 1)
                }
                CandidateKind::Calibrated => 2,
                CandidateKind::Reused => 3,
            };
            self.kept.push((i, class, Self::bucket(match_len)));
        }
    }

    /// Puts the best part of `candidates` into `tree` (cleared by the
    /// caller), at most `budget` nodes: the set of nodes with the highest
    /// expected accepted tokens per unit of verify cost. `confidence` is
    /// the session's record ([`crate::Session::confidence`]; may be empty).
    pub fn choose(
        &mut self,
        candidates: &Candidates,
        confidence: &[f32],
        budget: usize,
        tree: &mut DraftTree,
    ) {
        self.keep(candidates);
        // Merge the candidates into a trie; a node shared by several keeps
        // its likeliest estimate (siblings hold distinct tokens, so the
        // nodes' probabilities add up to the expected accepted tokens).
        self.trie.clear();
        for &(index, class, bucket) in &self.kept {
            let Some((tokens, _)) = candidates.get(index) else {
                continue;
            };
            let mut probability = 1.0;
            let mut parent = None;
            for (i, &token) in tokens.iter().enumerate().take(budget) {
                let conf = Self::token_bucket(candidates, index, i, confidence);
                probability *= if i == 0 {
                    self.first[class][bucket][conf].estimate()
                } else {
                    self.next[class][depth_bucket(i)][conf].estimate()
                };
                let existing = self
                    .trie
                    .iter()
                    .position(|n| n.parent == parent && n.token == token);
                let node = match existing {
                    Some(n) => {
                        let p = &mut self.trie[n].probability;
                        *p = p.max(probability);
                        n
                    }
                    None => {
                        self.trie.push(TrieNode {
                            token,
                            parent,
                            depth: i + 1,
                            probability,
                        });
                        self.trie.len() - 1
                    }
                };
                parent = Some(node);
            }
        }
        self.normalize_siblings();
        // Likeliest first, parents before children on ties: a node is
        // never likelier than its parent, so any prefix is a tree.
        self.order.clear();
        self.order.extend(0..self.trie.len());
        let trie = &self.trie;
        self.order.sort_by(|&a, &b| {
            trie[b]
                .probability
                .total_cmp(&trie[a].probability)
                .then(trie[a].depth.cmp(&trie[b].depth))
        });
        let widest = budget.min(self.cost.len().saturating_sub(2));
        let Some(&single) = self.cost.get(1) else {
            return;
        };
        let (mut best_rate, mut best_nodes) = (1.0 / single, 0);
        let mut expected = 0.0;
        for (n, &node) in self.order.iter().take(widest).enumerate() {
            expected += self.trie[node].probability;
            let rate = (1.0 + expected) / self.pass_cost(n + 2);
            if rate > best_rate {
                (best_rate, best_nodes) = (rate, n + 1);
            }
        }
        for &node in &self.order[..best_nodes] {
            self.path.clear();
            let mut at = Some(node);
            while let Some(n) = at {
                self.path.push(self.trie[n].token);
                at = self.trie[n].parent;
            }
            self.path.reverse();
            tree.add_path(&self.path, budget);
        }
    }

    /// Siblings are exclusive (the model emits one token after a node), but
    /// their estimates come from different candidates and may add up to
    /// more than their parent's: scales each family's conditional chances
    /// down to a sum of at most 1, top-down (a node comes after its parent
    /// in the trie), so the expected accepted tokens are not overcounted.
    fn normalize_siblings(&mut self) {
        // `sums[0]`: the root's children; `sums[n + 1]`: node n's.
        self.sums.clear();
        self.sums.resize(self.trie.len() + 1, 0.0);
        self.conditional.clear();
        for node in &self.trie {
            let parent = node.parent.map_or(1.0, |p| self.trie[p].probability);
            let q = if parent > 0.0 {
                (node.probability / parent).min(1.0)
            } else {
                0.0
            };
            self.conditional.push(q);
            self.sums[node.parent.map_or(0, |p| p + 1)] += q;
        }
        for n in 0..self.trie.len() {
            let family = self.trie[n].parent.map_or(0, |p| p + 1);
            let parent = self.trie[n]
                .parent
                .map_or(1.0, |p| self.trie[p].probability);
            self.trie[n].probability = parent * self.conditional[n] / self.sums[family].max(1.0);
        }
    }

    /// Learns from a step: `emitted` are the tokens the model produced after
    /// the root (the accepted draft tokens, then the bonus token), scored
    /// against every candidate kept by the last [`AdaptiveDrafting::choose`]
    /// (with the same `confidence` record).
    pub fn learn(&mut self, candidates: &Candidates, confidence: &[f32], emitted: &[u32]) {
        for &(index, class, bucket) in &self.kept {
            let Some((tokens, _)) = candidates.get(index) else {
                continue;
            };
            let (Some(&first), Some(&truth)) = (tokens.first(), emitted.first()) else {
                continue;
            };
            let conf = Self::token_bucket(candidates, index, 0, confidence);
            self.first[class][bucket][conf].record(first == truth);
            if first != truth {
                continue;
            }
            for (depth, (&drafted, &actual)) in tokens.iter().zip(emitted).enumerate().skip(1) {
                let conf = Self::token_bucket(candidates, index, depth, confidence);
                self.next[class][depth_bucket(depth)][conf].record(drafted == actual);
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
        AdaptiveDrafting::new(vec![1.0; 17]).choose(&candidates, &[], 6, &mut tree);
        assert_eq!(tree.len(), 6);
        tree.clear();
        AdaptiveDrafting::new(linear_costs(10.0, 16)).choose(&candidates, &[], 6, &mut tree);
        assert!(tree.is_empty());
    }

    #[test]
    fn the_width_follows_the_cost_model() {
        // One confident candidate: its first nodes are likely, later ones
        // less so (the priors multiply along the path).
        let mut candidates = Candidates::default();
        candidates.push_copy(&[1, 2, 3, 4, 5, 6, 7, 8], 3, 10);
        let sure = vec![0.99f32; 30];
        let chosen = |costs: Vec<f64>| {
            let mut tree = DraftTree::new();
            AdaptiveDrafting::new(costs).choose(&candidates, &sure, 8, &mut tree);
            tree.len()
        };
        // Bucketed widths (1, 2, 4, 8 rows): rows up to a bucket's width
        // are free once it is paid, so the draft fills the bucket.
        let bucketed = |step: f64| -> Vec<f64> {
            (0..=9)
                .map(|w: usize| 1.0 + step * (w.max(1).next_power_of_two().trailing_zeros() as f64))
                .collect()
        };
        assert_eq!(chosen(bucketed(0.05)), 8, "cheap buckets: the whole budget");
        assert_eq!(
            chosen(bucketed(0.3)),
            7,
            "dearer buckets: fill the 8-row bucket, never open the 16-row one"
        );
        // Linear costs: the more each row costs, the shorter the draft.
        let lengths: Vec<usize> = [0.02, 0.1, 0.3, 0.6, 10.0]
            .into_iter()
            .map(|step| chosen(linear_costs(step, 16)))
            .collect();
        assert!(lengths.windows(2).all(|w| w[0] >= w[1]), "{lengths:?}");
        assert_eq!(lengths[4], 0, "rows dearer than any gain: none");
        assert!(lengths[0] >= 6, "{lengths:?}");
    }

    #[test]
    fn dearer_passes_than_the_table_shorten_drafts() {
        let mut candidates = Candidates::default();
        candidates.push_copy(&[1, 2, 3, 4, 5, 6, 7, 8], 3, 10);
        let even = vec![0.5f32; 30];
        let costs = linear_costs(0.15, 16);
        let mut policy = AdaptiveDrafting::new(costs.clone());
        let mut tree = DraftTree::new();
        policy.choose(&candidates, &even, 8, &mut tree);
        let before = tree.len();
        assert!(before > 0);
        // The request's passes: width 1 as the table says, wider ones with
        // three times the table's extra cost per row.
        for _ in 0..20 {
            policy.observe_pass(1, costs[1]);
            policy.observe_pass(5, costs[1] + 3.0 * (costs[5] - costs[1]));
        }
        assert!(
            (policy.row_scale - 3.0).abs() < 0.05,
            "{}",
            policy.row_scale
        );
        tree.clear();
        policy.choose(&candidates, &even, 8, &mut tree);
        assert!(tree.len() < before, "{} then {}", before, tree.len());
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
            always_right.choose(&candidates, &[], 8, &mut tree);
            always_right.learn(&candidates, &[], &[1, 2, 3, 4, 5, 6, 7, 8, 9]);
            tree.clear();
            always_wrong.choose(&candidates, &[], 8, &mut tree);
            always_wrong.learn(&candidates, &[], &[9]);
        }
        tree.clear();
        always_right.choose(&candidates, &[], 8, &mut tree);
        assert_eq!(tree.len(), 8);
        tree.clear();
        always_wrong.choose(&candidates, &[], 8, &mut tree);
        assert!(tree.is_empty());
    }

    #[test]
    fn confident_copies_are_drafted_and_surprising_ones_are_not() {
        // The candidate copies positions 10.. of the sequence; the model's
        // confidence there decides, before anything is learned.
        let mut candidates = Candidates::default();
        candidates.push_copy(&[1, 2, 3, 4, 5, 6], 3, 10);
        let costs = linear_costs(0.25, 16);
        let mut tree = DraftTree::new();
        let sure = vec![0.99f32; 20];
        AdaptiveDrafting::new(costs.clone()).choose(&candidates, &sure, 8, &mut tree);
        assert_eq!(tree.len(), 6);
        tree.clear();
        let unsure = vec![0.05f32; 20];
        AdaptiveDrafting::new(costs.clone()).choose(&candidates, &unsure, 8, &mut tree);
        assert!(tree.is_empty());
        // Confident up to the third token, then surprising: a short draft.
        tree.clear();
        let mut mixed = vec![0.99f32; 20];
        mixed[12..].fill(0.05);
        AdaptiveDrafting::new(costs).choose(&candidates, &mixed, 8, &mut tree);
        assert!((1..=3).contains(&tree.len()), "{} nodes", tree.len());
    }

    #[test]
    fn confidence_buckets_cover_the_unit_interval() {
        assert_eq!(confidence_bucket(f32::NAN), UNKNOWN);
        assert_eq!(confidence_bucket(0.0), 0);
        assert_eq!(confidence_bucket(0.5), 2);
        assert_eq!(confidence_bucket(0.999), CONFIDENCE_EDGES.len());
        for b in 0..CONFIDENCE_BUCKETS {
            let p = bucket_prior(b, 0.5);
            assert!((0.0..=1.0).contains(&p));
        }
    }

    #[test]
    fn the_tree_holds_prefixes_of_the_candidates() {
        let mut candidates = Candidates::default();
        candidates.push(&[1, 2, 3], 1);
        candidates.push(&[1, 9, 9], 1); // same first token: shares it
        candidates.push(&[4, 5], 1);
        let mut tree = DraftTree::new();
        AdaptiveDrafting::new(vec![1.0; 9]).choose(&candidates, &[], 8, &mut tree);
        assert_eq!(tree.len(), 7);
        let one = tree.child(None, 1).expect("shared first token");
        assert!(tree.child(Some(one), 2).is_some() && tree.child(Some(one), 9).is_some());
        assert!(tree.child(None, 4).is_some());
    }
}
