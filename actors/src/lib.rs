//! The HTTP request layer of `moe-node serve` as a library: OpenAI error objects, request
//! bodies and their checks, connection and body limits, the chat template, tools and
//! `response_format`, tool-call parsing, JSON-constrained decoding and the Anthropic
//! Messages API types. The binary re-exports these modules under `serve` (one
//! compilation), and the HTTP fuzz target calls them; nothing here depends on the engine or
//! the model (the JSON constraint takes the vocabulary as token bytes).

#[path = "serve/anthropic.rs"]
pub mod anthropic;
#[path = "serve/api_error.rs"]
pub mod api_error;
#[path = "serve/chat_template.rs"]
pub mod chat_template;
#[path = "serve/http_limits.rs"]
pub mod http_limits;
#[path = "serve/json_constraint.rs"]
pub mod json_constraint;
#[path = "serve/openai.rs"]
pub mod openai;
#[path = "serve/tool_call_grammar.rs"]
pub mod tool_call_grammar;
#[path = "serve/tool_calls.rs"]
pub mod tool_calls;
#[path = "serve/tools.rs"]
pub mod tools;
