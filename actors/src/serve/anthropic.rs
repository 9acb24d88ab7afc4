//! The Anthropic Messages API (`POST /v1/messages`): the request turned into the same chat
//! input the OpenAI path uses (template messages, tools, [`GenerationSettings`]), and the
//! answer shaped back: a `message` object, or the SSE event sequence `message_start`,
//! `content_block_start` / `content_block_delta` (`text_delta`, `input_json_delta`) /
//! `content_block_stop`, `message_delta`, `message_stop`.
//!
//! Decides: the mapping between Anthropic's content blocks and the OpenAI message shapes the
//! chat templates read (`tool_use` → an assistant's `tool_calls`, `tool_result` → a `tool`
//! message before the user's text, `system` → a leading system message), `tool_choice`
//! (`auto`, `any` = required, `tool` = named, `none`), and `stop_reason`. Leaves generation,
//! tool-call parsing (`tool_calls.rs`) and the HTTP route to their modules.

use serde::Deserialize;
use serde_json::{json, Value};

use super::api_error::ApiError;
use super::openai::{GenerationFields, GenerationSettings, Stop, CHAT_MESSAGES_MAX};
use super::tool_calls::{ParsedOutput, ToolStreamEvent};
use super::tools::{tool_settings, ToolChoiceField, ToolDef, ToolSettings};

/// `POST /v1/messages`.
#[derive(Debug, Clone, Deserialize)]
pub struct MessagesRequest {
    /// Required by the API; this server serves one model whatever the name.
    pub model: String,
    /// Required: most tokens to generate.
    pub max_tokens: u64,
    /// The conversation (user and assistant turns).
    pub messages: Vec<AnthropicMessage>,
    /// A system prompt: text or text blocks.
    #[serde(default)]
    pub system: Option<SystemPrompt>,
    /// Tools: `{name, description, input_schema}`.
    #[serde(default)]
    pub tools: Option<Vec<AnthropicTool>>,
    /// `{"type": "auto" | "any" | "tool" | "none", "name"?, "disable_parallel_tool_use"?}`.
    #[serde(default)]
    pub tool_choice: Option<AnthropicToolChoice>,
    /// Strings that end the output (reported as `stop_sequence`).
    #[serde(default)]
    pub stop_sequences: Option<Vec<String>>,
    /// Sampling temperature (0 to 1; default 1).
    #[serde(default)]
    pub temperature: Option<f32>,
    /// Nucleus sampling mass.
    #[serde(default)]
    pub top_p: Option<f32>,
    /// Keep the k most likely tokens.
    #[serde(default)]
    pub top_k: Option<u32>,
    /// Stream server-sent events.
    #[serde(default)]
    pub stream: Option<bool>,
}

/// `system`: a string or a list of text blocks.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum SystemPrompt {
    /// Plain text.
    Text(String),
    /// Text blocks.
    Blocks(Vec<ContentBlock>),
}

/// One message.
#[derive(Debug, Clone, Deserialize)]
pub struct AnthropicMessage {
    /// `user` or `assistant`.
    pub role: String,
    /// Text or content blocks.
    pub content: AnthropicContent,
}

/// A message's content.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum AnthropicContent {
    /// Plain text.
    Text(String),
    /// Blocks.
    Blocks(Vec<ContentBlock>),
}

/// A content block.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ContentBlock {
    /// Text.
    Text {
        /// The text.
        text: String,
    },
    /// An earlier call by the assistant.
    ToolUse {
        /// Its id (`toolu_...`).
        id: String,
        /// The tool's name.
        name: String,
        /// Its arguments (an object).
        input: Value,
    },
    /// The result of a call, sent by the user.
    ToolResult {
        /// The call it answers.
        tool_use_id: String,
        /// Text or text blocks (absent = empty).
        #[serde(default)]
        content: Option<ToolResultContent>,
        /// Whether the tool failed.
        #[serde(default)]
        is_error: Option<bool>,
    },
    /// Any other block (image, document, thinking, ...): refused with a clear error.
    #[serde(other)]
    Unsupported,
}

/// A `tool_result`'s content.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum ToolResultContent {
    /// Plain text.
    Text(String),
    /// Blocks (text only).
    Blocks(Vec<ContentBlock>),
}

/// A tool definition.
#[derive(Debug, Clone, Deserialize)]
pub struct AnthropicTool {
    /// Its name.
    pub name: String,
    /// What it does.
    #[serde(default)]
    pub description: Option<String>,
    /// JSON schema of its input.
    pub input_schema: Value,
}

