//! The dense FFN of every leading dense layer and the shared expert of every MoE layer on the
//! device, uploaded once as the file's raw blocks ([`DeviceMat`]s).

use std::sync::Arc;

use moe_model::model::{DenseFfn, LayerWeights, Mat, Model};
use moe_model::ModelError;

use crate::device::Device;
use crate::device_mat::{upload, DeviceMat};

/// One layer's dense FFN or shared expert.
pub(crate) struct LayerFfn {
    pub gate: DeviceMat,
    pub up: DeviceMat,
    pub down: DeviceMat,
}

/// Every layer's (`None` for a MoE layer without a shared expert).
pub(crate) struct FfnWeights {
    pub layers: Vec<Option<LayerFfn>>,
    /// Bytes on the device.
    pub bytes: u64,
}

/// Layer `lw`'s dense FFN, or its MoE's shared expert.
pub(crate) fn ffn_of(lw: &LayerWeights) -> Option<&DenseFfn> {
    lw.dense
        .as_ref()
        .or_else(|| lw.moe.as_ref().and_then(|m| m.shared.as_ref()))
}

impl FfnWeights {
    pub fn upload(device: &Arc<Device>, model: &Model) -> Result<Self, ModelError> {
        let mut bytes = 0u64;
        let mut layers = Vec::with_capacity(model.layers.len());
        for lw in &model.layers {
            let Some(ffn) = ffn_of(lw) else {
                layers.push(None);
                continue;
            };
            let mut mat = |m: &Mat| -> Result<DeviceMat, ModelError> {
                let dm = upload(device, &m.name, &[(0, model.mat(m)?)])?;
                bytes += dm.buf.len as u64;
                Ok(dm)
            };
            layers.push(Some(LayerFfn {
                gate: mat(&ffn.gate)?,
                up: mat(&ffn.up)?,
                down: mat(&ffn.down)?,
            }));
        }
        Ok(Self { layers, bytes })
    }
}
