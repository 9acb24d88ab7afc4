//! Structured output by constrained decoding: `response_format` `json_object` / `json_schema`
//! (and a tool's `parameters`) as a mask over the vocabulary, recomputed each step, so the
//! output always parses and validates.
//!
//! Built on [`llguidance`] (Microsoft's guidance-ai; the constrained-decoding engine of
//! llama.cpp's `--grammar` with llguidance, vLLM, SGLang and mistral.rs). Why it over the
//! others looked at:
//!
//! - **llguidance**: JSON Schema (a large subset: `$ref`, `anyOf`/`oneOf`, `enum`/`const`,
//!   string `pattern`/`format`, lengths, numeric bounds, `additionalProperties`) compiled to
//!   an Earley parser over a lazy regex lexer; masks are exact (a token is allowed iff the
//!   text stays a prefix of some valid document, so every reachable state can still finish)
//!   and take ~50 µs per token on a 128k vocabulary with no per-schema precompute. Pure Rust,
//!   a few small dependencies (derivre, toktrie, regex-syntax, referencing, rayon); builds in
//!   about a minute on two cores.
//! - outlines-core: schema → regex → a DFA × vocabulary index built up front (seconds to
//!   minutes for a 160k vocabulary and a nested schema), recursion cut at a fixed depth, and
//!   it depends on the HF `tokenizers` crate.
//! - an own schema subset → automaton: more code to own for less of the schema language.
//!
//! Forced tool calls use the same machinery with a Lark grammar of the model's call markup
//! ([`JsonConstraint::tool_calls`], `tool_call_grammar.rs`).
//!
//! Decides: which tokens may come next, when the document is complete, and which token
//! to force when the budget runs out ([`JsonConstraint::closing_token`]). Leaves to the
//! engine when to ask (once per step, before sampling, on the same logits the sampler and
//! logprobs use) and what the vocabulary is (token bytes from the tokenizer; special tokens
//! never match text here, only EOS ends the document).

use std::sync::Arc;

use llguidance::api::TopLevelGrammar;
use llguidance::toktrie::{ApproximateTokEnv, SimpleVob, TokEnv, TokRxInfo, TokTrie};
use llguidance::{JsonCompileOptions, Matcher, ParserFactory};
use serde_json::Value;

/// Largest JSON schema accepted, in bytes of its JSON text.
pub const JSON_SCHEMA_BYTES_MAX: usize = 64 * 1024;
/// Largest vocabulary accepted, in tokens.
pub const VOCAB_TOKENS_MAX: usize = 1 << 20;
/// Tokens to keep in reserve: with this many or fewer left in the budget the engine should
/// sample only [`JsonConstraint::closing_token`] so the document closes in time.
pub const FINISH_RESERVE_TOKENS: usize = 32;
/// Most digits before a number's `.` or exponent: with [`NUMBER_EXPONENT_DIGITS_MAX`], every
/// number stays inside f64's range, so every JSON parser reads it (serde_json refuses
/// `1e400`, which the JSON grammar allows).
pub const NUMBER_INTEGER_DIGITS_MAX: u32 = 15;
/// Most digits of a number's exponent.
pub const NUMBER_EXPONENT_DIGITS_MAX: u32 = 2;
/// With at most this many tokens allowed, [`JsonConstraint::closing_token`] looks one
/// token ahead for one after which the output may end.
const LOOKAHEAD_CHOICES_MAX: usize = 16;
/// Most parser states [`JsonConstraint::closing_token`]'s search visits (each costs one mask).
const LOOKAHEAD_STATES_MAX: usize = 64;
/// Longest token (in bytes) [`JsonConstraint::closing_token`] considers.
const CLOSING_TOKEN_BYTES_MAX: usize = 4;

/// Why a constraint could not be built or advanced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConstraintError(pub String);

impl std::fmt::Display for ConstraintError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ConstraintError {}

fn err(e: impl std::fmt::Display) -> ConstraintError {
    ConstraintError(e.to_string())
}

