//! The GPT-2 byte-level alphabet: every byte 0..=255 gets one printable
//! Unicode character, so that a vocabulary of strings can spell any byte
//! sequence. Printable Latin-1 bytes stand for themselves; the others (control
//! bytes, space, DEL, NBSP, soft hyphen) are shifted to U+0100.. in byte order.
//! This is the `bytes_to_unicode` table of GPT-2, which byte-level BPE
//! vocabularies (GGUF `tokenizer.ggml.model = "gpt2"`) are written in.

/// Maps bytes to their byte-level characters and back.
#[derive(Debug, Clone)]
pub(crate) struct ByteLevel {
    byte_to_char: [char; 256],
}

impl ByteLevel {
    pub(crate) fn new() -> Self {
        let mut byte_to_char = ['\0'; 256];
        let mut next_shifted = 256u32;
        for byte in 0..=255u8 {
            let stands_for_itself = matches!(byte, b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF);
            let code = if stands_for_itself {
                u32::from(byte)
            } else {
                let code = next_shifted;
                next_shifted += 1;
                code
            };
            // Every code is below U+0144, far from the surrogate range.
            byte_to_char[usize::from(byte)] = char::from_u32(code).unwrap_or('\u{FFFD}');
        }
        Self { byte_to_char }
    }

    /// The byte-level character that spells `byte`.
    pub(crate) fn char_of(&self, byte: u8) -> char {
        self.byte_to_char[usize::from(byte)]
    }

    /// The byte a byte-level character spells, or `None` for a character
    /// outside the alphabet.
    pub(crate) fn byte_of(&self, ch: char) -> Option<u8> {
        let code = u32::from(ch);
        match code {
            0x21..=0x7E | 0xA1..=0xAC | 0xAE..=0xFF => u8::try_from(code).ok(),
            0x100..=0x143 => {
                let nth_shifted = (code - 0x100) as usize;
                (0..=255u8)
                    .filter(|b| !matches!(b, b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF))
                    .nth(nth_shifted)
            }
            _ => None,
        }
    }

    /// Spells `bytes` in the byte-level alphabet.
    pub(crate) fn encode(&self, bytes: &[u8]) -> String {
        bytes.iter().map(|&b| self.char_of(b)).collect()
    }

    /// Turns a vocabulary string back into the bytes it spells. Characters
    /// outside the alphabet (which a well-formed byte-level vocabulary never
    /// holds) are kept as their own UTF-8 bytes rather than dropped.
    pub(crate) fn decode(&self, text: &str) -> Vec<u8> {
        let mut bytes = Vec::with_capacity(text.len());
        for ch in text.chars() {
            match self.byte_of(ch) {
                Some(b) => bytes.push(b),
                None => {
                    let mut utf8 = [0u8; 4];
                    bytes.extend_from_slice(ch.encode_utf8(&mut utf8).as_bytes());
                }
            }
        }
        bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_every_byte() {
        let map = ByteLevel::new();
        let all: Vec<u8> = (0..=255).collect();
        assert_eq!(map.decode(&map.encode(&all)), all);
    }

    #[test]
    fn known_characters() {
        let map = ByteLevel::new();
        assert_eq!(map.char_of(b' '), 'Ġ');
        assert_eq!(map.char_of(b'\n'), 'Ċ');
        assert_eq!(map.char_of(b'a'), 'a');
        assert_eq!(map.char_of(0xAD), 'Ń');
        assert_eq!(map.byte_of('Ġ'), Some(b' '));
        assert_eq!(map.byte_of('€'), None);
    }
}
