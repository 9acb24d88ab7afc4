//! The forward pass (spec §2.1): embedding, per layer MLA attention + dense or MoE FFN with
//! residuals, final norm, output head. f32 activations and accumulation throughout.
//!
//! ```text
//! ops.rs        rms_norm, swiglu, softmax, dot
//! rope.rs       YaRN frequencies, adjacent-pair rotation
//! kv_cache.rs   the MLA latent cache of one sequence
//! prefix_cache.rs  prompt prefixes' KV kept in blocks for reuse by later prompts
//! attention.rs  MLA attention: absorbed form (exact mode, generated tokens)
//! layer_compute.rs  LayerCompute, the device seam for attention, dense FFNs and shared
//!               experts (and DeviceKv)
//! attention_prompt.rs  fast mode's prompt tokens: the decompressed form; PromptForm
//! route.rs      Route: one (token, expert, weight) triple
//! moe.rs        router, ExpertBackend (local or remote experts)
//! ffn_region.rs SwiGLU FFNs on the CPU (routed experts, dense FFNs): one parallel region
//! expert_compute.rs  ExpertCompute, the device seam (CpuCompute runs ffn_region.rs)
//! ```
//! One call processes a batch of sequences, each with any number of new tokens (a prompt, or
//! one token when decoding): attention runs per sequence on its own cache, every FFN runs on
//! all tokens of the batch at once, so a MoE layer routes the whole batch in one step.
//!
//! Non-finite values (NaN, ±Inf from corrupt weights, an overflow or a faulty expert node)
//! never propagate silently: the embeddings, every attention and FFN output, the router's gate
//! logits and the output logits are scanned (one read per value, nothing changed, so the
//! numerics stay bit-identical), and the first non-finite one fails the call with
//! [`ModelError::NonFinite`] naming the layer and the batch rows that hold them.

mod attention;
mod attention_prompt;
mod expert_compute;
mod ffn_region;
mod kv_cache;
mod layer_compute;
pub mod moe;
mod ops;
mod prefix_cache;
mod route;

pub use attention_prompt::{PromptForm, FORM_GROUP_TOKENS};
pub use expert_compute::{ComputeHandle, CpuCompute, ExpertCompute, LocalExperts};
pub use kv_cache::KvCache;
pub use layer_compute::{dense_or_shared_ffn, push_latent_rows, DeviceKv, LayerCompute};
pub use moe::{ExpertBackend, Route, Routing};
pub use prefix_cache::{PrefixCache, Reused, PREFIX_BLOCK_TOKENS};

use crate::model::Model;
use crate::ModelError;

/// New tokens of one sequence for a forward call.
#[derive(Debug)]
pub struct SeqInput<'a> {
    /// The sequence's cache; its length is the first new token's position.
    pub cache: &'a mut KvCache,
    /// New token ids.
    pub tokens: &'a [u32],
    /// Return logits for every new token (else only for the last).
    pub all_logits: bool,
    /// What the new tokens are: it picks the attention form in fast mode.
    pub kind: TokenKind,
}

/// What a forward call's new tokens are. In fast mode it picks the form of their attention
/// (exact mode always computes the absorbed form, the reference): prompt tokens (and context
/// prefilled before a test) are computed in the decompressed form (`attention_prompt.rs`:
/// fewer multiply-adds per scored position, with the keys and values decompressed once per
/// chunk) except a short tail at the prompt's end ([`PromptForm`]); generated and draft
/// tokens in the absorbed form (one latent row read per position, the cheapest for few
/// tokens). The form is a function of the kind, the position and the prompt's length only,
/// never of how many tokens a call carries, so a prompt gives the same bits however it is
/// chunked, a prefix restored from the prefix cache holds what a cold run computes (the cache
/// keeps only [`PromptForm::reusable`] positions), and a verified draft the bits of plain
/// decoding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenKind {
    /// Prompt (or prefilled context) tokens of a prompt of `len` tokens (the position after
    /// its last token; at least the end of the call's tokens).
    Prompt {
        /// The whole prompt's length.
        len: usize,
    },
    /// Generated tokens: decode steps and speculative drafts.
    Generated,
}

/// Receives intermediate values (reference comparisons, routing statistics).
pub trait Observer: Send {
    /// Hidden state `index` (0 = embeddings, i = after layer i-1, n_layers = final norm) of
    /// the batch, `[t, D]` over all sequences' tokens in order.
    fn hidden(&mut self, _index: usize, _rows: &[f32]) {}
    /// The routing of MoE layer `layer` for all tokens of the batch.
    fn routing(&mut self, _layer: usize, _routing: &Routing) {}
    /// Whether this observer needs every row of the last layer: without one, the last
    /// layer's FFN runs only on the rows whose logits are wanted (their logits are the same
    /// bits; the other rows' final hidden states and last-layer routing are then not
    /// computed).
    fn needs_every_row(&self) -> bool {
        true
    }
}

/// An observer that ignores everything.
#[derive(Debug, Default)]
pub struct NoObserver;
impl Observer for NoObserver {
    fn needs_every_row(&self) -> bool {
        false
    }
}

