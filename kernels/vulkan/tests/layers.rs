//! A router's share of each layer on Vulkan (`VulkanLayers`: `src/attention.rs`, `src/ffn.rs`,
//! `src/head.rs`): a model whose attention, dense FFNs, shared experts and output head run on
//! device 0 against the same
//! model on the CPU, through the whole forward pass (the routed experts on the CPU in both,
//! so the difference is the layer device alone). What this proves, on the fixture files whose
//! types the shaders read (tiny Q8_0 and BF16, kq Q4_K_M: Q8_0, BF16, Q4_K and Q6_K
//! matrices):
//!
//! - each layer's FFN (the dense layer's, every MoE layer's shared expert) on the device, in
//!   exact mode, is within `FFN_REL_TOL` of the CPU's three matmuls and SwiGLU over 5 rows;
//! - exact mode: a 13-token prompt, then 3 decode steps, then a rollback to position 10 and
//!   4 other tokens from there, give logits within `EXACT_ABS_TOL` of the CPU's at every
//!   step, and the same top token. The rollback proves the device copy of the cache drops
//!   truncated rows (if it kept its rows 10..16, the new tokens would attend to the old
//!   ones and the logits would move far past the tolerance);
//! - with a BF16, F16 or Q8_0 cache the host cache and the device copy hold the same rows
//!   (the new rows rounded on the device for the first two, on the host for Q8_0), and the
//!   logits stay within `NARROW_KV_ABS_TOL` of the CPU's with the same cache type;
//! - the prompt in one call and in chunks of 5, 1 and 7 tokens give the same bits on the
//!   device (a row's result does not depend on the call's other rows: what makes a prompt's
//!   bits independent of how a server chunks it);
//! - fast mode with the layers on the device (integer-dot projections) stays near exact mode
//!   (mean KL within `FAST_KL_RATIO_MAX` of the CPU fast mode's, top-1 agreement reported
//!   beside it).

mod common;

use std::sync::Arc;

use moe_kernels::{KvType, NumericMode};
use moe_model::forward::{KvCache, LocalExperts, NoObserver, SeqInput, TokenKind};
use moe_model::model::{DenseFfn, Model};
use moe_vulkan::VulkanLayers;

/// Largest accepted |device - CPU| of one logit in exact mode (the attention's summation
/// order differs from the CPU's; the fixtures' own tolerance against the reference is 1e-4).
const EXACT_ABS_TOL: f32 = 1e-4;
/// Fast mode with the layers on the device may drift from exact mode (mean KL over this test's
/// few steps, a noisy measure) at most `FAST_KL_RATIO_MAX` times as far as fast mode with them
/// on the CPU, or than `FAST_KL_FLOOR` (the low end of llama.cpp's fixture range), whichever
/// is larger: a wrong scale or row gives KL far above either. The faithfulness of the whole
/// Vulkan backend against the references, with llama.cpp's bars, is
/// `tests/tests/vulkan_fast_faithfulness.rs`.
const FAST_KL_RATIO_MAX: f64 = 2.0;
const FAST_KL_FLOOR: f64 = 5e-3;
/// The prompt's length, and where the rollback goes.
const PROMPT: usize = 13;
const ROLLBACK_TO: usize = 10;
/// Largest accepted |device - CPU| of one FFN output, relative to the output's largest
/// magnitude (exact mode; only the summation order differs).
const FFN_REL_TOL: f32 = 1e-5;

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
    let layers = VulkanLayers::new(device.clone(), &model).unwrap();
    model.with_layer_compute(Arc::new(layers))
}

/// `down(silu(gate x) * up x)` for `n` rows of `x` on the CPU in exact mode: what the forward
/// pass's dense FFN computes (its doc: the same bits as three plain matmuls).
fn cpu_ffn(model: &Model, ffn: &DenseFfn, x: &[f32], n: usize) -> Vec<f32> {
    let f = model.mat(&ffn.gate).unwrap().rows();
    let (mut g, mut u) = (vec![0f32; n * f], vec![0f32; n * f]);
    model.mat(&ffn.gate).unwrap().matmul(x, n, &mut g).unwrap();
    model.mat(&ffn.up).unwrap().matmul(x, n, &mut u).unwrap();
    for (g, u) in g.iter_mut().zip(&u) {
        *g = *g / (1.0 + (-*g).exp()) * u;
    }
    let mut out = vec![0f32; n * model.cfg.n_embd];
    model
        .mat(&ffn.down)
        .unwrap()
        .matmul(&g, n, &mut out)
        .unwrap();
    out
}

