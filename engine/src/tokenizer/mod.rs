//! The byte-level BPE tokenizer of GGUF models (`tokenizer.ggml.model =
//! "gpt2"`), with the same results as llama.cpp's `llama_tokenize` /
//! `llama_token_to_piece`.
//!
//! Encoding runs in three steps:
//! 1. `special`: the text is split at special-token strings (control and
//!    user-defined tokens), longest first. Control tokens are only recognized
//!    with `parse_special`; user-defined ones always are, as in llama.cpp.
//! 2. `pretokenize`: each remaining text fragment is split into words by
//!    the regexes of its `tokenizer.ggml.pre` type.
//! 3. `bpe`: each word's bytes are merged by merge rank into tokens.
//!
//! Decoding maps each token back to bytes through the GPT-2 byte-level
//! alphabet (`byte_level`); control tokens render as nothing.
//!
//! The core is built from plain data ([`TokenizerSpec`]), so tests and tools
//! need no GGUF file; [`Tokenizer::from_gguf`] reads that data from a model.

mod bpe;
mod byte_level;
mod pretokenize;
mod special;
mod stream;

use std::collections::{HashMap, HashSet};

pub use pretokenize::PreTokenizerKind;
pub use stream::StreamDecoder;

use crate::gguf::GgufFile;
use crate::{Error, Result};
use bpe::BpeModel;
use byte_level::ByteLevel;
use pretokenize::PreTokenizer;
use special::Fragment;

/// GGUF `tokenizer.ggml.token_type` values (llama.cpp's `llama_token_type`).
pub mod token_type {
    pub const UNDEFINED: i32 = 0;
    pub const NORMAL: i32 = 1;
    pub const UNKNOWN: i32 = 2;
    pub const CONTROL: i32 = 3;
    pub const USER_DEFINED: i32 = 4;
    pub const UNUSED: i32 = 5;
    pub const BYTE: i32 = 6;
}

/// What a token is, from `tokenizer.ggml.token_type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenKind {
    Undefined,
    Normal,
    Unknown,
    /// BOS, EOS, `<|im_start|>` ...: matched in text only with
    /// `parse_special`, rendered as nothing when decoding.
    Control,
    /// Added tokens that always match in text and decode to their own text.
    UserDefined,
    Unused,
    Byte,
}

impl TokenKind {
    fn from_gguf_type(token_type: i32) -> Self {
        match token_type {
            token_type::NORMAL => Self::Normal,
            token_type::UNKNOWN => Self::Unknown,
            token_type::CONTROL => Self::Control,
            token_type::USER_DEFINED => Self::UserDefined,
            token_type::UNUSED => Self::Unused,
            token_type::BYTE => Self::Byte,
            _ => Self::Undefined,
        }
    }

    /// Tokens that `llama_token_to_piece(special = false)` renders as "".
    fn is_hidden_when_decoding(self) -> bool {
        matches!(self, Self::Control | Self::Unknown)
    }
}

/// Token texts that llama.cpp treats as end of generation whatever their
/// declared type (`special_eog_ids`), and therefore forces to control.
const END_OF_GENERATION_TEXTS: &[&str] = &[
    "<|eot_id|>",
    "<|im_end|>",
    "<|end|>",
    "<|return|>",
    "<|call|>",
    "<end_of_turn>",
    "<|endoftext|>",
    "<|eom_id|>",
    "<EOT>",
    "_<EOT>",
    "<|end_of_text|>",
    "<end_of_utterance>",
];

/// Token texts llama.cpp recognizes as end-of-turn when the GGUF names none.
const END_OF_TURN_TEXTS: &[&str] = &[
    "<|eot_id|>",
    "<|im_end|>",
    "<|end|>",
    "<end_of_turn>",
    "<|endoftext|>",
    "<|end_of_text|>",
    "<EOT>",
    "_<EOT>",
    "<｜end▁of▁sentence｜>",
    "<end_of_utterance>",
];

