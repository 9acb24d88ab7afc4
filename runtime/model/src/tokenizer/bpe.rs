//! Byte-level BPE merges inside one word, as llama.cpp's `llm_tokenizer_bpe_session` does.
//!
//! A word starts as one symbol per byte (the byte's GPT-2 character). The adjacent pair whose
//! merge `"left right"` comes first in the merge list is joined, the leftmost one on ties, until
//! no pair has a merge. A final symbol whose text is not a token falls back to the tokens of
//! its single-byte characters (llama.cpp's fallback; unreachable with a consistent vocabulary).
//!
//! Symbols are interned texts: ids below the vocabulary size are token ids (the last token of
//! a text wins, as in llama.cpp's `token_to_id`), and texts that occur only in merges or as
//! bare byte characters get ids after them. The merge table maps an id pair to its rank and
//! the id of the joined text, so merging compares integers and never builds strings.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use hashbrown::HashMap;

use super::byte_level::BYTE_TO_CHAR;
use crate::ModelError;

/// A symbol slot that was merged into its left neighbour.
const DEAD: u32 = u32::MAX;
/// `prev`/`next` of a symbol at the edge of the word.
const NONE: usize = usize::MAX;

/// The interned merge table of a vocabulary.
#[derive(Debug)]
pub(crate) struct MergeTable {
    /// (left symbol, right symbol) -> (rank, joined symbol).
    merges: HashMap<(u32, u32), (u32, u32)>,
    /// The symbol of each byte's single character.
    byte_symbols: [u32; 256],
    /// Texts of the symbols that are not tokens (ids `n_tokens..`).
    extra_texts: Vec<String>,
    /// Number of tokens; symbols below it are tokens.
    n_tokens: u32,
}

/// Interns texts on top of the vocabulary's text -> id map.
struct Interner<'a> {
    token_ids: &'a HashMap<String, u32>,
    extra_ids: HashMap<String, u32>,
    extra_texts: Vec<String>,
    n_tokens: u32,
}

impl Interner<'_> {
    fn intern(&mut self, text: &str) -> u32 {
        if let Some(&id) = self.token_ids.get(text) {
            return id;
        }
        if let Some(&id) = self.extra_ids.get(text) {
            return id;
        }
        let id = self.n_tokens + self.extra_texts.len() as u32;
        self.extra_ids.insert(text.to_owned(), id);
        self.extra_texts.push(text.to_owned());
        id
    }
}

impl MergeTable {
    /// Builds the table from `merges` ("left right", rank = index). The first occurrence of a
    /// pair keeps its rank, as llama.cpp's `bpe_ranks.emplace` does.
    pub(crate) fn new(
        merges: &[String],
        token_ids: &HashMap<String, u32>,
        n_tokens: u32,
    ) -> Result<Self, ModelError> {
        let mut interner = Interner {
            token_ids,
            extra_ids: HashMap::new(),
            extra_texts: Vec::new(),
            n_tokens,
        };
        let mut byte_symbols = [0u32; 256];
        for (byte, symbol) in byte_symbols.iter_mut().enumerate() {
            let mut buf = [0u8; 4];
            *symbol = interner.intern(BYTE_TO_CHAR[byte].encode_utf8(&mut buf));
        }
        let mut table: HashMap<(u32, u32), (u32, u32)> = HashMap::with_capacity(merges.len());
        let mut joined = String::new();
        for (rank, merge) in merges.iter().enumerate() {
            // llama.cpp searches the separator from index 1, so a left part may start with ' '.
            let split = merge
                .bytes()
                .skip(1)
                .position(|b| b == b' ')
                .map(|i| i + 1)
                .ok_or_else(|| ModelError::TokenizerInvalid {
                    key: "tokenizer.ggml.merges",
                    detail: format!("merge {rank} {merge:?} is not \"left right\""),
                })?;
            let (left, right) = (&merge[..split], &merge[split + 1..]);
            let left_id = interner.intern(left);
            let right_id = interner.intern(right);
            joined.clear();
            joined.push_str(left);
            joined.push_str(right);
            let joined_id = interner.intern(&joined);
            table
                .entry((left_id, right_id))
                .or_insert((rank as u32, joined_id));
        }
        Ok(Self {
            merges: table,
            byte_symbols,
            extra_texts: interner.extra_texts,
            n_tokens,
        })
    }

    /// Number of merges with distinct pairs.
    pub(crate) fn len(&self) -> usize {
        self.merges.len()
    }
}

/// One candidate merge on the heap: ordered by rank, then by left position.
type Candidate = Reverse<(u32, usize, u32, usize, u32)>;

/// Reusable buffers for merging words.
#[derive(Debug, Default)]
pub(crate) struct BpeScratch {
    symbols: Vec<u32>,
    prev: Vec<usize>,
    next: Vec<usize>,
    heap: BinaryHeap<Candidate>,
}