/// `tool_choice`.
#[derive(Debug, Clone, Deserialize)]
pub struct AnthropicToolChoice {
    /// `auto`, `any`, `tool` or `none`.
    #[serde(rename = "type")]
    pub kind: String,
    /// With `tool`: which.
    #[serde(default)]
    pub name: Option<String>,
    /// At most one call.
    #[serde(default)]
    pub disable_parallel_tool_use: Option<bool>,
}

/// A Messages request in the engine's terms.
#[derive(Debug, Clone)]
pub struct ChatInput {
    /// Messages as the chat template reads them (OpenAI shapes).
    pub messages: Vec<Value>,
    /// Tools, when the request has any.
    pub tools: Option<ToolSettings>,
    /// Sampling, stop strings, budget, stream.
    pub settings: GenerationSettings,
}

fn invalid(msg: impl Into<String>, param: &'static str) -> ApiError {
    ApiError::invalid(msg, Some(param))
}

fn blocks_text(blocks: &[ContentBlock], param: &'static str) -> Result<String, ApiError> {
    let mut s = String::new();
    for b in blocks {
        match b {
            ContentBlock::Text { text } => s.push_str(text),
            _ => return Err(invalid("only text blocks are supported here", param)),
        }
    }
    Ok(s)
}

impl MessagesRequest {
    /// Checks the request and converts it; `max_tokens_limit` bounds `max_tokens`.
    pub fn into_chat_input(
        self,
        max_tokens_limit: usize,
        fallback_seed: u64,
    ) -> Result<ChatInput, ApiError> {
        if self.messages.is_empty() || self.messages.len() > CHAT_MESSAGES_MAX {
            return Err(invalid(
                format!(
                    "{} messages; 1 to {CHAT_MESSAGES_MAX} are accepted",
                    self.messages.len()
                ),
                "messages",
            ));
        }
        if self.temperature.is_some_and(|t| !(0.0..=1.0).contains(&t)) {
            return Err(invalid(
                "temperature must be between 0 and 1",
                "temperature",
            ));
        }
        let mut messages = Vec::with_capacity(self.messages.len() + 1);
        match &self.system {
            None => {}
            Some(SystemPrompt::Text(t)) => messages.push(json!({"role": "system", "content": t})),
            Some(SystemPrompt::Blocks(b)) => {
                messages.push(json!({"role": "system", "content": blocks_text(b, "system")?}))
            }
        }
        for m in &self.messages {
            convert_message(m, &mut messages)?;
        }
        let tools = self.tools_settings()?;
        let fields = GenerationFields {
            max_tokens: Some(self.max_tokens),
            temperature: self.temperature,
            top_p: self.top_p,
            top_k: self.top_k,
            stop: self.stop_sequences.clone().map(Stop::Many),
            stream: self.stream,
            ..Default::default()
        };
        let settings = fields.settings(Some(self.max_tokens), max_tokens_limit, fallback_seed)?;
        Ok(ChatInput {
            messages,
            tools,
            settings,
        })
    }

    fn tools_settings(&self) -> Result<Option<ToolSettings>, ApiError> {
        let defs: Vec<ToolDef> = self
            .tools
            .iter()
            .flatten()
            .map(|t| {
                serde_json::from_value(json!({
                    "type": "function",
                    "function": {"name": t.name, "description": t.description, "parameters": t.input_schema}
                }))
                .map_err(|e| invalid(format!("bad tool {:?}: {e}", t.name), "tools"))
            })
            .collect::<Result<_, _>>()?;
        let (choice, parallel) = match &self.tool_choice {
            None => (None, None),
            Some(c) => {
                let choice = match (c.kind.as_str(), &c.name) {
                    ("auto", _) => ToolChoiceField::Mode("auto".into()),
                    ("any", _) => ToolChoiceField::Mode("required".into()),
                    ("none", _) => ToolChoiceField::Mode("none".into()),
                    ("tool", Some(name)) => serde_json::from_value(
                        json!({"type": "function", "function": {"name": name}}),
                    )
                    .map_err(|e| invalid(e.to_string(), "tool_choice"))?,
                    ("tool", None) => {
                        return Err(invalid(
                            "tool_choice of type tool needs a name",
                            "tool_choice",
                        ))
                    }
                    (other, _) => {
                        return Err(invalid(
                            format!(
                                "tool_choice type {other:?} is not one of auto, any, tool, none"
                            ),
                            "tool_choice",
                        ))
                    }
                };
                (Some(choice), c.disable_parallel_tool_use.map(|d| !d))
            }
        };
        tool_settings(Some(&defs), choice.as_ref(), parallel)
    }
}

