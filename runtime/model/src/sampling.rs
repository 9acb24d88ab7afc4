//! Token sampling: repetition penalty, then temperature; greedy at temperature 0, otherwise
//! top-k, top-p and min-p filters over the softmax and a draw from a seeded generator.
//! The order follows llama.cpp's default sampler chain (penalties, top-k, top-p, min-p, temp).
//!
//! Non-finite logits never panic and never win: a NaN ranks below every number (it is never
//! drawn unless every logit is NaN), `+inf` logits share all the probability. The forward
//! pass refuses non-finite logits itself ([`crate::ModelError::NonFinite`]), so this only
//! guards other callers.

use crate::ModelError;

/// Sampling parameters (the OpenAI/llama.cpp set).
#[derive(Debug, Clone, PartialEq)]
pub struct SamplingParams {
    /// 0 = greedy.
    pub temperature: f32,
    /// Keep the `top_k` most likely tokens (0 = off).
    pub top_k: usize,
    /// Keep the smallest set whose probability reaches `top_p` (1 = off).
    pub top_p: f32,
    /// Drop tokens below `min_p` × the top probability (0 = off).
    pub min_p: f32,
    /// Divide positive / multiply negative logits of already seen tokens (1 = off).
    pub repeat_penalty: f32,
    /// How many recent tokens the penalty looks at.
    pub repeat_last_n: usize,
    /// Generator seed.
    pub seed: u64,
}

impl Default for SamplingParams {
    fn default() -> Self {
        Self {
            temperature: 0.0,
            top_k: 0,
            top_p: 1.0,
            min_p: 0.0,
            repeat_penalty: 1.0,
            repeat_last_n: 64,
            seed: 0,
        }
    }
}

impl SamplingParams {
    /// Checks ranges.
    pub fn validate(&self) -> Result<(), ModelError> {
        let bad = |m: &str| Err(ModelError::InvalidInput(m.to_string()));
        if !(self.temperature >= 0.0 && self.temperature.is_finite()) {
            return bad("temperature must be a finite number >= 0");
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return bad("top_p must be in (0, 1]");
        }
        if !(0.0..=1.0).contains(&self.min_p) {
            return bad("min_p must be in [0, 1]");
        }
        if !(self.repeat_penalty > 0.0 && self.repeat_penalty.is_finite()) {
            return bad("repeat_penalty must be a finite number > 0");
        }
        Ok(())
    }
}

/// The candidates `(id, logit)` sorted by logit, descending (ties: lower id first), cut to
/// the `top_k` first (0 = all). The order is total (ids break ties), so with a cut the top
/// `top_k` are selected first and only they are sorted: the same list as sorting the whole
/// vocabulary (163,840 entries for Kimi) and truncating, in O(n) instead of O(n log n).
fn top_candidates(logits: &[f32], top_k: usize) -> Vec<(u32, f32)> {
    let order = |a: &(u32, f32), b: &(u32, f32)| {
        crate::forward::moe::desc_nan_last((a.1, a.0 as usize), (b.1, b.0 as usize))
    };
    let mut cand: Vec<(u32, f32)> = logits
        .iter()
        .enumerate()
        .map(|(i, &l)| (i as u32, l))
        .collect();
    if top_k > 0 && top_k < cand.len() {
        cand.select_nth_unstable_by(top_k - 1, order);
        cand.truncate(top_k);
    }
    cand.sort_by(order);
    cand
}

/// A sampler with its own generator state.
#[derive(Debug, Clone)]
pub struct Sampler {
    params: SamplingParams,
    rng: SplitMix64,
}

impl Sampler {
    /// A sampler seeded from `params.seed`.
    pub fn new(params: SamplingParams) -> Self {
        let rng = SplitMix64(params.seed);
        Self { params, rng }
    }

    /// The parameters.
    pub fn params(&self) -> &SamplingParams {
        &self.params
    }

