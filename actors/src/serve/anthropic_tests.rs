//! Tests of the Anthropic Messages mapping: request → template messages, tools and settings;
//! answers → message objects and the SSE event sequence.

use super::*;
use crate::tool_calls::ToolCall;
use crate::tools::ToolChoice;

fn request(v: Value) -> Result<ChatInput, ApiError> {
    serde_json::from_value::<MessagesRequest>(v)
        .map_err(|e| ApiError::invalid(e.to_string(), None))?
        .into_chat_input(1000, 7)
}

/// Proves: system, text, tool_use and tool_result blocks become the OpenAI-shaped messages
/// the templates read (tool results as `tool` messages before the user's text), tools and
/// tool_choice map (`any` = required, disable_parallel_tool_use), and settings carry
/// max_tokens, stop_sequences, sampling and stream.
#[test]
fn request_maps_to_chat_input() {
    let input = request(json!({
        "model": "m", "max_tokens": 100, "stream": true, "temperature": 0.5, "top_k": 5,
        "stop_sequences": ["END"],
        "system": [{"type": "text", "text": "Be brief."}],
        "tools": [{"name": "get_weather", "description": "w", "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}}}],
        "tool_choice": {"type": "any", "disable_parallel_tool_use": true},
        "messages": [
            {"role": "user", "content": "Weather in Oslo?"},
            {"role": "assistant", "content": [{"type": "text", "text": "Checking."}, {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Oslo"}}]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": [{"type": "text", "text": "4 °C"}]}, {"type": "text", "text": "And tomorrow?"}]}
        ]
    }))
    .unwrap();
    assert_eq!(
        input.messages,
        vec![
            json!({"role": "system", "content": "Be brief."}),
            json!({"role": "user", "content": "Weather in Oslo?"}),
            json!({"role": "assistant", "content": "Checking.", "tool_calls": [{"id": "toolu_1", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\":\"Oslo\"}"}}]}),
            json!({"role": "tool", "tool_call_id": "toolu_1", "content": "4 °C"}),
            json!({"role": "user", "content": "And tomorrow?"}),
        ]
    );
    let tools = input.tools.unwrap();
    assert_eq!(
        (tools.names, tools.choice, tools.parallel),
        (vec!["get_weather".to_string()], ToolChoice::Required, false)
    );
    let s = input.settings;
    assert_eq!(
        (s.max_tokens, s.stop, s.stream, s.sampling.top_k),
        (Some(100), vec!["END".to_string()], true, 5)
    );
    assert_eq!(s.sampling.temperature, 0.5);
}

/// Proves: missing required fields, bad roles, unsupported blocks, out-of-range values and
/// a tool_choice naming no tool are errors (never panics).
#[test]
fn bad_requests_are_refused() {
    for bad in [
        json!({"model": "m", "messages": [{"role": "user", "content": "x"}]}),
        json!({"model": "m", "max_tokens": 10, "messages": []}),
        json!({"model": "m", "max_tokens": 10, "messages": [{"role": "system", "content": "x"}]}),
        json!({"model": "m", "max_tokens": 10, "messages": [{"role": "user", "content": [{"type": "image", "source": {}}]}]}),
        json!({"model": "m", "max_tokens": 10, "temperature": 1.5, "messages": [{"role": "user", "content": "x"}]}),
        json!({"model": "m", "max_tokens": 5000, "messages": [{"role": "user", "content": "x"}]}),
        json!({"model": "m", "max_tokens": 10, "tool_choice": {"type": "tool", "name": "nope"}, "tools": [{"name": "a", "input_schema": {"type": "object"}}], "messages": [{"role": "user", "content": "x"}]}),
        json!({"model": "m", "max_tokens": 10, "messages": [{"role": "assistant", "content": [{"type": "tool_use", "id": "t", "name": "a", "input": 3}]}]}),
    ] {
        assert!(request(bad.clone()).is_err(), "{bad}");
    }
}

fn meta() -> MessageMeta {
    MessageMeta {
        id: "msg_1".into(),
        model: "kimi".into(),
    }
}

/// Proves: a finished answer with text and a call is a `message` with a text block, a
/// tool_use block whose input is the parsed arguments, stop_reason tool_use and usage.
#[test]
fn message_object() {
    let parsed = ParsedOutput::Message {
        content: Some("Checking.".into()),
        tool_calls: vec![ToolCall {
            id: "functions.get_weather:0".into(),
            name: "get_weather".into(),
            arguments: "{\"city\": \"Oslo\"}".into(),
        }],
    };
    let m = meta().message(content_blocks(&parsed), StopReason::ToolUse, None, 12, 9);
    assert_eq!(
        m,
        json!({"id": "msg_1", "type": "message", "role": "assistant", "model": "kimi",
               "content": [{"type": "text", "text": "Checking."}, {"type": "tool_use", "id": "functions.get_weather:0", "name": "get_weather", "input": {"city": "Oslo"}}],
               "stop_reason": "tool_use", "stop_sequence": null, "usage": {"input_tokens": 12, "output_tokens": 9}})
    );
    let raw = ParsedOutput::Malformed {
        raw: "<|tool_call_begin|>x".into(),
        reason: "r".into(),
    };
    assert_eq!(
        content_blocks(&raw),
        vec![json!({"type": "text", "text": "<|tool_call_begin|>x"})]
    );
}

/// Proves: the SSE sequence is message_start, a text block (start, deltas, stop), a tool_use
/// block (start, input_json_delta fragments, stop), message_delta with stop_reason, then
/// message_stop, with block indices counting up.
#[test]
fn stream_event_sequence() {
    let mut s = MessageStream::new(meta());
    let mut events = vec![s.start(12)];
    for e in [
        ToolStreamEvent::Content("Check".into()),
        ToolStreamEvent::Content("ing.".into()),
        ToolStreamEvent::CallStart {
            index: 0,
            id: "t0".into(),
            name: "get_weather".into(),
        },
        ToolStreamEvent::Arguments {
            index: 0,
            fragment: "{\"city\":".into(),
        },
        ToolStreamEvent::Arguments {
            index: 0,
            fragment: " \"Oslo\"}".into(),
        },
    ] {
        events.extend(s.push(&e));
    }
    events.extend(s.finish(StopReason::ToolUse, None, 9));
    let names: Vec<&str> = events.iter().map(|(n, _)| *n).collect();
    assert_eq!(
        names,
        [
            "message_start",
            "content_block_start",
            "content_block_delta",
            "content_block_delta",
            "content_block_stop",
            "content_block_start",
            "content_block_delta",
            "content_block_delta",
            "content_block_stop",
            "message_delta",
            "message_stop"
        ]
    );
    assert_eq!(
        events[1].1["content_block"],
        json!({"type": "text", "text": ""})
    );
    assert_eq!(
        events[3].1["delta"],
        json!({"type": "text_delta", "text": "ing."})
    );
    assert_eq!(
        events[5].1,
        json!({"type": "content_block_start", "index": 1, "content_block": {"type": "tool_use", "id": "t0", "name": "get_weather", "input": {}}})
    );
    assert_eq!(
        events[7].1["delta"],
        json!({"type": "input_json_delta", "partial_json": " \"Oslo\"}"})
    );
    assert_eq!(events[8].1["index"], 1);
    assert_eq!(events[9].1["delta"]["stop_reason"], "tool_use");
    assert_eq!(
        sse_frame(events[10].0, &events[10].1),
        "event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n"
    );
}

/// Proves: errors take Anthropic's shape and type names.
#[test]
fn errors_in_anthropic_shape() {
    let e = ApiError::invalid("max_tokens is required", Some("max_tokens"));
    assert_eq!(
        error_body(&e),
        json!({"type": "error", "error": {"type": "invalid_request_error", "message": "max_tokens is required"}})
    );
    assert_eq!(
        error_body(&ApiError::queue_full(3))["error"]["type"],
        "rate_limit_error"
    );
    assert_eq!(
        error_body(&ApiError::unauthorized())["error"]["type"],
        "authentication_error"
    );
    assert_eq!(
        error_body(&ApiError::unavailable("x"))["error"]["type"],
        "overloaded_error"
    );
}
