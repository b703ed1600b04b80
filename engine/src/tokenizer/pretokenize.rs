//! Pre-tokenization: splitting text into the words that BPE merges within.
//!
//! Each `tokenizer.ggml.pre` type is a list of regex stages, as in llama.cpp
//! (`llama_vocab` pre-types and `unicode_regex_split`): the first stage splits
//! the text, each later stage splits every piece of the previous one again, and
//! text that a stage's regex does not match stays a piece of its own. A
//! lookahead at the end of a piece sees the end of the piece, not the text
//! after it, as llama.cpp's splitters do.
//!
//! Character classes: `\s`, `\p{L}` and `\p{N}` use the Unicode `White_Space`
//! property and the Letter / Number general categories, which are what
//! llama.cpp's own tables (`unicode_cpt_flags`) hold for assigned code points.

use fancy_regex::Regex;

use crate::{Error, Result};

/// GPT-2's split: contractions, letter runs, digit runs, other-symbol runs
/// (each with an optional leading space), and whitespace not followed by a
/// non-space. llama.cpp keeps unmatched whitespace as its own piece; the
/// trailing `\s+` spells that out.
const GPT2_REGEX: &str =
    r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+";

/// Llama 3 (`llama-bpe`): case-insensitive contractions, a letter run with one
/// optional leading non-letter, digits in groups of up to three, newlines kept
/// with the whitespace before them.
const LLAMA3_REGEX: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// Qwen 2: as Llama 3, but every digit is a piece of its own.
const QWEN2_REGEX: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// Splits every digit off on its own (SmolLM's first stage).
const SINGLE_DIGIT_REGEX: &str = r"\p{N}";

/// The pre-tokenizer types this engine implements.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PreTokenizerKind {
    /// llama.cpp's fallback for a missing or `"default"` pre type.
    Default,
    /// `gpt-2` (and `gpt2`).
    Gpt2,
    /// `llama3`, `llama-v3`, `llama-bpe`.
    Llama3,
    /// `qwen2`, `deepseek-r1-qwen`.
    Qwen2,
    /// `smollm`: single digits first, then the GPT-2 split.
    Smollm,
}

impl PreTokenizerKind {
    /// The kind named by GGUF `tokenizer.ggml.pre`, with llama.cpp's aliases.
    pub fn from_name(name: &str) -> Result<Self> {
        match name {
            "" | "default" => Ok(Self::Default),
            "gpt-2" | "gpt2" => Ok(Self::Gpt2),
            "llama3" | "llama-v3" | "llama-bpe" => Ok(Self::Llama3),
            "qwen2" | "deepseek-r1-qwen" => Ok(Self::Qwen2),
            "smollm" => Ok(Self::Smollm),
            other => Err(Error::UnsupportedPreTokenizer {
                pre: other.to_owned(),
            }),
        }
    }

    fn regex_stages(self) -> &'static [&'static str] {
        match self {
            Self::Default => &[
                r"[\p{P}\$\+<=>\^~\|]+",
                GPT2_REGEX,
                r"\p{N}+",
                r"[0-9][0-9][0-9]",
            ],
            Self::Gpt2 => &[GPT2_REGEX],
            Self::Llama3 => &[LLAMA3_REGEX],
            Self::Qwen2 => &[QWEN2_REGEX],
            Self::Smollm => &[SINGLE_DIGIT_REGEX, GPT2_REGEX],
        }
    }

    /// Llama 3 emits a word that is itself a vocabulary entry as one token,
    /// without running merges (llama.cpp's `ignore_merges`).
    pub(crate) fn ignores_merges(self) -> bool {
        matches!(self, Self::Llama3)
    }

    /// Whether llama.cpp adds BOS by default when the GGUF has no
    /// `tokenizer.ggml.add_bos_token`.
    pub(crate) fn adds_bos_by_default(self) -> bool {
        matches!(self, Self::Llama3)
    }
}

/// A compiled pre-tokenizer.
#[derive(Debug, Clone)]
pub(crate) struct PreTokenizer {
    kind: PreTokenizerKind,
    stages: Vec<Regex>,
}

impl PreTokenizer {
    pub(crate) fn new(kind: PreTokenizerKind) -> Result<Self> {
        let stages = kind
            .regex_stages()
            .iter()
            .map(|pattern| {
                Regex::new(pattern).map_err(|e| Error::InvalidVocab {
                    reason: format!("pre-tokenizer regex {pattern:?} does not compile: {e}"),
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self { kind, stages })
    }

    pub(crate) fn kind(&self) -> PreTokenizerKind {
        self.kind
    }

    /// Splits `text` into words, as byte ranges of `text` in order. The
    /// ranges cover the whole text.
    pub(crate) fn split(&self, text: &str) -> Result<Vec<(usize, usize)>> {
        let mut pieces = vec![(0, text.len())];
        for regex in &self.stages {
            let mut next = Vec::with_capacity(pieces.len() * 2);
            for &(start, end) in &pieces {
                split_piece(regex, text, start, end, &mut next)?;
            }
            pieces = next;
        }
        Ok(pieces)
    }
}

/// Splits `text[start..end]` at the matches of `regex`, keeping unmatched
/// stretches as pieces too, and appends the pieces to `out`.
fn split_piece(
    regex: &Regex,
    text: &str,
    start: usize,
    end: usize,
    out: &mut Vec<(usize, usize)>,
) -> Result<()> {
    let piece = &text[start..end];
    let mut covered = 0;
    for found in regex.find_iter(piece) {
        let found = found.map_err(|e| Error::PreTokenizer {
            reason: e.to_string(),
        })?;
        if found.start() == found.end() {
            continue;
        }
        if found.start() > covered {
            out.push((start + covered, start + found.start()));
        }
        out.push((start + found.start(), start + found.end()));
        covered = found.end();
    }
    if covered < piece.len() {
        out.push((start + covered, end));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(kind: PreTokenizerKind, text: &str) -> Vec<String> {
        let pre = PreTokenizer::new(kind).unwrap();
        pre.split(text)
            .unwrap()
            .into_iter()
            .map(|(s, e)| text[s..e].to_owned())
            .collect()
    }

    #[test]
    fn gpt2_split() {
        assert_eq!(
            words(PreTokenizerKind::Gpt2, "Hello world! It's 2024  ok\n"),
            ["Hello", " world", "!", " It", "'s", " 2024", " ", " ok", "\n"]
        );
    }

    #[test]
    fn smollm_splits_digits_first() {
        assert_eq!(
            words(PreTokenizerKind::Smollm, "Hello world! 123"),
            ["Hello", " world", "!", " ", "1", "2", "3"]
        );
    }

    #[test]
    fn llama3_groups_digits_by_three_and_keeps_newlines() {
        assert_eq!(
            words(PreTokenizerKind::Llama3, "abc 12345\n\n  x"),
            ["abc", " ", "123", "45", "\n\n", " ", " x"]
        );
    }

    #[test]
    fn qwen2_single_digits() {
        assert_eq!(
            words(PreTokenizerKind::Qwen2, "I'M 42"),
            ["I", "'M", " ", "4", "2"]
        );
    }

    #[test]
    fn unknown_pre_type_is_an_error() {
        assert!(matches!(
            PreTokenizerKind::from_name("martian"),
            Err(Error::UnsupportedPreTokenizer { .. })
        ));
    }
}
