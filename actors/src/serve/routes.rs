//! The HTTP routes and their handlers:
//!
//! ```text
//! POST /v1/completions        prompt as is (text or token ids), JSON or SSE stream
//! POST /v1/chat/completions   messages through the chat template, JSON or SSE stream
//! GET  /v1/models             the one served model
//! GET  /health                200 when the engine runs and every expert node is reachable, else 503
//! GET  /metrics               Prometheus text (when started with --metrics-addr), else 404
//! ```
//!
//! Decides: what a request means (tokens, limits against the context) and how answers are
//! framed. A handler never blocks on the engine: it queues a job with `try_send` (429 when
//! the queue is full) and reads the job's bounded piece channel; dropping that channel, as
//! happens when the client disconnects, frees the sequence in the engine's next step.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{header, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use moe_model::tokenizer::Tokenizer;
use serde::de::DeserializeOwned;
use serde_json::json;

use super::api_error::ApiError;
use super::chat_template::ChatTemplate;
use super::engine::{EngineHandle, GenerationJob, JobReceiver, SubmitError};
use super::http_limits::{self, ApiKey, BodyLimits};
use super::openai::{
    check_prompt_bytes, check_prompt_tokens, parse_json, ChatRequest, CompletionRequest, Endpoint,
    GenerationSettings, PromptInput, ResponseMeta, CHAT_MESSAGES_MAX,
};

/// Largest request body, in bytes (413 beyond).
pub const REQUEST_BODY_BYTES_MAX: usize = 4 << 20;
/// Tokens a completion generates when `max_tokens` is absent (OpenAI's default).
pub const COMPLETION_DEFAULT_MAX_TOKENS: usize = 16;

/// Everything the handlers share.
pub struct AppState {
    /// The engine.
    pub engine: EngineHandle,
    /// The model's tokenizer.
    pub tokenizer: Arc<Tokenizer>,
    /// The chat template.
    pub template: Arc<ChatTemplate>,
    /// The name `/v1/models` lists and responses carry.
    pub model_name: String,
    /// KV cache capacity per sequence (positions).
    pub ctx_size: usize,
    /// Largest `max_tokens` accepted.
    pub max_tokens_limit: usize,
    /// Response ids and seed salt.
    pub next_id: AtomicU64,
}

/// The application: routes, the API key (`/v1/*` only) checked before the body is read
/// within `body`'s limits, shared state.
pub fn app(state: Arc<AppState>, api_key: Option<ApiKey>, body: BodyLimits) -> Router {
    let v1 = Router::new()
        .route("/v1/completions", post(completions))
        .route("/v1/chat/completions", post(chat_completions))
        .route("/v1/models", get(models));
    http_limits::guard(v1, api_key, body)
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(REQUEST_BODY_BYTES_MAX))
        .with_state(state)
}

async fn not_found() -> ApiError {
    ApiError::invalid("no such route", None)
        .with_status(StatusCode::NOT_FOUND)
        .with_code("not_found")
}

async fn health(State(st): State<Arc<AppState>>) -> Response {
    let (active, queued) = (st.engine.active(), st.engine.queued());
    match st.engine.unready_reason() {
        None => Json(json!({ "status": "ok", "active_sequences": active, "queued_requests": queued })).into_response(),
        Some(reason) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({ "status": "unavailable", "reason": reason, "active_sequences": active, "queued_requests": queued })),
        )
            .into_response(),
    }
}

async fn metrics() -> Response {
    match crate::telemetry::render() {
        Some(text) => ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response(),
        None => ApiError::invalid(
            "metrics are off: start the server with --metrics-addr ADDR",
            None,
        )
        .with_status(StatusCode::NOT_FOUND)
        .with_code("metrics_off")
        .into_response(),
    }
}

async fn models(State(st): State<Arc<AppState>>) -> Result<Json<serde_json::Value>, ApiError> {
    Ok(Json(json!({
        "object": "list",
        "data": [{ "id": st.model_name, "object": "model", "created": 0, "owned_by": "moe-node", "max_model_len": st.ctx_size }],
    })))
}

