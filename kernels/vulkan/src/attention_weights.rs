//! The attention weights of every layer on the device, uploaded once: `attn_q_a` (when the
//! model has a query LoRA), `attn_q_b`, `attn_kv_a_mqa`, the per-head `attn_k_b` and
//! `attn_v_b` stacks and `attn_output` as the file's raw blocks (the matvec shaders read
//! them), and the query LoRA's norm gain as f32. Copied (through a staging buffer on a
//! discrete GPU): they are a few percent of a MoE model's bytes.

use std::sync::Arc;

use moe_kernels::{GgmlType, QMatrix};
use moe_model::model::{Mat, MatStack, Model};
use moe_model::ModelError;

use crate::device::{Buffer, Device};
use crate::expert_weights::to_device;
use crate::kernels::{supported_type_names, supported_types, MATVEC_CHUNK_VALUES};
use crate::scratch::f32_bytes;
use crate::VulkanError;

/// One matrix, or a stack of equal per-head matrices, on the device.
pub(crate) struct DeviceMat {
    /// Tensor name.
    pub name: String,
    pub ty: GgmlType,
    /// One matrix's output features.
    pub rows: usize,
    /// Input features.
    pub cols: usize,
    pub row_bytes: usize,
    /// Bytes of one matrix of the stack.
    pub matrix_bytes: usize,
    pub buf: Buffer,
}

/// One layer's attention weights.
pub(crate) struct LayerAttention {
    pub q_a: Option<(DeviceMat, Buffer)>,
    pub q_b: DeviceMat,
    pub kv_a: DeviceMat,
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
            layers.push(LayerAttention {
                q_a,
                q_b,
                kv_a,
                k_b,
                v_b,
                output,
            });
        }
        Ok(Self { layers, bytes })
    }
}

/// `mats` (equal shapes and types) back to back on the device, checked against what the
/// matvec shaders take.
fn upload(
    device: &Arc<Device>,
    name: &str,
    mats: &[(usize, QMatrix<'_>)],
) -> Result<DeviceMat, VulkanError> {
    let first = &mats[0].1;
    let (ty, rows, cols) = (first.ty(), first.rows(), first.cols());
    let limit = |what: String| VulkanError::DeviceLimit {
        tensor: name.into(),
        what,
    };
    if !supported_types().any(|t| t == ty) {
        return Err(VulkanError::UnsupportedType {
            tensor: name.into(),
            ty: ty.name(),
            supported: supported_type_names(),
        });
    }
    if cols % MATVEC_CHUNK_VALUES != 0 {
        return Err(limit(format!(
            "{cols} columns are not a multiple of {MATVEC_CHUNK_VALUES}, which the matvec shader reads at a time"
        )));
    }
    if rows as u64 > device.max_groups[0] as u64 {
        return Err(limit(format!(
            "{rows} rows exceed maxComputeWorkGroupCount[0] = {}",
            device.max_groups[0]
        )));
    }
    let matrix_bytes = first.data().len();
    let total = (mats.len() * matrix_bytes) as u64;
    if total > device.max_binding_bytes() {
        return Err(limit(format!(
            "{total} bytes, more than one shader binding may address (maxStorageBufferRange {} bytes)",
            device.max_binding_bytes()
        )));
    }
    Ok(DeviceMat {
        name: name.into(),
        ty,
        rows,
        cols,
        row_bytes: first.row_bytes(),
        matrix_bytes,
        buf: to_device(device, mats, matrix_bytes, name)?,
    })
}
