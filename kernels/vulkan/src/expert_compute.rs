//! [`VulkanCompute`]: moe-model's [`ExpertCompute`] on a Vulkan device. The node's experts are
//! uploaded once at construction ([`ExpertWeights`]); each `apply_routes` call then
//!
//! 1. groups the routes by expert on the host (ascending expert, tokens in order: the CPU's
//!    order), cuts each expert's routes into tiles of up to [`ROUTE_TILE`] (`tiles.rs`; one
//!    route per tile on a CPU device, [`VulkanCompute::with_route_tiles`]), and uploads the token rows once (not a copy per route), each route's
//!    expert offsets, token and weight, the tiles and the per-token route lists;
//! 2. records gate and up matvecs over all tiles (one dispatch per weight chunk; a tile's
//!    routes read each weight once, each its own token's row), SwiGLU, the down matvec, and
//!    the weighted add into the caller's `out` rows (ascending expert per token, as the CPU
//!    adds them);
//! 3. submits once, waits, and reads `out` back.
//!
//! With the model's layers on a [`VulkanLayers`] of the same device, a MoE layer's shared
//! expert is recorded first into the same submission (gate, up, SwiGLU and down over the
//! layers' uploaded weights, the down matvec writing the accumulator the routes then add
//! to): one host round trip for both, the bits of the two computed apart.
//!
//! A route's result does not depend on the other routes of its call (its tile's size
//! changes no summation order), so a prompt's experts give bit for bit what its tokens
//! computed one at a time give.
//!
//! The numeric mode is the calling model's ([`Model::mode`]), per call:
//!
//! - **Exact**: f32 activations over the dequantized weight blocks (`matvec.comp`), so
//!   results match the CPU's exact mode to rounding (summation order inside a dot product
//!   differs), not bit for bit.
//! - **Fast**: the token rows, and the SwiGLU output before the down matvec, are
//!   quantized on the device (`quantize.comp`: per 32 values int8 codes, an f32 scale
//!   `amax / 127` and the codes' 16-value sums), and the matvecs of the quantized types
//!   (Q8_0, Q2_K..Q6_K, IQ4_NL, IQ4_XS) take integer dot products of the weight codes with
//!   them (`matvec_fast.comp`, `dotPacked4x8AccSatEXT`), applying the weight and activation
//!   scales in f32 per 32 values. F32, F16 and BF16 stacks keep the f32 matvec (as the CPU's
//!   fast mode computes them exactly). The CPU's fast mode quantizes the k-quants' and
//!   IQ4_XS' activations per 256 values, this backend per 32 (finer, so at least as close
//!   to Exact; for Q8_0 and IQ4_NL the same blocks), so Fast results agree with the CPU's
//!   Fast in faithfulness, not value for value. On a device without
//!   `shaderIntegerDotProduct` the fast mode falls back to the exact shaders
//!   ([`VulkanCompute::has_fast_shaders`] says which).
//!
//! The trait fits as it is: the upload happens in [`VulkanCompute::new`] (the model is given
//! there), and device failures come back as [`ModelError::Backend`].

use std::sync::{Arc, Mutex};

use moe_kernels::NumericMode;
use moe_model::forward::{dense_or_shared_ffn, ExpertCompute, Route};
use moe_model::model::{DenseFfn, Model};
use moe_model::ModelError;

use crate::commands::Commands;
use crate::device::{Buffer, Device};
use crate::device_mat::record_matmul;
use crate::expert_weights::{
    ExpertStack, ExpertWeights, HostMemory, LayerStacks, Slot, CHUNK_BYTES_MAX,
};
use crate::ffn_weights::LayerFfn;
use crate::kernels::{Kernel, Kernels, MATVEC_CHUNK_VALUES, QBLOCK_WORDS, ROUTE_TILE};
use crate::layers::VulkanLayers;
use crate::scratch::{ensure, f32_bytes, read_f32, u32_bytes};
use crate::tiles::{record_tiles, TileMeta};
use crate::VulkanError;

/// Input kinds of the tiles' metadata: gate and up read the route's token row, down the
/// route's own SwiGLU row.
const INPUT_TOKEN: usize = 0;
const INPUT_ROUTE: usize = 1;

/// Routed experts on a Vulkan device.
pub struct VulkanCompute {
    name: String,
    weights: ExpertWeights,
    kernels: Arc<Kernels>,
    /// Tiles of up to [`ROUTE_TILE`] routes (else one route per tile): see
    /// [`VulkanCompute::with_route_tiles`].
    route_tiles: bool,
    state: Mutex<Scratch>,
    device: Arc<Device>,
}

