//! The model's tool-call markup, read back into OpenAI `tool_calls`.
//!
//! Two formats, told apart by the chat template that writes them ([`ToolCallFormat::detect`]):
//!
//! ```text
//! Kimi K2 / K2.5:  <|tool_calls_section_begin|>
//!                  <|tool_call_begin|>functions.NAME:IDX<|tool_call_argument_begin|>{json}<|tool_call_end|>
//!                  ... <|tool_calls_section_end|>
//! DeepSeek-V3/R1:  <｜tool▁calls▁begin｜>
//!                  <｜tool▁call▁begin｜>function<｜tool▁sep｜>NAME\n```json\n{json}\n```<｜tool▁call▁end｜>
//!                  ... <｜tool▁calls▁end｜>
//! DeepSeek-V3.1:   <｜tool▁calls▁begin｜><｜tool▁call▁begin｜>NAME<｜tool▁sep｜>{json}<｜tool▁call▁end｜> ... <｜tool▁calls▁end｜>
//! ```
//!
//! (as the templates in `tests/data/chat_templates/` render past calls, and as llama.cpp's
//! `common/parsers/kimi-k2.cpp` reads them, including a call without the section marker).
//!
//! [`ToolCallStream`] reads the output as it is generated: fed text pieces, it returns
//! content deltas and tool-call deltas (a call's index, id and name once, then fragments of
//! its arguments) the way OpenAI streams them, holding back any text that may be the start
//! of a marker. [`parse_tool_calls`] reads a whole output through the same machine.
//!
//! Decides: where content ends and calls begin, each call's id, name and arguments, and
//! when the output is malformed (a truncated call, arguments that are not a JSON object, an
//! unknown function, text where a marker belongs). Leaves to the engine what to do then:
//! the issue's rule is that malformed output is answered as content with the finish reason
//! `malformed_tool_call`, never as a server error. Reasoning text (`<think>`) is content here.

use serde_json::{json, Value};

use super::openai::FinishReason;

/// Longest call header (`functions.NAME:IDX`, or DeepSeek's `function<sep>NAME`), in bytes.
pub const TOOL_CALL_HEADER_BYTES_MAX: usize = 512;
/// Most tool calls read from one output.
pub const TOOL_CALLS_MAX: usize = 64;

/// Which markup a model writes its tool calls in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ToolCallFormat {
    /// Kimi K2 / K2.5: `<|tool_call_begin|>functions.NAME:IDX<|tool_call_argument_begin|>`.
    KimiK2,
    /// DeepSeek-V3 / R1: `function<｜tool▁sep｜>NAME` + fenced JSON.
    DeepSeekV3,
    /// DeepSeek-V3.1: `NAME<｜tool▁sep｜>JSON`. Read by the same reader as V3 (each call's
    /// header says which form it has); the two differ in what a constrained call must look like.
    DeepSeekV31,
}

pub(crate) const KIMI_SECTION_BEGIN: &str = "<|tool_calls_section_begin|>";
pub(crate) const KIMI_SECTION_END: &str = "<|tool_calls_section_end|>";
pub(crate) const KIMI_CALL_BEGIN: &str = "<|tool_call_begin|>";
pub(crate) const KIMI_ARGS_BEGIN: &str = "<|tool_call_argument_begin|>";
pub(crate) const KIMI_CALL_END: &str = "<|tool_call_end|>";

pub(crate) const DS_SECTION_BEGIN: &str = "<｜tool▁calls▁begin｜>";
pub(crate) const DS_SECTION_END: &str = "<｜tool▁calls▁end｜>";
pub(crate) const DS_CALL_BEGIN: &str = "<｜tool▁call▁begin｜>";
pub(crate) const DS_SEP: &str = "<｜tool▁sep｜>";
pub(crate) const DS_CALL_END: &str = "<｜tool▁call▁end｜>";
const DS_FENCE_OPEN: &str = "```json";
const DS_FENCE_CLOSE: &str = "```";

