//! OpenAI answers of a job (chat and completions): every choice collected into one JSON
//! object, or streamed as server-sent events, with tool calls read from the text
//! (`tool_calls.rs`) and log-probabilities (`logprobs.rs`).
//!
//! Non-streamed: each choice's text goes through [`parse_tool_calls`] when the request had
//! tools (tool_choice other than none): `message.tool_calls` and finish reason `tool_calls`,
//! or broken markup as content with `malformed_tool_call` (HTTP 200, never a 500).
//! Streamed: one [`ToolCallStream`] per choice turns released text into `delta.content` and
//! `delta.tool_calls`; chunks of the choices interleave as the engine produces them, each
//! choice's finish chunk comes once every choice has ended. `usage` sums the choices'
//! completion tokens and counts the prompt once.
//!
//! Decides: the answer's shape. Leaves generation to the engine.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::Arc;

use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use moe_model::tokenizer::Tokenizer;
use serde_json::{json, Map, Value};

use super::api_error::ApiError;
use super::engine::{Finished, JobReceiver};
use super::logprobs::{self, TokenLogprob};
use super::openai::{Endpoint, FinishReason, ResponseMeta, Usage};
use super::tool_calls::{
    parse_tool_calls, Malformed, ParsedOutput, ToolCallFormat, ToolCallStream, ToolStreamEvent,
};

/// How tool calls are read back from a choice's text.
#[derive(Debug, Clone)]
pub struct ToolOutput {
    /// The model's markup.
    pub format: ToolCallFormat,
    /// The request's function names.
    pub names: Vec<String>,
    /// Ids of calls without their own: `{id_prefix}{choice}_{call}`.
    pub id_prefix: String,
    /// `parallel_tool_calls`: with false, only the first call is reported (a forced call
    /// is one call by its grammar; under `auto` later calls are dropped).
    pub parallel: bool,
}

impl ToolOutput {
    /// A reader for choice `index`'s stream.
    pub fn stream(&self, index: usize) -> ToolCallStream {
        ToolCallStream::new(
            self.format,
            self.names.clone(),
            format!("{}{index}_", self.id_prefix),
        )
    }

    /// Choice `index`'s whole text, read.
    pub fn parse(&self, index: usize, text: &str) -> ParsedOutput {
        let mut parsed = parse_tool_calls(
            self.format,
            text,
            &self.names,
            &format!("{}{index}_", self.id_prefix),
        );
        if let ParsedOutput::Message { tool_calls, .. } = &mut parsed {
            if !self.parallel {
                tool_calls.truncate(1);
            }
        }
        parsed
    }

    /// Whether a streamed event is reported (not a second call without `parallel`).
    pub fn keeps(&self, event: &ToolStreamEvent) -> bool {
        match event {
            ToolStreamEvent::Content(_) => true,
            ToolStreamEvent::CallStart { index, .. } | ToolStreamEvent::Arguments { index, .. } => {
                self.parallel || *index == 0
            }
        }
    }
}

/// What an answer is made of beside the job's output.
pub struct OutputSpec {
    /// Ids, endpoint.
    pub meta: ResponseMeta,
    /// Token text for logprobs.
    pub tokenizer: Arc<Tokenizer>,
    /// Tool calls to read from the text.
    pub tools: Option<ToolOutput>,
    /// Logprobs were asked for.
    pub logprobs: bool,
    /// A usage chunk ends a stream.
    pub include_usage: bool,
}

/// Usage over the choices: the prompt once, the completions summed.
pub fn total_usage(ends: &[Finished]) -> Usage {
    let first = ends.first().map(|f| f.usage).unwrap_or_default();
    Usage {
        completion_tokens: ends.iter().map(|f| f.usage.completion_tokens).sum(),
        ..first
    }
}

/// Every choice's end, in order; the first failure fails the request.
pub async fn ends(rx: JobReceiver) -> Result<Vec<Finished>, ApiError> {
    let mut out = Vec::with_capacity(rx.done.len());
    for done in rx.done {
        match done.await {
            Ok(Ok(f)) => out.push(f),
            Ok(Err(e)) => return Err(e.into()),
            Err(_) => return Err(ApiError::unavailable("the engine stopped")),
        }
    }
    Ok(out)
}

/// One choice's output collected.
#[derive(Default)]
pub struct Collected {
    /// Text.
    pub text: String,
    /// Token ids.
    pub ids: Vec<u32>,
    /// Log-probabilities of `ids` (when asked for).
    pub logprobs: Vec<TokenLogprob>,
}

