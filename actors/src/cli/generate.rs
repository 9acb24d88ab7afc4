//! One generation: chunked prompt prefill, then decode steps with sampling.
//!
//! With speculative decoding (`--speculative ngram`), each decode step feeds the pending
//! token plus up to `draft_max` tokens proposed by prompt lookup (`moe_engine::draft`) in ONE
//! forward call with logits at every position, then samples position by position exactly as
//! plain decoding would (same logits, same history, one sampler call per emitted token, so the
//! same random draws): while the sampled token equals the drafted one it is accepted and the
//! next position's logits are already there; the first mismatch is emitted as the correction
//! and the cache is cut back to the positions that hold accepted tokens. The output is
//! therefore identical to plain decoding for every sampling setting, greedy or seeded (a point
//! mass draft accepted when the sample equals it is the standard rejection rule), and a step
//! emits between 1 and `draft_max + 1` tokens.

use std::time::Instant;

use moe_engine::draft::ngram_draft;
use moe_model::forward::{ExpertBackend, KvCache, NoObserver, SeqInput};
use moe_model::model::Model;
use moe_model::sampling::Sampler;
use moe_model::tokenizer::{StreamDecoder, Tokenizer};
use moe_model::ModelError;

use crate::telemetry;

/// Prompt tokens processed per forward call (bounds activation memory and frame sizes).
pub const PREFILL_CHUNK_TOKENS: usize = 512;
/// Default of `--draft-max`: draft tokens verified per decode step.
pub const DRAFT_MAX_DEFAULT: usize = 8;

/// How draft tokens are proposed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SpeculativeKind {
    /// No speculative decoding.
    None,
    /// Prompt lookup: what followed the latest earlier occurrence of the last n-gram.
    Ngram,
}

/// Speculative decoding options.
#[derive(Debug, Clone, clap::Args)]
pub struct SpeculativeArgs {
    /// Speculative decoding: `ngram` drafts by prompt lookup (no second model); the output is
    /// identical to plain decoding.
    #[arg(long, value_enum, default_value_t = SpeculativeKind::None)]
    pub speculative: SpeculativeKind,
    /// Most draft tokens verified per decode step.
    #[arg(long, default_value_t = DRAFT_MAX_DEFAULT)]
    pub draft_max: usize,
}

impl SpeculativeArgs {
    /// Draft tokens per step for [`GenRequest::draft_max`] (0 without speculation).
    pub fn draft_max(&self) -> usize {
        match self.speculative {
            SpeculativeKind::None => 0,
            SpeculativeKind::Ngram => self.draft_max,
        }
    }
}

/// What a generation did.
#[derive(Debug, Clone, Default)]
pub struct GenStats {
    /// Prompt tokens.
    pub prompt_tokens: usize,
    /// Prompt processing time, seconds.
    pub prompt_s: f64,
    /// Generated tokens.
    pub generated: Vec<u32>,
    /// Generation time, seconds.
    pub gen_s: f64,
    /// Decode forward calls (each emits one token without speculation).
    pub decode_steps: usize,
    /// Draft tokens proposed, over all steps.
    pub drafted: usize,
    /// Draft tokens accepted.
    pub accepted: usize,
}

impl GenStats {
    /// `draft: accepted/drafted (rate), tokens per step` for the summary line; empty when
    /// nothing was drafted.
    pub fn speculation_summary(&self) -> String {
        if self.decode_steps == 0 || self.drafted == 0 {
            return String::new();
        }
        format!(
            " | draft: {}/{} accepted ({:.0}%), {:.2} tokens per step",
            self.accepted,
            self.drafted,
            100.0 * self.accepted as f64 / self.drafted as f64,
            self.generated.len() as f64 / self.decode_steps as f64
        )
    }
}

