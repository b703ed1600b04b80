//! In-context distribution calibration (the sd.npu paper's context-aligned
//! drafting; the paper digest §2.2): a retrieval draft copies what the
//! *document's author* wrote after a match, but the model writes in its own
//! words. Prefill computes the model's next-token distribution at every
//! context position anyway; the session keeps its top K there
//! ([`crate::Session::alternatives`]). From them a calibrated token tree is
//! built once per request, by the paper's depth-first search:
//!
//! 1. *sample*: after context position `i`, the model's likely next tokens
//!    (top K, probability at least [`CalibrationConfig::min_probability`]);
//! 2. *search*: for each sampled token `t`, an occurrence `j` of `t` in the
//!    context (the nearest after `i`, else the nearest before);
//! 3. *recurse* into position `j`'s own distribution, to the depth bound.
//!
//! Branches are expanded likeliest path first, so a node bound per position
//! keeps the probable ones. When a literal candidate continues the context
//! after position `i`, the drafting step offers `i`'s calibrated branches
//! beside it ([`CalibratedTree::offer`]): "Clinton 's security" from the
//! document, "Clinton arrived at" from the model.

use std::collections::HashMap;

use super::{CandidateKind, Candidates};

/// Bounds of the calibrated tree.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct CalibrationConfig {
    /// Alternatives kept per context position (the session's top K).
    pub top_k: usize,
    /// Smallest model probability of a sampled token.
    pub min_probability: f32,
    /// Smallest probability of a whole branch (the product along it).
    pub min_path_probability: f32,
    /// Deepest branch, in tokens.
    pub max_depth: usize,
    /// Most nodes below one context position.
    pub max_nodes: usize,
}

impl Default for CalibrationConfig {
    /// Chosen on the Spec-Bench summarization and RAG prompts (README,
    /// "Speculative decoding"): K = 4 covers 80 % of the positions where the
    /// model's token follows a context bigram, K = 8 only 88 %.
    fn default() -> Self {
        CalibrationConfig {
            top_k: 4,
            min_probability: 0.05,
            min_path_probability: 0.02,
            max_depth: 8,
            max_nodes: 16,
        }
    }
}

/// One node below a context position.
#[derive(Clone, Copy, Debug, PartialEq)]
struct Node {
    token: u32,
    /// Index in the same position's node list; `None`: below the position.
    parent: Option<u32>,
    /// The model's probability of `token` where it was sampled.
    probability: f32,
    /// The product of the probabilities from the position down to here.
    path_probability: f32,
    leaf: bool,
}

/// The calibrated token tree of one context (see the module docs).
#[derive(Clone, Debug, Default)]
pub struct CalibratedTree {
    /// `nodes[starts[i]..starts[i + 1]]`: the nodes below position `i`, in
    /// the order they were expanded (a parent before its children).
    nodes: Vec<Node>,
    starts: Vec<u32>,
    config: CalibrationConfig,
    /// Each context token's positions, in order.
    occurrences: HashMap<u32, Vec<u32>>,
    /// Scratch of [`CalibratedTree::offer`] and
    /// [`CalibratedTree::offer_after_token`].
    path: Vec<u32>,
    path_probabilities: Vec<f32>,
    votes: Vec<(u32, f32, usize, usize)>,
}

