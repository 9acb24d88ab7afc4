//! Tool calling and structured output on the way in: `tools`, `tool_choice`,
//! `parallel_tool_calls`, `response_format`, and the tool fields of chat messages
//! (an assistant's `tool_calls`, a `tool` message's `tool_call_id`).
//!
//! Decides: which shapes are accepted (a bad one is a 400 naming the field), what the
//! template sees (`tools` as OpenAI's `{"type": "function", "function": {...}}` list, which is
//! what Kimi's and DeepSeek's templates read), and what the decoder must enforce
//! ([`ToolSettings`], [`crate::json_constraint::JsonTarget`]). Leaves parsing the model's
//! calls to `tool_calls.rs` and enforcing schemas to `json_constraint.rs`.

use serde::Deserialize;
use serde_json::{json, Map, Value};

use super::api_error::ApiError;
use super::json_constraint::{JsonTarget, JSON_SCHEMA_BYTES_MAX};

/// Most tools per request (OpenAI's limit).
pub const TOOLS_MAX: usize = 128;
/// Longest function name, in bytes (OpenAI: `^[a-zA-Z0-9_-]{1,64}$`).
pub const FUNCTION_NAME_BYTES_MAX: usize = 64;
/// Most tool calls in one assistant message of the conversation.
pub const MESSAGE_TOOL_CALLS_MAX: usize = 128;

/// One entry of `tools`.
#[derive(Debug, Clone, Deserialize)]
pub struct ToolDef {
    /// Must be `function`.
    #[serde(rename = "type")]
    pub kind: String,
    /// The function.
    pub function: FunctionDef,
}

/// A callable function.
#[derive(Debug, Clone, Deserialize)]
pub struct FunctionDef {
    /// Its name (`[a-zA-Z0-9_-]`, 1 to 64 bytes).
    pub name: String,
    /// What it does, for the model.
    #[serde(default)]
    pub description: Option<String>,
    /// A JSON schema of its arguments (an object schema; absent = no arguments).
    #[serde(default)]
    pub parameters: Option<Value>,
    /// OpenAI's `strict`; arguments are always constrained when a call is forced.
    #[serde(default)]
    pub strict: Option<bool>,
}

/// `tool_choice` as sent.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum ToolChoiceField {
    /// `none`, `auto` or `required`.
    Mode(String),
    /// `{"type": "function", "function": {"name": "..."}}`.
    Named {
        /// Must be `function`.
        #[serde(rename = "type")]
        kind: String,
        /// The function to call.
        function: NamedFunction,
    },
}

/// The `function` of a named `tool_choice`.
#[derive(Debug, Clone, Deserialize)]
pub struct NamedFunction {
    /// Its name.
    pub name: String,
}

/// What the model may or must do with its tools.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ToolChoice {
    /// No calls: the template still sees the tools only if the request sent `tools`; output
    /// is content, not parsed for calls.
    None,
    /// The model decides (the default with tools).
    Auto,
    /// At least one call (constrain the output to the call markup).
    Required,
    /// Exactly this function (constrain the output to one call of it).
    Function(String),
}

/// The checked tool settings of a chat request.
#[derive(Debug, Clone, PartialEq)]
pub struct ToolSettings {
    /// `tools` for the template, as OpenAI shapes them (`parameters` filled in).
    pub tools: Vec<Value>,
    /// The function names, in order (what the output parser accepts).
    pub names: Vec<String>,
    /// Each function's arguments schema, in the order of `names`.
    pub schemas: Vec<Value>,
    /// `tool_choice`.
    pub choice: ToolChoice,
    /// `parallel_tool_calls` (default true): with false, at most one call per turn.
    pub parallel: bool,
}

/// `response_format` as sent.
#[derive(Debug, Clone, Deserialize)]
pub struct ResponseFormatField {
    /// `text`, `json_object` or `json_schema`.
    #[serde(rename = "type")]
    pub kind: String,
    /// With `json_schema`: `{"name", "schema", "strict", "description"}`.
    #[serde(default)]
    pub json_schema: Option<JsonSchemaField>,
}

/// `response_format.json_schema`.
#[derive(Debug, Clone, Deserialize)]
pub struct JsonSchemaField {
    /// Its name (`[a-zA-Z0-9_-]`, 1 to 64 bytes).
    pub name: String,
    /// The schema (absent: any JSON object).
    #[serde(default)]
    pub schema: Option<Value>,
    /// OpenAI's `strict`; the schema is always enforced here.
    #[serde(default)]
    pub strict: Option<bool>,
}