/// The rows of `values` (`[t, width]`) holding a NaN or an infinity, ascending, and the first
/// such value; `None` when every value is finite. Only reads `values`.
pub fn non_finite_rows(values: &[f32], width: usize) -> Option<(Vec<usize>, f32)> {
    // The common case: one branch-free pass (vectorizes), no allocation.
    if values.iter().fold(true, |ok, v| ok & v.is_finite()) {
        return None;
    }
    let mut rows = Vec::new();
    let mut first = None;
    for (r, row) in values.chunks(width.max(1)).enumerate() {
        if let Some(&v) = row.iter().find(|v| !v.is_finite()) {
            first.get_or_insert(v);
            rows.push(r);
        }
    }
    first.map(|v| (rows, v))
}

/// `Ok` when every value of `values` (`[t, width]`) is finite, else a
/// [`ModelError::NonFinite`] naming `what()` and the offending rows, counted from `first_row`.
pub fn check_finite(
    values: &[f32],
    width: usize,
    first_row: usize,
    what: impl FnOnce() -> String,
) -> Result<(), ModelError> {
    match non_finite_rows(values, width) {
        None => Ok(()),
        Some((rows, value)) => Err(ModelError::NonFinite {
            what: what(),
            value,
            rows: rows.into_iter().map(|r| r + first_row).collect(),
        }),
    }
}

/// `e` with the rows of a [`ModelError::NonFinite`] mapped through `batch_rows` (row `i` of
/// the computed rows is batch row `batch_rows[i]`).
fn in_batch_rows(e: ModelError, batch_rows: &[usize]) -> ModelError {
    match e {
        ModelError::NonFinite { what, value, rows } => ModelError::NonFinite {
            what,
            value,
            rows: rows
                .into_iter()
                .map(|r| batch_rows.get(r).copied().unwrap_or(r))
                .collect(),
        },
        other => other,
    }
}

impl Model {
    /// Which prompt tokens this model's forward pass computes in the decompressed form.
    pub fn prompt_form(&self) -> PromptForm {
        if self.mode() == moe_kernels::NumericMode::Fast
            && self.k_b_transposed(0, 0).is_some()
            && self.layer_compute().is_none()
        {
            PromptForm::Decompressed {
                min_tail: attention_prompt::Dims::of(&self.cfg).decompress_min_rows(),
            }
        } else {
            PromptForm::Absorbed
        }
    }

