//! Byte-level BPE tokenizer for GGUF vocabularies with `tokenizer.ggml.model = gpt2`
//! (DeepSeek-V3, Kimi K2 / K2.5, and GPT-2-style test vocabularies).
//!
//! ```text
//! byte_level.rs   GPT-2's byte <-> character table
//! special.rs      finds control / user-defined token texts in the input (first step)
//! pretokenize.rs  cuts the remaining text into words: gpt-2, default, deepseek-v3, kimi-k2
//! bpe.rs          merges inside a word by merge rank, on interned symbol ids
//! stream.rs       StreamDecoder: incremental UTF-8-safe detokenization
//! ```
//!
//! What this module decides:
//! - **Encoding follows llama.cpp's `llama_tokenize`** for BPE vocabularies: special tokens are
//!   split off first (only user-defined ones when `parse_special` is false), the rest is
//!   pre-tokenized, each word is byte-level encoded and merged. For `kimi-k2` it keeps Kimi's
//!   own regex where llama.cpp's hand-written splitter deviates (see [`pretokenize`]'s docs).
//!   `encode` never adds BOS/EOS: the caller prepends [`Tokenizer::bos`] when
//!   [`Tokenizer::add_bos`] says so (a chat template usually writes it as text instead).
//! - **Decoding follows llama.cpp's `token_to_piece`:** NORMAL (and BYTE) tokens are
//!   byte-level decoded; USER_DEFINED tokens are their text; CONTROL and UNKNOWN tokens are
//!   nothing in [`Tokenizer::decode`] and their text in [`Tokenizer::decode_with_control`];
//!   UNUSED and UNDEFINED tokens are nothing. No space clean-up is applied (llama.cpp turns
//!   it off for deepseek-v3 and kimi-k2).
//! - **Validation happens once, in [`Tokenizer::new`]:** counts against named limits, token
//!   types, merge syntax, BOS/EOS ids. After that, encoding is total (any `&str`) and
//!   decoding skips ids outside the vocabulary.
//!
//! Left to others: reading the vocabulary from GGUF metadata into a [`TokenizerSpec`] (the
//! `gguf`/model loading code), chat templates, and stop conditions.
//!
//! ```
//! use moe_model::tokenizer::{Tokenizer, TokenizerSpec, TokenType};
//!
//! let tokens: Vec<String> = ["h", "i", "hi", "<|eos|>"].iter().map(|s| s.to_string()).collect();
//! let spec = TokenizerSpec {
//!     model: "gpt2".into(),
//!     token_types: vec![1, 1, 1, TokenType::Control as i32],
//!     tokens,
//!     merges: vec!["h i".into()],
//!     pre: "gpt-2".into(),
//!     bos: None,
//!     eos: Some(3),
//!     add_bos: false,
//! };
//! let tok = Tokenizer::new(spec)?;
//! assert_eq!(tok.encode("hi<|eos|>", true), [2, 3]);
//! assert_eq!(tok.decode(&[2, 3]), b"hi");
//! # Ok::<(), moe_model::ModelError>(())
//! ```

mod bpe;
mod byte_level;
mod from_gguf;
pub mod pretokenize;
mod special;
mod stream;

use std::ops::Range;

use hashbrown::HashMap;

pub use pretokenize::{PreTokenizerKind, SUPPORTED_PRE_TOKENIZERS};
pub use stream::StreamDecoder;

use bpe::{BpeScratch, MergeTable};
use pretokenize::PreTokenizer;
use special::{Fragment, SpecialMatcher};

use crate::ModelError;

/// Most tokens a vocabulary may have (Kimi K2.5 has 163 840; ids must fit `u32`).
pub const TOKENIZER_TOKENS_MAX: usize = 1 << 21;
/// Most merges a vocabulary may have (Kimi K2.5 has 163 328).
pub const TOKENIZER_MERGES_MAX: usize = 1 << 21;

/// The one `tokenizer.ggml.model` value this module implements.
pub const SUPPORTED_TOKENIZER_MODEL: &str = "gpt2";

