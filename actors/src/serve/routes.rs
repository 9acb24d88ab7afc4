//! The HTTP routes and their handlers:
//!
//! ```text
//! POST /v1/completions        prompt as is (text or token ids), JSON or SSE stream
//! POST /v1/chat/completions   messages through the chat template (tools, response_format), JSON or SSE
//! POST /v1/messages           Anthropic's Messages API (text, tools), JSON or SSE (`messages.rs`)
//! GET  /v1/models             the one served model
//! GET  /health                200 when the engine runs and every expert node is reachable, else 503
//! GET  /metrics               Prometheus text (when started with --metrics-addr), else 404
//! ```
//!
//! Decides: what a request means (tokens, limits against the context) and how answers are
//! framed. A handler never blocks on the engine: it queues a job with `try_send` (429 when
//! the queue is full) and reads the job's bounded piece channel; dropping that channel, as
//! happens when the client disconnects, frees the sequence in the engine's next step.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use moe_engine::TokenConstraint;
use moe_model::tokenizer::Tokenizer;
use serde::de::DeserializeOwned;
use serde_json::{json, Value};

use super::answer;
use super::api_error::ApiError;
use super::chat_template::{ChatPrompt, ChatTemplate};
use super::constraint::EngineConstraint;
use super::engine::{EngineHandle, GenerationJob, JobReceiver, SubmitError};

use super::json_constraint::{ConstraintVocab, JsonConstraint, JsonTarget};
use super::openai::{
    check_prompt_bytes, check_prompt_tokens, checked_logprobs, parse_json, ChatRequest,
    CompletionRequest, Endpoint, GenerationSettings, PromptInput, ResponseMeta, CHAT_MESSAGES_MAX,
};
use super::tool_call_grammar::ToolCallSpec;
use super::tool_calls::ToolCallFormat;
use super::tools::{self, ToolChoice, ToolSettings};

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
    /// The markup the chat template writes tool calls in (`None`: no tool calls).
    pub tool_format: Option<ToolCallFormat>,
    /// The vocabulary for structured output, or why there is none.
    pub vocab: Result<ConstraintVocab, String>,
}

pub(super) async fn not_found() -> ApiError {
    ApiError::invalid("no such route", None)
        .with_status(StatusCode::NOT_FOUND)
        .with_code("not_found")
}