/// Fill-in-the-middle pad / repo / file-separator texts, which llama.cpp
/// also counts as end of generation.
const FIM_PAD_TEXTS: &[&str] = &["<|fim_pad|>", "<fim-pad>", "<fim_pad>", "<PAD>"];
const FIM_REPO_TEXTS: &[&str] = &[
    "<|fim_repo|>",
    "<|repo_name|>",
    "<fim-repo>",
    "<REPO>",
    "<reponame>",
];
const FIM_SEP_TEXTS: &[&str] = &["<|file_sep|>"];
/// Other fill-in-the-middle texts that llama.cpp forces to control type.
const FIM_OTHER_TEXTS: &[&str] = &[
    "<|fim_prefix|>",
    "<fim-prefix>",
    "<fim_prefix>",
    "<｜fim▁begin｜>",
    "<PRE>",
    "▁<PRE>",
    "<|code_prefix|>",
    "<|fim_suffix|>",
    "<fim-suffix>",
    "<fim_suffix>",
    "<｜fim▁hole｜>",
    "<SUF>",
    "▁<SUF>",
    "<|code_suffix|>",
    "<|fim_middle|>",
    "<fim-middle>",
    "<fim_middle>",
    "<｜fim▁end｜>",
    "<MID>",
    "▁<MID>",
    "<|code_middle|>",
];

/// llama.cpp's BOS/EOS id for a `gpt2` vocabulary whose GGUF names none.
const GPT2_DEFAULT_BOS_EOS: u32 = 11;

/// Everything a tokenizer is built from, as plain data (the GGUF
/// `tokenizer.ggml.*` keys). Ids are taken as given: `None` means the model
/// has no such token.
#[derive(Debug, Clone, Default)]
pub struct TokenizerSpec {
    /// `tokenizer.ggml.model`; only `"gpt2"` (byte-level BPE) is supported.
    pub model: String,
    /// `tokenizer.ggml.pre`: `smollm`, `llama3`/`llama-bpe`, `qwen2`,
    /// `gpt-2`, or empty/`default`.
    pub pre: String,
    /// `tokenizer.ggml.tokens`, in the byte-level alphabet.
    pub tokens: Vec<String>,
    /// `tokenizer.ggml.token_type`, one per token; empty means all normal.
    pub token_types: Vec<i32>,
    /// `tokenizer.ggml.merges`: `"left right"`, best (lowest rank) first.
    pub merges: Vec<String>,
    pub bos_id: Option<u32>,
    pub eos_id: Option<u32>,
    /// End of turn; when `None`, found by text as llama.cpp does.
    pub eot_id: Option<u32>,
    /// End of message (Llama 3.1 tool calls); when `None`, found by text.
    pub eom_id: Option<u32>,
    pub pad_id: Option<u32>,
    pub unk_id: Option<u32>,
    /// Fill-in-the-middle pad / repo / separator; when `None`, found by text.
    pub fim_pad_id: Option<u32>,
    pub fim_rep_id: Option<u32>,
    pub fim_sep_id: Option<u32>,
    /// `tokenizer.ggml.add_bos_token`; `None` takes llama.cpp's default for
    /// the pre type (true for `llama3`, false otherwise).
    pub add_bos: Option<bool>,
    /// `tokenizer.ggml.add_eos_token`; `None` means false.
    pub add_eos: Option<bool>,
}

/// A byte-level BPE tokenizer; see the module docs. Immutable once built,
/// so one instance can serve many threads.
#[derive(Debug, Clone)]
pub struct Tokenizer {
    tokens: Vec<String>,
    kinds: Vec<TokenKind>,
    /// Each token's bytes as `llama_token_to_piece(special = true)` gives
    /// them: normal tokens byte-level decoded, control and user-defined
    /// tokens as their text, other kinds empty.
    pieces: Vec<Vec<u8>>,
    bpe: BpeModel,
    byte_level: ByteLevel,
    pre_tokenizer: PreTokenizer,
    /// Control, user-defined and unknown tokens, longest text first.
    specials_longest_first: Vec<u32>,
    bos_id: Option<u32>,
    eos_id: Option<u32>,
    eot_id: Option<u32>,
    pad_id: Option<u32>,
    add_bos: bool,
    add_eos: bool,
    end_of_generation: HashSet<u32>,
}