/// What the output must be.
#[derive(Debug, Clone, PartialEq)]
pub enum JsonTarget {
    /// Any JSON object (`response_format: {"type": "json_object"}`).
    AnyObject,
    /// A document valid against this JSON schema.
    Schema(Value),
}

/// The model's vocabulary as llguidance sees it, built once per model and shared.
#[derive(Clone)]
pub struct ConstraintVocab {
    factory: Arc<ParserFactory>,
    /// Each token's bytes, special tokens empty (for `closing_token`).
    bytes: Arc<Vec<Vec<u8>>>,
    /// Special tokens by their text (tool-call markers that are control tokens).
    special_ids: Arc<std::collections::HashMap<Vec<u8>, u32>>,
    eos: u32,
}

impl std::fmt::Debug for ConstraintVocab {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConstraintVocab")
            .field("tokens", &self.bytes.len())
            .field("eos", &self.eos)
            .finish()
    }
}

impl ConstraintVocab {
    /// `tokens[i]` is token i's bytes as decoded (a control token's text, such as
    /// `<|tool_call_begin|>`); `special[i]` marks control tokens (chat markers, BOS/EOS),
    /// which never stand for text and are matched only where a grammar names them;
    /// `eos` ends generation.
    pub fn new(tokens: &[Vec<u8>], special: &[bool], eos: u32) -> Result<Self, ConstraintError> {
        if tokens.is_empty() || tokens.len() > VOCAB_TOKENS_MAX {
            return Err(err(format!(
                "a vocabulary of {} tokens; 1 to {VOCAB_TOKENS_MAX} are supported",
                tokens.len()
            )));
        }
        if special.len() != tokens.len() || eos as usize >= tokens.len() {
            return Err(err(format!(
                "{} special flags and EOS id {eos} for {} tokens",
                special.len(),
                tokens.len()
            )));
        }
        // toktrie marks special tokens with a leading 0xFF byte (never valid UTF-8), so no
        // grammar text can match them; an empty normal token gets the same treatment.
        let words: Vec<Vec<u8>> = tokens
            .iter()
            .zip(special)
            .enumerate()
            .map(|(i, (t, &s))| {
                if s || t.is_empty() || i as u32 == eos {
                    let mut w = vec![TokTrie::SPECIAL_TOKEN_MARKER];
                    w.extend_from_slice(format!("<[{i}]>").as_bytes());
                    w
                } else {
                    t.clone()
                }
            })
            .collect();
        let info = TokRxInfo::new(tokens.len() as u32, eos);
        let trie = TokTrie::from(&info, &words);
        let env: TokEnv = Arc::new(ApproximateTokEnv::new(trie));
        let mut factory = ParserFactory::new_simple(&env).map_err(err)?;
        factory.quiet();
        let bytes = tokens
            .iter()
            .zip(special)
            .map(|(t, &s)| if s { Vec::new() } else { t.clone() })
            .collect();
        let special_ids = tokens
            .iter()
            .zip(special)
            .enumerate()
            .filter(|(_, (t, &s))| s && !t.is_empty())
            .map(|(i, (t, _))| (t.clone(), i as u32))
            .collect();
        Ok(Self {
            factory: Arc::new(factory),
            bytes: Arc::new(bytes),
            special_ids: Arc::new(special_ids),
            eos,
        })
    }

    /// The id of the special token whose text is `text`, if there is one.
    pub fn special_token_id(&self, text: &[u8]) -> Option<u32> {
        self.special_ids.get(text).copied()
    }

    /// Tokens in the vocabulary.
    pub fn len(&self) -> usize {
        self.bytes.len()
    }

    /// Never true (a vocabulary has at least one token).
    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }
}

/// One sequence's constraint: ask [`allowed`](Self::allowed) (or
/// [`mask_logits`](Self::mask_logits)), sample, [`advance`](Self::advance).
pub struct JsonConstraint {
    matcher: Matcher,
    vocab: ConstraintVocab,
    /// Lexical position in the text so far, for `closing_token`.
    scan: JsonScan,
}