    /// Picks the next token from `logits` given the `history` of tokens so far.
    ///
    /// NaN logits count as `-inf`; if every logit is NaN or `-inf` the lowest id is returned.
    pub fn sample(&mut self, logits: &[f32], history: &[u32]) -> u32 {
        let p = &self.params;
        let mut logits = logits.to_vec();
        for l in logits.iter_mut().filter(|l| l.is_nan()) {
            *l = f32::NEG_INFINITY;
        }
        if p.repeat_penalty != 1.0 {
            let start = history.len().saturating_sub(p.repeat_last_n);
            let mut seen: Vec<u32> = history[start..].to_vec();
            seen.sort_unstable();
            seen.dedup();
            for t in seen {
                if let Some(l) = logits.get_mut(t as usize) {
                    *l = if *l > 0.0 {
                        *l / p.repeat_penalty
                    } else {
                        *l * p.repeat_penalty
                    };
                }
            }
        }
        if p.temperature == 0.0 {
            return argmax(&logits);
        }
        let mut cand = top_candidates(&logits, p.top_k);
        let max = cand[0].1;
        if max == f32::NEG_INFINITY {
            // Every logit is -inf (or was NaN): nothing to draw from.
            return cand[0].0;
        }
        let mut probs: Vec<f64> = if max.is_finite() {
            cand.iter()
                .map(|&(_, l)| (((l - max) / p.temperature) as f64).exp())
                .collect()
        } else {
            // `+inf` logits share the mass (`l - max` would be NaN).
            cand.iter()
                .map(|&(_, l)| if l == max { 1.0 } else { 0.0 })
                .collect()
        };
        normalize(&mut probs);
        if p.top_p < 1.0 {
            let mut acc = 0.0;
            let keep = probs.iter().position(|&q| {
                acc += q;
                acc >= p.top_p as f64
            });
            let keep = keep.map_or(probs.len(), |i| i + 1);
            probs.truncate(keep);
            cand.truncate(keep);
        }
        if p.min_p > 0.0 {
            let floor = probs[0] * p.min_p as f64;
            let keep = probs.iter().take_while(|&&q| q >= floor).count().max(1);
            probs.truncate(keep);
            cand.truncate(keep);
        }
        normalize(&mut probs);
        let r = self.rng.next_f64();
        let mut acc = 0.0;
        for (i, q) in probs.iter().enumerate() {
            acc += q;
            if r < acc {
                return cand[i].0;
            }
        }
        cand[cand.len() - 1].0
    }
}

fn normalize(p: &mut [f64]) {
    let s: f64 = p.iter().sum();
    p.iter_mut().for_each(|q| *q /= s);
}

/// Index of the largest value (first on ties); NaNs are skipped (0 when every value is NaN).
pub fn argmax(v: &[f32]) -> u32 {
    let mut best: Option<usize> = None;
    for (i, &x) in v.iter().enumerate() {
        if !x.is_nan() && best.is_none_or(|b| x > v[b]) {
            best = Some(i);
        }
    }
    best.unwrap_or(0) as u32
}

/// splitmix64: small, fast, seedable; enough for sampling.
#[derive(Debug, Clone)]
struct SplitMix64(u64);

impl SplitMix64 {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn logits() -> Vec<f32> {
        vec![1.0, 3.0, 2.0, 0.5, 2.9]
    }

    #[test]
    fn greedy_picks_the_argmax() {
        let mut s = Sampler::new(SamplingParams::default());
        assert_eq!(s.sample(&logits(), &[]), 1);
    }

    #[test]
    fn repetition_penalty_moves_the_argmax() {
        let mut s = Sampler::new(SamplingParams {
            repeat_penalty: 2.0,
            ..Default::default()
        });
        assert_eq!(s.sample(&logits(), &[1]), 4);
    }