#[test]
fn dense_ffns_and_shared_experts_on_vulkan_match_the_cpu() {
    let Some(device) =
        common::device_or_skip("dense_ffns_and_shared_experts_on_vulkan_match_the_cpu")
    else {
        return;
    };
    const ROWS: usize = 5;
    for path in fixtures() {
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let model = on_device(&path, &device, NumericMode::Exact);
        let dev = model.layer_compute().unwrap().clone();
        let d = model.cfg.n_embd;
        let x: Vec<f32> = (0..ROWS * d)
            .map(|i| ((i * 7919 % 1000) as f32 / 500.0 - 1.0) * 0.5)
            .collect();
        let mut checked = (0, 0);
        for (l, lw) in model.layers.iter().enumerate() {
            let shared = lw.moe.as_ref().and_then(|m| m.shared.as_ref());
            let Some(ffn) = lw.dense.as_ref().or(shared) else {
                continue;
            };
            let want = cpu_ffn(&model, ffn, &x, ROWS);
            let mut got = vec![f32::NAN; ROWS * d];
            dev.ffn(&model, l, &x, &mut got).unwrap();
            let scale = want.iter().fold(0f32, |m, v| m.max(v.abs()));
            let diff = want
                .iter()
                .zip(&got)
                .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
            println!("{name} layer {l}: max |vulkan - cpu| {diff:.2e} of {scale:.2e}");
            assert!(
                diff <= FFN_REL_TOL * scale,
                "{name} layer {l}: {diff} of {scale}"
            );
            if lw.dense.is_some() {
                checked.0 += 1;
            } else {
                checked.1 += 1;
            }
        }
        // The fixtures have a leading dense layer and shared experts: both kinds ran.
        assert!(checked.0 > 0 && checked.1 > 0, "{name}: {checked:?}");
    }
}

#[test]
fn layers_on_vulkan_match_the_cpu_through_prompt_decode_and_rollback() {
    let Some(device) =
        common::device_or_skip("layers_on_vulkan_match_the_cpu_through_prompt_decode_and_rollback")
    else {
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
        assert!(
            gpu.layer_compute().unwrap().computes_head(),
            "{name}: the output head stayed on the CPU"
        );
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

        // Fast mode, the layers on the device and on the CPU, against exact mode on the CPU.
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
            "{name}: fast mode vs exact: layers on the CPU mean KL {kl_cpu:.2e}, top-1 {top_cpu:.2}; on Vulkan mean KL {kl_gpu:.2e}, top-1 {top_gpu:.2}"
        );
        assert!(
            kl_gpu <= FAST_KL_RATIO_MAX * kl_cpu.max(FAST_KL_FLOOR),
            "{name}: fast mode with the layers on Vulkan drifts from exact by mean KL {kl_gpu:e} (on the CPU {kl_cpu:e})"
        );
    }
}

/// Largest accepted |device - CPU| of one logit with a narrow KV cache (exact arithmetic
/// otherwise): a cached value whose device and CPU computations straddle a rounding
/// boundary of the narrow type lands one unit of it apart.
const NARROW_KV_ABS_TOL: f32 = 2e-3;

