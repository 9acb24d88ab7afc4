//! The MLA attention of [`VulkanLayers`] (moe-model's `LayerCompute` on a Vulkan device), every
//! layer's in the absorbed form (exact mode's form, in both modes) with the sequence's
//! cache rows on the device. One call (one layer, `t` new tokens of one sequence at `pos0`):
//!
//! 1. record: the normalized input rows uploaded; `q = q_b(norm(q_a(x)))` and `kv = kv_a(x)`
//!    (matvecs over the file's blocks, tokens as routes of one matrix);
//! 2. record: the new rows completed as the CPU completes them ([`push_latent_rows`]: the
//!    latent normalized, the key rotated), rounded to the cache's element type
//!    (`kv_store.comp`) and stored into the device copy of the cache, after every older row
//!    the copy lacked was written to it from the host cache (widened to f32, so a narrower
//!    `--kv-type` reads the same rounded values as on the CPU);
//! 3. record: the query heads' rope parts rotated (a host table of the angles), their
//!    no-rope parts gathered head-major and absorbed through the per-head `attn_k_b`
//!    (heads as the routes' matrices), scores, softmax and context over the cache rows
//!    (`attend.comp`), the per-head `attn_v_b`, the heads gathered back token-major, and
//!    `attn_output`; submit once and wait; the output and the new rows read back, the rows
//!    appended to the host cache (already in its type, so it keeps them as they are: the
//!    host record and the device copy hold the same values).
//!
//! One host round trip a layer. A Q8_0 cache (whose block scales the device does not
//! round as the host does) takes two: the projections are submitted first and the new rows
//! completed on the host ([`push_latent_rows`]), then copied to the device with the older
//! ones.
//!
//! The device copy of a cache ([`VulkanKv`]) travels with the host [`KvCache`] and drops with
//! it; the cache lowers its valid rows on every truncation, so it never serves dropped rows.
//! Fast mode quantizes each matvec's input on the device and takes the integer-dot shaders
//! (as the experts do); the attention proper is f32 in both modes.

use std::sync::Arc;

use moe_kernels::KvType;
use moe_model::forward::{push_latent_rows, DeviceKv, KvCache};
use moe_model::model::Model;
use moe_model::ModelError;

use crate::attention_weights::LayerAttention;
use crate::commands::Commands;
use crate::device::{Buffer, Device};
use crate::kernels::Kernels;
use crate::layers::{b, Scratch, VulkanLayers};
use crate::scratch::{ensure, f32_bytes, read_f32, u32_bytes};
use crate::tiles::TileMeta;
use crate::VulkanError;

/// Bytes of the softmax scratch (scores of the query rows of one `attend` dispatch): a
/// prompt chunk with more rows x positions than this takes several dispatches.
pub const SCORES_BYTES_MAX: usize = 256 << 20;
/// Positions a new device copy of a cache layer holds at least (it doubles as it fills).
const KV_POSITIONS_MIN: usize = 256;

/// A layer's cache rows on the device: `valid` positions hold the host cache's rows.
struct LayerKv {
    buf: Option<Buffer>,
    positions: usize,
    valid: usize,
}

/// One sequence's cache rows on the device (f32 `[positions, Lkv + dr]` per layer).
pub struct VulkanKv {
    owner: u64,
    layers: Vec<LayerKv>,
}

impl std::fmt::Debug for VulkanKv {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VulkanKv")
            .field(
                "valid",
                &self.layers.iter().map(|l| l.valid).collect::<Vec<_>>(),
            )
            .finish()
    }
}

impl DeviceKv for VulkanKv {
    fn truncate(&mut self, len: usize) {
        for l in &mut self.layers {
            l.valid = l.valid.min(len);
        }
    }

    fn as_any_mut(&mut self) -> &mut dyn std::any::Any {
        self
    }
}

/// The shapes of one call.
#[derive(Clone, Copy)]
struct Dims {
    t: usize,
    d: usize,
    h: usize,
    dn: usize,
    dr: usize,
    dv: usize,
    lkv: usize,
    pos0: usize,
}

impl Dims {
    fn qk(&self) -> usize {
        self.dn + self.dr
    }
}

