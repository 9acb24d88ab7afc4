//! The MLA latent KV cache of one sequence: per layer and position, the normalized latent `c`
//! (`Lkv` values) and the roped shared key `k_rot` (`dr` values) — 576 values a token a layer
//! for Kimi K2.5, instead of `2·H·128` for plain multi-head attention.
//!
//! Decides: the cache's bookkeeping (length, capacity, appending and truncating every layer).
//! Leaves the row encoding to [`moe_kernels::KvBuf`]: rows are stored in the cache's
//! [`KvType`] (f32, bf16, f16 or q8_0), each value rounded once when its row is pushed, and
//! read by attention in that type (the flash kernel converts a block at a time; Exact mode
//! widens a layer's rows for its two-pass reference, borrowing them when they are f32).

use std::borrow::Cow;

use moe_kernels::{KvBuf, KvRowShape, KvRows, KvType};

use super::layer_compute::DeviceKv;
use crate::config::ModelConfig;
use crate::model::Model;
use crate::ModelError;

/// One sequence's cache over every layer.
#[derive(Debug)]
pub struct KvCache {
    /// One buffer of `(c | k_rot)` rows per layer.
    layers: Vec<KvBuf>,
    shape: KvRowShape,
    kv_type: KvType,
    capacity: usize,
    len: usize,
    /// An attention device's copy of the rows ([`DeviceKv`]), told of every truncation.
    device: Option<Box<dyn DeviceKv>>,
}

impl Clone for KvCache {
    /// The rows, without the device copy (the clone's device gets its own on first use).
    fn clone(&self) -> Self {
        Self {
            layers: self.layers.clone(),
            shape: self.shape,
            kv_type: self.kv_type,
            capacity: self.capacity,
            len: self.len,
            device: None,
        }
    }
}

impl KvCache {
    /// An empty cache for `model` (its config and its [`Model::kv_type`]) that can hold
    /// `capacity` positions (allocated as it fills).
    pub fn for_model(model: &Model, capacity: usize) -> Self {
        Self::new(&model.cfg, model.kv_type(), capacity)
    }

    /// An empty cache storing `kv_type` rows that can hold `capacity` positions (allocated as
    /// it fills).
    pub fn new(cfg: &ModelConfig, kv_type: KvType, capacity: usize) -> Self {
        Self::with_shape(
            cfg.n_layers,
            KvRowShape {
                latent: cfg.kv_lora_rank,
                rope: cfg.qk_rope,
            },
            kv_type,
            capacity,
        )
    }

    /// [`KvCache::new`] from the sizes it needs.
    pub(crate) fn with_shape(
        n_layers: usize,
        shape: KvRowShape,
        kv_type: KvType,
        capacity: usize,
    ) -> Self {
        Self {
            layers: vec![KvBuf::new(kv_type, shape); n_layers],
            shape,
            kv_type,
            capacity,
            len: 0,
            device: None,
        }
    }

    /// Takes the attention device's copy of the rows out (to use it beside the cache's own
    /// rows); [`KvCache::set_device_kv`] puts it back.
    pub fn take_device_kv(&mut self) -> Option<Box<dyn DeviceKv>> {
        self.device.take()
    }

    /// Gives the cache an attention device's copy of its rows, dropped with the cache and
    /// told of every truncation.
    pub fn set_device_kv(&mut self, device: Box<dyn DeviceKv>) {
        self.device = Some(device);
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

    /// The element type of the stored rows.
    pub fn kv_type(&self) -> KvType {
        self.kv_type
    }

    /// The widths of a row (latent, rope key).
    pub fn row_shape(&self) -> KvRowShape {
        self.shape
    }

    /// Bytes one position takes in one layer.
    pub fn bytes_per_position_per_layer(&self) -> usize {
        self.kv_type.row_bytes(self.shape)
    }

    /// Bytes currently held.
    pub fn bytes(&self) -> usize {
        self.layers.iter().map(KvBuf::bytes).sum()
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

    /// Appends one position's `c` and `k_rot` to layer `l` (positions of a layer are appended
    /// in order), rounded to the cache's type.
    pub fn push(&mut self, l: usize, c: &[f32], k_rot: &[f32]) {
        self.layers[l].push(c, k_rot);
    }

    /// Marks `n` positions as appended to every layer.
    pub fn commit(&mut self, n: usize) {
        self.len += n;
    }

    /// Drops every position at or after `len` (e.g. after a failed step).
    pub fn truncate(&mut self, len: usize) {
        self.len = self.len.min(len);
        for v in &mut self.layers {
            v.truncate(self.len);
        }
        if let Some(d) = &mut self.device {
            d.truncate(self.len);
        }
    }

    /// `(c, k_rot)` of position `pos` in layer `l`, as f32 (as stored: the rounding happened
    /// when the row was pushed).
    ///
    /// # Panics
    /// If `pos` is not a position of layer `l`.
    pub fn get(&self, l: usize, pos: usize) -> (Vec<f32>, Vec<f32>) {
        let mut row = self.layers[l].rows(pos..pos + 1).to_f32().into_owned();
        let k_rot = row.split_off(self.shape.latent);
        (row, k_rot)
    }

    /// Layers in the cache.
    pub fn n_layers(&self) -> usize {
        self.layers.len()
    }

    /// The stored rows of positions `positions` in layer `l`, in the cache's type, for copying
    /// a prefix out ([`crate::forward::PrefixCache`]).
    ///
    /// # Panics
    /// If `positions` reaches past [`KvCache::len`] or `l` is not a layer.
    pub fn rows(&self, l: usize, positions: std::ops::Range<usize>) -> KvRows<'_> {
        assert!(positions.end <= self.len, "rows past the cached positions");
        self.layers[l].rows(positions)
    }

    /// [`KvCache::rows`] including the positions this forward call appended to layer `l` but
    /// has not committed yet (attention reads its own new positions).
    pub(crate) fn layer_rows(&self, l: usize, positions: std::ops::Range<usize>) -> KvRows<'_> {
        self.layers[l].rows(positions)
    }