/// With a BF16, F16 or Q8_0 cache (the first two rounded on the device by `kv_store.comp`,
/// the last on the host), the host cache holds exactly the rows the device copy holds: a
/// decode step from a clone of the cache (no device copy: rebuilt from the host rows) gives
/// the bits of the same step from the original; and the logits stay within
/// `NARROW_KV_ABS_TOL` of the CPU with the same cache type.
#[test]
fn narrow_kv_caches_keep_the_host_record_equal_to_the_device_copy() {
    let Some(device) =
        common::device_or_skip("narrow_kv_caches_keep_the_host_record_equal_to_the_device_copy")
    else {
        return;
    };
    let path = common::kq_q4_k_m();
    for kv_type in [KvType::Bf16, KvType::F16, KvType::Q8_0] {
        let cpu = Model::open(&path).unwrap().with_kv_type(kv_type);
        let gpu = on_device(&path, &device, NumericMode::Exact).with_kv_type(kv_type);
        let vocab = cpu.cfg.vocab;
        let prompt = tokens(PROMPT, 5, vocab);
        let step = |model: &Model, cache: &mut KvCache, toks: &[u32]| {
            let kind = TokenKind::Generated;
            let mut batch = [SeqInput {
                cache,
                tokens: toks,
                all_logits: false,
                kind,
            }];
            let mut experts = LocalExperts::default();
            let logits = model
                .forward(&mut batch, &mut experts, &mut NoObserver)
                .unwrap();
            logits.into_iter().next().unwrap()
        };
        let mut on_gpu = KvCache::for_model(&gpu, 64);
        let mut on_cpu = KvCache::for_model(&cpu, 64);
        let mut diffs = String::new();
        for toks in [&prompt[..], &[3], &[11]] {
            let mut from_host = on_gpu.clone();
            let got = step(&gpu, &mut on_gpu, toks);
            let again = step(&gpu, &mut from_host, toks);
            assert_eq!(
                got.iter().map(|x| x.to_bits()).collect::<Vec<_>>(),
                again.iter().map(|x| x.to_bits()).collect::<Vec<_>>(),
                "{kv_type:?}: the device copy and the host rows differ"
            );
            let want = step(&cpu, &mut on_cpu, toks);
            let diff = want
                .iter()
                .zip(&got)
                .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
            assert!(diff <= NARROW_KV_ABS_TOL, "{kv_type:?}: {diff}");
            diffs += &format!(" {diff:.2e}");
        }
        println!("{kv_type:?} cache: max |vulkan - cpu| logit per call{diffs}");
    }
}

/// The layers' weights read in place from the model file (`HostMemory::Import`, the default,
/// on a unified-memory device that imports host memory) give the bits of copied ones (and of
/// ones staged into device-only memory, `HostMemory::Stage`), through
/// prompt, decode and rollback, in both modes (each matrix's lead-in within its imported span
/// is the shaders' `w_base`).
#[test]
fn imported_and_copied_layers_compute_identically() {
    use moe_vulkan::HostMemory;
    let Some(device) = common::device_or_skip("imported_and_copied_layers_compute_identically")
    else {
        return;
    };
    let path = common::kq_q4_k_m();
    let vocab = Model::open(&path).unwrap().cfg.vocab;
    let mut calls = vec![tokens(PROMPT, 6, vocab)];
    calls.extend(tokens(2, 7, vocab).into_iter().map(|t| vec![t]));
    for mode in [NumericMode::Exact, NumericMode::Fast] {
        let run_with = |host: HostMemory| {
            let model = Model::open(&path).unwrap().with_mode(mode);
            let layers = VulkanLayers::with_upload(device.clone(), &model, host).unwrap();
            let imported = layers.imported_bytes();
            let model = model.with_layer_compute(Arc::new(layers));
            (run(&model, &calls, Some(2)), imported)
        };
        let (copied, none) = run_with(HostMemory::Copy);
        assert_eq!(none, 0, "Copy imported {none} bytes");
        let (staged, none) = run_with(HostMemory::Stage);
        assert_eq!(none, 0, "Stage imported {none} bytes");
        let (imported, bytes) = run_with(HostMemory::Import);
        if device.unified_memory() && device.host_import_alignment().is_some() {
            assert!(bytes > 0, "{mode:?}: nothing was imported");
        } else {
            println!("SKIPPED the import half: this device copies (not unified, or no import)");
        }
        let bits =
            |v: &[Vec<f32>]| -> Vec<u32> { v.iter().flatten().map(|x| x.to_bits()).collect() };
        assert_eq!(bits(&copied), bits(&imported), "{mode:?}");
        assert_eq!(bits(&copied), bits(&staged), "{mode:?}: staged");
        println!(
            "{mode:?}: {bytes} bytes of layer weights imported, the bits of copied and staged ones"
        );
    }
}
