//! Connection-level limits of the HTTP API: what one client can hold of the server before
//! a request reaches a handler.
//!
//! ```text
//! connections   at most `--http-connections-max` at once (lowered to fit the open-file
//!               limit); a new connection over the cap closes the oldest idle one, or,
//!               when every one is busy with a request, gets 503 and is closed
//! headers       a request head must arrive within `--http-header-timeout-ms` (hyper's
//!               header-read timer); the same timeout closes a connection idle between
//!               requests, so slow or silent connections cannot hold their place
//! API key       checked before the body is read: `Authorization: Bearer KEY`, the scheme
//!               in any case, compared as SHA-256 digests in constant time
//! body          `Content-Length` over `REQUEST_BODY_BYTES_MAX` is 413 before reading; the
//!               whole body must arrive within `--http-body-timeout-ms` (else 408)
//! ```
//!
//! A connection is busy from the moment its request head is parsed until its response body
//! (an SSE stream included) has been sent or dropped; only connections that are not busy
//! are closed to make room. It is part of the `moe_node_http` library (`src/lib.rs`, shared
//! with the HTTP fuzz target), so it depends on nothing of the binary but `api_error.rs`.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::{Body, BodyDataStream, Bytes};
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Router;
use futures_util::StreamExt;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use tower::ServiceExt;

use super::api_error::ApiError;

/// How long a client may take to send a request head, and how long a connection may stay
/// idle between requests, in milliseconds (default of `--http-header-timeout-ms`).
pub const HTTP_HEADER_READ_TIMEOUT_MS: u64 = 15_000;
/// How long a client may take to send a whole request body, in milliseconds (default of
/// `--http-body-timeout-ms`); 408 beyond.
pub const HTTP_BODY_READ_TIMEOUT_MS: u64 = 30_000;
/// Most HTTP connections open at once (default of `--http-connections-max`).
pub const HTTP_CONNECTIONS_MAX: usize = 512;
/// Open files kept for everything but HTTP connections (model file, expert-node links,
/// metrics listener, the runtime's own descriptors): the connection cap is lowered to the
/// open-file limit minus these.
pub const HTTP_RESERVED_FILES: u64 = 64;
/// How long a new connection waits for the place of the idle connection it closed, in
/// milliseconds.
pub const HTTP_EVICTION_WAIT_MS: u64 = 1_000;
/// How long a connection answered before its body was read (401, 408, 413) goes on reading
/// and discarding that body before it closes, in milliseconds.
pub const HTTP_LINGER_MS: u64 = 5_000;
/// Most body bytes read and discarded after such an early answer.
pub const HTTP_LINGER_BYTES_MAX: usize = 16 << 20;
/// How long the accept loop pauses after an accept error other than a failed handshake
/// (out of file descriptors, ...), in milliseconds.
pub const HTTP_ACCEPT_RETRY_MS: u64 = 50;

/// What the connection loop enforces.
#[derive(Debug, Clone, Copy)]
pub struct ConnectionLimits {
    /// Time to receive a request head; also the idle time after which a kept-alive
    /// connection is closed.
    pub header_timeout: Duration,
    /// Most connections at once.
    pub connections_max: usize,
}

/// What the body middleware enforces.
#[derive(Debug, Clone, Copy)]
pub struct BodyLimits {
    /// Largest body, in bytes.
    pub bytes_max: usize,
    /// Time to receive the whole body.
    pub timeout: Duration,
}

/// The API key clients must send, kept only as its SHA-256 digest.
#[derive(Clone)]
pub struct ApiKey {
    digest: [u8; 32],
}

impl std::fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ApiKey(..)")
    }
}

impl ApiKey {
    /// The key `key` (not empty: an empty key would accept a missing header).
    pub fn new(key: &str) -> Self {
        assert!(!key.is_empty(), "an API key cannot be empty");
        Self {
            digest: Sha256::digest(key.as_bytes()).into(),
        }
    }

