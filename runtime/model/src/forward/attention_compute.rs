//! [`AttentionCompute`]: the device that computes a layer's MLA attention, the seam a GPU
//! backend plugs into beside [`super::ExpertCompute`]. Without one ([`Model::attention_compute`]
//! is `None`) attention runs on the CPU (`attention.rs`, `attention_prompt.rs`).
//!
//! A device implementation keeps its own copy of each sequence's cache rows (the host
//! [`KvCache`] stays the record: prefix caching, truncation after a failed step and the
//! cluster read it) as a [`DeviceKv`] the cache carries and drops with itself; the cache tells
//! it when rows are dropped ([`DeviceKv::truncate`]), so a copy never serves stale rows.

use std::sync::Arc;

use super::KvCache;
use crate::model::Model;
use crate::ModelError;

/// Computes the MLA attention of one layer for the new tokens of one sequence.
///
/// Contract (as the CPU's `attention`): `x` is the normalized input `[t, D]` of `t` new tokens
/// at positions `cache.len()..cache.len() + t`; `out` receives `[t, D]`; the new positions'
/// rows are appended to layer `l` of `cache` ([`push_latent_rows`]), committed by the caller
/// after the last layer. The result must depend only on the tokens and the cache (not on how
/// a prompt is chunked into calls), in the absorbed form (the one exact mode computes).
pub trait AttentionCompute: Send + Sync + std::fmt::Debug {
    /// A short name for logs, e.g. `vulkan (llvmpipe)`.
    fn name(&self) -> &str;

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
}

impl Model {
    /// This model with its attention computed by `device` (a GPU backend, which uploaded this
    /// model's attention weights) instead of the CPU. Its prompt tokens then take the absorbed
    /// form in both modes ([`Model::prompt_form`]).
    pub fn with_attention_compute(mut self, device: Arc<dyn AttentionCompute>) -> Self {
        self.attention = Some(Arc::new(device));
        self
    }

    /// The device computing attention, `None` for the CPU.
    pub fn attention_compute(&self) -> Option<&Arc<dyn AttentionCompute>> {
        self.attention.as_ref().and_then(|a| a.downcast_ref())
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
