//! Speculative decoding (`--speculative ngram`) through the real `moe-node run`: on every
//! fixture GGUF the output equals plain decoding's, greedy and seeded at a temperature, and
//! drafts were really verified, some accepted (the summary line reports them: random-weight
//! models rarely repeat themselves, so acceptance is low here; what counts is that both the
//! accepting and the rejecting path ran and changed nothing).

use moe_tests::fixtures::all_fixture_cases;
use moe_tests::moe_node;

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
