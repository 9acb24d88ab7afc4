//! A model with NaN weights (or an expert node sending NaN partial sums) fails the requests
//! that reach the NaN with an error naming non-finite values, and nothing else: `run` and
//! `logits` exit 1 (not 101), `serve` answers 500 with an OpenAI error object and goes on
//! serving (its engine thread does not die into a 503-forever server), and a router names
//! the expert node whose partial sums are not finite.
//!
//! The models are copies of the tiny BF16 reference model with NaN bit patterns written over
//! (parts of) one tensor; a GGUF's fingerprint covers only its header, so an expert node
//! running such a copy still joins a router running the clean file.

use std::io::{Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use moe_kernels::GgmlType;
use moe_model::gguf::GgufFile;
use moe_tests::cluster::{
    placement_toml, start_expert, start_router, start_serve, Node, TempDir, TEST_SECRET,
};
use moe_tests::http::{get, post};
use moe_tests::{fixtures_dir, moe_node};
use serde_json::{json, Value};

/// Longest wait for one HTTP answer or router answer.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(60);
/// A token id the embedding-row model poisons.
const NAN_TOKEN: u32 = 500;

fn tiny_model() -> PathBuf {
    fixtures_dir().join("kimi-k25-tiny/kimi-k25-tiny-BF16.gguf")
}

fn s(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}

/// One element's NaN bit pattern, little-endian.
fn nan_bytes(ty: GgmlType) -> Vec<u8> {
    match ty {
        GgmlType::F32 => f32::NAN.to_le_bytes().to_vec(),
        GgmlType::F16 => 0x7E00u16.to_le_bytes().to_vec(),
        GgmlType::BF16 => 0x7FC0u16.to_le_bytes().to_vec(),
        other => panic!("no NaN pattern for {other:?} in this test"),
    }
}

/// A copy of the tiny model at `dir/file` with NaN over tensor `name`: the rows (`ne[0]`
/// elements each) in `rows`, or all of it when `rows` is None.
fn nan_model(dir: &TempDir, file: &str, name: &str, rows: Option<&[usize]>) -> PathBuf {
    let path = dir.path().join(file);
    std::fs::copy(tiny_model(), &path).expect("copy the tiny model");
    let (offset, ty, row_elems, n_rows) = {
        let g = GgufFile::open(&path).expect("open the copy");
        let info = g
            .tensor_info(name)
            .unwrap_or_else(|| panic!("no tensor {name}"));
        let n: u64 = info.ne.iter().product();
        (
            info.offset as u64,
            info.ty,
            info.ne[0] as usize,
            (n / info.ne[0]) as usize,
        )
    };
    let nan = nan_bytes(ty);
    let all: Vec<usize> = (0..n_rows).collect();
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
        .unwrap();
    let row_bytes = nan.repeat(row_elems);
    for &r in rows.unwrap_or(&all) {
        assert!(r < n_rows, "row {r} of {name} ({n_rows} rows)");
        f.seek(SeekFrom::Start(offset + (r * row_elems * nan.len()) as u64))
            .unwrap();
        f.write_all(&row_bytes).unwrap();
    }
    // The copy is still a valid model.
    drop(f);
    assert!(moe_model::model::Model::open(&path).is_ok());
    path
}

/// Runs `moe-node args` (failing the test if it panicked): exit code and stderr.
fn run(args: &[String]) -> (Option<i32>, String) {
    let out = moe_node(args);
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn args(a: &[&str]) -> Vec<String> {
    a.iter().map(|x| x.to_string()).collect()
}

#[test]
fn run_and_logits_exit_1_naming_non_finite_values() {
    let dir = TempDir::new("nan-run");
    // NaN in every third row of the output head: a third of the logits are NaN. Sampling at
    // a temperature used to sort them and panic (exit 101).
    let every_third: Vec<usize> = (0..1024).step_by(3).collect();
    let head = nan_model(&dir, "head.gguf", "output.weight", Some(&every_third));
    for extra in [&["--temp", "0.8", "--seed", "3"][..], &[][..]] {
        let mut a = args(&["run", "--model", &s(&head), "--prompt", "Hello", "-n", "4"]);
        a.extend(args(extra));
        let (code, stderr) = run(&a);
        assert_eq!(code, Some(1), "run {extra:?}: {stderr}");
        assert!(
            stderr.contains("non-finite values") && stderr.contains("the output logits"),
            "run {extra:?}: {stderr}"
        );
    }
    // NaN in an attention weight: the first layer's attention output names itself.
    let attn = nan_model(&dir, "attn.gguf", "blk.0.attn_output.weight", None);
    let (code, stderr) = run(&args(&[
        "run",
        "--model",
        &s(&attn),
        "--prompt",
        "Hello",
        "-n",
        "4",
    ]));
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains("non-finite values (NaN) in the attention output of layer 0"),
        "{stderr}"
    );
    let out = dir.path().join("logits.npy");
    let (code, stderr) = run(&args(&[
        "logits",
        "--model",
        &s(&attn),
        "--tokens",
        "1022,447,283",
        "--out",
        &s(&out),
    ]));
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("non-finite values"), "{stderr}");
    assert!(!out.exists(), "logits of a NaN model were written");
}

