//! Pre-tokenizers: how text is cut into words before BPE merges run inside each word.
//!
//! Each pre-tokenizer is a list of regexes applied in sequence, as llama.cpp's
//! `unicode_regex_split` and Hugging Face's `Sequence` of `Split(behavior = Isolated)` do:
//! every regex cuts each piece the previous one produced into its matches and the gaps
//! between them, and both matches and gaps become pieces. A lookahead such as `(?!\S)` sees
//! only the piece it runs on.
//!
//! The regexes run on `fancy-regex` (the engine tiktoken uses), with Unicode classes from the
//! `regex` crate. Where llama.cpp replaces a regex with a hand-written splitter, this module
//! keeps the model's own regex:
//! - `gpt-2`: llama.cpp's `unicode_regex_split_custom_gpt2` implements the same regex.
//! - `kimi-k2`: llama.cpp's `unicode_regex_split_custom_kimi_k2` deviates from Kimi's
//!   `tokenization_kimi.py` regex: it treats every letter run as one word (the regex splits
//!   `HelloWorld` into `Hello` + `World`) and leaves combining marks (`\p{M}`) out of words.
//!   Kimi's tokenizer is tiktoken, whose regex engine is fancy-regex, so running its regex
//!   here reproduces the tokenizer the model was trained with. Kimi's Python wrapper also cuts
//!   inputs over 400 000 characters, and runs of over 25 000 (non-)whitespace characters, into
//!   chunks before tokenizing; neither llama.cpp nor this module does.
//! - `deepseek-v3`: llama.cpp runs these regexes through `std::regex` on a "collapsed" text
//!   (one byte per Unicode category); this module runs them as written, like Hugging Face's
//!   tokenizer that DeepSeek ships.

use std::ops::Range;

use fancy_regex::Regex;

use crate::ModelError;

/// GPT-2's word regex (llama.cpp `LLAMA_VOCAB_PRE_TYPE_GPT2` plus the trailing `\s+` its
/// hand-written splitter implements).
const GPT2_REGEX: &str =
    r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+";

/// llama.cpp's `LLAMA_VOCAB_PRE_TYPE_DEFAULT` list, used for `tokenizer.ggml.pre = default`
/// (and by llama.cpp when the key is missing).
const DEFAULT_REGEXES: [&str; 4] = [
    r"[\p{P}\$\+<=>\^~\|]+",
    r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+",
    r"\p{N}+",
    r"[0-9][0-9][0-9]",
];

/// DeepSeek-V3's three `Split` regexes (tokenizer.json; llama.cpp
/// `LLAMA_VOCAB_PRE_TYPE_DEEPSEEK3_LLM`).
const DEEPSEEK_V3_REGEXES: [&str; 3] = [
    r"\p{N}{1,3}",
    r"[一-龥぀-ゟ゠-ヿ]+",
    "[!\"#$%&'()*+,\\-./:;<=>?@\\[\\\\\\]^_`{|}~][A-Za-z]+|[^\r\n\\p{L}\\p{P}\\p{S}]?[\\p{L}\\p{M}]+| ?[\\p{P}\\p{S}]+[\r\n]*|\\s*[\r\n]+|\\s+(?!\\S)|\\s+",
];

/// Kimi K2's regex (`tokenization_kimi.py`, quoted in llama.cpp's `unicode.cpp`).
const KIMI_K2_REGEX: &str = concat!(
    r"[\p{Han}]+",
    r"|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}&&[^\p{Han}]]*[\p{Ll}\p{Lm}\p{Lo}\p{M}&&[^\p{Han}]]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?",
    r"|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}&&[^\p{Han}]]+[\p{Ll}\p{Lm}\p{Lo}\p{M}&&[^\p{Han}]]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?",
    r"|\p{N}{1,3}",
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*",
    r"|\s*[\r\n]+",
    r"|\s+(?!\S)",
    r"|\s+",
);

/// The `tokenizer.ggml.pre` values this module implements.
pub const SUPPORTED_PRE_TOKENIZERS: &str = "gpt-2, default, deepseek-v3, kimi-k2";

/// A pre-tokenizer family, named as `tokenizer.ggml.pre` names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PreTokenizerKind {
    /// `gpt-2`: GPT-2's regex.
    Gpt2,
    /// `default`: llama.cpp's fallback list of four regexes.
    Default,
    /// `deepseek-v3`: DeepSeek-V3 / R1.
    DeepseekV3,
    /// `kimi-k2`: Kimi K2 / K2.5 (tiktoken regex with Han runs split off).
    KimiK2,
}

impl PreTokenizerKind {
    /// The kind for a `tokenizer.ggml.pre` value, or `None` when unsupported.
    pub fn from_name(name: &str) -> Option<Self> {
        Some(match name {
            "gpt-2" => Self::Gpt2,
            "default" => Self::Default,
            "deepseek-v3" => Self::DeepseekV3,
            "kimi-k2" => Self::KimiK2,
            _ => return None,
        })
    }

    /// Its `tokenizer.ggml.pre` name.
    pub fn name(self) -> &'static str {
        match self {
            Self::Gpt2 => "gpt-2",
            Self::Default => "default",
            Self::DeepseekV3 => "deepseek-v3",
            Self::KimiK2 => "kimi-k2",
        }
    }

    fn regexes(self) -> &'static [&'static str] {
        match self {
            Self::Gpt2 => std::slice::from_ref(&GPT2_REGEX),
            Self::Default => &DEFAULT_REGEXES,
            Self::DeepseekV3 => &DEEPSEEK_V3_REGEXES,
            Self::KimiK2 => std::slice::from_ref(&KIMI_K2_REGEX),
        }
    }
}