    /// Whether `authorization` (the header's value) carries this key. The digests of both
    /// are compared in constant time: the time taken tells neither how much of the key
    /// matched nor its length.
    pub fn accepts(&self, authorization: Option<&[u8]>) -> bool {
        let Some(token) = authorization.and_then(bearer_token) else {
            return false;
        };
        let given: [u8; 32] = Sha256::digest(token).into();
        bool::from(given.ct_eq(&self.digest))
    }
}

/// The token of an `Authorization: Bearer TOKEN` value: the scheme in any case (RFC 9110
/// §11.1), then one or more spaces; `None` for another scheme or an empty token.
pub fn bearer_token(value: &[u8]) -> Option<&[u8]> {
    const SCHEME: &[u8] = b"bearer";
    let (scheme, rest) = value.split_at_checked(SCHEME.len())?;
    if !scheme.eq_ignore_ascii_case(SCHEME) || rest.first() != Some(&b' ') {
        return None;
    }
    let token = rest.trim_ascii();
    (!token.is_empty()).then_some(token)
}

/// Middleware: 401 unless the request carries `key`. Runs before anything reads the body.
pub async fn require_key(State(key): State<Arc<ApiKey>>, req: Request, next: Next) -> Response {
    let given = req
        .headers()
        .get(header::AUTHORIZATION)
        .map(HeaderValue::as_bytes);
    if key.accepts(given) {
        next.run(req).await
    } else {
        let (parts, body) = req.into_parts();
        answer_early(
            ApiError::unauthorized(),
            &parts.headers,
            body.into_data_stream(),
        )
    }
}

/// Middleware: reads the whole body within `limits` and hands it on as one buffer. A
/// `Content-Length` over the limit is 413 before anything is read; a body that grows past
/// the limit is 413 when it does; a body not complete within the timeout is 408.
pub async fn read_body(State(limits): State<BodyLimits>, req: Request, next: Next) -> Response {
    let (parts, body) = req.into_parts();
    let mut stream = body.into_data_stream();
    if let Some(len) = content_length(&parts.headers) {
        if len > limits.bytes_max as u64 {
            let err = ApiError::too_large(Some(len), limits.bytes_max);
            return answer_early(err, &parts.headers, stream);
        }
    }
    let read = async {
        let mut data = Vec::new();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| {
                ApiError::invalid(format!("cannot read the request body: {e}"), None)
            })?;
            if data.len() + chunk.len() > limits.bytes_max {
                return Err(ApiError::too_large(None, limits.bytes_max));
            }
            data.extend_from_slice(&chunk);
        }
        Ok(data)
    };
    let read = tokio::time::timeout(limits.timeout, read).await;
    match read {
        Ok(Ok(data)) => next.run(Request::from_parts(parts, Body::from(data))).await,
        Ok(Err(e)) => answer_early(e, &parts.headers, stream),
        Err(_) => answer_early(
            ApiError::body_timeout(limits.timeout),
            &parts.headers,
            stream,
        ),
    }
}

/// Adds the API-key check (when a key is set) and the body limits to every route of
/// `router` so far: the key first, then the body.
pub fn guard<S: Clone + Send + Sync + 'static>(
    router: Router<S>,
    key: Option<ApiKey>,
    body: BodyLimits,
) -> Router<S> {
    let router = router.route_layer(axum::middleware::from_fn_with_state(body, read_body));
    match key {
        Some(key) => router.route_layer(axum::middleware::from_fn_with_state(
            Arc::new(key),
            require_key,
        )),
        None => router,
    }
}

/// The declared body length, if the request has a valid `Content-Length`.
fn content_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// An error answered before (all of) the body was read. The connection closes after it, as
/// the rest of the body cannot be told from a next request; until then the rest of the body
/// is read and discarded for a while (`HTTP_LINGER_MS`, `HTTP_LINGER_BYTES_MAX`), so that a
/// client still sending gets to read the answer instead of a connection reset.
fn answer_early(err: ApiError, request_headers: &HeaderMap, rest: BodyDataStream) -> Response {
    let unread_body = request_headers.contains_key(header::TRANSFER_ENCODING)
        || content_length(request_headers).is_some_and(|n| n > 0);
    let mut res = err.into_response();
    if unread_body {
        res.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
        tokio::spawn(linger(rest));
    }
    res
}

