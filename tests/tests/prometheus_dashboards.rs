//! A real Prometheus scrapes a real cluster (1 router + 3 expert processes, each with
//! `--metrics-addr 127.0.0.1:0`) under generation load, and every query of every panel and
//! every variable of every dashboard in `grafana/dashboards/` must return data.
//!
//! Needs Debian's `prometheus` package (`.ci/run` installs it); without it the test fails
//! and says so.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use moe_tests::cluster::{placement_toml, Node, TempDir, NODE_START_TIMEOUT_MS, TEST_SECRET};
use moe_tests::http;
use moe_tests::moe_node_ok;
use serde_json::Value;

/// Prometheus's scrape interval in the test configuration, seconds.
const SCRAPE_INTERVAL_S: u64 = 1;
/// What `$__rate_interval` stands for: enough 1 s scrapes for `rate()` to have points.
const RATE_INTERVAL: &str = "15s";
/// What `$__range` stands for.
const RANGE: &str = "1m";
/// Grafana's "All" value of the dashboards' multi-value variables (their `allValue`).
const ALL_VALUE: &str = ".+";
/// How long Prometheus may take to answer its readiness endpoint.
const PROMETHEUS_READY_TIMEOUT_MS: u64 = 30_000;
/// How long load may run before every query must have returned data.
const QUERIES_NONEMPTY_TIMEOUT_MS: u64 = 120_000;
/// Longest wait for one generation answer from the router.
const ANSWER_TIMEOUT_MS: u64 = 60_000;
/// Requests made before the first full sweep of queries (every histogram has observations).
const WARMUP_REQUESTS: usize = 3;

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn s(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}

/// `prometheus` on PATH, or a failure that says how to get it.
fn prometheus_bin() -> PathBuf {
    let found = std::env::var_os("PATH")
        .map(|paths| {
            std::env::split_paths(&paths)
                .map(|d| d.join("prometheus"))
                .find(|p| p.is_file())
        })
        .unwrap_or_default();
    found.unwrap_or_else(|| {
        panic!("`prometheus` is not installed: run `apt-get install -y prometheus` (Debian's package; .ci/run installs it)")
    })
}

/// A free port on 127.0.0.1 (bound, then released).
fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    l.local_addr().expect("local addr").port()
}

/// Reads stdout lines until one starts with `prefix`; returns the rest of it.
fn wait_line(node: &Node, prefix: &str, what: &str) -> String {
    let deadline = Instant::now() + Duration::from_millis(NODE_START_TIMEOUT_MS);
    while Instant::now() < deadline {
        if let Some(line) = node.next_line(Duration::from_millis(200)) {
            if let Some(rest) = line.strip_prefix(prefix) {
                return rest.trim().to_string();
            }
        }
    }
    panic!("{what} printed no {prefix:?} line:\n{}", node.stderr());
}

/// A Prometheus server, killed on drop.
struct Prometheus {
    child: Child,
    addr: String,
    log: PathBuf,
}

