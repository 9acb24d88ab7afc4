//! The dense FFN of every leading dense layer and the shared expert of every MoE layer on the
//! device, uploaded once as the file's raw blocks ([`DeviceMat`]s, [`Uploader`]).

use moe_model::model::{DenseFfn, LayerWeights, Model};
use moe_model::ModelError;

use crate::device_mat::{DeviceMat, Uploader};

/// One layer's dense FFN or shared expert.
pub(crate) struct LayerFfn {
    pub gate: DeviceMat,
    pub up: DeviceMat,
    pub down: DeviceMat,
}

/// Every layer's (`None` for a MoE layer without a shared expert).
pub(crate) struct FfnWeights {
    pub layers: Vec<Option<LayerFfn>>,
}

/// Layer `lw`'s dense FFN, or its MoE's shared expert.
pub(crate) fn ffn_of(lw: &LayerWeights) -> Option<&DenseFfn> {
    lw.dense
        .as_ref()
        .or_else(|| lw.moe.as_ref().and_then(|m| m.shared.as_ref()))
}

impl FfnWeights {
    pub fn upload(up: &mut Uploader<'_>, model: &Model) -> Result<Self, ModelError> {
        let layers = model
            .layers
            .iter()
            .map(|lw| {
                ffn_of(lw)
                    .map(|ffn| {
                        Ok(LayerFfn {
                            gate: up.mat(&ffn.gate)?,
                            up: up.mat(&ffn.up)?,
                            down: up.mat(&ffn.down)?,
                        })
                    })
                    .transpose()
            })
            .collect::<Result<_, ModelError>>()?;
        Ok(Self { layers })
    }
}
