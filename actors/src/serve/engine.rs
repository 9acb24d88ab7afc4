//! The engine: one OS thread that owns the model, the expert backend and every sequence, and
//! runs continuous batching.
//!
//! Each step it (1) admits waiting jobs from the bounded admission queue while fewer than
//! `max_active` sequences run, (2) drops every sequence whose client went away, (3) builds ONE
//! batch: one decode token for every generating sequence plus prompt chunks of waiting
//! prompts, [`PREFILL_TOKENS_PER_STEP_MAX`] prompt tokens in all, so long prompts are
//! interleaved with decoding instead of stalling it, (4) calls `Model::forward` once, so each
//! MoE layer sends one frame per expert node carrying the tokens of all active sequences, and
//! (5) samples each sequence with its own seeded sampler and sends its new text.
//!
//! Batching never changes a sequence's tokens: attention runs per sequence on its own cache
//! and every other operation is row-independent (see `runtime/tests/batch_invariance.rs`).
//!
//! Failures stay local. A step that fails fails only its requests, with an error naming the
//! cause ([`JobError`]: 503 when an expert node without a replica is down, else 500), and the
//! engine goes on with the next step. Non-finite values (NaN/Inf from corrupt weights or a
//! faulty expert node) are attributed to the rows holding them: only those sequences fail,
//! the others (whose caches the failed forward call left untouched) simply run again in the
//! next step. A panic inside a step is caught: every in-flight request fails with a 500
//! naming the panic, all per-sequence state is dropped, and the engine keeps serving new
//! requests with the same model and expert backend. Should the engine loop itself panic
//! (outside a step), the process exits with status [`ENGINE_PANIC_EXIT_CODE`] so that a
//! supervisor restarts it, instead of lingering with every request answered 503.
//!
//! Decides: scheduling, sequence lifetime, stop conditions. Leaves request parsing and
//! validation (prompt length, `max_tokens`) to the HTTP handlers, which submit only jobs
//! that fit the context.

use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use anyhow::Context;
use axum::http::StatusCode;
use moe_engine::draft::ngram_draft;
use moe_model::forward::{ExpertBackend, KvCache, NoObserver, PrefixCache, SeqInput};
use moe_model::model::Model;
use moe_model::sampling::{Sampler, SamplingParams};
use moe_model::tokenizer::{StreamDecoder, Tokenizer};
use moe_model::ModelError;
use tokio::sync::{mpsc, oneshot};

use super::api_error::ApiError;
use super::openai::{FinishReason, Usage};
use super::stop::StopMatcher;
use crate::options::ModelArgs;
use crate::options::RouterArgs;
use crate::router::remote_experts::LinkHealth;
use crate::telemetry;

/// Sequences decoded together (the default of `--max-active-sequences`).
pub const MAX_ACTIVE_SEQUENCES: usize = 16;
/// Jobs waiting for a sequence slot before new requests get 429 (default of `--admission-queue`).
pub const ADMISSION_QUEUE_MAX: usize = 64;
/// Prompt tokens processed per step, over all prompts being prefilled.
pub const PREFILL_TOKENS_PER_STEP_MAX: usize = crate::cli::generate::PREFILL_CHUNK_TOKENS;
/// Text pieces buffered for one client; beyond that the engine coalesces them.
pub const PIECES_PER_REQUEST_MAX: usize = 16;
/// Exit status of the process when the engine loop panics outside a step (EX_SOFTWARE).
pub const ENGINE_PANIC_EXIT_CODE: i32 = 70;

/// Generated text and the token ids that produced it.
#[derive(Debug, Clone, Default)]
pub struct Piece {
    /// Text (possibly empty while a multi-byte character or a possible stop string is held).
    pub text: String,
    /// Token ids.
    pub token_ids: Vec<u32>,
}

impl Piece {
    fn is_empty(&self) -> bool {
        self.text.is_empty() && self.token_ids.is_empty()
    }
}

/// How a job ended.
#[derive(Debug, Clone)]
pub struct Finished {
    /// Text not yet sent as a piece.
    pub tail: Piece,
    /// Why it ended.
    pub finish: FinishReason,
    /// Token counts.
    pub usage: Usage,
}

