//! The MoE FFN: the router (sigmoid or softmax scores, correction bias for selection only,
//! group-limited top-k, normalized and scaled weights; spec §2.5), the SwiGLU expert, and
//! [`ExpertBackend`], the seam between "which experts" and "where they are computed".

use super::ops::{sigmoid, softmax_inplace};
pub use super::route::Route;
use crate::config::{GatingFunc, ModelConfig};
use crate::model::DenseFfn;
use crate::model::{Model, MoeWeights};
use crate::ModelError;

/// The experts chosen for a batch of tokens: `k` (expert, weight) pairs per token, experts
/// ascending within a token.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Routing {
    /// Experts per token.
    pub k: usize,
    /// `[t * k]` expert ids.
    pub experts: Vec<u32>,
    /// `[t * k]` final weights (normalized, scaled).
    pub weights: Vec<f32>,
}

impl Routing {
    /// Tokens routed.
    pub fn n_tokens(&self) -> usize {
        self.experts.len().checked_div(self.k).unwrap_or(0)
    }
    /// `(experts, weights)` of token `i`.
    pub fn token(&self, i: usize) -> (&[u32], &[f32]) {
        (
            &self.experts[i * self.k..(i + 1) * self.k],
            &self.weights[i * self.k..(i + 1) * self.k],
        )
    }
}

/// Computes the routed part of a MoE layer, locally or on other nodes.
///
/// The forward pass calls `begin` as soon as the routing is known, then
/// `finish_with_shared`, whose default computes the shared expert, then calls `finish`: a
/// remote backend sends its frames in `begin` and waits in `finish`, so the shared expert
/// overlaps the network round trip; a local one may compute the shared expert in the same
/// parallel region as the routed ones.
pub trait ExpertBackend: Send {
    /// Starts `Σ_j w_j · Expert_j(h)` for every token of `h` (`[t, D]`) in MoE layer `layer`.
    fn begin(
        &mut self,
        model: &Model,
        layer: usize,
        h: &[f32],
        routing: &Routing,
    ) -> Result<(), ModelError>;
    /// Adds the routed outputs started by the last `begin` into `out` (`[t, D]`).
    fn finish(&mut self, model: &Model, layer: usize, out: &mut [f32]) -> Result<(), ModelError>;

    /// `out = shared(h) + Σ routed` (`out` zero on entry, `h` the `begin` input): the
    /// shared expert, if the layer has one, on the model's layer device or this process's CPU
    /// team, then [`Self::finish`].
    /// The bits must be those of this default.
    fn finish_with_shared(
        &mut self,
        model: &Model,
        layer: usize,
        shared: Option<&DenseFfn>,
        h: &[f32],
        out: &mut [f32],
    ) -> Result<(), ModelError> {
        if let Some(ffn) = shared {
            super::layer_compute::dense_or_shared_ffn(model, layer, ffn, h, out)?;
        }
        self.finish(model, layer, out)
    }
}

impl Routing {
    /// Every (token, expert, weight) triple, token-major.
    pub fn routes(&self) -> Vec<Route> {
        (0..self.n_tokens())
            .flat_map(|t| {
                let (es, ws) = self.token(t);
                es.iter().zip(ws).map(move |(&expert, &weight)| Route {
                    token: t as u32,
                    expert,
                    weight,
                })
            })
            .collect()
    }
}

/// Chooses experts and weights for `n` tokens of `h` (`[n, D]`) in MoE layer `layer`.
pub fn route(
    model: &Model,
    moe: &MoeWeights,
    layer: usize,
    h: &[f32],
    n: usize,
) -> Result<Routing, ModelError> {
    let mut logits = vec![0f32; n * model.cfg.n_experts];
    model.mat(&moe.gate_inp)?.matmul(h, n, &mut logits)?;
    select_experts(&model.cfg, layer, &moe.probs_bias, logits)
}

/// Orders selection scores descending, NaN last, ties (and NaNs among themselves) to the lower
/// index: a total order, so sorting can neither panic nor misplace other entries. Equal to
/// the `partial_cmp` order for non-NaN values (`-0.0 == 0.0` included).
pub(crate) fn desc_nan_last(a: (f32, usize), b: (f32, usize)) -> std::cmp::Ordering {
    let by_value = match (a.0.is_nan(), b.0.is_nan()) {
        (false, false) => b.0.partial_cmp(&a.0).unwrap_or(std::cmp::Ordering::Equal),
        (true, true) => std::cmp::Ordering::Equal,
        (true, false) => std::cmp::Ordering::Greater,
        (false, true) => std::cmp::Ordering::Less,
    };
    by_value.then(a.1.cmp(&b.1))
}