pub(super) async fn health(State(st): State<Arc<AppState>>) -> Response {
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

pub(super) async fn metrics() -> Response {
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

pub(super) async fn models(
    State(st): State<Arc<AppState>>,
) -> Result<Json<serde_json::Value>, ApiError> {
    Ok(Json(json!({
        "object": "list",
        "data": [{ "id": st.model_name, "object": "model", "created": 0, "owned_by": "moe-node", "max_model_len": st.ctx_size }],
    })))
}

pub(super) async fn completions(
    State(st): State<Arc<AppState>>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let r = async {
        let req: CompletionRequest = parse_body(body)?;
        if req.echo == Some(true) {
            return Err(ApiError::invalid("echo is not supported", Some("echo")));
        }
        // The legacy field: an integer, the alternatives per token (0 to 20).
        let top_logprobs = match req.logprobs {
            None => None,
            Some(k) => checked_logprobs(Some(true), Some(k))?,
        };
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
        let job = JobSpec {
            prompt: tokens,
            default_max_tokens: COMPLETION_DEFAULT_MAX_TOKENS,
            top_logprobs,
            constraints: Vec::new(),
            render_control: false,
        };
        let rx = submit(&st, job, &settings)?;
        let id = st.next_id.fetch_add(1, Ordering::Relaxed);
        let spec = answer::OutputSpec {
            meta: response_meta(&st, Endpoint::Completions, id),
            tokenizer: st.tokenizer.clone(),
            tools: None,
            logprobs: top_logprobs.is_some(),
            include_usage: settings.include_usage,
        };
        answer::respond(spec, rx, settings.stream).await
    }
    .await;
    r.unwrap_or_else(IntoResponse::into_response)
}

pub(super) async fn chat_completions(
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
        let tools = tools::tool_settings(
            req.tools.as_deref(),
            req.tool_choice.as_ref(),
            req.parallel_tool_calls,
        )?;
        let target = tools::response_format(req.response_format.as_ref())?;
        let top_logprobs = checked_logprobs(req.logprobs, req.top_logprobs)?;
        let messages = req
            .messages
            .iter()
            .map(|m| m.template_value())
            .collect::<Result<Vec<_>, _>>()?;
        let id = st.next_id.fetch_add(1, Ordering::Relaxed);
        let turn = prepare_chat(&st, messages, tools, target, settings.n, id).await?;
        let job = JobSpec {
            prompt: turn.prompt,
            default_max_tokens: st.max_tokens_limit,
            top_logprobs,
            constraints: turn.constraints,
            render_control: turn.tool_output.is_some(),
        };
        let rx = submit(&st, job, &settings)?;
        let spec = answer::OutputSpec {
            meta: response_meta(&st, Endpoint::Chat, id),
            tokenizer: st.tokenizer.clone(),
            tools: turn.tool_output,
            logprobs: top_logprobs.is_some(),
            include_usage: settings.include_usage,
        };
        answer::respond(spec, rx, settings.stream).await
    }
    .await;
    r.unwrap_or_else(IntoResponse::into_response)
}

/// A chat turn ready for the engine: the prompt, one constraint per choice (forced tool
/// calls or `response_format`; none when free), and how to read tool calls back.
pub(super) struct ChatTurn {
    pub(super) prompt: Vec<u32>,
    pub(super) constraints: Vec<Box<dyn TokenConstraint>>,
    pub(super) tool_output: Option<answer::ToolOutput>,
}

/// Renders the prompt (with the tools), and builds the choices' constraints: a forced
/// call (`tool_choice` required or a named function) as the model's call markup, or
/// `response_format`; under `auto` the output is read back for calls, unconstrained.
pub(super) async fn prepare_chat(
    st: &Arc<AppState>,
    messages: Vec<Value>,
    tools: Option<ToolSettings>,
    target: Option<JsonTarget>,
    n: usize,
    id: u64,
) -> Result<ChatTurn, ApiError> {
    let calls = tools.as_ref().filter(|t| t.choice != ToolChoice::None);
    let format = match calls {
        None => None,
        Some(_) => Some(st.tool_format.ok_or_else(|| {
            ApiError::invalid(
                "this model's chat template has no tool-call format (serve it with \
                 --chat-template-file naming a template that writes tool calls), so tools can \
                 only be sent with tool_choice: none",
                Some("tools"),
            )
        })?),
    };
    let spec = match (calls, format) {
        (Some(t), Some(format)) if t.choice != ToolChoice::Auto => {
            let functions = t
                .names
                .iter()
                .zip(&t.schemas)
                .filter(|(name, _)| match &t.choice {
                    ToolChoice::Function(f) => f == *name,
                    _ => true,
                })
                .map(|(name, schema)| (name.clone(), schema.clone()))
                .collect();
            Some(ToolCallSpec {
                format,
                functions,
                parallel: t.parallel && t.choice == ToolChoice::Required,
            })
        }
        _ => None,
    };
    if spec.is_some() && target.is_some() {
        return Err(ApiError::invalid(
            "response_format cannot be combined with a forced tool call (tool_choice required or a named function)",
            Some("response_format"),
        ));
    }
    let vocab = if spec.is_some() || target.is_some() {
        Some(st.vocab.clone().map_err(|why| {
            ApiError::invalid(
                format!("structured output is not available on this server: {why}"),
                Some("response_format"),
            )
        })?)
    } else {
        None
    };
    let tool_output = calls.zip(format).map(|(t, format)| answer::ToolOutput {
        format,
        names: t.names.clone(),
        id_prefix: format!("call_{id:x}_"),
        parallel: t.parallel,
    });
    let (tok, template, ctx) = (st.tokenizer.clone(), st.template.clone(), st.ctx_size);
    let (prompt, constraints) = tokio::task::spawn_blocking(move || {
        let text = template
            .render_prompt(&ChatPrompt {
                messages: &messages,
                tools: tools.as_ref().map(|t| t.tools.as_slice()),
                add_generation_prompt: true,
            })
            .map_err(|e| ApiError::invalid(e, Some("messages")))?;
        // Sized against the context before it is tokenized.
        check_prompt_bytes(text.len(), ctx)?;
        let prompt = tok.encode_prompt(&text);
        // A forced call must still write its closing markup after the arguments.
        let markup_tokens = spec
            .as_ref()
            .map_or(0, |s| tok.encode(&s.format.closing_markup(), true).len());
        let mut constraints: Vec<Box<dyn TokenConstraint>> = Vec::new();
        if let Some(vocab) = &vocab {
            for _ in 0..n {
                let (c, param) = match (&spec, &target) {
                    (Some(spec), _) => (JsonConstraint::tool_calls(vocab, spec), "tools"),
                    (None, Some(target)) => (JsonConstraint::new(vocab, target), "response_format"),
                    (None, None) => break,
                };
                let c = c.map_err(|e| ApiError::invalid(e.to_string(), Some(param)))?;
                constraints.push(Box::new(EngineConstraint::new(c, markup_tokens)));
            }
        }
        Ok::<_, ApiError>((prompt, constraints))
    })
    .await
    .map_err(|e| ApiError::unavailable(e.to_string()))??;
    Ok(ChatTurn {
        prompt,
        constraints,
        tool_output,
    })
}

/// Parses a JSON body; every failure is a 4xx with an error object.
pub(super) fn parse_body<T: DeserializeOwned>(
    body: Result<Bytes, BytesRejection>,
) -> Result<T, ApiError> {
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
pub(super) fn fresh_seed(st: &AppState) -> u64 {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    now ^ st
        .next_id
        .fetch_add(1, Ordering::Relaxed)
        .wrapping_mul(0x9E37_79B9_7F4A_7C15)
}

/// What the engine is asked for, beside the request's generation settings.
pub(super) struct JobSpec {
    pub(super) prompt: Vec<u32>,
    /// `max_tokens` when the request names none (bounded by the context left).
    pub(super) default_max_tokens: usize,
    pub(super) top_logprobs: Option<u32>,
    /// Empty, or one per choice.
    pub(super) constraints: Vec<Box<dyn TokenConstraint>>,
    /// Decode control tokens as text (tool-call markers to parse).
    pub(super) render_control: bool,
}

/// Checks the prompt against the context and queues the job.
pub(super) fn submit(
    st: &AppState,
    spec: JobSpec,
    settings: &GenerationSettings,
) -> Result<JobReceiver, ApiError> {
    let prompt = spec.prompt;
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
        None => spec
            .default_max_tokens
            .min(ctx - prompt.len())
            .min(st.max_tokens_limit),
    };
    let (mut job, rx) = GenerationJob::with_choices(
        prompt,
        max_tokens,
        settings.sampling.clone(),
        settings.stop.clone(),
        settings.ignore_eos,
        settings.n,
    );
    job.cache_prompt = settings.cache_prompt;
    job.top_logprobs = spec.top_logprobs;
    job.constraints = spec.constraints;
    job.render_control = spec.render_control;
    st.engine.submit(job).map_err(|e| match e {
        SubmitError::QueueFull(waiting) => ApiError::queue_full(waiting),
        SubmitError::Stopped => ApiError::unavailable("the engine has stopped"),
    })?;
    Ok(rx)
}

/// The fields every response object of request `n` repeats.
pub(super) fn response_meta(st: &AppState, endpoint: Endpoint, n: u64) -> ResponseMeta {
    ResponseMeta {
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
    }
}
