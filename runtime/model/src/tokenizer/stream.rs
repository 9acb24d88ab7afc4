//! Incremental detokenization: text as tokens arrive, never splitting a UTF-8 character.

use std::ops::Deref;

use super::Tokenizer;

/// Turns a stream of token ids into text pieces.
///
/// A byte-level token can end in the middle of a multi-byte character (an emoji is often
/// two or three tokens); `push` returns only complete characters and holds back the at most
/// three bytes of an unfinished one until the next token completes it. Bytes that can never
/// become valid UTF-8 come out as U+FFFD, one per maximal invalid sequence, so the pieces of a
/// whole stream concatenate to `String::from_utf8_lossy` of its bytes.
///
/// Generic over how it holds the tokenizer: `&Tokenizer` or `Arc<Tokenizer>` (for state that
/// must be `'static`, such as an actor's).
#[derive(Debug)]
pub struct StreamDecoder<T: Deref<Target = Tokenizer>> {
    tokenizer: T,
    /// Bytes of an unfinished character (at most 3 between calls).
    pending: Vec<u8>,
    render_control: bool,
}

impl<T: Deref<Target = Tokenizer>> StreamDecoder<T> {
    /// A decoder that, like [`Tokenizer::decode`], renders control tokens as nothing.
    pub fn new(tokenizer: T) -> Self {
        Self {
            tokenizer,
            pending: Vec::with_capacity(8),
            render_control: false,
        }
    }

    /// Whether control tokens appear as their text (as in [`Tokenizer::decode_with_control`]).
    pub fn render_control(mut self, render: bool) -> Self {
        self.render_control = render;
        self
    }

    /// The text that token `id` completes (possibly empty). Unknown ids add nothing.
    pub fn push(&mut self, id: u32) -> String {
        self.tokenizer
            .append_piece(id, self.render_control, &mut self.pending);
        self.take_complete()
    }

    /// The held-back bytes of an unfinished character, as U+FFFD; empty when none. The
    /// decoder can be reused afterwards.
    pub fn flush(&mut self) -> String {
        let rest = String::from_utf8_lossy(&self.pending).into_owned();
        self.pending.clear();
        rest
    }

    /// Number of bytes held back.
    pub fn pending_len(&self) -> usize {
        self.pending.len()
    }

    fn take_complete(&mut self) -> String {
        let mut out = String::new();
        let mut start = 0;
        loop {
            match std::str::from_utf8(&self.pending[start..]) {
                Ok(text) => {
                    out.push_str(text);
                    start = self.pending.len();
                    break;
                }
                Err(e) => {
                    let valid_end = start + e.valid_up_to();
                    // The prefix up to `valid_up_to` is valid UTF-8 by definition.
                    out.push_str(&String::from_utf8_lossy(&self.pending[start..valid_end]));
                    match e.error_len() {
                        Some(invalid) => {
                            out.push(char::REPLACEMENT_CHARACTER);
                            start = valid_end + invalid;
                        }
                        None => {
                            // An unfinished character at the end: hold it back.
                            start = valid_end;
                            break;
                        }
                    }
                }
            }
        }
        self.pending.drain(..start);
        out
    }
}