/// A token's type, as `tokenizer.ggml.token_type` stores it (llama.cpp `llama_token_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(i32)]
pub enum TokenType {
    /// 0: no type given.
    Undefined = 0,
    /// 1: an ordinary BPE token (byte-level text).
    Normal = 1,
    /// 2: the unknown token.
    Unknown = 2,
    /// 3: a control token (BOS, EOS, chat markers); matched in text only when parsing specials.
    Control = 3,
    /// 4: a user-defined added token; always matched in text, decoded as its text.
    UserDefined = 4,
    /// 5: a placeholder id (`[PAD123]`); never produced by encoding.
    Unused = 5,
    /// 6: a raw byte token.
    Byte = 6,
}

impl TokenType {
    /// The type for a stored value, or `None` outside 0..=6.
    pub fn from_gguf(value: i32) -> Option<Self> {
        Some(match value {
            0 => Self::Undefined,
            1 => Self::Normal,
            2 => Self::Unknown,
            3 => Self::Control,
            4 => Self::UserDefined,
            5 => Self::Unused,
            6 => Self::Byte,
            _ => return None,
        })
    }
}

/// The vocabulary as GGUF metadata stores it, before validation.
#[derive(Debug, Clone, Default)]
pub struct TokenizerSpec {
    /// `tokenizer.ggml.model`; only `gpt2` is supported.
    pub model: String,
    /// `tokenizer.ggml.tokens`: token texts by id (byte-level text for NORMAL tokens, plain
    /// UTF-8 for CONTROL / USER_DEFINED ones).
    pub tokens: Vec<String>,
    /// `tokenizer.ggml.token_type`, one per token; empty means all NORMAL.
    pub token_types: Vec<i32>,
    /// `tokenizer.ggml.merges`: `"left right"`, highest priority first.
    pub merges: Vec<String>,
    /// `tokenizer.ggml.pre`; pass `default` when the key is absent, as llama.cpp does.
    pub pre: String,
    /// `tokenizer.ggml.bos_token_id`.
    pub bos: Option<u32>,
    /// `tokenizer.ggml.eos_token_id`.
    pub eos: Option<u32>,
    /// `tokenizer.ggml.add_bos_token`.
    pub add_bos: bool,
}

/// A validated byte-level BPE tokenizer. Immutable and `Sync`: share it behind an `Arc`.
#[derive(Debug)]
pub struct Tokenizer {
    tokens: Vec<String>,
    types: Vec<TokenType>,
    /// Text -> id; for duplicate texts the last id wins (llama.cpp `token_to_id`).
    token_ids: HashMap<String, u32>,
    merges: MergeTable,
    pre: PreTokenizer,
    special: SpecialMatcher,
    bos: Option<u32>,
    eos: Option<u32>,
    add_bos: bool,
}

fn invalid(key: &'static str, detail: String) -> ModelError {
    ModelError::TokenizerInvalid { key, detail }
}

