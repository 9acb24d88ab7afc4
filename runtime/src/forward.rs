//! The forward pass (spec §2.1): embedding, per layer MLA attention + dense or MoE FFN with
//! residuals, final norm, output head. f32 activations and accumulation throughout.
//!
//! ```text
//! ops.rs        rms_norm, swiglu, softmax, dot
//! rope.rs       YaRN frequencies, adjacent-pair rotation
//! kv_cache.rs   the MLA latent cache of one sequence
//! attention.rs  absorbed MLA attention
//! moe.rs        router, experts, ExpertBackend (local or remote experts)
//! ```
//! One call processes a batch of sequences, each with any number of new tokens (a prompt, or
//! one token when decoding): attention runs per sequence on its own cache, every FFN runs on
//! all tokens of the batch at once, so a MoE layer routes the whole batch in one step.

mod attention;
mod kv_cache;
pub mod moe;
mod ops;
mod rope;

pub use kv_cache::KvCache;
pub use moe::{apply_routes, ExpertBackend, LocalExperts, Route, Routing};
pub use rope::Rope;

use crate::model::Model;
use crate::RuntimeError;

/// New tokens of one sequence for a forward call.
#[derive(Debug)]
pub struct SeqInput<'a> {
    /// The sequence's cache; its length is the first new token's position.
    pub cache: &'a mut KvCache,
    /// New token ids.
    pub tokens: &'a [u32],
    /// Return logits for every new token (else only for the last).
    pub all_logits: bool,
}

/// Receives intermediate values (reference comparisons, routing statistics).
pub trait Observer {
    /// Hidden state `index` (0 = embeddings, i = after layer i-1, n_layers = final norm) of
    /// the batch, `[t, D]` over all sequences' tokens in order.
    fn hidden(&mut self, _index: usize, _rows: &[f32]) {}
    /// The routing of MoE layer `layer` for all tokens of the batch.
    fn routing(&mut self, _layer: usize, _routing: &Routing) {}
}

/// An observer that ignores everything.
#[derive(Debug, Default)]
pub struct NoObserver;
impl Observer for NoObserver {}

impl Model {
    /// Runs the batch and returns, per sequence, logits `[n, vocab]` (n = its new tokens, or 1).
    ///
    /// On error no cache is changed.
    pub fn forward(
        &self,
        batch: &mut [SeqInput<'_>],
        experts: &mut dyn ExpertBackend,
        obs: &mut dyn Observer,
    ) -> Result<Vec<Vec<f32>>, RuntimeError> {
        let lens: Vec<usize> = batch.iter().map(|s| s.cache.len()).collect();
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
    ) -> Result<Vec<Vec<f32>>, RuntimeError> {
        let c = &self.cfg;
        let d = c.n_embd;
        for s in batch.iter() {
            s.cache.reserve(s.tokens.len())?;
            if let Some(&bad) = s.tokens.iter().find(|&&t| t as usize >= c.vocab) {
                return Err(RuntimeError::InvalidInput(format!(
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
        obs.hidden(0, &x);

        let mut xn = vec![0f32; t_all * d];
        let mut y = vec![0f32; t_all * d];
        for (l, lw) in self.layers.iter().enumerate() {
            ops::rms_norm(&x, &lw.attn.norm, c.rms_eps, &mut xn);
            let mut start = 0;
            for s in batch.iter_mut() {
                let n = s.tokens.len();
                let rows = start * d..(start + n) * d;
                attention::attention(self, l, &xn[rows.clone()], n, s.cache, &mut y[rows])?;
                start += n;
            }
            ops::add_inplace(&mut x, &y);

            ops::rms_norm(&x, &lw.ffn_norm, c.rms_eps, &mut xn);
            y.fill(0.0);
            if let Some(dense) = &lw.dense {
                moe::dense_ffn(self, dense, &xn, t_all, &mut y)?;
            } else if let Some(mw) = &lw.moe {
                let routing = moe::route(self, mw, &xn, t_all)?;
                obs.routing(l, &routing);
                experts.begin(self, l, &xn, &routing)?;
                if let Some(shared) = &mw.shared {
                    moe::dense_ffn(self, shared, &xn, t_all, &mut y)?;
                }
                experts.finish(self, l, &mut y)?;
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
        ops::rms_norm(&x, &self.output_norm, c.rms_eps, &mut xn);
        obs.hidden(c.n_layers, &xn);
        let head = self.mat(&self.output)?;
        rows.into_iter()
            .map(|r| {
                let n = r.len();
                let mut logits = vec![0f32; n * c.vocab];
                head.matmul(&xn[r.start * d..r.end * d], n, &mut logits)?;
                Ok(logits)
            })
            .collect()
    }
}
