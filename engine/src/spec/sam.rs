//! A suffix automaton built online over the token sequence, and the
//! SAM-decoding drafter on top of it (Hu et al., arXiv 2411.10666; length
//! rule of the sd.npu authors' port, see the paper digest §2.4).

use super::{Candidates, Drafter};
use std::collections::HashMap;

#[derive(Clone, Debug)]
struct State {
    next: HashMap<u32, u32>,
    /// Suffix link (`u32::MAX` for the initial state).
    link: u32,
    /// Longest string of this state.
    len: u32,
    /// Where its strings first end (exact: fixed at creation).
    first_end: u32,
    /// The two latest end positions known, newest first. Updated when the
    /// state is made, cloned or becomes a new state's suffix link; other
    /// later occurrences do not update it (that would cost the amortised
    /// O(1) extension).
    recent_ends: [u32; 2],
}

const NONE: u32 = u32::MAX;

/// Suffix automaton of a growing token sequence: `extend` is amortised
/// O(1); every state knows the first place its strings ended.
#[derive(Clone, Debug)]
pub struct SuffixAutomaton {
    states: Vec<State>,
    last: u32,
    seq: Vec<u32>,
}

impl Default for SuffixAutomaton {
    fn default() -> Self {
        Self::new()
    }
}

/// One earlier occurrence of the sequence's longest repeated suffix.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Match {
    /// Length of the matched suffix.
    pub len: usize,
    /// Index in the sequence just after the occurrence (its continuation).
    pub next: usize,
}

impl SuffixAutomaton {
    pub fn new() -> Self {
        SuffixAutomaton {
            states: vec![State {
                next: HashMap::new(),
                link: NONE,
                len: 0,
                first_end: 0,
                recent_ends: [0, 0],
            }],
            last: 0,
            seq: Vec::new(),
        }
    }

    /// The tokens seen so far.
    pub fn sequence(&self) -> &[u32] {
        &self.seq
    }

    /// Appends one token (the standard online construction).
    pub fn extend(&mut self, c: u32) {
        let pos = self.seq.len() as u32;
        self.seq.push(c);
        let cur = self.states.len() as u32;
        self.states.push(State {
            next: HashMap::new(),
            link: 0,
            len: self.states[self.last as usize].len + 1,
            first_end: pos,
            recent_ends: [pos, pos],
        });
        let mut p = self.last;
        while p != NONE && !self.states[p as usize].next.contains_key(&c) {
            self.states[p as usize].next.insert(c, cur);
            p = self.states[p as usize].link;
        }
        if p != NONE {
            let q = self.states[p as usize].next[&c];
            if self.states[p as usize].len + 1 == self.states[q as usize].len {
                self.states[cur as usize].link = q;
                // `q`'s strings are suffixes of the new end: they end here too.
                let r = &mut self.states[q as usize].recent_ends;
                *r = [pos, r[0]];
            } else {
                let clone = self.states.len() as u32;
                let mut cloned = self.states[q as usize].clone();
                cloned.len = self.states[p as usize].len + 1;
                // The clone's strings also end here now.
                cloned.recent_ends = [pos, cloned.recent_ends[0]];
                self.states.push(cloned);
                while p != NONE && self.states[p as usize].next.get(&c) == Some(&q) {
                    self.states[p as usize].next.insert(c, clone);
                    p = self.states[p as usize].link;
                }
                self.states[q as usize].link = clone;
                self.states[cur as usize].link = clone;
            }
        }
        self.last = cur;
    }

    /// Earlier occurrences of the longest suffix of the sequence that also
    /// occurred before (with a continuation): the first one, then the latest
    /// ones known, at most `max` (all with the same match length).
    pub fn matches(&self, max: usize) -> Vec<Match> {
        let end = self.seq.len().saturating_sub(1) as u32;
        let mut out = Vec::new();
        let mut s = self.states[self.last as usize].link;
        // The state of the whole sequence only ends here; its suffix-link
        // ancestors are ever shorter suffixes, the first one that ended
        // earlier is the longest repeated suffix.
        while s != NONE && s != 0 {
            let st = &self.states[s as usize];
            if st.first_end < end {
                for e in [st.first_end, st.recent_ends[0], st.recent_ends[1]] {
                    let m = Match {
                        len: st.len as usize,
                        next: e as usize + 1,
                    };
                    if e < end && out.len() < max && !out.contains(&m) {
                        out.push(m);
                    }
                }
                return out;
            }
            s = st.link;
        }
        out
    }
}