/// Chooses experts and weights from router logits (`[n, n_experts]`, `ffn_gate_inp · h`) of
/// MoE layer `layer`, with selection bias `bias` (`[n_experts]`).
///
/// Non-finite gate logits or a NaN selection score (a NaN bias) are refused with
/// [`ModelError::NonFinite`] naming the layer and the token rows: a NaN would otherwise
/// silently pick arbitrary experts (or, with softmax gating, poison every weight of the token).
pub fn select_experts(
    c: &ModelConfig,
    layer: usize,
    bias: &[f32],
    mut logits: Vec<f32>,
) -> Result<Routing, ModelError> {
    let e = c.n_experts;
    let k = c.n_experts_used;
    super::check_finite(&logits, e, 0, || {
        format!("the gate logits (router scores) of MoE layer {layer}")
    })?;
    let n = logits.len() / e.max(1);
    // Tokens are independent: a prompt's rows are selected in parallel, in chunks whose
    // results are concatenated in token order (the same routing as one pass).
    let chunks: Vec<(usize, &mut [f32])> = logits
        .chunks_mut(SELECT_TOKENS_PER_JOB * e.max(1))
        .enumerate()
        .map(|(i, rows)| (i * SELECT_TOKENS_PER_JOB, rows))
        .collect();
    let mut parts: Vec<Option<Result<Selected, ModelError>>> =
        (0..chunks.len()).map(|_| None).collect();
    let jobs: Vec<_> = chunks.into_iter().zip(parts.iter_mut()).collect();
    let threads = if n >= 2 * SELECT_TOKENS_PER_JOB {
        moe_kernels::num_threads()
    } else {
        1
    };
    moe_kernels::run_jobs(jobs, threads, |((first, rows), slot)| {
        *slot = Some(select_rows(c, layer, bias, rows, first));
    });
    let mut routing = Routing {
        k,
        experts: Vec::with_capacity(n * k),
        weights: Vec::with_capacity(n * k),
    };
    for part in parts {
        let (experts, weights) =
            part.unwrap_or_else(|| Err(ModelError::InvalidInput("routing chunk not run".into())))?;
        routing.experts.extend(experts);
        routing.weights.extend(weights);
    }
    Ok(routing)
}

/// Tokens per job of a prompt's expert selection: 32 rows of 384 scores take a few tens of
/// microseconds, and a 512-token prompt's selection ran serially for 3% of its time before.
pub const SELECT_TOKENS_PER_JOB: usize = 32;

/// Each token's experts (ascending) and weights, token-major.
type Selected = (Vec<u32>, Vec<f32>);

/// [`select_experts`] of the logit rows `logits` (checked finite), the first of which is
/// token `first`.
fn select_rows(
    c: &ModelConfig,
    layer: usize,
    bias: &[f32],
    logits: &mut [f32],
    first: usize,
) -> Result<Selected, ModelError> {
    let e = c.n_experts;
    let k = c.n_experts_used;
    let n = logits.len() / e.max(1);
    let (mut experts, mut weights) = (Vec::with_capacity(n * k), Vec::with_capacity(n * k));
    let mut sel = vec![0f32; e];
    let mut order: Vec<usize> = Vec::with_capacity(e);
    for (t, row) in logits.chunks_exact_mut(e).enumerate() {
        match c.gating {
            GatingFunc::Sigmoid => row.iter_mut().for_each(|v| *v = sigmoid(*v)),
            GatingFunc::Softmax => softmax_inplace(row),
        }
        let scores: &[f32] = row;
        for ((s, &p), &b) in sel.iter_mut().zip(scores).zip(bias) {
            *s = p + b;
        }
        if let Some(&v) = sel.iter().find(|v| v.is_nan()) {
            return Err(ModelError::NonFinite {
                what: format!(
                    "the expert selection scores (gate score + exp_probs_b bias) of MoE layer {layer}"
                ),
                value: v,
                rows: vec![first + t],
            });
        }
        if c.n_groups > 1 {
            limit_groups(&mut sel, c.n_groups, c.n_groups_used);
        }
        order.clear();
        order.extend(0..e);
        // The k first in descending selection score, ties to the lower id: a selection
        // (linear) gives the same set as a full sort under this total order, and the set is
        // sorted by id below anyway.
        if k > 0 && k < e {
            order.select_nth_unstable_by(k - 1, |&a, &b| desc_nan_last((sel[a], a), (sel[b], b)));
        }
        let mut chosen: Vec<usize> = order[..k].to_vec();
        chosen.sort_unstable();
        let mut ws: Vec<f32> = chosen.iter().map(|&i| scores[i]).collect();
        if c.weights_norm {
            let sum: f32 = ws.iter().sum::<f32>() + 1e-20;
            ws.iter_mut().for_each(|w| *w /= sum);
        }
        ws.iter_mut().for_each(|w| *w *= c.weights_scale);
        experts.extend(chosen.iter().map(|&i| i as u32));
        weights.extend(ws);
    }
    Ok((experts, weights))
}

