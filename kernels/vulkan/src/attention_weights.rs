//! The attention weights of every layer on the device, uploaded once: `attn_q_a` (when the
//! model has a query LoRA), `attn_q_b`, `attn_kv_a_mqa`, the per-head `attn_k_b` and
//! `attn_v_b` stacks and `attn_output` as the file's raw blocks (the matvec shaders read them), and
//! the query LoRA's and the latent's norm gains as f32 ([`Uploader`]: imported in place from
//! the model file where the device can, else copied).

use moe_model::model::Model;
use moe_model::ModelError;

use crate::device::Buffer;
use crate::device_mat::{DeviceMat, Uploader};
use crate::scratch::f32_bytes;

/// One layer's attention weights.
pub(crate) struct LayerAttention {
    pub q_a: Option<(DeviceMat, Buffer)>,
    pub q_b: DeviceMat,
    pub kv_a: DeviceMat,
    /// The latent norm's gain (`attn_kv_a_norm`), f32.
    pub kv_norm: Buffer,
    pub k_b: DeviceMat,
    pub v_b: DeviceMat,
    pub output: DeviceMat,
}

/// Every layer's.
pub(crate) struct AttentionWeights {
    pub layers: Vec<LayerAttention>,
}

impl AttentionWeights {
    pub fn upload(up: &mut Uploader<'_>, model: &Model) -> Result<Self, ModelError> {
        let device = up.device();
        let gain = |v: &[f32], name: &str| -> Result<Buffer, ModelError> {
            let mut b = Buffer::new(device, 4 * v.len(), name)?;
            b.write(0, f32_bytes(v));
            Ok(b)
        };
        let mut layers = Vec::with_capacity(model.layers.len());
        for lw in &model.layers {
            let a = &lw.attn;
            let q_a = match &a.q_a {
                Some(m) => Some((up.mat(m)?, gain(&a.q_a_norm, "attn_q_a_norm")?)),
                None => None,
            };
            layers.push(LayerAttention {
                q_a,
                q_b: up.mat(&a.q_b)?,
                kv_a: up.mat(&a.kv_a)?,
                kv_norm: gain(&a.kv_a_norm, "attn_kv_a_norm")?,
                k_b: up.stack(&a.k_b)?,
                v_b: up.stack(&a.v_b)?,
                output: up.mat(&a.output)?,
            });
        }
        Ok(Self { layers })
    }
}