/// Values of the largest matvec input of one call, quantized in turn into one scratch
/// buffer: the projections' (`[t, D]`, `[t, q_lora]`) and the heads' (`[H, t, dn]`,
/// `[H, t, Lkv]`, `[t, H * dv]`). One size for the whole call, ensured before anything is
/// recorded: growing the buffer between recordings of one submission would free the one
/// the earlier dispatches were recorded with.
fn quantized_values(w: &LayerAttention, dims: Dims) -> usize {
    let Dims {
        t,
        d,
        h,
        dn,
        dv,
        lkv,
        ..
    } = dims;
    (t * d.max(w.q_b.cols))
        .max(h * t * dn.max(lkv))
        .max(t * h * dv)
}

/// How `kv_store.comp` rounds rows for a cache of `ty`, or `None` where the device does not
/// round to it (Q8_0: the new rows go through the host first).
fn kv_store_kind(ty: KvType) -> Option<u32> {
    match ty {
        KvType::F32 => Some(0),
        KvType::Bf16 => Some(1),
        KvType::F16 => Some(2),
        KvType::Q8_0 => None,
    }
}

/// `values` rounded to `ty` by `kv_store.comp` on `device`, as the device copy of a cache of
/// that type stores new rows (the kernel-level tests' tool; Q8_0, which the device does not
/// round, is an error).
pub fn round_kv_on_device(
    device: &Arc<Device>,
    values: &[f32],
    ty: KvType,
) -> Result<Vec<f32>, VulkanError> {
    let kind = kv_store_kind(ty).ok_or_else(|| {
        VulkanError::InvalidInput(format!("the device does not round to a {ty} cache"))
    })?;
    let kernels = Kernels::shared(device)?;
    let mut commands = Commands::new(device)?;
    let n = values.len();
    let mut rows = Buffer::new(device, 4 * n.max(1), "rows to round")?;
    rows.write(0, f32_bytes(values));
    let dst = Buffer::new(device, 4 * n.max(1), "rounded rows")?;
    commands.elementwise(
        device,
        &kernels.kv_store,
        &[&rows, &dst],
        &[n as u32, 0, kind],
        n,
    )?;
    commands.submit_and_wait()?;
    let mut out = vec![0f32; n];
    read_f32(&dst, &mut out);
    Ok(out)
}

impl VulkanLayers {
    /// `LayerCompute::attention` (see the file's doc).
    pub(crate) fn attention_on_device(
        &self,
        model: &Model,
        l: usize,
        x: &[f32],
        t: usize,
        cache: &mut KvCache,
        out: &mut [f32],
    ) -> Result<(), ModelError> {
        let c = &model.cfg;
        let dims = Dims {
            t,
            d: c.n_embd,
            h: c.n_heads,
            dn: c.qk_nope,
            dr: c.qk_rope,
            dv: c.v_head,
            lkv: c.kv_lora_rank,
            pos0: cache.len(),
        };
        if x.len() != t * dims.d || out.len() != t * dims.d || t == 0 {
            return Err(ModelError::InvalidInput(format!(
                "attention of {t} tokens: input {} and output {} values (rows of {})",
                x.len(),
                out.len(),
                dims.d
            )));
        }
        let shape = cache.row_shape();
        if (shape.latent, shape.rope) != (dims.lkv, dims.dr) || cache.n_layers() <= l {
            return Err(ModelError::InvalidInput(format!(
                "a KV cache of {} layers of {}+{} values for layer {l} of {}+{}",
                cache.n_layers(),
                shape.latent,
                shape.rope,
                dims.lkv,
                dims.dr
            )));
        }
        let w = self.attention_layer(model, l)?;
        let fast = self.fast(model);
        let mut state = self.lock()?;
        let (commands, s) = &mut *state;
        let mut cs = vec![0f32; t * dims.dr];
        for (i, row) in cs.chunks_exact_mut(dims.dr).enumerate() {
            model.rope.cos_sin(dims.pos0 + i, row);
        }
        let mut kv = vec![0f32; t * (dims.lkv + dims.dr)];
        let on_device = kv_store_kind(cache.kv_type());
        self.project(commands, s, w, x, dims, fast)?;
        if on_device.is_none() {
            // The new rows through the host first (see the file's doc).
            commands.submit_and_wait()?;
            read_f32(b(&s.kv), &mut kv);
            push_latent_rows(model, l, &mut kv, dims.pos0, cache);
        }

        // The device copy gets every host row it lacks.
        let mut mirror = cache.take_device_kv();
        let mine = mirror
            .as_mut()
            .and_then(|m| m.as_any_mut().downcast_mut::<VulkanKv>())
            .is_some_and(|m| m.owner == self.id && m.layers.len() == cache.n_layers());
        if !mine {
            mirror = Some(Box::new(VulkanKv {
                owner: self.id,
                layers: (0..cache.n_layers())
                    .map(|_| LayerKv {
                        buf: None,
                        positions: 0,
                        valid: 0,
                    })
                    .collect(),
            }));
        }
        let mut mirror = mirror.expect("set above");
        let vk = mirror
            .as_any_mut()
            .downcast_mut::<VulkanKv>()
            .expect("ours, checked or made above");
        let end = dims.pos0 + t;
        let lk = &mut vk.layers[l];
        let rows = match on_device {
            Some(kind) => {
                let rows = self.sync_layer(lk, cache, l, dims.pos0, end)?;
                self.store_rows(commands, s, w, rows, &cs, dims, kind)?;
                rows
            }
            None => self.sync_layer(lk, cache, l, end, end)?,
        };

        // Attention proper and the output projection; the new rows to the host's record.
        self.attend(commands, s, w, rows, &cs, dims, c.attn_scale(), fast)?;
        lk.valid = end;
        if on_device.is_some() {
            read_f32(b(&s.kv), &mut kv);
            let lkv = dims.lkv;
            for row in kv.chunks_exact(lkv + dims.dr) {
                cache.push(l, &row[..lkv], &row[lkv..]);
            }
        }
        read_f32(b(&s.out), out);
        cache.set_device_kv(mirror);
        Ok(())
    }