/// A served `moe-node` and its HTTP address.
struct Server {
    node: Node,
    addr: String,
}

fn serve(model: &Path) -> Server {
    let (node, addr) = start_serve(model, &["--ctx-size", "256"]);
    Server { node, addr }
}

fn complete(server: &Server, request: Value) -> (u16, String) {
    post(&server.addr, "/v1/completions", &request, ANSWER_TIMEOUT).expect("the answer")
}

/// A 500 whose OpenAI error object says non-finite values, in `what`.
fn assert_non_finite_500(status: u16, body: &str, what: &str) {
    assert_eq!(status, 500, "{body}");
    let v: Value = serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body}"));
    let err = &v["error"];
    assert_eq!(err["code"], "non_finite_values", "{body}");
    assert_eq!(err["type"], "server_error", "{body}");
    let msg = err["message"].as_str().unwrap_or_default();
    assert!(
        msg.contains("non-finite values") && msg.contains(what),
        "{body}"
    );
}

fn assert_alive(server: &mut Server) {
    let (status, body) = get(&server.addr, "/health", ANSWER_TIMEOUT).expect("the answer");
    assert_eq!(status, 200, "/health after a NaN request: {body}");
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

#[test]
fn serve_answers_500_for_nan_logits_at_temperature_and_keeps_serving() {
    let dir = TempDir::new("nan-serve-head");
    let every_third: Vec<usize> = (0..1024).step_by(3).collect();
    let head = nan_model(&dir, "head.gguf", "output.weight", Some(&every_third));
    let mut server = serve(&head);
    let request = json!({"prompt": "Hello", "max_tokens": 4, "temperature": 0.8, "seed": 1});
    for _ in 0..2 {
        // Every prompt reaches the head: every request fails, none with 503.
        let (status, body) = complete(&server, request.clone());
        assert_non_finite_500(status, &body, "the output logits");
        assert_alive(&mut server);
    }
    // Streamed: the error object arrives as an event.
    let mut streamed = request.clone();
    streamed["stream"] = json!(true);
    let (status, body) = complete(&server, streamed);
    assert_eq!(status, 200, "{body}");
    assert!(
        body.contains("non_finite_values") && body.contains("the output logits"),
        "{body}"
    );
    assert_alive(&mut server);
}

#[test]
fn serve_fails_only_the_requests_that_reach_a_nan_embedding() {
    let dir = TempDir::new("nan-serve-embd");
    let embd = nan_model(
        &dir,
        "embd.gguf",
        "token_embd.weight",
        Some(&[NAN_TOKEN as usize]),
    );
    let mut server = serve(&embd);
    let bad = json!({"prompt": [1022, 447, NAN_TOKEN, 283], "max_tokens": 2, "temperature": 0});
    // One output token: no forward pass runs on what it samples.
    let good = json!({"prompt": [1022, 447, 283], "max_tokens": 1, "temperature": 0});
    let (status, body) = complete(&server, bad.clone());
    assert_non_finite_500(status, &body, "the token embeddings");
    assert_alive(&mut server);
    let (status, body) = complete(&server, good);
    assert_eq!(status, 200, "a prompt without the NaN token: {body}");
    let (status, body) = complete(&server, bad);
    assert_non_finite_500(status, &body, "the token embeddings");
    assert_alive(&mut server);
}

#[test]
fn router_names_the_expert_node_whose_partial_sums_are_not_finite() {
    let dir = TempDir::new("nan-cluster");
    let secret = dir.write("secret", TEST_SECRET);
    // The expert node computes from a copy whose layer-2 down projections are NaN.
    let nan_experts = nan_model(&dir, "experts.gguf", "blk.2.ffn_down_exps.weight", None);
    let expert = start_expert(&nan_experts, &secret, "0-383", "e1", "127.0.0.1:0");
    let placement = dir.write(
        "p.toml",
        &placement_toml(&[("e1", &expert.addr, "0-383", "")]),
    );
    let mut router = start_router(&tiny_model(), &placement, &secret);
    for _ in 0..2 {
        let a = router.ask(r#"{"prompt": "Hello", "max_tokens": 2}"#, ANSWER_TIMEOUT);
        let err = a["error"].as_str().unwrap_or_else(|| panic!("{a}"));
        assert!(
            err.contains("non-finite values")
                && err.contains("partial sums from expert node e1")
                && err.contains("MoE layer 2"),
            "{err}"
        );
        assert!(router.is_running(), "{}", router.stderr());
    }
    assert!(!router.stderr().contains("panicked"), "{}", router.stderr());
}