/// Reads and discards `rest` for at most `HTTP_LINGER_MS` and `HTTP_LINGER_BYTES_MAX`.
async fn linger(mut rest: BodyDataStream) {
    let drain = async {
        let mut read = 0usize;
        while let Some(Ok(chunk)) = rest.next().await {
            read += chunk.len();
            if read > HTTP_LINGER_BYTES_MAX {
                break;
            }
        }
    };
    let _ = tokio::time::timeout(Duration::from_millis(HTTP_LINGER_MS), drain).await;
}

/// The connection cap for `requested`: lowered, with a note on stderr, so that the
/// connections and `HTTP_RESERVED_FILES` fit the open-file limit (raised toward its hard
/// limit first where allowed).
pub fn connection_cap(requested: usize) -> usize {
    let wanted = requested as u64 + HTTP_RESERVED_FILES;
    let Some(limit) = raise_open_file_limit(wanted) else {
        return requested;
    };
    let fits = limit.saturating_sub(HTTP_RESERVED_FILES).max(1);
    if fits < requested as u64 {
        eprintln!(
            "--http-connections-max {requested} lowered to {fits}: this process may open {limit} files \
             (ulimit -n) and keeps {HTTP_RESERVED_FILES} of them for the model and expert links"
        );
        fits as usize
    } else {
        requested
    }
}

/// Raises the soft open-file limit toward `wanted` (within the hard limit); the limit now.
#[cfg(unix)]
#[allow(clippy::unnecessary_cast)] // rlim_t is narrower than u64 on some targets
fn raise_open_file_limit(wanted: u64) -> Option<u64> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one `rlimit` through a pointer to a live, writable one.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return None;
    }
    let target = (wanted as libc::rlim_t).min(lim.rlim_max);
    if lim.rlim_cur < target {
        let raised = libc::rlimit {
            rlim_cur: target,
            rlim_max: lim.rlim_max,
        };
        // SAFETY: setrlimit reads one `rlimit` through a pointer to a live one.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            lim.rlim_cur = target;
        }
    }
    Some(lim.rlim_cur as u64)
}

#[cfg(not(unix))]
fn raise_open_file_limit(_wanted: u64) -> Option<u64> {
    None
}

/// One open connection, as the accept loop sees it.
struct Connection {
    /// Requests in progress (head parsed, response body not yet done).
    busy: Arc<AtomicUsize>,
    /// Closes the connection.
    close: Arc<Notify>,
}

/// The open connections, oldest first.
#[derive(Default)]
struct Connections {
    next_id: u64,
    open: BTreeMap<u64, Connection>,
}

impl Connections {
    fn add(&mut self, busy: Arc<AtomicUsize>, close: Arc<Notify>) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        self.open.insert(id, Connection { busy, close });
        id
    }

    /// Tells the oldest connection without a request in progress to close; false when
    /// every connection is busy.
    fn close_oldest_idle(&mut self) -> bool {
        let idle = self
            .open
            .iter()
            .find(|(_, c)| c.busy.load(Ordering::Acquire) == 0)
            .map(|(&id, _)| id);
        match idle.and_then(|id| self.open.remove(&id)) {
            Some(c) => {
                c.close.notify_one();
                true
            }
            None => false,
        }
    }
}

/// Decrements a connection's busy count when dropped.
struct BusyGuard(Arc<AtomicUsize>);

impl BusyGuard {
    fn new(busy: Arc<AtomicUsize>) -> Self {
        busy.fetch_add(1, Ordering::AcqRel);
        Self(busy)
    }
}

impl Drop for BusyGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A response body that keeps its connection busy until it is done or dropped.
struct TrackedBody {
    inner: Body,
    _busy: BusyGuard,
}

