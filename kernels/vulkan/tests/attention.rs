//! MLA attention on Vulkan (`src/attention.rs`, `VulkanAttention`): a model whose attention
//! runs on device 0 against the same model on the CPU, through the whole forward pass (the
//! experts on the CPU in both, so the difference is the attention alone). What this proves,
//! on the fixture files whose attention types the shaders read (tiny Q8_0 and BF16, kq
//! Q4_K_M: Q8_0, BF16, Q4_K and Q6_K attention matrices):
//!
//! - exact mode: a 13-token prompt, then 3 decode steps, then a rollback to position 10 and
//!   4 other tokens from there, give logits within `EXACT_ABS_TOL` of the CPU's at every
//!   step, and the same top token. The rollback proves the device copy of the cache drops
//!   truncated rows (if it kept its rows 10..16, the new tokens would attend to the old
//!   ones and the logits would move far past the tolerance);
//! - the prompt in one call and in chunks of 5, 1 and 7 tokens give the same bits on the
//!   device (a row's result does not depend on the call's other rows: what makes a prompt's
//!   bits independent of how a server chunks it);
//! - fast mode with attention on the device (integer-dot projections) stays as close to exact
//!   mode as fast mode with attention on the CPU (mean KL, `FAST_KL_RATIO_MAX`; top-1
//!   agreement reported beside it).

mod common;

use std::sync::Arc;

use moe_kernels::NumericMode;
use moe_model::forward::{KvCache, LocalExperts, NoObserver, SeqInput, TokenKind};
use moe_model::model::Model;
use moe_vulkan::VulkanAttention;

/// Largest accepted |device - CPU| of one logit in exact mode (the attention's summation
/// order differs from the CPU's; the fixtures' own tolerance against the reference is 1e-4).
const EXACT_ABS_TOL: f32 = 1e-4;
/// Fast mode with attention on the device may drift from exact mode (mean KL of the
/// steps' logits) at most this many times as far as fast mode with attention on the CPU, plus
/// `FAST_KL_FLOOR` (the device's projections quantize per 32 values, finer than the CPU's
/// 256, and its attention proper is f32, so it should not drift further at all).
const FAST_KL_RATIO_MAX: f64 = 1.5;
const FAST_KL_FLOOR: f64 = 1e-4;
/// The prompt's length, and where the rollback goes.
const PROMPT: usize = 13;
const ROLLBACK_TO: usize = 10;

fn fixtures() -> Vec<std::path::PathBuf> {
    let dir = moe_devdata::fixtures::fixtures_dir();
    vec![
        dir.join("kimi-k25-tiny/kimi-k25-tiny-Q8_0.gguf"),
        dir.join("kimi-k25-tiny/kimi-k25-tiny-BF16.gguf"),
        common::kq_q4_k_m(),
    ]
}

fn tokens(n: usize, seed: usize, vocab: usize) -> Vec<u32> {
    (0..n)
        .map(|i| ((i * 37 + seed * 101 + 5) % vocab) as u32)
        .collect()
}

/// Feeds `calls` (token slices, each a prompt chunk or decode step of a prompt of `PROMPT`
/// tokens) through `model` on one cache, rolling back to `ROLLBACK_TO` before the calls
/// after `rollback_at`; returns each call's last logits row.
fn run(model: &Model, calls: &[Vec<u32>], rollback_at: Option<usize>) -> Vec<Vec<f32>> {
    let mut cache = KvCache::for_model(model, 256);
    let mut experts = LocalExperts::default();
    let mut out = Vec::new();
    for (k, toks) in calls.iter().enumerate() {
        if rollback_at == Some(k) {
            cache.truncate(ROLLBACK_TO);
        }
        let kind = if cache.len() + toks.len() <= PROMPT {
            TokenKind::Prompt { len: PROMPT }
        } else {
            TokenKind::Generated
        };
        let mut batch = [SeqInput {
            cache: &mut cache,
            tokens: toks,
            all_logits: false,
            kind,
        }];
        let logits = model
            .forward(&mut batch, &mut experts, &mut NoObserver)
            .unwrap();
        out.push(logits.into_iter().next().unwrap());
    }
    out
}