impl Tokenizer {
    /// Validates `spec` and builds the lookup tables (well under a second for a
    /// 163 840-token vocabulary).
    pub fn new(spec: TokenizerSpec) -> Result<Self, ModelError> {
        let TokenizerSpec {
            model,
            mut tokens,
            token_types,
            merges,
            pre,
            bos,
            eos,
            add_bos,
        } = spec;
        if model != SUPPORTED_TOKENIZER_MODEL {
            return Err(ModelError::TokenizerUnsupported {
                key: "tokenizer.ggml.model",
                value: model,
                supported: SUPPORTED_TOKENIZER_MODEL,
            });
        }
        let kind =
            PreTokenizerKind::from_name(&pre).ok_or_else(|| ModelError::TokenizerUnsupported {
                key: "tokenizer.ggml.pre",
                value: pre.clone(),
                supported: SUPPORTED_PRE_TOKENIZERS,
            })?;
        if tokens.is_empty() {
            return Err(invalid("tokenizer.ggml.tokens", "no tokens".into()));
        }
        if tokens.len() > TOKENIZER_TOKENS_MAX {
            return Err(invalid(
                "tokenizer.ggml.tokens",
                format!(
                    "{} tokens exceed TOKENIZER_TOKENS_MAX = {TOKENIZER_TOKENS_MAX}",
                    tokens.len()
                ),
            ));
        }
        if merges.len() > TOKENIZER_MERGES_MAX {
            return Err(invalid(
                "tokenizer.ggml.merges",
                format!(
                    "{} merges exceed TOKENIZER_MERGES_MAX = {TOKENIZER_MERGES_MAX}",
                    merges.len()
                ),
            ));
        }
        let types: Vec<TokenType> = if token_types.is_empty() {
            vec![TokenType::Normal; tokens.len()]
        } else {
            if token_types.len() != tokens.len() {
                return Err(invalid(
                    "tokenizer.ggml.token_type",
                    format!("{} types for {} tokens", token_types.len(), tokens.len()),
                ));
            }
            token_types
                .iter()
                .enumerate()
                .map(|(id, &t)| {
                    TokenType::from_gguf(t).ok_or_else(|| {
                        invalid(
                            "tokenizer.ggml.token_type",
                            format!("token {id}: type {t} is not 0..=6"),
                        )
                    })
                })
                .collect::<Result<_, _>>()?
        };
        for (key, id) in [
            ("tokenizer.ggml.bos_token_id", bos),
            ("tokenizer.ggml.eos_token_id", eos),
        ] {
            if let Some(id) = id.filter(|&id| id as usize >= tokens.len()) {
                return Err(invalid(
                    key,
                    format!("id {id} outside the {} tokens", tokens.len()),
                ));
            }
        }
        if add_bos && bos.is_none() {
            return Err(invalid(
                "tokenizer.ggml.bos_token_id",
                "tokenizer.ggml.add_bos_token is true but there is no BOS id".into(),
            ));
        }
        // llama.cpp names empty texts so that every token has a distinct, non-empty key.
        for (id, text) in tokens.iter_mut().enumerate() {
            if text.is_empty() {
                *text = format!("[EMPTY_{id}]");
            }
        }
        let mut token_ids: HashMap<String, u32> = HashMap::with_capacity(tokens.len());
        for (id, text) in tokens.iter().enumerate() {
            token_ids.insert(text.clone(), id as u32);
        }
        let merges = MergeTable::new(&merges, &token_ids, tokens.len() as u32)?;
        let special = SpecialMatcher::new(&tokens, &types)?;
        let pre = PreTokenizer::new(kind)?;
        Ok(Self {
            tokens,
            types,
            token_ids,
            merges,
            pre,
            special,
            bos,
            eos,
            add_bos,
        })
    }

    /// A prompt as a model sees it: BOS first when the vocabulary asks for it
    /// (`add_bos_token`) and the text does not already begin with it, then the text with
    /// special tokens parsed.
    pub fn encode_prompt(&self, text: &str) -> Vec<u32> {
        let mut ids = Vec::new();
        if self.add_bos {
            let bos_text = self.bos.and_then(|b| self.token_text(b));
            if !bos_text.is_some_and(|b| text.starts_with(b)) {
                ids.extend(self.bos);
            }
        }
        ids.extend(self.encode(text, true));
        ids
    }

    /// The token ids of `text`, without BOS/EOS. With `parse_special`, the texts of control
    /// tokens (e.g. `<|im_end|>`) become those tokens; without it they are encoded as plain
    /// text. User-defined tokens are always recognised.
    pub fn encode(&self, text: &str, parse_special: bool) -> Vec<u32> {
        let mut out = Vec::with_capacity(text.len() / 3 + 1);
        let mut fragments = Vec::new();
        self.special.partition(text, parse_special, &mut fragments);
        let mut words: Vec<Range<usize>> = Vec::new();
        let mut pieces = Vec::new();
        let mut scratch = BpeScratch::default();
        for fragment in fragments {
            match fragment {
                Fragment::Token(id) => out.push(id),
                Fragment::Text(range) => {
                    words.clear();
                    self.pre.split(text, range, &mut words, &mut pieces);
                    for word in &words {
                        let bytes = &text.as_bytes()[word.clone()];
                        self.merges
                            .encode_word(bytes, &self.token_ids, &mut scratch, &mut out);
                    }
                }
            }
        }
        out
    }