/// Compact JSON, no free whitespace (llguidance's `x-guidance` options in the schema): a
/// weak model cannot wander off into endless blanks, and the document is as short as its
/// content allows. `schema` must be an object.
pub(crate) fn compact_json_options(schema: &mut Value) {
    if schema.is_object() {
        JsonCompileOptions {
            whitespace_flexible: false,
            ..JsonCompileOptions::default()
        }
        .apply_to(schema);
    }
}

/// Where the text so far stands lexically: inside a string, after a backslash, inside a
/// number (and how many digits its integer part and exponent have).
#[derive(Debug, Clone, Copy, Default)]
struct JsonScan {
    in_string: bool,
    escaped: bool,
    number: NumberPart,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
enum NumberPart {
    #[default]
    Outside,
    Integer(u32),
    Fraction,
    Exponent(u32),
}

impl JsonScan {
    /// Advances over `bytes`; `false` if they make a number longer than the limits allow.
    fn push(&mut self, bytes: &[u8]) -> bool {
        for &b in bytes {
            if self.in_string {
                if self.escaped {
                    self.escaped = false;
                } else if b == b'\\' {
                    self.escaped = true;
                } else if b == b'"' {
                    self.in_string = false;
                }
                continue;
            }
            self.number = match (self.number, b) {
                (NumberPart::Outside, b'-') => NumberPart::Integer(0),
                (NumberPart::Outside, b'0'..=b'9') => NumberPart::Integer(1),
                (NumberPart::Integer(n), b'0'..=b'9') => NumberPart::Integer(n + 1),
                (NumberPart::Integer(_), b'.') => NumberPart::Fraction,
                (NumberPart::Fraction, b'0'..=b'9') => NumberPart::Fraction,
                (NumberPart::Integer(_) | NumberPart::Fraction, b'e' | b'E') => {
                    NumberPart::Exponent(0)
                }
                (NumberPart::Exponent(n), b'+' | b'-') => NumberPart::Exponent(n),
                (NumberPart::Exponent(n), b'0'..=b'9') => NumberPart::Exponent(n + 1),
                _ => NumberPart::Outside,
            };
            match self.number {
                NumberPart::Integer(n) if n > NUMBER_INTEGER_DIGITS_MAX => return false,
                NumberPart::Exponent(n) if n > NUMBER_EXPONENT_DIGITS_MAX => return false,
                NumberPart::Outside if b == b'"' => self.in_string = true,
                _ => {}
            }
        }
        true
    }
}

impl std::fmt::Debug for JsonConstraint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JsonConstraint").finish_non_exhaustive()
    }
}

impl JsonConstraint {
    /// A constraint for `target`; a schema that is too large or that llguidance cannot
    /// compile (unsupported keyword, unsatisfiable) is an error naming why.
    pub fn new(vocab: &ConstraintVocab, target: &JsonTarget) -> Result<Self, ConstraintError> {
        let mut schema = match target {
            JsonTarget::AnyObject => serde_json::json!({ "type": "object" }),
            JsonTarget::Schema(s) => {
                let bytes = serde_json::to_string(s).map_err(err)?.len();
                if bytes > JSON_SCHEMA_BYTES_MAX {
                    return Err(err(format!(
                        "the JSON schema has {bytes} bytes; at most {JSON_SCHEMA_BYTES_MAX}"
                    )));
                }
                if !s.is_object() {
                    return Err(err("the JSON schema must be a JSON object"));
                }
                s.clone()
            }
        };
        compact_json_options(&mut schema);
        Self::from_grammar(
            vocab,
            TopLevelGrammar::from_json_schema(schema),
            "JSON schema",
        )
    }

