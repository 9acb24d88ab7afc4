//! The `http_request` target: raw bytes as the client side of one HTTP/1 connection to the
//! request layer of `moe-node serve` (hyper's parser, the API-key and body-limit middleware
//! of `http_limits`, the JSON bodies and checks of `openai`), the engine left out: the
//! handlers stop where a checked request would be queued.
//!
//! The connection runs over an in-memory pipe on a current-thread runtime with paused time
//! (the header, body and linger timeouts pass at once when the input stalls). Must hold:
//! no panic, every answer a 2xx or 4xx (no 5xx: nothing here is the server's fault), and
//! every error body an OpenAI error object.

use std::cell::RefCell;
use std::convert::Infallible;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use moe_node_http::api_error::ApiError;
use moe_node_http::http_limits::{self, ApiKey, BodyLimits};
use moe_node_http::openai::{
    parse_json, ChatRequest, CompletionRequest, PromptInput, CHAT_MESSAGES_MAX,
    PROMPT_BYTES_PER_TOKEN_MAX,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tower::ServiceExt;

/// The API key the fuzzed server requires on `/v1/*`.
pub const FUZZ_API_KEY: &str = "fuzz-key";
/// Largest body, small so that 413 is reachable.
pub const FUZZ_BODY_BYTES_MAX: usize = 16 << 10;
/// Context positions of the fuzzed server.
pub const FUZZ_CTX_SIZE: usize = 64;
/// Vocabulary size of the fuzzed server.
pub const FUZZ_VOCAB_SIZE: usize = 1000;
/// Largest `max_tokens`.
pub const FUZZ_MAX_TOKENS_LIMIT: usize = 32;
/// Capacity of the in-memory pipe, each way.
const PIPE_BYTES: usize = 64 << 10;
/// Most response bytes read back.
const RESPONSE_BYTES_MAX: u64 = 1 << 20;

/// Valid requests to mutate: both endpoints, models, health, a chunked body, pipelining,
/// a too-large announced body, a wrong key.
pub fn http_seeds() -> Vec<Vec<u8>> {
    let auth = format!("Authorization: Bearer {FUZZ_API_KEY}\r\n");
    let post = |path: &str, body: &str| {
        format!(
            "POST {path} HTTP/1.1\r\nHost: f\r\n{auth}Content-Type: application/json\r\n\
             Content-Length: {}\r\n\r\n{body}",
            body.len()
        )
    };
    vec![
        post(
            "/v1/completions",
            r#"{"prompt":"Hello","max_tokens":4,"temperature":0.5,"stop":["\n"],"stream":true}"#,
        ),
        post("/v1/completions", r#"{"prompt":[[1,2,3]],"top_k":5,"n":1}"#),
        post(
            "/v1/chat/completions",
            r#"{"messages":[{"role":"user","content":[{"type":"text","text":"hi"}]}],"max_completion_tokens":3}"#,
        ),
        format!("GET /v1/models HTTP/1.1\r\nHost: f\r\nauthorization: bearer {FUZZ_API_KEY}\r\n\r\nGET /health HTTP/1.1\r\n\r\n"),
        format!(
            "POST /v1/completions HTTP/1.1\r\n{auth}Transfer-Encoding: chunked\r\n\r\n\
             5\r\n{{\"pro\r\n9\r\nmpt\":\"a\"}}\r\n0\r\n\r\n"
        ),
        format!("POST /v1/completions HTTP/1.1\r\n{auth}Content-Length: 99999999999\r\n\r\n{{"),
        "POST /v1/chat/completions HTTP/1.1\r\nAuthorization: Bearer fuzz-kex\r\nContent-Length: 2\r\n\r\n{}".into(),
    ]
    .into_iter()
    .map(String::into_bytes)
    .collect()
}

async fn completions(body: Bytes) -> Response {
    let r = (|| {
        let req: CompletionRequest = parse_json(&body)?;
        req.gen
            .settings(req.gen.max_tokens, FUZZ_MAX_TOKENS_LIMIT, 0)?;
        match req.prompt.checked(FUZZ_CTX_SIZE, FUZZ_VOCAB_SIZE)? {
            PromptInput::Text(t) => assert!(
                t.len() <= FUZZ_CTX_SIZE * PROMPT_BYTES_PER_TOKEN_MAX,
                "an oversized prompt text passed"
            ),
            PromptInput::Tokens(ids) => assert!(
                ids.len() < FUZZ_CTX_SIZE && ids.iter().all(|&t| (t as usize) < FUZZ_VOCAB_SIZE),
                "a token prompt over the context or vocabulary passed"
            ),
        }
        Ok::<_, ApiError>(StatusCode::OK.into_response())
    })();
    r.unwrap_or_else(IntoResponse::into_response)
}

async fn chat_completions(body: Bytes) -> Response {
    let r = (|| {
        let req: ChatRequest = parse_json(&body)?;
        if req.messages.is_empty() || req.messages.len() > CHAT_MESSAGES_MAX {
            return Err(ApiError::invalid("message count", Some("messages")));
        }
        let max_tokens = req.max_completion_tokens.or(req.gen.max_tokens);
        req.gen.settings(max_tokens, FUZZ_MAX_TOKENS_LIMIT, 0)?;
        for m in &req.messages {
            m.template_value()?;
        }
        Ok(StatusCode::OK.into_response())
    })();
    r.unwrap_or_else(IntoResponse::into_response)
}

fn app() -> Router {
    let v1 = Router::new()
        .route("/v1/completions", post(completions))
        .route("/v1/chat/completions", post(chat_completions))
        .route(
            "/v1/models",
            get(|| async { Json(serde_json::json!({"data": []})) }),
        );
    let body = BodyLimits {
        bytes_max: FUZZ_BODY_BYTES_MAX,
        timeout: Duration::from_secs(1),
    };
    http_limits::guard(v1, Some(ApiKey::new(FUZZ_API_KEY)), body)
        .route("/health", get(|| async { "ok" }))
        .fallback(|| async {
            ApiError::invalid("no such route", None).with_status(StatusCode::NOT_FOUND)
        })
}

thread_local! {
    static RUNTIME: tokio::runtime::Runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .expect("a tokio runtime");
    static APP: RefCell<Router> = RefCell::new(app());
}

/// One connection: `data` written by the client (then its write side shut), the answers
/// read back and checked.
pub fn http_request(data: &[u8]) -> Option<()> {
    check_answers(&http_exchange(data));
    Some(())
}

/// The bytes the server answers to the client bytes `data` on one connection.
pub fn http_exchange(data: &[u8]) -> Vec<u8> {
    let app = APP.with(|a| a.borrow().clone());
    RUNTIME.with(|rt| rt.block_on(exchange(app, data)))
}

async fn exchange(app: Router, data: &[u8]) -> Vec<u8> {
    let (mut client, server) = tokio::io::duplex(PIPE_BYTES);
    let service = hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
        let app = app.clone();
        async move {
            let res = app.oneshot(req.map(Body::new)).await;
            Ok::<_, Infallible>(res.unwrap_or_else(|never: Infallible| match never {}))
        }
    });
    // The client shuts its write side after the input: answer what it asked anyway.
    let conn = http1::Builder::new()
        .half_close(true)
        .timer(TokioTimer::new())
        .header_read_timeout(Duration::from_secs(1))
        .serve_connection(TokioIo::new(server), service);
    let talk = async {
        // The server may close before taking everything (a refused request): not an error.
        let _ = client.write_all(data).await;
        let _ = client.shutdown().await;
        let mut answers = Vec::new();
        let _ = (&mut client)
            .take(RESPONSE_BYTES_MAX)
            .read_to_end(&mut answers)
            .await;
        answers
    };
    let (_, answers) = tokio::join!(conn, talk);
    answers
}

