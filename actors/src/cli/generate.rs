//! One generation on the command line (`run`, the stdin router): a single sequence driven
//! through the engine ([`moe_engine::Engine`]) step by step, its text streamed as it comes.
//! Prompt chunking, speculative decoding, sampling and the stop rules are the engine's, the
//! same as `serve`'s.

use std::sync::Arc;
use std::time::Instant;

use moe_engine::{Delivery, Engine, EngineConfig, EngineError, Request, Tracker};
use moe_model::forward::ExpertBackend;
use moe_model::model::Model;
use moe_model::sampling::SamplingParams;
use moe_model::tokenizer::Tokenizer;

use crate::telemetry;

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
    /// Sampling.
    pub sampling: SamplingParams,
    /// Continue past end-of-generation tokens (EOS, EOT).
    pub ignore_eos: bool,
    /// KV cache capacity.
    pub ctx_size: usize,
    /// Most draft tokens verified per decode step (0 = no speculative decoding).
    pub draft_max: usize,
}

/// The request's metrics plus when its prompt was done.
struct CliTracker {
    metrics: telemetry::Generation,
    prompt_done: Option<Instant>,
}

impl Tracker for CliTracker {
    fn prompt_cached(&mut self, tokens: usize) {
        self.metrics.prompt_cached(tokens);
    }
    fn prompt_done(&mut self) {
        self.prompt_done = Some(Instant::now());
    }
    fn token(&mut self) {
        self.metrics.token();
    }
    fn kv_cache(&mut self, used: usize, capacity: usize, bytes: usize) {
        self.metrics.kv_cache(used, capacity, bytes);
    }
    fn decode_step(&mut self, drafted: usize) {
        self.metrics.decode_step(drafted);
    }
    fn draft_accepted(&mut self) {
        self.metrics.draft_accepted();
    }
}

/// Runs one generation; `on_text` receives each newly complete piece of text.
pub fn generate(
    model: &Model,
    tok: &Arc<Tokenizer>,
    experts: &mut dyn ExpertBackend,
    req: &GenRequest<'_>,
    on_text: &mut dyn FnMut(&str),
) -> Result<GenStats, EngineError> {
    let mut cfg = EngineConfig::new(req.ctx_size);
    cfg.draft_max = req.draft_max;
    let mut engine = Engine::new(model, tok.clone(), cfg);
    let request = Request {
        sampling: req.sampling.clone(),
        ignore_eos: req.ignore_eos,
        cache_prompt: false,
        ..Request::new(req.prompt.to_vec(), req.max_tokens)
    };
    let tracker = CliTracker {
        metrics: telemetry::Generation::start(req.prompt.len()),
        prompt_done: None,
    };
    let t0 = Instant::now();
    engine.admit(model, request, tracker).map_err(|(_, e)| e)?;
    let mut generated = Vec::new();
    loop {
        let ended = engine.step(model, experts);
        engine.deliver(|_, piece| {
            on_text(&piece.text);
            generated.extend_from_slice(&piece.token_ids);
            Delivery::Sent
        });
        let Some(end) = ended.into_iter().next() else {
            if engine.is_empty() {
                return Err(EngineError::InvalidRequest(
                    "the sequence was dropped".into(),
                ));
            }
            continue;
        };
        let finished = end.result?;
        on_text(&finished.tail.text);
        generated.extend_from_slice(&finished.tail.token_ids);
        let prompt_done = end.tag.prompt_done.unwrap_or(t0);
        end.tag.metrics.finish();
        return Ok(GenStats {
            prompt_tokens: req.prompt.len(),
            prompt_s: prompt_done.duration_since(t0).as_secs_f64(),
            generated,
            gen_s: prompt_done.elapsed().as_secs_f64(),
            decode_steps: finished.decode.steps,
            drafted: finished.decode.drafted,
            accepted: finished.decode.accepted,
        });
    }
}
