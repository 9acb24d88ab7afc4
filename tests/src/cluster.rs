//! Real multi-process clusters on 127.0.0.1 for the end-to-end tests: expert nodes bound to
//! port 0 (the test reads the `listening on` line), placement and secret files in a private
//! temp directory, every child killed when its handle drops.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{channel, Receiver};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::moe_node_bin;

/// How long a node may take to print `listening on`.
pub const NODE_START_TIMEOUT_MS: u64 = 30_000;

/// A private directory removed on drop.
pub struct TempDir(PathBuf);

impl TempDir {
    /// A fresh directory under the system temp dir.
    pub fn new(tag: &str) -> Self {
        static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let p = std::env::temp_dir().join(format!("moe-test-{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).expect("temp dir");
        Self(p)
    }
    /// Its path.
    pub fn path(&self) -> &Path {
        &self.0
    }
    /// Writes `text` to `name` inside and returns the path.
    pub fn write(&self, name: &str, text: &str) -> PathBuf {
        let p = self.0.join(name);
        std::fs::write(&p, text).expect("write temp file");
        p
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A running `moe-node` child; killed on drop. Its stdout lines arrive on a channel, its
/// stderr is collected.
pub struct Node {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: Receiver<String>,
    stderr: Arc<Mutex<String>>,
}

impl Node {
    /// Starts `moe-node args...`.
    pub fn spawn(args: &[String]) -> Self {
        let mut child = Command::new(moe_node_bin())
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn moe-node");
        let (tx, lines) = channel();
        let out = child.stdout.take().expect("stdout");
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let stderr = Arc::new(Mutex::new(String::new()));
        let err = child.stderr.take().expect("stderr");
        let sink = stderr.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                let mut s = sink.lock().unwrap_or_else(|e| e.into_inner());
                s.push_str(&line);
                s.push('\n');
            }
        });
        let stdin = child.stdin.take();
        Self {
            child,
            stdin,
            lines,
            stderr,
        }
    }

    /// The next stdout line, or None after `timeout`.
    pub fn next_line(&self, timeout: Duration) -> Option<String> {
        self.lines.recv_timeout(timeout).ok()
    }

    /// Writes one line to the child's stdin.
    pub fn send_line(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().expect("stdin open");
        writeln!(stdin, "{line}").expect("write to child");
        stdin.flush().expect("flush child stdin");
    }

    /// Everything it wrote to stderr so far.
    pub fn stderr(&self) -> String {
        self.stderr
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Polls until stderr contains `needle` or the deadline passes.
    pub fn wait_stderr(&self, needle: &str, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if self.stderr().contains(needle) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    /// Whether it is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Sends SIGHUP (e.g. to make a router re-read its placement).
    pub fn hangup(&self) {
        self.signal("HUP");
    }

    /// Sends the signal named `name` (`HUP`, `STOP`, `CONT`, ...).
    pub fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .args([&format!("-{name}"), &self.child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{name} failed");
    }

    /// SIGKILL.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill();
    }
}

/// An expert node with its address.
pub struct Expert {
    /// The process.
    pub node: Node,
    /// `IP:port` it listens on.
    pub addr: String,
}

/// Starts `moe-node --role expert --exact` and waits for its `listening on` line.
pub fn start_expert(model: &Path, secret: &Path, shards: &str, name: &str, listen: &str) -> Expert {
    start_expert_with(model, secret, shards, name, listen, &[])
}

/// [`start_expert`] with `extra` options (e.g. `--wire-encrypt`).
pub fn start_expert_with(
    model: &Path,
    secret: &Path,
    shards: &str,
    name: &str,
    listen: &str,
    extra: &[&str],
) -> Expert {
    let mut args: Vec<String> = [
        "--role",
        "expert",
        "--model",
        &model.to_string_lossy(),
        "--shards",
        shards,
        "--node",
        name,
        "--secret-file",
        &secret.to_string_lossy(),
        "--listen",
        listen,
        "--threads",
        "1",
        // The tests compare with the reference and the exact single process.
        "--exact",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    args.extend(extra.iter().map(|s| s.to_string()));
    spawn_expert(&args)
}

/// Starts `moe-node ARGS` (an expert role command line) and waits for its `listening on`
/// line.
pub fn spawn_expert(args: &[String]) -> Expert {
    let node = Node::spawn(args);
    let line = node
        .next_line(Duration::from_millis(NODE_START_TIMEOUT_MS))
        .unwrap_or_else(|| panic!("expert {args:?} did not start: {}", node.stderr()));
    let addr = line
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
        .to_string();
    Expert { node, addr }
}

/// Starts `moe-node --role router --exact` (JSON-line requests on stdin) and waits until it
/// is ready.
pub fn start_router(model: &Path, placement: &Path, secret: &Path) -> Node {
    let args: Vec<String> = [
        "--role",
        "router",
        "--model",
        &model.to_string_lossy(),
        "--placement",
        &placement.to_string_lossy(),
        "--secret-file",
        &secret.to_string_lossy(),
        "--exact",
    ]
    .iter()
    .map(|x| x.to_string())
    .collect();
    let r = Node::spawn(&args);
    let ready = r
        .next_line(Duration::from_millis(NODE_START_TIMEOUT_MS))
        .unwrap_or_else(|| panic!("router not ready: {}", r.stderr()));
    assert!(ready.contains("ready"), "{ready}");
    r
}

/// Starts `moe-node serve --model MODEL --http 127.0.0.1:0 EXTRA...` (see
/// [`start_http_server`]).
pub fn start_serve(model: &Path, extra: &[&str]) -> (Node, String) {
    let mut args: Vec<String> = [
        "serve",
        "--model",
        &model.to_string_lossy(),
        "--http",
        "127.0.0.1:0",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    args.extend(extra.iter().map(|s| s.to_string()));
    start_http_server(&args)
}

/// Starts `moe-node` with `args` (a `serve` or `--role router --http` command line) and waits
/// for its `http listening on` line; returns the process and its HTTP address.
pub fn start_http_server(args: &[String]) -> (Node, String) {
    let node = Node::spawn(args);
    let deadline = std::time::Instant::now() + Duration::from_millis(NODE_START_TIMEOUT_MS);
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        let line = node
            .next_line(left)
            .unwrap_or_else(|| panic!("server did not start: {}", node.stderr()));
        if let Some(addr) = line.strip_prefix("http listening on ") {
            return (node, addr.to_string());
        }
    }
}

impl Node {
    /// Sends one JSON-line request to a router and parses its answer line.
    pub fn ask(&mut self, request: &str, timeout: Duration) -> serde_json::Value {
        self.send_line(request);
        self.answer(timeout)
    }

    /// Parses the next answer line of a router.
    pub fn answer(&self, timeout: Duration) -> serde_json::Value {
        let line = self
            .next_line(timeout)
            .unwrap_or_else(|| panic!("router gave no answer: {}", self.stderr()));
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("bad answer {line:?}: {e}"))
    }
}

/// A placement file text: one `[[node]]` per (name, addr, shards, extra TOML lines).
pub fn placement_toml(nodes: &[(&str, &str, &str, &str)]) -> String {
    let mut s = String::new();
    for (name, addr, shards, extra) in nodes {
        s.push_str(&format!(
            "[[node]]\nname = \"{name}\"\naddr = \"{addr}\"\nshards = \"{shards}\"\n{extra}\n"
        ));
    }
    s
}

/// The secret used by tests.
pub const TEST_SECRET: &str = "moe-node-test-cluster-secret-0123456789";

/// Connects to the expert node at `addr` and authenticates like a router named `name` (with
/// [`TEST_SECRET`] and `model`'s fingerprint): the stream, its session keys and the model's
/// shape and config, for tests that speak the wire themselves.
pub async fn connect_as_router(
    model: &Path,
    addr: &str,
    name: &str,
) -> (
    tokio::net::TcpStream,
    moe_cluster::wire::SessionMac,
    moe_cluster::wire::ModelShape,
    moe_model::config::ModelConfig,
) {
    use moe_cluster::placement::{ExpertSet, NodeName};
    use moe_cluster::wire::{client_handshake, ClusterSecret, HandshakeConfig, ShardSummary};
    let file = moe_model::gguf::GgufFile::open(model).expect("open the model");
    let cfg = moe_model::config::ModelConfig::from_gguf(&file).expect("model config");
    let shape = moe_cluster::wire::ModelShape {
        n_experts: cfg.n_experts,
        hidden_dim: cfg.n_embd,
    };
    let hs = HandshakeConfig::new(
        NodeName::new(name).expect("node name"),
        file.fingerprint(),
        ClusterSecret::new(TEST_SECRET.as_bytes().to_vec()).expect("secret"),
        ShardSummary::uniform(&ExpertSet::empty(cfg.n_experts).expect("expert set")),
        shape,
    );
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let (_, mac) = client_handshake(&mut stream, &hs).await.expect("handshake");
    (stream, mac, shape, cfg)
}
