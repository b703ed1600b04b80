//! Prompt lookup decoding (PLD): copy what followed the last n-gram's
//! earliest earlier occurrence (apoorvumang/prompt-lookup-decoding).

use super::{Candidates, Drafter};

/// The PLD drafter. Defaults are the reference implementation's:
/// n-grams of 3 down to 1 tokens, 10 copied tokens.
#[derive(Clone, Debug)]
pub struct PromptLookup {
    /// Longest n-gram matched first.
    pub max_ngram: usize,
    /// Tokens copied after the match.
    pub num_pred: usize,
    /// Occurrences turned into branches (1: the reference's single draft;
    /// more: later occurrences with other continuations become branches).
    pub branches: usize,
    seq: Vec<u32>,
}

impl Default for PromptLookup {
    fn default() -> Self {
        PromptLookup {
            max_ngram: 3,
            num_pred: 10,
            branches: 1,
            seq: Vec::new(),
        }
    }
}

impl PromptLookup {
    /// Continuations after earlier occurrences of the last n-gram, for the
    /// longest `n` that has any: earliest occurrence first, each a full
    /// `num_pred` tokens (as the reference requires), at most `branches`;
    /// with the n-gram's length.
    pub fn candidates(&self) -> (Vec<&[u32]>, usize) {
        let (starts, n) = self.candidate_starts();
        let out = starts
            .iter()
            .map(|&s| &self.seq[s..s + self.num_pred])
            .collect();
        (out, n)
    }

    /// Where each of [`PromptLookup::candidates`] starts in the sequence.
    fn candidate_starts(&self) -> (Vec<usize>, usize) {
        let len = self.seq.len();
        let mut out: Vec<usize> = Vec::new();
        for n in (1..=self.max_ngram.min(len)).rev() {
            let ngram = &self.seq[len - n..];
            for idx in 0..len - n {
                let (start, end) = (idx + n, idx + n + self.num_pred);
                if end > len || start >= len - n {
                    continue;
                }
                if &self.seq[idx..idx + n] == ngram {
                    let cand = &self.seq[start..end];
                    if !out.iter().any(|&s| &self.seq[s..s + self.num_pred] == cand) {
                        out.push(start);
                        if out.len() >= self.branches.max(1) {
                            return (out, n);
                        }
                    }
                }
            }
            if !out.is_empty() {
                return (out, n);
            }
        }
        (out, 0)
    }
}

impl Drafter for PromptLookup {
    fn observe(&mut self, tokens: &[u32]) {
        self.seq.extend_from_slice(tokens);
    }

    fn propose(&mut self, max_len: usize, out: &mut Candidates) {
        let (starts, ngram) = self.candidate_starts();
        for start in starts {
            let end = start + self.num_pred.min(max_len);
            out.push_copy(&self.seq[start..end], ngram, start);
        }
    }

    fn reset(&mut self) {
        self.seq.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::DraftTree;

    #[test]
    fn copies_after_the_earliest_longest_match() {
        let mut pld = PromptLookup {
            num_pred: 3,
            ..Default::default()
        };
        // "a b c d e f ... a b c" → after "a b c" came "d e f".
        pld.observe(&[1, 2, 3, 4, 5, 6, 9, 9, 1, 2, 3]);
        assert_eq!(pld.candidates().0, vec![&[4, 5, 6][..]]);
        let mut tree = DraftTree::new();
        pld.draft(8, &mut tree);
        assert_eq!(tree.len(), 3);
        assert_eq!(tree.token(0), 4);
    }

    #[test]
    fn falls_back_to_shorter_ngrams_and_needs_a_full_continuation() {
        let mut pld = PromptLookup {
            num_pred: 2,
            ..Default::default()
        };
        pld.observe(&[7, 8, 9, 5, 6, 7]);
        // Only the unigram "7" matches (at 0), followed by "8 9".
        assert_eq!(pld.candidates().0, vec![&[8, 9][..]]);
        // A match whose continuation runs into the end is not used.
        let mut short = PromptLookup {
            num_pred: 3,
            ..Default::default()
        };
        short.observe(&[1, 2, 1]);
        assert!(short.candidates().0.is_empty());
    }

    #[test]
    fn more_occurrences_become_branches() {
        let mut pld = PromptLookup {
            num_pred: 2,
            branches: 3,
            max_ngram: 1,
            ..Default::default()
        };
        pld.observe(&[5, 1, 2, 5, 3, 4, 5, 1, 2, 0, 5]);
        assert_eq!(pld.candidates().0, vec![&[1, 2][..], &[3, 4][..]]);
        let mut tree = DraftTree::new();
        pld.draft(16, &mut tree);
        assert_eq!(tree.len(), 4);
    }
}