    /// Runs the batch and returns, per sequence, logits `[n, vocab]` (n = its new tokens, or 1).
    ///
    /// On error no cache is changed.
    pub fn forward(
        &self,
        batch: &mut [SeqInput<'_>],
        experts: &mut dyn ExpertBackend,
        obs: &mut dyn Observer,
    ) -> Result<Vec<Vec<f32>>, ModelError> {
        let lens: Vec<usize> = batch.iter().map(|s| s.cache.len()).collect();
        // The pass runs on the calling thread; its parallel regions on the compute team
        // (moe_kernels' team.rs), whose members spin between regions.
        let r = self.forward_inner(batch, experts, obs);
        if r.is_err() {
            for (s, &len) in batch.iter_mut().zip(&lens) {
                s.cache.truncate(len);
            }
        }
        r
    }

    fn forward_inner(
        &self,
        batch: &mut [SeqInput<'_>],
        experts: &mut dyn ExpertBackend,
        obs: &mut dyn Observer,
    ) -> Result<Vec<Vec<f32>>, ModelError> {
        let c = &self.cfg;
        let d = c.n_embd;
        for s in batch.iter() {
            let end = s.cache.len() + s.tokens.len();
            if let TokenKind::Prompt { len } = s.kind {
                if len < end {
                    return Err(ModelError::InvalidInput(format!(
                        "prompt tokens up to position {end} of a prompt of {len}"
                    )));
                }
            }
            s.cache.reserve(s.tokens.len())?;
            if let Some(&bad) = s.tokens.iter().find(|&&t| t as usize >= c.vocab) {
                return Err(ModelError::InvalidInput(format!(
                    "token id {bad} is outside the vocabulary of {}",
                    c.vocab
                )));
            }
        }
        let t_all: usize = batch.iter().map(|s| s.tokens.len()).sum();
        let mut x = vec![0f32; t_all * d];
        let embd = self.mat(&self.tok_embd)?;
        for (row, &tok) in x
            .chunks_exact_mut(d)
            .zip(batch.iter().flat_map(|s| s.tokens.iter()))
        {
            embd.dequantize_row(tok as usize, row)?;
        }
        check_finite(&x, d, 0, || "the token embeddings".into())?;
        obs.hidden(0, &x);

        // The rows whose logits are wanted, per sequence.
        let mut rows = Vec::new();
        let mut start = 0;
        for s in batch.iter() {
            let n = s.tokens.len();
            let first = if s.all_logits {
                start
            } else {
                start + n.saturating_sub(1)
            };
            rows.push(first..start + n);
            start += n;
        }
        // The batch row of each row of `x` (all of them until the last layer's FFN).
        let mut batch_rows: Vec<usize> = (0..t_all).collect();

        let mut xn = vec![0f32; t_all * d];
        let mut y = vec![0f32; t_all * d];
        let mut t_all = t_all;
        for (l, lw) in self.layers.iter().enumerate() {
            ops::rms_norm(&x, &lw.attn.norm, c.rms_eps, &mut xn);
            let mut start = 0;
            for s in batch.iter_mut() {
                let n = s.tokens.len();
                let rows = start * d..(start + n) * d;
                let (x_s, y_s) = (&xn[rows.clone()], &mut y[rows]);
                match self.layer_compute() {
                    Some(dev) => dev.attention(self, l, x_s, n, s.cache, y_s)?,
                    None => attention::attention(self, l, x_s, n, s.cache, s.kind, y_s)?,
                }
                start += n;
            }
            check_finite(&y, d, 0, || format!("the attention output of layer {l}"))?;
            ops::add_inplace(&mut x, &y);

            // The last layer's FFN feeds only the logits: computed on their rows alone (as
            // llama.cpp does), unless the observer needs every row. The cache already holds
            // every row's keys and values.
            let kept: usize = rows.iter().map(|r| r.len()).sum();
            if l + 1 == c.n_layers && kept < t_all && !obs.needs_every_row() {
                let keep: Vec<usize> = rows.iter().flat_map(|r| r.clone()).collect();
                x = keep
                    .iter()
                    .flat_map(|&r| x[r * d..(r + 1) * d].iter().copied())
                    .collect();
                let mut at = 0;
                for r in rows.iter_mut() {
                    *r = at..at + r.len();
                    at += r.len();
                }
                batch_rows = keep;
                t_all = batch_rows.len();
                xn.truncate(t_all * d);
                y.truncate(t_all * d);
            }

            ops::rms_norm(&x, &lw.ffn_norm, c.rms_eps, &mut xn);
            y.fill(0.0);
            // Non-finite rows are named as batch rows (the last layer may have fewer).
            let in_batch = |e| in_batch_rows(e, &batch_rows);
            if let Some(dense) = &lw.dense {
                layer_compute::dense_or_shared_ffn(self, l, dense, &xn, &mut y)?;
                check_finite(&y, d, 0, || format!("the dense FFN output of layer {l}"))
                    .map_err(in_batch)?;
            } else if let Some(mw) = &lw.moe {
                let routing = moe::route(self, mw, l, &xn, t_all).map_err(in_batch)?;
                obs.routing(l, &routing);
                experts.begin(self, l, &xn, &routing)?;
                experts.finish_with_shared(self, l, mw.shared.as_ref(), &xn, &mut y)?;
                check_finite(&y, d, 0, || format!("the MoE output of layer {l}"))
                    .map_err(in_batch)?;
            }
            ops::add_inplace(&mut x, &y);
            if l + 1 < c.n_layers {
                obs.hidden(l + 1, &x);
            }
        }
        for s in batch.iter_mut() {
            s.cache.commit(s.tokens.len());
        }

        // Final norm and output head, only on the rows whose logits are wanted.
        ops::rms_norm(&x, &self.output_norm, c.rms_eps, &mut xn);
        obs.hidden(c.n_layers, &xn);
        let head = layer_compute::Head::of(self)?;
        let mut out = Vec::with_capacity(rows.len());
        // Every sequence's logits are checked, so one error names all rows at fault.
        let (mut bad, mut first_bad) = (Vec::new(), None);
        for r in rows {
            let n = r.len();
            let mut logits = vec![0f32; n * c.vocab];
            head.logits(self, &xn[r.start * d..r.end * d], n, &mut logits)?;
            if let Some((rs, v)) = non_finite_rows(&logits, c.vocab) {
                first_bad.get_or_insert(v);
                bad.extend(rs.into_iter().map(|i| batch_rows[r.start + i]));
            }
            out.push(logits);
        }
        match first_bad {
            None => Ok(out),
            Some(value) => Err(ModelError::NonFinite {
                what: "the output logits".into(),
                value,
                rows: bad,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{check_finite, non_finite_rows};
    use crate::ModelError;

    #[test]
    fn non_finite_rows_names_every_row_and_the_first_value() {
        let mut v = vec![0.5f32; 4 * 3];
        assert_eq!(non_finite_rows(&v, 3), None);
        v[4] = f32::NEG_INFINITY;
        v[10] = f32::NAN;
        v[11] = f32::INFINITY;
        let (rows, first) = non_finite_rows(&v, 3).unwrap();
        assert_eq!(rows, vec![1, 3]);
        assert_eq!(first, f32::NEG_INFINITY);
        match check_finite(&v, 3, 10, || "the attention output of layer 2".into()) {
            Err(e @ ModelError::NonFinite { .. }) => {
                let ModelError::NonFinite { ref rows, .. } = e else {
                    unreachable!()
                };
                assert_eq!(rows, &vec![11, 13]);
                let msg = e.to_string();
                assert!(
                    msg.starts_with("non-finite values (-inf) in the attention output of layer 2"),
                    "{msg}"
                );
            }
            other => panic!("{other:?}"),
        }
    }
}