impl CalibratedTree {
    /// Builds the tree over `context` (the prompt) from `alternatives(i)`:
    /// the model's top tokens after `context[..=i]` with their
    /// probabilities, likeliest first (empty where unknown).
    pub fn build<'a>(
        context: &[u32],
        alternatives: impl Fn(usize) -> &'a [(u32, f32)],
        config: CalibrationConfig,
    ) -> Self {
        let mut occurrences: HashMap<u32, Vec<u32>> = HashMap::new();
        for (i, &t) in context.iter().enumerate() {
            occurrences.entry(t).or_default().push(i as u32);
        }
        // The context position a node's token stands for (its occurrence).
        let mut anchors: Vec<usize> = Vec::new();
        let mut frontier: Vec<(f32, usize)> = Vec::new();
        let mut nodes = Vec::new();
        let mut starts = Vec::with_capacity(context.len() + 1);
        for position in 0..context.len() {
            starts.push(nodes.len() as u32);
            let base = nodes.len();
            anchors.clear();
            frontier.clear();
            // Expansion candidates: (path probability, index of the node to
            // expand, or usize::MAX for the position itself).
            frontier.push((1.0, usize::MAX));
            while let Some(best) =
                (0..frontier.len()).max_by(|&a, &b| frontier[a].0.total_cmp(&frontier[b].0))
            {
                let (path_probability, from) = frontier.swap_remove(best);
                let (at, depth, parent) = if from == usize::MAX {
                    (position, 0, None)
                } else {
                    let depth = depth_of(&nodes[base..], from - base);
                    (anchors[from - base], depth, Some((from - base) as u32))
                };
                if depth >= config.max_depth {
                    continue;
                }
                for &(token, p) in alternatives(at).iter().take(config.top_k) {
                    let joint = path_probability * p;
                    if p < config.min_probability
                        || joint < config.min_path_probability
                        || nodes.len() - base >= config.max_nodes
                    {
                        continue;
                    }
                    if let Some(parent) = parent {
                        nodes[base + parent as usize].leaf = false;
                    }
                    nodes.push(Node {
                        token,
                        parent,
                        probability: p,
                        path_probability: joint,
                        leaf: true,
                    });
                    // Search: the token's occurrence to recurse into.
                    let anchor = occurrences
                        .get(&token)
                        .and_then(|list| nearest_occurrence(list, at));
                    anchors.push(anchor.unwrap_or(usize::MAX));
                    if anchor.is_some() {
                        frontier.push((joint, nodes.len() - 1));
                    }
                }
            }
        }
        starts.push(nodes.len() as u32);
        CalibratedTree {
            nodes,
            starts,
            config,
            occurrences,
            path: Vec::new(),
            path_probabilities: Vec::new(),
            votes: Vec::new(),
        }
    }

    pub fn config(&self) -> CalibrationConfig {
        self.config
    }

    /// Context positions the tree covers.
    pub fn positions(&self) -> usize {
        self.starts.len().saturating_sub(1)
    }

    /// Nodes in the whole tree.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    fn below(&self, position: usize) -> &[Node] {
        match (self.starts.get(position), self.starts.get(position + 1)) {
            (Some(&a), Some(&b)) => self.nodes.get(a as usize..b as usize).unwrap_or(&[]),
            _ => &[],
        }
    }

    /// The branches below `position` as root-to-leaf chains, likeliest
    /// first: `(tokens, probability of each token, branch probability)`.
    pub fn branches(&self, position: usize) -> Vec<(Vec<u32>, Vec<f32>, f32)> {
        let nodes = self.below(position);
        let mut out: Vec<(Vec<u32>, Vec<f32>, f32)> = nodes
            .iter()
            .enumerate()
            .filter(|(_, n)| n.leaf)
            .map(|(i, n)| {
                let (mut tokens, mut probabilities) = (Vec::new(), Vec::new());
                path_to(nodes, i, &mut tokens, &mut probabilities);
                (tokens, probabilities, n.path_probability)
            })
            .collect();
        out.sort_by(|a, b| b.2.total_cmp(&a.2));
        out
    }

    /// Adds at most `max_branches` of the branches below `position` to
    /// `out` as calibrated candidates (each at most `max_len` tokens, with
    /// its tokens' probabilities as their confidence), likeliest first.
    /// `match_len` is the context match that led to `position`.
    pub fn offer(
        &mut self,
        position: usize,
        match_len: usize,
        max_len: usize,
        max_branches: usize,
        out: &mut Candidates,
    ) {
        let Some((&a, &b)) = self.starts.get(position).zip(self.starts.get(position + 1)) else {
            return;
        };
        let (a, b) = (a as usize, b as usize);
        // Leaves likeliest first; a few per step, so a partial selection.
        let mut offered = 0;
        let mut taken = [usize::MAX; 8];
        let cap = max_branches.min(taken.len());
        while offered < cap {
            let best = (a..b)
                .filter(|&i| self.nodes[i].leaf && !taken[..offered].contains(&i))
                .max_by(|&x, &y| {
                    self.nodes[x]
                        .path_probability
                        .total_cmp(&self.nodes[y].path_probability)
                });
            let Some(leaf) = best else {
                break;
            };
            taken[offered] = leaf;
            offered += 1;
            self.collect_path(a, leaf);
            let n = self.path.len().min(max_len);
            out.push_scored(
                &self.path[..n],
                &self.path_probabilities[..n],
                match_len,
                CandidateKind::Calibrated,
            );
        }
    }
}