impl Prometheus {
    fn start(dir: &TempDir, targets: &[(&str, Vec<String>)]) -> Self {
        let mut cfg = format!(
            "global:\n  scrape_interval: {SCRAPE_INTERVAL_S}s\n  scrape_timeout: {SCRAPE_INTERVAL_S}s\n  evaluation_interval: {SCRAPE_INTERVAL_S}s\nscrape_configs:\n"
        );
        for (job, addrs) in targets {
            let list: Vec<String> = addrs.iter().map(|a| format!("\"{a}\"")).collect();
            cfg.push_str(&format!(
                "  - job_name: {job}\n    static_configs:\n      - targets: [{}]\n",
                list.join(", ")
            ));
        }
        let config = dir.write("prometheus.yml", &cfg);
        let addr = format!("127.0.0.1:{}", free_port());
        let log = dir.path().join("prometheus.log");
        let log_file = std::fs::File::create(&log).expect("prometheus log");
        let child = Command::new(prometheus_bin())
            .arg(format!("--config.file={}", s(&config)))
            .arg(format!(
                "--storage.tsdb.path={}",
                s(&dir.path().join("tsdb"))
            ))
            .arg(format!("--web.listen-address={addr}"))
            .stdin(Stdio::null())
            .stdout(log_file.try_clone().expect("log file"))
            .stderr(log_file)
            .spawn()
            .expect("starting prometheus");
        let p = Self { child, addr, log };
        let deadline = Instant::now() + Duration::from_millis(PROMETHEUS_READY_TIMEOUT_MS);
        loop {
            if let Ok((200, _)) = http::get(&p.addr, "/-/ready", Duration::from_secs(2)) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "prometheus not ready after {PROMETHEUS_READY_TIMEOUT_MS} ms:\n{}",
                p.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        p
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// An instant query: `Ok(number of series)` or `Err(Prometheus's error)`.
    fn query(&self, expr: &str) -> Result<usize, String> {
        let path = format!("/api/v1/query?query={}", http::url_encode(expr));
        let (status, body) =
            http::get(&self.addr, &path, Duration::from_secs(10)).map_err(|e| e.to_string())?;
        let v: Value =
            serde_json::from_str(&body).map_err(|e| format!("HTTP {status}: {e}: {body}"))?;
        if v["status"] != "success" {
            return Err(format!("HTTP {status}: {}: {}", v["errorType"], v["error"]));
        }
        Ok(v["data"]["result"].as_array().map_or(0, Vec::len))
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Replaces Grafana's template variables: built-in intervals by fixed ones, every dashboard
/// variable (`$node`, `${layer}`, `${peer:regex}`) by the "All" regex.
fn substitute(expr: &str) -> String {
    let builtins = [
        ("$__rate_interval", RATE_INTERVAL),
        ("$__interval", "5s"),
        ("$__range", RANGE),
    ];
    let mut out = expr.to_string();
    for (name, value) in builtins {
        out = out
            .replace(&format!("${{{}}}", &name[1..]), value)
            .replace(name, value);
    }
    let mut result = String::new();
    let mut rest = out.as_str();
    while let Some(i) = rest.find('$') {
        result.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        let len = if let Some(inner) = after.strip_prefix('{') {
            inner
                .find('}')
                .map(|j| j + 2)
                .unwrap_or_else(|| panic!("unclosed ${{ in {expr}"))
        } else {
            after
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(after.len())
        };
        assert!(len > 0, "stray $ in {expr}");
        result.push_str(ALL_VALUE);
        rest = &after[len..];
    }
    result.push_str(rest);
    result
}

/// `label_values(metric, label)` (a Grafana variable query) as a PromQL query that has a
/// result exactly when the variable has values.
fn variable_query(q: &str) -> String {
    let inner = q
        .trim()
        .strip_prefix("label_values(")
        .and_then(|r| r.strip_suffix(')'))
        .unwrap_or_else(|| panic!("unsupported variable query {q}"));
    let (metric, label) = inner
        .rsplit_once(',')
        .unwrap_or_else(|| panic!("label_values without a label: {q}"));
    format!("count by ({}) ({})", label.trim(), metric.trim())
}

/// Every (dashboard file, panel title, query) of `grafana/dashboards/*.json`, variables
/// included, with templates substituted.
fn dashboard_queries() -> Vec<(String, String, String)> {
    let dir = repo_root().join("grafana/dashboards");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    files.sort();
    assert!(
        files.len() >= 4,
        "expected the four dashboards in {}",
        dir.display()
    );
    let mut out = Vec::new();
    for file in files {
        let name = file
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .into_owned();
        let d: Value =
            serde_json::from_str(&std::fs::read_to_string(&file).expect("read dashboard"))
                .unwrap_or_else(|e| panic!("{name}: {e}"));
        for v in d["templating"]["list"].as_array().into_iter().flatten() {
            if v["type"] == "query" {
                let q = v["query"]["query"]
                    .as_str()
                    .or_else(|| v["query"].as_str())
                    .unwrap_or_else(|| panic!("{name}: variable without query"));
                out.push((
                    name.clone(),
                    format!("variable ${}", v["name"].as_str().unwrap_or("?")),
                    variable_query(q),
                ));
            }
        }
        let mut panels: Vec<&Value> = d["panels"].as_array().into_iter().flatten().collect();
        while let Some(p) = panels.pop() {
            panels.extend(p["panels"].as_array().into_iter().flatten());
            for t in p["targets"].as_array().into_iter().flatten() {
                let expr = t["expr"].as_str().unwrap_or_else(|| {
                    panic!("{name}: panel {} has a target without expr", p["title"])
                });
                out.push((
                    name.clone(),
                    p["title"].as_str().unwrap_or("?").to_string(),
                    substitute(expr),
                ));
            }
        }
    }
    out
}

fn start_expert(model: &Path, secret: &Path, shards: &str, name: &str) -> (Node, String, String) {
    let args: Vec<String> = [
        "--role",
        "expert",
        "--model",
        &s(model),
        "--shards",
        shards,
        "--node",
        name,
        "--secret-file",
        &s(secret),
        "--listen",
        "127.0.0.1:0",
        "--metrics-addr",
        "127.0.0.1:0",
        "--threads",
        "1",
    ]
    .iter()
    .map(|a| a.to_string())
    .collect();
    let node = Node::spawn(&args);
    let metrics = wait_line(&node, "metrics on ", name);
    let listen = wait_line(&node, "listening on ", name);
    (node, listen, metrics)
}

#[test]
fn substitution_covers_grafana_forms() {
    assert_eq!(
        substitute("rate(x{a=~\"$node\", b=~\"${peer}\"}[$__rate_interval])"),
        format!("rate(x{{a=~\".+\", b=~\".+\"}}[{RATE_INTERVAL}])")
    );
    assert_eq!(
        substitute("increase(x[${__range}])"),
        format!("increase(x[{RANGE}])")
    );
    assert_eq!(
        variable_query("label_values(moe_node_info, node_name)"),
        "count by (node_name) (moe_node_info)"
    );
}

#[test]
fn every_dashboard_query_has_data_from_a_live_cluster() {
    let queries = dashboard_queries();
    let dir = TempDir::new("prometheus");
    let model = dir.path().join("model.gguf");
    moe_node_ok(&[
        "synth",
        "--out",
        &s(&model),
        "--preset",
        "tiny",
        "--layers",
        "4",
    ]);
    let secret = dir.write("secret", TEST_SECRET);

    let experts: Vec<(Node, String, String)> =
        [("e1", "0-127"), ("e2", "128-255"), ("e3", "256-383")]
            .iter()
            .map(|(n, sh)| start_expert(&model, &secret, sh, n))
            .collect();
    let placement = dir.write(
        "placement.toml",
        &placement_toml(&[
            ("e1", &experts[0].1, "0-127", ""),
            ("e2", &experts[1].1, "128-255", ""),
            ("e3", &experts[2].1, "256-383", ""),
        ]),
    );
    let router_args: Vec<String> = [
        "--role",
        "router",
        "--model",
        &s(&model),
        "--placement",
        &s(&placement),
        "--secret-file",
        &s(&secret),
        "--metrics-addr",
        "127.0.0.1:0",
        "--threads",
        "1",
    ]
    .iter()
    .map(|a| a.to_string())
    .collect();
    let mut router = Node::spawn(&router_args);
    let router_metrics = wait_line(&router, "metrics on ", "router");
    wait_line(&router, "{\"ready\":true}", "router");

    // Every endpoint answers by itself before Prometheus is involved.
    for (what, addr) in
        std::iter::once(("router", &router_metrics)).chain(experts.iter().map(|e| ("expert", &e.2)))
    {
        let (status, body) =
            http::get(addr, "/metrics", Duration::from_secs(5)).expect("GET /metrics");
        assert_eq!(status, 200, "{what} at {addr}: {body}");
        assert!(body.contains("moe_node_info{"), "{what} at {addr}:\n{body}");
    }

    let prom = Prometheus::start(
        &dir,
        &[
            ("moe-router", vec![router_metrics.clone()]),
            ("moe-experts", experts.iter().map(|e| e.2.clone()).collect()),
        ],
    );

    let deadline = Instant::now() + Duration::from_millis(QUERIES_NONEMPTY_TIMEOUT_MS);
    let mut requests = 0usize;
    loop {
        router.send_line(&format!(r#"{{"prompt": "The quick brown fox {requests}", "max_tokens": 8, "temperature": 0.7, "seed": {requests}, "ignore_eos": true}}"#));
        let answer = router
            .next_line(Duration::from_millis(ANSWER_TIMEOUT_MS))
            .unwrap_or_else(|| {
                panic!(
                    "router did not answer request {requests}:\n{}",
                    router.stderr()
                )
            });
        let v: Value = serde_json::from_str(&answer).unwrap_or_else(|e| panic!("{e}: {answer}"));
        assert!(
            v.get("error").is_none(),
            "request {requests} failed: {answer}\n{}",
            router.stderr()
        );
        requests += 1;
        if requests < WARMUP_REQUESTS {
            continue;
        }
        let mut empty = Vec::new();
        for (file, panel, expr) in &queries {
            match prom.query(expr) {
                Ok(0) => empty.push(format!("{file} / {panel}: {expr}")),
                Ok(_) => {}
                Err(e) => panic!("{file} / {panel}: Prometheus refused {expr}: {e}"),
            }
        }
        if empty.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "after {requests} requests, {} of {} dashboard queries still have no data:\n{}\nprometheus log:\n{}",
            empty.len(),
            queries.len(),
            empty.join("\n"),
            prom.log()
        );
    }
    // Every target was scraped successfully.
    assert_eq!(
        prom.query("up == 1").unwrap(),
        4,
        "not every node is up in Prometheus"
    );
    drop(prom);
    drop(router);
    drop(experts);
}
