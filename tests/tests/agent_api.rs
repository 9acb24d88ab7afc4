//! The agent API of issue #15 through a real `moe-node serve` on the tiny fixture, served
//! with Kimi K2's chat template (`--chat-template-file`), driven by the official `openai` and
//! `anthropic` Python clients (`tests/python/agent_checks.py`):
//!
//! - a tool round trip forced by `tool_choice` (request with tools → `tool_calls` whose
//!   arguments validate → the client sends the tool result → a text answer), streamed and
//!   not, through `/v1/chat/completions` and `/v1/messages`;
//! - logprobs of a greedy completion equal `log_softmax` of `moe-node logits` over the same
//!   tokens (the logits the sampler used), top alternatives included;
//! - n = 3 with a seed: reproducible, choice 0 equal to n = 1, usage summed;
//! - `response_format` json_schema: every output parses and validates, on every fixture GGUF
//!   (random weights: only the constraint makes the output valid);
//! - the same forced tool round trip through a router and two expert nodes.
//!
//! Needs `python3` with `openai`, `anthropic` and `jsonschema` (`.ci/run` installs them).

use std::path::{Path, PathBuf};
use std::process::Command;

use moe_devdata::npy;
use moe_tests::cluster::{
    placement_toml, start_expert, start_http_server, start_serve, Node, TempDir, TEST_SECRET,
};
use moe_tests::fixtures::{all_fixture_cases, fixture_cases, ids};
use moe_tests::fixtures_dir;
use serde_json::{json, Value};

/// Context of the test servers (positions per sequence).
const CTX_SIZE: &str = "2048";
/// Largest difference between a served logprob and the recomputed one (same kernels in
/// exact mode; the served one comes from a batched decode step, the recomputed one from a
/// teacher-forced pass).
const LOGPROB_TOL: f32 = 1e-4;

fn tiny_model() -> PathBuf {
    fixtures_dir().join("kimi-k25-tiny/kimi-k25-tiny-BF16.gguf")
}

fn kimi_template() -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("data/chat_templates/Kimi-K2-Instruct.jinja")
        .to_string_lossy()
        .into_owned()
}

fn s(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}

