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

mod calib;
mod pld;
mod policy;
mod reuse;
mod sam;
mod sampling;
mod tree;

pub use calib::{CalibratedTree, CalibrationConfig};
pub use pld::PromptLookup;
pub use policy::AdaptiveDrafting;
pub use reuse::DraftReuse;
pub use sam::{SamDrafter, SuffixAutomaton};
pub use sampling::{accept_sampled, TreeSampling};
pub use tree::{Acceptance, DraftTree, NodeId};

/// Where a candidate comes from: the rates of [`AdaptiveDrafting`] are kept
/// apart per kind.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CandidateKind {
    /// A copy of the context or the output after a match (a drafter's).
    Literal,
    /// A branch of the calibrated token tree ([`CalibratedTree`]).
    Calibrated,
    /// A reused segment of a rejected draft ([`DraftReuse`]).
    Reused,
}

/// One candidate's place in the [`Candidates`] buffers.
#[derive(Clone, Copy, Debug)]
struct Span {
    start: usize,
    end: usize,
    match_len: usize,
    /// Where a copy's tokens start in the observed sequence; [`NO_SOURCE`]
    /// for a candidate that is not a copy.
    source: usize,
    kind: CandidateKind,
}

/// Candidate continuations from a drafter, best first, each with the
/// length of the context match it comes from, its kind and, for a copy of
/// the sequence, where the copied tokens start in it. One buffer, reused
/// every step.
#[derive(Clone, Debug, Default)]
pub struct Candidates {
    tokens: Vec<u32>,
    /// The model's probability of each token where the candidate comes
    /// from, when the candidate carries it (NaN otherwise: a copy's is
    /// looked up by its source in [`crate::Session::confidence`]).
    confidences: Vec<f32>,
    spans: Vec<Span>,
}

/// The source of a candidate that does not copy the observed sequence.
const NO_SOURCE: usize = usize::MAX;

impl Candidates {
    pub fn clear(&mut self) {
        self.tokens.clear();
        self.confidences.clear();
        self.spans.clear();
    }

    /// Adds a reused segment unless it is empty or already present.
    pub fn push(&mut self, tokens: &[u32], match_len: usize) {
        self.add(tokens, None, match_len, NO_SOURCE, CandidateKind::Reused);
    }

    /// Adds a candidate that copies the observed sequence from index
    /// `source` on (`tokens[i]` is the sequence's token `source + i`),
    /// unless it is empty or already present.
    pub fn push_copy(&mut self, tokens: &[u32], match_len: usize, source: usize) {
        self.add(tokens, None, match_len, source, CandidateKind::Literal);
    }

    /// Adds a candidate that carries the model's probability of each of
    /// its tokens (`confidences`, as long as `tokens`), unless it is empty
    /// or already present.
    pub fn push_scored(
        &mut self,
        tokens: &[u32],
        confidences: &[f32],
        match_len: usize,
        kind: CandidateKind,
    ) {
        self.add(tokens, Some(confidences), match_len, NO_SOURCE, kind);
    }

    fn add(
        &mut self,
        tokens: &[u32],
        confidences: Option<&[f32]>,
        match_len: usize,
        source: usize,
        kind: CandidateKind,
    ) {
        if tokens.is_empty() || self.iter().any(|(t, _)| t == tokens) {
            return;
        }
        let start = self.tokens.len();
        self.tokens.extend_from_slice(tokens);
        let known = confidences.unwrap_or(&[]);
        self.confidences
            .extend((0..tokens.len()).map(|i| known.get(i).copied().unwrap_or(f32::NAN)));
        self.spans.push(Span {
            start,
            end: self.tokens.len(),
            match_len,
            source,
            kind,
        });
    }

    /// Where candidate `i`'s tokens start in the observed sequence, if it
    /// is a copy.
    pub fn source(&self, i: usize) -> Option<usize> {
        let span = self.spans.get(i)?;
        (span.source != NO_SOURCE).then_some(span.source)
    }

    pub fn kind(&self, i: usize) -> Option<CandidateKind> {
        Some(self.spans.get(i)?.kind)
    }

    /// The probability candidate `i` carries for its token `j`, if any.
    pub fn confidence(&self, i: usize, j: usize) -> Option<f32> {
        let span = self.spans.get(i)?;
        let c = *self
            .confidences
            .get(span.start + j)
            .filter(|_| span.start + j < span.end)?;
        (!c.is_nan()).then_some(c)
    }

    pub fn len(&self) -> usize {
        self.spans.len()
    }

    pub fn is_empty(&self) -> bool {
        self.spans.is_empty()
    }

    /// Candidate `i`: its tokens and match length.
    pub fn get(&self, i: usize) -> Option<(&[u32], usize)> {
        let span = self.spans.get(i)?;
        Some((self.tokens.get(span.start..span.end)?, span.match_len))
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