impl std::fmt::Debug for VulkanCompute {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VulkanCompute")
            .field("device", &self.device.info.name)
            .field("uploaded_bytes", &self.weights.bytes)
            .finish()
    }
}

/// Per-call buffers, grown on demand and reused.
struct Scratch {
    commands: Commands,
    /// The token rows `[T, D]`.
    x: Option<Buffer>,
    /// The token rows quantized (fast mode), `[T, D / 32]` blocks.
    xq: Option<Buffer>,
    /// The SwiGLU output quantized (fast mode), `[R, F / 32]` blocks.
    gq: Option<Buffer>,
    /// Gate outputs, then SwiGLU `[R, F]`.
    g: Option<Buffer>,
    /// Up outputs `[R, F]`.
    u: Option<Buffer>,
    /// Down outputs `[R, D]`.
    y: Option<Buffer>,
    /// The tiles' metadata ([`TileMeta`]): each route's gate, up and down matrix offsets,
    /// its token, itself (the down matvec's input row), the tile starts.
    meta: Option<Buffer>,
    /// Route weights `[R]`.
    route_w: Option<Buffer>,
    /// Token starts in `tok_routes` `[T + 1]`.
    tok_start: Option<Buffer>,
    /// Route indices grouped by token `[R]`.
    tok_routes: Option<Buffer>,
    /// The accumulator `[T, D]`.
    out: Option<Buffer>,
    /// The shared expert's, when it is recorded with the routes.
    shared: SharedScratch,
}

/// The shared expert's buffers: gate and up outputs `[T, F_s]` (SwiGLU in place in `g`), its
/// quantized inputs (fast mode; the token rows, then the SwiGLU output), the tiles of its
/// `T` token routes.
#[derive(Default)]
struct SharedScratch {
    g: Option<Buffer>,
    u: Option<Buffer>,
    q: Option<Buffer>,
    meta: Option<Buffer>,
}

impl VulkanCompute {
    /// Uploads `model`'s mapped experts to `device` and builds the pipelines.
    pub fn new(device: Arc<Device>, model: &Model) -> Result<Self, ModelError> {
        Self::with_chunk_bytes(device, model, CHUNK_BYTES_MAX)
    }

    /// As [`VulkanCompute::new`], with expert chunks of at most `chunk_bytes_max` bytes (tests
    /// use a small limit to cover stacks split over several buffers).
    pub fn with_chunk_bytes(
        device: Arc<Device>,
        model: &Model,
        chunk_bytes_max: u64,
    ) -> Result<Self, ModelError> {
        Self::with_upload(device, model, chunk_bytes_max, HostMemory::Import)
    }

    /// As [`VulkanCompute::with_chunk_bytes`], saying how the weights get to the device:
    /// imported from maps of the model file where the device can, or always copied.
    pub fn with_upload(
        device: Arc<Device>,
        model: &Model,
        chunk_bytes_max: u64,
        host: HostMemory,
    ) -> Result<Self, ModelError> {
        let weights = ExpertWeights::upload(&device, model, chunk_bytes_max, host)?;
        let kernels = Kernels::shared(&device)?;
        let commands = Commands::new(&device)?;
        Ok(Self {
            name: format!("vulkan ({})", device.info.name),
            weights,
            kernels,
            route_tiles: !device.is_cpu(),
            state: Mutex::new(Scratch {
                commands,
                x: None,
                xq: None,
                gq: None,
                g: None,
                u: None,
                y: None,
                meta: None,
                route_w: None,
                tok_start: None,
                tok_routes: None,
                out: None,
                shared: SharedScratch::default(),
            }),
            device,
        })
    }

    /// Whether a call's routes to one expert are computed in tiles of up to [`ROUTE_TILE`]
    /// routes that share each weight read (the default on GPUs), or one route per workgroup
    /// (the default on a CPU device such as lavapipe, whose caches already share the reads
    /// between workgroups and which runs the tiled shaders 2x slower: `bench --backend
    /// vulkan` pp128 5.3 against 11.4 t/s there). Results are the same bit for bit.
    pub fn with_route_tiles(mut self, on: bool) -> Self {
        self.route_tiles = on;
        self
    }

    /// Whether routes are computed in tiles ([`VulkanCompute::with_route_tiles`]).
    pub fn route_tiles(&self) -> bool {
        self.route_tiles
    }