/// Appends one Anthropic message as OpenAI-shaped template messages.
fn convert_message(m: &AnthropicMessage, out: &mut Vec<Value>) -> Result<(), ApiError> {
    let blocks: Vec<ContentBlock> = match &m.content {
        AnthropicContent::Text(t) => vec![ContentBlock::Text { text: t.clone() }],
        AnthropicContent::Blocks(b) => b.clone(),
    };
    match m.role.as_str() {
        "user" => {
            let mut text = String::new();
            for b in blocks {
                match b {
                    ContentBlock::Text { text: t } => text.push_str(&t),
                    ContentBlock::ToolResult {
                        tool_use_id,
                        content,
                        is_error,
                    } => {
                        let mut c = match content {
                            None => String::new(),
                            Some(ToolResultContent::Text(t)) => t,
                            Some(ToolResultContent::Blocks(b)) => blocks_text(&b, "messages")?,
                        };
                        if is_error == Some(true) {
                            c = format!("Error: {c}");
                        }
                        out.push(
                            json!({"role": "tool", "tool_call_id": tool_use_id, "content": c}),
                        );
                    }
                    ContentBlock::ToolUse { .. } => {
                        return Err(invalid(
                            "a user message cannot hold tool_use blocks",
                            "messages",
                        ))
                    }
                    ContentBlock::Unsupported => {
                        return Err(invalid(
                            "only text, tool_use and tool_result blocks are supported",
                            "messages",
                        ))
                    }
                }
            }
            if !text.is_empty() {
                out.push(json!({"role": "user", "content": text}));
            }
        }
        "assistant" => {
            let mut text = String::new();
            let mut calls = Vec::new();
            for b in blocks {
                match b {
                    ContentBlock::Text { text: t } => text.push_str(&t),
                    ContentBlock::ToolUse { id, name, input } => {
                        if !input.is_object() {
                            return Err(invalid(
                                "a tool_use block's input must be an object",
                                "messages",
                            ));
                        }
                        calls.push(json!({"id": id, "type": "function", "function": {"name": name, "arguments": input.to_string()}}));
                    }
                    _ => {
                        return Err(invalid(
                            "an assistant message holds only text and tool_use blocks",
                            "messages",
                        ))
                    }
                }
            }
            if calls.is_empty() {
                out.push(json!({"role": "assistant", "content": text}));
            } else {
                let content = if text.is_empty() {
                    Value::Null
                } else {
                    text.into()
                };
                out.push(json!({"role": "assistant", "content": content, "tool_calls": calls}));
            }
        }
        other => {
            return Err(invalid(
                format!(
                    "message role {other:?}; only user and assistant (system goes in `system`)"
                ),
                "messages",
            ))
        }
    }
    Ok(())
}

/// Why the answer ended, in Anthropic's words.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    /// EOS (also for malformed tool-call output, answered as text).
    EndTurn,
    /// `max_tokens`.
    MaxTokens,
    /// One of `stop_sequences`.
    StopSequence,
    /// The model called tools.
    ToolUse,
}

impl StopReason {
    /// The API's string.
    pub fn as_str(self) -> &'static str {
        match self {
            StopReason::EndTurn => "end_turn",
            StopReason::MaxTokens => "max_tokens",
            StopReason::StopSequence => "stop_sequence",
            StopReason::ToolUse => "tool_use",
        }
    }
}

/// What every event of one answer repeats.
#[derive(Debug, Clone)]
pub struct MessageMeta {
    /// `msg_...`.
    pub id: String,
    /// The served model name.
    pub model: String,
}

/// The content blocks of a finished answer: text (if any), then one `tool_use` per call.
pub fn content_blocks(parsed: &ParsedOutput) -> Vec<Value> {
    match parsed {
        ParsedOutput::Malformed { raw, .. } => vec![json!({"type": "text", "text": raw})],
        ParsedOutput::Message {
            content,
            tool_calls,
        } => {
            let mut blocks = Vec::new();
            if let Some(c) = content.as_ref().filter(|c| !c.is_empty()) {
                blocks.push(json!({"type": "text", "text": c}));
            }
            for c in tool_calls {
                // The parser checked the arguments are a JSON object.
                let input: Value = serde_json::from_str(&c.arguments).unwrap_or_else(|_| json!({}));
                blocks
                    .push(json!({"type": "tool_use", "id": c.id, "name": c.name, "input": input}));
            }
            blocks
        }
    }
}

impl MessageMeta {
    /// The non-streamed `message` object.
    pub fn message(
        &self,
        blocks: Vec<Value>,
        stop: StopReason,
        stop_sequence: Option<&str>,
        input_tokens: usize,
        output_tokens: usize,
    ) -> Value {
        json!({
            "id": self.id, "type": "message", "role": "assistant", "model": self.model,
            "content": blocks, "stop_reason": stop.as_str(), "stop_sequence": stop_sequence,
            "usage": {"input_tokens": input_tokens, "output_tokens": output_tokens},
        })
    }
}

