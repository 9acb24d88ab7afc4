//! Connection-level limits of `moe-node serve`, from raw TCP sockets: slow and idle
//! connections are closed after the header timeout, a low file limit and many idle
//! connections do not lock `/health` out, connections over the cap get 503, a body announced
//! too large gets 413 before it is read, a stalled body gets 408, the API key is checked
//! before the body (and the `Bearer` scheme matched in any case), and prompts longer than the
//! context are refused before they are tokenized.
//!
//! Every server is a child process killed on drop; every wait has a deadline far above what
//! an idle machine needs, so a loaded one does not make these tests fail.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{channel, Receiver};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use moe_tests::cluster::{TempDir, NODE_START_TIMEOUT_MS};
use moe_tests::http::{exchange, read_response};
use moe_tests::{fixtures_dir, moe_node_bin};
use serde_json::{json, Value};

/// Context of the test servers (positions per sequence).
const CTX_SIZE: usize = 256;
/// The short header timeout of the slow-connection test.
const SHORT_HEADER_TIMEOUT_MS: u64 = 1_000;
/// The short body timeout of the stalled-body test.
const SHORT_BODY_TIMEOUT_MS: u64 = 1_000;
/// A timeout longer than any test, for the limits a test must not run into.
const LONG_TIMEOUT_MS: u64 = 600_000;
/// How long an answer the server gives without waiting may take on a loaded machine.
const ANSWER_TIMEOUT_MS: u64 = 20_000;
/// How long the slow connections may stay open, past the header timeout, before the test fails.
const CLOSE_DEADLINE_MS: u64 = 30_000;
/// The key of the API-key tests.
const API_KEY: &str = "sk-test-0123456789abcdef";

fn tiny_model() -> PathBuf {
    fixtures_dir().join("kimi-k25-tiny/kimi-k25-tiny-BF16.gguf")
}

/// A `moe-node serve` child, killed on drop, and its HTTP address.
struct Server {
    child: Child,
    addr: String,
    stderr: Arc<Mutex<String>>,
}

