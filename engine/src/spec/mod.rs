//! Retrieval-based speculative decoding: drafters that propose continuations
//! from the context and the output so far, and the draft tree that one
//! verify pass checks.
//!
//! This module holds the parts that need no model: the [`Drafter`] trait,
//! prompt lookup ([`PromptLookup`]), the suffix automaton ([`SuffixAutomaton`]
//! and its drafter [`SamDrafter`]), the [`DraftTree`] with its packing into a
//! verify bucket (rows, tree mask, positions), greedy acceptance
//! ([`DraftTree::accept_greedy`]) and sampling-mode acceptance that keeps
//! the sampler's distribution exactly ([`TreeSampling`], [`accept_sampled`]).

mod pld;
mod policy;
mod reuse;
mod sam;
mod sampling;
mod tree;

pub use pld::PromptLookup;
pub use policy::AdaptiveDrafting;
pub use reuse::DraftReuse;
pub use sam::{SamDrafter, SuffixAutomaton};
pub use sampling::{accept_sampled, TreeSampling};
pub use tree::{Acceptance, DraftTree, NodeId};

/// Candidate continuations from a drafter, best first, each with the
/// length of the context match it comes from and, for a copy of the
/// sequence, where the copied tokens start in it. One buffer, reused every
/// step.
#[derive(Clone, Debug, Default)]
pub struct Candidates {
    tokens: Vec<u32>,
    /// `(start, end, match_len, source)` into `tokens`; `source` is
    /// [`NO_SOURCE`] for a candidate that is not a copy.
    spans: Vec<(usize, usize, usize, usize)>,
}

/// The source of a candidate that does not copy the observed sequence.
const NO_SOURCE: usize = usize::MAX;

impl Candidates {
    pub fn clear(&mut self) {
        self.tokens.clear();
        self.spans.clear();
    }

    /// Adds a candidate unless it is empty or already present.
    pub fn push(&mut self, tokens: &[u32], match_len: usize) {
        self.push_copy(tokens, match_len, NO_SOURCE);
    }

    /// Adds a candidate that copies the observed sequence from index
    /// `source` on (`tokens[i]` is the sequence's token `source + i`),
    /// unless it is empty or already present.
    pub fn push_copy(&mut self, tokens: &[u32], match_len: usize, source: usize) {
        if tokens.is_empty() || self.iter().any(|(t, _)| t == tokens) {
            return;
        }
        let start = self.tokens.len();
        self.tokens.extend_from_slice(tokens);
        self.spans
            .push((start, self.tokens.len(), match_len, source));
    }

    /// Where candidate `i`'s tokens start in the observed sequence, if it
    /// is a copy.
    pub fn source(&self, i: usize) -> Option<usize> {
        let &(.., source) = self.spans.get(i)?;
        (source != NO_SOURCE).then_some(source)
    }

    pub fn len(&self) -> usize {
        self.spans.len()
    }

    pub fn is_empty(&self) -> bool {
        self.spans.is_empty()
    }

    /// Candidate `i`: its tokens and match length.
    pub fn get(&self, i: usize) -> Option<(&[u32], usize)> {
        let &(start, end, match_len, _) = self.spans.get(i)?;
        Some((self.tokens.get(start..end)?, match_len))
    }

    pub fn iter(&self) -> impl Iterator<Item = (&[u32], usize)> {
        (0..self.len()).filter_map(|i| self.get(i))
    }
}

/// Proposes draft tokens for the sequence it has observed.
pub trait Drafter {
    /// Appends tokens to the sequence the drafter knows (the prompt, then each
    /// committed output token).
    fn observe(&mut self, tokens: &[u32]);

    /// Adds candidate continuations of the observed sequence to `out` (which
    /// the caller has cleared), best first, each at most `max_len` tokens.
    fn propose(&mut self, max_len: usize, out: &mut Candidates);

    /// Forgets everything observed (a new request).
    fn reset(&mut self);

    /// Fixed drafting: every candidate in order into `tree` (which the
    /// caller has cleared), at most `budget` nodes in all.
    fn draft(&mut self, budget: usize, tree: &mut DraftTree) {
        let mut candidates = Candidates::default();
        self.propose(budget, &mut candidates);
        tree.add_candidates(&candidates, budget);
    }
}

impl DraftTree {
    /// Adds every candidate in order, until the tree holds `budget` nodes.
    pub fn add_candidates(&mut self, candidates: &Candidates, budget: usize) {
        for (tokens, _) in candidates.iter() {
            if self.len() >= budget {
                break;
            }
            self.add_path(tokens, budget);
        }
    }
}