    /// The selected-then-sorted top k is exactly the fully sorted list cut to k, ties and
    /// infinities included (what `sample` draws from must not depend on the shortcut).
    #[test]
    fn top_candidates_equal_full_sort_cut() {
        let mut x = 0x9E37_79B9u32;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x
        };
        for case in 0..50 {
            let n = 1 + (next() % 300) as usize;
            // Few distinct values, so ties are common; some infinities.
            let logits: Vec<f32> = (0..n)
                .map(|_| match next() % 20 {
                    0 => f32::NEG_INFINITY,
                    1 => f32::INFINITY,
                    v => (v % 7) as f32 - 3.0,
                })
                .collect();
            let full = top_candidates(&logits, 0);
            for w in full.windows(2) {
                assert!(
                    w[0].1 > w[1].1 || (w[0].1 == w[1].1 && w[0].0 < w[1].0),
                    "case {case}: not sorted"
                );
            }
            for k in [1, 2, 5, 40, n - 1, n, n + 3]
                .into_iter()
                .filter(|k| *k > 0)
            {
                let cut = top_candidates(&logits, k);
                assert_eq!(cut, full[..k.min(n)].to_vec(), "case {case} k {k}");
            }
        }
    }

    #[test]
    fn top_k_one_is_greedy_at_any_temperature() {
        let mut s = Sampler::new(SamplingParams {
            temperature: 5.0,
            top_k: 1,
            seed: 7,
            ..Default::default()
        });
        for _ in 0..50 {
            assert_eq!(s.sample(&logits(), &[]), 1);
        }
    }

    #[test]
    fn top_p_and_min_p_restrict_the_support() {
        // top_p 0.5 over probabilities ~[.06,.38,.14,.03,.35]: keeps tokens 1 and 4.
        let mut s = Sampler::new(SamplingParams {
            temperature: 1.0,
            top_p: 0.5,
            seed: 3,
            ..Default::default()
        });
        let mut seen = [0usize; 5];
        for _ in 0..400 {
            seen[s.sample(&logits(), &[]) as usize] += 1;
        }
        assert_eq!(seen[0] + seen[2] + seen[3], 0, "{seen:?}");
        assert!(seen[1] > 0 && seen[4] > 0, "{seen:?}");
        let mut s = Sampler::new(SamplingParams {
            temperature: 1.0,
            min_p: 0.5,
            seed: 3,
            ..Default::default()
        });
        for _ in 0..400 {
            let t = s.sample(&logits(), &[]);
            assert!(t == 1 || t == 4, "min_p kept token {t}");
        }
    }

    #[test]
    fn greedy_skips_nan_logits() {
        let mut s = Sampler::new(SamplingParams::default());
        assert_eq!(s.sample(&[f32::NAN, 1.0, 3.0, f32::NAN, 2.9], &[]), 2);
        assert_eq!(s.sample(&[1.0, f32::NAN, 0.5], &[]), 0);
        assert_eq!(s.sample(&[f32::NAN; 4], &[]), 0);
        assert_eq!(argmax(&[f32::NAN, f32::NEG_INFINITY, -1.0]), 2);
    }

    /// 1024 logits, every third NaN (what a NaN row in the output head gives).
    fn logits_with_nans() -> Vec<f32> {
        (0..1024)
            .map(|i| {
                if i % 3 == 0 {
                    f32::NAN
                } else {
                    ((i * 7919) % 1021) as f32 / 200.0
                }
            })
            .collect()
    }

    #[test]
    fn sampling_at_temperature_never_panics_or_draws_a_nan_logit() {
        let logits = logits_with_nans();
        let best_finite = argmax(&logits);
        assert!(!logits[best_finite as usize].is_nan());
        for (temperature, top_k, top_p, min_p) in [
            (1.0, 0, 1.0, 0.0),
            (0.7, 40, 0.9, 0.05),
            (5.0, 0, 1.0, 0.0),
            (0.3, 1, 1.0, 0.0),
        ] {
            for seed in 0..20 {
                let mut s = Sampler::new(SamplingParams {
                    temperature,
                    top_k,
                    top_p,
                    min_p,
                    repeat_penalty: 1.1,
                    seed,
                    ..Default::default()
                });
                let t = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    s.sample(&logits, &[1, 2, 3])
                }))
                .unwrap_or_else(|_| {
                    panic!("sampling NaN logits panicked (temperature {temperature})")
                });
                assert!(
                    !logits[t as usize].is_nan(),
                    "drew token {t}, whose logit is NaN"
                );
                if top_k == 1 {
                    assert_eq!(t, best_finite);
                }
            }
        }
    }

    #[test]
    fn infinite_logits_share_the_mass_and_all_nan_gives_the_lowest_id() {
        let mut s = Sampler::new(SamplingParams {
            temperature: 1.0,
            seed: 5,
            ..Default::default()
        });
        let logits = [0.0, f32::INFINITY, f32::NEG_INFINITY, f32::INFINITY, 3.0];
        let mut seen = [0usize; 5];
        for _ in 0..200 {
            seen[s.sample(&logits, &[]) as usize] += 1;
        }
        assert_eq!(seen[0] + seen[2] + seen[4], 0, "{seen:?}");
        assert!(seen[1] > 0 && seen[3] > 0, "{seen:?}");
        assert_eq!(s.sample(&[f32::NAN; 6], &[]), 0);
    }

    #[test]
    fn same_seed_same_draws() {
        let p = SamplingParams {
            temperature: 1.0,
            seed: 42,
            ..Default::default()
        };
        let (mut a, mut b) = (Sampler::new(p.clone()), Sampler::new(p));
        let xs: Vec<u32> = (0..32).map(|_| a.sample(&logits(), &[])).collect();
        let ys: Vec<u32> = (0..32).map(|_| b.sample(&logits(), &[])).collect();
        assert_eq!(xs, ys);
        assert!(
            xs.iter().any(|&t| t != xs[0]),
            "temperature 1 should not be constant"
        );
    }
}
