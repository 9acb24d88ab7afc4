//! The synthetic tokenizer: a byte-level BPE vocabulary (`tokenizer.ggml.model = gpt2`,
//! `tokenizer.ggml.pre = gpt-2`) learned deterministically from a small embedded English text.
//!
//! Layout of the vocabulary (ids in order):
//! 1. the 256 byte tokens in GPT-2's byte-to-unicode form, in GPT-2's order (printable bytes
//!    first), type NORMAL;
//! 2. one token per learned merge (a merge whose result already exists adds no token), NORMAL;
//! 3. `[PAD{i}]` tokens of type UNUSED up to the preset's vocabulary size, as llama.cpp's
//!    converter pads a vocabulary smaller than the model's embedding table;
//! 4. the special tokens [`SPECIAL_TOKENS`], type CONTROL, at the very end, so `<|eos|>` is the
//!    last id (as in the reference fixtures).
//!
//! Training is plain BPE over GPT-2 pre-tokens: repeatedly merge the most frequent adjacent pair
//! (ties: the lexicographically smallest pair), stop at the merge budget or when no pair occurs
//! at least [`MERGE_COUNT_MIN`] times. The result depends only on the embedded text, so every
//! synthesized model of one vocabulary size has the same tokenizer.

use std::collections::{BTreeMap, HashMap};

use crate::DevDataError;

/// The training text.
const CORPUS: &str = include_str!("corpus.txt");
/// GPT-2's pre-tokenizer regex (llama.cpp's `gpt-2` pre-tokenizer).
const GPT2_PRETOKENIZER: &str =
    r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+";
/// A pair must occur at least this many times in the text to become a merge.
pub const MERGE_COUNT_MIN: u64 = 2;
/// Special tokens, in id order at the end of the vocabulary; the last two are BOS and EOS.
pub const SPECIAL_TOKENS: [&str; 4] = ["<|im_start|>", "<|im_end|>", "<|bos|>", "<|eos|>"];
/// Token type NORMAL (llama.cpp `LLAMA_TOKEN_TYPE_NORMAL`).
pub const TOKEN_TYPE_NORMAL: i32 = 1;
/// Token type CONTROL.
pub const TOKEN_TYPE_CONTROL: i32 = 3;
/// Token type UNUSED.
pub const TOKEN_TYPE_UNUSED: i32 = 5;
/// ChatML chat template (llama.cpp recognises it by `<|im_start|>`).
pub const CHAT_TEMPLATE: &str = "{% for message in messages %}<|im_start|>{{ message['role'] }}\n\
{{ message['content'] }}<|im_end|>\n{% endfor %}\
{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}";

/// A learned vocabulary, ready for the `tokenizer.ggml.*` keys.
#[derive(Debug, Clone)]
pub struct SynthVocab {
    /// Token strings, by id.
    pub tokens: Vec<String>,
    /// Token types, by id.
    pub token_types: Vec<i32>,
    /// Merges `"left right"`, by rank.
    pub merges: Vec<String>,
    /// Id of `<|bos|>`.
    pub bos: u32,
    /// Id of `<|eos|>`.
    pub eos: u32,
    /// Id of `<|im_end|>` (end of turn).
    pub eot: u32,
}

impl SynthVocab {
    /// The id range of the `[PAD]` tokens (empty when there are none).
    pub fn pad_rows(&self) -> (u64, u64) {
        let first = self
            .token_types
            .iter()
            .position(|&t| t == TOKEN_TYPE_UNUSED);
        let count = self
            .token_types
            .iter()
            .filter(|&&t| t == TOKEN_TYPE_UNUSED)
            .count();
        first.map_or((0, 0), |f| (f as u64, (f + count) as u64))
    }
}

/// GPT-2's byte-to-unicode table, in GPT-2's order: `(byte, char)` with printable bytes first.
pub fn gpt2_byte_chars() -> Vec<(u8, char)> {
    let printable = |b: u32| (33..=126).contains(&b) || (161..=172).contains(&b) || b >= 174;
    let mut out: Vec<(u8, char)> = (0u32..256)
        .filter(|&b| printable(b))
        .filter_map(|b| Some((b as u8, char::from_u32(b)?)))
        .collect();
    let unprintable = (0u32..256).filter(|&b| !printable(b));
    for (n, b) in unprintable.enumerate() {
        if let Some(c) = char::from_u32(256 + n as u32) {
            out.push((b as u8, c));
        }
    }
    out
}

