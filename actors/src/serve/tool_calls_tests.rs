//! Tests of the tool-call readers on the markup the real Kimi K2 and DeepSeek templates write
//! (`tests/data/chat_templates/`), whole and streamed, and on broken output.

use super::*;
use crate::chat_template::{ChatPrompt, ChatTemplate};

fn template(file: &str) -> ChatTemplate {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/data/chat_templates");
    let src = std::fs::read_to_string(dir.join(file)).unwrap();
    ChatTemplate::new(
        Some(&src),
        "<｜begin▁of▁sentence｜>".into(),
        "<｜end▁of▁sentence｜>".into(),
    )
    .unwrap()
}

/// The assistant turn the template writes for two calls, cut out of the rendered prompt.
fn rendered_calls(file: &str, content: Option<&str>, open: &str, close: &str) -> String {
    let t = template(file);
    let messages = [
        json!({"role": "user", "content": "Weather in Zürich, and 2+3?"}),
        json!({"role": "assistant", "content": content, "tool_calls": [
            {"id": "call_0", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\": \"Zürich\"}"}},
            {"id": "call_1", "type": "function", "function": {"name": "add", "arguments": "{\"a\": 2, \"b\": 3}"}}
        ]}),
    ];
    let text = t
        .render_prompt(&ChatPrompt {
            messages: &messages,
            tools: None,
            add_generation_prompt: false,
        })
        .unwrap();
    let start = text.rfind(open).unwrap() + open.len();
    let end = start + text[start..].find(close).unwrap();
    text[start..end].to_string()
}

fn names() -> Vec<String> {
    vec!["get_weather".into(), "add".into()]
}

fn message(format: ToolCallFormat, text: &str) -> (Option<String>, Vec<ToolCall>) {
    match parse_tool_calls(format, text, &names(), "call_") {
        ParsedOutput::Message {
            content,
            tool_calls,
        } => (content, tool_calls),
        ParsedOutput::Malformed { reason, .. } => panic!("malformed: {reason}\n{text}"),
    }
}

/// Feeds `text` in pieces of `step` chars; returns the events, merged by kind.
fn streamed(
    format: ToolCallFormat,
    text: &str,
    step: usize,
) -> Result<(String, Vec<ToolCall>), Malformed> {
    let mut s = ToolCallStream::new(format, names(), "call_".into());
    let chars: Vec<char> = text.chars().collect();
    let mut events = Vec::new();
    for piece in chars.chunks(step) {
        let piece: String = piece.iter().collect();
        events.extend(s.push(&piece)?);
    }
    events.extend(s.finish()?);
    let mut content = String::new();
    let mut calls: Vec<ToolCall> = Vec::new();
    for e in events {
        match e {
            ToolStreamEvent::Content(c) => {
                // Held back: no marker or its start ever reaches the client as content.
                assert!(!c.contains("<|tool") && !c.contains("<｜tool"), "{c:?}");
                content.push_str(&c)
            }
            ToolStreamEvent::CallStart { index, id, name } => {
                assert_eq!(index, calls.len());
                calls.push(ToolCall {
                    id,
                    name,
                    arguments: String::new(),
                })
            }
            ToolStreamEvent::Arguments { index, fragment } => {
                assert_eq!(index + 1, calls.len(), "fragments belong to the open call");
                calls[index].arguments.push_str(&fragment)
            }
        }
    }
    Ok((content, calls))
}

fn expect_two_calls(calls: &[ToolCall]) {
    assert_eq!(calls.len(), 2);
    assert_eq!(calls[0].name, "get_weather");
    assert_eq!(
        serde_json::from_str::<Value>(&calls[0].arguments).unwrap(),
        json!({"city": "Zürich"})
    );
    assert_eq!(calls[1].name, "add");
    assert_eq!(
        serde_json::from_str::<Value>(&calls[1].arguments).unwrap(),
        json!({"a": 2, "b": 3})
    );
}

