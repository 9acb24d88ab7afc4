//! 1 router + 3 expert processes on 127.0.0.1 against the single process, on every fixture:
//! same routing and greedy continuations, logits within `CLUSTER_LOGIT_TOL`, same bits on a
//! repeated run; per-layer placements and replicas; refused peers; dead nodes.

use std::path::{Path, PathBuf};
use std::time::Duration;

use moe_devdata::npy;
use moe_tests::cluster::{
    placement_toml, start_expert, start_router, Expert, TempDir, TEST_SECRET,
};
use moe_tests::fixtures::{all_fixture_cases, FixtureCase};
use moe_tests::{fixtures_dir, moe_node, moe_node_ok};
use serde_json::Value;

/// Largest |cluster logit - single-process logit| (partial sums are added in another order).
const CLUSTER_LOGIT_TOL: f32 = 1e-5;

/// The fixture cases grouped by GGUF file, in manifest order.
fn fixture_files() -> Vec<(PathBuf, Vec<FixtureCase>)> {
    let mut out: Vec<(PathBuf, Vec<FixtureCase>)> = Vec::new();
    for case in all_fixture_cases().expect("the fixture manifests") {
        match out.last_mut() {
            Some((gguf, cases)) if *gguf == case.gguf => cases.push(case),
            _ => out.push((case.gguf.clone(), vec![case])),
        }
    }
    out
}

fn s(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}

fn logits(
    model: &Path,
    tokens: &[u32],
    dir: &TempDir,
    tag: &str,
    cluster: Option<(&Path, &Path)>,
) -> (Vec<f32>, Value) {
    let out = dir.path().join(format!("{tag}.npy"));
    let routing = dir.path().join(format!("{tag}.json"));
    let toks: Vec<String> = tokens.iter().map(u32::to_string).collect();
    let mut args = vec![
        "logits".into(),
        "--model".into(),
        s(model),
        "--tokens".into(),
        toks.join(","),
        "--out".into(),
        s(&out),
        "--routing".into(),
        s(&routing),
    ];
    if let Some((p, secret)) = cluster {
        args.extend([
            "--placement".into(),
            s(p),
            "--secret-file".into(),
            s(secret),
        ]);
    }
    moe_node_ok(&args);
    (
        npy::read_f32(&out).unwrap().data,
        serde_json::from_str(&std::fs::read_to_string(&routing).unwrap()).unwrap(),
    )
}

fn run_greedy(model: &Path, prompt: &str, cluster: Option<(&Path, &Path)>) -> String {
    let mut args = vec![
        "run".into(),
        "--model".into(),
        s(model),
        "--prompt".into(),
        prompt.into(),
        "-n".into(),
        "16".into(),
        "--ignore-eos".into(),
        "--exact".into(),
    ];
    if let Some((p, secret)) = cluster {
        args.extend([
            "--placement".into(),
            s(p),
            "--secret-file".into(),
            s(secret),
        ]);
    }
    moe_node_ok(&args)
}

/// The contiguous three-way split of 384 experts.
const THREE_WAY: [(&str, &str); 3] = [("e1", "0-127"), ("e2", "128-255"), ("e3", "256-383")];

/// Starts one expert node per `(name, shards)` and writes `p.toml` giving each exactly its
/// shards; returns the nodes and the placement path.
fn start_cluster(
    model: &Path,
    secret: &Path,
    dir: &TempDir,
    specs: &[(&str, &str)],
) -> (Vec<Expert>, PathBuf) {
    let experts: Vec<Expert> = specs
        .iter()
        .map(|(name, shards)| start_expert(model, secret, shards, name, "127.0.0.1:0"))
        .collect();
    let nodes: Vec<(&str, &str, &str, &str)> = specs
        .iter()
        .zip(&experts)
        .map(|((name, shards), e)| (*name, e.addr.as_str(), *shards, ""))
        .collect();
    let placement = dir.write("p.toml", &placement_toml(&nodes));
    (experts, placement)
}