async fn completions(
    State(st): State<Arc<AppState>>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let r = async {
        let req: CompletionRequest = parse_body(body)?;
        if req.echo == Some(true) {
            return Err(ApiError::invalid("echo is not supported", Some("echo")));
        }
        let settings =
            req.gen
                .settings(req.gen.max_tokens, st.max_tokens_limit, fresh_seed(&st))?;
        // Sized against the context before anything is tokenized.
        let tokens = match req.prompt.checked(st.ctx_size, st.tokenizer.vocab_size())? {
            PromptInput::Text(text) => {
                let tok = st.tokenizer.clone();
                tokio::task::spawn_blocking(move || tok.encode_prompt(&text))
                    .await
                    .map_err(|e| ApiError::unavailable(e.to_string()))?
            }
            PromptInput::Tokens(ids) => ids,
        };
        generate(
            &st,
            Endpoint::Completions,
            tokens,
            settings,
            COMPLETION_DEFAULT_MAX_TOKENS,
        )
        .await
    }
    .await;
    r.unwrap_or_else(IntoResponse::into_response)
}

async fn chat_completions(
    State(st): State<Arc<AppState>>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let r = async {
        let req: ChatRequest = parse_body(body)?;
        if req.messages.is_empty() || req.messages.len() > CHAT_MESSAGES_MAX {
            return Err(ApiError::invalid(
                format!(
                    "{} messages given; 1 to {CHAT_MESSAGES_MAX} are accepted",
                    req.messages.len()
                ),
                Some("messages"),
            ));
        }
        let max_tokens = req.max_completion_tokens.or(req.gen.max_tokens);
        let settings = req
            .gen
            .settings(max_tokens, st.max_tokens_limit, fresh_seed(&st))?;
        let messages = req
            .messages
            .iter()
            .map(|m| m.template_value())
            .collect::<Result<Vec<_>, _>>()?;
        let (tok, template, ctx) = (st.tokenizer.clone(), st.template.clone(), st.ctx_size);
        let tokens = tokio::task::spawn_blocking(move || {
            let text = template
                .render(&messages)
                .map_err(|e| ApiError::invalid(e, Some("messages")))?;
            // Sized against the context before it is tokenized.
            check_prompt_bytes(text.len(), ctx)?;
            Ok::<_, ApiError>(tok.encode_prompt(&text))
        })
        .await
        .map_err(|e| ApiError::unavailable(e.to_string()))??;
        generate(&st, Endpoint::Chat, tokens, settings, st.max_tokens_limit).await
    }
    .await;
    r.unwrap_or_else(IntoResponse::into_response)
}

/// Parses a JSON body; every failure is a 4xx with an error object.
fn parse_body<T: DeserializeOwned>(body: Result<Bytes, BytesRejection>) -> Result<T, ApiError> {
    let bytes = body.map_err(|r| {
        if r.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::too_large(None, REQUEST_BODY_BYTES_MAX)
        } else {
            ApiError::invalid(
                format!("cannot read the request body: {}", r.body_text()),
                None,
            )
        }
    })?;
    parse_json(&bytes)
}

/// A seed for a request that names none: different for every request.
fn fresh_seed(st: &AppState) -> u64 {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    now ^ st
        .next_id
        .fetch_add(1, Ordering::Relaxed)
        .wrapping_mul(0x9E37_79B9_7F4A_7C15)
}