impl Tokenizer {
    /// Builds a tokenizer from plain data; see [`TokenizerSpec`].
    pub fn from_spec(spec: TokenizerSpec) -> Result<Tokenizer> {
        if spec.model != "gpt2" {
            return Err(Error::UnsupportedTokenizerModel { model: spec.model });
        }
        let pre_kind = PreTokenizerKind::from_name(&spec.pre)?;
        let vocab_size = spec.tokens.len();
        if vocab_size == 0 {
            return Err(Error::InvalidVocab {
                reason: "the vocabulary is empty".to_owned(),
            });
        }
        if u32::try_from(vocab_size).is_err() {
            return Err(Error::InvalidVocab {
                reason: format!("{vocab_size} tokens do not fit u32 ids"),
            });
        }
        if !spec.token_types.is_empty() && spec.token_types.len() != vocab_size {
            return Err(Error::InvalidVocab {
                reason: format!(
                    "{} token types for {vocab_size} tokens",
                    spec.token_types.len()
                ),
            });
        }

        // llama.cpp renames empty tokens so that every text is distinct and
        // non-empty, and refuses duplicates.
        let tokens: Vec<String> = spec
            .tokens
            .into_iter()
            .enumerate()
            .map(|(id, text)| {
                if text.is_empty() {
                    format!("[EMPTY_{id}]")
                } else {
                    text
                }
            })
            .collect();
        let mut first_id_of: HashMap<&str, u32> = HashMap::with_capacity(vocab_size);
        for (id, text) in tokens.iter().enumerate() {
            if let Some(first) = first_id_of.insert(text, id as u32) {
                return Err(Error::InvalidVocab {
                    reason: format!("tokens {first} and {id} are both {text:?}"),
                });
            }
        }
        let id_of_text = |text: &str| first_id_of.get(text).copied();

        let check_id = |name: &'static str, id: Option<u32>| -> Result<Option<u32>> {
            match id {
                Some(id) if id as usize >= vocab_size => Err(Error::InvalidVocab {
                    reason: format!("{name} id {id} is outside the {vocab_size}-token vocabulary"),
                }),
                other => Ok(other),
            }
        };
        let bos_id = check_id("BOS", spec.bos_id)?;
        let eos_id = check_id("EOS", spec.eos_id)?;
        let pad_id = check_id("padding", spec.pad_id)?;
        check_id("unknown", spec.unk_id)?;
        let first_of = |texts: &[&str]| texts.iter().find_map(|t| id_of_text(t));
        let eot_id = check_id("EOT", spec.eot_id)?.or_else(|| first_of(END_OF_TURN_TEXTS));
        let eom_id = check_id("EOM", spec.eom_id)?.or_else(|| id_of_text("<|eom_id|>"));
        let fim_pad_id = check_id("FIM pad", spec.fim_pad_id)?.or_else(|| first_of(FIM_PAD_TEXTS));
        let fim_rep_id =
            check_id("FIM repo", spec.fim_rep_id)?.or_else(|| first_of(FIM_REPO_TEXTS));
        let fim_sep_id = check_id("FIM sep", spec.fim_sep_id)?.or_else(|| first_of(FIM_SEP_TEXTS));

        let mut kinds: Vec<TokenKind> = if spec.token_types.is_empty() {
            vec![TokenKind::Normal; vocab_size]
        } else {
            spec.token_types
                .iter()
                .map(|&t| TokenKind::from_gguf_type(t))
                .collect()
        };