/// Proves: the format is told from the real templates' text.
#[test]
fn format_is_detected_from_the_real_templates() {
    for (file, want) in [
        ("moonshotai-Kimi-K2.jinja", Some(ToolCallFormat::KimiK2)),
        ("Kimi-K2-Instruct.jinja", Some(ToolCallFormat::KimiK2)),
        ("Kimi-K2-Thinking.jinja", Some(ToolCallFormat::KimiK2)),
        (
            "deepseek-ai-DeepSeek-R1-Distill-Llama-8B.jinja",
            Some(ToolCallFormat::DeepSeekV3),
        ),
        (
            "deepseek-ai-DeepSeek-V3.1.jinja",
            Some(ToolCallFormat::DeepSeekV31),
        ),
    ] {
        assert_eq!(
            ToolCallFormat::detect(template(file).source()),
            want,
            "{file}"
        );
    }
    assert_eq!(
        ToolCallFormat::detect(crate::chat_template::DEFAULT_CHAT_TEMPLATE),
        None
    );
}

/// Proves: what Kimi K2 0905's template writes for two calls (with content before them)
/// reads back as that content and those calls, with Kimi's own ids; streamed one char at a
/// time, three at a time or whole, the result is the same.
#[test]
fn kimi_k2_calls_read_back() {
    let text = rendered_calls(
        "Kimi-K2-Instruct.jinja",
        Some("Let me check."),
        "<|im_assistant|>assistant<|im_middle|>",
        "<|im_end|>",
    );
    assert!(
        text.starts_with("Let me check.<|tool_calls_section_begin|>"),
        "{text}"
    );
    let (content, calls) = message(ToolCallFormat::KimiK2, &text);
    assert_eq!(content.as_deref(), Some("Let me check."));
    expect_two_calls(&calls);
    assert_eq!(calls[0].id, "functions.get_weather:0");
    assert_eq!(calls[1].id, "functions.add:1");
    for step in [1, 3, 1000] {
        let (c, streamed_calls) = streamed(ToolCallFormat::KimiK2, &text, step).unwrap();
        assert_eq!(
            (Some(c), streamed_calls),
            (content.clone(), calls.clone()),
            "step {step}"
        );
    }
}

/// Proves: a Kimi call without the section marker (which llama.cpp also accepts) and with
/// whitespace in the arguments reads back; only calls gives `content: None`.
#[test]
fn kimi_bare_call_reads_back() {
    let text = "<|tool_call_begin|>functions.add:0<|tool_call_argument_begin|> {\"a\": 1,\n \"b\": 2} \n<|tool_call_end|>";
    let (content, calls) = message(ToolCallFormat::KimiK2, text);
    assert_eq!(content, None);
    assert_eq!(calls[0].arguments, "{\"a\": 1,\n \"b\": 2}");
    assert_eq!(streamed(ToolCallFormat::KimiK2, text, 2).unwrap().1, calls);
}

/// Proves: DeepSeek-R1/V3's fenced markup (as its template writes it) reads back, ids from
/// the prefix, streamed or whole.
#[test]
fn deepseek_v3_calls_read_back() {
    let text = rendered_calls(
        "deepseek-ai-DeepSeek-R1-Distill-Llama-8B.jinja",
        None,
        "<｜Assistant｜>",
        "<｜end▁of▁sentence｜>",
    );
    assert!(
        text.contains("function<｜tool▁sep｜>get_weather\n```json\n"),
        "{text}"
    );
    let (content, calls) = message(ToolCallFormat::DeepSeekV3, &text);
    assert_eq!(content, None);
    expect_two_calls(&calls);
    assert_eq!(
        (calls[0].id.as_str(), calls[1].id.as_str()),
        ("call_0", "call_1")
    );
    for step in [1, 5] {
        assert_eq!(
            streamed(ToolCallFormat::DeepSeekV3, &text, step).unwrap().1,
            calls
        );
    }
}

/// Proves: DeepSeek-V3.1's unfenced markup reads back (model output carries objects, not
/// the JSON strings the template's `tojson` writes for string arguments).
#[test]
fn deepseek_v31_calls_read_back() {
    let text = "Sure.<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>get_weather<｜tool▁sep｜>{\"city\": \"Zürich\"}<｜tool▁call▁end｜><｜tool▁call▁begin｜>add<｜tool▁sep｜>{\"a\": 2, \"b\": 3}<｜tool▁call▁end｜><｜tool▁calls▁end｜>";
    let (content, calls) = message(ToolCallFormat::DeepSeekV3, text);
    assert_eq!(content.as_deref(), Some("Sure."));
    expect_two_calls(&calls);
    let (c, s) = streamed(ToolCallFormat::DeepSeekV3, text, 1).unwrap();
    assert_eq!((c.as_str(), s), ("Sure.", calls));
}

