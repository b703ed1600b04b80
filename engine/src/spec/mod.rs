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
mod sam;
mod sampling;
mod tree;

pub use pld::PromptLookup;
pub use sam::{SamDrafter, SuffixAutomaton};
pub use sampling::{accept_sampled, TreeSampling};
pub use tree::{Acceptance, DraftTree, NodeId};

/// Proposes draft tokens for the sequence it has observed.
pub trait Drafter {
    /// Appends tokens to the sequence the drafter knows (the prompt, then each
    /// committed output token).
    fn observe(&mut self, tokens: &[u32]);

    /// Adds candidate continuations of the observed sequence to `tree` (which
    /// the caller has cleared), at most `budget` nodes in all.
    fn draft(&mut self, budget: usize, tree: &mut DraftTree);

    /// Forgets everything observed (a new request).
    fn reset(&mut self);
}
