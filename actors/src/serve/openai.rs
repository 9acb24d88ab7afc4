//! The OpenAI request bodies this server accepts and the JSON it answers with.
//!
//! Decides: which fields exist, their types (a field of the wrong type is a 400), their
//! ranges, and the defaults OpenAI documents (`temperature` 1, `top_p` 1, `n` 1, 16 tokens
//! for a completion). Unknown fields are ignored, as OpenAI does, and so is `model`: this
//! server serves one model whatever name a request gives. Leaves tokenization, the
//! chat template and the context check to the handlers.
//!
//! Extensions beyond OpenAI's set (vLLM / llama.cpp names): `top_k`, `min_p`,
//! `repetition_penalty`, `ignore_eos`; every choice also carries `token_ids`, the generated
//! token ids of that piece.

use serde::Deserialize;
use serde_json::{json, Value};

use moe_model::sampling::SamplingParams;

use super::api_error::ApiError;

/// Most stop strings per request (OpenAI's limit).
pub const STOP_SEQUENCES_MAX: usize = 4;
/// Longest stop string, in bytes.
pub const STOP_SEQUENCE_BYTES_MAX: usize = 256;
/// Most chat messages per request.
pub const CHAT_MESSAGES_MAX: usize = 4096;
/// Most choices per request (`n`).
pub const N_MAX: usize = 8;
/// Most choices the engine generates per request (every choice shares the prompt's KV).
pub const N_ENGINE_MAX: usize = N_MAX;
/// Most alternatives per position in `top_logprobs` (OpenAI's limit).
pub const TOP_LOGPROBS_MAX: u32 = 20;

/// Most bytes of prompt text per context position: a prompt longer than `ctx_size ×` this
/// is refused before it is tokenized, as it cannot fit the context (text averages 3 to 5
/// bytes per token; 32 leaves room for long runs of spaces, digits or rare characters).
pub const PROMPT_BYTES_PER_TOKEN_MAX: usize = 32;

/// `stop`: one string or a list.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum Stop {
    /// One stop string.
    One(String),
    /// Several.
    Many(Vec<String>),
}

/// `stream_options`.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct StreamOptions {
    /// Send a last chunk with `usage` and no choices.
    #[serde(default)]
    pub include_usage: Option<bool>,
}

/// The generation fields shared by both endpoints.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct GenerationFields {
    /// Most tokens to generate.
    #[serde(default)]
    pub max_tokens: Option<u64>,
    /// Sampling temperature (0 = greedy); OpenAI's default is 1.
    #[serde(default)]
    pub temperature: Option<f32>,
    /// Nucleus sampling mass.
    #[serde(default)]
    pub top_p: Option<f32>,
    /// Extension: keep the k most likely tokens (0 = off).
    #[serde(default)]
    pub top_k: Option<u32>,
    /// Extension: drop tokens below `min_p` × the top probability.
    #[serde(default)]
    pub min_p: Option<f32>,
    /// Extension: llama.cpp's repetition penalty (1 = off).
    #[serde(default)]
    pub repetition_penalty: Option<f32>,
    /// Generator seed (random when absent).
    #[serde(default)]
    pub seed: Option<u64>,
    /// Stop strings: the output ends before the first one.
    #[serde(default)]
    pub stop: Option<Stop>,
    /// Choices per request (1 to [`N_MAX`]).
    #[serde(default)]
    pub n: Option<u32>,
    /// Stream the answer as server-sent events.
    #[serde(default)]
    pub stream: Option<bool>,
    /// Streaming options.
    #[serde(default)]
    pub stream_options: Option<StreamOptions>,
    /// Only 0 is supported.
    #[serde(default)]
    pub presence_penalty: Option<f32>,
    /// Only 0 is supported.
    #[serde(default)]
    pub frequency_penalty: Option<f32>,
    /// Extension: keep generating past the end-of-sequence token.
    #[serde(default)]
    pub ignore_eos: Option<bool>,
    /// Extension (llama-server's name): reuse a cached prefix of the prompt and keep this
    /// prompt's KV for later requests (default true).
    #[serde(default)]
    pub cache_prompt: Option<bool>,
}

/// `POST /v1/completions`.
#[derive(Debug, Clone, Deserialize)]
pub struct CompletionRequest {
    /// The prompt, used as is (no chat template).
    pub prompt: Prompt,
    /// Only `false` is supported.
    #[serde(default)]
    pub echo: Option<bool>,
    /// Return each token's log-probability with this many alternatives (0 to 20).
    #[serde(default)]
    pub logprobs: Option<u32>,
    /// Everything else.
    #[serde(flatten)]
    pub gen: GenerationFields,
}