    /// Bytes of expert weights on the device (imported or copied).
    pub fn uploaded_bytes(&self) -> u64 {
        self.weights.bytes
    }

    /// Of [`VulkanCompute::uploaded_bytes`], those the device reads in place from maps of the
    /// model file (host-memory import) rather than from a copy.
    pub fn imported_bytes(&self) -> u64 {
        self.weights.imported_bytes
    }

    /// Whether [`NumericMode::Fast`] runs the integer-dot shaders here: false on a device
    /// without `shaderIntegerDotProduct`, where the fast mode computes with the exact shaders.
    pub fn has_fast_shaders(&self) -> bool {
        self.kernels.has_fast()
    }

    /// The device.
    pub fn device(&self) -> &Arc<Device> {
        &self.device
    }

    fn layer(&self, model: &Model, layer: usize) -> Result<&LayerStacks, VulkanError> {
        let stacks = self
            .weights
            .layers
            .get(layer)
            .and_then(Option::as_ref)
            .ok_or_else(|| {
                VulkanError::InvalidInput(format!("layer {layer} is not a MoE layer"))
            })?;
        let moe = model.layers.get(layer).and_then(|l| l.moe.as_ref());
        let same = moe.is_some_and(|m| {
            m.gate_exps.name == stacks.gate.name
                && m.up_exps.name == stacks.up.name
                && m.down_exps.name == stacks.down.name
                && m.gate_exps.expert_bytes() == stacks.gate.expert_bytes
                && m.down_exps.expert_bytes() == stacks.down.expert_bytes
        });
        if !same {
            return Err(VulkanError::InvalidInput(format!(
                "layer {layer} of this model is not the one uploaded to the Vulkan device"
            )));
        }
        Ok(stacks)
    }
}

/// `slot` of expert `e` in `stack`, or an error naming both.
fn slot(stack: &ExpertStack, e: usize, layer: usize) -> Result<Slot, VulkanError> {
    stack.slots.get(e).copied().flatten().ok_or_else(|| {
        VulkanError::InvalidInput(format!(
            "expert {e} of layer {layer} ({}) is not on the Vulkan device: it was not mapped when the experts were uploaded",
            stack.name
        ))
    })
}

impl ExpertCompute for VulkanCompute {
    fn name(&self) -> &str {
        &self.name
    }

    fn apply_routes(
        &self,
        model: &Model,
        layer: usize,
        h: &[f32],
        routes: &[Route],
        out: &mut [f32],
    ) -> Result<(), ModelError> {
        self.routed(model, layer, h, routes, out, None)
    }

    /// With the model's layers on a [`VulkanLayers`] of this same device, the shared expert
    /// is recorded into the routed experts' submission, its output written where the routes
    /// then add theirs: one host round trip for both, the bits of the two calls apart.
    fn apply_routes_with_shared(
        &self,
        model: &Model,
        layer: usize,
        h: &[f32],
        shared: Option<&DenseFfn>,
        routes: &[Route],
        out: &mut [f32],
    ) -> Result<(), ModelError> {
        let layers = model
            .layer_compute()
            .and_then(|d| d.as_any().downcast_ref::<VulkanLayers>())
            .filter(|l| Arc::ptr_eq(l.device(), &self.device));
        if let (Some(_), Some(layers), false) = (shared, layers, routes.is_empty()) {
            let ffn = layers.ffn_layer(model, layer)?;
            return self.routed(model, layer, h, routes, out, Some(ffn));
        }
        if let Some(ffn) = shared {
            dense_or_shared_ffn(model, layer, ffn, h, out)?;
        }
        self.routed(model, layer, h, routes, out, None)
    }
}