/// SAM-decoding drafter: continuations after earlier occurrences of the
/// longest repeated suffix. Draft length `min(max_len, 1 + alpha · match)`,
/// at least `min_len` (defaults 40, 4, 10: the sd.npu authors' port).
#[derive(Clone, Debug)]
pub struct SamDrafter {
    pub max_len: usize,
    pub alpha: usize,
    pub min_len: usize,
    /// Occurrences turned into branches, at most the 3 the automaton tracks
    /// (3: measured on Spec-Bench with adaptive drafting, 1.49 -> 1.59
    /// tokens per step on summarization and 1.78 -> 1.91 on RAG against 2;
    /// the policy drafts only the likely ones).
    pub branches: usize,
    sam: SuffixAutomaton,
}

impl Default for SamDrafter {
    fn default() -> Self {
        SamDrafter {
            max_len: 40,
            alpha: 4,
            min_len: 10,
            branches: 3,
            sam: SuffixAutomaton::new(),
        }
    }
}

impl SamDrafter {
    /// Draft length for a match of `len` tokens.
    pub fn draft_len(&self, len: usize) -> usize {
        if len == 0 {
            return 0;
        }
        (1 + self.alpha * len).min(self.max_len).max(self.min_len)
    }

    pub fn automaton(&self) -> &SuffixAutomaton {
        &self.sam
    }
}

impl Drafter for SamDrafter {
    fn observe(&mut self, tokens: &[u32]) {
        for &t in tokens {
            self.sam.extend(t);
        }
    }

    fn propose(&mut self, max_len: usize, out: &mut Candidates) {
        let seq = self.sam.sequence();
        for m in self.sam.matches(self.branches.max(1)) {
            let n = self.draft_len(m.len).min(max_len);
            let end = (m.next + n).min(seq.len());
            if let Some(tokens) = seq.get(m.next..end) {
                out.push_copy(tokens, m.len, m.next);
            }
        }
    }

    fn reset(&mut self) {
        self.sam = SuffixAutomaton::new();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::DraftTree;

    /// Brute force: the longest suffix with an earlier occurrence that has a
    /// continuation, and the first such occurrence.
    fn brute(seq: &[u32]) -> Option<Match> {
        let n = seq.len();
        for len in (1..n).rev() {
            let suffix = &seq[n - len..];
            for start in 0..n - len {
                if &seq[start..start + len] == suffix {
                    return Some(Match {
                        len,
                        next: start + len,
                    });
                }
            }
        }
        None
    }

    #[test]
    fn first_match_equals_brute_force() {
        let mut rng = 12345u64;
        for alphabet in [2u64, 3, 5] {
            let mut sam = SuffixAutomaton::new();
            let mut seq = Vec::new();
            for _ in 0..300 {
                rng ^= rng << 13;
                rng ^= rng >> 7;
                rng ^= rng << 17;
                let t = (rng % alphabet) as u32;
                sam.extend(t);
                seq.push(t);
                let got = sam.matches(1).first().copied();
                assert_eq!(got, brute(&seq), "after {seq:?}");
            }
        }
    }

    #[test]
    fn later_occurrences_give_other_branches() {
        let mut d = SamDrafter {
            min_len: 2,
            alpha: 1,
            ..Default::default()
        };
        // "x 1 2" then "x 3 4", then "x": two different continuations.
        d.observe(&[9, 1, 2, 9, 3, 4, 9]);
        let m = d.automaton().matches(2);
        assert_eq!(m.len(), 2);
        assert_eq!(m[0], Match { len: 1, next: 1 });
        assert_eq!(m[1], Match { len: 1, next: 4 });
        let mut tree = DraftTree::new();
        d.draft(16, &mut tree);
        assert_eq!(tree.len(), 4);
        assert_eq!((tree.token(0), tree.token(2)), (1, 3));
    }

    #[test]
    fn draft_length_rule() {
        let d = SamDrafter::default();
        assert_eq!(d.draft_len(0), 0);
        assert_eq!(d.draft_len(1), 10);
        assert_eq!(d.draft_len(3), 13);
        assert_eq!(d.draft_len(20), 40);
    }
}