/// A compiled pre-tokenizer.
#[derive(Debug)]
pub(crate) struct PreTokenizer {
    kind: PreTokenizerKind,
    regexes: Vec<Regex>,
}

impl PreTokenizer {
    /// Compiles the regexes of `kind`.
    pub(crate) fn new(kind: PreTokenizerKind) -> Result<Self, ModelError> {
        let regexes = kind
            .regexes()
            .iter()
            .map(|pattern| {
                Regex::new(pattern).map_err(|e| ModelError::TokenizerInvalid {
                    key: "tokenizer.ggml.pre",
                    detail: format!("{}: regex {pattern:?} does not compile: {e}", kind.name()),
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self { kind, regexes })
    }

    /// Which family this is.
    pub(crate) fn kind(&self) -> PreTokenizerKind {
        self.kind
    }

    /// Appends to `words` the byte ranges of the words of `text[range]` (ranges index `text`),
    /// in order and covering `range` exactly. `scratch` is reused between calls.
    pub(crate) fn split(
        &self,
        text: &str,
        range: Range<usize>,
        words: &mut Vec<Range<usize>>,
        scratch: &mut Vec<Range<usize>>,
    ) {
        if range.is_empty() {
            return;
        }
        let (last, earlier) = self.regexes.split_last().expect("every kind has a regex");
        if earlier.is_empty() {
            split_isolated(last, text, range, words);
            return;
        }
        // All but the last regex write to `pieces`; the last writes straight to `words`.
        let mut pieces = std::mem::take(scratch);
        pieces.clear();
        pieces.push(range);
        let mut next = Vec::with_capacity(pieces.len());
        for regex in earlier {
            next.clear();
            for piece in pieces.drain(..) {
                split_isolated(regex, text, piece, &mut next);
            }
            std::mem::swap(&mut pieces, &mut next);
        }
        for piece in pieces.drain(..) {
            split_isolated(last, text, piece, words);
        }
        *scratch = pieces;
    }
}

/// Cuts `text[range]` into the matches of `regex` and the gaps between them.
///
/// fancy-regex gives up on a match after its backtracking limit (one million steps by
/// default); the regexes here backtrack at most one step per character, so that cannot
/// happen on real text. Should it, the rest of the piece becomes one word rather than an
/// error: tokenization stays total and the text round-trips.
fn split_isolated(regex: &Regex, text: &str, range: Range<usize>, out: &mut Vec<Range<usize>>) {
    let base = range.start;
    let piece = &text[range.clone()];
    let mut done = 0;
    for found in regex.find_iter(piece) {
        let Ok(m) = found else { break };
        if m.start() > done {
            out.push(base + done..base + m.start());
        }
        if m.end() > m.start() {
            out.push(base + m.start()..base + m.end());
        }
        done = m.end();
    }
    if done < piece.len() {
        out.push(base + done..range.end);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(kind: PreTokenizerKind, text: &str) -> Vec<&str> {
        let pre = PreTokenizer::new(kind).unwrap();
        let mut out = Vec::new();
        pre.split(text, 0..text.len(), &mut out, &mut Vec::new());
        out.into_iter().map(|r| &text[r]).collect()
    }

    #[test]
    fn every_kind_compiles_and_has_a_name() {
        for kind in [
            PreTokenizerKind::Gpt2,
            PreTokenizerKind::Default,
            PreTokenizerKind::DeepseekV3,
            PreTokenizerKind::KimiK2,
        ] {
            assert_eq!(PreTokenizer::new(kind).unwrap().kind(), kind);
            assert_eq!(PreTokenizerKind::from_name(kind.name()), Some(kind));
        }
        assert_eq!(PreTokenizerKind::from_name("llama-bpe"), None);
    }

    #[test]
    fn gpt2_words() {
        assert_eq!(
            words(PreTokenizerKind::Gpt2, "I'll say  hello, world 123!\n\n  x"),
            ["I", "'ll", " say", " ", " hello", ",", " world", " 123", "!", "\n\n ", " x"]
        );
    }

    #[test]
    fn deepseek_v3_words() {
        assert_eq!(
            words(PreTokenizerKind::DeepseekV3, "abc12345 我想apple.Foo"),
            ["abc", "123", "45", " ", "我想", "apple", ".Foo"]
        );
    }

    #[test]
    fn kimi_k2_splits_case_runs_and_han() {
        assert_eq!(
            words(PreTokenizerKind::KimiK2, "HelloWorld 我想apple I'M ok\r\n"),
            ["Hello", "World", " ", "我想", "apple", " I'M", " ok", "\r\n"]
        );
        // Combining marks stay inside the word (Devanagari vowel signs are \p{M}).
        assert_eq!(
            words(PreTokenizerKind::KimiK2, "नमस्ते दुनिया"),
            ["नमस्ते", " दुनिया"]
        );
    }

    #[test]
    fn pieces_cover_the_range_exactly() {
        let text = "  x\t\ty 1234567 ...!!  \r\n\r\n 😀👍🏽 é";
        for kind in [
            PreTokenizerKind::Gpt2,
            PreTokenizerKind::Default,
            PreTokenizerKind::DeepseekV3,
            PreTokenizerKind::KimiK2,
        ] {
            assert_eq!(words(kind, text).concat(), text, "{kind:?}");
        }
    }
}