/// A completion prompt: text or token ids, alone or as a one-element list (n = 1).
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum Prompt {
    /// Text.
    Text(String),
    /// Token ids.
    Tokens(Vec<u32>),
    /// A list of texts (exactly one is supported).
    Texts(Vec<String>),
    /// A list of token id lists (exactly one is supported).
    TokenLists(Vec<Vec<u32>>),
}

/// A completion's one prompt, checked against the context and the vocabulary.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PromptInput {
    /// Text, not yet tokenized, of at most `ctx_size × PROMPT_BYTES_PER_TOKEN_MAX` bytes.
    Text(String),
    /// Token ids, fewer than `ctx_size`, each in the vocabulary.
    Tokens(Vec<u32>),
}

impl Prompt {
    /// The one prompt (n = 1), refused before any tokenizing when it cannot fit a context of
    /// `ctx_size` positions: text by its length in bytes, token ids by their count (then
    /// each id against `vocab_size`).
    pub fn checked(self, ctx_size: usize, vocab_size: usize) -> Result<PromptInput, ApiError> {
        let prompt = match self {
            Prompt::Text(t) => PromptInput::Text(t),
            Prompt::Texts(mut v) if v.len() == 1 => PromptInput::Text(v.remove(0)),
            Prompt::Tokens(t) => PromptInput::Tokens(t),
            Prompt::TokenLists(mut v) if v.len() == 1 => PromptInput::Tokens(v.remove(0)),
            _ => {
                return Err(ApiError::invalid(
                    "a list of several prompts is not supported (n = 1)",
                    Some("prompt"),
                ))
            }
        };
        match &prompt {
            PromptInput::Text(t) => check_prompt_bytes(t.len(), ctx_size)?,
            PromptInput::Tokens(ids) => {
                check_prompt_tokens(ids.len(), ctx_size)?;
                if let Some(bad) = ids.iter().find(|&&t| t as usize >= vocab_size) {
                    return Err(ApiError::invalid(
                        format!("token id {bad} is outside the vocabulary of {vocab_size}"),
                        Some("prompt"),
                    ));
                }
            }
        }
        Ok(prompt)
    }
}

/// 400 `context_length_exceeded` when a prompt text of `bytes` bytes has more than
/// `ctx_size × PROMPT_BYTES_PER_TOKEN_MAX`: it would have too many tokens for the context.
pub fn check_prompt_bytes(bytes: usize, ctx_size: usize) -> Result<(), ApiError> {
    let max = ctx_size.saturating_mul(PROMPT_BYTES_PER_TOKEN_MAX);
    if bytes > max {
        return Err(ApiError::invalid(
            format!(
                "the prompt has {bytes} bytes; this server's context of {ctx_size} positions takes \
                 prompts of at most {max} bytes ({PROMPT_BYTES_PER_TOKEN_MAX} bytes per position)"
            ),
            Some("prompt"),
        )
        .with_code("context_length_exceeded"));
    }
    Ok(())
}

/// 400 `context_length_exceeded` when a prompt of `tokens` tokens leaves no position of a
/// `ctx_size` context for the answer.
pub fn check_prompt_tokens(tokens: usize, ctx_size: usize) -> Result<(), ApiError> {
    if tokens >= ctx_size {
        return Err(ApiError::invalid(
            format!("the prompt has {tokens} tokens; this server's context holds {ctx_size} positions, the answer included"),
            Some("prompt"),
        )
        .with_code("context_length_exceeded"));
    }
    Ok(())
}

/// Parses a JSON request body; every failure is a 400 with an error object (`invalid_json`
/// for malformed JSON, no code for a well-formed body with wrong fields).
pub fn parse_json<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(bytes).map_err(|e| {
        let err = ApiError::invalid(format!("invalid request body: {e}"), None);
        if e.is_data() {
            err
        } else {
            err.with_code("invalid_json")
        }
    })
}

