//! How faithful a model's logits are to the reference fixtures, measured as llama.cpp is
//! measured in `../shared/fixtures/README.md`: over every position of every case
//! (teacher-forced logits), the share of positions whose argmax equals the reference's
//! (top-1 agreement) and the mean `KL(reference ‖ model)` of the softmax distributions.
//! Shared by `tests/fast_faithfulness.rs` (numeric modes), `tests/kv_type_faithfulness.rs`
//! (KV cache types) and `tests/vulkan_fast_faithfulness.rs` (the Vulkan backend's fast mode,
//! through [`score_file_on`]).

use moe_devdata::npy;
use moe_kernels::{KvType, NumericMode};
use moe_model::forward::{ComputeHandle, KvCache, LocalExperts, NoObserver, SeqInput, TokenKind};
use moe_model::model::Model;

use crate::fixtures::FixtureCase;

/// Totals over the positions compared.
#[derive(Debug, Default, Clone)]
pub struct Score {
    /// Positions compared.
    pub positions: usize,
    /// Positions whose argmax agrees.
    pub top1: usize,
    /// Sum of the per-position KL divergences.
    pub kl_sum: f64,
    /// Largest per-position KL divergence.
    pub kl_max: f64,
}

impl Score {
    /// Share of positions whose argmax agrees.
    pub fn top1_rate(&self) -> f64 {
        self.top1 as f64 / self.positions.max(1) as f64
    }

    /// Mean KL divergence per position.
    pub fn mean_kl(&self) -> f64 {
        self.kl_sum / self.positions.max(1) as f64
    }

    /// Adds `other`'s positions.
    pub fn add(&mut self, other: &Score) {
        self.positions += other.positions;
        self.top1 += other.top1;
        self.kl_sum += other.kl_sum;
        self.kl_max = self.kl_max.max(other.kl_max);
    }

    /// Adds the positions of `got` (`[T, vocab]`) scored against `want` (the same shape).
    pub fn compare(&mut self, want: &[f32], got: &[f32], vocab: usize) {
        for (g, w) in got.chunks_exact(vocab).zip(want.chunks_exact(vocab)) {
            self.positions += 1;
            self.top1 += usize::from(argmax(g) == argmax(w));
            let k = kl(&log_softmax(w), &log_softmax(g));
            self.kl_sum += k;
            self.kl_max = self.kl_max.max(k);
        }
    }
}

/// The first index of the largest value.
pub fn argmax(v: &[f32]) -> usize {
    let mut best = 0;
    for (i, x) in v.iter().enumerate() {
        if *x > v[best] {
            best = i;
        }
    }
    best
}

/// `log softmax(v)` in f64.
pub fn log_softmax(v: &[f32]) -> Vec<f64> {
    let max = v.iter().fold(f64::NEG_INFINITY, |m, x| m.max(*x as f64));
    let lse = max + v.iter().map(|x| (*x as f64 - max).exp()).sum::<f64>().ln();
    v.iter().map(|x| *x as f64 - lse).collect()
}

/// `KL(p ‖ q)` from log-probabilities.
pub fn kl(lp: &[f64], lq: &[f64]) -> f64 {
    lp.iter().zip(lq).map(|(a, b)| a.exp() * (a - b)).sum()
}

/// Teacher-forced logits of `tokens` (`[T, vocab]`), the whole prompt in one forward call
/// over a fresh cache of the model's KV type.
pub fn logits(model: &Model, tokens: &[u32]) -> Vec<f32> {
    logits_with(model, tokens, &mut LocalExperts::default())
}

/// As [`logits`], with the routed experts computed by `experts`.
pub fn logits_with(model: &Model, tokens: &[u32], experts: &mut LocalExperts) -> Vec<f32> {
    let mut cache = KvCache::for_model(model, tokens.len() + 1);
    model
        .forward(
            &mut [SeqInput {
                cache: &mut cache,
                tokens,
                all_logits: true,
                kind: TokenKind::Prompt { len: tokens.len() },
            }],
            experts,
            &mut NoObserver,
        )
        .expect("forward")
        .remove(0)
}

/// The reference logits of `case` (`[T, vocab]`).
pub fn reference_logits(case: &FixtureCase) -> Vec<f32> {
    let file = case.json["logits"].as_str().expect("logits file");
    npy::read_f32(&case.ref_dir.join(file))
        .expect("reference logits")
        .data
}

/// Every case of one file (`cases`, all of the same GGUF) computed in `mode` with KV caches
/// of `kv_type`: the logits of each case.
pub fn file_logits(cases: &[&FixtureCase], mode: NumericMode, kv_type: KvType) -> Vec<Vec<f32>> {
    file_logits_on(cases, mode, kv_type, |m| (m, ComputeHandle::default()))
}

/// As [`file_logits`], with the model and the routed experts' device that `compute` makes
/// of the model as opened in `mode` (e.g. a Vulkan device with its experts uploaded, and the
/// model with its layers on it).
pub fn file_logits_on(
    cases: &[&FixtureCase],
    mode: NumericMode,
    kv_type: KvType,
    compute: impl FnOnce(Model) -> (Model, ComputeHandle),
) -> Vec<Vec<f32>> {
    let model = Model::open(&cases[0].gguf)
        .expect("fixture model")
        .with_mode(mode)
        .with_kv_type(kv_type);
    let (model, handle) = compute(model);
    cases
        .iter()
        .map(|c| logits_with(&model, &c.tokens, &mut LocalExperts::on(handle.clone())))
        .collect()
}

/// [`file_logits`] scored against the references.
pub fn score_file(cases: &[&FixtureCase], mode: NumericMode, kv_type: KvType) -> Score {
    score_file_on(cases, mode, kv_type, |m| (m, ComputeHandle::default()))
}

/// [`file_logits_on`] scored against the references.
pub fn score_file_on(
    cases: &[&FixtureCase],
    mode: NumericMode,
    kv_type: KvType,
    compute: impl FnOnce(Model) -> (Model, ComputeHandle),
) -> Score {
    let vocab = Model::open(&cases[0].gguf)
        .expect("fixture model")
        .cfg
        .vocab;
    let mut s = Score::default();
    for (case, got) in cases
        .iter()
        .zip(file_logits_on(cases, mode, kv_type, compute))
    {
        let want = reference_logits(case);
        assert_eq!(got.len(), want.len(), "{}: logits shape", case.what);
        s.compare(&want, &got, vocab);
    }
    s
}