impl VulkanCompute {
    /// `out += Σ routes` (`out = shared(h) + Σ routes` with `shared`, `out` zero on entry).
    fn routed(
        &self,
        model: &Model,
        layer: usize,
        h: &[f32],
        routes: &[Route],
        out: &mut [f32],
        shared: Option<&LayerFfn>,
    ) -> Result<(), ModelError> {
        let stacks = self.layer(model, layer)?;
        let d = model.cfg.n_embd;
        let n_experts = model.cfg.n_experts;
        if out.len() != h.len() || !h.len().is_multiple_of(d) {
            return Err(ModelError::InvalidInput(format!(
                "routed output has {} values, input {} (rows of {d})",
                out.len(),
                h.len()
            )));
        }
        let n_tokens = h.len() / d;
        for r in routes {
            let (t, e) = (r.token as usize, r.expert as usize);
            if e >= n_experts || t >= n_tokens {
                return Err(ModelError::InvalidInput(format!(
                    "route (token {t}, expert {e}) out of range ({n_tokens} tokens, {n_experts} experts in layer {layer})"
                )));
            }
        }
        if routes.is_empty() {
            return Ok(());
        }
        let (gate, up, down) = (&stacks.gate, &stacks.up, &stacks.down);
        let f = gate.rows;
        if gate.cols != d || up.cols != d || up.rows != f || down.rows != d || down.cols != f {
            return Err(VulkanError::InvalidInput(format!(
                "layer {layer}: expert shapes gate {}x{}, up {}x{}, down {}x{} do not fit hidden size {d}",
                gate.rows, gate.cols, up.rows, up.cols, down.rows, down.cols
            ))
            .into());
        }
        let mut state = self
            .state
            .lock()
            .map_err(|_| VulkanError::InvalidInput("a previous Vulkan call panicked".into()))?;
        let fast = model.mode() == NumericMode::Fast;
        self.run(
            &mut state, stacks, layer, h, routes, out, n_tokens, d, f, fast, shared,
        )
        .map_err(ModelError::from)
    }