/// Mean KL(exact || fast) over the steps' logits, and the fraction of steps with the same
/// top token.
fn faithfulness(exact: &[Vec<f32>], fast: &[Vec<f32>]) -> (f64, f64) {
    let log_softmax = |v: &[f32]| -> Vec<f64> {
        let m = v.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
        let lse = v.iter().map(|&x| (x as f64 - m).exp()).sum::<f64>().ln() + m;
        v.iter().map(|&x| x as f64 - lse).collect()
    };
    let mut kl = 0.0;
    let mut same = 0;
    for (e, f) in exact.iter().zip(fast) {
        let (le, lf) = (log_softmax(e), log_softmax(f));
        kl += le
            .iter()
            .zip(&lf)
            .map(|(a, b)| a.exp() * (a - b))
            .sum::<f64>();
        same += usize::from(argmax(e) == argmax(f));
    }
    let n = exact.len() as f64;
    (kl / n, same as f64 / n)
}

fn argmax(v: &[f32]) -> usize {
    v.iter()
        .enumerate()
        .max_by(|a, b| a.1.total_cmp(b.1))
        .map(|(i, _)| i)
        .unwrap()
}

fn on_device(path: &std::path::Path, device: &Arc<moe_vulkan::Device>, mode: NumericMode) -> Model {
    let model = Model::open(path).unwrap().with_mode(mode);
    let attention = VulkanAttention::new(device.clone(), &model).unwrap();
    model.with_attention_compute(Arc::new(attention))
}

#[test]
fn attention_on_vulkan_matches_the_cpu_through_prompt_decode_and_rollback() {
    let Some(device) = common::device_or_skip(
        "attention_on_vulkan_matches_the_cpu_through_prompt_decode_and_rollback",
    ) else {
        return;
    };
    for path in fixtures() {
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let cpu = Model::open(&path).unwrap();
        let vocab = cpu.cfg.vocab;
        let prompt = tokens(PROMPT, 1, vocab);
        // Prompt, 3 decode steps, then (after rolling back to ROLLBACK_TO) 4 other tokens.
        let mut calls = vec![prompt.clone()];
        calls.extend(tokens(3, 2, vocab).into_iter().map(|t| vec![t]));
        let rollback_at = calls.len();
        calls.push(tokens(3, 3, vocab));
        calls.push(tokens(1, 4, vocab));
        let want = run(&cpu, &calls, Some(rollback_at));
        let gpu = on_device(&path, &device, NumericMode::Exact);
        let got = run(&gpu, &calls, Some(rollback_at));
        for (k, (w, g)) in want.iter().zip(&got).enumerate() {
            let diff = w
                .iter()
                .zip(g)
                .map(|(a, b)| (a - b).abs())
                .fold(0f32, f32::max);
            println!("{name} call {k}: max |vulkan - cpu| logit {diff:.2e}");
            assert!(diff <= EXACT_ABS_TOL, "{name} call {k}: {diff}");
            assert_eq!(argmax(w), argmax(g), "{name} call {k}: top token");
        }

        // The prompt in chunks gives the one-call bits.
        let chunks: Vec<Vec<u32>> = [0..5, 5..6, 6..PROMPT]
            .into_iter()
            .map(|r| prompt[r].to_vec())
            .collect();
        let whole = run(&gpu, &calls[..1], None);
        let chunked = run(&gpu, &chunks, None);
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        assert_eq!(
            bits(&whole[0]),
            bits(chunked.last().unwrap()),
            "{name}: a chunked prompt changed the bits"
        );

        // Fast mode, attention on the device and on the CPU, against exact mode on the CPU.
        let fast_cpu = run(
            &Model::open(&path).unwrap().with_mode(NumericMode::Fast),
            &calls,
            Some(rollback_at),
        );
        let fast_gpu = run(
            &on_device(&path, &device, NumericMode::Fast),
            &calls,
            Some(rollback_at),
        );
        let [(kl_cpu, top_cpu), (kl_gpu, top_gpu)] =
            [&fast_cpu, &fast_gpu].map(|got| faithfulness(&want, got));
        println!(
            "{name}: fast mode vs exact: attention on the CPU mean KL {kl_cpu:.2e}, top-1 {top_cpu:.2}; on Vulkan mean KL {kl_gpu:.2e}, top-1 {top_gpu:.2}"
        );
        assert!(
            kl_gpu <= FAST_KL_RATIO_MAX * kl_cpu + FAST_KL_FLOOR,
            "{name}: fast mode with attention on Vulkan drifts from exact (KL {kl_gpu:e}) more than with it on the CPU (KL {kl_cpu:e})"
        );
    }
}