/// Why a job failed: a message naming the cause, and whose fault it is.
#[derive(Debug, Clone, PartialEq)]
pub struct JobError {
    /// 503 when retrying later may help (an expert node is down), else 500.
    pub status: StatusCode,
    /// Machine-readable cause: `unavailable`, `non_finite_values`, `engine_panic`, `internal_error`.
    pub code: &'static str,
    /// What went wrong.
    pub message: String,
}

impl JobError {
    /// The error of a request whose step failed with `e`.
    fn from_runtime(e: &ModelError) -> Self {
        match e {
            ModelError::PeerFailed { .. } | ModelError::NoLiveOwner { .. } => Self {
                status: StatusCode::SERVICE_UNAVAILABLE,
                code: "unavailable",
                message: e.to_string(),
            },
            ModelError::NonFinite { what, value, .. } => Self {
                status: StatusCode::INTERNAL_SERVER_ERROR,
                code: "non_finite_values",
                message: format!(
                    "the model produced non-finite values ({value}) in {what} for this request \
                     (corrupt weights, an overflow, or a faulty expert node)"
                ),
            },
            _ => Self {
                status: StatusCode::INTERNAL_SERVER_ERROR,
                code: "internal_error",
                message: e.to_string(),
            },
        }
    }

    /// The error of a request in flight when a step panicked.
    fn panicked(reason: &str) -> Self {
        Self {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            code: "engine_panic",
            message: format!(
                "internal error: the engine panicked ({reason}); the requests in flight failed, \
                 the server goes on"
            ),
        }
    }
}

impl std::fmt::Display for JobError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl From<JobError> for ApiError {
    fn from(e: JobError) -> Self {
        Self {
            status: e.status,
            message: format!("generation failed: {}", e.message),
            kind: "server_error",
            param: None,
            code: Some(e.code),
        }
    }
}

/// One generation request, as the engine takes it.
#[derive(Debug)]
pub struct GenerationJob {
    /// Prompt token ids (BOS included when wanted); fits the context with `max_tokens`.
    pub prompt: Vec<u32>,
    /// Most tokens to generate (at least 1).
    pub max_tokens: usize,
    /// Sampling.
    pub sampling: SamplingParams,
    /// Stop strings.
    pub stop: Vec<String>,
    /// Continue past end-of-sequence tokens.
    pub ignore_eos: bool,
    /// Reuse a cached prefix of the prompt and keep this prompt's for later requests
    /// (llama-server's `cache_prompt`; true unless the request says otherwise).
    pub cache_prompt: bool,
    pieces: mpsc::Sender<Piece>,
    done: oneshot::Sender<Result<Finished, JobError>>,
}

/// The client side of a job: pieces as they come, then the end. Dropping it cancels the job.
#[derive(Debug)]
pub struct JobReceiver {
    /// Text pieces; closed when the job ends.
    pub pieces: mpsc::Receiver<Piece>,
    /// The end: how it finished, or why it failed.
    pub done: oneshot::Receiver<Result<Finished, JobError>>,
}

impl GenerationJob {
    /// A job and the receiver its client reads.
    pub fn new(
        prompt: Vec<u32>,
        max_tokens: usize,
        sampling: SamplingParams,
        stop: Vec<String>,
        ignore_eos: bool,
    ) -> (Self, JobReceiver) {
        let (ptx, prx) = mpsc::channel(PIECES_PER_REQUEST_MAX);
        let (dtx, drx) = oneshot::channel();
        (
            Self {
                prompt,
                max_tokens,
                sampling,
                stop,
                ignore_eos,
                cache_prompt: true,
                pieces: ptx,
                done: dtx,
            },
            JobReceiver {
                pieces: prx,
                done: drx,
            },
        )
    }
}

/// Sizes the engine runs with.
#[derive(Debug, Clone, Copy)]
pub struct EngineLimits {
    /// Sequences decoded together.
    pub max_active: usize,
    /// Admission queue length.
    pub queue: usize,
    /// KV cache capacity per sequence, positions.
    pub ctx_size: usize,
    /// Prompt tokens whose KV the prefix cache may keep (0 = no prefix reuse).
    pub cache_tokens: usize,
    /// Draft tokens verified per decode step (0 = no speculative decoding).
    pub draft_max: usize,
}

/// What the HTTP side learns about the loaded model.
#[derive(Debug)]
pub struct ModelInfo {
    /// The tokenizer (shared with the engine).
    pub tokenizer: Arc<Tokenizer>,
    /// `tokenizer.chat_template`, if the file has one.
    pub chat_template: Option<String>,
    /// `general.name`, if present.
    pub name: Option<String>,
}

