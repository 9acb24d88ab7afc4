//! The attention weights of every layer on the device, uploaded once: `attn_q_a` (when the
//! model has a query LoRA), `attn_q_b`, `attn_kv_a_mqa`, the per-head `attn_k_b` and
//! `attn_v_b` stacks and `attn_output` as the file's raw blocks (the matvec shaders read them), and
//! the query LoRA's and the latent's norm gains as f32. Copied (through a staging buffer on a
//! discrete GPU): they are a few percent of a MoE model's bytes.

use std::sync::Arc;

use moe_model::model::{Mat, MatStack, Model};
use moe_model::ModelError;

use crate::device::{Buffer, Device};
use crate::device_mat::{upload, DeviceMat};
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
    /// Bytes on the device.
    pub bytes: u64,
}

impl AttentionWeights {
    pub fn upload(device: &Arc<Device>, model: &Model) -> Result<Self, ModelError> {
        let mut bytes = 0u64;
        let mut layers = Vec::with_capacity(model.layers.len());
        for lw in &model.layers {
            let a = &lw.attn;
            let mut mat = |m: &Mat| -> Result<DeviceMat, ModelError> {
                let q = model.mat(m)?;
                let dm = upload(device, &m.name, &[(0, q)])?;
                bytes += dm.buf.len as u64;
                Ok(dm)
            };
            let q_a = match &a.q_a {
                Some(m) => {
                    let mut gain = Buffer::new(device, 4 * a.q_a_norm.len(), "attn_q_a_norm")?;
                    gain.write(0, f32_bytes(&a.q_a_norm));
                    Some((mat(m)?, gain))
                }
                None => None,
            };
            let (q_b, kv_a, output) = (mat(&a.q_b)?, mat(&a.kv_a)?, mat(&a.output)?);
            let mut stack = |s: &MatStack| -> Result<DeviceMat, ModelError> {
                let heads = (0..s.count())
                    .map(|h| Ok((h, model.head_mat(s, h)?)))
                    .collect::<Result<Vec<_>, ModelError>>()?;
                let dm = upload(device, &s.name, &heads)?;
                bytes += dm.buf.len as u64;
                Ok(dm)
            };
            let (k_b, v_b) = (stack(&a.k_b)?, stack(&a.v_b)?);
            let mut kv_norm = Buffer::new(device, 4 * a.kv_a_norm.len(), "attn_kv_a_norm")?;
            kv_norm.write(0, f32_bytes(&a.kv_a_norm));
            layers.push(LayerAttention {
                q_a,
                q_b,
                kv_a,
                kv_norm,
                k_b,
                v_b,
                output,
            });
        }
        Ok(Self { layers, bytes })
    }
}