    /// The bytes of `ids`, control tokens rendered as nothing (what a user should see).
    pub fn decode(&self, ids: &[u32]) -> Vec<u8> {
        self.decode_impl(ids, false)
    }

    /// The bytes of `ids`, control tokens rendered as their text (for logs and debugging).
    pub fn decode_with_control(&self, ids: &[u32]) -> Vec<u8> {
        self.decode_impl(ids, true)
    }

    /// [`Tokenizer::decode`] as a `String`, invalid UTF-8 replaced by U+FFFD.
    pub fn decode_lossy(&self, ids: &[u32]) -> String {
        String::from_utf8_lossy(&self.decode(ids)).into_owned()
    }

    fn decode_impl(&self, ids: &[u32], render_control: bool) -> Vec<u8> {
        let mut out = Vec::with_capacity(ids.len() * 4);
        for &id in ids {
            self.append_piece(id, render_control, &mut out);
        }
        out
    }

    /// The bytes of one token (see the module docs for each type); empty for unknown ids.
    pub fn token_piece(&self, id: u32, render_control: bool) -> Vec<u8> {
        let mut out = Vec::new();
        self.append_piece(id, render_control, &mut out);
        out
    }

    pub(crate) fn append_piece(&self, id: u32, render_control: bool, out: &mut Vec<u8>) {
        let Some(text) = self.tokens.get(id as usize) else {
            return;
        };
        match self.types[id as usize] {
            TokenType::Normal | TokenType::Byte => byte_level::decode_into(text, out),
            TokenType::UserDefined => out.extend_from_slice(text.as_bytes()),
            TokenType::Control | TokenType::Unknown => {
                if render_control {
                    out.extend_from_slice(text.as_bytes());
                }
            }
            TokenType::Unused | TokenType::Undefined => {}
        }
    }

    /// Number of tokens (ids are `0..vocab_size`).
    pub fn vocab_size(&self) -> usize {
        self.tokens.len()
    }

    /// The id of a token by its stored text (`<|im_end|>`, or byte-level text such as
    /// `Ġthe`); for duplicate texts, the last id.
    pub fn token_to_id(&self, text: &str) -> Option<u32> {
        self.token_ids.get(text).copied()
    }

    /// The stored text of a token.
    pub fn token_text(&self, id: u32) -> Option<&str> {
        self.tokens.get(id as usize).map(String::as_str)
    }

    /// The type of a token.
    pub fn token_type(&self, id: u32) -> Option<TokenType> {
        self.types.get(id as usize).copied()
    }

    /// Whether `id` is a CONTROL token (BOS, EOS, chat markers).
    pub fn is_control(&self, id: u32) -> bool {
        self.token_type(id) == Some(TokenType::Control)
    }

    /// The BOS id, if the vocabulary has one.
    pub fn bos(&self) -> Option<u32> {
        self.bos
    }

    /// The EOS id, if the vocabulary has one.
    pub fn eos(&self) -> Option<u32> {
        self.eos
    }

    /// Whether the model expects BOS before a prompt (`tokenizer.ggml.add_bos_token`).
    pub fn add_bos(&self) -> bool {
        self.add_bos
    }

    /// The pre-tokenizer in use.
    pub fn pre_tokenizer(&self) -> PreTokenizerKind {
        self.pre.kind()
    }

    /// Number of distinct merge pairs.
    pub fn merge_count(&self) -> usize {
        self.merges.len()
    }

    /// Number of tokens recognised in text when parsing special tokens.
    pub fn special_token_count(&self) -> usize {
        self.special.len()
    }
}

#[cfg(test)]
mod tests;