    /// A constraint forcing tool calls: the model's markup around arguments valid for each
    /// function ([`super::tool_call_grammar`]).
    pub fn tool_calls(
        vocab: &ConstraintVocab,
        spec: &super::tool_call_grammar::ToolCallSpec,
    ) -> Result<Self, ConstraintError> {
        let lark = super::tool_call_grammar::tool_call_lark(vocab, spec).map_err(err)?;
        Self::from_grammar(vocab, TopLevelGrammar::from_lark(lark), "tool-call grammar")
    }

    fn from_grammar(
        vocab: &ConstraintVocab,
        grammar: TopLevelGrammar,
        what: &str,
    ) -> Result<Self, ConstraintError> {
        let parser = vocab
            .factory
            .create_parser(grammar)
            .map_err(|e| err(format!("the {what} is not supported: {e}")))?;
        let matcher = Matcher::new(Ok(parser));
        if let Some(e) = matcher.get_error() {
            return Err(err(format!("the {what} is not supported: {e}")));
        }
        Ok(Self {
            matcher,
            vocab: vocab.clone(),
            scan: JsonScan::default(),
        })
    }

    /// The tokens allowed next (EOS among them once the document is complete): llguidance's
    /// mask, less tokens that would make a number overflow f64
    /// ([`NUMBER_INTEGER_DIGITS_MAX`], [`NUMBER_EXPONENT_DIGITS_MAX`]).
    pub fn allowed(&mut self) -> Result<TokenMask, ConstraintError> {
        let mut mask = self.matcher.compute_mask_or_eos().map_err(err)?;
        let scan = self.scan;
        let bytes = &self.vocab.bytes;
        let mut refused = Vec::new();
        mask.iter_set_entries(|i| {
            let b = &bytes[i];
            // Only tokens with digits can lengthen a number.
            if b.iter().any(u8::is_ascii_digit) && !scan.clone().push(b) {
                refused.push(i as u32);
            }
        });
        for t in refused {
            mask.disallow_token(t);
        }
        Ok(TokenMask(mask))
    }

    /// Sets every disallowed token's logit to −∞ (`logits.len()` may exceed the vocabulary:
    /// padded ids are disallowed too).
    pub fn mask_logits(&mut self, logits: &mut [f32]) -> Result<(), ConstraintError> {
        let mask = self.allowed()?;
        for (i, l) in logits.iter_mut().enumerate() {
            if !mask.is_allowed(i as u32) {
                *l = f32::NEG_INFINITY;
            }
        }
        Ok(())
    }

    /// Takes the sampled token; a token the mask did not allow is an error.
    pub fn advance(&mut self, token: u32) -> Result<(), ConstraintError> {
        self.matcher.consume_token(token).map_err(err)?;
        if let Some(b) = self.vocab.bytes.get(token as usize) {
            // A token past the number limits was masked; `push` only tracks here.
            let _ = self.scan.push(b);
        }
        Ok(())
    }

    /// Whether the text so far is a complete, valid document.
    pub fn is_accepting(&mut self) -> bool {
        self.matcher.is_accepting().unwrap_or(false)
    }

    /// Whether nothing but EOS can follow (the document is complete and cannot grow).
    pub fn is_finished(&self) -> bool {
        self.matcher.is_stopped()
    }

