//! One generation: chunked prompt prefill, then one-token decode steps with sampling.

use std::time::Instant;

use moe_runtime::forward::{ExpertBackend, KvCache, NoObserver, SeqInput};
use moe_runtime::model::Model;
use moe_runtime::sampling::Sampler;
use moe_runtime::tokenizer::{StreamDecoder, Tokenizer};
use moe_runtime::RuntimeError;

use crate::telemetry;

/// Prompt tokens processed per forward call (bounds activation memory and frame sizes).
pub const PREFILL_CHUNK_TOKENS: usize = 512;

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
}

/// Runs one generation; `on_text` receives each newly complete piece of text.
pub fn generate(
    model: &Model,
    tok: &Tokenizer,
    experts: &mut dyn ExpertBackend,
    sampler: &mut Sampler,
    req: &GenRequest<'_>,
    on_text: &mut dyn FnMut(&str),
) -> Result<GenStats, RuntimeError> {
    if req.prompt.is_empty() {
        return Err(RuntimeError::InvalidInput("the prompt is empty".into()));
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
    while stats.generated.len() < req.max_tokens {
        let next = sampler.sample(&logits, &history);
        if !req.ignore_eos && Some(next) == tok.eos() {
            break;
        }
        stats.generated.push(next);
        history.push(next);
        metrics.token();
        on_text(&stream.push(next));
        if stats.generated.len() == req.max_tokens || cache.len() >= cache.capacity() {
            break;
        }
        logits = model
            .forward(
                &mut [SeqInput {
                    cache: &mut cache,
                    tokens: &[next],
                    all_logits: false,
                }],
                experts,
                &mut NoObserver,
            )?
            .remove(0);
        metrics.kv_cache(cache.len(), cache.capacity(), cache.bytes());
    }
    on_text(&stream.flush());
    stats.gen_s = t1.elapsed().as_secs_f64();
    metrics.finish();
    Ok(stats)
}
