//! The scheduler: continuous batching of sequences over one model and expert backend.
//!
//! Each [`Engine::step`] (1) builds ONE batch: one decode token (plus its draft tokens) for
//! every generating sequence and prompt chunks of waiting prompts,
//! [`EngineConfig::prefill_tokens_per_step`] prompt tokens in all, so long prompts are
//! interleaved with decoding instead of stalling it; (2) calls `Model::forward` once, so each
//! MoE layer sends one frame per expert node carrying the tokens of all active sequences;
//! (3) samples each sequence with its own seeded sampler, applying the stop rules (EOS and
//! EOT tokens, stop strings, `max_tokens`, a full context).
//!
//! Batching never changes a sequence's tokens: attention runs per sequence on its own cache
//! and every other operation is row-independent (`tests/batch_invariance.rs` drives this
//! engine to check it).
//!
//! Speculative decoding (`draft_max > 0`): a decoding sequence feeds its pending token plus
//! up to `draft_max` prompt-lookup drafts ([`crate::draft`]) with logits at every position,
//! then samples position by position exactly as plain decoding would (same logits, same
//! history, one sampler call per emitted token, so the same random draws): while the sample
//! equals the drafted token it is accepted and the next position's logits are already there;
//! the first mismatch is the next input and the cache is cut back to the accepted positions.
//! The output is therefore identical to plain decoding for every sampling setting (a point
//! mass draft accepted when the sample equals it is the standard rejection rule).
//!
//! Constrained sequences ([`crate::TokenConstraint`]) mask their row before sampling and
//! never draft. Several choices of one prompt ([`Engine::admit_group`]) compute the prompt
//! once: the other choices wait, then start from a copy of its KV cache and sample their
//! first token from the same logits, each with its own sampler, stop rules and constraint.
//!
//! Failures stay local: non-finite values name the batch rows holding them, and only their
//! sequences fail; the others (whose caches the failed forward call left untouched) run again
//! in the next step. Any other failed step fails the sequences in it.
//!
//! Decides: batching, prefix reuse, drafts, sampling, stop rules. Leaves to front-ends:
//! admission and queues, delivering output, cancellation, panics.

use std::sync::Arc;

use moe_model::forward::{ExpertBackend, KvCache, NoObserver, PrefixCache, SeqInput, TokenKind};
use moe_model::model::Model;
use moe_model::tokenizer::Tokenizer;
use moe_model::ModelError;

use crate::draft::ngram_draft;
use crate::error::EngineError;
use crate::request::{FinishReason, Finished, Piece, Request};
use crate::sequence::Sequence;
use crate::tracker::Tracker;

/// Prompt tokens processed per step by default, over all prompts being prefilled (bounds
/// activation memory and frame sizes).
pub const PREFILL_TOKENS_PER_STEP_DEFAULT: usize = 512;

/// Sizes and options of an engine.
#[derive(Debug, Clone, Copy)]
pub struct EngineConfig {
    /// KV cache capacity per sequence, positions.
    pub ctx_size: usize,
    /// Prompt tokens processed per step, over all prompts being prefilled.
    pub prefill_tokens_per_step: usize,
    /// Prompt tokens whose KV the prefix cache may keep (0 = no prefix reuse).
    pub cache_tokens: usize,
    /// Draft tokens verified per decode step (0 = no speculative decoding).
    pub draft_max: usize,
}

impl EngineConfig {
    /// `ctx_size` positions per sequence, no prefix reuse, no speculation.
    pub fn new(ctx_size: usize) -> Self {
        Self {
            ctx_size,
            prefill_tokens_per_step: PREFILL_TOKENS_PER_STEP_DEFAULT,
            cache_tokens: 0,
            draft_max: 0,
        }
    }
}

/// A sequence that left the engine, with its front-end tag.
#[derive(Debug)]
pub struct Ended<T> {
    /// What the front-end attached to it.
    pub tag: T,
    /// How it finished, or why it failed.
    pub result: Result<Finished, EngineError>,
}

/// What a front-end did with a piece of output.
#[derive(Debug)]
pub enum Delivery {
    /// Handed out.
    Sent,
    /// Not now (a slow reader): the engine keeps it and adds later output to it.
    Later(Piece),
    /// The reader is gone: the sequence is dropped.
    Gone,
}