/// Compares a cluster run with the single process on every case of one model.
fn assert_cluster_matches(
    model: &Path,
    cases: &[FixtureCase],
    placement: &Path,
    secret: &Path,
    dir: &TempDir,
) {
    let vocab_of = |n: usize, t: usize| n / t;
    for (ci, case) in cases.iter().enumerate() {
        let what = format!("{} case {ci}", model.display());
        let (single, single_routing) = logits(model, &case.tokens, dir, "single", None);
        let (clustered, cluster_routing) = logits(
            model,
            &case.tokens,
            dir,
            "cluster",
            Some((placement, secret)),
        );
        let (again, _) = logits(model, &case.tokens, dir, "again", Some((placement, secret)));
        assert_eq!(
            clustered.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
            again.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
            "{what}: repeated cluster run differs"
        );
        let vocab = vocab_of(single.len(), case.tokens.len());
        let n = case.limit * vocab;
        let max = single[..n]
            .iter()
            .zip(&clustered[..n])
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        assert!(
            max <= CLUSTER_LOGIT_TOL,
            "{what}: cluster logits differ by {max:e}"
        );
        for (layer, r) in single_routing.as_object().unwrap() {
            for pos in 0..case.limit {
                assert_eq!(
                    r["experts"][pos], cluster_routing[layer]["experts"][pos],
                    "{what}: routing layer {layer} pos {pos}"
                );
            }
        }
        if case.limit == case.tokens.len() {
            assert_eq!(
                run_greedy(model, &case.prompt, None),
                run_greedy(model, &case.prompt, Some((placement, secret))),
                "{what}: greedy"
            );
        }
    }
}

#[test]
fn three_expert_nodes_match_the_single_process_on_every_fixture() {
    let dir = TempDir::new("cluster-eq");
    let secret = dir.write("secret", TEST_SECRET);
    for (model, cases) in fixture_files() {
        let (_experts, placement) = start_cluster(&model, &secret, &dir, &THREE_WAY);
        assert_cluster_matches(&model, &cases, &placement, &secret, &dir);
    }
}

#[test]
fn per_layer_placement_and_replicas_match_the_single_process() {
    let dir = TempDir::new("cluster-layers");
    let secret = dir.write("secret", TEST_SECRET);
    let model = fixtures_dir().join("kimi-k25-tiny/kimi-k25-tiny-Q8_0.gguf");
    let cases = fixture_files()
        .into_iter()
        .find(|(m, _)| *m == model)
        .unwrap()
        .1;
    // Every node serves every expert; the placement decides who owns what per layer, with
    // overlaps (replicas) and a local share computed in the router.
    let experts: Vec<Expert> = ["e1", "e2"]
        .iter()
        .map(|n| start_expert(&model, &secret, "0-383", n, "127.0.0.1:0"))
        .collect();
    let text = placement_toml(&[
        (
            "e1",
            &experts[0].addr,
            "0-200",
            "layers = { \"2\" = \"0-99\" }",
        ),
        (
            "e2",
            &experts[1].addr,
            "150-383",
            "layers = { \"2\" = \"100-383\", \"3\" = \"0-383\" }",
        ),
        ("r", "local", "300-383", ""),
    ]);
    let placement = dir.write("layers.toml", &text);
    assert_cluster_matches(&model, &cases, &placement, &secret, &dir);
}

