//! `moe-node serve --http ADDR` (and `--role router --http ADDR`): an OpenAI-compatible HTTP
//! API over continuous batching.
//!
//! ```text
//! serve.rs           options, startup: engine thread, chat template, HTTP listener
//! serve/engine.rs    the engine thread: admission queue, one batched forward per step
//! serve/app.rs       the axum application: every route, the /v1 guard
//! serve/routes.rs    handlers (completions, chat, models, health, metrics) and shared state
//! serve/answer.rs    OpenAI answers: choices (n), tool calls read back, logprobs, JSON or SSE
//! serve/messages.rs  POST /v1/messages (Anthropic) handler and answers
//! serve/logprobs.rs  log-probabilities of generated tokens and their JSON
//! serve/constraint.rs the JSON / tool-call constraint as the engine's TokenConstraint
//! serve/openai.rs    request fields, validation, response JSON
//! serve/chat_template.rs  the GGUF's Jinja chat template via minijinja (ChatML default)
//! serve/stop.rs      stop strings over streamed text
//! serve/tools.rs    tools, tool_choice, response_format: request shapes and checks
//! serve/tool_calls.rs  the model's tool-call markup (Kimi K2, DeepSeek-V3) -> `tool_calls`
//! serve/json_constraint.rs  response_format / tool arguments as a token mask (llguidance)
//! serve/tool_call_grammar.rs  forced tool calls as a grammar over the model's markup
//! serve/anthropic.rs POST /v1/messages request and response shapes
//! serve/api_error.rs OpenAI-style error objects
//! serve/http_limits.rs connections: cap, header and body timeouts, body size, API key
//! ```
//!
//! ```sh
//! moe-node serve --model M.gguf --http 127.0.0.1:8080     # prints `http listening on IP:PORT`
//! curl -s localhost:8080/v1/completions -d '{"prompt": "Hello", "max_tokens": 8}'
//! ```
//!
//! Threads: the engine owns the model on its own OS thread (compute never runs on the async
//! runtime); two tokio workers serve HTTP. Every queue between them is bounded: the admission
//! queue (`--admission-queue`, 429 when full) and each request's piece channel. So is what
//! clients hold of the HTTP side: connections, header and body times, body sizes
//! (`http_limits.rs`).
//!
//! Metrics: with `--metrics-addr ADDR` the Prometheus exporter of `telemetry.rs` is installed
//! (its own listener on ADDR) and `GET /metrics` on the API address answers the same text.

pub mod answer;
pub mod app;
pub mod constraint;
pub mod engine;
pub mod logprobs;
pub mod messages;
pub mod routes;
// The request layer lives in the `moe_node_http` library (`src/lib.rs`), compiled once and
// shared with the HTTP fuzz target.
pub use moe_node_http::{
    anthropic, api_error, chat_template, http_limits, json_constraint, openai, tool_call_grammar,
    tool_calls, tools,
};

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;

use crate::options::ModelArgs;
use crate::options::RouterArgs;
use chat_template::{ChatTemplate, CHAT_TEMPLATE_BYTES_MAX};
use engine::{EngineLimits, ADMISSION_QUEUE_MAX, MAX_ACTIVE_SEQUENCES};
use http_limits::{
    ApiKey, BodyLimits, ConnectionLimits, HTTP_BODY_READ_TIMEOUT_MS, HTTP_CONNECTIONS_MAX,
    HTTP_HEADER_READ_TIMEOUT_MS,
};
use json_constraint::ConstraintVocab;
use moe_model::tokenizer::{TokenType, Tokenizer};
use tool_calls::ToolCallFormat;

/// Prompt tokens the prefix cache keeps by default (`--cache-tokens`).
pub const PREFIX_CACHE_TOKENS: usize = 16384;
/// Largest `max_tokens` a request may ask for (default of `--max-tokens-limit`).
pub const COMPLETION_TOKENS_MAX: usize = 4096;
/// Longest API key file, in bytes.
pub const API_KEY_FILE_BYTES_MAX: u64 = 4096;
/// HTTP worker threads (the model computes on the engine thread, not on these).
pub const HTTP_WORKER_THREADS: usize = 2;