/// Reads every piece of every choice, then their ends (tails appended).
pub async fn collect(mut rx: JobReceiver) -> Result<(Vec<Collected>, Vec<Finished>), ApiError> {
    let mut out: Vec<Collected> = (0..rx.done.len()).map(|_| Collected::default()).collect();
    while let Some(c) = rx.pieces.recv().await {
        if let Some(o) = out.get_mut(c.index) {
            o.text.push_str(&c.piece.text);
            o.ids.extend(c.piece.token_ids);
            o.logprobs.extend(c.logprobs);
        }
    }
    let ends = ends(rx).await?;
    for (o, f) in out.iter_mut().zip(&ends) {
        o.text.push_str(&f.tail.text);
        o.ids.extend(&f.tail.token_ids);
        o.logprobs.extend(f.logprobs.iter().cloned());
    }
    Ok((out, ends))
}

/// The answer: one JSON object, or an SSE stream.
pub async fn respond(
    spec: OutputSpec,
    rx: JobReceiver,
    stream: bool,
) -> Result<Response, ApiError> {
    if stream {
        let state = StreamState {
            tool_streams: (0..rx.done.len())
                .map(|i| spec.tools.as_ref().map(|t| t.stream(i)))
                .collect(),
            malformed: vec![false; rx.done.len()],
            offsets: vec![0; rx.done.len()],
            spec,
            rx: Some(rx),
            phase: Phase::Start,
            queue: VecDeque::new(),
        };
        let events = futures_util::stream::unfold(state, |mut s| async move {
            s.next_event().await.map(|e| (Ok::<_, Infallible>(e), s))
        });
        return Ok(Sse::new(events)
            .keep_alive(KeepAlive::default())
            .into_response());
    }
    let (outs, ends) = collect(rx).await?;
    let tok = &spec.tokenizer;
    let mut choices = Vec::with_capacity(outs.len());
    for (i, (o, f)) in outs.iter().zip(&ends).enumerate() {
        let choice = match spec.meta.endpoint {
            Endpoint::Completions => {
                let lp = if spec.logprobs {
                    logprobs::completion_json(tok, &o.logprobs, 0)
                } else {
                    Value::Null
                };
                ResponseMeta::text_choice(i, &o.text, lp, f.finish, &o.ids)
            }
            Endpoint::Chat => {
                let lp = if spec.logprobs {
                    logprobs::chat_json(tok, &o.logprobs)
                } else {
                    Value::Null
                };
                let (message, finish) = match &spec.tools {
                    Some(t) => {
                        let parsed = t.parse(i, &o.text);
                        if let ParsedOutput::Malformed { reason, .. } = &parsed {
                            eprintln!(
                                "serve: choice {i} of {}: malformed tool call: {reason}",
                                spec.meta.id
                            );
                        }
                        (parsed.openai_message(), parsed.finish_reason(f.finish))
                    }
                    None => (json!({ "role": "assistant", "content": o.text }), f.finish),
                };
                ResponseMeta::chat_choice(i, message, lp, finish, &o.ids)
            }
        };
        choices.push(choice);
    }
    Ok(Json(spec.meta.response(choices, total_usage(&ends))).into_response())
}

enum Phase {
    Start,
    Pieces,
    End,
    Closed,
}

/// A streamed answer: the SSE events of one job.
struct StreamState {
    spec: OutputSpec,
    rx: Option<JobReceiver>,
    /// Per choice: its tool-call reader (with tools).
    tool_streams: Vec<Option<ToolCallStream>>,
    /// Per choice: its markup turned out broken (the rest is content).
    malformed: Vec<bool>,
    /// Per choice: bytes of text sent (completions' `text_offset`).
    offsets: Vec<usize>,
    phase: Phase,
    queue: VecDeque<Event>,
}

fn data(v: Value) -> Event {
    Event::default().data(v.to_string())
}

