//! `POST /v1/messages`: Anthropic's Messages API over the same engine and chat template as
//! `/v1/chat/completions` (`anthropic.rs` has the request and event shapes): text, tools
//! (`tool_choice` any/tool forced by the call grammar, auto read back), streamed or not.
//! Errors come in Anthropic's shape (`{"type": "error", "error": {...}}`).
//!
//! Decides: how a job's output becomes content blocks and `stop_reason` (EOS → `end_turn`,
//! or `tool_use` when calls were read; `max_tokens`; a stop string → `stop_sequence`).

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;

use super::answer::{collect, ends, total_usage, ToolOutput};
use super::anthropic::{
    content_blocks, error_body, MessageMeta, MessageStream, MessagesRequest, StopReason,
};
use super::api_error::ApiError;
use super::engine::{Finished, JobReceiver};
use super::openai::FinishReason;
use super::routes::{fresh_seed, parse_body, prepare_chat, submit, AppState, JobSpec};
use super::tool_calls::{ParsedOutput, ToolCallStream, ToolStreamEvent};

/// The handler.
pub async fn messages(
    State(st): State<Arc<AppState>>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let r = async {
        let req: MessagesRequest = parse_body(body)?;
        let input = req.into_chat_input(st.max_tokens_limit, fresh_seed(&st))?;
        let id = st.next_id.fetch_add(1, Ordering::Relaxed);
        let turn = prepare_chat(&st, input.messages, input.tools, None, 1, id).await?;
        let job = JobSpec {
            prompt: turn.prompt,
            default_max_tokens: st.max_tokens_limit,
            top_logprobs: None,
            constraints: turn.constraints,
            render_control: turn.tool_output.is_some(),
        };
        let prompt_tokens = job.prompt.len();
        let rx = submit(&st, job, &input.settings)?;
        let meta = MessageMeta {
            id: format!("msg_{id:016x}"),
            model: st.model_name.clone(),
        };
        if input.settings.stream {
            Ok(stream(meta, turn.tool_output, rx, prompt_tokens))
        } else {
            whole(meta, turn.tool_output.as_ref(), rx).await
        }
    }
    .await;
    r.unwrap_or_else(error_response)
}

fn error_response(e: ApiError) -> Response {
    (e.status, Json(error_body(&e))).into_response()
}

/// Why the answer ended: `calls` read and EOS → `tool_use`.
fn stop_reason(malformed: bool, calls: usize, f: &Finished) -> StopReason {
    match f.finish {
        FinishReason::Length => StopReason::MaxTokens,
        _ if f.stop_string.is_some() => StopReason::StopSequence,
        _ if !malformed && calls > 0 => StopReason::ToolUse,
        _ => StopReason::EndTurn,
    }
}

async fn whole(
    meta: MessageMeta,
    tools: Option<&ToolOutput>,
    rx: JobReceiver,
) -> Result<Response, ApiError> {
    let (outs, ends) = collect(rx).await?;
    let (o, f) = (&outs[0], &ends[0]);
    let parsed = match tools {
        Some(t) => t.parse(0, &o.text),
        None => ParsedOutput::Message {
            content: Some(o.text.clone()),
            tool_calls: Vec::new(),
        },
    };
    let (malformed, calls) = match &parsed {
        ParsedOutput::Malformed { reason, .. } => {
            eprintln!("serve: {}: malformed tool call: {reason}", meta.id);
            (true, 0)
        }
        ParsedOutput::Message { tool_calls, .. } => (false, tool_calls.len()),
    };
    let usage = total_usage(&ends);
    Ok(Json(meta.message(
        content_blocks(&parsed),
        stop_reason(malformed, calls, f),
        f.stop_string.as_deref(),
        usage.prompt_tokens,
        usage.completion_tokens,
    ))
    .into_response())
}

struct StreamState {
    tools: Option<ToolOutput>,
    events: MessageStream,
    reader: Option<ToolCallStream>,
    malformed: bool,
    rx: Option<JobReceiver>,
    queue: VecDeque<Event>,
    done: bool,
}

