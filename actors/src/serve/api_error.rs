//! OpenAI-style error responses: `{"error": {"message", "type", "param", "code"}}` with the
//! HTTP status that says whose fault it was.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

/// An error answered to an HTTP client.
#[derive(Debug, Clone)]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// Human-readable explanation.
    pub message: String,
    /// OpenAI's error `type` (`invalid_request_error`, `rate_limit_error`, ...).
    pub kind: &'static str,
    /// The request field at fault, if one is.
    pub param: Option<&'static str>,
    /// A machine-readable code (`context_length_exceeded`, `queue_full`, ...).
    pub code: Option<&'static str>,
}

impl ApiError {
    /// 400: the request is wrong.
    pub fn invalid(message: impl Into<String>, param: Option<&'static str>) -> Self {
        Self {
            status: StatusCode::BAD_REQUEST,
            message: message.into(),
            kind: "invalid_request_error",
            param,
            code: None,
        }
    }

    /// The same error with a machine-readable code.
    pub fn with_code(mut self, code: &'static str) -> Self {
        self.code = Some(code);
        self
    }

    /// The same error with another status.
    pub fn with_status(mut self, status: StatusCode) -> Self {
        self.status = status;
        self
    }

    /// 429: the admission queue is full.
    pub fn queue_full(waiting: usize) -> Self {
        Self {
            status: StatusCode::TOO_MANY_REQUESTS,
            message: format!("the server is busy: its admission queue is full ({waiting} requests waiting); retry later"),
            kind: "rate_limit_error",
            param: None,
            code: Some("queue_full"),
        }
    }

    /// 503: the engine cannot take or finish work.
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::SERVICE_UNAVAILABLE,
            message: message.into(),
            kind: "server_error",
            param: None,
            code: Some("unavailable"),
        }
    }

    /// 401: missing or wrong API key.
    pub fn unauthorized() -> Self {
        Self {
            status: StatusCode::UNAUTHORIZED,
            message: "missing or invalid API key (send `Authorization: Bearer KEY`)".into(),
            kind: "invalid_request_error",
            param: None,
            code: Some("invalid_api_key"),
        }
    }

    /// 413: the request body is (or is announced as) larger than `max` bytes.
    pub fn too_large(announced: Option<u64>, max: usize) -> Self {
        let message = match announced {
            Some(n) => format!("the request body is announced as {n} bytes (Content-Length); at most {max} are accepted"),
            None => format!("the request body is larger than {max} bytes"),
        };
        Self::invalid(message, None)
            .with_status(StatusCode::PAYLOAD_TOO_LARGE)
            .with_code("request_too_large")
    }

    /// 408: the request body did not arrive within `timeout`.
    pub fn body_timeout(timeout: std::time::Duration) -> Self {
        Self::invalid(
            format!(
                "the request body did not arrive within {} ms",
                timeout.as_millis()
            ),
            None,
        )
        .with_status(StatusCode::REQUEST_TIMEOUT)
        .with_code("request_timeout")
    }

    /// 503: the server holds its most connections (`cap`) and every one is busy.
    pub fn too_many_connections(cap: usize) -> Self {
        Self {
            status: StatusCode::SERVICE_UNAVAILABLE,
            message: format!("the server is busy: all of its {cap} connections are serving requests; retry later"),
            kind: "server_error",
            param: None,
            code: Some("too_many_connections"),
        }
    }

    /// The error object as JSON (also sent as an SSE event when a stream fails).
    pub fn body(&self) -> serde_json::Value {
        json!({ "error": { "message": self.message, "type": self.kind, "param": self.param, "code": self.code } })
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, Json(self.body())).into_response()
    }
}