impl http_body::Body for TrackedBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// Serves `app` on `listener` within `limits` until the listener fails.
pub async fn serve(listener: TcpListener, app: Router, limits: ConnectionLimits) {
    let places = Arc::new(Semaphore::new(limits.connections_max));
    let connections = Arc::new(Mutex::new(Connections::default()));
    // The map is held only for single updates, so a poisoned lock still holds a valid map.
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) if is_connection_error(&e) => continue,
            Err(e) => {
                eprintln!("http: accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(HTTP_ACCEPT_RETRY_MS)).await;
                continue;
            }
        };
        let place = match places.clone().try_acquire_owned() {
            Ok(place) => Some(place),
            Err(_) => make_room(&connections, &places).await,
        };
        let Some(place) = place else {
            refuse(stream, limits.connections_max);
            continue;
        };
        let busy = Arc::new(AtomicUsize::new(0));
        let close = Arc::new(Notify::new());
        let id = connections
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .add(busy.clone(), close.clone());
        let (app, connections) = (app.clone(), connections.clone());
        tokio::spawn(async move {
            let service =
                hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                    let (app, busy) = (app.clone(), BusyGuard::new(busy.clone()));
                    async move {
                        let res = app
                            .oneshot(req.map(Body::new))
                            .await
                            .unwrap_or_else(|never: Infallible| match never {});
                        Ok::<_, Infallible>(
                            res.map(|inner| Body::new(TrackedBody { inner, _busy: busy })),
                        )
                    }
                });
            let conn = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(limits.header_timeout)
                .serve_connection(TokioIo::new(stream), service);
            // Errors (header timeouts, resets, malformed requests) end only this connection.
            tokio::select! {
                _ = conn => {}
                _ = close.notified() => {}
            }
            connections
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .open
                .remove(&id);
            drop(place);
        });
    }
}

/// Closes the oldest idle connection and takes its place; `None` when every connection is
/// busy (or the closed one does not let go within `HTTP_EVICTION_WAIT_MS`).
async fn make_room(
    connections: &Mutex<Connections>,
    places: &Arc<Semaphore>,
) -> Option<OwnedSemaphorePermit> {
    let closed = connections
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .close_oldest_idle();
    if !closed {
        return None;
    }
    let wait = Duration::from_millis(HTTP_EVICTION_WAIT_MS);
    tokio::time::timeout(wait, places.clone().acquire_owned())
        .await
        .ok()?
        .ok()
}

/// Answers a connection over the cap with 503 (if its socket takes the few bytes at once)
/// and closes it.
fn refuse(stream: TcpStream, cap: usize) {
    let body = ApiError::too_many_connections(cap).body().to_string();
    let answer = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n\
         content-length: {}\r\nretry-after: 1\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    // Read what already arrived so that closing sends FIN, not a reset that could discard
    // the answer before the client reads it.
    let mut sink = [0u8; 4096];
    while matches!(stream.try_read(&mut sink), Ok(n) if n > 0) {}
    let _ = stream.try_write(answer.as_bytes());
}

/// Accept errors that concern one connection only (it was reset before it was accepted).
fn is_connection_error(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::ConnectionRefused
            | std::io::ErrorKind::ConnectionAborted
            | std::io::ErrorKind::ConnectionReset
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_scheme_in_any_case_and_one_or_more_spaces() {
        for v in [
            "Bearer k",
            "bearer k",
            "BEARER k",
            "bEaReR   k ",
            "Bearer  k",
        ] {
            assert_eq!(bearer_token(v.as_bytes()), Some(&b"k"[..]), "{v:?}");
        }
        for v in [
            "", "Bearer", "Bearer ", "Bearer  ", "Bearerk", "Basic k", "k", "Bear k",
        ] {
            assert_eq!(bearer_token(v.as_bytes()), None, "{v:?}");
        }
    }

    #[test]
    fn api_key_accepts_only_the_key() {
        let key = ApiKey::new("sk-secret");
        assert!(key.accepts(Some(b"Bearer sk-secret")));
        assert!(key.accepts(Some(b"bearer sk-secret")));
        for wrong in [
            &b"Bearer sk-secreT"[..],
            b"Bearer sk-secre",
            b"Bearer sk-secrets",
            b"Bearer ",
            b"sk-secret",
            b"Basic sk-secret",
        ] {
            assert!(
                !key.accepts(Some(wrong)),
                "{:?}",
                String::from_utf8_lossy(wrong)
            );
        }
        assert!(!key.accepts(None));
        assert_eq!(
            format!("{key:?}"),
            "ApiKey(..)",
            "the key never reaches a log"
        );
    }
}