    /// [`KvCache::layer_rows`] as f32 values (`Lkv + dr` a position): borrowed when the cache
    /// is f32, widened otherwise (what an attention device copies).
    ///
    /// # Panics
    /// If `positions` reaches past the rows layer `l` holds.
    pub fn layer_f32(&self, l: usize, positions: std::ops::Range<usize>) -> Cow<'_, [f32]> {
        self.layers[l].rows(positions).to_f32()
    }

    /// Appends `n` positions given as each layer's rows (`layer_rows[l]` holds `n` rows of
    /// layer `l`, as [`KvCache::rows`] returns them, in this cache's type and shape). Checks
    /// everything before changing anything.
    pub fn extend_rows(&mut self, n: usize, layer_rows: &[KvRows<'_>]) -> Result<(), ModelError> {
        self.reserve(n)?;
        if layer_rows.len() != self.layers.len() {
            return Err(ModelError::InvalidInput(format!(
                "cached prefix has {} layers, the model {}",
                layer_rows.len(),
                self.layers.len()
            )));
        }
        if let Some(bad) = layer_rows
            .iter()
            .find(|rows| rows.positions() != n || rows.shape() != self.shape)
        {
            return Err(ModelError::InvalidInput(format!(
                "cached prefix rows: {} positions of {}+{} values, expected {n} of {}+{}",
                bad.positions(),
                bad.shape().latent,
                bad.shape().rope,
                self.shape.latent,
                self.shape.rope
            )));
        }
        if let Some(bad) = layer_rows.iter().find(|r| r.kv_type() != self.kv_type) {
            return Err(ModelError::InvalidInput(format!(
                "cached prefix rows are {}, this cache stores {}",
                bad.kv_type(),
                self.kv_type
            )));
        }
        if let Some(d) = &mut self.device {
            d.truncate(self.len);
        }
        for (v, rows) in self.layers.iter_mut().zip(layer_rows) {
            v.truncate(self.len);
            v.extend(rows)
                .map_err(|e| ModelError::InvalidInput(e.to_string()))?;
        }
        self.len += n;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The bytes a position takes per layer at Kimi K2.5's MLA shape (512 + 64), per type:
    /// bf16 and f16 halve f32, q8_0 takes ~3.76x less; `bytes` counts what is held.
    #[test]
    fn cache_memory_per_token_per_layer() {
        let shape = KvRowShape {
            latent: 512,
            rope: 64,
        };
        let want = [
            (KvType::F32, 2304),
            (KvType::Bf16, 1152),
            (KvType::F16, 1152),
            (KvType::Q8_0, 612),
        ];
        for (ty, bytes) in want {
            let mut cache = KvCache::with_shape(2, shape, ty, 16);
            assert_eq!(cache.bytes_per_position_per_layer(), bytes, "{ty}");
            for l in 0..2 {
                for _ in 0..3 {
                    cache.push(l, &[0.5; 512], &[-0.25; 64]);
                }
            }
            cache.commit(3);
            assert_eq!(cache.bytes(), 2 * 3 * bytes, "{ty}");
            eprintln!(
                "kv {ty}: {bytes} bytes per token per layer ({:.2}x less than f32)",
                2304.0 / bytes as f64
            );
        }
    }
}