/// HTTP serving options (shared by `serve` and `--role router`).
#[derive(Debug, Clone, clap::Args)]
pub struct ServeOptions {
    /// Serve the OpenAI-compatible HTTP API on this address (port 0 picks a free port).
    #[arg(long)]
    pub http: Option<SocketAddr>,
    /// File holding the API key clients must send as `Authorization: Bearer KEY`.
    #[arg(long)]
    pub api_key_file: Option<PathBuf>,
    /// Model name listed by /v1/models (default: the GGUF's general.name, else the file name).
    #[arg(long)]
    pub served_model_name: Option<String>,
    /// Sequences decoded together in one batch.
    #[arg(long, default_value_t = MAX_ACTIVE_SEQUENCES)]
    pub max_active_sequences: usize,
    /// Requests that may wait for a sequence slot; more get 429.
    #[arg(long, default_value_t = ADMISSION_QUEUE_MAX)]
    pub admission_queue: usize,
    /// Largest max_tokens a request may ask for.
    #[arg(long, default_value_t = COMPLETION_TOKENS_MAX)]
    pub max_tokens_limit: usize,
    /// Prompt tokens whose KV the prefix cache keeps for reuse by later requests (least
    /// recently used blocks go first; 0 turns prefix reuse off). A token costs
    /// `n_layers × (kv_lora_rank + qk_rope) × 4` bytes: 140 KB for Kimi K2.5.
    #[arg(long, default_value_t = PREFIX_CACHE_TOKENS)]
    pub cache_tokens: usize,
    /// Speculative decoding for every sequence (output identical to plain decoding).
    #[command(flatten)]
    pub speculative: crate::cli::generate::SpeculativeArgs,
    /// Most HTTP connections at once (lowered to fit `ulimit -n`); over it, a new connection
    /// closes the oldest idle one, or gets 503 when every one is busy.
    #[arg(long, default_value_t = HTTP_CONNECTIONS_MAX)]
    pub http_connections_max: usize,
    /// Milliseconds a client may take to send a request head; also how long a connection
    /// may stay idle between requests.
    #[arg(long, default_value_t = HTTP_HEADER_READ_TIMEOUT_MS)]
    pub http_header_timeout_ms: u64,
    /// Milliseconds a client may take to send a request body (408 beyond).
    #[arg(long, default_value_t = HTTP_BODY_READ_TIMEOUT_MS)]
    pub http_body_timeout_ms: u64,
    /// Jinja chat template to use instead of the GGUF's `tokenizer.chat_template` (as
    /// llama-server's option); its tool-call markup decides the tool-call format.
    #[arg(long)]
    pub chat_template_file: Option<PathBuf>,
}

/// Arguments of `serve`.
#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    #[command(flatten)]
    model: ModelArgs,
    #[command(flatten)]
    cluster: RouterArgs,
    #[command(flatten)]
    serve: ServeOptions,
    #[command(flatten)]
    metrics: crate::telemetry::MetricsArgs,
}

/// `moe-node serve`.
pub fn run_command(a: ServeArgs) -> anyhow::Result<()> {
    let role = if a.cluster.placement.is_some() {
        "router"
    } else {
        "run"
    };
    a.metrics.start(role, &a.cluster.node_name)?;
    run(&a.model, &a.cluster, &a.serve)
}