impl StreamState {
    /// The delta of choice `index` for new `text` (through its tool-call reader).
    fn delta(&mut self, index: usize, text: &str, end: bool) -> Map<String, Value> {
        let mut events = Vec::new();
        let mut failed: Option<Malformed> = None;
        match self.tool_streams.get_mut(index).and_then(Option::as_mut) {
            Some(reader) if !self.malformed[index] => {
                match reader.push(text) {
                    Ok(e) => events.extend(e),
                    Err(m) => failed = Some(m),
                }
                if end && failed.is_none() {
                    match reader.finish() {
                        Ok(e) => events.extend(e),
                        Err(m) => failed = Some(m),
                    }
                }
            }
            _ => events.push(ToolStreamEvent::Content(text.to_string())),
        }
        if let Some(m) = failed {
            eprintln!(
                "serve: choice {index} of {}: malformed tool call: {}",
                self.spec.meta.id, m.reason
            );
            self.malformed[index] = true;
        }
        if let Some(t) = &self.spec.tools {
            events.retain(|e| t.keeps(e));
        }
        let mut content = String::new();
        let mut calls = Vec::new();
        for e in &events {
            match e {
                ToolStreamEvent::Content(c) => content.push_str(c),
                other => calls.extend(other.openai_tool_call_delta()),
            }
        }
        let mut delta = Map::new();
        if !content.is_empty() || (calls.is_empty() && !end) {
            delta.insert("content".into(), content.into());
        }
        if !calls.is_empty() {
            delta.insert("tool_calls".into(), calls.into());
        }
        delta
    }

    fn logprobs_json(&mut self, index: usize, items: &[TokenLogprob], text: &str) -> Value {
        let offset = self.offsets[index];
        self.offsets[index] += text.len();
        if !self.spec.logprobs {
            return Value::Null;
        }
        match self.spec.meta.endpoint {
            Endpoint::Chat => logprobs::chat_json(&self.spec.tokenizer, items),
            Endpoint::Completions => logprobs::completion_json(&self.spec.tokenizer, items, offset),
        }
    }

    async fn next_event(&mut self) -> Option<Event> {
        loop {
            if let Some(e) = self.queue.pop_front() {
                return Some(e);
            }
            match self.phase {
                Phase::Start => {
                    if self.spec.meta.endpoint == Endpoint::Chat {
                        for i in 0..self.tool_streams.len() {
                            let mut delta = Map::new();
                            delta.insert("role".into(), "assistant".into());
                            delta.insert("content".into(), "".into());
                            let chunk =
                                self.spec
                                    .meta
                                    .choice_chunk(i, delta, Value::Null, None, &[]);
                            self.queue.push_back(data(chunk));
                        }
                    }
                    self.phase = Phase::Pieces;
                }
                Phase::Pieces => {
                    let next = match self.rx.as_mut() {
                        Some(rx) => rx.pieces.recv().await,
                        None => None,
                    };
                    match next {
                        Some(c) => {
                            let delta = self.delta(c.index, &c.piece.text, false);
                            let lp = self.logprobs_json(c.index, &c.logprobs, &c.piece.text);
                            let chunk = self.spec.meta.choice_chunk(
                                c.index,
                                delta,
                                lp,
                                None,
                                &c.piece.token_ids,
                            );
                            self.queue.push_back(data(chunk));
                        }
                        None => self.phase = Phase::End,
                    }
                }
                Phase::End => {
                    let rx = self.rx.take().expect("the receiver until the end");
                    match ends(rx).await {
                        Ok(ends) => {
                            for (i, f) in ends.iter().enumerate() {
                                let delta = self.delta(i, &f.tail.text, true);
                                let lp = self.logprobs_json(i, &f.logprobs, &f.tail.text);
                                let calls = self.tool_streams[i]
                                    .as_ref()
                                    .map_or(0, ToolCallStream::calls_started);
                                let finish = if self.malformed[i] {
                                    FinishReason::MalformedToolCall
                                } else if calls > 0 && f.finish == FinishReason::Stop {
                                    FinishReason::ToolCalls
                                } else {
                                    f.finish
                                };
                                let chunk = self.spec.meta.choice_chunk(
                                    i,
                                    delta,
                                    lp,
                                    Some(finish),
                                    &f.tail.token_ids,
                                );
                                self.queue.push_back(data(chunk));
                            }
                            if self.spec.include_usage {
                                self.queue.push_back(data(
                                    self.spec.meta.usage_chunk(total_usage(&ends)),
                                ));
                            }
                            self.queue.push_back(Event::default().data("[DONE]"));
                        }
                        Err(e) => self.queue.push_back(data(e.body())),
                    }
                    self.phase = Phase::Closed;
                }
                Phase::Closed => return None,
            }
        }
    }
}