impl CalibratedTree {
    /// Adds at most `max_branches` candidates after `token` wherever the
    /// context holds it: the model's next tokens there, averaged over the
    /// (latest [`VOTING_OCCURRENCES`]) occurrences, likeliest first, each
    /// continued by its best branch at the occurrence where the model gave
    /// it the most. This drafts after a token the context holds with no
    /// longer match, where the model's own habits are the best guess.
    pub fn offer_after_token(
        &mut self,
        token: u32,
        max_len: usize,
        max_branches: usize,
        out: &mut Candidates,
    ) {
        let Some(list) = self.occurrences.get(&token) else {
            return;
        };
        let list = &list[list.len().saturating_sub(VOTING_OCCURRENCES)..];
        let share = 1.0 / list.len() as f32;
        self.votes.clear();
        for &position in list {
            let position = position as usize;
            let (Some(&a), Some(&b)) = (self.starts.get(position), self.starts.get(position + 1))
            else {
                continue;
            };
            for i in a as usize..b as usize {
                let node = self.nodes[i];
                if node.parent.is_some() {
                    continue;
                }
                match self.votes.iter_mut().find(|v| v.0 == node.token) {
                    Some(vote) => {
                        vote.1 += share * node.probability;
                        if node.probability > self.nodes[vote.3].probability {
                            (vote.2, vote.3) = (position, i);
                        }
                    }
                    None => self
                        .votes
                        .push((node.token, share * node.probability, position, i)),
                }
            }
        }
        self.votes.sort_by(|x, y| y.1.total_cmp(&x.1));
        for v in 0..self.votes.len().min(max_branches) {
            let (_, probability, position, first) = self.votes[v];
            let (a, b) = (
                self.starts[position] as usize,
                self.starts[position + 1] as usize,
            );
            // The likeliest leaf below `first`.
            let leaf = (a..b)
                .filter(|&i| self.nodes[i].leaf && self.descends_from(a, i, first))
                .max_by(|&x, &y| {
                    self.nodes[x]
                        .path_probability
                        .total_cmp(&self.nodes[y].path_probability)
                })
                .unwrap_or(first);
            self.collect_path(a, leaf);
            if let Some(p) = self.path_probabilities.first_mut() {
                *p = probability;
            }
            let n = self.path.len().min(max_len);
            out.push_scored(
                &self.path[..n],
                &self.path_probabilities[..n],
                1,
                CandidateKind::Calibrated,
            );
        }
    }

    /// Whether node `i` is `ancestor` or below it (both absolute, in the
    /// list starting at `base`).
    fn descends_from(&self, base: usize, i: usize, ancestor: usize) -> bool {
        let mut at = Some((i - base) as u32);
        while let Some(index) = at {
            if base + index as usize == ancestor {
                return true;
            }
            at = self.nodes[base + index as usize].parent;
        }
        false
    }

    /// The tokens and probabilities from below the position down to `leaf`
    /// (absolute, in the list starting at `base`) into the scratch.
    fn collect_path(&mut self, base: usize, leaf: usize) {
        let nodes = &self.nodes[base..];
        path_to(
            nodes,
            leaf - base,
            &mut self.path,
            &mut self.path_probabilities,
        );
    }
}

/// The tokens and probabilities from below a position down to node `leaf`
/// of its `nodes`, into `tokens` and `probabilities` (cleared first).
fn path_to(nodes: &[Node], leaf: usize, tokens: &mut Vec<u32>, probabilities: &mut Vec<f32>) {
    tokens.clear();
    probabilities.clear();
    let mut at = Some(leaf as u32);
    while let Some(node) = at.and_then(|i| nodes.get(i as usize)) {
        tokens.push(node.token);
        probabilities.push(node.probability);
        at = node.parent;
    }
    tokens.reverse();
    probabilities.reverse();
}

/// Occurrences of a token that vote in [`CalibratedTree::offer_after_token`].
const VOTING_OCCURRENCES: usize = 32;

/// Depth of node `index` (1 below the position).
fn depth_of(nodes: &[Node], index: usize) -> usize {
    let mut depth = 0;
    let mut at = Some(index as u32);
    while let Some(i) = at {
        depth += 1;
        at = nodes.get(i as usize).and_then(|n| n.parent);
    }
    depth
}