/// Proves: streamed argument fragments arrive before the call ends (not buffered to the
/// end), and text that only looks like the start of a marker is released at the end.
#[test]
fn streaming_releases_early_and_holds_only_marker_prefixes() {
    let mut s = ToolCallStream::new(ToolCallFormat::KimiK2, vec![], "c".into());
    let ev = s
        .push("<|tool_calls_section_begin|><|tool_call_begin|>functions.f:0<|tool_call_argument_begin|>{\"x\": ")
        .unwrap();
    assert_eq!(
        ev,
        vec![
            ToolStreamEvent::CallStart {
                index: 0,
                id: "functions.f:0".into(),
                name: "f".into()
            },
            ToolStreamEvent::Arguments {
                index: 0,
                fragment: "{\"x\":".into()
            },
        ]
    );
    assert_eq!(
        ev[0].openai_tool_call_delta().unwrap(),
        json!({"index": 0, "id": "functions.f:0", "type": "function", "function": {"name": "f", "arguments": ""}})
    );
    assert_eq!(
        s.push("1}<|tool_call_e").unwrap(),
        vec![ToolStreamEvent::Arguments {
            index: 0,
            fragment: " 1}".into()
        }]
    );
    assert!(s.push("nd|><|tool_calls_section_end|>").unwrap().is_empty());
    assert!(s.finish().unwrap().is_empty());

    let mut s = ToolCallStream::new(ToolCallFormat::KimiK2, vec![], "c".into());
    assert_eq!(
        s.push("a <|tool").unwrap(),
        vec![ToolStreamEvent::Content("a ".into())]
    );
    assert_eq!(
        s.finish().unwrap(),
        vec![ToolStreamEvent::Content("<|tool".into())]
    );
}

/// Proves: broken output is a `Malformed` carrying the raw text (never a panic): truncated
/// inside a call (max_tokens), arguments not JSON or not an object, an unknown function,
/// junk inside a section, a header that never ends.
#[test]
fn malformed_output_is_reported_with_the_raw_text() {
    let kimi = ToolCallFormat::KimiK2;
    let cases = [
        (kimi, "<|tool_calls_section_begin|><|tool_call_begin|>functions.add:0<|tool_call_argument_begin|>{\"a\": 1", "ended inside"),
        (kimi, "<|tool_call_begin|>functions.add:0<|tool_call_argument_begin|>{a: 1}<|tool_call_end|>", "not JSON"),
        (kimi, "<|tool_call_begin|>functions.add:0<|tool_call_argument_begin|>[1]<|tool_call_end|>", "not a JSON object"),
        (kimi, "<|tool_call_begin|>functions.rm_rf:0<|tool_call_argument_begin|>{}<|tool_call_end|>", "unknown function"),
        (kimi, "<|tool_calls_section_begin|>hello<|tool_call_begin|>", "where a tool call"),
        (kimi, "<|tool_call_begin|>functions.add:0", "ended inside"),
        (ToolCallFormat::DeepSeekV3, "<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>function<｜tool▁sep｜>add\n```json\n{\"a\": 1}\n```oops<｜tool▁call▁end｜>", "closing fence"),
    ];
    for (format, text, why) in cases {
        match parse_tool_calls(format, text, &names(), "call_") {
            ParsedOutput::Malformed { raw, reason } => {
                assert_eq!(raw, text);
                assert!(reason.contains(why), "{reason} (wanted {why})");
            }
            other => panic!("{text}: {other:?}"),
        }
    }
    let long = format!(
        "<|tool_call_begin|>{}",
        "x".repeat(TOOL_CALL_HEADER_BYTES_MAX + 1)
    );
    let mut s = ToolCallStream::new(kimi, vec![], "c".into());
    assert!(s.push(&long).unwrap_err().reason.contains("header longer"));
}

/// Proves: output without markup is all content, and `ToolCall::openai_json` is OpenAI's shape.
#[test]
fn plain_text_and_json_shape() {
    assert_eq!(
        message(ToolCallFormat::DeepSeekV3, "just text <｜ not a marker"),
        (Some("just text <｜ not a marker".into()), vec![])
    );
    let c = ToolCall {
        id: "call_0".into(),
        name: "f".into(),
        arguments: "{}".into(),
    };
    assert_eq!(
        c.openai_json(),
        json!({"id": "call_0", "type": "function", "function": {"name": "f", "arguments": "{}"}})
    );
}

