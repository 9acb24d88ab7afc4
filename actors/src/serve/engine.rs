//! The serving thread: one OS thread that owns the model, the expert backend and the
//! generation engine ([`moe_engine::Engine`]), and runs continuous batching for HTTP clients.
//!
//! Each loop it (1) admits waiting jobs from the bounded admission queue while fewer than
//! `max_active` sequences run, (2) drops every sequence whose client went away, (3) runs one
//! engine step (one batched forward call over every active sequence: see the engine's docs
//! for batching, prefix reuse, drafts and stop rules), and (4) hands each client its new text
//! and the end of finished ones.
//!
//! Failures stay local. A sequence that fails gets an error naming the cause ([`JobError`]:
//! 503 when an expert node without a replica is down, else 500); the engine goes on. A panic
//! inside a step is caught: every in-flight request fails with a 500 naming the panic, all
//! per-sequence state is dropped, and the thread keeps serving new requests with the same
//! model and expert backend. Should the loop itself panic (outside a step), the process exits
//! with status [`ENGINE_PANIC_EXIT_CODE`] so that a supervisor restarts it, instead of
//! lingering with every request answered 503.
//!
//! Decides: admission, delivery, cancellation, panic recovery. Leaves request parsing and
//! validation (prompt length, `max_tokens`) to the HTTP handlers, which submit only jobs
//! that fit the context.

use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use anyhow::Context;
use axum::http::StatusCode;
pub use moe_engine::Piece;
use moe_engine::{Delivery, Engine, EngineConfig, EngineError, Request, TokenConstraint, Tracker};
use moe_model::forward::ExpertBackend;
use moe_model::model::Model;
use moe_model::sampling::SamplingParams;
use moe_model::tokenizer::Tokenizer;
use moe_model::ModelError;
use tokio::sync::{mpsc, oneshot};

use super::api_error::ApiError;
use super::logprobs::{token_logprob, TokenLogprob};
use super::openai::{FinishReason, Usage};
use crate::options::ModelArgs;
use crate::options::RouterArgs;
use crate::router::remote_experts::LinkHealth;
use crate::telemetry;

/// Sequences decoded together (the default of `--max-active-sequences`).
pub const MAX_ACTIVE_SEQUENCES: usize = 16;
/// Jobs waiting for a sequence slot before new requests get 429 (default of `--admission-queue`).
pub const ADMISSION_QUEUE_MAX: usize = 64;
/// Prompt tokens processed per step, over all prompts being prefilled.
pub const PREFILL_TOKENS_PER_STEP_MAX: usize = moe_engine::engine::PREFILL_TOKENS_PER_STEP_DEFAULT;
/// Text pieces buffered for one client; beyond that the engine coalesces them.
pub const PIECES_PER_REQUEST_MAX: usize = 16;
/// Exit status of the process when the engine loop panics outside a step (EX_SOFTWARE).
pub const ENGINE_PANIC_EXIT_CODE: i32 = 70;

/// A piece of one choice's output.
#[derive(Debug)]
pub struct Chunk {
    /// Which choice (0 to n − 1).
    pub index: usize,
    /// Text and token ids.
    pub piece: Piece,
    /// The log-probabilities of `piece`'s tokens, when the job asked for them.
    pub logprobs: Vec<TokenLogprob>,
}

/// How one choice of a job ended.
#[derive(Debug, Clone)]
pub struct Finished {
    /// Text not yet sent as a piece.
    pub tail: Piece,
    /// The log-probabilities of `tail`'s tokens, when the job asked for them.
    pub logprobs: Vec<TokenLogprob>,
    /// The stop string that ended the output, if one did.
    pub stop_string: Option<String>,
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
    /// The error of a request that failed with `e`.
    fn from_engine(e: &EngineError) -> Self {
        match e {
            EngineError::Model(e) => Self::from_model(e),
            EngineError::Panicked(reason) => Self::panicked(reason),
            EngineError::InvalidRequest(message) => Self {
                status: StatusCode::BAD_REQUEST,
                code: "invalid_request",
                message: message.clone(),
            },
            EngineError::Constraint(_) => Self {
                status: StatusCode::INTERNAL_SERVER_ERROR,
                code: "constraint_error",
                message: e.to_string(),
            },
        }
    }

