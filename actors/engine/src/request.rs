//! What a generation is asked for and what it gives back.

use moe_model::sampling::SamplingParams;

use crate::constraint::TokenConstraint;

/// One generation request.
pub struct Request {
    /// Prompt token ids (BOS included when wanted); not empty.
    pub prompt: Vec<u32>,
    /// Most tokens to generate (0: only process the prompt).
    pub max_tokens: usize,
    /// Sampling.
    pub sampling: SamplingParams,
    /// Stop strings: the output ends right before the first one found.
    pub stop: Vec<String>,
    /// Continue past end-of-generation tokens (EOS, EOT).
    pub ignore_eos: bool,
    /// Reuse a cached prefix of the prompt and keep this prompt's KV for later requests
    /// (llama-server's `cache_prompt`).
    pub cache_prompt: bool,
    /// Tokens the output may consist of ([`TokenConstraint`]); a constrained sequence
    /// never drafts and never ignores EOS.
    pub constraint: Option<Box<dyn TokenConstraint>>,
    /// Decode control tokens as their text (chat markers such as tool-call markup, which a
    /// front-end parses); off, they decode as nothing.
    pub render_control: bool,
}

impl std::fmt::Debug for Request {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Request")
            .field("prompt_tokens", &self.prompt.len())
            .field("max_tokens", &self.max_tokens)
            .field("sampling", &self.sampling)
            .field("stop", &self.stop)
            .field("ignore_eos", &self.ignore_eos)
            .field("cache_prompt", &self.cache_prompt)
            .field("constrained", &self.constraint.is_some())
            .field("render_control", &self.render_control)
            .finish()
    }
}

impl Request {
    /// A request for `prompt` with default sampling, no stop strings, prefix reuse on.
    pub fn new(prompt: Vec<u32>, max_tokens: usize) -> Self {
        Self {
            prompt,
            max_tokens,
            sampling: SamplingParams::default(),
            stop: Vec::new(),
            ignore_eos: false,
            cache_prompt: true,
            constraint: None,
            render_control: false,
        }
    }
}

/// Generated text and the token ids that produced it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Piece {
    /// Text (possibly empty while a multi-byte character or a possible stop string is held).
    pub text: String,
    /// Token ids.
    pub token_ids: Vec<u32>,
}

impl Piece {
    /// No text and no tokens.
    pub fn is_empty(&self) -> bool {
        self.text.is_empty() && self.token_ids.is_empty()
    }
}

/// Why a generation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinishReason {
    /// An end-of-generation token or a stop string.
    Stop,
    /// `max_tokens` reached or the context is full.
    Length,
}

/// Token counts of a finished generation.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    /// Prompt tokens.
    pub prompt_tokens: usize,
    /// Generated tokens.
    pub completion_tokens: usize,
    /// Prompt tokens whose KV came from the prefix cache.
    pub cached_tokens: usize,
}

/// Speculative decoding counts of one generation.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DecodeStats {
    /// Decode forward calls (each emits one token without speculation).
    pub steps: usize,
    /// Draft tokens proposed, over all steps.
    pub drafted: usize,
    /// Draft tokens accepted.
    pub accepted: usize,
}

/// How a generation ended.
#[derive(Debug, Clone)]
pub struct Finished {
    /// Output not yet handed out as a piece.
    pub tail: Piece,
    /// Why it ended.
    pub finish: FinishReason,
    /// Token counts.
    pub usage: Usage,
    /// Decode steps and drafts.
    pub decode: DecodeStats,
    /// The stop string that ended the output, if one did.
    pub stop_string: Option<String>,
}
