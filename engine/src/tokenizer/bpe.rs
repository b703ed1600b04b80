//! Byte-level BPE merging within one pre-tokenized word.
//!
//! Merges are ranked by their order in `tokenizer.ggml.merges`. A word starts
//! as one symbol per byte; the adjacent pair with the lowest rank (leftmost on
//! ties) is merged until no adjacent pair has a rank, as llama.cpp's
//! `llm_tokenizer_bpe_session` does. Symbols are interned strings: ids below
//! the vocabulary size are the vocabulary's own token ids, ids above name
//! strings that appear only in merges (a merge may produce a string that is
//! not a token; llama.cpp then falls back to single-byte tokens).

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};

use super::byte_level::ByteLevel;
use crate::{Error, Result};

/// One merge: its rank and the symbol it produces.
#[derive(Debug, Clone, Copy)]
struct Merge {
    rank: u32,
    merged: u32,
}

/// The merge table, with the interning of every string it mentions.
#[derive(Debug, Clone)]
pub(crate) struct BpeModel {
    vocab_size: u32,
    /// Vocabulary strings to token ids.
    token_to_id: HashMap<String, u32>,
    /// Strings that merges mention but the vocabulary lacks; symbol id
    /// `vocab_size + i` is `extra_symbols[i]`.
    extra_symbols: Vec<String>,
    extra_to_symbol: HashMap<String, u32>,
    /// (left symbol, right symbol) -> merge.
    merges: HashMap<(u32, u32), Merge>,
    /// The symbol of each byte's byte-level character.
    byte_symbol: [u32; 256],
}

/// A symbol of a word being merged. `len == 0` marks one merged away.
#[derive(Debug, Clone, Copy)]
struct Symbol {
    id: u32,
    len: usize,
    prev: usize,
    next: usize,
}

/// `prev`/`next` of a symbol at the start/end of its word.
const NO_SYMBOL: usize = usize::MAX;

/// A candidate merge of the symbols at `left` and `right` that was valid when
/// queued; it is stale if either symbol has changed since.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Candidate {
    rank: u32,
    left: usize,
    right: usize,
    left_id: u32,
    right_id: u32,
}

impl BpeModel {
    /// Builds the model. `tokens` must have no duplicates (checked by the
    /// caller); `merges` are `"left right"` lines, best first.
    pub(crate) fn new(
        tokens: &[String],
        merges: &[String],
        byte_level: &ByteLevel,
    ) -> Result<Self> {
        let vocab_size = u32::try_from(tokens.len()).map_err(|_| Error::InvalidVocab {
            reason: format!("{} tokens do not fit u32 ids", tokens.len()),
        })?;
        let token_to_id: HashMap<String, u32> = tokens
            .iter()
            .enumerate()
            .map(|(id, text)| (text.clone(), id as u32))
            .collect();
        let mut model = Self {
            vocab_size,
            token_to_id,
            extra_symbols: Vec::new(),
            extra_to_symbol: HashMap::new(),
            merges: HashMap::with_capacity(merges.len()),
            byte_symbol: [0; 256],
        };
        for byte in 0..=255u8 {
            let mut utf8 = [0u8; 4];
            let text = byte_level.char_of(byte).encode_utf8(&mut utf8);
            model.byte_symbol[usize::from(byte)] = model.intern(text);
        }
        for (rank, line) in merges.iter().enumerate() {
            // llama.cpp splits at the first space after the first byte, so a
            // left part that starts with a space still parses.
            // (Byte search: the first character may be several bytes long,
            // and a space is always a character boundary.)
            let Some(split) = line.bytes().skip(1).position(|b| b == b' ').map(|i| i + 1) else {
                continue;
            };
            let (left, right) = (&line[..split], &line[split + 1..]);
            let rank = u32::try_from(rank).map_err(|_| Error::InvalidVocab {
                reason: "more merges than fit u32 ranks".to_owned(),
            })?;
            let left_id = model.intern(left);
            let right_id = model.intern(right);
            let merged = model.intern(&format!("{left}{right}"));
            // The first occurrence of a duplicated merge keeps its rank.
            model
                .merges
                .entry((left_id, right_id))
                .or_insert(Merge { rank, merged });
        }
        Ok(model)
    }

