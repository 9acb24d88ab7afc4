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
//! Decides: scheduling, sequence lifetime, stop conditions. Leaves request parsing and
//! validation (prompt length, `max_tokens`) to the HTTP handlers, which submit only jobs
//! that fit the context.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use anyhow::Context;
use moe_runtime::forward::{ExpertBackend, KvCache, NoObserver, SeqInput};
use moe_runtime::model::Model;
use moe_runtime::sampling::{Sampler, SamplingParams};
use moe_runtime::tokenizer::{StreamDecoder, Tokenizer};
use tokio::sync::{mpsc, oneshot};

use super::openai::{FinishReason, Usage};
use super::stop::StopMatcher;
use crate::cli::common::ModelArgs;
use crate::cluster::args::RouterArgs;
use crate::cluster::remote_experts::LinkHealth;
use crate::telemetry;

/// Sequences decoded together (the default of `--max-active-sequences`).
pub const MAX_ACTIVE_SEQUENCES: usize = 16;
/// Jobs waiting for a sequence slot before new requests get 429 (default of `--admission-queue`).
pub const ADMISSION_QUEUE_MAX: usize = 64;
/// Prompt tokens processed per step, over all prompts being prefilled.
pub const PREFILL_TOKENS_PER_STEP_MAX: usize = crate::cli::generate::PREFILL_CHUNK_TOKENS;
/// Text pieces buffered for one client; beyond that the engine coalesces them.
pub const PIECES_PER_REQUEST_MAX: usize = 16;

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
    pieces: mpsc::Sender<Piece>,
    done: oneshot::Sender<Result<Finished, String>>,
}

/// The client side of a job: pieces as they come, then the end. Dropping it cancels the job.
#[derive(Debug)]
pub struct JobReceiver {
    /// Text pieces; closed when the job ends.
    pub pieces: mpsc::Receiver<Piece>,
    /// The end: how it finished, or why it failed.
    pub done: oneshot::Receiver<Result<Finished, String>>,
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
                let engine = Engine {
                    model,
                    experts,
                    tokenizer,
                    end_tokens,
                    ctx_size: limits.ctx_size,
                    max_active: limits.max_active.max(1),
                    admit_rx,
                    active: active_engine,
                    seqs: Vec::new(),
                };
                Ok((engine, info, health))
            })();
            match loaded {
                Err(e) => {
                    let _ = ready_tx.send(Err(e));
                }
                Ok((engine, info, health)) => {
                    if ready_tx.send(Ok((info, health))).is_ok() {
                        engine.run();
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
    cache: KvCache,
    /// Sampled but not yet fed to the model.
    next_input: Option<u32>,
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
    done: Option<oneshot::Sender<Result<Finished, String>>>,
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
}

impl Engine {
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
                self.step();
            }
        }
    }

    fn admit(&mut self, job: GenerationJob) {
        let GenerationJob {
            prompt,
            max_tokens,
            sampling,
            stop,
            ignore_eos,
            pieces,
            done,
        } = job;
        self.seqs.push(Sequence {
            metrics: Some(telemetry::Generation::start(prompt.len())),
            history: prompt.clone(),
            prompt,
            prefilled: 0,
            cache: KvCache::new(&self.model.cfg, self.ctx_size),
            next_input: None,
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
            if let Some(t) = s.next_input {
                s.feed.push(t);
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
                    all_logits: false,
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
                // The step failed as a whole (e.g. an expert node without a replica died):
                // every sequence in it fails; the others go on.
                eprintln!("engine: a step of {} sequences failed: {e}", in_batch.len());
                for &i in &in_batch {
                    if let Some(done) = self.seqs[i].done.take() {
                        let _ = done.send(Err(e.to_string()));
                    }
                    ended[i] = true;
                }
            }
            Ok(logits) => {
                for (&i, logits) in in_batch.iter().zip(&logits) {
                    let end_tokens = &self.end_tokens;
                    let s = &mut self.seqs[i];
                    if let Some(m) = &mut s.metrics {
                        m.kv_cache(s.cache.len(), s.cache.capacity(), s.cache.bytes());
                    }
                    if s.next_input.take().is_none() {
                        s.prefilled += s.feed.len();
                        if s.prefilled < s.prompt.len() {
                            continue;
                        }
                    }
                    if let Some(finish) = s.on_logits(logits, end_tokens) {
                        s.finish(finish);
                        ended[i] = true;
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

impl Sequence {
    /// Samples the next token from the last position's logits; returns why it ends, if it does.
    fn on_logits(&mut self, logits: &[f32], end_tokens: &[u32]) -> Option<FinishReason> {
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
        if self.generated >= self.max_tokens || self.cache.len() >= self.cache.capacity() {
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