/// Keeps the `used` groups with the largest sum of their top-2 scores; the others get -inf.
/// A group whose sum is NaN ranks last.
fn limit_groups(sel: &mut [f32], groups: usize, used: usize) {
    let size = sel.len() / groups;
    let mut group_scores: Vec<(usize, f32)> = sel
        .chunks_exact(size)
        .enumerate()
        .map(|(g, s)| {
            let (mut a, mut b) = (f32::NEG_INFINITY, f32::NEG_INFINITY);
            for &v in s {
                if v > a {
                    b = a;
                    a = v;
                } else if v > b {
                    b = v;
                }
            }
            (g, a + b)
        })
        .collect();
    group_scores.sort_by(|x, y| desc_nan_last((x.1, x.0), (y.1, y.0)));
    for &(g, _) in &group_scores[used..] {
        sel[g * size..(g + 1) * size].fill(f32::NEG_INFINITY);
    }
}

#[cfg(test)]
mod tests {
    use super::{desc_nan_last, limit_groups, select_experts, SELECT_TOKENS_PER_JOB};
    use crate::config::{GatingFunc, ModelConfig};
    use crate::ModelError;

    /// A router config: `e` experts, top-`k`, no groups.
    fn cfg(e: usize, k: usize, gating: GatingFunc) -> ModelConfig {
        ModelConfig {
            n_layers: 1,
            n_embd: 8,
            n_ff: 8,
            n_heads: 1,
            q_lora_rank: None,
            kv_lora_rank: 8,
            qk_nope: 8,
            qk_rope: 8,
            v_head: 8,
            vocab: 8,
            rms_eps: 1e-6,
            rope_theta: 10000.0,
            yarn: None,
            context_length: 64,
            n_experts: e,
            n_experts_used: k,
            n_groups: 1,
            n_groups_used: 1,
            gating,
            weights_norm: true,
            weights_scale: 2.5,
            n_dense_lead: 0,
            n_ff_exp: 8,
            n_shared: 0,
        }
    }

    /// `t` rows of `e` distinct finite gate logits.
    fn gate_logits(t: usize, e: usize) -> Vec<f32> {
        (0..t * e)
            .map(|i| ((i * 7919) % 1013) as f32 / 250.0 - 2.0)
            .collect()
    }

    /// A prompt's selection (in parallel chunks of [`SELECT_TOKENS_PER_JOB`] tokens) equals
    /// each token selected alone, in token order.
    #[test]
    fn chunked_selection_equals_token_by_token() {
        let (t, e) = (3 * SELECT_TOKENS_PER_JOB + 5, 64);
        let c = cfg(e, 8, GatingFunc::Sigmoid);
        let bias: Vec<f32> = (0..e).map(|i| (i % 5) as f32 * 0.01).collect();
        let logits = gate_logits(t, e);
        moe_kernels::set_num_threads(2);
        let all = select_experts(&c, 1, &bias, logits.clone()).unwrap();
        moe_kernels::set_num_threads(0);
        assert_eq!(all.experts.len(), t * 8);
        for (i, row) in logits.chunks_exact(e).enumerate() {
            let one = select_experts(&c, 1, &bias, row.to_vec()).unwrap();
            assert_eq!(
                &all.experts[8 * i..8 * i + 8],
                &one.experts[..],
                "token {i}"
            );
            let same = all.weights[8 * i..8 * i + 8]
                .iter()
                .zip(&one.weights)
                .all(|(a, b)| a.to_bits() == b.to_bits());
            assert!(same, "token {i} weights");
        }
    }