/// Why a job could not be queued.
#[derive(Debug)]
pub enum SubmitError {
    /// The admission queue is full.
    QueueFull(usize),
    /// The engine thread has stopped.
    Stopped,
}

/// The HTTP side's handle on the engine.
#[derive(Debug, Clone)]
pub struct EngineHandle {
    admit: mpsc::Sender<GenerationJob>,
    active: Arc<AtomicUsize>,
    health: Option<LinkHealth>,
}

impl EngineHandle {
    /// Queues a job without waiting.
    pub fn submit(&self, job: GenerationJob) -> Result<(), SubmitError> {
        self.admit.try_send(job).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => SubmitError::QueueFull(self.queued()),
            mpsc::error::TrySendError::Closed(_) => SubmitError::Stopped,
        })
    }

    /// Jobs waiting in the admission queue.
    pub fn queued(&self) -> usize {
        self.admit.max_capacity() - self.admit.capacity()
    }

    /// Sequences being prefilled or decoded.
    pub fn active(&self) -> usize {
        self.active.load(Ordering::SeqCst)
    }

    /// Why the engine cannot serve now (its thread stopped, expert nodes down); None = ready.
    pub fn unready_reason(&self) -> Option<String> {
        if self.admit.is_closed() {
            return Some("the engine has stopped".into());
        }
        let down = self
            .health
            .as_ref()
            .map(LinkHealth::down)
            .unwrap_or_default();
        (!down.is_empty()).then(|| format!("expert nodes unreachable: {}", down.join("; ")))
    }
}

/// Loads the model and the expert backend on a new thread and starts the engine there.
pub fn start(
    model_args: &ModelArgs,
    cluster: &RouterArgs,
    limits: EngineLimits,
) -> anyhow::Result<(EngineHandle, ModelInfo)> {
    let model_args = ModelArgs {
        model: model_args.model.clone(),
        threads: model_args.threads,
        ctx_size: limits.ctx_size,
        exact: model_args.exact,
        fast: model_args.fast,
    };
    let cluster = cluster.clone();
    let (admit, admit_rx) = mpsc::channel(limits.queue.max(1));
    let active = Arc::new(AtomicUsize::new(0));
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let active_engine = active.clone();
    std::thread::Builder::new()
        .name("engine".into())
        .spawn(move || {
            let loaded = (|| -> anyhow::Result<(Engine, ModelInfo, Option<LinkHealth>)> {
                let model = model_args.load_for(Some(&cluster), moe_kernels::NumericMode::Fast)?;
                let tokenizer = Arc::new(Tokenizer::from_gguf(model.file())?);
                let (experts, health) = cluster.backend(&model)?;
                let meta_str = |k: &str| {
                    model
                        .file()
                        .metadata(k)
                        .and_then(|v| v.as_str())
                        .map(str::to_string)
                };
                let info = ModelInfo {
                    tokenizer: tokenizer.clone(),
                    chat_template: meta_str("tokenizer.chat_template"),
                    name: meta_str("general.name"),
                };
                let eot = model
                    .file()
                    .metadata("tokenizer.ggml.eot_token_id")
                    .and_then(|v| v.as_u64())
                    .map(|v| v as u32);
                let end_tokens = tokenizer.eos().into_iter().chain(eot).collect();
                let engine = Engine::new(
                    model,
                    experts,
                    tokenizer,
                    end_tokens,
                    &limits,
                    admit_rx,
                    active_engine,
                );
                Ok((engine, info, health))
            })();
            match loaded {
                Err(e) => {
                    let _ = ready_tx.send(Err(e));
                }
                Ok((engine, info, health)) => {
                    if ready_tx.send(Ok((info, health))).is_ok()
                        && std::panic::catch_unwind(AssertUnwindSafe(|| engine.run())).is_err()
                    {
                        // Steps catch their own panics; this is the loop around them. Without
                        // an engine the server could only answer 503: exit so a supervisor
                        // restarts it.
                        eprintln!(
                            "engine: the engine loop panicked; exiting with status {ENGINE_PANIC_EXIT_CODE}"
                        );
                        std::process::exit(ENGINE_PANIC_EXIT_CODE);
                    }
                }
            }
        })
        .context("starting the engine thread")?;
    let (info, health) = ready_rx
        .recv()
        .context("the engine thread died while loading")??;
    Ok((
        EngineHandle {
            admit,
            active,
            health,
        },
        info,
    ))
}

