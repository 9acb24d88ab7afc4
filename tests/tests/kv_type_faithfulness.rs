//! What the KV cache's storage type costs on the reference fixtures. For every GGUF and every
//! [`KvType`], Fast mode's teacher-forced logits are scored against the reference (top-1
//! agreement, mean `KL(reference ‖ moe-node)`, as `fast_faithfulness.rs` does) and against
//! Fast mode with an f32 cache (the same arithmetic except the cache's rounding); Exact mode
//! with the same cache type is printed beside them (the cache's rounding alone).
//!
//! Requires, on every file, for every narrow type:
//! - the cache's rounding alone (Exact mode with that cache against the reference, which Exact
//!   with an f32 cache matches to ~1e-12): mean KL ≤ the type's bound
//!   ([`KV_F16_EXACT_MEAN_KL_MAX`], [`KV_BF16_EXACT_MEAN_KL_MAX`], [`KV_Q8_EXACT_MEAN_KL_MAX`],
//!   about twice the worst measured);
//! - Fast mode with that cache against Fast with an f32 cache: mean KL ≤
//!   [`KV_FAST_MEAN_KL_MAX`] and top-1 agreement ≥ [`KV_FAST_TOP1_MIN`]. Looser: Fast's
//!   activation rounding turns a small change anywhere into flipped near-tie expert choices
//!   among 384 experts (the same effect that puts Fast itself ~1e-2 from the reference), so
//!   this bound is of Fast's own distance from the reference, and catches a broken cache
//!   (which moves the logits by far more), not the cache's rounding;
//! - pooled over the quantized files, Fast with that cache within llama.cpp's worst numbers on
//!   these fixtures (top-1 ≥ [`FAST_TOP1_MIN`], mean KL ≤ [`FAST_MEAN_KL_MAX`]), as
//!   `fast_faithfulness.rs` requires of Fast with an f32 cache.
//!
//! `cargo test -p moe-tests --test kv_type_faithfulness -- --nocapture` shows the table.

use moe_kernels::{KvType, NumericMode};
use moe_model::model::Model;
use moe_tests::faithfulness::{file_logits, reference_logits, Score};
use moe_tests::fixtures::{all_fixture_cases, FixtureCase};

/// Highest accepted mean KL of Exact mode with an f16 cache against the reference, per file
/// (worst measured 4.3e-4, kimi-k25-tiny-BF16).
const KV_F16_EXACT_MEAN_KL_MAX: f64 = 1e-3;
/// The same with a bf16 cache (worst measured 5.7e-3, kimi-k25-tiny-BF16).
const KV_BF16_EXACT_MEAN_KL_MAX: f64 = 1.2e-2;
/// The same with a q8_0 cache (worst measured 9.8e-3, kimi-k25-tiny-Q8_0).
const KV_Q8_EXACT_MEAN_KL_MAX: f64 = 2e-2;
/// Highest accepted mean KL of Fast with a narrow cache against Fast with an f32 cache, per
/// file: Fast's own worst distance from the reference (2.5e-2, kimi-k25-tiny-Q8_0), rounded
/// up.
const KV_FAST_MEAN_KL_MAX: f64 = 3e-2;
/// Lowest accepted top-1 agreement of Fast with a narrow cache with Fast with an f32 cache,
/// per file (worst measured 0.697: q8_0 on kimi-k25-tiny-Q8_0).
const KV_FAST_TOP1_MIN: f64 = 0.65;
/// Lowest accepted pooled top-1 agreement with the reference: llama.cpp's worst (0.71),
/// rounded down, as in `fast_faithfulness.rs`.
const FAST_TOP1_MIN: f64 = 0.70;
/// Highest accepted pooled mean KL against the reference: llama.cpp's worst.
const FAST_MEAN_KL_MAX: f64 = 2e-2;

