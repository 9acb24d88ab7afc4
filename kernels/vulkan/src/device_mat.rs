//! [`DeviceMat`]: one matrix, or a stack of equal matrices, uploaded once as the file's raw
//! blocks (the matvec shaders read them) and checked against the shaders' and the device's
//! limits; the layer weights (`attention_weights.rs`, `ffn_weights.rs`, the head) are made of
//! them ([`Uploader`]: imported in place from the model file on a unified-memory device that
//! can, as the experts are, else copied, through a staging buffer on a discrete GPU); and
//! [`record_matmul`], their matvec over tiles of routes.

use std::sync::Arc;

use moe_kernels::{GgmlType, QMatrix};
use moe_model::model::{Mat, MatStack, Model};
use moe_model::ModelError;

use crate::commands::Commands;
use crate::device::{Buffer, Device};
use crate::expert_weights::{import_bytes, matvec_fits, to_device, HostMemory};
use crate::kernels::{Kernel, Kernels, MATVEC_CHUNK_VALUES};
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
    /// Where the first matrix starts in `buf` (an imported span's lead-in; 0 for a copy).
    pub base: usize,
}

/// Puts one model's matrices on the device: imported in place from maps of the model file
/// where the device can and `host` asks for it (a unified-memory device with
/// `VK_EXT_external_memory_host`), else copied. Holds the maps, which must outlive the
/// buffers: its owner keeps it after its [`DeviceMat`]s.
pub(crate) struct Uploader<'a> {
    device: &'a Arc<Device>,
    model: &'a Model,
    host: HostMemory,
    /// The imported maps.
    pub maps: Vec<memmap2::Mmap>,
    /// Bytes on the device, and of them imported.
    pub bytes: u64,
    pub imported: u64,
}

impl<'a> Uploader<'a> {
    pub fn new(device: &'a Arc<Device>, model: &'a Model, host: HostMemory) -> Self {
        Self {
            device,
            model,
            host,
            maps: Vec::new(),
            bytes: 0,
            imported: 0,
        }
    }

    /// The device.
    pub fn device(&self) -> &'a Arc<Device> {
        self.device
    }

    /// Matrix `m`.
    pub fn mat(&mut self, m: &Mat) -> Result<DeviceMat, ModelError> {
        let q = self.model.mat(m)?;
        self.upload(&m.name, &[(0, q)], m.shard(), m.file_offset())
    }

    /// Every matrix of the stack `s` (attention heads).
    pub fn stack(&mut self, s: &MatStack) -> Result<DeviceMat, ModelError> {
        let heads = (0..s.count())
            .map(|h| Ok((h, self.model.head_mat(s, h)?)))
            .collect::<Result<Vec<_>, ModelError>>()?;
        self.upload(&s.name, &heads, s.shard(), s.expert_offset(0))
    }

    /// `mats` (equal shapes and types, back to back in shard `shard` from `offset`) on the
    /// device, checked against what the matvec shaders take.
    fn upload(
        &mut self,
        name: &str,
        mats: &[(usize, QMatrix<'_>)],
        shard: usize,
        offset: usize,
    ) -> Result<DeviceMat, ModelError> {
        let device = self.device;
        let first = &mats[0].1;
        let (ty, rows, cols) = (first.ty(), first.rows(), first.cols());
        let limit = |what: String| VulkanError::DeviceLimit {
            tensor: name.into(),
            what,
        };
        matvec_fits(device, name, ty, rows, cols)?;
        let matrix_bytes = first.data().len();
        let total = mats.len() * matrix_bytes;
        if total as u64 > device.max_binding_bytes() {
            return Err(limit(format!(
                "{total} bytes, more than one shader binding may address (maxStorageBufferRange {} bytes)",
                device.max_binding_bytes()
            ))
            .into());
        }
        let path = self.model.file().paths().get(shard).map(|p| p.as_path());
        let imported = match (self.host, path) {
            (HostMemory::Import, Some(path)) => {
                let views: Vec<(usize, &[u8])> = mats
                    .iter()
                    .enumerate()
                    .map(|(i, (_, q))| (offset + i * matrix_bytes, q.data()))
                    .collect();
                let span = offset..offset + total;
                let max = device.max_binding_bytes();
                import_bytes(device, path, span, &views, max, name, &mut self.maps)
            }
            _ => None,
        };
        let (buf, base) = match imported {
            Some((buf, base)) => {
                self.imported += buf.len as u64;
                (buf, base)
            }
            None => (to_device(device, mats, matrix_bytes, self.host, name)?, 0),
        };
        self.bytes += buf.len as u64;
        Ok(DeviceMat {
            name: name.into(),
            ty,
            rows,
            cols,
            row_bytes: first.row_bytes(),
            matrix_bytes,
            buf,
            base,
        })
    }
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
        |base| meta.push(m.rows, m.cols, m.row_bytes, matrix, 0, base, m.base),
    )
}