/// Loads the model (and connects to the expert nodes of a placement), then serves HTTP until
/// the process is stopped.
pub fn run(
    model_args: &ModelArgs,
    cluster: &RouterArgs,
    opts: &ServeOptions,
) -> anyhow::Result<()> {
    let addr = opts.http.context("serving needs --http ADDR")?;
    anyhow::ensure!(
        opts.max_active_sequences >= 1,
        "--max-active-sequences must be at least 1"
    );
    anyhow::ensure!(
        opts.admission_queue >= 1,
        "--admission-queue must be at least 1"
    );
    anyhow::ensure!(
        opts.max_tokens_limit >= 1,
        "--max-tokens-limit must be at least 1"
    );
    anyhow::ensure!(model_args.ctx_size >= 2, "--ctx-size must be at least 2");
    anyhow::ensure!(
        opts.http_connections_max >= 1,
        "--http-connections-max must be at least 1"
    );
    anyhow::ensure!(
        opts.http_header_timeout_ms >= 1 && opts.http_body_timeout_ms >= 1,
        "--http-header-timeout-ms and --http-body-timeout-ms must be at least 1"
    );
    let api_key = opts
        .api_key_file
        .as_deref()
        .map(read_api_key)
        .transpose()?
        .map(|k| ApiKey::new(&k));
    let limits = EngineLimits {
        max_active: opts.max_active_sequences,
        queue: opts.admission_queue,
        ctx_size: model_args.ctx_size,
        cache_tokens: opts.cache_tokens,
        draft_max: opts.speculative.draft_max(),
    };
    let (engine, info) = engine::start(model_args, cluster, limits)?;
    let tok = &info.tokenizer;
    let token_text = |id: Option<u32>| id.and_then(|i| tok.token_text(i)).unwrap_or("").to_string();
    let template_file = opts
        .chat_template_file
        .as_deref()
        .map(read_chat_template)
        .transpose()?;
    let template = ChatTemplate::new(
        template_file.as_deref().or(info.chat_template.as_deref()),
        token_text(tok.bos()),
        token_text(tok.eos()),
    )?;
    let tool_format = ToolCallFormat::detect(template.source());
    if template_file.is_none() && !template.from_model {
        eprintln!("the model has no tokenizer.chat_template: chat prompts use the default ChatML template");
    }
    let model_name = opts
        .served_model_name
        .clone()
        .or(info.name.clone())
        .unwrap_or_else(|| {
            model_args
                .model
                .as_ref()
                .and_then(|p| p.file_stem())
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_else(|| "moe-node-default".into())
        });
    let state = Arc::new(routes::AppState {
        engine,
        tokenizer: info.tokenizer.clone(),
        template: Arc::new(template),
        model_name,
        ctx_size: model_args.ctx_size,
        max_tokens_limit: opts.max_tokens_limit,
        next_id: AtomicU64::new(0),
        tool_format,
        vocab: constraint_vocab(tok),
    });
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(HTTP_WORKER_THREADS)
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("binding {addr}"))?;
        let body = BodyLimits {
            bytes_max: routes::REQUEST_BODY_BYTES_MAX,
            timeout: Duration::from_millis(opts.http_body_timeout_ms),
        };
        let connections = ConnectionLimits {
            header_timeout: Duration::from_millis(opts.http_header_timeout_ms),
            connections_max: http_limits::connection_cap(opts.http_connections_max),
        };
        println!("http listening on {}", listener.local_addr()?);
        http_limits::serve(listener, app::app(state, api_key, body), connections).await;
        Ok(())
    })
}

/// The chat template file's text (at most [`CHAT_TEMPLATE_BYTES_MAX`] bytes).
fn read_chat_template(path: &std::path::Path) -> anyhow::Result<String> {
    let len = std::fs::metadata(path)
        .with_context(|| format!("reading chat template {}", path.display()))?
        .len();
    anyhow::ensure!(
        len <= CHAT_TEMPLATE_BYTES_MAX as u64,
        "chat template {} has {len} bytes; at most {CHAT_TEMPLATE_BYTES_MAX}",
        path.display()
    );
    std::fs::read_to_string(path)
        .with_context(|| format!("reading chat template {}", path.display()))
}

/// The vocabulary as structured output sees it: token bytes (control tokens as their
/// text), control tokens marked special; built once at startup (about a second for a
/// 160k vocabulary). An error (no EOS, say) turns structured output off with a reason.
fn constraint_vocab(tok: &Tokenizer) -> Result<ConstraintVocab, String> {
    let eos = tok.eos().ok_or("the tokenizer has no EOS token")?;
    let n = tok.vocab_size() as u32;
    let bytes: Vec<Vec<u8>> = (0..n).map(|i| tok.token_piece(i, true)).collect();
    let special: Vec<bool> = (0..n)
        .map(|i| {
            !matches!(
                tok.token_type(i),
                Some(TokenType::Normal | TokenType::Byte | TokenType::UserDefined)
            )
        })
        .collect();
    ConstraintVocab::new(&bytes, &special, eos).map_err(|e| e.to_string())
}

fn read_api_key(path: &std::path::Path) -> anyhow::Result<String> {
    let len = std::fs::metadata(path)
        .with_context(|| format!("reading API key file {}", path.display()))?
        .len();
    anyhow::ensure!(
        len <= API_KEY_FILE_BYTES_MAX,
        "API key file {} has {len} bytes; at most {API_KEY_FILE_BYTES_MAX}",
        path.display()
    );
    let key = std::fs::read_to_string(path)
        .with_context(|| format!("reading API key file {}", path.display()))?
        .trim()
        .to_string();
    anyhow::ensure!(!key.is_empty(), "API key file {} is empty", path.display());
    Ok(key)
}