#[test]
fn narrow_kv_caches_stay_close_to_an_f32_cache_in_fast_mode() {
    let all = all_fixture_cases().expect("the fixture manifests");
    let mut files: Vec<&std::path::Path> = all.iter().map(|c| c.gguf.as_path()).collect();
    files.dedup();
    assert!(
        files.len() >= 4,
        "expected the four fixture GGUFs, got {files:?}"
    );
    eprintln!(
        "| file | kv | Fast top-1 | Fast mean KL | vs f32-kv Fast: top-1 | mean KL | max KL | \
         Exact top-1 | Exact mean KL |"
    );
    eprintln!("|---|---|---:|---:|---:|---:|---:|---:|---:|");
    let mut failures = Vec::new();
    let mut pooled: Vec<(KvType, Score)> =
        KvType::ALL.iter().map(|&t| (t, Score::default())).collect();
    for file in files {
        let cases: Vec<&FixtureCase> = all.iter().filter(|c| c.gguf == file).collect();
        let vocab = Model::open(file).expect("fixture model").cfg.vocab;
        let name = file.file_name().and_then(|n| n.to_str()).unwrap_or("?");
        let refs: Vec<Vec<f32>> = cases.iter().map(|c| reference_logits(c)).collect();
        let base = file_logits(&cases, NumericMode::Fast, KvType::F32);
        for (ty, pooled) in &mut pooled {
            let ty = *ty;
            let fast = file_logits(&cases, NumericMode::Fast, ty);
            let exact = file_logits(&cases, NumericMode::Exact, ty);
            let (mut vs_ref, mut vs_base, mut exact_ref) =
                (Score::default(), Score::default(), Score::default());
            for (i, want) in refs.iter().enumerate() {
                vs_ref.compare(want, &fast[i], vocab);
                vs_base.compare(&base[i], &fast[i], vocab);
                exact_ref.compare(want, &exact[i], vocab);
            }
            if !name.contains("BF16") {
                pooled.add(&vs_ref);
            }
            eprintln!(
                "| {name} | {ty} | {:.3} | {:.2e} | {:.3} | {:.2e} | {:.2e} | {:.3} | {:.2e} |",
                vs_ref.top1_rate(),
                vs_ref.mean_kl(),
                vs_base.top1_rate(),
                vs_base.mean_kl(),
                vs_base.kl_max,
                exact_ref.top1_rate(),
                exact_ref.mean_kl()
            );
            let exact_kl_max = match ty {
                KvType::F32 => continue,
                KvType::F16 => KV_F16_EXACT_MEAN_KL_MAX,
                KvType::Bf16 => KV_BF16_EXACT_MEAN_KL_MAX,
                KvType::Q8_0 => KV_Q8_EXACT_MEAN_KL_MAX,
            };
            if exact_ref.mean_kl() > exact_kl_max {
                failures.push(format!(
                    "{name} kv {ty}: Exact mean KL {:.2e} (max {exact_kl_max:e})",
                    exact_ref.mean_kl()
                ));
            }
            if vs_base.mean_kl() > KV_FAST_MEAN_KL_MAX || vs_base.top1_rate() < KV_FAST_TOP1_MIN {
                failures.push(format!(
                    "{name} kv {ty}: against f32-kv Fast top-1 {:.3} (min {KV_FAST_TOP1_MIN}), \
                     mean KL {:.2e} (max {KV_FAST_MEAN_KL_MAX:e})",
                    vs_base.top1_rate(),
                    vs_base.mean_kl()
                ));
            }
        }
    }
    for (ty, s) in &pooled {
        eprintln!(
            "| quantized files pooled | {ty} | {:.3} | {:.2e} | | | | | |",
            s.top1_rate(),
            s.mean_kl()
        );
        assert!(s.positions > 0, "no quantized fixture file found");
        if s.top1_rate() < FAST_TOP1_MIN || s.mean_kl() > FAST_MEAN_KL_MAX {
            failures.push(format!(
                "pooled kv {ty}: Fast top-1 {:.3} (min {FAST_TOP1_MIN}), mean KL {:.2e} \
                 (max {FAST_MEAN_KL_MAX:e})",
                s.top1_rate(),
                s.mean_kl()
            ));
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
}
