//! Splitting text at special-token strings before BPE (llama.cpp's
//! `tokenizer_st_partition`).
//!
//! Special tokens are tried longest first; each one splits every remaining
//! text fragment at all its occurrences, left to right. A fragment matched
//! by a special token becomes that token and is never looked at again, so a
//! longer special token wins over a shorter one inside it.

/// A piece of the input: either text still to be BPE-encoded (a byte range of
/// the input) or a special token already decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Fragment {
    Text { start: usize, end: usize },
    Token(u32),
}

/// Splits `text` at the occurrences of `specials` (`(id, text)` pairs, already
/// in the order to try them: longest first).
pub(crate) fn partition<'a>(
    text: &str,
    specials: impl IntoIterator<Item = (u32, &'a str)>,
) -> Vec<Fragment> {
    if text.is_empty() {
        return Vec::new();
    }
    let mut fragments = vec![Fragment::Text {
        start: 0,
        end: text.len(),
    }];
    for (id, special) in specials {
        if special.is_empty() {
            continue;
        }
        // Cheap skip: most special tokens never occur in a given text.
        if !text.contains(special) {
            continue;
        }
        let mut next = Vec::with_capacity(fragments.len() + 2);
        for fragment in fragments {
            let Fragment::Text { start, end } = fragment else {
                next.push(fragment);
                continue;
            };
            let mut cursor = start;
            while let Some(found) = text[cursor..end].find(special) {
                let match_start = cursor + found;
                if match_start > cursor {
                    next.push(Fragment::Text {
                        start: cursor,
                        end: match_start,
                    });
                }
                next.push(Fragment::Token(id));
                cursor = match_start + special.len();
            }
            if cursor < end {
                next.push(Fragment::Text { start: cursor, end });
            }
        }
        fragments = next;
    }
    fragments
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn longest_first_and_all_occurrences() {
        let text = "a<|im_start|>b<|im|>c<|im_start|>";
        let fragments = partition(text, [(7, "<|im_start|>"), (8, "<|im|>")]);
        assert_eq!(
            fragments,
            [
                Fragment::Text { start: 0, end: 1 },
                Fragment::Token(7),
                Fragment::Text { start: 13, end: 14 },
                Fragment::Token(8),
                Fragment::Text { start: 20, end: 21 },
                Fragment::Token(7),
            ]
        );
    }

    #[test]
    fn empty_text_has_no_fragments() {
        assert!(partition("", [(1, "<s>")]).is_empty());
    }
}