/// The first occurrence after `position` in the sorted `list`, else the
/// last one at or before it.
fn nearest_occurrence(list: &[u32], position: usize) -> Option<usize> {
    let after = list.partition_point(|&p| p as usize <= position);
    list.get(after)
        .or_else(|| after.checked_sub(1).and_then(|i| list.get(i)))
        .map(|&p| p as usize)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// "the cat sat . the dog ran ." with hand-made distributions: after
    /// "the" (0) the model expects "dog" (0.6) or "cat" (0.3); after "dog"
    /// (5) "ran" (0.9); after "cat" (1) "sat" (0.5) or "ran" (0.4); after
    /// "ran" (6) "." (0.8); after "sat" (2) "." (0.7).
    fn example() -> (Vec<u32>, Vec<Vec<(u32, f32)>>) {
        let (the, cat, sat, dot, dog, ran) = (1, 2, 3, 4, 5, 6);
        let context = vec![the, cat, sat, dot, the, dog, ran, dot];
        let mut alternatives = vec![Vec::new(); context.len()];
        alternatives[0] = vec![(dog, 0.6), (cat, 0.3)];
        alternatives[1] = vec![(sat, 0.5), (ran, 0.4)];
        alternatives[2] = vec![(dot, 0.7)];
        alternatives[4] = vec![(dog, 0.6), (cat, 0.3)];
        alternatives[5] = vec![(ran, 0.9)];
        alternatives[6] = vec![(dot, 0.8)];
        (context, alternatives)
    }

    #[test]
    fn the_search_follows_each_sampled_token_to_its_occurrence() {
        let (context, alternatives) = example();
        let config = CalibrationConfig {
            top_k: 2,
            min_probability: 0.1,
            min_path_probability: 0.01,
            max_depth: 3,
            max_nodes: 16,
        };
        let tree = CalibratedTree::build(&context, |i| &alternatives[i], config);
        assert_eq!(tree.positions(), context.len());
        // Below position 0 ("the"): dog (-> occurrence 5) ran (-> 6) "."; and
        // cat (-> 1) then sat (-> 2) "." or ran (-> 6) ".".
        let branches = tree.branches(0);
        let chains: Vec<&[u32]> = branches.iter().map(|(t, _, _)| t.as_slice()).collect();
        assert_eq!(chains, vec![&[5, 6, 4][..], &[2, 3, 4], &[2, 6, 4]]);
        let (_, probabilities, p) = &branches[0];
        assert_eq!(probabilities, &vec![0.6, 0.9, 0.8]);
        assert!((p - 0.6 * 0.9 * 0.8).abs() < 1e-6);
        // Position 3 (".") has no distribution: nothing below it.
        assert!(tree.branches(3).is_empty());
    }

    #[test]
    fn bounds_cut_the_tree() {
        let (context, alternatives) = example();
        let shallow = CalibrationConfig {
            top_k: 2,
            min_probability: 0.1,
            min_path_probability: 0.01,
            max_depth: 1,
            max_nodes: 16,
        };
        let tree = CalibratedTree::build(&context, |i| &alternatives[i], shallow);
        let chains: Vec<Vec<u32>> = tree.branches(0).into_iter().map(|b| b.0).collect();
        assert_eq!(chains, vec![vec![5], vec![2]]);
        // A probability floor drops "cat" (0.3); a node bound of 2 keeps the
        // likeliest expansion only.
        let picky = CalibrationConfig {
            min_probability: 0.35,
            max_depth: 3,
            max_nodes: 2,
            ..shallow
        };
        let tree = CalibratedTree::build(&context, |i| &alternatives[i], picky);
        let chains: Vec<Vec<u32>> = tree.branches(0).into_iter().map(|b| b.0).collect();
        assert_eq!(chains, vec![vec![5, 6]]);
    }

    #[test]
    fn offers_become_calibrated_candidates() {
        let (context, alternatives) = example();
        let mut tree =
            CalibratedTree::build(&context, |i| &alternatives[i], CalibrationConfig::default());
        let mut out = Candidates::default();
        tree.offer(0, 1, 2, 2, &mut out);
        assert_eq!(out.len(), 2);
        assert_eq!(out.get(0).map(|(t, _)| t), Some(&[5u32, 6][..]));
        assert_eq!(out.kind(0), Some(CandidateKind::Calibrated));
        assert_eq!(out.confidence(0, 1), Some(0.9));
        // Out of range: nothing.
        tree.offer(99, 1, 4, 4, &mut out);
        assert_eq!(out.len(), 2);
    }

    #[test]
    fn nearest_occurrence_prefers_later_then_earlier() {
        let list = [2, 7, 9];
        assert_eq!(nearest_occurrence(&list, 0), Some(2));
        assert_eq!(nearest_occurrence(&list, 7), Some(9));
        assert_eq!(nearest_occurrence(&list, 9), Some(9));
        assert_eq!(nearest_occurrence(&list, 20), Some(9));
        assert_eq!(nearest_occurrence(&[], 3), None);
    }
}