    #[test]
    fn finite_gate_logits_pick_the_top_k() {
        let c = cfg(16, 4, GatingFunc::Sigmoid);
        let mut logits = vec![0f32; 16];
        for (i, &e) in [3usize, 9, 12, 14].iter().enumerate() {
            logits[e] = 5.0 - i as f32;
        }
        let r = select_experts(&c, 1, &[0.0; 16], logits).unwrap();
        assert_eq!(r.experts, vec![3, 9, 12, 14]);
        let sum: f32 = r.weights.iter().sum();
        assert!((sum - 2.5).abs() < 1e-5, "{sum}");
    }

    #[test]
    fn nan_gate_logits_are_an_error_naming_the_layer_and_rows() {
        for gating in [GatingFunc::Sigmoid, GatingFunc::Softmax] {
            let (t, e) = (4, 64);
            let mut logits = gate_logits(t, e);
            // Token 1: a few NaN experts among finite ones (a corrupt gate row); token 3: Inf.
            for j in [5, 17, 40] {
                logits[e + j] = f32::NAN;
            }
            logits[3 * e + 2] = f32::INFINITY;
            let got = std::panic::catch_unwind(|| {
                select_experts(&cfg(e, 8, gating), 7, &[0.0; 64], logits)
            })
            .expect("routing NaN gate logits must not panic");
            match got {
                Err(ModelError::NonFinite { what, value, rows }) => {
                    assert!(what.contains("MoE layer 7"), "{what}");
                    assert!(value.is_nan(), "{value}");
                    assert_eq!(rows, vec![1, 3]);
                }
                other => panic!("{gating:?}: want a NonFinite error, got {other:?}"),
            }
        }
    }

    #[test]
    fn nan_selection_bias_is_an_error() {
        let (t, e) = (2, 32);
        let mut bias = vec![0.01f32; e];
        bias[9] = f32::NAN;
        let got = select_experts(&cfg(e, 4, GatingFunc::Sigmoid), 2, &bias, gate_logits(t, e));
        match got {
            Err(ModelError::NonFinite { what, rows, .. }) => {
                assert!(
                    what.contains("bias") && what.contains("MoE layer 2"),
                    "{what}"
                );
                assert_eq!(rows, vec![0]);
            }
            other => panic!("want a NonFinite error, got {other:?}"),
        }
    }

    #[test]
    fn score_order_with_nans_is_total_nan_last() {
        // Enough entries that the standard sort checks its comparator (a comparator that
        // calls NaN "equal" to everything is not a total order and may make it panic).
        let mut scores: Vec<f32> = (0..2000).map(|i| ((i * 7919) % 2003) as f32).collect();
        for i in (0..2000).step_by(3) {
            scores[i] = f32::NAN;
        }
        let mut order: Vec<usize> = (0..scores.len()).collect();
        order.sort_by(|&a, &b| desc_nan_last((scores[a], a), (scores[b], b)));
        let finite = scores.iter().filter(|v| !v.is_nan()).count();
        assert!(order[..finite].iter().all(|&i| !scores[i].is_nan()));
        assert!(order[..finite]
            .windows(2)
            .all(|w| scores[w[0]] > scores[w[1]] || (scores[w[0]] == scores[w[1]] && w[0] < w[1])));
        assert!(order[finite..].windows(2).all(|w| w[0] < w[1]));
        // Non-NaN values keep the partial_cmp order: -0.0 and 0.0 tie, broken by index.
        assert_eq!(desc_nan_last((-0.0, 1), (0.0, 2)), std::cmp::Ordering::Less);
        assert_eq!(
            desc_nan_last((0.0, 3), (-0.0, 2)),
            std::cmp::Ordering::Greater
        );
    }

    #[test]
    fn group_limit_keeps_best_groups_by_top2_sum() {
        // 4 groups of 3: top-2 sums are 1.1, 0.9, 1.7, 0.3 -> keep groups 2 and 0.
        let mut s = vec![1.0, 0.1, 0.0, 0.5, 0.4, 0.3, 0.9, 0.8, 0.1, 0.2, 0.1, 0.0];
        limit_groups(&mut s, 4, 2);
        assert_eq!(&s[..3], &[1.0, 0.1, 0.0]);
        assert!(s[3..6].iter().all(|v| *v == f32::NEG_INFINITY));
        assert_eq!(&s[6..9], &[0.9, 0.8, 0.1]);
        assert!(s[9..].iter().all(|v| *v == f32::NEG_INFINITY));
    }
}
