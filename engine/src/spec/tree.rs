//! A draft tree: candidate tokens with parent links, merged as a trie, packed
//! into the rows of one verify pass.
//!
//! Row 0 of a pass is the *root*: the last committed token, whose K/V this
//! pass computes. Node `i` of the tree is row `i + 1`. A row attends to the
//! cached context, the root, its ancestors and itself; its position is its
//! parent's plus one (the root sits at the cache length), so tokens at the
//! same depth of different branches share a position.

/// Index of a node in a [`DraftTree`].
pub type NodeId = usize;

/// Candidate continuations as a trie below an implicit root.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DraftTree {
    tokens: Vec<u32>,
    /// `None`: a child of the root.
    parents: Vec<Option<NodeId>>,
    depths: Vec<usize>,
}

/// The outcome of greedy verification.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Acceptance {
    /// Accepted nodes, root to leaf (each the model's own greedy choice).
    pub path: Vec<NodeId>,
    /// The model's next token after the accepted path (always committed).
    pub bonus: u32,
}

impl DraftTree {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn clear(&mut self) {
        self.tokens.clear();
        self.parents.clear();
        self.depths.clear();
    }

    /// Nodes in the tree (rows of a pass: this plus one for the root).
    pub fn len(&self) -> usize {
        self.tokens.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty()
    }

    pub fn token(&self, node: NodeId) -> u32 {
        self.tokens[node]
    }

    pub fn parent(&self, node: NodeId) -> Option<NodeId> {
        self.parents[node]
    }

    /// Depth of `node`: 1 for a child of the root.
    pub fn depth(&self, node: NodeId) -> usize {
        self.depths[node]
    }

    /// The child of `parent` (`None`: the root) holding `token`, if any.
    pub fn child(&self, parent: Option<NodeId>, token: u32) -> Option<NodeId> {
        (0..self.tokens.len()).find(|&n| self.parents[n] == parent && self.tokens[n] == token)
    }

    /// Adds the chain `tokens` below the root, sharing any prefix already in
    /// the tree, and stops when the tree holds `budget` nodes. Returns the
    /// number of tokens of the chain that are now in the tree.
    pub fn add_path(&mut self, tokens: &[u32], budget: usize) -> usize {
        let mut parent = None;
        for (i, &t) in tokens.iter().enumerate() {
            parent = Some(match self.child(parent, t) {
                Some(n) => n,
                None => {
                    if self.tokens.len() >= budget {
                        return i;
                    }
                    let depth = parent.map_or(1, |p| self.depths[p] + 1);
                    self.tokens.push(t);
                    self.parents.push(parent);
                    self.depths.push(depth);
                    self.tokens.len() - 1
                }
            });
        }
        tokens.len()
    }

    /// The tokens of a verify pass: the root, then every node.
    pub fn rows(&self, root: u32, out: &mut Vec<u32>) {
        out.clear();
        out.push(root);
        out.extend_from_slice(&self.tokens);
    }

    /// Per-row positions for a pass after `past_len` cached tokens.
    pub fn positions(&self, past_len: usize, out: &mut Vec<i32>) {
        out.clear();
        out.push(past_len as i32);
        out.extend(self.depths.iter().map(|&d| (past_len + d) as i32));
    }

    /// The `n × n` tree mask of the pass's `n = len() + 1` rows (row-major,
    /// 1 = visible): each row sees the root, its ancestors and itself; the
    /// cached context is visible to every row and not part of this mask.
    pub fn mask(&self, out: &mut Vec<u8>) {
        let n = self.len() + 1;
        out.clear();
        out.resize(n * n, 0);
        out[0] = 1;
        for node in 0..self.len() {
            let row = node + 1;
            out[row * n] = 1;
            let mut at = Some(node);
            while let Some(a) = at {
                out[row * n + a + 1] = 1;
                at = self.parents[a];
            }
        }
    }

    /// Greedy acceptance: `predicted[r]` is the model's argmax after row `r`
    /// (row 0 the root). Follows the child whose token the model predicted,
    /// as far as it goes; the bonus is the prediction after the last
    /// accepted row.
    ///
    /// Returns `None` when `predicted` does not cover every row.
    pub fn accept_greedy(&self, predicted: &[u32]) -> Option<Acceptance> {
        if predicted.len() < self.len() + 1 {
            return None;
        }
        let mut path = Vec::new();
        let mut at: Option<NodeId> = None;
        loop {
            let row = at.map_or(0, |n| n + 1);
            match self.child(at, predicted[row]) {
                Some(next) => {
                    path.push(next);
                    at = Some(next);
                }
                None => {
                    return Some(Acceptance {
                        path,
                        bonus: predicted[row],
                    })
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_merge_into_a_trie_within_budget() {
        let mut t = DraftTree::new();
        assert_eq!(t.add_path(&[1, 2, 3], 10), 3);
        assert_eq!(t.add_path(&[1, 2, 4], 10), 3);
        assert_eq!(t.add_path(&[5], 10), 1);
        assert_eq!(t.len(), 5);
        assert_eq!(t.parent(3), Some(1));
        assert_eq!(t.depth(3), 3);
        // Only two more nodes fit.
        assert_eq!(t.add_path(&[1, 6, 7, 8], 7), 3);
        assert_eq!(t.len(), 7);
    }

    #[test]
    fn mask_and_positions_follow_ancestors() {
        let mut t = DraftTree::new();
        t.add_path(&[10, 11], 8);
        t.add_path(&[12], 8);
        let mut mask = Vec::new();
        t.mask(&mut mask);
        // rows: root, 10, 11 (child of 10), 12 (child of root)
        #[rustfmt::skip]
        let want = [
            1, 0, 0, 0,
            1, 1, 0, 0,
            1, 1, 1, 0,
            1, 0, 0, 1,
        ];
        assert_eq!(mask, want);
        let mut pos = Vec::new();
        t.positions(100, &mut pos);
        assert_eq!(pos, [100, 101, 102, 101]);
        let mut rows = Vec::new();
        t.rows(9, &mut rows);
        assert_eq!(rows, [9, 10, 11, 12]);
    }

    #[test]
    fn greedy_acceptance_takes_the_longest_matching_path() {
        let mut t = DraftTree::new();
        t.add_path(&[10, 11, 13], 8);
        t.add_path(&[12, 14], 8);
        // rows: root, 10, 11, 13, 12, 14
        // The model predicts 12 after the root, 14 after 12, 99 after 14.
        let predicted = [12, 0, 0, 0, 14, 99];
        assert_eq!(
            t.accept_greedy(&predicted),
            Some(Acceptance {
                path: vec![3, 4],
                bonus: 99
            })
        );
        // Nothing matches: only the bonus.
        assert_eq!(
            t.accept_greedy(&[7, 0, 0, 0, 0, 0]),
            Some(Acceptance {
                path: vec![],
                bonus: 7
            })
        );
        assert!(t.accept_greedy(&[1, 2]).is_none());
    }
}
