//! Speculative decoding (`--speculative ngram`) through the real `moe-node run`: on every
//! fixture GGUF the output equals plain decoding's, greedy and seeded at a temperature, and
//! drafts were really verified, some accepted (the summary line reports them: random-weight
//! models rarely repeat themselves, so acceptance is low here; what counts is that both the
//! accepting and the rejecting path ran and changed nothing).

use std::time::Duration;

use moe_tests::cluster::start_serve;
use moe_tests::fixtures::all_fixture_cases;
use moe_tests::http::post_json;
use moe_tests::{fixtures_dir, moe_node};
use serde_json::json;

/// A prompt that repeats itself, so prompt lookup has something to propose.
const COPY_HEAVY: &str =
    "def add(a, b):\n    return a + b\n\ndef add(a, b):\n    return a + b\n\ndef add(a, b):\n";

fn run(model: &str, extra: &[&str]) -> (String, String) {
    let mut args = vec![
        "run",
        "--model",
        model,
        "--prompt",
        COPY_HEAVY,
        "-n",
        "160",
        "--ignore-eos",
    ];
    args.extend_from_slice(extra);
    let out = moe_node(&args);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn speculative_output_equals_plain_decoding_on_every_fixture() {
    let mut models: Vec<String> = all_fixture_cases()
        .expect("the fixture manifests")
        .into_iter()
        .map(|c| c.gguf.to_string_lossy().into_owned())
        .collect();
    models.dedup();
    assert!(models.len() >= 4, "fixture models: {models:?}");
    let mut accepted = 0;
    for model in &models {
        for sampling in [&[][..], &["--temp", "0.8", "--seed", "7"][..]] {
            let (plain, _) = run(model, sampling);
            let spec_args = [sampling, &["--speculative", "ngram", "--draft-max", "6"]].concat();
            let (spec, summary) = run(model, &spec_args);
            assert_eq!(
                spec, plain,
                "{model} {sampling:?}: speculation changed the output"
            );
            let counts = summary
                .split("draft: ")
                .nth(1)
                .and_then(|r| r.split(' ').next())
                .unwrap_or_else(|| panic!("{model} {sampling:?}: nothing was drafted: {summary}"));
            accepted += counts
                .split('/')
                .next()
                .and_then(|a| a.parse::<usize>().ok())
                .unwrap_or_else(|| panic!("unreadable summary {summary}"));
        }
    }
    assert!(accepted > 0, "no draft token was ever accepted");
}

/// `serve --speculative ngram` gives every concurrent sequence the tokens plain serving
/// gives, greedy and seeded.
#[test]
fn speculative_serving_equals_plain_serving() {
    let model = fixtures_dir().join("kimi-k25-tiny/kimi-k25-tiny-Q8_0.gguf");
    let start = |extra: &[&str]| start_serve(&model, extra);
    let (_plain, plain_addr) = start(&[]);
    let (_spec, spec_addr) = start(&[
        "--speculative",
        "ngram",
        "--draft-max",
        "5",
        "--metrics-addr",
        "127.0.0.1:0",
    ]);
    let requests = [
        json!({"prompt": COPY_HEAVY, "max_tokens": 120, "temperature": 0, "ignore_eos": true}),
        json!({"prompt": "hello hello hello", "max_tokens": 120, "temperature": 0.8, "seed": 5, "ignore_eos": true}),
    ];
    let answers = |addr: &str| -> Vec<serde_json::Value> {
        // Both requests at once, so speculation runs inside a batch of two sequences.
        std::thread::scope(|sc| {
            let handles: Vec<_> = requests
                .iter()
                .map(|r| {
                    sc.spawn(move || {
                        post_json(addr, "/v1/completions", r, Duration::from_secs(300))["choices"]
                            [0]["token_ids"]
                            .clone()
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        })
    };
    assert_eq!(answers(&spec_addr), answers(&plain_addr));
    // Drafts were really verified (and some accepted) on the speculating server.
    let (status, metrics) =
        moe_tests::http::get(&spec_addr, "/metrics", Duration::from_secs(10)).unwrap();
    assert_eq!(status, 200);
    let value = |name: &str| -> f64 {
        metrics
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {name} in /metrics:\n{metrics}"))
    };
    assert!(value("moe_draft_tokens_total") > 0.0);
    assert!(value("moe_draft_accepted_tokens_total") > 0.0);
}