/// One request's generation state.
struct Sequence {
    prompt: Vec<u32>,
    /// Prompt tokens already in the cache.
    prefilled: usize,
    /// Prompt tokens restored from the prefix cache.
    cached: usize,
    /// Whether the prompt's KV goes into the prefix cache once computed.
    cache_prompt: bool,
    cache: KvCache,
    /// Sampled but not yet fed to the model.
    next_input: Option<u32>,
    /// Draft tokens fed this step after `next_input` (speculative decoding).
    draft: Vec<u32>,
    /// This step's input tokens.
    feed: Vec<u32>,
    /// Prompt and generated tokens (the repetition penalty's window).
    history: Vec<u32>,
    generated: usize,
    max_tokens: usize,
    ignore_eos: bool,
    sampler: Sampler,
    decoder: StreamDecoder<Arc<Tokenizer>>,
    stop: StopMatcher,
    /// A stop string ended the output (nothing after it may be released).
    stopped: bool,
    /// Output not yet handed to the client's channel.
    outbox: Piece,
    pieces: mpsc::Sender<Piece>,
    done: Option<oneshot::Sender<Result<Finished, JobError>>>,
    /// Request metrics (TTFT, inter-token latency, KV cache); an unfinished one counts as an error.
    metrics: Option<telemetry::Generation>,
}

struct Engine {
    model: Model,
    experts: Box<dyn ExpertBackend>,
    tokenizer: Arc<Tokenizer>,
    /// Tokens that end a generation (EOS, EOT).
    end_tokens: Vec<u32>,
    ctx_size: usize,
    max_active: usize,
    admit_rx: mpsc::Receiver<GenerationJob>,
    active: Arc<AtomicUsize>,
    seqs: Vec<Sequence>,
    /// KV of earlier prompts' prefixes (the cache of `--cache-tokens`).
    prefix: PrefixCache,
    /// Draft tokens verified per decode step (0 = no speculative decoding).
    draft_max: usize,
}

impl Engine {
    #[allow(clippy::too_many_arguments)] // each is one owned part of the engine
    fn new(
        model: Model,
        experts: Box<dyn ExpertBackend>,
        tokenizer: Arc<Tokenizer>,
        end_tokens: Vec<u32>,
        limits: &EngineLimits,
        admit_rx: mpsc::Receiver<GenerationJob>,
        active: Arc<AtomicUsize>,
    ) -> Self {
        Self {
            model,
            experts,
            tokenizer,
            end_tokens,
            ctx_size: limits.ctx_size,
            max_active: limits.max_active.max(1),
            admit_rx,
            active,
            seqs: Vec::new(),
            prefix: PrefixCache::new(limits.cache_tokens),
            draft_max: limits.draft_max,
        }
    }

    fn run(mut self) {
        loop {
            if self.seqs.is_empty() {
                self.active.store(0, Ordering::SeqCst);
                match self.admit_rx.blocking_recv() {
                    Some(job) => self.admit(job),
                    None => return,
                }
            }
            while self.seqs.len() < self.max_active {
                match self.admit_rx.try_recv() {
                    Ok(job) => self.admit(job),
                    Err(_) => break,
                }
            }
            // A client that went away frees its sequence (and KV cache) now.
            self.seqs.retain(|s| !s.pieces.is_closed());
            self.active.store(self.seqs.len(), Ordering::SeqCst);
            if !self.seqs.is_empty() {
                if let Err(payload) = std::panic::catch_unwind(AssertUnwindSafe(|| self.step())) {
                    self.recover_from_panic(payload.as_ref());
                }
            }
        }
    }