    /// The device part of `apply_routes` (inputs checked by the caller).
    #[allow(clippy::too_many_arguments)]
    fn run(
        &self,
        s: &mut Scratch,
        stacks: &LayerStacks,
        layer: usize,
        h: &[f32],
        routes: &[Route],
        out: &mut [f32],
        n_tokens: usize,
        d: usize,
        f: usize,
        fast: bool,
        shared: Option<&LayerFfn>,
    ) -> Result<(), VulkanError> {
        let dev = &self.device;
        let n_routes = routes.len();
        // Route order: ascending expert, then as given (token-major): the CPU's grouping.
        let mut order: Vec<usize> = (0..n_routes).collect();
        order.sort_by_key(|&i| routes[i].expert);
        let stacks3 = [&stacks.gate, &stacks.up, &stacks.down];
        let mut slots = vec![
            Slot {
                chunk: 0,
                offset: 0
            };
            3 * n_routes
        ];
        let mut offsets = vec![0u32; 3 * n_routes];
        let mut experts = vec![0u32; n_routes];
        let mut tokens = vec![0u32; n_routes];
        let mut route_w = vec![0f32; n_routes];
        let mut tok_start = vec![0u32; n_tokens + 1];
        for (p, &i) in order.iter().enumerate() {
            let r = routes[i];
            for (m, st) in stacks3.iter().enumerate() {
                let sl = slot(st, r.expert as usize, layer)?;
                slots[m * n_routes + p] = sl;
                offsets[m * n_routes + p] = sl.offset;
            }
            experts[p] = r.expert;
            tokens[p] = r.token;
            route_w[p] = r.weight;
            tok_start[r.token as usize + 1] += 1;
        }
        for t in 0..n_tokens {
            tok_start[t + 1] += tok_start[t];
        }
        let mut fill = tok_start.clone();
        let mut tok_routes = vec![0u32; n_routes];
        for (p, &i) in order.iter().enumerate() {
            let t = routes[i].token as usize;
            tok_routes[fill[t] as usize] = p as u32;
            fill[t] += 1;
        }
        let own: Vec<u32> = (0..n_routes as u32).collect();
        let tile = if self.route_tiles { ROUTE_TILE } else { 1 };
        let meta = TileMeta::new(&experts, &offsets, &[&tokens, &own], tile);
        let tile = meta.pipeline_tile();

        let what = |b: &str| format!("{b} of MoE layer {layer}");
        ensure(dev, &mut s.x, 4 * n_tokens * d, &what("token rows"))?.write(0, f32_bytes(h));
        ensure(dev, &mut s.g, 4 * n_routes * f, &what("gate outputs"))?;
        ensure(dev, &mut s.u, 4 * n_routes * f, &what("up outputs"))?;
        ensure(dev, &mut s.y, 4 * n_routes * d, &what("down outputs"))?;
        ensure(dev, &mut s.meta, 4 * meta.words.len(), &what("route tiles"))?
            .write(0, u32_bytes(&meta.words));
        ensure(dev, &mut s.route_w, 4 * n_routes, &what("route weights"))?
            .write(0, f32_bytes(&route_w));
        ensure(
            dev,
            &mut s.tok_start,
            4 * (n_tokens + 1),
            &what("token starts"),
        )?
        .write(0, u32_bytes(&tok_start));
        ensure(dev, &mut s.tok_routes, 4 * n_routes, &what("token routes"))?
            .write(0, u32_bytes(&tok_routes));
        let o = ensure(dev, &mut s.out, 4 * n_tokens * d, &what("routed output"))?;
        if shared.is_none() {
            o.write(0, f32_bytes(out));
        }
        let shared_meta = match shared {
            Some(ffn) => Some(self.ensure_shared(s, ffn, n_tokens, tile, layer)?),
            None => None,
        };

        // Per stack: the integer-dot shader in fast mode where there is one, else the f32 one.
        let kernels = [
            self.kernel(stacks3[0], fast, tile)?,
            self.kernel(stacks3[1], fast, tile)?,
            self.kernel(stacks3[2], fast, tile)?,
        ];
        let quantize_x = kernels[0].1 || kernels[1].1;
        let quantize_g = kernels[2].1;
        if quantize_x {
            ensure(
                dev,
                &mut s.xq,
                4 * QBLOCK_WORDS * n_tokens * (d / MATVEC_CHUNK_VALUES),
                &what("quantized token rows"),
            )?;
        }
        if quantize_g {
            ensure(
                dev,
                &mut s.gq,
                4 * QBLOCK_WORDS * n_routes * (f / MATVEC_CHUNK_VALUES),
                &what("quantized SwiGLU outputs"),
            )?;
        }

        let Scratch {
            commands,
            x,
            xq,
            gq,
            g,
            u,
            y,
            meta: meta_buf,
            route_w: rw,
            tok_start: ts,
            tok_routes: tr,
            out: o,
            shared: sh,
        } = s;
        let (x, g, u, y, meta_buf) = (
            x.as_ref().expect("ensured"),
            g.as_ref().expect("ensured"),
            u.as_ref().expect("ensured"),
            y.as_ref().expect("ensured"),
            meta_buf.as_ref().expect("ensured"),
        );
        let (rw, ts, tr, o) = (
            rw.as_ref().expect("ensured"),
            ts.as_ref().expect("ensured"),
            tr.as_ref().expect("ensured"),
            o.as_mut().expect("ensured"),
        );
        let xq = if quantize_x {
            let xq = xq.as_ref().expect("ensured");
            let blocks = n_tokens * d / MATVEC_CHUNK_VALUES;
            commands.elementwise(
                &self.device,
                &self.kernels.quantize,
                &[x, xq],
                &[blocks as u32],
                blocks,
            )?;
            Some(xq)
        } else {
            None
        };
        if let (Some(ffn), Some(meta)) = (shared, &shared_meta) {
            // The shared expert first, its output into the accumulator the routes add to.
            let (sg, su, sq, sm) = (
                sh.g.as_ref().expect("ensured"),
                sh.u.as_ref().expect("ensured"),
                sh.q.as_ref().expect("ensured"),
                sh.meta.as_ref().expect("ensured"),
            );
            record_matmul(
                commands,
                &self.kernels,
                &ffn.gate,
                [x, sq, sg, sm],
                meta,
                0,
                fast,
            )?;
            record_matmul(
                commands,
                &self.kernels,
                &ffn.up,
                [x, sq, su, sm],
                meta,
                0,
                fast,
            )?;
            let n = n_tokens * ffn.gate.rows;
            commands.elementwise(dev, &self.kernels.swiglu, &[sg, su], &[n as u32], n)?;
            record_matmul(
                commands,
                &self.kernels,
                &ffn.down,
                [sg, sq, &*o, sm],
                meta,
                0,
                fast,
            )?;
        }
        for (m, output) in [g, u].into_iter().enumerate() {
            let (kernel, quantized) = kernels[m];
            let input = if quantized {
                xq.expect("quantized above")
            } else {
                x
            };
            self.matvec(
                commands,
                kernel,
                stacks3[m],
                &slots[m * n_routes..(m + 1) * n_routes],
                (m, INPUT_TOKEN),
                [input, output, meta_buf],
                &meta,
            )?;
        }
        commands.elementwise(
            &self.device,
            &self.kernels.swiglu,
            &[g, u],
            &[(n_routes * f) as u32],
            n_routes * f,
        )?;
        let down_input = if quantize_g {
            let gq = gq.as_ref().expect("ensured");
            let blocks = n_routes * f / MATVEC_CHUNK_VALUES;
            commands.elementwise(
                &self.device,
                &self.kernels.quantize,
                &[g, gq],
                &[blocks as u32],
                blocks,
            )?;
            gq
        } else {
            g
        };
        self.matvec(
            commands,
            kernels[2].0,
            stacks3[2],
            &slots[2 * n_routes..],
            (2, INPUT_ROUTE),
            [down_input, y, meta_buf],
            &meta,
        )?;
        commands.elementwise(
            &self.device,
            &self.kernels.combine,
            &[y, rw, ts, tr, &*o],
            &[n_tokens as u32, d as u32],
            n_tokens * d,
        )?;
        commands.submit_and_wait()?;
        read_f32(o, out);
        Ok(())
    }