fn check_name(name: &str, what: &'static str) -> Result<(), ApiError> {
    let ok = !name.is_empty()
        && name.len() <= FUNCTION_NAME_BYTES_MAX
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(ApiError::invalid(
            format!("{what} {name:?} must be 1 to {FUNCTION_NAME_BYTES_MAX} characters of a-z, A-Z, 0-9, _ and -"),
            Some(what),
        ))
    }
}

fn check_schema(schema: &Value, param: &'static str) -> Result<(), ApiError> {
    if !schema.is_object() {
        return Err(ApiError::invalid(
            format!("{param} must be a JSON schema object"),
            Some(param),
        ));
    }
    let bytes = schema.to_string().len();
    if bytes > JSON_SCHEMA_BYTES_MAX {
        return Err(ApiError::invalid(
            format!("{param} has {bytes} bytes; at most {JSON_SCHEMA_BYTES_MAX}"),
            Some(param),
        ));
    }
    Ok(())
}

/// Checks `tools`, `tool_choice` and `parallel_tool_calls`; `None` when the request has no
/// tools and no tool_choice other than `none`/`auto`.
pub fn tool_settings(
    tools: Option<&[ToolDef]>,
    choice: Option<&ToolChoiceField>,
    parallel: Option<bool>,
) -> Result<Option<ToolSettings>, ApiError> {
    let tools = tools.unwrap_or(&[]);
    if tools.len() > TOOLS_MAX {
        return Err(ApiError::invalid(
            format!("{} tools; at most {TOOLS_MAX}", tools.len()),
            Some("tools"),
        ));
    }
    let mut names: Vec<String> = Vec::with_capacity(tools.len());
    let mut schemas = Vec::with_capacity(tools.len());
    let mut values = Vec::with_capacity(tools.len());
    for t in tools {
        if t.kind != "function" {
            return Err(ApiError::invalid(
                format!(
                    "tool type {:?} is not supported (only \"function\")",
                    t.kind
                ),
                Some("tools"),
            ));
        }
        let f = &t.function;
        check_name(&f.name, "tools")?;
        if names.contains(&f.name) {
            return Err(ApiError::invalid(
                format!("two tools are named {:?}", f.name),
                Some("tools"),
            ));
        }
        let params = f
            .parameters
            .clone()
            .unwrap_or_else(|| json!({"type": "object", "properties": {}}));
        check_schema(&params, "tools")?;
        let mut function = Map::new();
        function.insert("name".into(), f.name.clone().into());
        if let Some(d) = &f.description {
            function.insert("description".into(), d.clone().into());
        }
        function.insert("parameters".into(), params.clone());
        values.push(json!({ "type": "function", "function": function }));
        names.push(f.name.clone());
        schemas.push(params);
    }
    let choice = match choice {
        None if names.is_empty() => ToolChoice::None,
        None => ToolChoice::Auto,
        Some(ToolChoiceField::Mode(m)) => match m.as_str() {
            "none" => ToolChoice::None,
            "auto" => ToolChoice::Auto,
            "required" => ToolChoice::Required,
            other => {
                return Err(ApiError::invalid(
                    format!(
                    "tool_choice {other:?} is not one of none, auto, required or a named function"
                ),
                    Some("tool_choice"),
                ))
            }
        },
        Some(ToolChoiceField::Named { kind, function }) => {
            if kind != "function" {
                return Err(ApiError::invalid(
                    format!("tool_choice type {kind:?} is not supported (only \"function\")"),
                    Some("tool_choice"),
                ));
            }
            if !names.contains(&function.name) {
                return Err(ApiError::invalid(
                    format!(
                        "tool_choice names {:?}, which is not among the tools",
                        function.name
                    ),
                    Some("tool_choice"),
                ));
            }
            ToolChoice::Function(function.name.clone())
        }
    };
    if names.is_empty() {
        return match choice {
            ToolChoice::None | ToolChoice::Auto => Ok(None),
            _ => Err(ApiError::invalid(
                "tool_choice requires a call but the request has no tools",
                Some("tool_choice"),
            )),
        };
    }
    Ok(Some(ToolSettings {
        tools: values,
        names,
        schemas,
        choice,
        parallel: parallel.unwrap_or(true),
    }))
}