/// Checks the prompt against the context, queues the job, and answers (JSON or SSE).
async fn generate(
    st: &AppState,
    endpoint: Endpoint,
    prompt: Vec<u32>,
    settings: GenerationSettings,
    default_max_tokens: usize,
) -> Result<Response, ApiError> {
    if prompt.is_empty() {
        return Err(ApiError::invalid("the prompt is empty", Some("prompt")));
    }
    let ctx = st.ctx_size;
    check_prompt_tokens(prompt.len(), ctx)?;
    let max_tokens = match settings.max_tokens {
        Some(m) if prompt.len() + m > ctx => {
            return Err(ApiError::invalid(
                format!("the prompt has {} tokens and max_tokens is {m}: more than the context of {ctx} positions", prompt.len()),
                Some("max_tokens"),
            )
            .with_code("context_length_exceeded"))
        }
        Some(m) => m,
        None => default_max_tokens.min(ctx - prompt.len()).min(st.max_tokens_limit),
    };
    let n = st.next_id.fetch_add(1, Ordering::Relaxed);
    let meta = ResponseMeta {
        endpoint,
        id: format!(
            "{}-{n:016x}",
            if endpoint == Endpoint::Chat {
                "chatcmpl"
            } else {
                "cmpl"
            }
        ),
        created: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0),
        model: st.model_name.clone(),
    };
    let (mut job, rx) = GenerationJob::new(
        prompt,
        max_tokens,
        settings.sampling,
        settings.stop,
        settings.ignore_eos,
    );
    job.cache_prompt = settings.cache_prompt;
    st.engine.submit(job).map_err(|e| match e {
        SubmitError::QueueFull(waiting) => ApiError::queue_full(waiting),
        SubmitError::Stopped => ApiError::unavailable("the engine has stopped"),
    })?;
    if settings.stream {
        let state = StreamState {
            meta,
            rx,
            include_usage: settings.include_usage,
            phase: Phase::Start,
            queue: VecDeque::new(),
        };
        let events = futures_util::stream::unfold(state, |mut s| async move {
            s.next_event().await.map(|e| (Ok::<_, Infallible>(e), s))
        });
        Ok(Sse::new(events)
            .keep_alive(KeepAlive::default())
            .into_response())
    } else {
        collect_answer(meta, rx).await
    }
}

/// A non-streamed answer: every piece, then the end, as one JSON object. The future owns
/// the receiver, so a client that disconnects (hyper drops the handler) cancels the job.
async fn collect_answer(meta: ResponseMeta, mut rx: JobReceiver) -> Result<Response, ApiError> {
    let (mut text, mut ids) = (String::new(), Vec::new());
    while let Some(p) = rx.pieces.recv().await {
        text.push_str(&p.text);
        ids.extend(p.token_ids);
    }
    match rx.done.await {
        Ok(Ok(f)) => {
            text.push_str(&f.tail.text);
            ids.extend(f.tail.token_ids);
            Ok(Json(meta.full(&text, &ids, f.finish, f.usage)).into_response())
        }
        Ok(Err(e)) => Err(e.into()),
        Err(_) => Err(ApiError::unavailable("the engine stopped")),
    }
}

enum Phase {
    Start,
    Pieces,
    End,
    Closed,
}

/// A streamed answer: the SSE events of one job.
struct StreamState {
    meta: ResponseMeta,
    rx: JobReceiver,
    include_usage: bool,
    phase: Phase,
    queue: VecDeque<Event>,
}

impl StreamState {
    fn data(v: serde_json::Value) -> Event {
        Event::default().data(v.to_string())
    }

    async fn next_event(&mut self) -> Option<Event> {
        loop {
            if let Some(e) = self.queue.pop_front() {
                return Some(e);
            }
            match self.phase {
                Phase::Start => {
                    if self.meta.endpoint == Endpoint::Chat {
                        self.queue.push_back(Self::data(self.meta.chunk(
                            Some(""),
                            &[],
                            true,
                            None,
                        )));
                    }
                    self.phase = Phase::Pieces;
                }
                Phase::Pieces => match self.rx.pieces.recv().await {
                    Some(p) => self.queue.push_back(Self::data(self.meta.chunk(
                        Some(&p.text),
                        &p.token_ids,
                        false,
                        None,
                    ))),
                    None => self.phase = Phase::End,
                },
                Phase::End => {
                    match (&mut self.rx.done).await {
                        Ok(Ok(f)) => {
                            let text = (!f.tail.text.is_empty()).then_some(f.tail.text.as_str());
                            self.queue.push_back(Self::data(self.meta.chunk(
                                text,
                                &f.tail.token_ids,
                                false,
                                Some(f.finish),
                            )));
                            if self.include_usage {
                                self.queue
                                    .push_back(Self::data(self.meta.usage_chunk(f.usage)));
                            }
                            self.queue.push_back(Event::default().data("[DONE]"));
                        }
                        Ok(Err(e)) => self.queue.push_back(Self::data(ApiError::from(e).body())),
                        Err(_) => self.queue.push_back(Self::data(
                            ApiError::unavailable("the engine stopped").body(),
                        )),
                    }
                    self.phase = Phase::Closed;
                }
                Phase::Closed => return None,
            }
        }
    }
}
