//! The MLA latent KV cache of one sequence: per layer and position, the normalized latent `c`
//! (`Lkv` values) and the roped shared key `k_rot` (`dr` values) — 576 floats a token a layer
//! for Kimi K2.5, instead of `2·H·128` for plain multi-head attention.

use crate::config::ModelConfig;
use crate::ModelError;

/// One sequence's cache over every layer.
#[derive(Debug, Clone)]
pub struct KvCache {
    /// `[layer][pos * (Lkv + dr)]`.
    layers: Vec<Vec<f32>>,
    stride: usize,
    kv_lora: usize,
    capacity: usize,
    len: usize,
}

impl KvCache {
    /// An empty cache that can hold `capacity` positions (allocated as it fills).
    pub fn new(cfg: &ModelConfig, capacity: usize) -> Self {
        Self::with_shape(cfg.n_layers, cfg.kv_lora_rank, cfg.qk_rope, capacity)
    }

    /// [`KvCache::new`] from the three sizes it needs.
    pub(crate) fn with_shape(
        n_layers: usize,
        kv_lora: usize,
        rope: usize,
        capacity: usize,
    ) -> Self {
        Self {
            layers: vec![Vec::new(); n_layers],
            stride: kv_lora + rope,
            kv_lora,
            capacity,
            len: 0,
        }
    }

    /// Positions stored (the next token's position).
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Most positions it may hold.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Bytes currently held.
    pub fn bytes(&self) -> usize {
        self.layers.iter().map(|l| l.len() * 4).sum()
    }

    /// Checks that `n` more positions fit.
    pub fn reserve(&self, n: usize) -> Result<(), ModelError> {
        if self.len + n > self.capacity {
            return Err(ModelError::InvalidInput(format!(
                "context full: {} cached + {n} new positions exceed the capacity of {} positions",
                self.len, self.capacity
            )));
        }
        Ok(())
    }

    /// Appends one position's `c` and `k_rot` to layer `l` (positions of a layer are appended in order).
    pub fn push(&mut self, l: usize, c: &[f32], k_rot: &[f32]) {
        let v = &mut self.layers[l];
        v.extend_from_slice(c);
        v.extend_from_slice(k_rot);
    }

    /// Marks `n` positions as appended to every layer.
    pub fn commit(&mut self, n: usize) {
        self.len += n;
    }

    /// Drops every position at or after `len` (e.g. after a failed step).
    pub fn truncate(&mut self, len: usize) {
        self.len = self.len.min(len);
        for v in &mut self.layers {
            v.truncate(self.len * self.stride);
        }
    }

    /// `(c, k_rot)` of position `pos` in layer `l`.
    pub fn get(&self, l: usize, pos: usize) -> (&[f32], &[f32]) {
        let row = &self.layers[l][pos * self.stride..(pos + 1) * self.stride];
        row.split_at(self.kv_lora)
    }

    /// Layers in the cache.
    pub fn n_layers(&self) -> usize {
        self.layers.len()
    }

    /// The stored rows of positions `positions` in layer `l` (`Lkv + dr` values a position),
    /// for copying a prefix out ([`crate::forward::PrefixCache`]).
    ///
    /// # Panics
    /// If `positions` reaches past [`KvCache::len`] or `l` is not a layer.
    pub fn rows(&self, l: usize, positions: std::ops::Range<usize>) -> &[f32] {
        assert!(positions.end <= self.len, "rows past the cached positions");
        &self.layers[l][positions.start * self.stride..positions.end * self.stride]
    }

    /// [`KvCache::rows`] including the positions this forward call appended to layer `l` but
    /// has not committed yet (attention reads its own new positions).
    pub(crate) fn layer_rows(&self, l: usize, positions: std::ops::Range<usize>) -> &[f32] {
        &self.layers[l][positions.start * self.stride..positions.end * self.stride]
    }

    /// Appends `n` positions given as each layer's rows (`layer_rows[l]` holds `n` rows of
    /// layer `l`, as [`KvCache::rows`] returns them). Checks everything before changing
    /// anything.
    pub fn extend_rows(&mut self, n: usize, layer_rows: &[&[f32]]) -> Result<(), ModelError> {
        self.reserve(n)?;
        if layer_rows.len() != self.layers.len() {
            return Err(ModelError::InvalidInput(format!(
                "cached prefix has {} layers, the model {}",
                layer_rows.len(),
                self.layers.len()
            )));
        }
        let want = n * self.stride;
        if let Some(bad) = layer_rows.iter().find(|rows| rows.len() != want) {
            return Err(ModelError::InvalidInput(format!(
                "cached prefix rows: {} values for {n} positions of {} values",
                bad.len(),
                self.stride
            )));
        }
        for (v, rows) in self.layers.iter_mut().zip(layer_rows) {
            v.truncate(self.len * self.stride);
            v.extend_from_slice(rows);
        }
        self.len += n;
        Ok(())
    }
}