    /// A token that moves the document towards its end, for the last
    /// [`FINISH_RESERVE_TOKENS`] of the budget: EOS when the document is complete, else the
    /// first token of text the grammar forces; among few choices (markup) one after which the
    /// output may end, else the longest; among many, the allowed token ranked first by [`closing_rank`] (inside a string its closing quote,
    /// outside closers, then the shortest literals).
    /// `None` only if nothing is allowed (an error state).
    pub fn closing_token(&mut self) -> Result<Option<u32>, ConstraintError> {
        let mask = self.allowed()?;
        if mask.is_allowed(self.vocab.eos) {
            return Ok(Some(self.vocab.eos));
        }
        // Text the grammar forces (a marker, a property name): its tokens, longest first.
        if let Some(&t) = self.matcher.compute_ff_tokens().first() {
            if mask.is_allowed(t) {
                return Ok(Some(t));
            }
        }
        // Few choices means markup (markers, fixed text), where ranking bytes says little:
        // search for the fewest tokens to a state where the output may end.
        if mask.count() <= LOOKAHEAD_CHOICES_MAX {
            if let Some(t) = self.shortest_path_to_end(&mask) {
                return Ok(Some(t));
            }
            // Else the longest: the most of the fixed text in one step.
            let scan = self.scan;
            let bytes = &self.vocab.bytes;
            return Ok(mask.ids().into_iter().max_by_key(|&t| {
                let b = &bytes[t as usize];
                (b.len(), std::cmp::Reverse(closing_rank(b, scan)))
            }));
        }
        let mut best: Option<(u32, u32)> = None;
        let scan = self.scan;
        mask.0.iter_set_entries(|i| {
            let rank = closing_rank(&self.vocab.bytes[i], scan);
            if best.is_none_or(|(r, _)| rank < r) {
                best = Some((rank, i as u32));
            }
        });
        Ok(best.map(|(_, t)| t))
    }
}

impl JsonConstraint {
    /// Breadth-first search through markup (states with at most [`LOOKAHEAD_CHOICES_MAX`]
    /// choices) for the fewest tokens after which EOS is allowed, within
    /// [`LOOKAHEAD_STATES_MAX`] states; the first token of that path.
    fn shortest_path_to_end(&mut self, mask: &TokenMask) -> Option<u32> {
        let mut queue = std::collections::VecDeque::new();
        let mut states = 0;
        for t in mask.ids() {
            queue.push_back((t, t, self.matcher.deep_clone()));
        }
        while let Some((first, t, mut m)) = queue.pop_front() {
            if states >= LOOKAHEAD_STATES_MAX {
                return None;
            }
            states += 1;
            if m.consume_token(t).is_err() {
                continue;
            }
            let Ok(next) = m.compute_mask_or_eos() else {
                continue;
            };
            if next.is_allowed(self.vocab.eos) {
                return Some(first);
            }
            if next.num_set() > LOOKAHEAD_CHOICES_MAX {
                continue; // free text or a JSON value: not markup, not searched
            }
            next.iter_set_entries(|n| queue.push_back((first, n as u32, m.deep_clone())));
        }
        None
    }
}

/// How well a token's bytes close a JSON document (lower is better): inside a string the
/// closing quote; outside, structural closers, then short literals and digits; whitespace
/// last (it never makes progress).
fn closing_rank(bytes: &[u8], scan: JsonScan) -> u32 {
    if bytes.is_empty() || bytes.len() > CLOSING_TOKEN_BYTES_MAX {
        return u32::MAX;
    }
    if scan.in_string && !scan.escaped {
        let first = match bytes[0] {
            b'"' => 0,
            b'\\' => 9,
            _ => 4,
        };
        return first * 8 + bytes.len() as u32;
    }
    let first = match bytes[0] {
        b'}' | b']' => 0,
        b'"' => 1,
        b':' | b',' => 2,
        b'0'..=b'9' => 3,
        b'{' | b'[' => 5,
        b' ' | b'\n' | b'\t' | b'\r' => 9,
        _ => 4,
    };
    first * 8 + bytes.len() as u32
}

/// The set of allowed token ids.
#[derive(Debug, Clone)]
pub struct TokenMask(SimpleVob);

impl TokenMask {
    /// Whether `token` may come next.
    pub fn is_allowed(&self, token: u32) -> bool {
        (token as usize) < self.0.len() && self.0.is_allowed(token)
    }

    /// How many tokens are allowed.
    pub fn count(&self) -> usize {
        self.0.num_set()
    }

    /// The allowed ids, ascending.
    pub fn ids(&self) -> Vec<u32> {
        let mut v = Vec::new();
        self.0.iter_set_entries(|i| v.push(i as u32));
        v
    }
}

#[cfg(test)]
#[path = "json_constraint_tests.rs"]
mod tests;