    /// Records `q` and `kv` of the call's tokens into `s.q`, `s.kv`.
    fn project(
        &self,
        commands: &mut Commands,
        s: &mut Scratch,
        w: &LayerAttention,
        x: &[f32],
        dims: Dims,
        fast: bool,
    ) -> Result<(), VulkanError> {
        let dev = &self.device;
        let t = dims.t;
        let what = |b: &str| format!("attention {b}");
        ensure(dev, &mut s.x, 4 * x.len(), &what("input rows"))?.write(0, f32_bytes(x));
        ensure(dev, &mut s.q, 4 * t * dims.h * dims.qk(), &what("queries"))?;
        ensure(dev, &mut s.kv, 4 * t * w.kv_a.rows, &what("kv_a output"))?;
        if let Some((q_a, _)) = &w.q_a {
            ensure(dev, &mut s.cq, 4 * t * q_a.rows, &what("query LoRA"))?;
        }
        let meta = self.token_meta(s, t)?;
        self.ensure_quantized(s, quantized_values(w, dims))?;
        let tokens = s.meta_tokens.as_ref().expect("ensured");
        let (xb, q, kv) = (
            s.x.as_ref().expect("ensured"),
            s.q.as_ref().expect("ensured"),
            s.kv.as_ref().expect("ensured"),
        );
        let xq = s.xq.as_ref().expect("ensured");
        match &w.q_a {
            Some((q_a, gain)) => {
                let cq = s.cq.as_ref().expect("ensured");
                self.matmul(commands, q_a, [xb, xq, cq, tokens], &meta, 0, fast)?;
                let eps = moe_model::config::LATENT_NORM_EPS.to_bits();
                let (cmd, set) = commands.next(&self.kernels.rms_norm)?;
                self.kernels.rms_norm.record(
                    cmd,
                    set,
                    &[cq, gain],
                    &[q_a.rows as u32, q_a.rows as u32, eps],
                    [t as u32, 1, 1],
                );
                self.matmul(commands, &w.q_b, [cq, xq, q, tokens], &meta, 0, fast)?;
            }
            None => self.matmul(commands, &w.q_b, [xb, xq, q, tokens], &meta, 0, fast)?,
        }
        self.matmul(commands, &w.kv_a, [xb, xq, kv, tokens], &meta, 0, fast)
    }

