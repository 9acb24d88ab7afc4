//! [`VulkanLayers`]: moe-model's [`LayerCompute`] on a Vulkan device, the router's share of
//! every layer: MLA attention (`attention.rs`) and the dense FFN or shared expert (`ffn.rs`),
//! over weights uploaded once (`attention_weights.rs`, `ffn_weights.rs`), and the output
//! head (`head.rs`). This file holds the device
//! state they share: the pipelines, one command buffer and the per-call scratch buffers
//! behind one lock (the forward pass calls one layer at a time), and the matvec over a
//! [`DeviceMat`] with the call's tokens as the routes of one matrix.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use moe_kernels::NumericMode;
use moe_model::forward::{KvCache, LayerCompute};
use moe_model::model::Model;
use moe_model::ModelError;

use crate::attention_weights::{AttentionWeights, LayerAttention};
use crate::commands::Commands;
use crate::device::{Buffer, Device};
use crate::device_mat::{record_matmul, DeviceMat, Uploader};
use crate::expert_weights::HostMemory;
use crate::ffn_weights::FfnWeights;
use crate::kernels::{Kernels, MATVEC_CHUNK_VALUES, QBLOCK_WORDS, ROUTE_TILE};
use crate::scratch::{ensure, u32_bytes};
use crate::tiles::TileMeta;
use crate::VulkanError;

/// Tells the [`crate::VulkanKv`]s of different [`VulkanLayers`] apart.
static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// Per-call buffers, grown on demand and reused. Every buffer a submission uses must be
/// ensured at its size for the submission before its first dispatch is recorded: `ensure`
/// replaces a buffer that is too small, and a recorded dispatch would then use freed memory.
#[derive(Default)]
pub(crate) struct Scratch {
    /// Input rows `[t, D]`.
    pub(crate) x: Option<Buffer>,
    /// One matvec input quantized (fast mode), reused by each in turn.
    pub(crate) xq: Option<Buffer>,
    /// Query LoRA `[t, q_lora]`.
    pub(crate) cq: Option<Buffer>,
    /// Queries `[t, H, qk]`.
    pub(crate) q: Option<Buffer>,
    /// `kv_a` output `[t, Lkv + dr]`.
    pub(crate) kv: Option<Buffer>,
    /// Rope table `[t, dr]` (cos, sin pairs).
    pub(crate) cs: Option<Buffer>,
    /// No-rope query parts, head-major `[H, t, dn]`.
    pub(crate) qn: Option<Buffer>,
    /// Absorbed queries `[H, t, Lkv]`.
    pub(crate) q_abs: Option<Buffer>,
    /// Softmax scratch.
    pub(crate) scores: Option<Buffer>,
    /// Context `[H, t, Lkv]`.
    pub(crate) ctx: Option<Buffer>,
    /// Per-head values `[H, t, dv]`.
    pub(crate) oh: Option<Buffer>,
    /// Values token-major `[t, H * dv]`.
    pub(crate) o: Option<Buffer>,
    /// Output `[t, D]`.
    pub(crate) out: Option<Buffer>,
    /// Logits `[t, vocab]`.
    pub(crate) logits: Option<Buffer>,
    /// FFN gate and up outputs `[t, F]` (SwiGLU in place in `g`).
    pub(crate) g: Option<Buffer>,
    pub(crate) u: Option<Buffer>,
    /// Tiles of the token routes (one matrix) and of the head routes (`k_b`, `v_b`).
    pub(crate) meta_tokens: Option<Buffer>,
    pub(crate) meta_heads: Option<Buffer>,
}

/// A router's (or single process's) share of every layer on a Vulkan device: MLA attention
/// and the dense FFNs and shared experts.
pub struct VulkanLayers {
    pub(crate) name: String,
    pub(crate) id: u64,
    pub(crate) weights: AttentionWeights,
    pub(crate) ffns: FfnWeights,
    /// `output.weight`, or why it stays on the CPU.
    pub(crate) head: Result<DeviceMat, String>,
    /// Bytes on the device, and of them imported from the file.
    uploaded: u64,
    imported: u64,
    pub(crate) kernels: Arc<Kernels>,
    pub(crate) route_tiles: bool,
    pub(crate) state: Mutex<(Commands, Scratch)>,
    pub(crate) device: Arc<Device>,
    /// The imported maps of the model file: dropped after the buffers above.
    _maps: Vec<memmap2::Mmap>,
}

impl std::fmt::Debug for VulkanLayers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VulkanLayers")
            .field("device", &self.device.info.name)
            .field("uploaded_bytes", &self.uploaded_bytes())
            .finish()
    }
}

impl VulkanLayers {
    /// Puts `model`'s attention weights, dense FFNs, shared experts and output head on
    /// `device` (imported from the model file where it can: [`HostMemory::Import`]) and
    /// builds the pipelines.
    pub fn new(device: Arc<Device>, model: &Model) -> Result<Self, ModelError> {
        Self::with_upload(device, model, HostMemory::Import)
    }

    /// As [`VulkanLayers::new`], the weights imported or copied as `host` says (as the
    /// experts' `--vulkan-memory`).
    pub fn with_upload(
        device: Arc<Device>,
        model: &Model,
        host: HostMemory,
    ) -> Result<Self, ModelError> {
        let mut up = Uploader::new(&device, model, host);
        let weights = AttentionWeights::upload(&mut up, model)?;
        let ffns = FfnWeights::upload(&mut up, model)?;
        let head = up.mat(&model.output).map_err(|e| e.to_string());
        let (uploaded, imported, maps) = (up.bytes, up.imported, up.maps);
        let kernels = Kernels::shared(&device)?;
        let commands = Commands::new(&device)?;
        Ok(Self {
            name: format!("vulkan ({})", device.info.name),
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            weights,
            ffns,
            head,
            uploaded,
            imported,
            kernels,
            route_tiles: !device.is_cpu(),
            state: Mutex::new((commands, Scratch::default())),
            device,
            _maps: maps,
        })
    }

