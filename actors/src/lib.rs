//! The HTTP request layer of `moe-node serve` as a library: OpenAI error objects, request
//! bodies and their checks, connection and body limits. The binary re-exports these modules
//! under `serve` (one compilation), and the HTTP fuzz target calls them; nothing here depends
//! on the engine or the model.

#[path = "serve/api_error.rs"]
pub mod api_error;
#[path = "serve/http_limits.rs"]
pub mod http_limits;
#[path = "serve/openai.rs"]
pub mod openai;