    /// Records the new rows' completion as `push_latent_rows` does on the host (the latent
    /// normalized, the key rotated), their rounding to the cache type (`kind`, as
    /// `kv_store.comp` numbers them) and their store into the device copy `rows`.
    #[allow(clippy::too_many_arguments)] // one layer's call: weights, rows, table, shapes
    fn store_rows(
        &self,
        commands: &mut Commands,
        s: &mut Scratch,
        w: &LayerAttention,
        rows: &Buffer,
        cs: &[f32],
        dims: Dims,
        kind: u32,
    ) -> Result<(), VulkanError> {
        let dev = &self.device;
        let (t, lkv, dr) = (dims.t, dims.lkv, dims.dr);
        ensure(dev, &mut s.cs, 4 * cs.len(), "attention rope table")?.write(0, f32_bytes(cs));
        let kv = b(&s.kv);
        let eps = moe_model::config::LATENT_NORM_EPS.to_bits();
        let (cmd, set) = commands.next(&self.kernels.rms_norm)?;
        self.kernels.rms_norm.record(
            cmd,
            set,
            &[kv, &w.kv_norm],
            &[lkv as u32, (lkv + dr) as u32, eps],
            [t as u32, 1, 1],
        );
        let pairs = dr / 2;
        commands.elementwise(
            dev,
            &self.kernels.rope,
            &[kv, b(&s.cs)],
            &[t as u32, 1, (lkv + dr) as u32, lkv as u32, pairs as u32],
            t * pairs,
        )?;
        let n = t * (lkv + dr);
        commands.elementwise(
            dev,
            &self.kernels.kv_store,
            &[kv, rows],
            &[n as u32, (dims.pos0 * (lkv + dr)) as u32, kind],
            n,
        )
    }