    /// After a step panicked: fails every request in flight (their caches and samplers may
    /// be half-updated), drops all per-sequence state and lets the loop go on. The model is
    /// read-only and the expert backends start each layer afresh in `begin`.
    fn recover_from_panic(&mut self, payload: &(dyn std::any::Any + Send)) {
        let reason = payload
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "a non-string panic payload".into());
        eprintln!(
            "engine: a step panicked ({reason}); failing its {} requests in flight and going on",
            self.seqs.len()
        );
        for mut s in self.seqs.drain(..) {
            if let Some(done) = s.done.take() {
                let _ = done.send(Err(JobError::panicked(&reason)));
            }
        }
        self.active.store(0, Ordering::SeqCst);
    }

    fn admit(&mut self, job: GenerationJob) {
        let GenerationJob {
            prompt,
            max_tokens,
            sampling,
            stop,
            ignore_eos,
            cache_prompt,
            pieces,
            done,
        } = job;
        let mut metrics = telemetry::Generation::start(prompt.len());
        let mut cache = KvCache::new(&self.model.cfg, self.ctx_size);
        let cached = if cache_prompt {
            // A failed restore leaves the cache empty: the prompt is computed in full.
            match self.prefix.restore(&prompt, &mut cache) {
                Ok(reused) => reused.tokens,
                Err(e) => {
                    eprintln!("engine: prefix cache not used: {e}");
                    0
                }
            }
        } else {
            0
        };
        metrics.prompt_cached(cached);
        self.seqs.push(Sequence {
            metrics: Some(metrics),
            history: prompt.clone(),
            prompt,
            prefilled: cached,
            cached,
            cache_prompt,
            cache,
            next_input: None,
            draft: Vec::new(),
            feed: Vec::new(),
            generated: 0,
            max_tokens,
            ignore_eos,
            sampler: Sampler::new(sampling),
            decoder: StreamDecoder::new(self.tokenizer.clone()),
            stop: StopMatcher::new(stop),
            stopped: false,
            outbox: Piece::default(),
            pieces,
            done: Some(done),
        });
    }

    /// One forward call over every active sequence.
    fn step(&mut self) {
        let mut budget = PREFILL_TOKENS_PER_STEP_MAX;
        for s in &mut self.seqs {
            s.feed.clear();
            s.draft.clear();
            if let Some(t) = s.next_input {
                s.feed.push(t);
                if self.draft_max > 0 {
                    // Drafts only where the cache has room for them and the token after.
                    let room = s.cache.capacity().saturating_sub(s.cache.len() + 2);
                    s.draft = ngram_draft(&s.history, self.draft_max.min(room));
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
                });
            }
        }
        if batch.is_empty() {
            return;
        }
        let result = self
            .model
            .forward(&mut batch, self.experts.as_mut(), &mut NoObserver);
        drop(batch);
        let mut ended = vec![false; self.seqs.len()];
        match result {
            Err(e) => {
                // Non-finite values name the batch rows holding them: only their sequences
                // fail. The others' caches were left as they were; they run again next step.
                let culprits = self.sequences_of_rows(&e, &in_batch);
                let failing = culprits.as_deref().unwrap_or(&in_batch);
                if culprits.is_some() {
                    eprintln!(
                        "engine: {e}; failing {} of the step's {} sequences, retrying the others",
                        failing.len(),
                        in_batch.len()
                    );
                } else {
                    // The step failed as a whole (e.g. an expert node without a replica died):
                    // every sequence in it fails; the others go on.
                    eprintln!("engine: a step of {} sequences failed: {e}", in_batch.len());
                }
                let err = JobError::from_runtime(&e);
                for &i in failing {
                    if let Some(done) = self.seqs[i].done.take() {
                        let _ = done.send(Err(err.clone()));
                    }
                    ended[i] = true;
                }
            }
            Ok(logits) => {
                let vocab = self.model.cfg.vocab;
                for (&i, logits) in in_batch.iter().zip(&logits) {
                    let end_tokens = &self.end_tokens;
                    let s = &mut self.seqs[i];
                    if let Some(m) = &mut s.metrics {
                        m.kv_cache(s.cache.len(), s.cache.capacity(), s.cache.bytes());
                    }
                    let decoding = s.next_input.take().is_some();
                    if !decoding {
                        s.prefilled += s.feed.len();
                        if s.prefilled < s.prompt.len() {
                            continue;
                        }
                        if s.cache_prompt {
                            self.prefix.insert(&s.prompt, &s.cache);
                        }
                    }
                    // One row per fed token with drafts, else one: sampled in order exactly as
                    // plain decoding would; a drafted token equal to the sample is accepted
                    // (its position is already cached), the first other sample is the next
                    // input and the positions of the drafts after it are cut.
                    let fed_end = s.cache.len();
                    let n_draft = s.draft.len();
                    for (j, row) in logits.chunks_exact(vocab).enumerate() {
                        let cached = fed_end - (n_draft - j);
                        if let Some(finish) = s.on_logits(row, end_tokens, cached) {
                            s.finish(finish);
                            ended[i] = true;
                            break;
                        }
                        if j < n_draft && s.next_input == Some(s.draft[j]) {
                            if let Some(m) = &mut s.metrics {
                                m.draft_accepted();
                            }
                            continue;
                        }
                        s.cache.truncate(cached);
                        break;
                    }
                    if decoding {
                        if let Some(m) = &mut s.metrics {
                            m.decode_step(n_draft);
                        }
                    }
                }
            }
        }
        for (i, s) in self.seqs.iter_mut().enumerate() {
            if !ended[i] && !s.outbox.is_empty() {
                match s.pieces.try_send(std::mem::take(&mut s.outbox)) {
                    Ok(()) => {}
                    // A slow reader: keep the text and send it with the next piece.
                    Err(mpsc::error::TrySendError::Full(p)) => s.outbox = p,
                    Err(mpsc::error::TrySendError::Closed(_)) => ended[i] = true,
                }
            }
        }
        let mut i = 0;
        self.seqs.retain(|_| {
            i += 1;
            !ended[i - 1]
        });
    }
}

