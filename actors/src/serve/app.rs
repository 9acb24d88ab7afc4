//! The HTTP application: every route of `serve` and the guard in front of `/v1/*`.

use std::sync::Arc;

use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};
use axum::Router;

use super::http_limits::{self, ApiKey, BodyLimits};
use super::messages::messages;
use super::routes::{
    chat_completions, completions, health, metrics, models, not_found, AppState,
    REQUEST_BODY_BYTES_MAX,
};

/// The application: routes, the API key (`/v1/*` only) checked before the body is read
/// within `body`'s limits, shared state.
pub fn app(state: Arc<AppState>, api_key: Option<ApiKey>, body: BodyLimits) -> Router {
    let v1 = Router::new()
        .route("/v1/completions", post(completions))
        .route("/v1/chat/completions", post(chat_completions))
        .route("/v1/messages", post(messages))
        .route("/v1/models", get(models));
    http_limits::guard(v1, api_key, body)
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(REQUEST_BODY_BYTES_MAX))
        .with_state(state)
}