/// An error in Anthropic's shape: `{"type": "error", "error": {"type", "message"}}` (the
/// HTTP status stays the `ApiError`'s).
pub fn error_body(e: &ApiError) -> Value {
    let kind = match (e.status.as_u16(), e.kind) {
        (401, _) => "authentication_error",
        (413, _) => "request_too_large",
        (429, _) => "rate_limit_error",
        (503, _) => "overloaded_error",
        (_, "invalid_request_error") => "invalid_request_error",
        _ => "api_error",
    };
    json!({ "type": "error", "error": { "type": kind, "message": e.message } })
}

/// One server-sent event: `event: NAME\ndata: JSON\n\n`.
pub fn sse_frame(event: &str, data: &Value) -> String {
    format!("event: {event}\ndata: {data}\n\n")
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum OpenBlock {
    None,
    Text,
    ToolUse,
}

/// The streamed event sequence of one answer, fed the tool-call reader's events.
#[derive(Debug)]
pub struct MessageStream {
    meta: MessageMeta,
    open: OpenBlock,
    /// Index of the next block.
    next_index: usize,
}

impl MessageStream {
    /// A stream for one answer.
    pub fn new(meta: MessageMeta) -> Self {
        Self {
            meta,
            open: OpenBlock::None,
            next_index: 0,
        }
    }

    /// `message_start` (send first).
    pub fn start(&self, input_tokens: usize) -> (&'static str, Value) {
        (
            "message_start",
            json!({"type": "message_start", "message": {
                "id": self.meta.id, "type": "message", "role": "assistant", "model": self.meta.model,
                "content": [], "stop_reason": null, "stop_sequence": null,
                "usage": {"input_tokens": input_tokens, "output_tokens": 0}}}),
        )
    }

    fn close(&mut self, out: &mut Vec<(&'static str, Value)>) {
        if self.open != OpenBlock::None {
            let index = self.next_index - 1;
            out.push((
                "content_block_stop",
                json!({"type": "content_block_stop", "index": index}),
            ));
            self.open = OpenBlock::None;
        }
    }

    fn open(
        &mut self,
        kind: OpenBlock,
        block: Value,
        out: &mut Vec<(&'static str, Value)>,
    ) -> usize {
        self.close(out);
        let index = self.next_index;
        self.next_index += 1;
        self.open = kind;
        out.push((
            "content_block_start",
            json!({"type": "content_block_start", "index": index, "content_block": block}),
        ));
        index
    }

    /// The events for one piece of reader output.
    pub fn push(&mut self, event: &ToolStreamEvent) -> Vec<(&'static str, Value)> {
        let mut out = Vec::new();
        match event {
            ToolStreamEvent::Content(text) => {
                if text.is_empty() {
                    return out;
                }
                let index = if self.open == OpenBlock::Text {
                    self.next_index - 1
                } else {
                    self.open(
                        OpenBlock::Text,
                        json!({"type": "text", "text": ""}),
                        &mut out,
                    )
                };
                out.push(("content_block_delta", json!({"type": "content_block_delta", "index": index, "delta": {"type": "text_delta", "text": text}})));
            }
            ToolStreamEvent::CallStart { id, name, .. } => {
                self.open(
                    OpenBlock::ToolUse,
                    json!({"type": "tool_use", "id": id, "name": name, "input": {}}),
                    &mut out,
                );
            }
            ToolStreamEvent::Arguments { fragment, .. } => {
                if self.open == OpenBlock::ToolUse {
                    let index = self.next_index - 1;
                    out.push(("content_block_delta", json!({"type": "content_block_delta", "index": index, "delta": {"type": "input_json_delta", "partial_json": fragment}})));
                }
            }
        }
        out
    }

    /// The closing events: the open block's stop, `message_delta`, `message_stop`.
    pub fn finish(
        &mut self,
        stop: StopReason,
        stop_sequence: Option<&str>,
        output_tokens: usize,
    ) -> Vec<(&'static str, Value)> {
        let mut out = Vec::new();
        self.close(&mut out);
        out.push((
            "message_delta",
            json!({"type": "message_delta",
            "delta": {"stop_reason": stop.as_str(), "stop_sequence": stop_sequence},
            "usage": {"output_tokens": output_tokens}}),
        ));
        out.push(("message_stop", json!({"type": "message_stop"})));
        out
    }
}

#[cfg(test)]
#[path = "anthropic_tests.rs"]
mod tests;
