//! [`LayerCompute`]: the device that computes the router's share of each layer (its MLA
//! attention, and its dense FFN or its MoE's shared expert) and the output head, the seam a
//! GPU backend plugs into beside [`super::ExpertCompute`] (routed experts). Without one
//! ([`Model::layer_compute`] is `None`) they run on the CPU (`attention.rs`,
//! `attention_prompt.rs`, `ffn_region.rs`, the head's matmul).
//!
//! A device implementation keeps its own copy of each sequence's cache rows (the host
//! [`KvCache`] stays the record: prefix caching, truncation after a failed step and the
//! cluster read it) as a [`DeviceKv`] the cache carries and drops with itself; the cache tells
//! it when rows are dropped ([`DeviceKv::truncate`]), so a copy never serves stale rows.

use std::sync::Arc;

use super::KvCache;
use crate::model::{DenseFfn, Model};
use crate::ModelError;

/// Computes the router's share of each layer: attention, and the dense FFN or shared expert.
///
/// Attention's contract (as the CPU's `attention`): `x` is the normalized input `[t, D]` of `t` new
/// tokens at positions `cache.len()..cache.len() + t`; `out` receives `[t, D]`; the new positions'
/// rows are appended to layer `l` of `cache` ([`push_latent_rows`]), committed by the caller after
/// the last layer. The result must depend only on the tokens and the cache (not on how a prompt is
/// chunked into calls), in the absorbed form (the one exact mode computes).
pub trait LayerCompute: Send + Sync + std::fmt::Debug {
    /// A short name for logs, e.g. `vulkan (llvmpipe)`.
    fn name(&self) -> &str;

    /// For a backend to find its own type again (e.g. to record a shared expert into the
    /// routed experts' submission on the same device).
    fn as_any(&self) -> &dyn std::any::Any;

    /// The attention of layer `l` (see the trait's contract).
    fn attention(
        &self,
        model: &Model,
        l: usize,
        x: &[f32],
        t: usize,
        cache: &mut KvCache,
        out: &mut [f32],
    ) -> Result<(), ModelError>;

    /// `out = FFN(h)` for the `h.len() / D` rows of `h`, with layer `l`'s dense FFN, or its
    /// MoE's shared expert (`out` `[t, D]`, overwritten), as the CPU's `dense_ffn` computes.
    fn ffn(&self, model: &Model, l: usize, h: &[f32], out: &mut [f32]) -> Result<(), ModelError>;

    /// Whether this device computes the output head ([`LayerCompute::head`]); else the CPU
    /// does (e.g. a head past a device limit).
    fn computes_head(&self) -> bool {
        false
    }

    /// `out = output · x` for the rows of `x` (`[n, D]`, the final norm's output; `out`
    /// `[n, vocab]`), as the CPU's head matmul computes. Called only where
    /// [`LayerCompute::computes_head`].
    fn head(&self, model: &Model, x: &[f32], out: &mut [f32]) -> Result<(), ModelError> {
        let _ = (model, x, out);
        Err(ModelError::InvalidInput(format!(
            "{} does not compute the output head",
            self.name()
        )))
    }
}

/// Where the output head runs: the model's layer device if it computes it, else the CPU.
pub(crate) enum Head<'a> {
    Cpu(moe_kernels::QMatrix<'a>),
    Device(&'a dyn LayerCompute),
}

impl<'a> Head<'a> {
    pub(crate) fn of(model: &'a Model) -> Result<Self, ModelError> {
        match model.layer_compute() {
            Some(device) if device.computes_head() => Ok(Self::Device(device.as_ref())),
            _ => Ok(Self::Cpu(model.mat(&model.output)?)),
        }
    }

    /// The logits `[n, vocab]` of the `n` rows of `x`.
    pub(crate) fn logits(
        &self,
        model: &Model,
        x: &[f32],
        n: usize,
        out: &mut [f32],
    ) -> Result<(), ModelError> {
        match self {
            Self::Cpu(head) => Ok(head.matmul(x, n, out)?),
            Self::Device(device) => device.head(model, x, out),
        }
    }
}

/// `out = ffn(h)` (layer `l`'s dense FFN or shared expert, `out` overwritten): on the model's
/// [`LayerCompute`] device if it has one, else on the CPU. Every path that computes one calls
/// this (the forward pass's dense layers, the shared expert of each expert backend) unless it
/// computes the shared expert with the routed ones on that same device.
pub fn dense_or_shared_ffn(
    model: &Model,
    l: usize,
    ffn: &DenseFfn,
    h: &[f32],
    out: &mut [f32],
) -> Result<(), ModelError> {
    match model.layer_compute() {
        Some(device) => device.ffn(model, l, h, out),
        None => super::ffn_region::dense_ffn(model, ffn, h, h.len() / model.cfg.n_embd, out),
    }
}

impl Model {
    /// This model with its attention, dense FFNs and shared experts computed by `device` (a
    /// GPU backend, which uploaded those weights) instead of the CPU. Its prompt tokens then
    /// take the absorbed form in both modes ([`Model::prompt_form`]).
    pub fn with_layer_compute(mut self, device: Arc<dyn LayerCompute>) -> Self {
        self.layer_device = Some(Arc::new(device));
        self
    }

    /// The device computing attention, dense FFNs and shared experts, `None` for the CPU.
    pub fn layer_compute(&self) -> Option<&Arc<dyn LayerCompute>> {
        self.layer_device.as_ref().and_then(|a| a.downcast_ref())
    }
}

/// A device's copy of a [`KvCache`]'s rows, carried by the cache
/// ([`KvCache::take_device_kv`], [`KvCache::set_device_kv`]) and dropped with it.
pub trait DeviceKv: Send + Sync + std::fmt::Debug {
    /// Rows at positions `len` and later (of every layer) are no longer the cache's: the copy
    /// must not use them again.
    fn truncate(&mut self, len: usize);

    /// For the implementation to find its own type again.
    fn as_any_mut(&mut self) -> &mut dyn std::any::Any;
}

/// Appends the rows of `t` new positions (from `pos0`) to layer `l` of `cache`: `kv` holds
/// `kv_a(x)` (`[t, Lkv + dr]`), whose latent part is normalized and rope part rotated in
/// place, as the CPU attention does; a device implementation computes `kv_a` and hands the
/// rows here, so the host cache holds what the CPU path would store from them.
pub fn push_latent_rows(model: &Model, l: usize, kv: &mut [f32], pos0: usize, cache: &mut KvCache) {
    let c = &model.cfg;
    let w = &model.layers[l].attn;
    let (lkv, dr) = (c.kv_lora_rank, c.qk_rope);
    let mut latent = vec![0f32; lkv];
    for (i, row) in kv.chunks_exact_mut(lkv + dr).enumerate() {
        let (cpart, rpart) = row.split_at_mut(lkv);
        super::ops::rms_norm(
            cpart,
            &w.kv_a_norm,
            crate::config::LATENT_NORM_EPS,
            &mut latent,
        );
        model.rope.apply(rpart, pos0 + i);
        cpart.copy_from_slice(&latent);
        cache.push(l, cpart, rpart);
    }
}