/// The tokens that end a generation: the tokenizer's EOS and the file's EOT, if any.
fn end_tokens(model: &Model, tokenizer: &Tokenizer) -> Vec<u32> {
    let eot = model
        .file()
        .metadata("tokenizer.ggml.eot_token_id")
        .and_then(|v| v.as_u64())
        .and_then(|v| u32::try_from(v).ok());
    let mut end: Vec<u32> = tokenizer.eos().into_iter().chain(eot).collect();
    end.dedup();
    end
}

/// Sequences being prefilled or decoded over one model.
pub struct Engine<T> {
    tokenizer: Arc<Tokenizer>,
    /// Tokens that end a generation (EOS, EOT).
    end_tokens: Vec<u32>,
    cfg: EngineConfig,
    /// KV of earlier prompts' prefixes.
    prefix: PrefixCache,
    seqs: Vec<Sequence<T>>,
}

impl<T: Tracker> Engine<T> {
    /// An engine for `model`, decoding text with `tokenizer`.
    pub fn new(model: &Model, tokenizer: Arc<Tokenizer>, cfg: EngineConfig) -> Self {
        Self {
            end_tokens: end_tokens(model, &tokenizer),
            tokenizer,
            prefix: PrefixCache::new(cfg.cache_tokens, model.prompt_form()),
            cfg,
            seqs: Vec::new(),
        }
    }

    /// Sequences in the engine (choices waiting for their prompt included).
    pub fn len(&self) -> usize {
        self.seqs.iter().map(|s| 1 + s.forks.len()).sum()
    }

    /// No sequence in the engine.
    pub fn is_empty(&self) -> bool {
        self.seqs.is_empty()
    }

    /// Adds a sequence; the prompt's longest cached prefix is reused when `cache_prompt`.
    /// Refused (the tag comes back) when the prompt is empty or does not fit the context.
    pub fn admit(&mut self, model: &Model, req: Request, tag: T) -> Result<(), (T, EngineError)> {
        let cache = KvCache::for_model(model, self.cfg.ctx_size);
        self.admit_with_cache(req, cache, tag)
    }

    /// [`Engine::admit`] with a KV cache that already holds the first `cache.len()` prompt
    /// tokens (e.g. a benchmark's context at depth); no prefix reuse then.
    pub fn admit_with_cache(
        &mut self,
        req: Request,
        mut cache: KvCache,
        mut tag: T,
    ) -> Result<(), (T, EngineError)> {
        if req.prompt.is_empty() {
            return Err((
                tag,
                EngineError::InvalidRequest("the prompt is empty".into()),
            ));
        }
        if req.prompt.len() > cache.capacity() || cache.len() >= req.prompt.len() {
            return Err((
                tag,
                EngineError::InvalidRequest(format!(
                    "the prompt has {} tokens ({} already cached, at least one must be \
                     computed); the context holds {}",
                    req.prompt.len(),
                    cache.len(),
                    cache.capacity()
                )),
            ));
        }
        let mut cached = cache.len();
        if cached == 0 && req.cache_prompt {
            // A failed restore leaves the cache empty: the prompt is computed in full.
            match self.prefix.restore(&req.prompt, &mut cache) {
                Ok(reused) => cached = reused.tokens,
                Err(e) => eprintln!("engine: prefix cache not used: {e}"),
            }
        }
        tag.prompt_cached(cached);
        self.seqs.push(Sequence::new(
            req,
            cache,
            cached,
            self.tokenizer.clone(),
            tag,
        ));
        Ok(())
    }

    /// Adds several choices of one prompt (OpenAI's `n`): the first request's prompt is
    /// computed once (with prefix reuse as [`Engine::admit`]); each other request then starts
    /// from a copy of its KV cache. Every request keeps its own sampling (give each its own
    /// seed), stop strings, budget and constraint; their prompts must be equal. Refused as a
    /// whole (every tag comes back) when the first would be.
    pub fn admit_group(
        &mut self,
        model: &Model,
        mut group: Vec<(Request, T)>,
    ) -> Result<(), Vec<(T, EngineError)>> {
        if group.is_empty() {
            return Ok(());
        }
        let rest = group.split_off(1);
        let (first, tag) = group.pop().expect("one request");
        if let Some(i) = rest.iter().position(|(r, _)| r.prompt != first.prompt) {
            let why = format!("choice {} of a group has another prompt", i + 1);
            let mut refused = vec![(tag, EngineError::InvalidRequest(why.clone()))];
            refused.extend(
                rest.into_iter()
                    .map(|(_, t)| (t, EngineError::InvalidRequest(why.clone()))),
            );
            return Err(refused);
        }
        if let Err((tag, e)) = self.admit(model, first, tag) {
            let mut refused = vec![(tag, e.clone())];
            refused.extend(rest.into_iter().map(|(_, t)| (t, e.clone())));
            return Err(refused);
        }
        self.seqs.last_mut().expect("just admitted").forks = rest;
        Ok(())
    }