impl ToolCallFormat {
    /// The format a chat template writes past tool calls in, if it writes any.
    pub fn detect(template_source: &str) -> Option<Self> {
        if template_source.contains(KIMI_CALL_BEGIN) {
            Some(ToolCallFormat::KimiK2)
        } else if template_source.contains(DS_CALL_BEGIN) {
            if template_source.contains(DS_FENCE_OPEN) {
                Some(ToolCallFormat::DeepSeekV3)
            } else {
                Some(ToolCallFormat::DeepSeekV31)
            }
        } else {
            None
        }
    }

    /// The markup that ends a call and its section (what a forced call must still write
    /// once its arguments close): a budget has to keep room for it.
    pub fn closing_markup(self) -> String {
        match self {
            ToolCallFormat::KimiK2 => format!("{KIMI_CALL_END}{KIMI_SECTION_END}"),
            ToolCallFormat::DeepSeekV3 => {
                format!("\n{DS_FENCE_CLOSE}{DS_CALL_END}{DS_SECTION_END}")
            }
            ToolCallFormat::DeepSeekV31 => format!("{DS_CALL_END}{DS_SECTION_END}"),
        }
    }

    fn section_begin(self) -> &'static str {
        match self {
            ToolCallFormat::KimiK2 => KIMI_SECTION_BEGIN,
            ToolCallFormat::DeepSeekV3 | ToolCallFormat::DeepSeekV31 => DS_SECTION_BEGIN,
        }
    }
    fn section_end(self) -> &'static str {
        match self {
            ToolCallFormat::KimiK2 => KIMI_SECTION_END,
            ToolCallFormat::DeepSeekV3 | ToolCallFormat::DeepSeekV31 => DS_SECTION_END,
        }
    }
    fn call_begin(self) -> &'static str {
        match self {
            ToolCallFormat::KimiK2 => KIMI_CALL_BEGIN,
            ToolCallFormat::DeepSeekV3 | ToolCallFormat::DeepSeekV31 => DS_CALL_BEGIN,
        }
    }
}

/// One finished tool call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ToolCall {
    /// Kimi's own id (`functions.NAME:IDX`, which its template pairs results with), else
    /// `{id_prefix}{index}`.
    pub id: String,
    /// The function's name.
    pub name: String,
    /// The arguments as the model wrote them: JSON text of an object.
    pub arguments: String,
}

impl ToolCall {
    /// The call as an element of OpenAI's `message.tool_calls`.
    pub fn openai_json(&self) -> Value {
        json!({ "id": self.id, "type": "function", "function": { "name": self.name, "arguments": self.arguments } })
    }
}

/// What a piece of output produced, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ToolStreamEvent {
    /// Plain content.
    Content(String),
    /// A call begins (sent once per call, before its arguments).
    CallStart {
        /// Position of the call in `tool_calls`.
        index: usize,
        /// Its id.
        id: String,
        /// The function's name.
        name: String,
    },
    /// A fragment of a call's arguments (the fragments joined are the arguments).
    Arguments {
        /// Position of the call in `tool_calls`.
        index: usize,
        /// The fragment.
        fragment: String,
    },
}

impl ToolStreamEvent {
    /// The element of a streamed chunk's `delta.tool_calls`, as OpenAI sends it; `None` for
    /// content (which goes in `delta.content`).
    pub fn openai_tool_call_delta(&self) -> Option<Value> {
        match self {
            ToolStreamEvent::Content(_) => None,
            ToolStreamEvent::CallStart { index, id, name } => Some(
                json!({ "index": index, "id": id, "type": "function", "function": { "name": name, "arguments": "" } }),
            ),
            ToolStreamEvent::Arguments { index, fragment } => {
                Some(json!({ "index": index, "function": { "arguments": fragment } }))
            }
        }
    }
}

/// Why an output is not a well-formed set of tool calls.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Malformed {
    /// What was wrong, for logs and the client.
    pub reason: String,
}