/// Learns the vocabulary for a model with `vocab_size` embedding rows.
pub fn build_vocab(vocab_size: usize) -> Result<SynthVocab, DevDataError> {
    let byte_chars = gpt2_byte_chars();
    let fixed = byte_chars.len() + SPECIAL_TOKENS.len();
    if vocab_size < fixed || u32::try_from(vocab_size).is_err() {
        return Err(DevDataError::Synth(format!(
            "vocabulary size {vocab_size} is below the {fixed} byte and special tokens, or over u32"
        )));
    }
    let byte_char: HashMap<u8, char> = byte_chars.iter().copied().collect();

    // Symbols are indices into `tokens`; words are pre-tokens as symbol sequences with counts.
    let mut tokens: Vec<String> = byte_chars.iter().map(|(_, c)| c.to_string()).collect();
    let mut token_id: HashMap<String, u32> = tokens
        .iter()
        .enumerate()
        .map(|(i, t)| (t.clone(), i as u32))
        .collect();
    let mut words: BTreeMap<Vec<u32>, u64> = BTreeMap::new();
    let re = fancy_regex::Regex::new(GPT2_PRETOKENIZER)
        .map_err(|e| DevDataError::Synth(format!("pre-tokenizer regex: {e}")))?;
    for m in re.find_iter(CORPUS) {
        let m = m.map_err(|e| DevDataError::Synth(format!("pre-tokenizer: {e}")))?;
        let word: Vec<u32> = m
            .as_str()
            .bytes()
            .map(|b| token_id[&byte_char[&b].to_string()])
            .collect();
        *words.entry(word).or_insert(0) += 1;
    }

    let budget = vocab_size - fixed;
    let mut merges = Vec::new();
    while merges.len() < budget {
        let mut pairs: BTreeMap<(u32, u32), u64> = BTreeMap::new();
        for (word, count) in &words {
            for w in word.windows(2) {
                *pairs.entry((w[0], w[1])).or_insert(0) += count;
            }
        }
        // Most frequent; among equals the smallest pair by token text (deterministic).
        let best = pairs.iter().max_by(|(pa, ca), (pb, cb)| {
            ca.cmp(cb).then_with(|| {
                let ta = (&tokens[pa.0 as usize], &tokens[pa.1 as usize]);
                let tb = (&tokens[pb.0 as usize], &tokens[pb.1 as usize]);
                tb.cmp(&ta)
            })
        });
        let Some((&(left, right), &count)) = best else {
            break;
        };
        if count < MERGE_COUNT_MIN {
            break;
        }
        let merged = format!("{}{}", tokens[left as usize], tokens[right as usize]);
        merges.push(format!(
            "{} {}",
            tokens[left as usize], tokens[right as usize]
        ));
        let id = match token_id.get(&merged) {
            Some(&id) => id,
            None => {
                let id = tokens.len() as u32;
                tokens.push(merged.clone());
                token_id.insert(merged, id);
                id
            }
        };
        words = words
            .into_iter()
            .fold(BTreeMap::new(), |mut acc, (word, count)| {
                *acc.entry(merge_pair(&word, left, right, id)).or_insert(0) += count;
                acc
            });
    }

    let mut token_types = vec![TOKEN_TYPE_NORMAL; tokens.len()];
    let pads = vocab_size - tokens.len() - SPECIAL_TOKENS.len();
    for _ in 0..pads {
        tokens.push(format!("[PAD{}]", tokens.len()));
        token_types.push(TOKEN_TYPE_UNUSED);
    }
    let first_special = tokens.len() as u32;
    for s in SPECIAL_TOKENS {
        tokens.push(s.to_string());
        token_types.push(TOKEN_TYPE_CONTROL);
    }
    Ok(SynthVocab {
        tokens,
        token_types,
        merges,
        bos: first_special + 2,
        eos: first_special + 3,
        eot: first_special + 1,
    })
}

/// `word` with every non-overlapping `(left, right)` replaced by `id`, left to right.
fn merge_pair(word: &[u32], left: u32, right: u32, id: u32) -> Vec<u32> {
    let mut out = Vec::with_capacity(word.len());
    let mut i = 0;
    while i < word.len() {
        if i + 1 < word.len() && word[i] == left && word[i + 1] == right {
            out.push(id);
            i += 2;
        } else {
            out.push(word[i]);
            i += 1;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_table_is_a_bijection_in_gpt2_order() {
        let t = gpt2_byte_chars();
        assert_eq!(t.len(), 256);
        assert_eq!(t[0], (b'!', '!'));
        assert_eq!(t.iter().find(|(b, _)| *b == b' ').unwrap().1, '\u{120}'); // 'Ġ'
        assert_eq!(t.iter().find(|(b, _)| *b == b'\n').unwrap().1, '\u{10A}'); // 'Ċ'
        let mut chars: Vec<char> = t.iter().map(|(_, c)| *c).collect();
        chars.sort();
        chars.dedup();
        assert_eq!(chars.len(), 256);
    }

    #[test]
    fn tiny_vocab_layout() {
        let v = build_vocab(1024).unwrap();
        assert_eq!(v.tokens.len(), 1024);
        assert_eq!(v.token_types.len(), 1024);
        assert_eq!((v.bos, v.eos), (1022, 1023));
        assert_eq!(v.tokens[1023], "<|eos|>");
        assert!(
            v.merges.len() > 300,
            "only {} merges learned",
            v.merges.len()
        );
        assert!(v.merges.iter().any(|m| m == "Ġ t" || m == "t h"));
        // Every merge's parts and result are tokens, and every token text is unique.
        let ids: HashMap<&str, usize> = v
            .tokens
            .iter()
            .enumerate()
            .map(|(i, t)| (t.as_str(), i))
            .collect();
        assert_eq!(ids.len(), v.tokens.len());
        for m in &v.merges {
            let (l, r) = m.split_once(' ').unwrap();
            assert!(ids.contains_key(l) && ids.contains_key(r), "{m}");
            assert!(ids.contains_key(format!("{l}{r}").as_str()), "{m}");
        }
        assert_eq!(build_vocab(1024).unwrap().merges, v.merges, "deterministic");
        let (first, end) = v.pad_rows();
        assert_eq!(end, 1024 - SPECIAL_TOKENS.len() as u64);
        assert_eq!(v.tokens[first as usize], format!("[PAD{first}]"));
        assert_eq!(v.token_types[first as usize - 1], TOKEN_TYPE_NORMAL);
    }

    #[test]
    fn refuses_too_small_vocab() {
        assert!(build_vocab(259).is_err());
        let v = build_vocab(260).unwrap();
        assert!(v.merges.is_empty());
    }
}