    /// Room in `s.shared` for `ffn` over `n_tokens` rows, and its tiles (each token a route
    /// reading and writing its own row), uploaded; before anything is recorded (a buffer
    /// replaced later would free one a recorded dispatch uses).
    fn ensure_shared(
        &self,
        s: &mut Scratch,
        ffn: &LayerFfn,
        n_tokens: usize,
        tile: usize,
        layer: usize,
    ) -> Result<TileMeta, VulkanError> {
        let dev = &self.device;
        let what = |b: &str| format!("shared expert {b} of MoE layer {layer}");
        let (d, f) = (ffn.gate.cols, ffn.gate.rows);
        let sh = &mut s.shared;
        ensure(dev, &mut sh.g, 4 * n_tokens * f, &what("gate outputs"))?;
        ensure(dev, &mut sh.u, 4 * n_tokens * f, &what("up outputs"))?;
        let blocks = n_tokens * d.max(f) / MATVEC_CHUNK_VALUES;
        ensure(
            dev,
            &mut sh.q,
            4 * QBLOCK_WORDS * blocks,
            &what("quantized inputs"),
        )?;
        let own: Vec<u32> = (0..n_tokens as u32).collect();
        let zeros = vec![0u32; n_tokens];
        let meta = TileMeta::new(&zeros, &zeros, &[&own], tile);
        ensure(dev, &mut sh.meta, 4 * meta.words.len(), &what("tiles"))?
            .write(0, u32_bytes(&meta.words));
        Ok(meta)
    }

    /// `stack`'s matvec pipeline for tiles of `tile` routes, and whether it reads quantized
    /// activations: the integer-dot one when `fast` and the type has one on this device, else
    /// the f32 one.
    fn kernel(
        &self,
        stack: &ExpertStack,
        fast: bool,
        tile: usize,
    ) -> Result<(&Kernel, bool), VulkanError> {
        if fast {
            if let Some(k) = self.kernels.matvec_fast(stack.ty, tile)? {
                return Ok((k, true));
            }
        }
        let k =
            self.kernels
                .matvec(stack.ty, tile)?
                .ok_or_else(|| VulkanError::UnsupportedType {
                    tensor: stack.name.clone(),
                    ty: stack.ty.name(),
                    supported: crate::kernels::supported_type_names(),
                })?;
        Ok((k, false))
    }

    /// Records `stack`'s matvec (`kernel`, f32 or integer-dot) over every tile of `meta`
    /// as `(matrix, input kind)`, reading `x` into `y` with the tiles' metadata in `meta_buf`: one
    /// dispatch per run of tiles in the same weight chunk (tiles hold one expert, sorted;
    /// chunks hold ascending experts), split to fit `maxComputeWorkGroupCount[1]`.
    #[allow(clippy::too_many_arguments)]
    fn matvec(
        &self,
        commands: &mut Commands,
        kernel: &Kernel,
        stack: &ExpertStack,
        slots: &[Slot],
        (matrix, input): (usize, usize),
        [x, y, meta_buf]: [&Buffer; 3],
        meta: &TileMeta,
    ) -> Result<(), VulkanError> {
        let tiles = meta.tiles();
        let chunk_of = |tile: usize| slots[meta.first_route(tile)].chunk;
        let mut start = 0;
        while start < tiles {
            let chunk = chunk_of(start);
            let end = (start..tiles)
                .find(|&t| chunk_of(t) != chunk)
                .unwrap_or(tiles);
            record_tiles(
                commands,
                kernel,
                &self.device,
                [&stack.chunks[chunk as usize], x, y, meta_buf],
                stack.rows,
                start..end,
                |base| {
                    meta.push(
                        stack.rows,
                        stack.cols,
                        stack.row_bytes,
                        matrix,
                        input,
                        base,
                        0,
                    )
                },
            )?;
            start = end;
        }
        Ok(())
    }
}