/// `POST /v1/chat/completions`.
#[derive(Debug, Clone, Deserialize)]
pub struct ChatRequest {
    /// The conversation.
    pub messages: Vec<ChatMessage>,
    /// OpenAI's newer name for `max_tokens`.
    #[serde(default)]
    pub max_completion_tokens: Option<u64>,
    /// Functions the model may call (`tools.rs` checks them).
    #[serde(default)]
    pub tools: Option<Vec<super::tools::ToolDef>>,
    /// `none`, `auto`, `required` or `{"type": "function", "function": {"name": ...}}`.
    #[serde(default)]
    pub tool_choice: Option<super::tools::ToolChoiceField>,
    /// Whether the model may call several tools in one turn (default true).
    #[serde(default)]
    pub parallel_tool_calls: Option<bool>,
    /// `{"type": "text" | "json_object" | "json_schema", "json_schema": {...}}`.
    #[serde(default)]
    pub response_format: Option<super::tools::ResponseFormatField>,
    /// Return each generated token's log-probability.
    #[serde(default)]
    pub logprobs: Option<bool>,
    /// With `logprobs`, that many most likely alternatives per position (0 to 20).
    #[serde(default)]
    pub top_logprobs: Option<u32>,
    /// Everything else.
    #[serde(flatten)]
    pub gen: GenerationFields,
}

/// One chat message. Fields beyond `role` and `content` (name, tool_calls, ...) reach the
/// chat template unchanged.
#[derive(Debug, Clone, Deserialize)]
pub struct ChatMessage {
    /// `system`, `user`, `assistant`, `tool`, ...
    pub role: String,
    /// Text, or a list of content parts of which only `text` parts are supported.
    #[serde(default)]
    pub content: Option<MessageContent>,
    /// Other fields.
    #[serde(flatten)]
    pub extra: serde_json::Map<String, Value>,
}

/// A message's content.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum MessageContent {
    /// Plain text.
    Text(String),
    /// Content parts.
    Parts(Vec<ContentPart>),
}

/// One content part.
#[derive(Debug, Clone, Deserialize)]
pub struct ContentPart {
    /// Its type; only `text` is supported.
    #[serde(rename = "type")]
    pub kind: String,
    /// The text of a `text` part.
    #[serde(default)]
    pub text: Option<String>,
}

impl ChatMessage {
    /// The message as the chat template sees it: `content` as one string (text parts joined);
    /// an assistant message's `tool_calls` and a `tool` message's `tool_call_id` checked
    /// ([`super::tools::check_message_tool_fields`]) and passed on as OpenAI shapes them,
    /// which is what Hugging Face templates read.
    pub fn template_value(&self) -> Result<Value, ApiError> {
        super::tools::check_message_tool_fields(&self.role, self.content.is_some(), &self.extra)?;
        let content = match &self.content {
            None => Value::Null,
            Some(MessageContent::Text(t)) => Value::String(t.clone()),
            Some(MessageContent::Parts(parts)) => {
                let mut s = String::new();
                for p in parts {
                    match (p.kind.as_str(), &p.text) {
                        ("text", Some(t)) => s.push_str(t),
                        (kind, _) => {
                            return Err(ApiError::invalid(
                                format!(
                                "content part of type {kind:?} is not supported (only text parts)"
                            ),
                                Some("messages"),
                            ))
                        }
                    }
                }
                Value::String(s)
            }
        };
        let mut m = self.extra.clone();
        m.insert("role".into(), Value::String(self.role.clone()));
        m.insert("content".into(), content);
        Ok(Value::Object(m))
    }
}

/// The validated generation settings of a request (prompt excluded).
#[derive(Debug, Clone)]
pub struct GenerationSettings {
    /// Most tokens to generate, when the request named it.
    pub max_tokens: Option<usize>,
    /// Sampling parameters.
    pub sampling: SamplingParams,
    /// Stop strings.
    pub stop: Vec<String>,
    /// Stream the answer.
    pub stream: bool,
    /// Send a usage chunk at the end of a stream.
    pub include_usage: bool,
    /// Continue past the end-of-sequence token.
    pub ignore_eos: bool,
    /// Use and fill the prefix cache.
    pub cache_prompt: bool,
    /// Choices to generate (1 to [`N_MAX`]).
    pub n: usize,
}