    /// Drops the sequences whose tag `keep` refuses (e.g. a client that went away).
    pub fn retain(&mut self, mut keep: impl FnMut(&T) -> bool) {
        self.seqs.retain(|s| keep(&s.tag));
    }

    /// Removes every sequence, handing back the tags (e.g. after a step panicked: their
    /// caches and samplers may be half-updated).
    pub fn drain(&mut self) -> Vec<T> {
        self.seqs
            .drain(..)
            .flat_map(|s| std::iter::once(s.tag).chain(s.forks.into_iter().map(|(_, t)| t)))
            .collect()
    }

    /// Hands each sequence's new output to `deliver`.
    pub fn deliver(&mut self, mut deliver: impl FnMut(&mut T, Piece) -> Delivery) {
        self.seqs.retain_mut(|s| {
            if s.outbox.is_empty() {
                return true;
            }
            match deliver(&mut s.tag, std::mem::take(&mut s.outbox)) {
                Delivery::Sent => true,
                Delivery::Later(piece) => {
                    s.outbox = piece;
                    true
                }
                Delivery::Gone => false,
            }
        });
    }

    /// One forward call over every sequence; returns those that finished or failed in it.
    pub fn step(&mut self, model: &Model, experts: &mut dyn ExpertBackend) -> Vec<Ended<T>> {
        let mut ended: Vec<(usize, Result<Finished, EngineError>)> = Vec::new();
        let mut budget = self.cfg.prefill_tokens_per_step.max(1);
        for s in &mut self.seqs {
            s.feed.clear();
            s.draft.clear();
            if let Some(t) = s.next_input {
                s.feed.push(t);
                if self.cfg.draft_max > 0 && s.constraint.is_none() {
                    // Drafts only where the cache has room for them and the token after.
                    let room = s.cache.capacity().saturating_sub(s.cache.len() + 2);
                    s.draft = ngram_draft(&s.history, self.cfg.draft_max.min(room));
                    s.feed.extend_from_slice(&s.draft);
                }
            } else if s.prefilled < s.prompt.len() && budget > 0 {
                let n = budget.min(s.prompt.len() - s.prefilled);
                s.feed
                    .extend_from_slice(&s.prompt[s.prefilled..s.prefilled + n]);
                budget -= n;
            }
        }
        let mut in_batch = Vec::new();
        let mut batch = Vec::new();
        for (i, s) in self.seqs.iter_mut().enumerate() {
            if !s.feed.is_empty() {
                in_batch.push(i);
                batch.push(SeqInput {
                    cache: &mut s.cache,
                    tokens: &s.feed,
                    all_logits: !s.draft.is_empty(),
                    // A sequence with a next input decodes (plus drafts); else it prefills.
                    kind: if s.next_input.is_some() {
                        TokenKind::Generated
                    } else {
                        TokenKind::Prompt {
                            len: s.prompt.len(),
                        }
                    },
                });
            }
        }
        if batch.is_empty() {
            return Vec::new();
        }
        let result = model.forward(&mut batch, experts, &mut NoObserver);
        drop(batch);
        match result {
            Err(e) => {
                // Non-finite values name the batch rows holding them: only their sequences
                // fail. The others' caches were left as they were; they run again next step.
                let culprits = self.sequences_of_rows(&e, &in_batch);
                let failing = culprits.unwrap_or_else(|| in_batch.clone());
                let e = Arc::new(e);
                for i in failing {
                    ended.push((i, Err(EngineError::Model(e.clone()))));
                }
            }
            Ok(logits) => {
                let vocab = model.cfg.vocab;
                for (&i, logits) in in_batch.iter().zip(&logits) {
                    let forks = self.take_forks(i);
                    if let Some(result) = self.seqs[i].after_forward(
                        logits,
                        vocab,
                        &self.end_tokens,
                        &mut self.prefix,
                    ) {
                        ended.push((i, result));
                    }
                    for mut fork in forks {
                        let result =
                            fork.after_forward(logits, vocab, &self.end_tokens, &mut self.prefix);
                        self.seqs.push(fork);
                        if let Some(result) = result {
                            ended.push((self.seqs.len() - 1, result));
                        }
                    }
                }
            }
        }
        ended.sort_by_key(|(i, _)| *i);
        let mut out = Vec::with_capacity(ended.len());
        for (i, result) in ended.into_iter().rev() {
            let s = self.seqs.remove(i);
            // Choices still waiting for this prompt share its failure.
            for (_, tag) in s.forks {
                let result = match &result {
                    Err(e) => Err(e.clone()),
                    Ok(_) => Err(EngineError::InvalidRequest(
                        "the prompt's sequence ended before its choices started".into(),
                    )),
                };
                out.push(Ended { tag, result });
            }
            out.push(Ended { tag: s.tag, result });
        }
        out.reverse();
        out
    }

