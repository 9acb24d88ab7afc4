//! [`DeviceMat`]: one matrix, or a stack of equal matrices, uploaded once as the file's raw
//! blocks (the matvec shaders read them) and checked against the shaders' and the device's
//! limits; the layer weights (`attention_weights.rs`, `ffn.rs`) are made of them. Copied
//! (through a staging buffer on a discrete GPU): they are a few percent of a MoE model's
//! bytes.

use std::sync::Arc;

use moe_kernels::{GgmlType, QMatrix};

use crate::device::{Buffer, Device};
use crate::expert_weights::to_device;
use crate::kernels::{supported_type_names, supported_types, MATVEC_CHUNK_VALUES};
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

/// `mats` (equal shapes and types) back to back on the device, checked against what the
/// matvec shaders take.
pub(crate) fn upload(
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
