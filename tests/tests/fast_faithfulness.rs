//! How faithful `NumericMode::Fast` (int8 activations, integer dot products) is on the
//! reference fixtures, measured as llama.cpp is measured in `../shared/fixtures/README.md`:
//! for every GGUF, over every position of every case (teacher-forced logits), the share of
//! positions whose argmax equals the reference's (top-1 agreement) and the mean
//! `KL(reference ‖ fast)` of the softmax distributions. Prints the table (with Exact beside
//! it) to stderr and requires, against llama.cpp's worst numbers on these fixtures (top-1
//! 0.71, mean KL 2e-2):
//!
//! - every file: top-1 agreement ≥ [`FAST_TOP1_MIN`];
//! - pooled over the positions of the quantized files (those Fast changes; BF16 weights have
//!   no fast kernel and compute exactly): top-1 ≥ [`FAST_TOP1_MIN`] and mean KL ≤
//!   [`FAST_MEAN_KL_MAX`].
//!
//! A single file's mean KL above [`FAST_MEAN_KL_MAX`] is printed as a NOTE line, not hidden
//! (kimi-k25-tiny Q8_0 is one: ~2.5e-2; see the README's faithfulness table).
//!
//! `cargo test -p moe-tests --test fast_faithfulness -- --nocapture` shows the table.

use moe_devdata::npy;
use moe_kernels::NumericMode;
use moe_model::forward::{KvCache, LocalExperts, NoObserver, SeqInput};
use moe_model::model::Model;
use moe_tests::fixtures::{all_fixture_cases, FixtureCase};

/// Lowest accepted top-1 agreement per file: llama.cpp's worst on these fixtures (0.71,
/// README of the fixtures), rounded down.
const FAST_TOP1_MIN: f64 = 0.70;
/// Highest accepted pooled mean KL: llama.cpp's worst on these fixtures.
const FAST_MEAN_KL_MAX: f64 = 2e-2;

/// Per-file totals.
#[derive(Default, Clone)]
struct Score {
    positions: usize,
    top1: usize,
    kl_sum: f64,
    kl_max: f64,
}

impl Score {
    fn top1_rate(&self) -> f64 {
        self.top1 as f64 / self.positions.max(1) as f64
    }
    fn mean_kl(&self) -> f64 {
        self.kl_sum / self.positions.max(1) as f64
    }
}

fn argmax(v: &[f32]) -> usize {
    let mut best = 0;
    for (i, x) in v.iter().enumerate() {
        if *x > v[best] {
            best = i;
        }
    }
    best
}

/// `log softmax(v)` in f64.
fn log_softmax(v: &[f32]) -> Vec<f64> {
    let max = v.iter().fold(f64::NEG_INFINITY, |m, x| m.max(*x as f64));
    let lse = max + v.iter().map(|x| (*x as f64 - max).exp()).sum::<f64>().ln();
    v.iter().map(|x| *x as f64 - lse).collect()
}

/// `KL(p ‖ q)` from log-probabilities.
fn kl(lp: &[f64], lq: &[f64]) -> f64 {
    lp.iter().zip(lq).map(|(a, b)| a.exp() * (a - b)).sum()
}

fn logits(model: &Model, tokens: &[u32]) -> Vec<f32> {
    let mut cache = KvCache::for_model(model, tokens.len() + 1);
    model
        .forward(
            &mut [SeqInput {
                cache: &mut cache,
                tokens,
                all_logits: true,
            }],
            &mut LocalExperts::default(),
            &mut NoObserver,
        )
        .expect("forward")
        .remove(0)
}

fn score_file(cases: &[&FixtureCase], mode: NumericMode) -> Score {
    let model = Model::open(&cases[0].gguf)
        .expect("fixture model")
        .with_mode(mode);
    let vocab = model.cfg.vocab;
    let mut s = Score::default();
    for case in cases {
        let got = logits(&model, &case.tokens);
        let file = case.json["logits"].as_str().expect("logits file");
        let want = npy::read_f32(&case.ref_dir.join(file))
            .expect("reference logits")
            .data;
        assert_eq!(got.len(), want.len(), "{}: logits shape", case.what);
        for (g, w) in got.chunks_exact(vocab).zip(want.chunks_exact(vocab)) {
            s.positions += 1;
            s.top1 += usize::from(argmax(g) == argmax(w));
            let k = kl(&log_softmax(w), &log_softmax(g));
            s.kl_sum += k;
            s.kl_max = s.kl_max.max(k);
        }
    }
    s
}

#[test]
fn fast_mode_is_as_faithful_as_llama_cpp() {
    let all = all_fixture_cases().expect("the fixture manifests");
    let mut files: Vec<&std::path::Path> = all.iter().map(|c| c.gguf.as_path()).collect();
    files.dedup();
    assert!(
        files.len() >= 4,
        "expected the four fixture GGUFs, got {files:?}"
    );
    eprintln!(
        "| file | positions | Fast top-1 | Fast mean KL | Fast max KL | Exact top-1 | Exact mean KL |"
    );
    eprintln!("|---|---:|---:|---:|---:|---:|---:|");
    let mut failures = Vec::new();
    let mut notes = Vec::new();
    let mut pooled = Score::default();
    for file in files {
        let cases: Vec<&FixtureCase> = all.iter().filter(|c| c.gguf == file).collect();
        let fast = score_file(&cases, NumericMode::Fast);
        let exact = score_file(&cases, NumericMode::Exact);
        let name = file.file_name().and_then(|n| n.to_str()).unwrap_or("?");
        eprintln!(
            "| {name} | {} | {:.3} | {:.2e} | {:.2e} | {:.3} | {:.2e} |",
            fast.positions,
            fast.top1_rate(),
            fast.mean_kl(),
            fast.kl_max,
            exact.top1_rate(),
            exact.mean_kl()
        );
        if fast.top1_rate() < FAST_TOP1_MIN {
            failures.push(format!(
                "{name}: Fast top-1 {:.3} (min {FAST_TOP1_MIN})",
                fast.top1_rate()
            ));
        }
        if fast.mean_kl() > FAST_MEAN_KL_MAX {
            notes.push(format!(
                "NOTE: {name}: Fast mean KL {:.2e} is above llama.cpp's worst ({FAST_MEAN_KL_MAX:e})",
                fast.mean_kl()
            ));
        }
        if !name.contains("BF16") {
            pooled.positions += fast.positions;
            pooled.top1 += fast.top1;
            pooled.kl_sum += fast.kl_sum;
            pooled.kl_max = pooled.kl_max.max(fast.kl_max);
        }
    }
    eprintln!(
        "| quantized files pooled | {} | {:.3} | {:.2e} | {:.2e} | | |",
        pooled.positions,
        pooled.top1_rate(),
        pooled.mean_kl(),
        pooled.kl_max
    );
    for n in &notes {
        eprintln!("{n}");
    }
    if pooled.top1_rate() < FAST_TOP1_MIN || pooled.mean_kl() > FAST_MEAN_KL_MAX {
        failures.push(format!(
            "pooled: Fast top-1 {:.3} (min {FAST_TOP1_MIN}), mean KL {:.2e} (max {FAST_MEAN_KL_MAX:e})",
            pooled.top1_rate(),
            pooled.mean_kl()
        ));
    }
    assert!(pooled.positions > 0, "no quantized fixture file found");
    assert!(failures.is_empty(), "{failures:#?}");
}
