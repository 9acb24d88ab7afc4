//! The real `moe-node` binary against the reference fixtures, through its command line only:
//! for every GGUF in `../shared/fixtures` and every case of its manifest,
//! - `tokenize` prints the case's `tokens` for its `prompt`;
//! - `logits --out --routing --hidden` matches the reference: argmax at every position,
//!   max |logit diff| <= [`LOGIT_ABS_TOL`], the same 8 experts at every position of every MoE
//!   layer, hidden states within [`HIDDEN_REL_TOL`];
//! - `run -n 16 --ignore-eos` (greedy) prints the prompt followed by the text of
//!   `greedy_continuation`.
//!
//! Positions from a manifest's `near_ties` on are exempt exactly as in
//! `runtime/model/tests/reference_fixtures.rs` (and an exempted case skips the continuation).
//! Bad inputs (missing file, truncated GGUF) must exit non-zero with a message naming the
//! problem and no panic.

use std::path::Path;

use moe_devdata::npy;
use moe_model::gguf::GgufFile;
use moe_model::tokenizer::Tokenizer;
use moe_tests::fixtures::{fixture_cases, ids};
use moe_tests::{fixtures_dir, moe_node, moe_node_ok};
use serde_json::Value;

/// Largest accepted |logit - reference| (the bound).
const LOGIT_ABS_TOL: f32 = 2e-3;
/// Largest accepted |hidden - reference|, relative to the largest |reference| of the layer.
const HIDDEN_REL_TOL: f32 = 1e-4;
/// Tokens `run` generates, the length of every `greedy_continuation`.
const CONTINUATION_TOKENS: usize = 16;

/// A path as a command-line argument (fixture and scratch paths are UTF-8).
fn path_str(p: &Path) -> &str {
    p.to_str().expect("a UTF-8 path")
}

fn argmax(v: &[f32]) -> usize {
    v.iter()
        .enumerate()
        .fold(
            (0, f32::NEG_INFINITY),
            |b, (i, &x)| if x > b.1 { (i, x) } else { b },
        )
        .0
}

/// One case of one GGUF file, as the manifest describes it.
struct Case<'a> {
    what: String,
    gguf: &'a Path,
    ref_dir: &'a Path,
    case: &'a Value,
    tokens: Vec<u32>,
    /// Positions before the first near tie (all of them when there is none).
    limit: usize,
}

/// Runs every check on every case of every GGUF in fixture folder `dir`; returns a report.
fn check_fixture_dir(dir: &str) -> Vec<String> {
    let scratch = tempfile::tempdir().unwrap();
    let mut report = Vec::new();
    let mut tokenizer: Option<(std::path::PathBuf, Tokenizer)> = None;
    for (ci, fc) in fixture_cases(dir)
        .expect("the fixture manifest")
        .into_iter()
        .enumerate()
    {
        if tokenizer
            .as_ref()
            .map(|(p, _)| p != &fc.gguf)
            .unwrap_or(true)
        {
            let t = Tokenizer::from_gguf(&GgufFile::open(&fc.gguf).unwrap()).unwrap();
            tokenizer = Some((fc.gguf.clone(), t));
        }
        let tokenizer = &tokenizer.as_ref().unwrap().1;
        let c = Case {
            what: fc.what.clone(),
            gguf: &fc.gguf,
            ref_dir: &fc.ref_dir,
            case: &fc.json,
            tokens: fc.tokens.clone(),
            limit: fc.limit,
        };
        check_tokenize(&c);
        let max_diff = check_logits(&c, &scratch.path().join(format!("case-{ci}")));
        let continuation = check_run(&c, tokenizer);
        report.push(format!(
            "{}: tokenize ok, {} of {} positions checked, max|dlogit| {max_diff:.2e}, continuation {continuation}",
            c.what,
            c.limit,
            c.tokens.len()
        ));
    }
    report
}

fn check_tokenize(c: &Case<'_>) {
    let prompt = c.case["prompt"].as_str().unwrap();
    let out = moe_node_ok(&["tokenize", "-m", path_str(c.gguf), "--text", prompt]);
    let got: Vec<u32> = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(got, c.tokens, "{}: tokenize {prompt:?}", c.what);
}