impl StreamState {
    fn frames(&mut self, text: &str, end: bool) {
        let mut out = Vec::new();
        match self.reader.as_mut() {
            Some(r) if !self.malformed => {
                let mut got = r.push(text);
                if end {
                    got = got.and_then(|mut e| {
                        e.extend(r.finish()?);
                        Ok(e)
                    });
                }
                match got {
                    Ok(e) => out = e,
                    Err(m) => {
                        eprintln!("serve: malformed tool call: {}", m.reason);
                        self.malformed = true;
                    }
                }
            }
            _ => out.push(ToolStreamEvent::Content(text.to_string())),
        }
        if let Some(t) = &self.tools {
            out.retain(|e| t.keeps(e));
        }
        for e in &out {
            for (name, data) in self.events.push(e) {
                self.queue
                    .push_back(Event::default().event(name).data(data.to_string()));
            }
        }
    }

    async fn next_event(&mut self) -> Option<Event> {
        loop {
            if let Some(e) = self.queue.pop_front() {
                return Some(e);
            }
            if self.done {
                return None;
            }
            let next = match self.rx.as_mut() {
                Some(rx) => rx.pieces.recv().await,
                None => None,
            };
            match next {
                Some(c) => self.frames(&c.piece.text, false),
                None => {
                    self.done = true;
                    let Some(rx) = self.rx.take() else { continue };
                    match ends(rx).await {
                        Ok(ends) => {
                            let f = &ends[0];
                            self.frames(&f.tail.text, true);
                            let calls = self
                                .reader
                                .as_ref()
                                .map_or(0, ToolCallStream::calls_started);
                            let stop = stop_reason(self.malformed, calls, f);
                            for (name, data) in self.events.finish(
                                stop,
                                f.stop_string.as_deref(),
                                f.usage.completion_tokens,
                            ) {
                                self.queue
                                    .push_back(Event::default().event(name).data(data.to_string()));
                            }
                        }
                        Err(e) => self.queue.push_back(
                            Event::default()
                                .event("error")
                                .data(error_body(&e).to_string()),
                        ),
                    }
                }
            }
        }
    }
}

fn stream(
    meta: MessageMeta,
    tools: Option<ToolOutput>,
    rx: JobReceiver,
    prompt_tokens: usize,
) -> Response {
    let events = MessageStream::new(meta);
    let (name, data) = events.start(prompt_tokens);
    let mut queue = VecDeque::new();
    queue.push_back(Event::default().event(name).data(data.to_string()));
    let state = StreamState {
        events,
        reader: tools.as_ref().map(|t| t.stream(0)),
        tools,
        malformed: false,
        rx: Some(rx),
        queue,
        done: false,
    };
    let events = futures_util::stream::unfold(state, |mut s| async move {
        s.next_event().await.map(|e| (Ok::<_, Infallible>(e), s))
    });
    Sse::new(events)
        .keep_alive(KeepAlive::default())
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::serve::engine::Piece;
    use crate::serve::openai::Usage;

    fn ended(finish: FinishReason, stop_string: Option<&str>) -> Finished {
        Finished {
            tail: Piece::default(),
            logprobs: Vec::new(),
            stop_string: stop_string.map(str::to_string),
            finish,
            usage: Usage::default(),
        }
    }

    #[test]
    fn stop_reasons_follow_how_generation_ended() {
        let eos = ended(FinishReason::Stop, None);
        assert_eq!(stop_reason(false, 0, &eos), StopReason::EndTurn);
        assert_eq!(stop_reason(false, 2, &eos), StopReason::ToolUse);
        // Broken markup is answered as text.
        assert_eq!(stop_reason(true, 1, &eos), StopReason::EndTurn);
        let stop = ended(FinishReason::Stop, Some("END"));
        assert_eq!(stop_reason(false, 0, &stop), StopReason::StopSequence);
        let length = ended(FinishReason::Length, None);
        assert_eq!(stop_reason(false, 1, &length), StopReason::MaxTokens);
    }
}