/// Runs a 2-token generation that must fail; returns its stderr. `--exact` as the expert
/// nodes (else the numeric modes would be the first thing refused).
fn refused_run(model: &Path, placement: &Path, secret: &Path) -> String {
    let out = moe_node(&[
        "run",
        "--exact",
        "--model",
        &s(model),
        "--prompt",
        "hi",
        "-n",
        "2",
        "--placement",
        &s(placement),
        "--secret-file",
        &s(secret),
    ]);
    assert!(!out.status.success(), "the run should have been refused");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn wrong_secret_and_model_mismatch_are_refused_on_both_sides() {
    let dir = TempDir::new("cluster-refuse");
    let secret = dir.write("secret", TEST_SECRET);
    let wrong = dir.write("wrong", "a-different-secret-of-enough-length");
    let q8 = fixtures_dir().join("kimi-k25-tiny/kimi-k25-tiny-Q8_0.gguf");
    let bf16 = fixtures_dir().join("kimi-k25-tiny/kimi-k25-tiny-BF16.gguf");
    let e = start_expert(&q8, &secret, "0-383", "e1", "127.0.0.1:0");
    let placement = dir.write("p.toml", &placement_toml(&[("e1", &e.addr, "0-383", "")]));

    let err = refused_run(&q8, &placement, &wrong);
    assert!(err.contains("authentication failed"), "router side: {err}");
    assert!(
        e.node
            .wait_stderr("did not prove the cluster secret", Duration::from_secs(10)),
        "expert side: {}",
        e.node.stderr()
    );

    let err = refused_run(&bf16, &placement, &secret);
    assert!(err.contains("fingerprint"), "router side: {err}");
    assert!(
        e.node.wait_stderr("fingerprint", Duration::from_secs(10)),
        "expert side: {}",
        e.node.stderr()
    );

    // A placement that gives a node experts it does not serve is refused at connect time.
    let partial = start_expert(&q8, &secret, "0-127", "e2", "127.0.0.1:0");
    let lying = dir.write(
        "lying.toml",
        &placement_toml(&[("e2", &partial.addr, "0-383", "")]),
    );
    let err = refused_run(&q8, &lying, &secret);
    assert!(
        err.contains("does not own what the placement gives it"),
        "{err}"
    );
}

#[test]
fn garbage_and_oversized_frames_drop_only_that_connection() {
    use std::io::Write as _;
    let dir = TempDir::new("cluster-garbage");
    let secret = dir.write("secret", TEST_SECRET);
    let model = fixtures_dir().join("kimi-k25-tiny/kimi-k25-tiny-Q8_0.gguf");
    let e = start_expert(&model, &secret, "0-383", "e1", "127.0.0.1:0");
    let placement = dir.write("p.toml", &placement_toml(&[("e1", &e.addr, "0-383", "")]));
    // An oversized length prefix, then a frame of random bytes.
    let mut c = std::net::TcpStream::connect(&e.addr).unwrap();
    c.write_all(&u32::MAX.to_le_bytes()).unwrap();
    let mut c2 = std::net::TcpStream::connect(&e.addr).unwrap();
    c2.write_all(&64u32.to_le_bytes()).unwrap();
    c2.write_all(&[0xA5; 64]).unwrap();
    assert!(
        e.node
            .wait_stderr("handshake refused", Duration::from_secs(10)),
        "{}",
        e.node.stderr()
    );
    // The node still serves a real router.
    let single = run_greedy(&model, "def fibonacci(n):", None);
    assert_eq!(
        run_greedy(&model, "def fibonacci(n):", Some((&placement, &secret))),
        single
    );
}

/// The kill must land during the generation: if the answer is already there, the test would
/// prove nothing, so it fails and says why.
fn assert_still_generating(r: &moe_tests::cluster::Node) {
    if let Some(line) = r.next_line(Duration::ZERO) {
        panic!("the generation finished before the kill (raise max_tokens): {line}");
    }
}

#[test]
fn killed_expert_without_replica_fails_the_request_and_the_router_recovers() {
    let dir = TempDir::new("cluster-kill");
    let secret = dir.write("secret", TEST_SECRET);
    let model = fixtures_dir().join("kimi-k25-tiny/kimi-k25-tiny-Q8_0.gguf");
    let (mut experts, placement) = start_cluster(&model, &secret, &dir, &THREE_WAY);
    let mut r = start_router(&model, &placement, &secret);
    let short = r#"{"prompt": "def fibonacci(n):", "max_tokens": 16, "ignore_eos": true}"#;
    let good = r.ask(short, Duration::from_secs(30));
    assert!(good["tokens"].as_array().unwrap().len() == 16, "{good}");

    // A long generation (seconds), with e2 killed while it runs.
    r.send_line(r#"{"prompt": "def fibonacci(n):", "max_tokens": 3000, "ignore_eos": true}"#);
    std::thread::sleep(Duration::from_millis(300));
    assert_still_generating(&r);
    let e2_addr = experts[1].addr.clone();
    experts[1].node.kill();
    let answer = r
        .next_line(Duration::from_secs(15))
        .expect("the request fails within the timeout");
    let answer: Value = serde_json::from_str(&answer).unwrap();
    let err = answer["error"]
        .as_str()
        .unwrap_or_else(|| panic!("expected an error, got {answer}"));
    assert!(err.contains("e2"), "error names the node: {err}");
    assert!(r.is_running(), "router stays up");

    // Restart e2 on the same port; the router reconnects and serves again.
    experts[1] = start_expert(&model, &secret, "128-255", "e2", &e2_addr);
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let a = r.ask(short, Duration::from_secs(30));
        if a.get("tokens").is_some() {
            assert_eq!(a["tokens"], good["tokens"]);
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "router did not recover: {a}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn killed_expert_with_replica_completes_with_the_same_tokens() {
    let dir = TempDir::new("cluster-replica");
    let secret = dir.write("secret", TEST_SECRET);
    let model = fixtures_dir().join("kimi-k25-tiny/kimi-k25-tiny-Q8_0.gguf");
    let (mut experts, placement) = start_cluster(
        &model,
        &secret,
        &dir,
        &[("e1", "0-191"), ("e2", "192-383"), ("e3", "192-383")],
    );
    let mut r = start_router(&model, &placement, &secret);
    let long = r#"{"prompt": "def fibonacci(n):", "max_tokens": 1500, "ignore_eos": true}"#;
    let reference = r.ask(long, Duration::from_secs(120));
    assert!(reference.get("tokens").is_some(), "{reference}");
    r.send_line(long);
    std::thread::sleep(Duration::from_millis(300));
    assert_still_generating(&r);
    experts[1].node.kill();
    let answer: Value =
        serde_json::from_str(&r.next_line(Duration::from_secs(120)).expect("an answer")).unwrap();
    assert_eq!(answer["tokens"], reference["tokens"], "{answer}");
}

/// `--wire-dtype bf16` rounds hidden states and partial sums to bf16 on the wire: the logits
/// move (so the option is in force) but the predictions stay: argmax agrees on at least
/// `BF16_ARGMAX_AGREEMENT_MIN` of all positions of all cases.
#[test]
fn bf16_and_q8_wire_keep_the_predictions() {
    // Exact-mode logits through three nodes with hidden states on the wire in bf16, and in
    // q8 (int8 blocks of 32, partial sums back in bf16), against the single process.
    const ARGMAX_AGREEMENT_MIN: f64 = 0.9;
    let dir = TempDir::new("cluster-wire-dtypes");
    let secret = dir.write("secret", TEST_SECRET);
    let model = fixtures_dir().join("kimi-k25-tiny/kimi-k25-tiny-Q8_0.gguf");
    let cases = fixture_files()
        .into_iter()
        .find(|(m, _)| *m == model)
        .unwrap()
        .1;
    let (_experts, placement) = start_cluster(&model, &secret, &dir, &THREE_WAY);
    let argmax = |v: &[f32]| {
        v.iter()
            .enumerate()
            .fold(0, |m, (i, &x)| if x > v[m] { i } else { m })
    };
    let max_diff =
        |a: &[f32], b: &[f32]| a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs()));
    // Per dtype: (agreeing rows, rows, max |diff| against the single process).
    let mut stats = [(0usize, 0usize, 0f32); 2];
    let mut q8_vs_bf16 = 0f32;
    for case in &cases {
        let (single, _) = logits(&model, &case.tokens, &dir, "single", None);
        let vocab = single.len() / case.tokens.len();
        let toks: Vec<String> = case.tokens.iter().map(u32::to_string).collect();
        let mut outs = Vec::new();
        for (dtype, stat) in ["bf16", "q8"].into_iter().zip(stats.iter_mut()) {
            let out = dir.path().join(format!("{dtype}.npy"));
            moe_node_ok(&[
                "logits",
                "--model",
                &s(&model),
                "--tokens",
                &toks.join(","),
                "--out",
                &s(&out),
                "--placement",
                &s(&placement),
                "--secret-file",
                &s(&secret),
                "--wire-dtype",
                dtype,
            ]);
            let got = npy::read_f32(&out).unwrap().data;
            for (a, b) in single.chunks_exact(vocab).zip(got.chunks_exact(vocab)) {
                stat.0 += usize::from(argmax(a) == argmax(b));
                stat.1 += 1;
                stat.2 = stat.2.max(max_diff(a, b));
            }
            outs.push(got);
        }
        q8_vs_bf16 = q8_vs_bf16.max(max_diff(&outs[0], &outs[1]));
    }
    for (dtype, (agree, total, diff)) in ["bf16", "q8"].into_iter().zip(stats) {
        let rate = agree as f64 / total as f64;
        eprintln!("{dtype} on the wire: argmax agreement {rate:.3}, max |diff| {diff}");
        assert!(
            diff > 0.0,
            "{dtype} on the wire changed nothing: is the option ignored?"
        );
        assert!(
            rate >= ARGMAX_AGREEMENT_MIN,
            "{dtype}: argmax agreement {rate:.3} (max |diff| {diff})"
        );
    }
    assert!(
        q8_vs_bf16 > 0.0,
        "q8 gave bf16's logits: is it sent as bf16?"
    );
}