    fn intern(&mut self, text: &str) -> u32 {
        if let Some(&id) = self.token_to_id.get(text) {
            return id;
        }
        if let Some(&id) = self.extra_to_symbol.get(text) {
            return id;
        }
        let id = self.vocab_size + self.extra_symbols.len() as u32;
        self.extra_symbols.push(text.to_owned());
        self.extra_to_symbol.insert(text.to_owned(), id);
        id
    }

    pub(crate) fn token_id(&self, text: &str) -> Option<u32> {
        self.token_to_id.get(text).copied()
    }

    pub(crate) fn merge_count(&self) -> usize {
        self.merges.len()
    }

    /// Appends the tokens of one word, given as raw bytes, to `out`.
    /// `whole_word` is the word in the byte-level alphabet when the
    /// pre-tokenizer wants whole-word vocabulary hits taken without merging.
    pub(crate) fn encode_word(&self, word: &[u8], whole_word: Option<&str>, out: &mut Vec<u32>) {
        if let Some(id) = whole_word.and_then(|w| self.token_id(w)) {
            out.push(id);
            return;
        }
        if word.is_empty() {
            return;
        }
        let last = word.len() - 1;
        let mut symbols: Vec<Symbol> = word
            .iter()
            .enumerate()
            .map(|(i, &byte)| Symbol {
                id: self.byte_symbol[usize::from(byte)],
                len: 1,
                prev: if i == 0 { NO_SYMBOL } else { i - 1 },
                next: if i == last { NO_SYMBOL } else { i + 1 },
            })
            .collect();

        let mut queue = BinaryHeap::new();
        for left in 0..last {
            self.queue_pair(&symbols, left, left + 1, &mut queue);
        }
        while let Some(Reverse(candidate)) = queue.pop() {
            let (left, right) = (candidate.left, candidate.right);
            let (left_sym, right_sym) = (symbols[left], symbols[right]);
            let still_valid = left_sym.len > 0
                && right_sym.len > 0
                && left_sym.id == candidate.left_id
                && right_sym.id == candidate.right_id;
            if !still_valid {
                continue;
            }
            let Some(merge) = self.merges.get(&(left_sym.id, right_sym.id)) else {
                continue;
            };
            symbols[left].id = merge.merged;
            symbols[left].len += right_sym.len;
            symbols[left].next = right_sym.next;
            symbols[right].len = 0;
            if right_sym.next != NO_SYMBOL {
                symbols[right_sym.next].prev = left;
            }
            self.queue_pair(&symbols, symbols[left].prev, left, &mut queue);
            self.queue_pair(&symbols, left, symbols[left].next, &mut queue);
        }

        for symbol in symbols.iter().filter(|s| s.len > 0) {
            if symbol.id < self.vocab_size {
                out.push(symbol.id);
            } else {
                // A merge produced a string that is not a token: fall back to
                // the tokens of its single bytes, skipping any that are absent
                // (what llama.cpp does).
                let text = &self.extra_symbols[(symbol.id - self.vocab_size) as usize];
                for &byte in text.as_bytes() {
                    if let Some(id) = std::str::from_utf8(&[byte])
                        .ok()
                        .and_then(|s| self.token_id(s))
                    {
                        out.push(id);
                    }
                }
            }
        }
    }

    fn queue_pair(
        &self,
        symbols: &[Symbol],
        left: usize,
        right: usize,
        queue: &mut BinaryHeap<Reverse<Candidate>>,
    ) {
        if left == NO_SYMBOL || right == NO_SYMBOL {
            return;
        }
        let (left_id, right_id) = (symbols[left].id, symbols[right].id);
        if let Some(merge) = self.merges.get(&(left_id, right_id)) {
            queue.push(Reverse(Candidate {
                rank: merge.rank,
                left,
                right,
                left_id,
                right_id,
            }));
        }
    }
}