    /// Whether a prompt's tokens share each weight read in tiles of up to [`ROUTE_TILE`]
    /// (as `VulkanCompute::with_route_tiles`; the same bits either way).
    pub fn with_route_tiles(mut self, on: bool) -> Self {
        self.route_tiles = on;
        self
    }

    /// Why the output head is computed on the CPU (it exceeds a device limit, or its type
    /// has no shader), or `None` where the device computes it.
    pub fn head_on_cpu(&self) -> Option<String> {
        self.head.as_ref().err().cloned()
    }

    /// Bytes of weights on the device (attention, dense FFNs, shared experts, the head).
    pub fn uploaded_bytes(&self) -> u64 {
        self.uploaded
    }

    /// Of [`VulkanLayers::uploaded_bytes`], those read in place from the model file.
    pub fn imported_bytes(&self) -> u64 {
        self.imported
    }

    /// The device.
    pub fn device(&self) -> &Arc<Device> {
        &self.device
    }

    pub(crate) fn attention_layer(
        &self,
        model: &Model,
        l: usize,
    ) -> Result<&LayerAttention, VulkanError> {
        let (Some(w), Some(lw)) = (self.weights.layers.get(l), model.layers.get(l)) else {
            return Err(VulkanError::InvalidInput(format!("no attention layer {l}")));
        };
        let a = &lw.attn;
        let same = w.q_b.name == a.q_b.name
            && w.output.name == a.output.name
            && w.k_b.name == a.k_b.name
            && w.q_b.buf.len >= a.q_b.bytes()
            && w.output.buf.len >= a.output.bytes()
            && w.q_a.is_some() == a.q_a.is_some();
        if !same {
            return Err(VulkanError::InvalidInput(format!(
                "layer {l} of this model is not the one whose attention was uploaded to the Vulkan device"
            )));
        }
        Ok(w)
    }
}

impl LayerCompute for VulkanLayers {
    fn name(&self) -> &str {
        &self.name
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }

    fn attention(
        &self,
        model: &Model,
        l: usize,
        x: &[f32],
        t: usize,
        cache: &mut KvCache,
        out: &mut [f32],
    ) -> Result<(), ModelError> {
        self.attention_on_device(model, l, x, t, cache, out)
    }

    fn ffn(&self, model: &Model, l: usize, h: &[f32], out: &mut [f32]) -> Result<(), ModelError> {
        self.ffn_on_device(model, l, h, out)
    }

    fn computes_head(&self) -> bool {
        self.head.is_ok()
    }

    fn head(&self, model: &Model, x: &[f32], out: &mut [f32]) -> Result<(), ModelError> {
        self.head_on_device(model, x, out)
    }
}

impl VulkanLayers {
    /// The device state, for one call at a time.
    pub(crate) fn lock(&self) -> Result<MutexGuard<'_, (Commands, Scratch)>, VulkanError> {
        self.state
            .lock()
            .map_err(|_| VulkanError::InvalidInput("a previous Vulkan call panicked".into()))
    }

    /// Whether `model`'s calls take the integer-dot shaders (its fast mode, on a device that
    /// has them).
    pub(crate) fn fast(&self, model: &Model) -> bool {
        model.mode() == NumericMode::Fast && self.kernels.has_fast()
    }

    /// The tiles of `t` token routes of one matrix (each reads its own row), uploaded.
    pub(crate) fn token_meta(&self, s: &mut Scratch, t: usize) -> Result<TileMeta, VulkanError> {
        let own: Vec<u32> = (0..t as u32).collect();
        let meta = TileMeta::new(&vec![0; t], &vec![0; t], &[&own], self.tile());
        ensure(
            &self.device,
            &mut s.meta_tokens,
            4 * meta.words.len(),
            "attention token tiles",
        )?
        .write(0, u32_bytes(&meta.words));
        Ok(meta)
    }

    pub(crate) fn tile(&self) -> usize {
        if self.route_tiles {
            ROUTE_TILE
        } else {
            1
        }
    }

    /// Room in `s.xq` for `values` activations quantized.
    pub(crate) fn ensure_quantized(
        &self,
        s: &mut Scratch,
        values: usize,
    ) -> Result<(), VulkanError> {
        let bytes = 4 * QBLOCK_WORDS * values.div_ceil(MATVEC_CHUNK_VALUES);
        ensure(&self.device, &mut s.xq, bytes, "attention quantized rows")?;
        Ok(())
    }

    /// Records `y = m · x` over every tile of `meta` ([`record_matmul`] on this device's
    /// pipelines).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn matmul(
        &self,
        commands: &mut Commands,
        m: &DeviceMat,
        bufs: [&Buffer; 4],
        meta: &TileMeta,
        matrix: usize,
        fast: bool,
    ) -> Result<(), VulkanError> {
        record_matmul(commands, &self.kernels, m, bufs, meta, matrix, fast)
    }
}

/// A scratch buffer that was ensured before use.
pub(crate) fn b(o: &Option<Buffer>) -> &Buffer {
    o.as_ref().expect("ensured")
}