impl GenerationFields {
    /// Checks every field and fills in defaults; `max_tokens_limit` bounds `max_tokens`.
    pub fn settings(
        &self,
        max_tokens: Option<u64>,
        max_tokens_limit: usize,
        fallback_seed: u64,
    ) -> Result<GenerationSettings, ApiError> {
        let n = checked_n(self.n)?;
        for (v, name) in [
            (self.presence_penalty, "presence_penalty"),
            (self.frequency_penalty, "frequency_penalty"),
        ] {
            if v.is_some_and(|v| v != 0.0) {
                return Err(ApiError::invalid(
                    format!("{name} is not supported (only 0); use repetition_penalty"),
                    Some(name),
                ));
            }
        }
        let max_tokens = match max_tokens {
            None => None,
            Some(0) => {
                return Err(ApiError::invalid(
                    "max_tokens must be at least 1",
                    Some("max_tokens"),
                ))
            }
            Some(m) if m > max_tokens_limit as u64 => {
                return Err(ApiError::invalid(
                    format!("max_tokens = {m} is over this server's limit of {max_tokens_limit}"),
                    Some("max_tokens"),
                ))
            }
            Some(m) => Some(m as usize),
        };
        let stop = match &self.stop {
            None => Vec::new(),
            Some(Stop::One(s)) => vec![s.clone()],
            Some(Stop::Many(v)) => v.clone(),
        };
        if stop.len() > STOP_SEQUENCES_MAX {
            return Err(ApiError::invalid(
                format!(
                    "{} stop strings given; at most {STOP_SEQUENCES_MAX}",
                    stop.len()
                ),
                Some("stop"),
            ));
        }
        if let Some(s) = stop.iter().find(|s| s.len() > STOP_SEQUENCE_BYTES_MAX) {
            return Err(ApiError::invalid(
                format!(
                    "a stop string of {} bytes; at most {STOP_SEQUENCE_BYTES_MAX}",
                    s.len()
                ),
                Some("stop"),
            ));
        }
        let sampling = SamplingParams {
            temperature: self.temperature.unwrap_or(1.0),
            top_k: self.top_k.unwrap_or(0) as usize,
            top_p: self.top_p.unwrap_or(1.0),
            min_p: self.min_p.unwrap_or(0.0),
            repeat_penalty: self.repetition_penalty.unwrap_or(1.0),
            seed: self.seed.unwrap_or(fallback_seed),
            ..Default::default()
        };
        sampling
            .validate()
            .map_err(|e| ApiError::invalid(e.to_string(), None))?;
        Ok(GenerationSettings {
            max_tokens,
            sampling,
            stop,
            stream: self.stream.unwrap_or(false),
            include_usage: self
                .stream_options
                .as_ref()
                .and_then(|o| o.include_usage)
                .unwrap_or(false),
            ignore_eos: self.ignore_eos.unwrap_or(false),
            cache_prompt: self.cache_prompt.unwrap_or(true),
            n,
        })
    }
}

/// `n`: 1 when absent; 0 or over [`N_MAX`] is refused, and so is anything over what the
/// engine generates today ([`N_ENGINE_MAX`]).
pub fn checked_n(n: Option<u32>) -> Result<usize, ApiError> {
    let n = n.unwrap_or(1) as usize;
    if n == 0 || n > N_MAX {
        return Err(ApiError::invalid(
            format!("n = {n}; it must be between 1 and {N_MAX}"),
            Some("n"),
        ));
    }
    if n > N_ENGINE_MAX {
        return Err(ApiError::invalid(
            format!("n = {n} is not supported yet; this server generates at most {N_ENGINE_MAX} choice(s) per request"),
            Some("n"),
        ));
    }
    Ok(n)
}

/// `logprobs` / `top_logprobs` checked: `Some(k)` (k alternatives per position) when
/// log-probabilities are asked for; `top_logprobs` without `logprobs: true`, or over
/// [`TOP_LOGPROBS_MAX`], is refused.
pub fn checked_logprobs(
    logprobs: Option<bool>,
    top_logprobs: Option<u32>,
) -> Result<Option<u32>, ApiError> {
    match (logprobs.unwrap_or(false), top_logprobs) {
        (_, Some(k)) if k > TOP_LOGPROBS_MAX => Err(ApiError::invalid(
            format!("top_logprobs = {k}; at most {TOP_LOGPROBS_MAX}"),
            Some("top_logprobs"),
        )),
        (false, Some(_)) => Err(ApiError::invalid(
            "top_logprobs needs logprobs: true",
            Some("top_logprobs"),
        )),
        (false, None) => Ok(None),
        (true, k) => Ok(Some(k.unwrap_or(0))),
    }
}

/// Why a choice ended, in OpenAI's words.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinishReason {
    /// End-of-sequence token or a stop string.
    Stop,
    /// `max_tokens` or the context capacity.
    Length,
    /// The model called tools (the message carries `tool_calls`).
    ToolCalls,
    /// The model's tool-call markup was broken: the message carries it as content.
    MalformedToolCall,
}