/// Generation settings.
#[derive(Debug, Clone)]
pub struct GenRequest<'a> {
    /// Prompt token ids (BOS included if wanted).
    pub prompt: &'a [u32],
    /// Most tokens to generate.
    pub max_tokens: usize,
    /// Continue past EOS.
    pub ignore_eos: bool,
    /// KV cache capacity.
    pub ctx_size: usize,
    /// Most draft tokens verified per decode step (0 = no speculative decoding).
    pub draft_max: usize,
}

/// Runs one generation; `on_text` receives each newly complete piece of text.
pub fn generate(
    model: &Model,
    tok: &Tokenizer,
    experts: &mut dyn ExpertBackend,
    sampler: &mut Sampler,
    req: &GenRequest<'_>,
    on_text: &mut dyn FnMut(&str),
) -> Result<GenStats, ModelError> {
    if req.prompt.is_empty() {
        return Err(ModelError::InvalidInput("the prompt is empty".into()));
    }
    let mut metrics = telemetry::Generation::start(req.prompt.len());
    let mut cache = KvCache::new(&model.cfg, req.ctx_size);
    cache.reserve(req.prompt.len())?;
    let t0 = Instant::now();
    let mut logits = Vec::new();
    for chunk in req.prompt.chunks(PREFILL_CHUNK_TOKENS) {
        logits = model
            .forward(
                &mut [SeqInput {
                    cache: &mut cache,
                    tokens: chunk,
                    all_logits: false,
                }],
                experts,
                &mut NoObserver,
            )?
            .remove(0);
        metrics.kv_cache(cache.len(), cache.capacity(), cache.bytes());
    }
    let mut stats = GenStats {
        prompt_tokens: req.prompt.len(),
        prompt_s: t0.elapsed().as_secs_f64(),
        ..Default::default()
    };
    let mut history = req.prompt.to_vec();
    let mut stream = StreamDecoder::new(tok);
    let t1 = Instant::now();
    let vocab = model.cfg.vocab;
    // The last feed was `[next] + draft`; `rows` holds the logits after each of its tokens.
    let mut rows = logits;
    let mut draft: Vec<u32> = Vec::new();
    'decode: while stats.generated.len() < req.max_tokens {
        let fed_end = cache.len();
        let mut next = None;
        for (j, row) in rows.chunks_exact(vocab).enumerate() {
            let t = sampler.sample(row, &history);
            if !req.ignore_eos && Some(t) == tok.eos() {
                break 'decode;
            }
            stats.generated.push(t);
            history.push(t);
            metrics.token();
            on_text(&stream.push(t));
            if stats.generated.len() == req.max_tokens {
                break 'decode;
            }
            if draft.get(j) == Some(&t) {
                // The drafted token is what plain decoding samples: its position is valid
                // and the next row is the logits after it.
                stats.accepted += 1;
                metrics.draft_accepted();
                continue;
            }
            // The correction (or the token after a fully accepted draft): the positions of
            // the drafts from j on go.
            cache.truncate(fed_end - (draft.len() - j));
            next = Some(t);
            break;
        }
        let Some(next) = next else { break };
        if cache.len() >= cache.capacity() {
            break;
        }
        let room = cache.capacity() - cache.len() - 1;
        draft = ngram_draft(&history, req.draft_max.min(room));
        let mut feed = Vec::with_capacity(1 + draft.len());
        feed.push(next);
        feed.extend_from_slice(&draft);
        rows = model
            .forward(
                &mut [SeqInput {
                    cache: &mut cache,
                    tokens: &feed,
                    all_logits: !draft.is_empty(),
                }],
                experts,
                &mut NoObserver,
            )?
            .remove(0);
        metrics.kv_cache(cache.len(), cache.capacity(), cache.bytes());
        stats.decode_steps += 1;
        stats.drafted += draft.len();
        metrics.decode_step(draft.len());
    }
    on_text(&stream.flush());
    stats.gen_s = t1.elapsed().as_secs_f64();
    metrics.finish();
    Ok(stats)
}