impl Server {
    /// `moe-node serve --model tiny --http 127.0.0.1:0 --ctx-size CTX_SIZE extra...`, with the
    /// open-file limit set to `nofile` first when given.
    fn start(extra: &[&str], nofile: Option<u32>) -> Self {
        let model = tiny_model();
        let ctx = CTX_SIZE.to_string();
        let mut args: Vec<String> = [
            "serve",
            "--model",
            &model.to_string_lossy(),
            "--http",
            "127.0.0.1:0",
            "--ctx-size",
            &ctx,
        ]
        .iter()
        .chain(extra)
        .map(|s| s.to_string())
        .collect();
        let mut cmd = match nofile {
            None => Command::new(moe_node_bin()),
            Some(n) => {
                let mut c = Command::new("sh");
                c.arg("-c")
                    .arg(format!("ulimit -n {n} && exec \"$0\" \"$@\""))
                    .arg(moe_node_bin());
                c
            }
        };
        let mut child = cmd
            .args(args.drain(..))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn moe-node");
        let lines = lines_of(child.stdout.take().expect("stdout"));
        let stderr = Arc::new(Mutex::new(String::new()));
        let (err, sink) = (child.stderr.take().expect("stderr"), stderr.clone());
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                let mut s = sink.lock().unwrap_or_else(|e| e.into_inner());
                s.push_str(&line);
                s.push('\n');
            }
        });
        let mut server = Self {
            child,
            addr: String::new(),
            stderr,
        };
        let deadline = Instant::now() + Duration::from_millis(NODE_START_TIMEOUT_MS);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = lines
                .recv_timeout(left)
                .unwrap_or_else(|_| panic!("server did not start: {}", server.stderr()));
            if let Some(addr) = line.strip_prefix("http listening on ") {
                server.addr = addr.to_string();
                return server;
            }
        }
    }

    fn stderr(&self) -> String {
        self.stderr
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Fails the test when the server died or panicked.
    fn assert_alive(&mut self) {
        assert!(
            matches!(self.child.try_wait(), Ok(None)),
            "the server died: {}",
            self.stderr()
        );
        assert!(
            !self.stderr().contains("panicked"),
            "the server panicked: {}",
            self.stderr()
        );
    }

    /// `GET /health` answers 200 before `timeout` (retrying refused or dropped attempts).
    fn wait_healthy(&mut self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        let mut last = String::new();
        while Instant::now() < deadline {
            let left = deadline.saturating_duration_since(Instant::now());
            match exchange(&self.addr, &get("/health", None), left) {
                Ok((200, _)) => return,
                Ok((status, body)) => last = format!("{status} {body}"),
                Err(e) => last = e.to_string(),
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!(
            "/health did not answer 200 within {timeout:?} (last: {last}); server: {}",
            self.stderr()
        );
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn lines_of(out: impl Read + Send + 'static) -> Receiver<String> {
    let (tx, rx) = channel();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

fn get(path: &str, auth: Option<&str>) -> Vec<u8> {
    let auth = auth
        .map(|a| format!("Authorization: {a}\r\n"))
        .unwrap_or_default();
    format!("GET {path} HTTP/1.1\r\nHost: test\r\n{auth}Connection: close\r\n\r\n").into_bytes()
}

/// The head of a POST announcing `content_length` body bytes.
fn post_head(path: &str, content_length: u64, auth: Option<&str>) -> Vec<u8> {
    let auth = auth
        .map(|a| format!("Authorization: {a}\r\n"))
        .unwrap_or_default();
    format!(
        "POST {path} HTTP/1.1\r\nHost: test\r\n{auth}Content-Type: application/json\r\n\
         Content-Length: {content_length}\r\nConnection: close\r\n\r\n"
    )
    .into_bytes()
}

fn post_json(path: &str, body: &Value) -> Vec<u8> {
    let body = body.to_string();
    let mut req = post_head(path, body.len() as u64, None);
    req.extend_from_slice(body.as_bytes());
    req
}

/// The `error` object of an error answer.
fn error_of(body: &str) -> Value {
    let v: Value = serde_json::from_str(body)
        .unwrap_or_else(|e| panic!("the answer is not JSON ({e}): {body:?}"));
    v["error"].clone()
}

fn answer_timeout() -> Duration {
    Duration::from_millis(ANSWER_TIMEOUT_MS)
}

/// Whether the server closed `c` (or answered on it, as a closing 408 does), without blocking.
fn closed_by_server(c: &mut TcpStream) -> bool {
    let mut buf = [0u8; 256];
    match c.read(&mut buf) {
        // 0 bytes: closed; any bytes: the server answered (a closing 408) before closing.
        Ok(0) | Ok(_) => true,
        Err(e) => e.kind() != std::io::ErrorKind::WouldBlock,
    }
}

#[test]
fn slow_and_idle_connections_are_closed_after_the_header_timeout() {
    let timeout = SHORT_HEADER_TIMEOUT_MS.to_string();
    let mut server = Server::start(&["--http-header-timeout-ms", &timeout], None);
    let start = Instant::now();
    // 50 slowloris connections (a header byte every 200 ms) and 10 that send nothing.
    let mut slow: Vec<TcpStream> = (0..50)
        .map(|_| {
            let mut c = TcpStream::connect(&server.addr).expect("connect");
            c.write_all(b"GET /health HTTP/1.1\r\nHost: test\r\nX-Slow: ")
                .expect("write");
            c.set_nonblocking(true).unwrap();
            c
        })
        .collect();
    let mut idle: Vec<TcpStream> = (0..10)
        .map(|_| {
            let c = TcpStream::connect(&server.addr).expect("connect");
            c.set_nonblocking(true).unwrap();
            c
        })
        .collect();
    let deadline = start + Duration::from_millis(SHORT_HEADER_TIMEOUT_MS + CLOSE_DEADLINE_MS);
    while !(slow.is_empty() && idle.is_empty()) {
        assert!(
            Instant::now() < deadline,
            "{} slow and {} idle connections still open {:?} after a header timeout of {SHORT_HEADER_TIMEOUT_MS} ms",
            slow.len(),
            idle.len(),
            start.elapsed()
        );
        slow.retain_mut(|c| !(c.write_all(b"a").is_err() || closed_by_server(c)));
        idle.retain_mut(|c| !closed_by_server(c));
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(
        start.elapsed() >= Duration::from_millis(SHORT_HEADER_TIMEOUT_MS / 2),
        "connections closed before the header timeout"
    );
    server.wait_healthy(answer_timeout());
    server.assert_alive();
}

#[test]
fn idle_connections_do_not_lock_out_health_under_a_low_file_limit() {
    // 140 idle connections against 128 open files; the header timeout is long, so only the
    // connection cap (closing idle connections for new ones) keeps /health answering.
    let long = LONG_TIMEOUT_MS.to_string();
    let mut server = Server::start(&["--http-header-timeout-ms", &long], Some(128));
    let idle: Vec<TcpStream> = (0..140)
        .map(|_| TcpStream::connect(&server.addr).expect("connect"))
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    server.wait_healthy(answer_timeout());
    drop(idle);
    server.wait_healthy(answer_timeout());
    server.assert_alive();
}

#[test]
fn connections_over_the_cap_get_503_while_every_one_is_busy() {
    let long = LONG_TIMEOUT_MS.to_string();
    let mut server = Server::start(
        &[
            "--http-connections-max",
            "4",
            "--http-body-timeout-ms",
            &long,
        ],
        None,
    );
    // Four requests busy sending their bodies.
    let mut busy: Vec<TcpStream> = (0..4)
        .map(|_| {
            let mut c = TcpStream::connect(&server.addr).expect("connect");
            c.write_all(&post_head("/v1/completions", 100, None))
                .expect("write");
            c.write_all(b"{\"prompt\":").expect("write");
            c
        })
        .collect();
    std::thread::sleep(Duration::from_secs(2));
    let (status, body) = exchange(&server.addr, &get("/health", None), answer_timeout())
        .expect("the fifth connection is answered");
    assert_eq!(status, 503, "{body}");
    let err = error_of(&body);
    assert_eq!(err["code"], "too_many_connections", "{body}");
    assert!(
        err["message"].as_str().unwrap().contains('4'),
        "the message names the cap: {body}"
    );
    // A finished request frees its connection's place.
    let c = busy.pop().unwrap();
    drop(c);
    server.wait_healthy(answer_timeout());
    server.assert_alive();
}

#[test]
fn a_body_announced_too_large_gets_413_before_it_is_read() {
    let mut server = Server::start(&[], None);
    let (status, body) = exchange(
        &server.addr,
        &post_head("/v1/completions", 10_000_000_000, None),
        answer_timeout(),
    )
    .expect("an answer");
    assert_eq!(status, 413, "{body}");
    let err = error_of(&body);
    assert_eq!(err["code"], "request_too_large", "{body}");
    assert!(
        err["message"].as_str().unwrap().contains("10000000000"),
        "the message names the announced size: {body}"
    );
    // A client that sends its whole (too large) body before reading, as Python's http.client
    // does, reads the 413 too: the server discards the body instead of resetting the
    // connection under it.
    let len = 5 << 20;
    let mut c = TcpStream::connect(&server.addr).expect("connect");
    c.set_write_timeout(Some(answer_timeout())).unwrap();
    c.write_all(&post_head("/v1/completions", len as u64, None))
        .unwrap();
    c.write_all(&vec![b' '; len])
        .expect("the server takes the body it refused");
    let (status, body) = read_response(&mut c, answer_timeout()).expect("an answer");
    assert_eq!(status, 413, "{body}");
    server.assert_alive();
}

#[test]
fn a_stalled_body_gets_408_after_the_body_timeout() {
    let timeout = SHORT_BODY_TIMEOUT_MS.to_string();
    let mut server = Server::start(&["--http-body-timeout-ms", &timeout], None);
    let start = Instant::now();
    let mut c = TcpStream::connect(&server.addr).expect("connect");
    c.write_all(&post_head("/v1/completions", 1000, None))
        .unwrap();
    c.write_all(b"{\"prompt\": \"").unwrap();
    let (status, body) = read_response(
        &mut c,
        Duration::from_millis(SHORT_BODY_TIMEOUT_MS + CLOSE_DEADLINE_MS),
    )
    .expect("an answer");
    assert_eq!(status, 408, "{body}");
    assert_eq!(error_of(&body)["code"], "request_timeout", "{body}");
    assert!(
        start.elapsed() >= Duration::from_millis(SHORT_BODY_TIMEOUT_MS / 2),
        "408 before the body timeout"
    );
    server.assert_alive();
}

fn keyed_server(dir: &TempDir) -> Server {
    let key_file = dir.write("key", &format!("{API_KEY}\n"));
    let long = LONG_TIMEOUT_MS.to_string();
    Server::start(
        &[
            "--api-key-file",
            &key_file.to_string_lossy(),
            "--http-body-timeout-ms",
            &long,
        ],
        None,
    )
}

#[test]
fn the_api_key_is_checked_before_the_body_is_read() {
    let dir = TempDir::new("hardening-key-first");
    let mut server = keyed_server(&dir);
    // The body never comes and the body timeout is long: only a check before reading answers.
    let (status, body) = exchange(
        &server.addr,
        &post_head("/v1/completions", 1000, Some("Bearer wrong-key")),
        answer_timeout(),
    )
    .expect("an answer");
    assert_eq!(status, 401, "{body}");
    assert_eq!(error_of(&body)["code"], "invalid_api_key", "{body}");
    server.assert_alive();
}

#[test]
fn the_bearer_scheme_is_matched_in_any_case_and_wrong_keys_are_refused() {
    let dir = TempDir::new("hardening-bearer");
    let mut server = keyed_server(&dir);
    let status = |auth: Option<&str>| {
        let (status, body) =
            exchange(&server.addr, &get("/v1/models", auth), answer_timeout()).expect("an answer");
        assert!(status == 200 || status == 401, "{status} {body}");
        status
    };
    for scheme in ["Bearer", "bearer", "BEARER", "bEaReR"] {
        assert_eq!(
            status(Some(&format!("{scheme} {API_KEY}"))),
            200,
            "{scheme}"
        );
    }
    assert_eq!(
        status(Some(&format!("Bearer  {API_KEY}"))),
        200,
        "two spaces"
    );
    let longer = format!("Bearer {API_KEY}x");
    let shorter = format!("Bearer {}", &API_KEY[..API_KEY.len() - 1]);
    let same_length = format!("Bearer {}X", &API_KEY[..API_KEY.len() - 1]);
    let basic = format!("Basic {API_KEY}");
    for auth in [
        None,
        Some("Bearer"),
        Some("Bearer "),
        Some(longer.as_str()),
        Some(shorter.as_str()),
        Some(same_length.as_str()),
        Some(basic.as_str()),
        Some(API_KEY),
    ] {
        assert_eq!(status(auth), 401, "{auth:?}");
    }
    server.assert_alive();
}

#[test]
fn prompts_longer_than_the_context_are_refused_before_tokenizing() {
    let mut server = Server::start(&[], None);
    let ask = |path: &str, body: Value| {
        let (status, text) =
            exchange(&server.addr, &post_json(path, &body), answer_timeout()).expect("an answer");
        assert_eq!(status, 400, "{text}");
        let err = error_of(&text);
        assert_eq!(err["code"], "context_length_exceeded", "{text}");
        err["message"].as_str().unwrap().to_string()
    };
    // Far more bytes than the context can hold tokens: refused by size, before tokenizing.
    let long_text = "a".repeat(CTX_SIZE * 64);
    let message = ask("/v1/completions", json!({ "prompt": long_text }));
    assert!(
        message.contains("bytes") && message.contains(&CTX_SIZE.to_string()),
        "the message names the byte limit and the context: {message}"
    );
    let message = ask(
        "/v1/chat/completions",
        json!({ "messages": [{ "role": "user", "content": long_text }] }),
    );
    assert!(message.contains("bytes"), "{message}");
    // Token ids longer than the context: refused before the ids are even checked.
    let ids = vec![u32::MAX; CTX_SIZE + 1];
    let message = ask("/v1/completions", json!({ "prompt": ids }));
    assert!(
        message.contains(&format!("{} tokens", CTX_SIZE + 1)),
        "{message}"
    );
    server.assert_alive();
}