/// Proves: on random mixes of markers, JSON pieces, names and text, cut into random pieces,
/// the reader never panics, and streaming agrees with the whole-text parse: same content and
/// calls when well formed, malformed exactly when the whole parse is.
#[test]
fn random_output_streams_as_it_parses() {
    const PARTS: [&str; 22] = [
        "<|tool_calls_section_begin|>",
        "<|tool_calls_section_end|>",
        "<|tool_call_begin|>",
        "<|tool_call_argument_begin|>",
        "<|tool_call_end|>",
        "functions.add:0",
        "<|tool",
        "<｜tool▁calls▁begin｜>",
        "<｜tool▁call▁begin｜>",
        "<｜tool▁sep｜>",
        "<｜tool▁call▁end｜>",
        "<｜tool▁calls▁end｜>",
        "function",
        "add",
        "\n```json\n",
        "\n```",
        "{\"a\": 1}",
        "{",
        " ",
        "text ",
        "é",
        "}",
    ];
    let mut seed = 0x1234_5678_9abc_def0u64;
    let mut next = |n: usize| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        (seed % n as u64) as usize
    };
    for format in [ToolCallFormat::KimiK2, ToolCallFormat::DeepSeekV3] {
        for _ in 0..3000 {
            let text: String = (0..1 + next(10))
                .map(|_| PARTS[next(PARTS.len())])
                .collect();
            let whole = parse_tool_calls(format, &text, &names(), "call_");
            let mut s = ToolCallStream::new(format, names(), "call_".into());
            let chars: Vec<char> = text.chars().collect();
            let mut events: Result<Vec<ToolStreamEvent>, Malformed> = Ok(Vec::new());
            let mut at = 0;
            while at < chars.len() && events.is_ok() {
                let n = 1 + next(6);
                let piece: String = chars[at..(at + n).min(chars.len())].iter().collect();
                at += n;
                events = events.and_then(|mut v| {
                    v.extend(s.push(&piece)?);
                    Ok(v)
                });
            }
            let events = events.and_then(|mut v| {
                v.extend(s.finish()?);
                Ok(v)
            });
            match (whole, events) {
                (ParsedOutput::Malformed { .. }, Err(_)) => {}
                (
                    ParsedOutput::Message {
                        content,
                        tool_calls,
                    },
                    Ok(events),
                ) => {
                    let (c, calls) = join_events(events);
                    assert_eq!(calls, tool_calls, "{text:?}");
                    // Whitespace around calls only is `content: None` in the whole parse.
                    let c = if !calls.is_empty() && c.trim().is_empty() {
                        String::new()
                    } else {
                        c
                    };
                    assert_eq!(c, content.unwrap_or_default(), "{text:?}");
                }
                (w, e) => panic!("{text:?}: whole {w:?}, streamed {e:?}"),
            }
        }
    }
}

/// Proves: the chat `message` and finish reason OpenAI clients expect: calls with null
/// content and `tool_calls`; malformed output as content with `malformed_tool_call`; a
/// call cut by max_tokens keeps `length`.
#[test]
fn openai_message_and_finish_reason() {
    let text = "<|tool_call_begin|>functions.add:0<|tool_call_argument_begin|>{\"a\": 1, \"b\": 2}<|tool_call_end|>";
    let parsed = parse_tool_calls(ToolCallFormat::KimiK2, text, &names(), "call_");
    assert_eq!(
        parsed.openai_message(),
        json!({"role": "assistant", "content": null, "tool_calls": [
            {"id": "functions.add:0", "type": "function", "function": {"name": "add", "arguments": "{\"a\": 1, \"b\": 2}"}}]})
    );
    assert_eq!(
        parsed.finish_reason(FinishReason::Stop).as_str(),
        "tool_calls"
    );
    let broken = parse_tool_calls(ToolCallFormat::KimiK2, &text[..40], &names(), "call_");
    assert_eq!(
        broken.openai_message(),
        json!({"role": "assistant", "content": &text[..40]})
    );
    assert_eq!(
        broken.finish_reason(FinishReason::Length).as_str(),
        "malformed_tool_call"
    );
    let plain = parse_tool_calls(ToolCallFormat::KimiK2, "hi", &names(), "call_");
    assert_eq!(
        plain.openai_message(),
        json!({"role": "assistant", "content": "hi"})
    );
    assert_eq!(
        plain.finish_reason(FinishReason::Length),
        FinishReason::Length
    );
}