/// Every status line a 2xx or 4xx; every JSON error body an OpenAI error object.
fn check_answers(answers: &[u8]) {
    let text = String::from_utf8_lossy(answers);
    for (i, _) in text.match_indices("HTTP/1.1 ") {
        let status: u16 = text[i + 9..]
            .get(..3)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        assert!(
            (200..300).contains(&status) || (400..500).contains(&status),
            "status {status} in {text:?}"
        );
    }
    for (i, _) in text.match_indices("{\"error\":") {
        let rest = &text[i..];
        let end = rest.find("}}").map_or(rest.len(), |e| e + 2);
        let v: serde_json::Value = serde_json::from_str(&rest[..end])
            .unwrap_or_else(|e| panic!("an error body that is not JSON ({e}): {rest:?}"));
        assert!(
            v["error"]["message"].is_string() && v["error"]["type"].is_string(),
            "not an OpenAI error object: {v}"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn statuses(data: &[u8]) -> Vec<u16> {
        let text = String::from_utf8_lossy(&http_exchange(data)).into_owned();
        text.match_indices("HTTP/1.1 ")
            .filter_map(|(i, _)| text[i + 9..].get(..3)?.parse().ok())
            .collect()
    }

    #[test]
    fn the_seeds_reach_the_handlers_and_the_limits() {
        let want: [&[u16]; 7] = [&[200], &[200], &[200], &[200, 200], &[200], &[413], &[401]];
        for (seed, want) in http_seeds().iter().zip(want) {
            assert_eq!(statuses(seed), want, "{}", String::from_utf8_lossy(seed));
        }
    }
}
