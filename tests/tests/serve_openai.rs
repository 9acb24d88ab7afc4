//! `moe-node serve` and `--role router --http` against the official `openai` Python client
//! (`tests/python/serve_checks.py`): greedy streaming equals the fixture's greedy continuation,
//! 16 concurrent streams give exactly the tokens each gives alone, chat and stop strings, bad
//! requests answered with 4xx error objects, the API key, a full admission queue (429), a
//! disconnecting client freeing its sequence, concurrent requests sharing each MoE layer's
//! steps (the router's /metrics), and /health following the expert nodes.
//!
//! Needs `python3` with the `openai` package (`.ci/run` installs it).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use moe_model::gguf::GgufFile;
use moe_model::tokenizer::Tokenizer;
use moe_tests::cluster::{
    placement_toml, start_expert, Node, TempDir, NODE_START_TIMEOUT_MS, TEST_SECRET,
};
use moe_tests::fixtures::{fixture_cases, ids};
use moe_tests::fixtures_dir;
use serde_json::json;

/// Context of the test servers (positions per sequence).
const CTX_SIZE: usize = 2048;
/// `--max-tokens-limit` of the test servers.
const MAX_TOKENS_LIMIT: usize = 4096 - 1;
/// How long /health may take to notice a dead expert node.
const HEALTH_CHANGE_TIMEOUT_MS: u64 = 10_000;

fn tiny_model() -> PathBuf {
    fixtures_dir().join("kimi-k25-tiny/kimi-k25-tiny-BF16.gguf")
}

fn s(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}

/// A served `moe-node` and its HTTP address.
struct Server {
    node: Node,
    addr: String,
}

fn serve(args: &[String]) -> Server {
    let node = Node::spawn(args);
    let deadline = Instant::now() + Duration::from_millis(NODE_START_TIMEOUT_MS);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = node
            .next_line(left)
            .unwrap_or_else(|| panic!("server did not start: {}", node.stderr()));
        if let Some(addr) = line.strip_prefix("http listening on ") {
            return Server {
                addr: addr.to_string(),
                node,
            };
        }
    }
}

fn serve_args(model: &Path, extra: &[&str]) -> Vec<String> {
    let ctx = CTX_SIZE.to_string();
    let limit = MAX_TOKENS_LIMIT.to_string();
    let mut a: Vec<String> = [
        "serve",
        "--model",
        &s(model),
        "--http",
        "127.0.0.1:0",
        "--ctx-size",
        &ctx,
        "--max-tokens-limit",
        &limit,
        // The checks compare with the reference's greedy continuation.
        "--exact",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    a.extend(extra.iter().map(|s| s.to_string()));
    a
}

/// What the checks compare with: the fixture's first case and its greedy continuation.
fn write_expectations(dir: &TempDir, model: &Path) -> PathBuf {
    let folder = model
        .parent()
        .unwrap()
        .file_name()
        .unwrap()
        .to_str()
        .unwrap();
    let cases: Vec<_> = fixture_cases(folder)
        .expect("the fixture manifest")
        .into_iter()
        .filter(|c| c.gguf == model)
        .collect();
    let case = &cases.first().expect("a case of the model").json;
    let greedy = ids(&case["greedy_continuation"], "greedy_continuation").unwrap();
    let tok = Tokenizer::from_gguf(&GgufFile::open(model).unwrap()).unwrap();
    let expect = json!({
        "prompt": case["prompt"],
        "prompt_tokens": ids(&case["tokens"], "tokens").unwrap(),
        "greedy_tokens": greedy,
        "greedy_text": tok.decode_lossy(&greedy),
        "case_prompts": cases.iter().map(|c| c.prompt.clone()).collect::<Vec<_>>(),
        "ctx_size": CTX_SIZE,
        "max_tokens_limit": MAX_TOKENS_LIMIT,
    });
    dir.write("expect.json", &expect.to_string())
}

/// Runs the Python checks against `server`; fails the test with their output on failure.
fn python_checks(server: &mut Server, expect: &Path, api_key: Option<&str>, checks: &[&str]) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("python/serve_checks.py");
    let mut cmd = Command::new("python3");
    cmd.arg(&script)
        .arg("--base-url")
        .arg(format!("http://{}/v1", server.addr))
        .arg("--expect")
        .arg(expect);
    if let Some(k) = api_key {
        cmd.arg("--api-key").arg(k);
    }
    let out = cmd.args(checks).output().expect("running python3");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("{stdout}");
    assert!(
        out.status.success(),
        "python checks {checks:?} failed ({}):\n{stdout}\n{stderr}\nserver stderr:\n{}",
        out.status,
        server.node.stderr()
    );
    assert!(
        server.node.is_running(),
        "the server died: {}",
        server.node.stderr()
    );
    assert!(
        !server.node.stderr().contains("panicked"),
        "the server panicked: {}",
        server.node.stderr()
    );
}