    /// Makes the device copy of layer `l` hold `end` positions (growing it as needed) and
    /// writes the host cache's rows it lacks up to `host_end` into it; returns its buffer.
    fn sync_layer<'a>(
        &self,
        lk: &'a mut LayerKv,
        cache: &KvCache,
        l: usize,
        host_end: usize,
        end: usize,
    ) -> Result<&'a Buffer, VulkanError> {
        let row_bytes = 4 * cache.row_shape().width();
        if lk.positions < end {
            let positions = end.max(2 * lk.positions).max(KV_POSITIONS_MIN);
            let limit = self.device.max_binding_bytes() as usize / row_bytes;
            if end > limit {
                return Err(VulkanError::DeviceLimit {
                    tensor: format!("the KV cache of layer {l}"),
                    what: format!(
                        "{end} positions of {row_bytes} bytes exceed one shader binding (maxStorageBufferRange {} bytes)",
                        self.device.max_binding_bytes()
                    ),
                });
            }
            let positions = positions.min(limit);
            lk.buf = None;
            lk.buf = Some(Buffer::new(
                &self.device,
                positions * row_bytes,
                &format!("the KV cache of layer {l}"),
            )?);
            lk.positions = positions;
            lk.valid = 0;
        }
        let buf = lk.buf.as_mut().expect("allocated above");
        if lk.valid < host_end {
            let rows = cache.layer_f32(l, lk.valid..host_end);
            buf.write(lk.valid * row_bytes, f32_bytes(&rows));
            lk.valid = host_end;
        }
        Ok(buf)
    }

    /// Records rope, absorption, attention, values and the output into `s.out`; submits
    /// everything recorded since the last submission and waits.
    #[allow(clippy::too_many_arguments)] // one layer's call: weights, rows, table, shapes
    fn attend(
        &self,
        commands: &mut Commands,
        s: &mut Scratch,
        w: &LayerAttention,
        rows: &Buffer,
        cs: &[f32],
        dims: Dims,
        scale: f32,
        fast: bool,
    ) -> Result<(), VulkanError> {
        let dev = &self.device;
        let Dims {
            t,
            d,
            h,
            dn,
            dr,
            dv,
            lkv,
            pos0,
        } = dims;
        let qk = dims.qk();
        let what = |b: &str| format!("attention {b}");
        let positions = pos0 + t;
        let rows_per = (SCORES_BYTES_MAX / (4 * positions))
            .min(dev.max_groups[0] as usize)
            .min(h * t);
        if rows_per == 0 {
            return Err(VulkanError::DeviceLimit {
                tensor: what("scores"),
                what: format!(
                    "{positions} positions exceed the softmax scratch of {SCORES_BYTES_MAX} bytes a row"
                ),
            });
        }
        ensure(dev, &mut s.cs, 4 * cs.len(), &what("rope table"))?.write(0, f32_bytes(cs));
        ensure(dev, &mut s.qn, 4 * h * t * dn, &what("no-rope queries"))?;
        ensure(
            dev,
            &mut s.q_abs,
            4 * h * t * lkv,
            &what("absorbed queries"),
        )?;
        ensure(
            dev,
            &mut s.scores,
            4 * rows_per * positions,
            &what("scores"),
        )?;
        ensure(dev, &mut s.ctx, 4 * h * t * lkv, &what("context"))?;
        ensure(dev, &mut s.oh, 4 * h * t * dv, &what("head values"))?;
        ensure(dev, &mut s.o, 4 * t * h * dv, &what("values"))?;
        ensure(dev, &mut s.out, 4 * t * d, &what("output"))?;
        let token_meta = self.token_meta(s, t)?;
        let head_meta = self.head_meta(s, w, t, h)?;
        self.ensure_quantized(s, quantized_values(w, dims))?;
        let (q, qn, q_abs, scores, ctx, oh, o, out, xq) = (
            b(&s.q),
            b(&s.qn),
            b(&s.q_abs),
            b(&s.scores),
            b(&s.ctx),
            b(&s.oh),
            b(&s.o),
            b(&s.out),
            b(&s.xq),
        );
        let (tokens, heads) = (b(&s.meta_tokens), b(&s.meta_heads));
        let pairs = dr / 2;
        commands.elementwise(
            dev,
            &self.kernels.rope,
            &[q, b(&s.cs)],
            &[(t * h) as u32, h as u32, qk as u32, dn as u32, pairs as u32],
            t * h * pairs,
        )?;
        // q_nope[head][i] = q[i][head][..dn]
        let gather = |commands: &mut Commands, src: &Buffer, dst: &Buffer, push: [usize; 7]| {
            let push: Vec<u32> = push.iter().map(|&v| v as u32).collect();
            commands.elementwise(
                dev,
                &self.kernels.gather,
                &[src, dst],
                &push,
                push_items(&push),
            )
        };
        gather(commands, q, qn, [h, t, dn, qk, h * qk, t * dn, dn])?;
        self.matmul(
            commands,
            &w.k_b,
            [qn, xq, q_abs, heads],
            &head_meta,
            0,
            fast,
        )?;
        let mut base = 0;
        while base < h * t {
            let n = rows_per.min(h * t - base);
            let (cmd, set) = commands.next(&self.kernels.attend)?;
            let push = [
                t,
                h,
                lkv,
                dr,
                qk,
                dn,
                pos0,
                scale.to_bits() as usize,
                positions,
                base,
            ]
            .map(|v| v as u32);
            self.kernels.attend.record(
                cmd,
                set,
                &[q_abs, q, rows, scores, ctx],
                &push,
                [n as u32, 1, 1],
            );
            base += n;
        }
        self.matmul(commands, &w.v_b, [ctx, xq, oh, heads], &head_meta, 1, fast)?;
        // o[i][head] = oh[head][i]
        gather(commands, oh, o, [h, t, dv, t * dv, dv, dv, h * dv])?;
        self.matmul(
            commands,
            &w.output,
            [o, xq, out, tokens],
            &token_meta,
            0,
            fast,
        )?;
        commands.submit_and_wait()
    }

    /// The tiles of the `h * t` head routes (route `head * t + i`, reading its own row) over
    /// `k_b` (matrix 0) and `v_b` (matrix 1), uploaded.
    fn head_meta(
        &self,
        s: &mut Scratch,
        w: &LayerAttention,
        t: usize,
        h: usize,
    ) -> Result<TileMeta, VulkanError> {
        let heads: Vec<u32> = (0..h * t).map(|p| (p / t) as u32).collect();
        let mut offsets: Vec<u32> = heads
            .iter()
            .map(|&hd| hd * w.k_b.matrix_bytes as u32)
            .collect();
        offsets.extend(heads.iter().map(|&hd| hd * w.v_b.matrix_bytes as u32));
        let own: Vec<u32> = (0..(h * t) as u32).collect();
        let meta = TileMeta::new(&heads, &offsets, &[&own], self.tile());
        ensure(
            &self.device,
            &mut s.meta_heads,
            4 * meta.words.len(),
            "attention head tiles",
        )?
        .write(0, u32_bytes(&meta.words));
        Ok(meta)
    }
}

/// Items of a gather dispatch with push constants `push` (`n_a, n_b, width, ..`).
fn push_items(push: &[u32]) -> usize {
    push[0] as usize * push[1] as usize * push[2] as usize
}
