//! Streaming detokenization that hands out only complete UTF-8.
//!
//! A byte-level token can end in the middle of a character (an emoji is
//! often four single-byte tokens). The decoder holds such a tail back until
//! the bytes that complete it arrive; bytes that can never become valid UTF-8
//! come out as U+FFFD right away, so one bad byte does not stall the stream.

use super::Tokenizer;
use crate::Result;

/// Incremental detokenizer; see the module docs.
#[derive(Debug, Clone, Default)]
pub struct StreamDecoder {
    pending: Vec<u8>,
}

impl StreamDecoder {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds token `id` and returns the text it completes (possibly empty).
    /// Control tokens add nothing, as in [`Tokenizer::decode`]. An id outside
    /// the vocabulary is an error and leaves the decoder unchanged.
    pub fn push(&mut self, tokenizer: &Tokenizer, id: u32) -> Result<String> {
        let piece = tokenizer.decoded_piece(id)?;
        self.pending.extend_from_slice(piece);
        Ok(self.take_complete())
    }

    /// Flushes whatever is held back, with U+FFFD for an incomplete tail.
    pub fn finish(&mut self) -> String {
        let rest = String::from_utf8_lossy(&self.pending).into_owned();
        self.pending.clear();
        rest
    }

    /// Whether bytes of an unfinished character are being held back.
    pub fn has_pending(&self) -> bool {
        !self.pending.is_empty()
    }

    fn take_complete(&mut self) -> String {
        let mut text = String::new();
        let mut consumed = 0;
        loop {
            match std::str::from_utf8(&self.pending[consumed..]) {
                Ok(valid) => {
                    text.push_str(valid);
                    consumed = self.pending.len();
                    break;
                }
                Err(error) => {
                    let valid_end = consumed + error.valid_up_to();
                    // The prefix up to `valid_up_to` was just validated.
                    text.push_str(&String::from_utf8_lossy(&self.pending[consumed..valid_end]));
                    match error.error_len() {
                        // Bytes that no continuation can fix.
                        Some(bad_len) => {
                            text.push(char::REPLACEMENT_CHARACTER);
                            consumed = valid_end + bad_len;
                        }
                        // A character cut short at the end: wait for more.
                        None => {
                            consumed = valid_end;
                            break;
                        }
                    }
                }
            }
        }
        self.pending.drain(..consumed);
        text
    }
}