/// A whole output, read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ParsedOutput {
    /// Content (`None` when the model wrote only calls) and the calls.
    Message {
        /// Text outside the calls.
        content: Option<String>,
        /// The calls, in order.
        tool_calls: Vec<ToolCall>,
    },
    /// The markup is broken: answer `raw` as content, finish reason `malformed_tool_call`.
    Malformed {
        /// The whole output as generated.
        raw: String,
        /// What was wrong.
        reason: String,
    },
}

impl ParsedOutput {
    /// The chat completion's `message`: content (null when the model wrote only calls) and
    /// `tool_calls`; a malformed output is its raw text as content.
    pub fn openai_message(&self) -> Value {
        match self {
            ParsedOutput::Malformed { raw, .. } => json!({ "role": "assistant", "content": raw }),
            ParsedOutput::Message {
                content,
                tool_calls,
            } if !tool_calls.is_empty() => json!({
                "role": "assistant",
                "content": content,
                "tool_calls": tool_calls.iter().map(ToolCall::openai_json).collect::<Vec<_>>(),
            }),
            ParsedOutput::Message { content, .. } => {
                json!({ "role": "assistant", "content": content.clone().unwrap_or_default() })
            }
        }
    }

    /// The finish reason: `tool_calls` when the model called tools and stopped by itself,
    /// `malformed_tool_call` for broken markup, else `ended` (how generation ended).
    pub fn finish_reason(&self, ended: FinishReason) -> FinishReason {
        match self {
            ParsedOutput::Malformed { .. } => FinishReason::MalformedToolCall,
            ParsedOutput::Message { tool_calls, .. }
                if !tool_calls.is_empty() && ended == FinishReason::Stop =>
            {
                FinishReason::ToolCalls
            }
            ParsedOutput::Message { .. } => ended,
        }
    }
}

/// Reads a whole output: content and calls, or why it is malformed. `known_names` empty
/// accepts any function name.
pub fn parse_tool_calls(
    format: ToolCallFormat,
    text: &str,
    known_names: &[String],
    id_prefix: &str,
) -> ParsedOutput {
    let mut stream = ToolCallStream::new(format, known_names.to_vec(), id_prefix.to_string());
    let mut events = match stream.push(text) {
        Ok(e) => e,
        Err(m) => return malformed(text, m),
    };
    match stream.finish() {
        Ok(e) => events.extend(e),
        Err(m) => return malformed(text, m),
    }
    let (content, calls) = join_events(events);
    let content = if calls.is_empty() || !content.trim().is_empty() {
        Some(content)
    } else {
        None
    };
    ParsedOutput::Message {
        content,
        tool_calls: calls,
    }
}

/// The content and the calls a stream's events spell out, joined in order.
pub(crate) fn join_events(events: Vec<ToolStreamEvent>) -> (String, Vec<ToolCall>) {
    let mut content = String::new();
    let mut calls: Vec<ToolCall> = Vec::new();
    for e in events {
        match e {
            ToolStreamEvent::Content(c) => content.push_str(&c),
            ToolStreamEvent::CallStart { id, name, .. } => calls.push(ToolCall {
                id,
                name,
                arguments: String::new(),
            }),
            ToolStreamEvent::Arguments { index, fragment } => {
                calls[index].arguments.push_str(&fragment)
            }
        }
    }
    (content, calls)
}