    /// When sequence `i`'s forward this step completes its prompt: its waiting choices, as
    /// sequences holding a copy of its KV cache, fed what it was fed (so they take the same
    /// logits as their first token's). Taken before `i` samples (which leaves its cache as
    /// the forward left it).
    fn take_forks(&mut self, i: usize) -> Vec<Sequence<T>> {
        let s = &mut self.seqs[i];
        if s.forks.is_empty()
            || s.next_input.is_some()
            || s.prefilled + s.feed.len() < s.prompt.len()
        {
            return Vec::new();
        }
        let forks = std::mem::take(&mut s.forks);
        forks
            .into_iter()
            .map(|(req, mut tag)| {
                let s = &self.seqs[i];
                tag.prompt_cached(s.cached);
                let mut f =
                    Sequence::new(req, s.cache.clone(), s.cached, self.tokenizer.clone(), tag);
                f.prefilled = s.prefilled;
                f.feed = s.feed.clone();
                // The prompt's KV goes into the prefix cache once, from the first choice.
                f.cache_prompt = false;
                f
            })
            .collect()
    }

    /// For an error that names batch rows (non-finite values), the indices (into `seqs`) of
    /// the sequences whose fed tokens those rows are; `None` when it names none.
    fn sequences_of_rows(&self, e: &ModelError, in_batch: &[usize]) -> Option<Vec<usize>> {
        let ModelError::NonFinite { rows, .. } = e else {
            return None;
        };
        let mut found = Vec::new();
        let mut start = 0;
        for &i in in_batch {
            let end = start + self.seqs[i].feed.len();
            if rows.iter().any(|r| (start..end).contains(r)) {
                found.push(i);
            }
            start = end;
        }
        (!found.is_empty()).then_some(found)
    }
}

impl<T: Tracker> Sequence<T> {
    /// Takes this step's logits (one row per fed token with drafts, else one); returns how
    /// the sequence finished or failed, if it did.
    fn after_forward(
        &mut self,
        logits: &[f32],
        vocab: usize,
        end_tokens: &[u32],
        prefix: &mut PrefixCache,
    ) -> Option<Result<Finished, EngineError>> {
        self.tag
            .kv_cache(self.cache.len(), self.cache.capacity(), self.cache.bytes());
        let decoding = self.next_input.take().is_some();
        if !decoding {
            self.prefilled += self.feed.len();
            if self.prefilled < self.prompt.len() {
                return None;
            }
            if self.cache_prompt {
                prefix.insert(&self.prompt, &self.cache);
            }
            self.tag.prompt_done();
            if self.max_tokens == 0 {
                return Some(Ok(self.finish(FinishReason::Length)));
            }
        }
        // Sampled in order exactly as plain decoding would; a drafted token equal to the
        // sample is accepted (its position is already cached), the first other sample is the
        // next input and the positions of the drafts after it are cut.
        let fed_end = self.cache.len();
        let n_draft = self.draft.len();
        let mut finished = None;
        for (j, row) in logits.chunks_exact(vocab).enumerate() {
            let cached = fed_end - (n_draft - j);
            match self.on_logits(row, end_tokens, cached) {
                Ok(None) => {}
                Ok(Some(finish)) => {
                    finished = Some(Ok(self.finish(finish)));
                    break;
                }
                Err(e) => {
                    finished = Some(Err(e));
                    break;
                }
            }
            if j < n_draft && self.next_input == Some(self.draft[j]) {
                self.decode.accepted += 1;
                self.tag.draft_accepted();
                continue;
            }
            self.cache.truncate(cached);
            break;
        }
        if decoding {
            self.decode.steps += 1;
            self.decode.drafted += n_draft;
            self.tag.decode_step(n_draft);
        }
        finished
    }
}