impl Engine {
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

impl Sequence {
    /// Samples the next token from the last position's logits; returns why it ends, if it does.
    /// `cached`: the positions the cache holds for this sequence's tokens so far (the cache
    /// may hold draft positions beyond them).
    fn on_logits(
        &mut self,
        logits: &[f32],
        end_tokens: &[u32],
        cached: usize,
    ) -> Option<FinishReason> {
        let t = self.sampler.sample(logits, &self.history);
        if !self.ignore_eos && end_tokens.contains(&t) {
            return Some(FinishReason::Stop);
        }
        self.generated += 1;
        if let Some(m) = &mut self.metrics {
            m.token();
        }
        self.history.push(t);
        self.outbox.token_ids.push(t);
        let text = self.decoder.push(t);
        let out = self.stop.push(&text);
        self.outbox.text.push_str(&out.release);
        if out.stopped {
            self.stopped = true;
            return Some(FinishReason::Stop);
        }
        if self.generated >= self.max_tokens || cached >= self.cache.capacity() {
            return Some(FinishReason::Length);
        }
        self.next_input = Some(t);
        None
    }

    /// Releases held text and reports the end to the client.
    fn finish(&mut self, mut finish: FinishReason) {
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
        let usage = Usage {
            prompt_tokens: self.prompt.len(),
            completion_tokens: self.generated,
            cached_tokens: self.cached,
        };
        if let Some(done) = self.done.take() {
            let _ = done.send(Ok(Finished {
                tail: std::mem::take(&mut self.outbox),
                finish,
                usage,
            }));
        }
        if let Some(m) = self.metrics.take() {
            m.finish();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use moe_model::forward::LocalExperts;

    use super::*;

    /// What a test backend does on top of computing the experts in-process.
    #[derive(Clone, Copy, PartialEq)]
    enum Fault {
        /// Panic in the first `begin`.
        PanicOnce,
        /// Write a NaN into batch row 0 of the first MoE output.
        NanInRowZeroOnce,
    }

    struct FaultyExperts {
        inner: LocalExperts,
        fault: Option<Fault>,
    }

    impl ExpertBackend for FaultyExperts {
        fn begin(
            &mut self,
            model: &Model,
            layer: usize,
            h: &[f32],
            routing: &moe_model::forward::Routing,
        ) -> Result<(), ModelError> {
            if self.fault == Some(Fault::PanicOnce) {
                self.fault = None;
                panic!("injected test panic");
            }
            self.inner.begin(model, layer, h, routing)
        }

        fn finish(
            &mut self,
            model: &Model,
            layer: usize,
            out: &mut [f32],
        ) -> Result<(), ModelError> {
            self.inner.finish(model, layer, out)?;
            if self.fault == Some(Fault::NanInRowZeroOnce) {
                self.fault = None;
                out[3] = f32::NAN;
            }
            Ok(())
        }
    }

    /// An engine on the tiny reference model with `fault`, running on its own thread, and
    /// the sender its jobs go to. Dropping the sender stops it.
    fn start_test_engine(
        fault: Fault,
    ) -> (mpsc::Sender<GenerationJob>, std::thread::JoinHandle<()>) {
        let (admit, admit_rx) = mpsc::channel(8);
        // The engine is not Send (its expert backend need not be): build it on its thread.
        let thread = std::thread::spawn(move || {
            let path = Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../../shared/fixtures/kimi-k25-tiny/kimi-k25-tiny-BF16.gguf");
            let model = Model::open(&path).expect("the tiny reference model");
            let tokenizer = Arc::new(Tokenizer::from_gguf(model.file()).unwrap());
            let limits = EngineLimits {
                max_active: 4,
                queue: 8,
                ctx_size: 64,
                cache_tokens: 0,
                draft_max: 0,
            };
            let engine = Engine::new(
                model,
                Box::new(FaultyExperts {
                    inner: LocalExperts::default(),
                    fault: Some(fault),
                }),
                tokenizer,
                Vec::new(),
                &limits,
                admit_rx,
                Arc::new(AtomicUsize::new(0)),
            );
            engine.run()
        });
        (admit, thread)
    }

    fn job(prompt: &[u32]) -> (GenerationJob, JobReceiver) {
        GenerationJob::new(
            prompt.to_vec(),
            4,
            SamplingParams::default(),
            Vec::new(),
            true,
        )
    }

    /// Waits for a job's end: its tokens, or its error.
    fn outcome(mut rx: JobReceiver) -> Result<Vec<u32>, JobError> {
        let mut ids = Vec::new();
        while let Some(p) = rx.pieces.blocking_recv() {
            ids.extend(p.token_ids);
        }
        let f = rx
            .done
            .blocking_recv()
            .expect("the engine dropped the job without an answer (did its thread die?)")?;
        ids.extend(f.tail.token_ids);
        Ok(ids)
    }

    #[test]
    fn a_panicking_step_fails_its_requests_and_the_engine_goes_on() {
        let (admit, thread) = start_test_engine(Fault::PanicOnce);
        let (j, rx) = job(&[1022, 447, 283, 72]);
        admit.blocking_send(j).unwrap();
        let err = outcome(rx).expect_err("the panicking step's request must fail");
        assert_eq!(err.code, "engine_panic", "{err:?}");
        assert_eq!(err.status, StatusCode::INTERNAL_SERVER_ERROR);
        assert!(err.message.contains("injected test panic"), "{err:?}");
        // The engine still serves.
        let (j, rx) = job(&[1022, 447, 283, 72]);
        admit
            .blocking_send(j)
            .expect("the engine must still take jobs after a panic");
        assert_eq!(outcome(rx).expect("a later request succeeds").len(), 4);
        drop(admit);
        thread
            .join()
            .expect("the engine thread ends without panicking");
    }

    #[test]
    fn non_finite_values_fail_only_the_sequence_they_come_from() {
        let (admit, thread) = start_test_engine(Fault::NanInRowZeroOnce);
        // Both queued before the first step, so they share it; row 0 is the first prompt's.
        let (a, rx_a) = job(&[1022, 447, 283, 72]);
        let (b, rx_b) = job(&[1022, 65, 266, 985, 422]);
        admit.blocking_send(a).unwrap();
        admit.blocking_send(b).unwrap();
        let err = outcome(rx_a).expect_err("the sequence with the NaN must fail");
        assert_eq!(err.code, "non_finite_values", "{err:?}");
        assert!(
            err.message.contains("non-finite") && err.message.contains("MoE output of layer"),
            "{err:?}"
        );
        let api = ApiError::from(err);
        assert_eq!(api.status, StatusCode::INTERNAL_SERVER_ERROR);
        let b_tokens = outcome(rx_b).expect("the other sequence of the step goes on");
        // ... with exactly the tokens it gets alone.
        let (c, rx_c) = job(&[1022, 65, 266, 985, 422]);
        admit.blocking_send(c).unwrap();
        assert_eq!(b_tokens, outcome(rx_c).unwrap());
        drop(admit);
        thread.join().unwrap();
    }

    #[test]
    fn job_errors_map_to_statuses() {
        let peer = JobError::from_runtime(&ModelError::PeerFailed {
            node: "e2".into(),
            reason: "connection lost".into(),
        });
        assert_eq!(peer.status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(peer.message.contains("e2"));
        let nan = JobError::from_runtime(&ModelError::NonFinite {
            what: "the output logits".into(),
            value: f32::NAN,
            rows: vec![0],
        });
        let body = ApiError::from(nan).body();
        assert_eq!(body["error"]["code"], "non_finite_values");
        assert!(body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("non-finite values (NaN) in the output logits"));
    }
}