/// Checks `logits` (with routing and hidden states); returns the max |logit diff|.
fn check_logits(c: &Case<'_>, stem: &Path) -> f32 {
    let (out, routing, hidden) = (
        stem.with_extension("logits.npy"),
        stem.with_extension("routing.json"),
        stem.with_extension("hidden.npy"),
    );
    let tokens = c
        .tokens
        .iter()
        .map(u32::to_string)
        .collect::<Vec<_>>()
        .join(",");
    moe_node_ok(&[
        "logits",
        "-m",
        path_str(c.gguf),
        "--tokens",
        &tokens,
        "--out",
        path_str(&out),
        "--routing",
        path_str(&routing),
        "--hidden",
        path_str(&hidden),
    ]);
    let t = c.tokens.len();

    // Routing: every MoE layer of the reference, every position before a near tie.
    let got: Value = serde_json::from_str(&std::fs::read_to_string(&routing).unwrap()).unwrap();
    let want = c.case["routing"].as_object().unwrap();
    assert_eq!(
        got.as_object().unwrap().keys().collect::<Vec<_>>(),
        want.keys().collect::<Vec<_>>(),
        "{}: MoE layers in --routing",
        c.what
    );
    for (layer, reference) in want {
        for pos in 0..c.limit {
            assert_eq!(
                ids(&got[layer]["experts"][pos], "routing").unwrap(),
                ids(&reference["experts"][pos], "reference routing").unwrap(),
                "{}: layer {layer} position {pos} routing",
                c.what
            );
        }
    }

    // Logits: argmax everywhere, then the largest difference.
    let logits = npy::read_f32(&out).unwrap();
    let reference = npy::read_f32(&c.ref_dir.join(c.case["logits"].as_str().unwrap())).unwrap();
    assert_eq!(logits.shape, reference.shape, "{}: logits shape", c.what);
    assert_eq!(logits.shape[0], t, "{}: logits rows", c.what);
    let vocab = logits.shape[1];
    let mut max_diff = 0f32;
    for pos in 0..c.limit {
        let got = &logits.data[pos * vocab..(pos + 1) * vocab];
        let want = &reference.data[pos * vocab..(pos + 1) * vocab];
        assert_eq!(
            argmax(got),
            argmax(want),
            "{}: argmax at position {pos}",
            c.what
        );
        for (a, b) in got.iter().zip(want) {
            max_diff = max_diff.max((a - b).abs());
        }
    }
    assert!(
        max_diff <= LOGIT_ABS_TOL,
        "{}: max |logit diff| {max_diff:e} > {LOGIT_ABS_TOL:e}",
        c.what
    );

    // Hidden states [n_layers + 1, T, D], each layer relative to its own scale.
    let hidden = npy::read_f32(&hidden).unwrap();
    let reference =
        npy::read_f32(&c.ref_dir.join(c.case["hidden_states"].as_str().unwrap())).unwrap();
    assert_eq!(hidden.shape, reference.shape, "{}: hidden shape", c.what);
    let layer_len = t * hidden.shape[2];
    let checked = c.limit * hidden.shape[2];
    for (i, (got, want)) in hidden
        .data
        .chunks(layer_len)
        .zip(reference.data.chunks(layer_len))
        .enumerate()
    {
        let scale = want[..checked]
            .iter()
            .fold(0f32, |m, v| m.max(v.abs()))
            .max(1e-6);
        for (a, b) in got[..checked].iter().zip(&want[..checked]) {
            assert!(
                (a - b).abs() / scale <= HIDDEN_REL_TOL,
                "{}: hidden state {i} differs: {a} vs {b} (scale {scale})",
                c.what
            );
        }
    }
    max_diff
}

/// Checks `run`'s greedy output; returns "checked" or why it was skipped.
fn check_run(c: &Case<'_>, tokenizer: &Tokenizer) -> &'static str {
    if c.limit < c.tokens.len() {
        return "exempt (near tie)";
    }
    let prompt = c.case["prompt"].as_str().unwrap();
    let continuation = ids(&c.case["greedy_continuation"], "greedy_continuation").unwrap();
    assert_eq!(continuation.len(), CONTINUATION_TOKENS);
    let n = CONTINUATION_TOKENS.to_string();
    let out = moe_node_ok(&[
        "run",
        "-m",
        path_str(c.gguf),
        "-p",
        prompt,
        "-n",
        &n,
        "--ignore-eos",
        "--exact",
    ]);
    // `run` streams the prompt, then the generated text, then a newline.
    let want = format!("{prompt}{}\n", tokenizer.decode_lossy(&continuation));
    assert_eq!(out, want, "{}: run output", c.what);
    "checked"
}

#[test]
fn kimi_k25_tiny_cli_matches_reference() {
    for line in check_fixture_dir("kimi-k25-tiny") {
        println!("{line}");
    }
}

#[test]
fn kimi_k25_kq_cli_matches_reference() {
    for line in check_fixture_dir("kimi-k25-kq") {
        println!("{line}");
    }
}

// --- Bad inputs -----------------------------------------------------------------------------

/// Runs `moe-node args`, expecting failure with every `needle` in stderr (and no panic).
fn expect_failure(args: &[&str], needles: &[&str]) -> String {
    let out = moe_node(args);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "moe-node {args:?} succeeded");
    for n in needles {
        assert!(
            stderr.contains(n),
            "moe-node {args:?}: stderr {stderr:?} does not mention {n:?}"
        );
    }
    stderr
}

#[test]
fn nonexistent_model_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("no-such-model.gguf");
    let (m, out) = (path_str(&missing), dir.path().join("x.npy"));
    for args in [
        vec!["run", "-m", m, "-p", "hi"],
        vec![
            "logits",
            "-m",
            m,
            "--tokens",
            "1,2",
            "--out",
            path_str(&out),
        ],
        vec!["tokenize", "-m", m, "--text", "hi"],
    ] {
        expect_failure(&args, &[m, "No such file"]);
    }
}

#[test]
fn truncated_model_is_refused_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let source = fixtures_dir().join("kimi-k25-tiny/kimi-k25-tiny-Q8_0.gguf");
    let bytes = std::fs::read(&source).unwrap();
    // Cut inside the header and inside the tensor data.
    for (cut, reason) in [
        (20_000, "truncated"),
        (bytes.len() / 2, "extends past the end of the file"),
    ] {
        let path = dir.path().join(format!("cut-{cut}.gguf"));
        std::fs::write(&path, &bytes[..cut]).unwrap();
        let p = path_str(&path);
        for args in [
            vec!["run", "-m", p, "-p", "hi"],
            vec!["tokenize", "-m", p, "--text", "hi"],
        ] {
            expect_failure(&args, &[p, "invalid GGUF", reason]);
        }
    }
}