/// `GET path` over plain HTTP/1.1: (status, body).
fn http_get(addr: &str, path: &str) -> (u16, String) {
    let mut c = TcpStream::connect(addr).expect("connect");
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        c,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut resp = String::new();
    c.read_to_string(&mut resp).unwrap();
    let status = resp
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = resp
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

fn wait_health(addr: &str, want: u16) -> String {
    let deadline = Instant::now() + Duration::from_millis(HEALTH_CHANGE_TIMEOUT_MS);
    loop {
        let (status, body) = http_get(addr, "/health");
        if status == want {
            return body;
        }
        assert!(
            Instant::now() < deadline,
            "/health stayed {status} ({body}), want {want}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn single_process_serves_the_openai_api() {
    let dir = TempDir::new("serve-single");
    let model = tiny_model();
    let expect = write_expectations(&dir, &model);
    let mut server = serve(&serve_args(&model, &[]));
    python_checks(
        &mut server,
        &expect,
        None,
        &[
            "models",
            "greedy",
            "chat",
            "stop",
            "concurrent",
            "bad_requests",
        ],
    );
}

#[test]
fn full_queue_disconnects_and_api_key() {
    let dir = TempDir::new("serve-queue");
    let model = tiny_model();
    let expect = write_expectations(&dir, &model);
    let key = "serve-test-api-key-0123";
    let key_file = dir.write("key", &format!("{key}\n"));
    let mut server = serve(&serve_args(
        &model,
        &[
            "--max-active-sequences",
            "1",
            "--admission-queue",
            "1",
            "--api-key-file",
            &s(&key_file),
        ],
    ));
    python_checks(
        &mut server,
        &expect,
        Some(key),
        &["auth", "disconnect", "queue_full"],
    );
}

#[test]
fn router_with_two_expert_nodes_serves_the_openai_api() {
    let dir = TempDir::new("serve-cluster");
    let model = tiny_model();
    let expect = write_expectations(&dir, &model);
    let secret = dir.write("secret", TEST_SECRET);
    let mut experts: Vec<_> = [("e1", "0-191"), ("e2", "192-383")]
        .iter()
        .map(|(n, sh)| start_expert(&model, &secret, sh, n, "127.0.0.1:0"))
        .collect();
    let placement = dir.write(
        "p.toml",
        &placement_toml(&[
            ("e1", &experts[0].addr, "0-191", ""),
            ("e2", &experts[1].addr, "192-383", ""),
        ]),
    );
    let ctx = CTX_SIZE.to_string();
    let limit = MAX_TOKENS_LIMIT.to_string();
    let args: Vec<String> = [
        "--role",
        "router",
        "--model",
        &s(&model),
        "--placement",
        &s(&placement),
        "--secret-file",
        &s(&secret),
        "--http",
        "127.0.0.1:0",
        "--ctx-size",
        &ctx,
        "--max-tokens-limit",
        &limit,
        "--metrics-addr",
        "127.0.0.1:0",
        "--exact",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let mut server = serve(&args);
    let body = wait_health(&server.addr, 200);
    assert!(body.contains("\"ok\""), "{body}");
    python_checks(
        &mut server,
        &expect,
        None,
        &["models", "greedy", "concurrent", "batching", "bad_requests"],
    );
    // /health is ready only while every expert node is reachable.
    experts[1].node.kill();
    let body = wait_health(&server.addr, 503);
    assert!(
        body.contains("e2"),
        "/health does not name the dead node: {body}"
    );
    assert!(
        server.node.is_running(),
        "router died with an expert node: {}",
        server.node.stderr()
    );
    experts.clear();
}