impl MergeTable {
    /// Appends the token ids of one word (raw bytes) to `out`.
    pub(crate) fn encode_word(
        &self,
        word: &[u8],
        token_ids: &HashMap<String, u32>,
        scratch: &mut BpeScratch,
        out: &mut Vec<u32>,
    ) {
        let n = word.len();
        if n == 0 {
            return;
        }
        let BpeScratch {
            symbols,
            prev,
            next,
            heap,
        } = scratch;
        symbols.clear();
        symbols.extend(word.iter().map(|&b| self.byte_symbols[b as usize]));
        prev.clear();
        prev.extend((0..n).map(|i| if i == 0 { NONE } else { i - 1 }));
        next.clear();
        next.extend((0..n).map(|i| if i + 1 == n { NONE } else { i + 1 }));
        heap.clear();
        for i in 1..n {
            self.push_candidate(symbols, i - 1, i, heap);
        }
        while let Some(Reverse((_, left, left_sym, right, right_sym))) = heap.pop() {
            // Stale candidates: a side was merged away or changed since it was pushed (a
            // symbol's text only grows, so equal ids mean an unchanged symbol).
            if symbols[left] != left_sym || symbols[right] != right_sym || next[left] != right {
                continue;
            }
            let (_, joined) = self.merges[&(left_sym, right_sym)];
            symbols[left] = joined;
            symbols[right] = DEAD;
            let after = next[right];
            next[left] = after;
            if after != NONE {
                prev[after] = left;
            }
            if prev[left] != NONE {
                self.push_candidate(symbols, prev[left], left, heap);
            }
            if after != NONE {
                self.push_candidate(symbols, left, after, heap);
            }
        }
        let mut i = 0;
        while i != NONE {
            self.emit(symbols[i], token_ids, out);
            i = next[i];
        }
    }

    fn push_candidate(
        &self,
        symbols: &[u32],
        left: usize,
        right: usize,
        heap: &mut BinaryHeap<Candidate>,
    ) {
        let pair = (symbols[left], symbols[right]);
        if let Some(&(rank, _)) = self.merges.get(&pair) {
            heap.push(Reverse((rank, left, pair.0, right, pair.1)));
        }
    }

    fn emit(&self, symbol: u32, token_ids: &HashMap<String, u32>, out: &mut Vec<u32>) {
        if symbol < self.n_tokens {
            out.push(symbol);
            return;
        }
        // Not a token: llama.cpp looks up each byte of the symbol's text as a one-byte token.
        let text = &self.extra_texts[(symbol - self.n_tokens) as usize];
        for &b in text.as_bytes() {
            if b.is_ascii() {
                let mut buf = [0u8; 4];
                if let Some(&id) = token_ids.get(char::from(b).encode_utf8(&mut buf) as &str) {
                    out.push(id);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vocab(tokens: &[&str]) -> HashMap<String, u32> {
        tokens
            .iter()
            .enumerate()
            .map(|(i, t)| (t.to_string(), i as u32))
            .collect()
    }

    #[test]
    fn merges_by_rank_then_leftmost() {
        let tokens = ["a", "b", "c", "ab", "bc", "abc", "aa", "aaa"];
        let ids = vocab(&tokens);
        let merges: Vec<String> = ["b c", "a b", "a bc", "a a", "aa a"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let table = MergeTable::new(&merges, &ids, tokens.len() as u32).unwrap();
        let mut scratch = BpeScratch::default();
        let mut out = Vec::new();
        // "b c" ranks first, then "a bc".
        table.encode_word(b"abc", &ids, &mut scratch, &mut out);
        assert_eq!(out, [ids["abc"]]);
        // "aaaa": "a a" joins the leftmost pair first, then the other free pair; "aa a" never
        // applies because no single "a" is left.
        out.clear();
        table.encode_word(b"aaaa", &ids, &mut scratch, &mut out);
        assert_eq!(out, [ids["aa"], ids["aa"]]);
        // "aaa": "a a" at the left, then "aa a".
        out.clear();
        table.encode_word(b"aaa", &ids, &mut scratch, &mut out);
        assert_eq!(out, [ids["aaa"]]);
    }

    #[test]
    fn malformed_merge_is_an_error() {
        let ids = vocab(&["a"]);
        let err = MergeTable::new(&["ab".to_string()], &ids, 1).unwrap_err();
        assert!(err.to_string().contains("merge 0"), "{err}");
    }

    #[test]
    fn unknown_symbols_fall_back_to_ascii_byte_tokens() {
        // "x" and "y" are tokens, "xy" is a merge result that is not.
        let ids = vocab(&["x", "y"]);
        let table = MergeTable::new(&["x y".to_string()], &ids, 2).unwrap();
        let mut out = Vec::new();
        table.encode_word(b"xy", &ids, &mut BpeScratch::default(), &mut out);
        assert_eq!(out, [0, 1]);
        assert_eq!(table.len(), 1);
    }
}