/// Checks `response_format`: `None` for text (or absent), else what the output must be.
pub fn response_format(
    field: Option<&ResponseFormatField>,
) -> Result<Option<JsonTarget>, ApiError> {
    let Some(f) = field else { return Ok(None) };
    match (f.kind.as_str(), &f.json_schema) {
        ("text", _) => Ok(None),
        ("json_object", _) => Ok(Some(JsonTarget::AnyObject)),
        ("json_schema", Some(js)) => {
            check_name(&js.name, "response_format")?;
            match &js.schema {
                None => Ok(Some(JsonTarget::AnyObject)),
                Some(s) => {
                    check_schema(s, "response_format")?;
                    Ok(Some(JsonTarget::Schema(s.clone())))
                }
            }
        }
        ("json_schema", None) => Err(ApiError::invalid(
            "response_format of type json_schema needs a json_schema object",
            Some("response_format"),
        )),
        (other, _) => Err(ApiError::invalid(
            format!("response_format type {other:?} is not one of text, json_object, json_schema"),
            Some("response_format"),
        )),
    }
}

/// The tool fields of one chat message, checked: an assistant's `tool_calls` must be a list
/// of `{"id", "type": "function", "function": {"name", "arguments": JSON text}}`; a `tool`
/// message needs `tool_call_id` and content; only an assistant message with tool calls may
/// have null content.
pub fn check_message_tool_fields(
    role: &str,
    has_content: bool,
    extra: &Map<String, Value>,
) -> Result<(), ApiError> {
    let bad = |m: String| Err(ApiError::invalid(m, Some("messages")));
    let calls = extra.get("tool_calls").filter(|v| !v.is_null());
    match role {
        "assistant" => {
            if let Some(calls) = calls {
                let Some(list) = calls.as_array() else {
                    return bad("an assistant message's tool_calls must be a list".into());
                };
                if list.len() > MESSAGE_TOOL_CALLS_MAX {
                    return bad(format!(
                        "an assistant message has {} tool calls; at most {MESSAGE_TOOL_CALLS_MAX}",
                        list.len()
                    ));
                }
                for (i, c) in list.iter().enumerate() {
                    let name = c.pointer("/function/name").and_then(Value::as_str);
                    let args = c.pointer("/function/arguments");
                    let args_ok = match args {
                        Some(Value::String(s)) => serde_json::from_str::<Value>(s).is_ok(),
                        Some(Value::Object(_)) => true,
                        _ => false,
                    };
                    if c.get("id").and_then(Value::as_str).is_none()
                        || c.get("type").and_then(Value::as_str) != Some("function")
                        || name.is_none()
                        || !args_ok
                    {
                        return bad(format!(
                            "tool_calls[{i}] must be {{\"id\", \"type\": \"function\", \"function\": {{\"name\", \"arguments\": JSON text}}}}"
                        ));
                    }
                }
            } else if !has_content {
                return bad("an assistant message needs content or tool_calls".into());
            }
        }
        "tool" => {
            if extra.get("tool_call_id").and_then(Value::as_str).is_none() {
                return bad("a tool message needs a tool_call_id (string)".into());
            }
            if !has_content {
                return bad("a tool message needs content".into());
            }
        }
        _ => {
            if calls.is_some() {
                return bad(format!("a {role} message cannot carry tool_calls"));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tools(v: Value) -> Vec<ToolDef> {
        serde_json::from_value(v).unwrap()
    }

    fn weather() -> Vec<ToolDef> {
        tools(
            json!([{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}},
                     {"type": "function", "function": {"name": "now"}}]),
        )
    }

    fn choice(v: Value) -> ToolChoiceField {
        serde_json::from_value(v).unwrap()
    }

    /// Proves: every tool_choice form maps as OpenAI documents, defaults follow the presence
    /// of tools, and a missing `parameters` becomes an empty object schema.
    #[test]
    fn tool_choice_forms() {
        let t = weather();
        let s = tool_settings(Some(&t), None, None).unwrap().unwrap();
        assert_eq!((s.choice.clone(), s.parallel), (ToolChoice::Auto, true));
        assert_eq!(s.names, vec!["get_weather", "now"]);
        assert_eq!(
            s.tools[1],
            json!({"type": "function", "function": {"name": "now", "parameters": {"type": "object", "properties": {}}}})
        );
        for (c, want) in [
            (json!("none"), ToolChoice::None),
            (json!("required"), ToolChoice::Required),
            (
                json!({"type": "function", "function": {"name": "now"}}),
                ToolChoice::Function("now".into()),
            ),
        ] {
            let s = tool_settings(Some(&t), Some(&choice(c)), Some(false))
                .unwrap()
                .unwrap();
            assert_eq!((s.choice, s.parallel), (want, false));
        }
        assert_eq!(tool_settings(None, None, None).unwrap(), None);
        assert_eq!(
            tool_settings(None, Some(&choice(json!("auto"))), None).unwrap(),
            None
        );
    }

    /// Proves: bad tools and choices are 400s naming the field.
    #[test]
    fn bad_tools_are_refused() {
        let t = weather();
        let cases: Vec<(Vec<ToolDef>, Option<ToolChoiceField>, &str)> = vec![
            (t.clone(), Some(choice(json!("sometimes"))), "tool_choice"),
            (
                t.clone(),
                Some(choice(
                    json!({"type": "function", "function": {"name": "nope"}}),
                )),
                "tool_choice",
            ),
            (vec![], Some(choice(json!("required"))), "tool_choice"),
            (
                tools(json!([{"type": "retrieval", "function": {"name": "a"}}])),
                None,
                "tools",
            ),
            (
                tools(json!([{"type": "function", "function": {"name": "has space"}}])),
                None,
                "tools",
            ),
            (
                tools(
                    json!([{"type": "function", "function": {"name": "a"}}, {"type": "function", "function": {"name": "a"}}]),
                ),
                None,
                "tools",
            ),
            (
                tools(json!([{"type": "function", "function": {"name": "a", "parameters": [1]}}])),
                None,
                "tools",
            ),
        ];
        for (tools, c, param) in cases {
            let e = tool_settings(Some(&tools), c.as_ref(), None).unwrap_err();
            assert_eq!(e.param, Some(param), "{}", e.message);
        }
        let many: Vec<ToolDef> = (0..=TOOLS_MAX)
            .map(|i| {
                serde_json::from_value(
                    json!({"type": "function", "function": {"name": format!("f{i}")}}),
                )
                .unwrap()
            })
            .collect();
        assert!(tool_settings(Some(&many), None, None)
            .unwrap_err()
            .message
            .contains("at most 128"));
    }

    /// Proves: response_format text/json_object/json_schema map to the decoder's targets and
    /// malformed ones are 400s.
    #[test]
    fn response_formats() {
        let rf = |v: Value| serde_json::from_value::<ResponseFormatField>(v).unwrap();
        assert_eq!(response_format(None).unwrap(), None);
        assert_eq!(
            response_format(Some(&rf(json!({"type": "text"})))).unwrap(),
            None
        );
        assert_eq!(
            response_format(Some(&rf(json!({"type": "json_object"})))).unwrap(),
            Some(JsonTarget::AnyObject)
        );
        let schema = json!({"type": "object", "properties": {"a": {"type": "integer"}}});
        assert_eq!(
            response_format(Some(&rf(json!({"type": "json_schema", "json_schema": {"name": "r", "schema": schema, "strict": true}})))).unwrap(),
            Some(JsonTarget::Schema(schema))
        );
        for bad in [
            json!({"type": "yaml"}),
            json!({"type": "json_schema"}),
            json!({"type": "json_schema", "json_schema": {"name": "r", "schema": 3}}),
            json!({"type": "json_schema", "json_schema": {"name": "", "schema": {}}}),
        ] {
            assert_eq!(
                response_format(Some(&rf(bad.clone()))).unwrap_err().param,
                Some("response_format"),
                "{bad}"
            );
        }
    }

    /// Proves: assistant messages with tool_calls (content null) and tool messages with
    /// tool_call_id pass; broken ones are 400s on `messages`.
    #[test]
    fn message_tool_fields() {
        let m = |v: Value| v.as_object().unwrap().clone();
        let call = json!({"tool_calls": [{"id": "c0", "type": "function", "function": {"name": "f", "arguments": "{\"a\": 1}"}}]});
        assert!(check_message_tool_fields("assistant", false, &m(call)).is_ok());
        assert!(check_message_tool_fields("tool", true, &m(json!({"tool_call_id": "c0"}))).is_ok());
        for (role, content, extra) in [
            ("assistant", false, json!({})),
            ("assistant", false, json!({"tool_calls": {"id": "c0"}})),
            (
                "assistant",
                false,
                json!({"tool_calls": [{"id": "c0", "type": "function", "function": {"name": "f", "arguments": "{oops"}}]}),
            ),
            (
                "assistant",
                false,
                json!({"tool_calls": [{"type": "function", "function": {"name": "f", "arguments": "{}"}}]}),
            ),
            ("tool", true, json!({})),
            ("tool", false, json!({"tool_call_id": "c0"})),
            ("user", true, json!({"tool_calls": []})),
        ] {
            let e = check_message_tool_fields(role, content, &m(extra.clone())).unwrap_err();
            assert_eq!(e.param, Some("messages"), "{role} {extra}");
        }
    }
}