        // End of generation, and the control type llama.cpp forces on the
        // tokens it recognizes by text.
        let mut end_of_generation: HashSet<u32> =
            [eos_id, eot_id, eom_id, fim_pad_id, fim_rep_id, fim_sep_id]
                .into_iter()
                .flatten()
                .collect();
        end_of_generation.extend(END_OF_GENERATION_TEXTS.iter().filter_map(|t| id_of_text(t)));
        // Texts are matched only for roles the GGUF left unnamed, as in
        // llama.cpp; END_OF_GENERATION_TEXTS always are.
        let when_unnamed = |named: Option<u32>, texts: &'static [&'static str]| {
            if named.is_none() {
                texts
            } else {
                &[]
            }
        };
        let eom_texts: &[&str] = &["<|eom_id|>"];
        let forced_control: Vec<u32> = END_OF_GENERATION_TEXTS
            .iter()
            .chain(when_unnamed(spec.eot_id, END_OF_TURN_TEXTS))
            .chain(when_unnamed(spec.eom_id, eom_texts))
            .chain(when_unnamed(spec.fim_pad_id, FIM_PAD_TEXTS))
            .chain(when_unnamed(spec.fim_rep_id, FIM_REPO_TEXTS))
            .chain(when_unnamed(spec.fim_sep_id, FIM_SEP_TEXTS))
            .chain(FIM_OTHER_TEXTS)
            .filter_map(|t| id_of_text(t))
            .collect();
        for id in forced_control {
            kinds[id as usize] = TokenKind::Control;
        }
        drop(first_id_of);

        let byte_level = ByteLevel::new();
        let pieces = tokens
            .iter()
            .zip(&kinds)
            .map(|(text, kind)| match kind {
                TokenKind::Normal => byte_level.decode(text),
                TokenKind::Control | TokenKind::UserDefined | TokenKind::Unknown => {
                    text.as_bytes().to_vec()
                }
                TokenKind::Undefined | TokenKind::Unused | TokenKind::Byte => Vec::new(),
            })
            .collect();

        let mut specials_longest_first: Vec<u32> = (0..vocab_size as u32)
            .filter(|&id| {
                matches!(
                    kinds[id as usize],
                    TokenKind::Control | TokenKind::UserDefined | TokenKind::Unknown
                )
            })
            .collect();
        // Stable: equal lengths keep id order.
        specials_longest_first.sort_by_key(|&id| std::cmp::Reverse(tokens[id as usize].len()));

        let bpe = BpeModel::new(&tokens, &spec.merges, &byte_level)?;
        let add_bos = spec.add_bos.unwrap_or(pre_kind.adds_bos_by_default());
        let add_eos = spec.add_eos.unwrap_or(false);
        if add_bos && bos_id.is_none() {
            return Err(Error::MissingSpecialToken { which: "BOS" });
        }
        if add_eos && eos_id.is_none() {
            return Err(Error::MissingSpecialToken { which: "EOS" });
        }

        Ok(Tokenizer {
            tokens,
            kinds,
            pieces,
            bpe,
            byte_level,
            pre_tokenizer: PreTokenizer::new(pre_kind)?,
            specials_longest_first,
            bos_id,
            eos_id,
            eot_id,
            pad_id,
            add_bos,
            add_eos,
            end_of_generation,
        })
    }

    /// Reads the `tokenizer.ggml.*` keys of a GGUF file, with llama.cpp's
    /// defaults for keys that are missing.
    pub fn from_gguf(gguf: &GgufFile) -> Result<Tokenizer> {
        let model = gguf.get_str("tokenizer.ggml.model")?.to_owned();
        let pre = optional_str(gguf, "tokenizer.ggml.pre")?.unwrap_or_default();
        let tokens = string_array(gguf, "tokenizer.ggml.tokens")?.to_vec();
        let token_types = match gguf.get("tokenizer.ggml.token_type") {
            None => Vec::new(),
            Some(value) => value
                .as_i32_array()
                .ok_or_else(|| Error::InvalidVocab {
                    reason: "tokenizer.ggml.token_type is not an array of i32".to_owned(),
                })?
                .to_vec(),
        };
        let merges = if model == "gpt2" {
            string_array(gguf, "tokenizer.ggml.merges")?.to_vec()
        } else {
            Vec::new()
        };
        let vocab_size = tokens.len();
        // llama.cpp ignores an id key that is outside the vocabulary and
        // keeps its default instead.
        let id_key = |key: &str, default: Option<u32>| -> Result<Option<u32>> {
            Ok(match optional_u32(gguf, key)? {
                Some(id) if (id as usize) < vocab_size => Some(id),
                _ => default.filter(|&id| (id as usize) < vocab_size),
            })
        };
        let gpt2_default = (model == "gpt2").then_some(GPT2_DEFAULT_BOS_EOS);
        let spec = TokenizerSpec {
            bos_id: id_key("tokenizer.ggml.bos_token_id", gpt2_default)?,
            eos_id: id_key("tokenizer.ggml.eos_token_id", gpt2_default)?,
            eot_id: id_key("tokenizer.ggml.eot_token_id", None)?,
            eom_id: id_key("tokenizer.ggml.eom_token_id", None)?,
            pad_id: id_key("tokenizer.ggml.padding_token_id", None)?,
            unk_id: id_key("tokenizer.ggml.unknown_token_id", None)?,
            fim_pad_id: id_key("tokenizer.ggml.fim_pad_token_id", None)?,
            fim_rep_id: id_key("tokenizer.ggml.fim_rep_token_id", None)?,
            fim_sep_id: id_key("tokenizer.ggml.fim_sep_token_id", None)?,
            add_bos: optional_bool(gguf, "tokenizer.ggml.add_bos_token")?,
            add_eos: optional_bool(gguf, "tokenizer.ggml.add_eos_token")?,
            model,
            pre,
            tokens,
            token_types,
            merges,
        };
        Tokenizer::from_spec(spec)
    }

    /// Tokenizes `text` like `llama_tokenize(text, add_special,
    /// parse_special)`: `add_special` adds BOS/EOS where the model asks for
    /// them; `parse_special` lets control-token text (`<|im_start|>`) become
    /// those tokens instead of being spelled out.
    pub fn encode(&self, text: &str, add_special: bool, parse_special: bool) -> Result<Vec<u32>> {
        let mut ids = Vec::with_capacity(text.len() / 3 + 2);
        if add_special && self.add_bos {
            ids.extend(self.bos_id);
        }
        let specials = self
            .specials_longest_first
            .iter()
            .filter(|&&id| parse_special || !self.kinds[id as usize].is_hidden_when_decoding())
            .map(|&id| (id, self.tokens[id as usize].as_str()));
        for fragment in special::partition(text, specials) {
            match fragment {
                Fragment::Token(id) => ids.push(id),
                Fragment::Text { start, end } => self.encode_plain(&text[start..end], &mut ids)?,
            }
        }
        if add_special && self.add_eos {
            ids.extend(self.eos_id);
        }
        Ok(ids)
    }

    /// BPE-encodes text that holds no special tokens.
    fn encode_plain(&self, text: &str, ids: &mut Vec<u32>) -> Result<()> {
        let merges_whole_words = self.pre_tokenizer.kind().ignores_merges();
        for (start, end) in self.pre_tokenizer.split(text)? {
            let word = &text.as_bytes()[start..end];
            let whole_word = merges_whole_words.then(|| self.byte_level.encode(word));
            self.bpe.encode_word(word, whole_word.as_deref(), ids);
        }
        Ok(())
    }

    /// Detokenizes `ids`: the concatenated bytes of each token (control
    /// tokens render as nothing, like llama.cpp with `special = false`),
    /// with invalid UTF-8 replaced by U+FFFD.
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        let mut bytes = Vec::with_capacity(ids.len() * 4);
        for &id in ids {
            bytes.extend_from_slice(self.decoded_piece(id)?);
        }
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    }

    /// The bytes `id` contributes to [`Tokenizer::decode`].
    pub(crate) fn decoded_piece(&self, id: u32) -> Result<&[u8]> {
        let index = self.index(id)?;
        if self.kinds[index].is_hidden_when_decoding() {
            Ok(&[])
        } else {
            Ok(&self.pieces[index])
        }
    }

    /// The bytes token `id` stands for: normal tokens byte-level decoded,
    /// control and user-defined tokens as their text (what
    /// `llama_token_to_piece(special = true)` gives).
    pub fn token_bytes(&self, id: u32) -> Result<&[u8]> {
        Ok(&self.pieces[self.index(id)?])
    }

    /// The token's vocabulary string, in the byte-level alphabet.
    pub fn token_text(&self, id: u32) -> Result<&str> {
        Ok(&self.tokens[self.index(id)?])
    }

    /// The id of the token whose vocabulary string is exactly `text`.
    pub fn token_id(&self, text: &str) -> Option<u32> {
        self.bpe.token_id(text)
    }

    /// The kind of token `id`.
    pub fn token_kind(&self, id: u32) -> Result<TokenKind> {
        Ok(self.kinds[self.index(id)?])
    }

    pub fn vocab_size(&self) -> usize {
        self.tokens.len()
    }

    /// The number of distinct merges.
    pub fn merge_count(&self) -> usize {
        self.bpe.merge_count()
    }

    pub fn bos_id(&self) -> Option<u32> {
        self.bos_id
    }

    pub fn eos_id(&self) -> Option<u32> {
        self.eos_id
    }

    pub fn eot_id(&self) -> Option<u32> {
        self.eot_id
    }

    pub fn pad_id(&self) -> Option<u32> {
        self.pad_id
    }

    /// Whether `encode(.., add_special = true, ..)` starts with BOS.
    pub fn adds_bos(&self) -> bool {
        self.add_bos
    }

    /// Whether `encode(.., add_special = true, ..)` ends with EOS.
    pub fn adds_eos(&self) -> bool {
        self.add_eos
    }

    pub fn pre_tokenizer(&self) -> PreTokenizerKind {
        self.pre_tokenizer.kind()
    }

    /// Whether generating `id` ends the turn (llama.cpp's `special_eog_ids`:
    /// EOS, EOT, `<|im_end|>`, `<|endoftext|>`, ...).
    pub fn is_end_of_generation(&self, id: u32) -> bool {
        self.end_of_generation.contains(&id)
    }

    /// The end-of-generation ids, ascending.
    pub fn end_of_generation_ids(&self) -> Vec<u32> {
        let mut ids: Vec<u32> = self.end_of_generation.iter().copied().collect();
        ids.sort_unstable();
        ids
    }

    /// Whether `id` is a control token; false for ids outside the vocabulary.
    pub fn is_control(&self, id: u32) -> bool {
        self.kinds.get(id as usize) == Some(&TokenKind::Control)
    }

    fn index(&self, id: u32) -> Result<usize> {
        let index = id as usize;
        if index < self.tokens.len() {
            Ok(index)
        } else {
            Err(Error::TokenOutOfRange {
                id,
                vocab_size: self.tokens.len(),
            })
        }
    }
}

fn string_array<'a>(gguf: &'a GgufFile, key: &str) -> Result<&'a [String]> {
    gguf.get(key)
        .ok_or_else(|| Error::MissingKey {
            key: key.to_owned(),
        })?
        .as_string_array()
        .ok_or_else(|| Error::InvalidVocab {
            reason: format!("{key} is not an array of strings"),
        })
}

fn optional_str(gguf: &GgufFile, key: &str) -> Result<Option<String>> {
    match gguf.get(key) {
        None => Ok(None),
        Some(_) => gguf.get_str(key).map(|s| Some(s.to_owned())),
    }
}

fn optional_u32(gguf: &GgufFile, key: &str) -> Result<Option<u32>> {
    match gguf.get(key) {
        None => Ok(None),
        Some(_) => gguf.get_u32(key).map(Some),
    }
}

fn optional_bool(gguf: &GgufFile, key: &str) -> Result<Option<bool>> {
    match gguf.get(key) {
        None => Ok(None),
        Some(_) => gguf.get_bool(key).map(Some),
    }
}

#[cfg(test)]
mod tests;