    /// The error of a request whose step failed with `e`.
    fn from_model(e: &ModelError) -> Self {
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
    /// Log-probabilities with this many alternatives per token (`None`: none).
    pub top_logprobs: Option<u32>,
    /// One output constraint per choice (empty: unconstrained); its length is the number
    /// of choices when not empty.
    pub constraints: Vec<Box<dyn TokenConstraint>>,
    /// Choices (n); choice i samples with seed `sampling.seed + i`.
    pub n: usize,
    /// Decode control tokens as their text (tool-call markers to parse).
    pub render_control: bool,
    pieces: mpsc::Sender<Chunk>,
    done: Vec<oneshot::Sender<Result<Finished, JobError>>>,
}

impl std::fmt::Debug for GenerationJob {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GenerationJob")
            .field("prompt_tokens", &self.prompt.len())
            .field("max_tokens", &self.max_tokens)
            .field("n", &self.n)
            .field("constrained", &!self.constraints.is_empty())
            .finish_non_exhaustive()
    }
}

/// The client side of a job: pieces as they come (of every choice), then each choice's
/// end. Dropping it cancels the job.
#[derive(Debug)]
pub struct JobReceiver {
    /// Text pieces; closed when every choice has ended.
    pub pieces: mpsc::Receiver<Chunk>,
    /// Each choice's end: how it finished, or why it failed.
    pub done: Vec<oneshot::Receiver<Result<Finished, JobError>>>,
}