/// `serve` options of every test server.
fn serve_extra(template: &str) -> Vec<String> {
    [
        "--ctx-size",
        CTX_SIZE,
        "--exact",
        "--chat-template-file",
        template,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// Runs the Python checks against the server at `addr`; fails the test with their output
/// (and the server's stderr) on failure. Returns what the script wrote to `--out`.
fn python_checks(
    node: &mut Node,
    addr: &str,
    dir: &TempDir,
    expect: Option<&Path>,
    checks: &[&str],
) -> Value {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("python/agent_checks.py");
    let out_path = dir.path().join("agent_out.json");
    let mut cmd = Command::new("python3");
    cmd.arg(&script)
        .arg("--base-url")
        .arg(format!("http://{addr}"))
        .arg("--out")
        .arg(&out_path);
    if let Some(e) = expect {
        cmd.arg("--expect").arg(e);
    }
    let out = cmd.args(checks).output().expect("running python3");
    let stdout = String::from_utf8_lossy(&out.stdout);
    println!("{stdout}");
    assert!(
        out.status.success(),
        "agent checks {checks:?} failed ({}):\n{stdout}\n{}\nserver stderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr),
        node.stderr()
    );
    assert!(node.is_running(), "the server died: {}", node.stderr());
    let text = std::fs::read_to_string(&out_path).unwrap_or_else(|_| "{}".into());
    serde_json::from_str(&text).expect("the checks' output is JSON")
}

/// `log_softmax(row)`.
fn log_softmax(row: &[f32]) -> Vec<f32> {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let z: f64 = row.iter().map(|&l| ((l - max) as f64).exp()).sum();
    let log_z = max as f64 + z.ln();
    row.iter().map(|&l| (l as f64 - log_z) as f32).collect()
}

/// The logits rows of `tokens` (teacher-forced, exact mode) from `moe-node logits`.
fn teacher_forced(model: &Path, tokens: &[u32], dir: &TempDir) -> (Vec<f32>, usize) {
    let out = dir.path().join("logits.npy");
    let toks: Vec<String> = tokens.iter().map(u32::to_string).collect();
    moe_tests::moe_node_ok(&[
        "logits".into(),
        "--model".into(),
        s(model),
        "--tokens".into(),
        toks.join(","),
        "--out".into(),
        s(&out),
    ]);
    let npy = npy::read_f32(&out).expect("the logits .npy");
    let vocab = *npy.shape.last().expect("a [T, vocab] array");
    (npy.data, vocab)
}

#[test]
fn tools_logprobs_n_and_messages_on_the_tiny_fixture() {
    let model = tiny_model();
    let dir = TempDir::new("agent-api");
    let extra = serve_extra(&kimi_template());
    let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
    let (mut node, addr) = start_serve(&model, &extra);
    let case = fixture_cases("kimi-k25-tiny")
        .expect("the fixture manifest")
        .into_iter()
        .find(|c| c.gguf == model)
        .expect("a case of the model");
    let prompt = ids(&case.json["tokens"], "tokens").unwrap();
    let expect = dir.write(
        "expect.json",
        &json!({ "prompt_tokens": prompt }).to_string(),
    );
    let result = python_checks(
        &mut node,
        &addr,
        &dir,
        Some(&expect),
        &[
            "tools_openai",
            "tools_required",
            "tools_anthropic",
            "text_anthropic",
            "logprobs",
            "n",
            "bad_requests",
        ],
    );
    // Logprobs: each position's served logprob and top 5 against log_softmax of the logits
    // `moe-node logits` computes for the prompt and the tokens generated before it.
    let c = &result["completion"];
    let generated: Vec<u32> = serde_json::from_value(c["token_ids"].clone()).unwrap();
    let served: Vec<f32> = serde_json::from_value(c["token_logprobs"].clone()).unwrap();
    let tops: Vec<Vec<f32>> = serde_json::from_value(c["top_logprobs"].clone()).unwrap();
    assert_eq!(generated.len(), 3, "{c}");
    let mut all = prompt.clone();
    all.extend(&generated[..generated.len() - 1]);
    let (logits, vocab) = teacher_forced(&model, &all, &dir);
    for (i, &t) in generated.iter().enumerate() {
        let row = &logits[(prompt.len() - 1 + i) * vocab..][..vocab];
        let lp = log_softmax(row);
        assert!(
            (lp[t as usize] - served[i]).abs() <= LOGPROB_TOL,
            "position {i}: served logprob {} of token {t}, recomputed {}",
            served[i],
            lp[t as usize]
        );
        let mut sorted = lp.clone();
        sorted.sort_by(|a, b| b.total_cmp(a));
        let mut top = tops[i].clone();
        top.sort_by(|a, b| b.total_cmp(a));
        for (k, (a, b)) in top.iter().zip(&sorted).enumerate() {
            assert!(
                (a - b).abs() <= LOGPROB_TOL,
                "position {i}: top {k} served {a}, recomputed {b}"
            );
        }
    }
}

#[test]
fn json_schema_outputs_validate_on_every_fixture_gguf() {
    let dir = TempDir::new("agent-json");
    let mut ggufs: Vec<PathBuf> = all_fixture_cases()
        .expect("the fixture manifests")
        .into_iter()
        .map(|c| c.gguf)
        .collect();
    ggufs.dedup();
    assert!(ggufs.len() >= 2, "fixture GGUFs: {ggufs:?}");
    let extra = serve_extra(&kimi_template());
    let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
    for gguf in ggufs {
        let (mut node, addr) = start_serve(&gguf, &extra);
        println!("{}", gguf.display());
        python_checks(&mut node, &addr, &dir, None, &["json_schema"]);
    }
}

#[test]
fn forced_tool_round_trip_through_router_and_expert_nodes() {
    let model = tiny_model();
    let dir = TempDir::new("agent-cluster");
    let secret = dir.write("secret", TEST_SECRET);
    let e1 = start_expert(&model, &secret, "0-191", "e1", "127.0.0.1:0");
    let e2 = start_expert(&model, &secret, "192-383", "e2", "127.0.0.1:0");
    let placement = dir.write(
        "placement.toml",
        &placement_toml(&[
            ("e1", &e1.addr, "0-191", ""),
            ("e2", &e2.addr, "192-383", ""),
        ]),
    );
    let mut args: Vec<String> = [
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
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    args.extend(serve_extra(&kimi_template()));
    let (mut node, addr) = start_http_server(&args);
    python_checks(
        &mut node,
        &addr,
        &dir,
        None,
        &["tools_openai", "tools_anthropic"],
    );
}