impl FinishReason {
    /// `"stop"`, `"length"`, `"tool_calls"` or `"malformed_tool_call"`.
    pub fn as_str(self) -> &'static str {
        match self {
            FinishReason::Stop => "stop",
            FinishReason::Length => "length",
            FinishReason::ToolCalls => "tool_calls",
            FinishReason::MalformedToolCall => "malformed_tool_call",
        }
    }
}

/// Token counts of a finished request.
#[derive(Debug, Clone, Copy, Default)]
pub struct Usage {
    /// Prompt tokens.
    pub prompt_tokens: usize,
    /// Generated tokens.
    pub completion_tokens: usize,
    /// Prompt tokens whose KV came from the prefix cache.
    pub cached_tokens: usize,
}

impl Usage {
    /// OpenAI's `usage` object.
    pub fn json(&self) -> Value {
        json!({
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.prompt_tokens + self.completion_tokens,
            "prompt_tokens_details": { "cached_tokens": self.cached_tokens },
        })
    }
}

/// Which endpoint a response belongs to (they differ only in object names and choice shape).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    /// `/v1/completions`.
    Completions,
    /// `/v1/chat/completions`.
    Chat,
}

/// What every response object of one request repeats.
#[derive(Debug, Clone)]
pub struct ResponseMeta {
    /// The endpoint.
    pub endpoint: Endpoint,
    /// `cmpl-...` or `chatcmpl-...`.
    pub id: String,
    /// Unix seconds.
    pub created: u64,
    /// The served model name.
    pub model: String,
}

impl ResponseMeta {
    /// A complete (non-streamed) response.
    pub fn full(&self, text: &str, token_ids: &[u32], finish: FinishReason, usage: Usage) -> Value {
        let choice = match self.endpoint {
            Endpoint::Completions => {
                json!({ "index": 0, "text": text, "logprobs": null, "finish_reason": finish.as_str(), "token_ids": token_ids })
            }
            Endpoint::Chat => json!({
                "index": 0,
                "message": { "role": "assistant", "content": text },
                "logprobs": null,
                "finish_reason": finish.as_str(),
                "token_ids": token_ids,
            }),
        };
        json!({
            "id": self.id,
            "object": self.object(false),
            "created": self.created,
            "model": self.model,
            "choices": [choice],
            "usage": usage.json(),
        })
    }

    /// A complete (non-streamed) response of several choices ([`ResponseMeta::chat_choice`],
    /// [`ResponseMeta::text_choice`]); `usage` sums the choices' completions.
    pub fn response(&self, choices: Vec<Value>, usage: Usage) -> Value {
        json!({
            "id": self.id,
            "object": self.object(false),
            "created": self.created,
            "model": self.model,
            "choices": choices,
            "usage": usage.json(),
        })
    }

    /// One chat choice: its `message` (content and tool calls), `logprobs` (null or the
    /// `{"content": [...]}` object), why it ended and its token ids.
    pub fn chat_choice(
        index: usize,
        message: Value,
        logprobs: Value,
        finish: FinishReason,
        token_ids: &[u32],
    ) -> Value {
        json!({ "index": index, "message": message, "logprobs": logprobs, "finish_reason": finish.as_str(), "token_ids": token_ids })
    }

    /// One completion choice.
    pub fn text_choice(
        index: usize,
        text: &str,
        logprobs: Value,
        finish: FinishReason,
        token_ids: &[u32],
    ) -> Value {
        json!({ "index": index, "text": text, "logprobs": logprobs, "finish_reason": finish.as_str(), "token_ids": token_ids })
    }

    /// One streamed chunk of choice `index`: chat's `delta` (role, content, tool_calls) or a
    /// completion's text, with the logprobs of its tokens and the finish reason at the end.
    pub fn choice_chunk(
        &self,
        index: usize,
        delta: serde_json::Map<String, Value>,
        logprobs: Value,
        finish: Option<FinishReason>,
        token_ids: &[u32],
    ) -> Value {
        let finish = finish.map(FinishReason::as_str);
        let choice = match self.endpoint {
            Endpoint::Completions => {
                let text = delta.get("content").cloned().unwrap_or_else(|| "".into());
                json!({ "index": index, "text": text, "logprobs": logprobs, "finish_reason": finish, "token_ids": token_ids })
            }
            Endpoint::Chat => {
                json!({ "index": index, "delta": delta, "logprobs": logprobs, "finish_reason": finish, "token_ids": token_ids })
            }
        };
        json!({ "id": self.id, "object": self.object(true), "created": self.created, "model": self.model, "choices": [choice] })
    }