fn malformed(text: &str, m: Malformed) -> ParsedOutput {
    ParsedOutput::Malformed {
        raw: text.to_string(),
        reason: m.reason,
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Plain text; looking for a section or call opener.
    Content,
    /// Inside a section between calls: whitespace, a call opener or the section's end.
    BetweenCalls { explicit_section: bool },
    /// After a call opener, reading the header up to where the arguments begin.
    Header { explicit_section: bool },
    /// Streaming arguments up to `terminator`.
    Args {
        explicit_section: bool,
        terminator: &'static str,
        fenced: bool,
    },
    /// DeepSeek-V3: after the closing fence, before the call's end marker.
    AfterFence { explicit_section: bool },
}

/// The incremental reader. Feed pieces with [`push`](Self::push), end with
/// [`finish`](Self::finish); after an error the output is malformed and the stream is spent.
#[derive(Debug)]
pub struct ToolCallStream {
    format: ToolCallFormat,
    known_names: Vec<String>,
    id_prefix: String,
    state: State,
    /// Text not yet turned into events.
    pending: String,
    /// Calls started so far.
    calls: usize,
    /// The current call's arguments so far (to check they are JSON at its end).
    args: String,
    /// Whitespace at the end of the arguments read so far, held back (a fence or marker may follow).
    args_ws: String,
}

impl ToolCallStream {
    /// A reader for `format`; `known_names` (the request's tools) empty accepts any name;
    /// ids of DeepSeek calls are `{id_prefix}{index}`.
    pub fn new(format: ToolCallFormat, known_names: Vec<String>, id_prefix: String) -> Self {
        Self {
            format,
            known_names,
            id_prefix,
            state: State::Content,
            pending: String::new(),
            calls: 0,
            args: String::new(),
            args_ws: String::new(),
        }
    }

    /// Calls started so far.
    pub fn calls_started(&self) -> usize {
        self.calls
    }

    /// Adds generated text; returns what can be sent now.
    pub fn push(&mut self, piece: &str) -> Result<Vec<ToolStreamEvent>, Malformed> {
        self.pending.push_str(piece);
        let mut out = Vec::new();
        while self.step(&mut out)? {}
        Ok(out)
    }

    /// The output has ended: releases held-back content, or reports a call left open.
    pub fn finish(&mut self) -> Result<Vec<ToolStreamEvent>, Malformed> {
        let mut out = Vec::new();
        match self.state {
            State::Content => {
                if !self.pending.is_empty() {
                    out.push(ToolStreamEvent::Content(std::mem::take(&mut self.pending)));
                }
                Ok(out)
            }
            // A section whose end marker never came (EOS right after the last call) is fine
            // as long as nothing but whitespace is left.
            State::BetweenCalls { .. } if self.pending.trim().is_empty() => Ok(out),
            State::BetweenCalls { .. } => Err(bad(format!(
                "text {:?} where a tool call or the section's end belongs",
                clip(&self.pending)
            ))),
            State::Header { .. } | State::Args { .. } | State::AfterFence { .. } => {
                Err(bad(format!(
                    "the output ended inside tool call {}",
                    self.calls.saturating_sub(1)
                )))
            }
        }
    }

    /// One transition; `false` when more text is needed.
    fn step(&mut self, out: &mut Vec<ToolStreamEvent>) -> Result<bool, Malformed> {
        let f = self.format;
        match self.state {
            State::Content => {
                let openers = [f.section_begin(), f.call_begin()];
                match find_first(&self.pending, &openers) {
                    Some((at, which)) => {
                        if at > 0 {
                            out.push(ToolStreamEvent::Content(self.pending[..at].to_string()));
                        }
                        self.pending.drain(..at + openers[which].len());
                        self.state = if which == 0 {
                            State::BetweenCalls {
                                explicit_section: true,
                            }
                        } else {
                            State::Header {
                                explicit_section: false,
                            }
                        };
                        Ok(true)
                    }
                    None => {
                        let keep = held_suffix(&self.pending, &openers);
                        let cut = self.pending.len() - keep;
                        if cut > 0 {
                            out.push(ToolStreamEvent::Content(self.pending[..cut].to_string()));
                            self.pending.drain(..cut);
                        }
                        Ok(false)
                    }
                }
            }
            State::BetweenCalls { explicit_section } => {
                let trimmed = self.pending.trim_start();
                let ws = self.pending.len() - trimmed.len();
                if trimmed.starts_with(f.call_begin()) {
                    self.pending.drain(..ws + f.call_begin().len());
                    self.state = State::Header { explicit_section };
                    Ok(true)
                } else if trimmed.starts_with(f.section_end()) {
                    self.pending.drain(..ws + f.section_end().len());
                    self.state = State::Content;
                    Ok(true)
                } else if f.call_begin().starts_with(trimmed)
                    || f.section_end().starts_with(trimmed)
                {
                    Ok(false) // a marker may be arriving
                } else if !explicit_section {
                    // A bare call (no section marker) followed by text: back to content.
                    self.state = State::Content;
                    Ok(true)
                } else {
                    Err(bad(format!(
                        "text {:?} where a tool call or the section's end belongs",
                        clip(trimmed)
                    )))
                }
            }
            State::Header { explicit_section } => self.read_header(explicit_section, out),
            State::Args {
                explicit_section,
                terminator,
                fenced,
            } => {
                if let Some(at) = self.pending.find(terminator) {
                    let frag = self.pending[..at].to_string();
                    self.pending.drain(..at + terminator.len());
                    self.emit_args(&frag, true, out);
                    self.end_args()?;
                    self.state = if fenced {
                        State::AfterFence { explicit_section }
                    } else {
                        State::BetweenCalls { explicit_section }
                    };
                    Ok(true)
                } else {
                    let keep = held_suffix(&self.pending, &[terminator]);
                    let cut = self.pending.len() - keep;
                    let frag = self.pending[..cut].to_string();
                    self.pending.drain(..cut);
                    self.emit_args(&frag, false, out);
                    Ok(false)
                }
            }
            State::AfterFence { explicit_section } => {
                let trimmed = self.pending.trim_start();
                let ws = self.pending.len() - trimmed.len();
                if trimmed.starts_with(DS_CALL_END) {
                    self.pending.drain(..ws + DS_CALL_END.len());
                    self.state = State::BetweenCalls { explicit_section };
                    Ok(true)
                } else if DS_CALL_END.starts_with(trimmed) {
                    Ok(false)
                } else {
                    Err(bad(format!(
                        "text {:?} between a call's closing fence and its end marker",
                        clip(trimmed)
                    )))
                }
            }
        }
    }

    fn read_header(
        &mut self,
        explicit_section: bool,
        out: &mut Vec<ToolStreamEvent>,
    ) -> Result<bool, Malformed> {
        let index = self.calls;
        let (header_end, name, id, terminator, fenced) = match self.format {
            ToolCallFormat::KimiK2 => {
                let Some(at) = self.pending.find(KIMI_ARGS_BEGIN) else {
                    return self.header_incomplete();
                };
                let header = self.pending[..at].trim();
                // `functions.NAME:IDX`; the index is the model's count, the id keeps it.
                let body = header.strip_prefix("functions.").unwrap_or(header);
                let name = match body.rsplit_once(':') {
                    Some((n, idx)) if idx.chars().all(|c| c.is_ascii_digit()) => n,
                    _ => body,
                };
                let id = if header.contains(':') {
                    header.to_string()
                } else {
                    format!("functions.{name}:{index}")
                };
                (
                    at + KIMI_ARGS_BEGIN.len(),
                    name.to_string(),
                    id,
                    KIMI_CALL_END,
                    false,
                )
            }
            ToolCallFormat::DeepSeekV3 | ToolCallFormat::DeepSeekV31 => {
                let Some(sep) = self.pending.find(DS_SEP) else {
                    return self.header_incomplete();
                };
                let head = self.pending[..sep].trim();
                let after = &self.pending[sep + DS_SEP.len()..];
                if head == "function" {
                    // V3/R1: NAME, then a ```json fence.
                    let Some(fence) = after.find(DS_FENCE_OPEN) else {
                        if after.len() > TOOL_CALL_HEADER_BYTES_MAX {
                            return Err(bad("no ```json fence after a DeepSeek tool call's name"));
                        }
                        return Ok(false);
                    };
                    let name = after[..fence].trim().to_string();
                    (
                        sep + DS_SEP.len() + fence + DS_FENCE_OPEN.len(),
                        name,
                        format!("{}{index}", self.id_prefix),
                        DS_FENCE_CLOSE,
                        true,
                    )
                } else {
                    // V3.1: NAME<sep>JSON.
                    (
                        sep + DS_SEP.len(),
                        head.to_string(),
                        format!("{}{index}", self.id_prefix),
                        DS_CALL_END,
                        false,
                    )
                }
            }
        };
        if name.is_empty() || name.chars().any(char::is_whitespace) {
            return Err(bad(format!(
                "tool call {index} has no valid function name: {:?}",
                clip(&name)
            )));
        }
        if !self.known_names.is_empty() && !self.known_names.contains(&name) {
            return Err(bad(format!(
                "tool call {index} names an unknown function {name:?}"
            )));
        }
        if self.calls >= TOOL_CALLS_MAX {
            return Err(bad(format!("more than {TOOL_CALLS_MAX} tool calls")));
        }
        self.pending.drain(..header_end);
        self.calls += 1;
        self.args.clear();
        self.args_ws.clear();
        out.push(ToolStreamEvent::CallStart { index, id, name });
        self.state = State::Args {
            explicit_section,
            terminator,
            fenced,
        };
        Ok(true)
    }

    fn header_incomplete(&self) -> Result<bool, Malformed> {
        if self.pending.len() > TOOL_CALL_HEADER_BYTES_MAX {
            Err(bad(format!(
                "a tool call header longer than {TOOL_CALL_HEADER_BYTES_MAX} bytes"
            )))
        } else {
            Ok(false)
        }
    }

    /// Sends argument text, trimmed at both ends of the whole (whitespace is held until
    /// something else follows it; at the end it is dropped).
    fn emit_args(&mut self, frag: &str, last: bool, out: &mut Vec<ToolStreamEvent>) {
        let mut text = std::mem::take(&mut self.args_ws);
        text.push_str(frag);
        if self.args.is_empty() {
            text = text.trim_start().to_string();
        }
        let body = text.trim_end();
        if !last {
            self.args_ws = text[body.len()..].to_string();
        }
        if !body.is_empty() {
            self.args.push_str(body);
            out.push(ToolStreamEvent::Arguments {
                index: self.calls - 1,
                fragment: body.to_string(),
            });
        }
    }

    fn end_args(&mut self) -> Result<(), Malformed> {
        let index = self.calls - 1;
        match serde_json::from_str::<Value>(&self.args) {
            Ok(Value::Object(_)) => Ok(()),
            Ok(_) => Err(bad(format!(
                "tool call {index}'s arguments are not a JSON object"
            ))),
            Err(e) => Err(bad(format!(
                "tool call {index}'s arguments are not JSON: {e}"
            ))),
        }
    }
}

fn bad(reason: impl Into<String>) -> Malformed {
    Malformed {
        reason: reason.into(),
    }
}

/// At most 80 characters of `s`, for messages.
fn clip(s: &str) -> String {
    s.chars().take(80).collect()
}

/// The earliest occurrence of any of `needles` in `hay`: (byte offset, which needle).
fn find_first(hay: &str, needles: &[&str]) -> Option<(usize, usize)> {
    needles
        .iter()
        .enumerate()
        .filter_map(|(i, n)| hay.find(n).map(|at| (at, i)))
        .min()
}

/// Length of the longest suffix of `hay` that is a proper prefix of one of `needles` (text
/// that may be the start of a marker, so not yet releasable).
fn held_suffix(hay: &str, needles: &[&str]) -> usize {
    let longest = needles.iter().map(|n| n.len()).max().unwrap_or(0);
    let start = hay.len().saturating_sub(longest);
    (start..hay.len())
        .filter(|&k| hay.is_char_boundary(k))
        .find(|&k| needles.iter().any(|n| n.starts_with(&hay[k..])))
        .map(|k| hay.len() - k)
        .unwrap_or(0)
}

#[cfg(test)]
#[path = "tool_calls_tests.rs"]
mod tests;
