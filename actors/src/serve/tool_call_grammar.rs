//! The grammar of a forced tool call: for `tool_choice: required` or a named function, the
//! model's output must be its call markup ([`ToolCallFormat`]) around arguments valid
//! against each tool's `parameters`, written as an llguidance Lark grammar with one `%json`
//! sub-grammar per tool.
//!
//! ```text
//! Kimi K2:        <|tool_calls_section_begin|> call+ <|tool_calls_section_end|>
//!                 call = <|tool_call_begin|> "functions.NAME:" IDX <|tool_call_argument_begin|> %json <|tool_call_end|>
//! DeepSeek-V3:    <｜tool▁calls▁begin｜> call ("\n" call)* <｜tool▁calls▁end｜>
//!                 call = <｜tool▁call▁begin｜> "function" <｜tool▁sep｜> "NAME\n```json\n" %json "\n```" <｜tool▁call▁end｜>
//! DeepSeek-V3.1:  <｜tool▁calls▁begin｜> call+ <｜tool▁calls▁end｜>
//!                 call = <｜tool▁call▁begin｜> "NAME" <｜tool▁sep｜> %json <｜tool▁call▁end｜>
//! ```
//!
//! One call only when `parallel_tool_calls` is false or a function is named. A marker that
//! is a special (control) token of the vocabulary is matched as that token (`<[ID]>`), else
//! as its text. Decides: the grammar. Leaves `tool_choice: auto` unconstrained (the model
//! may answer in text; `tool_calls.rs` reads what it wrote).

use serde_json::Value;

use super::json_constraint::ConstraintVocab;
use super::tool_calls::{
    ToolCallFormat, DS_CALL_BEGIN, DS_CALL_END, DS_SECTION_BEGIN, DS_SECTION_END, DS_SEP,
    KIMI_ARGS_BEGIN, KIMI_CALL_BEGIN, KIMI_CALL_END, KIMI_SECTION_BEGIN, KIMI_SECTION_END,
};

/// Most digits of Kimi's call index (`functions.NAME:IDX`).
pub const CALL_INDEX_DIGITS_MAX: usize = 3;

/// What a forced call may be.
#[derive(Debug, Clone, PartialEq)]
pub struct ToolCallSpec {
    /// The model's markup.
    pub format: ToolCallFormat,
    /// The callable functions: name and arguments schema (a JSON schema object).
    pub functions: Vec<(String, Value)>,
    /// Several calls allowed (`parallel_tool_calls`), else exactly one.
    pub parallel: bool,
}

/// A Lark string literal of `text` (markers and names hold no `"` or `\`; escaped anyway).
fn literal(text: &str) -> String {
    serde_json::to_string(text).unwrap_or_default()
}

/// A marker: its special token when the vocabulary has one with this text, else the text.
fn marker(vocab: &ConstraintVocab, text: &str) -> String {
    match vocab.special_token_id(text.as_bytes()) {
        Some(id) => format!("<[{id}]>"),
        None => literal(text),
    }
}

/// The Lark grammar for `spec`; an empty function list is an error.
pub fn tool_call_lark(vocab: &ConstraintVocab, spec: &ToolCallSpec) -> Result<String, String> {
    if spec.functions.is_empty() {
        return Err("a forced tool call needs at least one function".into());
    }
    let m = |t: &str| marker(vocab, t);
    let mut rules = Vec::new();
    let mut alts = Vec::new();
    for (i, (name, schema)) in spec.functions.iter().enumerate() {
        let mut schema = schema.clone();
        if !schema.is_object() {
            return Err(format!(
                "the parameters of {name:?} are not a JSON schema object"
            ));
        }
        super::json_constraint::compact_json_options(&mut schema);
        let json = format!("%json {schema}");
        let body = match spec.format {
            ToolCallFormat::KimiK2 => format!(
                "{} {} /[0-9]{{1,{CALL_INDEX_DIGITS_MAX}}}/ {} {json} {}",
                m(KIMI_CALL_BEGIN),
                literal(&format!("functions.{name}:")),
                m(KIMI_ARGS_BEGIN),
                m(KIMI_CALL_END)
            ),
            ToolCallFormat::DeepSeekV3 => format!(
                "{} \"function\" {} {} {json} \"\\n```\" {}",
                m(DS_CALL_BEGIN),
                m(DS_SEP),
                literal(&format!("{name}\n```json\n")),
                m(DS_CALL_END)
            ),
            ToolCallFormat::DeepSeekV31 => format!(
                "{} {} {} {json} {}",
                m(DS_CALL_BEGIN),
                literal(name),
                m(DS_SEP),
                m(DS_CALL_END)
            ),
        };
        rules.push(format!("call_{i}: {body}"));
        alts.push(format!("call_{i}"));
    }
    let (begin, end, between) = match spec.format {
        ToolCallFormat::KimiK2 => (m(KIMI_SECTION_BEGIN), m(KIMI_SECTION_END), ""),
        ToolCallFormat::DeepSeekV3 => (m(DS_SECTION_BEGIN), m(DS_SECTION_END), "\"\\n\" "),
        ToolCallFormat::DeepSeekV31 => (m(DS_SECTION_BEGIN), m(DS_SECTION_END), ""),
    };
    let calls = if spec.parallel {
        format!("call ({between}call)*")
    } else {
        "call".to_string()
    };
    Ok(format!(
        "start: {begin} {calls} {end}\ncall: {}\n{}\n",
        alts.join(" | "),
        rules.join("\n")
    ))
}
