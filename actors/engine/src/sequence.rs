//! One request's generation state: its KV cache, what it feeds next, its sampler, and the
//! stop rules (end-of-generation tokens, stop strings, `max_tokens`, a full context).

use std::sync::Arc;

use moe_model::forward::KvCache;
use moe_model::sampling::Sampler;
use moe_model::tokenizer::{StreamDecoder, Tokenizer};

use crate::constraint::TokenConstraint;
use crate::error::EngineError;
use crate::request::{DecodeStats, FinishReason, Finished, Piece, Request, Usage};
use crate::stop::StopMatcher;
use crate::tracker::Tracker;

/// A sequence being prefilled or decoded, with the front-end's `tag`.
pub(crate) struct Sequence<T> {
    pub(crate) prompt: Vec<u32>,
    /// Prompt tokens already in the cache.
    pub(crate) prefilled: usize,
    /// Prompt tokens restored from the prefix cache (or handed in with the cache).
    pub(crate) cached: usize,
    /// Whether the prompt's KV goes into the prefix cache once computed.
    pub(crate) cache_prompt: bool,
    pub(crate) cache: KvCache,
    /// Sampled but not yet fed to the model.
    pub(crate) next_input: Option<u32>,
    /// Draft tokens fed this step after `next_input` (speculative decoding).
    pub(crate) draft: Vec<u32>,
    /// This step's input tokens.
    pub(crate) feed: Vec<u32>,
    /// Prompt and generated tokens (the repetition penalty's window, the drafts' source).
    pub(crate) history: Vec<u32>,
    pub(crate) generated: usize,
    pub(crate) max_tokens: usize,
    pub(crate) ignore_eos: bool,
    pub(crate) sampler: Sampler,
    pub(crate) decoder: StreamDecoder<Arc<Tokenizer>>,
    pub(crate) stop: StopMatcher,
    /// A stop string ended the output (nothing after it may be released).
    pub(crate) stopped: bool,
    /// Output not yet handed to the front-end.
    pub(crate) outbox: Piece,
    pub(crate) decode: DecodeStats,
    /// What the output may consist of (never drafts, never ignores EOS).
    pub(crate) constraint: Option<Box<dyn TokenConstraint>>,
    /// Further choices of the same prompt (`n` > 1): they start from a copy of this
    /// sequence's KV once its prompt is computed, and sample from the same last logits.
    pub(crate) forks: Vec<(Request, T)>,
    pub(crate) tag: T,
}

impl<T> Sequence<T> {
    /// A sequence for `req` whose `cache` holds the first `cached` prompt tokens.
    pub(crate) fn new(
        req: Request,
        cache: KvCache,
        cached: usize,
        tokenizer: Arc<Tokenizer>,
        tag: T,
    ) -> Self {
        Self {
            history: req.prompt.clone(),
            prompt: req.prompt,
            prefilled: cached,
            cached,
            cache_prompt: req.cache_prompt,
            cache,
            next_input: None,
            draft: Vec::new(),
            feed: Vec::new(),
            generated: 0,
            max_tokens: req.max_tokens,
            ignore_eos: req.ignore_eos && req.constraint.is_none(),
            sampler: Sampler::new(req.sampling),
            decoder: StreamDecoder::new(tokenizer).render_control(req.render_control),
            stop: StopMatcher::new(req.stop),
            stopped: false,
            outbox: Piece::default(),
            decode: Default::default(),
            constraint: req.constraint,
            forks: Vec::new(),
            tag,
        }
    }
}

impl<T: Tracker> Sequence<T> {
    /// Samples the next token from one position's logits; returns why the sequence ends, if
    /// it does. `cached`: the positions the cache holds for this sequence's tokens so far
    /// (the cache may hold draft positions beyond them). A constrained sequence's row is
    /// masked first (a copy: plain sequences sample from `logits` as they are).
    pub(crate) fn on_logits(
        &mut self,
        logits: &[f32],
        end_tokens: &[u32],
        cached: usize,
    ) -> Result<Option<FinishReason>, EngineError> {
        let masked;
        let (row, t) = match self.constraint.as_mut() {
            None => (logits, self.sampler.sample(logits, &self.history)),
            Some(c) => {
                // Tokens this one included: the budget's, and the context's (the sequence
                // ends once the token at position `capacity` is taken).
                let remaining = (self.max_tokens - self.generated)
                    .min(self.cache.capacity().saturating_sub(cached) + 1);
                let mut row = logits.to_vec();
                c.mask(&mut row).map_err(EngineError::Constraint)?;
                let t = match c.forced(remaining) {
                    Some(t) => t,
                    None => self.sampler.sample(&row, &self.history),
                };
                masked = row;
                (&masked[..], t)
            }
        };
        if !self.ignore_eos && end_tokens.contains(&t) {
            return Ok(Some(FinishReason::Stop));
        }
        if let Some(c) = self.constraint.as_mut() {
            c.advance(t).map_err(EngineError::Constraint)?;
        }
        self.generated += 1;
        self.tag.sampled(row, t);
        self.tag.token();
        self.history.push(t);
        self.outbox.token_ids.push(t);
        let text = self.decoder.push(t);
        let out = self.stop.push(&text);
        self.outbox.text.push_str(&out.release);
        if out.stopped {
            self.stopped = true;
            return Ok(Some(FinishReason::Stop));
        }
        if self.generated >= self.max_tokens || cached >= self.cache.capacity() {
            return Ok(Some(FinishReason::Length));
        }
        self.next_input = Some(t);
        Ok(None)
    }

    /// Releases held text and says how the sequence ended.
    pub(crate) fn finish(&mut self, mut finish: FinishReason) -> Finished {
        if !self.stopped {
            let rest = self.decoder.flush();
            let out = self.stop.push(&rest);
            self.outbox.text.push_str(&out.release);
            if out.stopped {
                finish = FinishReason::Stop;
            } else {
                self.outbox.text.push_str(&self.stop.flush());
            }
        }
        Finished {
            tail: std::mem::take(&mut self.outbox),
            finish,
            usage: Usage {
                prompt_tokens: self.prompt.len(),
                completion_tokens: self.generated,
                cached_tokens: self.cached,
            },
            decode: self.decode,
            stop_string: self.stop.matched().map(str::to_string),
        }
    }
}
