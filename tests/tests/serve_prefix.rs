//! Prefix reuse in `moe-node serve`: a request that repeats an earlier prompt and adds to it
//! reuses the earlier prompt's KV (reported as `usage.prompt_tokens_details.cached_tokens`)
//! and gives exactly the tokens a cold run gives (`cache_prompt: false`), sampled with a
//! seed, in the exact and in the fast numeric mode. The fixture model is the Q8_0 one, so
//! that fast mode really runs the integer kernels (BF16 weights compute exactly in both).

use std::time::Duration;

use moe_tests::cluster::start_serve;
use moe_tests::fixtures_dir;
use moe_tests::http::post_json;
use serde_json::{json, Value};

/// How long one completion may take on a loaded machine.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(120);

fn complete(addr: &str, body: &Value) -> Value {
    post_json(addr, "/v1/completions", body, REQUEST_TIMEOUT)
}

fn cached(answer: &Value) -> u64 {
    answer["usage"]["prompt_tokens_details"]["cached_tokens"]
        .as_u64()
        .unwrap_or_else(|| panic!("no cached_tokens in {answer}"))
}

fn token_ids(answer: &Value) -> Value {
    answer["choices"][0]["token_ids"].clone()
}

fn check_reuse_is_exact(mode: &[&str]) {
    let model = fixtures_dir().join("kimi-k25-tiny/kimi-k25-tiny-Q8_0.gguf");
    let (_server, addr) = start_serve(&model, &[mode, &["--cache-tokens", "4096"]].concat());
    let history = "The mixture of experts routes each token to eight of its experts. ".repeat(6);
    let request = |prompt: &str, cache: bool| {
        json!({"prompt": prompt, "max_tokens": 12, "temperature": 0.8, "seed": 11,
               "ignore_eos": true, "cache_prompt": cache})
    };
    let first = complete(&addr, &request(&history, true));
    assert_eq!(
        cached(&first),
        0,
        "nothing was cached before the first request"
    );
    let turn = format!("{history}And the next message adds a few words.");
    let warm = complete(&addr, &request(&turn, true));
    let prompt_tokens = warm["usage"]["prompt_tokens"].as_u64().unwrap();
    assert!(
        cached(&warm) >= prompt_tokens / 2,
        "{mode:?}: only {} of {prompt_tokens} prompt tokens reused",
        cached(&warm)
    );
    let cold = complete(&addr, &request(&turn, false));
    assert_eq!(cached(&cold), 0, "cache_prompt: false computes everything");
    assert_eq!(
        token_ids(&warm),
        token_ids(&cold),
        "{mode:?}: prefix reuse changed the tokens"
    );
}

#[test]
fn prefix_reuse_gives_the_cold_tokens_in_exact_mode() {
    check_reuse_is_exact(&["--exact"]);
}

#[test]
fn prefix_reuse_gives_the_cold_tokens_in_fast_mode() {
    check_reuse_is_exact(&["--fast"]);
}
