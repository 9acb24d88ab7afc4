//! [`DeviceMat`]: one matrix, or a stack of equal matrices, uploaded once as the file's raw
//! blocks (the matvec shaders read them) and checked against the shaders' and the device's
//! limits; the layer weights (`attention_weights.rs`, `ffn.rs`) are made of them. Copied
//! (through a staging buffer on a discrete GPU): they are a few percent of a MoE model's
//! bytes.

use std::sync::Arc;

use moe_kernels::{GgmlType, QMatrix};

use crate::commands::Commands;
use crate::device::{Buffer, Device};
use crate::expert_weights::to_device;
use crate::kernels::{supported_type_names, supported_types, Kernel, Kernels, MATVEC_CHUNK_VALUES};
use crate::tiles::{record_tiles, TileMeta};
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

/// Records `y = m · x` over every tile of `meta` as its matrix `matrix`: in fast mode
/// with an integer-dot shader for `m`'s type, `x` quantized into `xq` first. The routes of
/// `meta` read their own rows of `x` and write their own rows of `y`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn record_matmul(
    commands: &mut Commands,
    kernels: &Kernels,
    m: &DeviceMat,
    [x, xq, y, meta_buf]: [&Buffer; 4],
    meta: &TileMeta,
    matrix: usize,
    fast: bool,
) -> Result<(), VulkanError> {
    let tile = meta.pipeline_tile();
    let fast_kernel = if fast {
        kernels.matvec_fast(m.ty, tile)?
    } else {
        None
    };
    let (kernel, input): (&Kernel, &Buffer) = match fast_kernel {
        Some(k) => {
            let blocks = meta.routes() * m.cols / MATVEC_CHUNK_VALUES;
            commands.elementwise(
                &kernels.device,
                &kernels.quantize,
                &[x, xq],
                &[blocks as u32],
                blocks,
            )?;
            (k, xq)
        }
        None => (
            kernels
                .matvec(m.ty, tile)?
                .ok_or_else(|| VulkanError::UnsupportedType {
                    tensor: m.name.clone(),
                    ty: m.ty.name(),
                    supported: crate::kernels::supported_type_names(),
                })?,
            x,
        ),
    };
    record_tiles(
        commands,
        kernel,
        &kernels.device,
        [&m.buf, input, y, meta_buf],
        m.rows,
        0..meta.tiles(),
        |base| meta.push(m.rows, m.cols, m.row_bytes, matrix, 0, base),
    )
}