    /// One streamed chunk: a text piece, the opening role (chat), or the finish.
    pub fn chunk(
        &self,
        text: Option<&str>,
        token_ids: &[u32],
        first: bool,
        finish: Option<FinishReason>,
    ) -> Value {
        let finish = finish.map(FinishReason::as_str);
        let choice = match self.endpoint {
            Endpoint::Completions => {
                json!({ "index": 0, "text": text.unwrap_or(""), "logprobs": null, "finish_reason": finish, "token_ids": token_ids })
            }
            Endpoint::Chat => {
                let mut delta = serde_json::Map::new();
                if first {
                    delta.insert("role".into(), "assistant".into());
                }
                if let Some(t) = text {
                    delta.insert("content".into(), t.into());
                }
                json!({ "index": 0, "delta": delta, "logprobs": null, "finish_reason": finish, "token_ids": token_ids })
            }
        };
        json!({ "id": self.id, "object": self.object(true), "created": self.created, "model": self.model, "choices": [choice] })
    }

    /// The last chunk of a stream with `include_usage`: no choices, the usage.
    pub fn usage_chunk(&self, usage: Usage) -> Value {
        json!({ "id": self.id, "object": self.object(true), "created": self.created, "model": self.model, "choices": [], "usage": usage.json() })
    }

    fn object(&self, chunk: bool) -> &'static str {
        match (self.endpoint, chunk) {
            (Endpoint::Completions, _) => "text_completion",
            (Endpoint::Chat, false) => "chat.completion",
            (Endpoint::Chat, true) => "chat.completion.chunk",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(v: Value) -> Result<GenerationFields, serde_json::Error> {
        serde_json::from_value(v)
    }

    #[test]
    fn wrong_types_are_refused_and_unknown_fields_ignored() {
        assert!(fields(json!({ "temperature": "hot" })).is_err());
        assert!(fields(json!({ "max_tokens": -1 })).is_err());
        assert!(fields(json!({ "stop": 3 })).is_err());
        assert!(fields(json!({ "whatever": [1, 2], "user": "u" })).is_ok());
        assert!(serde_json::from_value::<ChatRequest>(json!({ "messages": "hi" })).is_err());
        assert!(
            serde_json::from_value::<CompletionRequest>(json!({ "prompt": {"a": 1} })).is_err()
        );
    }

    #[test]
    fn limits_are_enforced() {
        let f = fields(json!({})).unwrap();
        assert!(f.settings(Some(100), 100, 0).is_ok());
        let e = f.settings(Some(101), 100, 0).unwrap_err();
        assert_eq!(e.param, Some("max_tokens"));
        for bad_n in [0, N_MAX as u32 + 1] {
            let e = fields(json!({ "n": bad_n }))
                .unwrap()
                .settings(None, 10, 0)
                .unwrap_err();
            assert_eq!(e.param, Some("n"), "n = {bad_n}");
        }
        assert_eq!(
            fields(json!({ "n": 1 }))
                .unwrap()
                .settings(None, 10, 0)
                .unwrap()
                .n,
            1
        );
        assert!(checked_n(Some(9))
            .unwrap_err()
            .message
            .contains("between 1 and 8"));
        assert_eq!(checked_logprobs(Some(true), Some(5)).unwrap(), Some(5));
        assert_eq!(checked_logprobs(None, None).unwrap(), None);
        assert!(checked_logprobs(Some(true), Some(21)).is_err());
        assert!(checked_logprobs(Some(false), Some(2)).is_err());
        assert!(fields(json!({ "stop": ["a", "b", "c", "d", "e"] }))
            .unwrap()
            .settings(None, 10, 0)
            .is_err());
        assert!(fields(json!({ "temperature": -1.0 }))
            .unwrap()
            .settings(None, 10, 0)
            .is_err());
        let s = fields(json!({ "stop": "x", "seed": 5 }))
            .unwrap()
            .settings(None, 10, 0)
            .unwrap();
        assert_eq!(
            (s.stop, s.sampling.seed, s.sampling.temperature),
            (vec!["x".to_string()], 5, 1.0)
        );
    }
}