impl GenerationJob {
    /// A job of `n` choices (at least 1) and the receiver its client reads.
    pub fn with_choices(
        prompt: Vec<u32>,
        max_tokens: usize,
        sampling: SamplingParams,
        stop: Vec<String>,
        ignore_eos: bool,
        n: usize,
    ) -> (Self, JobReceiver) {
        let n = n.max(1);
        let (ptx, prx) = mpsc::channel(PIECES_PER_REQUEST_MAX * n);
        let (dtx, drx): (Vec<_>, Vec<_>) = (0..n).map(|_| oneshot::channel()).unzip();
        (
            Self {
                prompt,
                max_tokens,
                sampling,
                stop,
                ignore_eos,
                cache_prompt: true,
                top_logprobs: None,
                constraints: Vec::new(),
                n,
                render_control: false,
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
        compute: model_args.compute,
        kv_type: model_args.kv_type,
    };
    let cluster = cluster.clone();
    let (admit, admit_rx) = mpsc::channel(limits.queue.max(1));
    let active = Arc::new(AtomicUsize::new(0));
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let active_engine = active.clone();
    std::thread::Builder::new()
        .name("engine".into())
        .spawn(move || {
            let loaded = (|| -> anyhow::Result<(Server, ModelInfo, Option<LinkHealth>)> {
                let model = model_args.load_for(Some(&cluster), moe_kernels::NumericMode::Fast)?;
                let tokenizer = Arc::new(Tokenizer::from_gguf(model.file())?);
                let (experts, health) = cluster.backend(&model, model_args.compute.handle(&model)?)?;
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
                let engine =
                    Server::new(model, experts, tokenizer, &limits, admit_rx, active_engine);
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

/// A client's side of a sequence (one choice): where its output goes, its log-probabilities
/// not yet sent, and its request metrics (time to first token, inter-token latency, KV
/// cache; an unfinished one counts as an error).
struct Client {
    index: usize,
    pieces: mpsc::Sender<Chunk>,
    done: Option<oneshot::Sender<Result<Finished, JobError>>>,
    metrics: Option<telemetry::Generation>,
    top_logprobs: Option<u32>,
    logprobs: Vec<TokenLogprob>,
}

impl Client {
    fn end(mut self, mut result: Result<Finished, JobError>) {
        if let Ok(f) = &mut result {
            f.logprobs = std::mem::take(&mut self.logprobs);
        }
        if result.is_ok() {
            if let Some(m) = self.metrics.take() {
                m.finish();
            }
        }
        if let Some(done) = self.done.take() {
            let _ = done.send(result);
        }
    }
}

impl Tracker for Client {
    fn sampled(&mut self, row: &[f32], token: u32) {
        if let Some(k) = self.top_logprobs {
            self.logprobs.push(token_logprob(row, token, k as usize));
        }
    }
    fn prompt_cached(&mut self, tokens: usize) {
        if let Some(m) = self.metrics.as_mut() {
            m.prompt_cached(tokens);
        }
    }
    fn token(&mut self) {
        if let Some(m) = self.metrics.as_mut() {
            m.token();
        }
    }
    fn kv_cache(&mut self, used: usize, capacity: usize, bytes: usize) {
        if let Some(m) = self.metrics.as_mut() {
            m.kv_cache(used, capacity, bytes);
        }
    }
    fn decode_step(&mut self, drafted: usize) {
        if let Some(m) = self.metrics.as_mut() {
            m.decode_step(drafted);
        }
    }
    fn draft_accepted(&mut self) {
        self.metrics
            .as_mut()
            .map(telemetry::Generation::draft_accepted);
    }
}

/// The serving thread's state.
struct Server {
    model: Model,
    experts: Box<dyn ExpertBackend>,
    engine: Engine<Client>,
    max_active: usize,
    admit_rx: mpsc::Receiver<GenerationJob>,
    /// The next job, taken from the queue but not yet admitted (its `n` choices do not fit
    /// beside the sequences running).
    waiting: Option<GenerationJob>,
    active: Arc<AtomicUsize>,
}

impl Server {
    fn new(
        model: Model,
        experts: Box<dyn ExpertBackend>,
        tokenizer: Arc<Tokenizer>,
        limits: &EngineLimits,
        admit_rx: mpsc::Receiver<GenerationJob>,
        active: Arc<AtomicUsize>,
    ) -> Self {
        let cfg = EngineConfig {
            ctx_size: limits.ctx_size,
            prefill_tokens_per_step: PREFILL_TOKENS_PER_STEP_MAX,
            cache_tokens: limits.cache_tokens,
            draft_max: limits.draft_max,
        };
        Self {
            engine: Engine::new(&model, tokenizer, cfg),
            model,
            experts,
            max_active: limits.max_active.max(1),
            admit_rx,
            waiting: None,
            active,
        }
    }

    fn run(mut self) {
        loop {
            if self.engine.is_empty() && self.waiting.is_none() {
                self.active.store(0, Ordering::SeqCst);
                match self.admit_rx.blocking_recv() {
                    Some(job) => self.waiting = Some(job),
                    None => return,
                }
            }
            // Each choice of a job counts as a sequence; a job larger than the limit runs
            // alone.
            loop {
                if self.waiting.is_none() {
                    // A job leaves the admission queue only when a sequence slot is free, so
                    // the queue's bound (and its 429s) counts every job not yet running; a
                    // job of n choices may then wait here for n slots.
                    if !self.engine.is_empty() && self.engine.len() >= self.max_active {
                        break;
                    }
                    match self.admit_rx.try_recv() {
                        Ok(job) => self.waiting = Some(job),
                        Err(_) => break,
                    }
                }
                let n = self.waiting.as_ref().map_or(1, |j| j.n);
                if !self.engine.is_empty() && self.engine.len() + n > self.max_active {
                    break;
                }
                if let Some(job) = self.waiting.take() {
                    self.admit(job);
                }
            }
            // A client that went away frees its sequence (and KV cache) now.
            self.engine.retain(|c| !c.pieces.is_closed());
            self.active.store(self.engine.len(), Ordering::SeqCst);
            if !self.engine.is_empty() {
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
        let clients = self.engine.drain();
        eprintln!(
            "engine: a step panicked ({reason}); failing its {} requests in flight and going on",
            clients.len()
        );
        for client in clients {
            client.end(Err(JobError::panicked(&reason)));
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
            top_logprobs,
            constraints,
            n: _,
            render_control,
            pieces,
            done,
        } = job;
        let mut constraints = constraints.into_iter();
        let group = done
            .into_iter()
            .enumerate()
            .map(|(i, done)| {
                let client = Client {
                    index: i,
                    metrics: Some(telemetry::Generation::start(prompt.len())),
                    pieces: pieces.clone(),
                    done: Some(done),
                    top_logprobs,
                    logprobs: Vec::new(),
                };
                let request = Request {
                    prompt: prompt.clone(),
                    max_tokens,
                    sampling: SamplingParams {
                        seed: sampling.seed.wrapping_add(i as u64),
                        ..sampling.clone()
                    },
                    stop: stop.clone(),
                    ignore_eos,
                    cache_prompt,
                    constraint: constraints.next(),
                    render_control,
                };
                (request, client)
            })
            .collect();
        if let Err(refused) = self.engine.admit_group(&self.model, group) {
            for (client, e) in refused {
                client.end(Err(JobError::from_engine(&e)));
            }
        }
    }

    /// One engine step, then every client's output.
    fn step(&mut self) {
        for ended in self.engine.step(&self.model, self.experts.as_mut()) {
            let result = match ended.result {
                Ok(f) => Ok(Finished {
                    tail: f.tail,
                    logprobs: Vec::new(),
                    stop_string: f.stop_string,
                    finish: match f.finish {
                        moe_engine::FinishReason::Stop => FinishReason::Stop,
                        moe_engine::FinishReason::Length => FinishReason::Length,
                    },
                    usage: Usage {
                        prompt_tokens: f.usage.prompt_tokens,
                        completion_tokens: f.usage.completion_tokens,
                        cached_tokens: f.usage.cached_tokens,
                    },
                }),
                Err(e) => {
                    eprintln!("engine: a sequence failed: {e}");
                    Err(JobError::from_engine(&e))
                }
            };
            ended.tag.end(result);
        }
        self.engine.deliver(|client, piece| {
            let chunk = Chunk {
                index: client.index,
                piece,
                logprobs: std::mem::take(&mut client.logprobs),
            };
            match client.pieces.try_send(chunk) {
                Ok(()) => Delivery::Sent,
                // A slow reader: the engine keeps the text and sends it with the next piece.
                Err(mpsc::error::TrySendError::Full(c)) => {
                    client.logprobs = c.logprobs;
                    Delivery::Later(c.piece)
                }
                Err(mpsc::error::TrySendError::Closed(_)) => Delivery::Gone,
            }
        });
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
        fault: Option<Fault>,
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
            let engine = Server::new(
                model,
                Box::new(FaultyExperts {
                    inner: LocalExperts::default(),
                    fault,
                }),
                tokenizer,
                &limits,
                admit_rx,
                Arc::new(AtomicUsize::new(0)),
            );
            engine.run()
        });
        (admit, thread)
    }

    fn job(prompt: &[u32]) -> (GenerationJob, JobReceiver) {
        GenerationJob::with_choices(
            prompt.to_vec(),
            4,
            SamplingParams::default(),
            Vec::new(),
            true,
            1,
        )
    }

    /// Waits for a job's end: its tokens, or its error.
    fn outcome(mut rx: JobReceiver) -> Result<Vec<u32>, JobError> {
        let mut ids = Vec::new();
        while let Some(p) = rx.pieces.blocking_recv() {
            ids.extend(p.piece.token_ids);
        }
        let f = rx
            .done
            .remove(0)
            .blocking_recv()
            .expect("the engine dropped the job without an answer (did its thread die?)")?;
        ids.extend(f.tail.token_ids);
        Ok(ids)
    }

    #[test]
    fn a_panicking_step_fails_its_requests_and_the_engine_goes_on() {
        let (admit, thread) = start_test_engine(Some(Fault::PanicOnce));
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
        let (admit, thread) = start_test_engine(Some(Fault::NanInRowZeroOnce));
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

    /// Every choice's token ids, their logprobs, in choice order.
    fn choices(mut rx: JobReceiver) -> Vec<(Vec<u32>, Vec<TokenLogprob>)> {
        let mut out: Vec<(Vec<u32>, Vec<TokenLogprob>)> = vec![Default::default(); rx.done.len()];
        while let Some(c) = rx.pieces.blocking_recv() {
            out[c.index].0.extend(c.piece.token_ids);
            out[c.index].1.extend(c.logprobs);
        }
        for (i, done) in rx.done.into_iter().enumerate() {
            let f = done.blocking_recv().unwrap().expect("the choice succeeds");
            out[i].0.extend(f.tail.token_ids);
            out[i].1.extend(f.logprobs);
        }
        out
    }

    #[test]
    fn jobs_of_several_choices_fit_the_active_limit_and_carry_logprobs() {
        // max_active is 4: two jobs of 3 choices cannot run together; the second waits for
        // room (admission counts choices) and still runs (it does not starve).
        let (admit, thread) = start_test_engine(None);
        let sampling = SamplingParams {
            temperature: 1.0,
            seed: 3,
            ..SamplingParams::default()
        };
        let mut rxs = Vec::new();
        for _ in 0..2 {
            let (mut j, rx) = GenerationJob::with_choices(
                vec![1022, 447, 283, 72],
                4,
                sampling.clone(),
                Vec::new(),
                true,
                3,
            );
            j.top_logprobs = Some(2);
            admit.blocking_send(j).unwrap();
            rxs.push(rx);
        }
        let a = choices(rxs.remove(0));
        let b = choices(rxs.remove(0));
        assert_eq!(a.len(), 3);
        for (ids, lps) in &a {
            assert_eq!(ids.len(), 4);
            assert_eq!(
                lps.iter().map(|l| l.token).collect::<Vec<_>>(),
                *ids,
                "one logprob per token, in order"
            );
            assert!(lps.iter().all(|l| l.top.len() == 2 && l.logprob <= 0.0));
        }
        let ids =
            |c: &[(Vec<u32>, Vec<TokenLogprob>)]| c.iter().map(|x| x.0.clone()).collect::<Vec<_>>();
        assert_eq!(ids(&a), ids(&b), "same seed, same choices");
        assert_ne!(a[0].0, a[1].0, "choice i samples with seed + i");
        drop(admit);
        thread.join().unwrap();
    }

    #[test]
    fn job_errors_map_to_statuses() {
        let peer = JobError::from_model(&ModelError::PeerFailed {
            node: "e2".into(),
            reason: "connection lost".into(),
        });
        assert_eq!(peer.status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(peer.message.contains("e2"));
        let nan = JobError::from_model(&ModelError::NonFinite {
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
