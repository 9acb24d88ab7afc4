//! [`Matvec`]: one weight matrix times f32 rows on the device through the same shaders the
//! experts use: the f32 matvec ([`Matvec::matmul`]), and the fast mode's quantizer
//! ([`Matvec::quantize`]) and integer-dot matvec ([`Matvec::matmul_fast`]), the rows in
//! tiles of [`ROUTE_TILE`] as a prompt's routes to one expert (one row: the single-route
//! pipeline). The kernel-level
//! tests compare them with the CPU's exact kernel and with an emulation of their arithmetic;
//! it uploads the matrix on every call, so it is a checking tool, not a fast path.

use std::sync::Arc;

use moe_kernels::QMatrix;

use crate::commands::Commands;
use crate::device::{Buffer, Device};
use crate::kernels::{
    fast_types, supported_type_names, Kernels, MATVEC_CHUNK_VALUES, QBLOCK_WORDS, ROUTE_TILE,
};
use crate::tiles::{record_tiles, TileMeta};
use crate::VulkanError;

/// Pipelines and a command buffer for one-off matrix products.
pub struct Matvec {
    kernels: Arc<Kernels>,
    commands: Commands,
    device: Arc<Device>,
}

impl Matvec {
    /// Builds the pipelines on `device`.
    pub fn new(device: &Arc<Device>) -> Result<Self, VulkanError> {
        Ok(Self {
            kernels: Kernels::shared(device)?,
            commands: Commands::new(device)?,
            device: device.clone(),
        })
    }

    /// `y[t, :] = w · x[t, :]` for the `n` rows of `x` (`[n, cols]`), as `[n, rows]`; `name`
    /// names the matrix in errors.
    pub fn matmul(
        &mut self,
        name: &str,
        w: &QMatrix<'_>,
        x: &[f32],
        n: usize,
    ) -> Result<Vec<f32>, VulkanError> {
        if self.kernels.matvec(w.ty(), 1)?.is_none() {
            return Err(VulkanError::UnsupportedType {
                tensor: name.into(),
                ty: w.ty().name(),
                supported: supported_type_names(),
            });
        }
        self.run(name, false, w, x, n)
    }

    /// As [`Matvec::matmul`] in the fast mode: `x` quantized on the device by
    /// [`Matvec::quantize`]'s shader, then the integer-dot matvec of `w`'s type. Refused for a
    /// type without an integer-dot shader and on a device without integer dot products.
    pub fn matmul_fast(
        &mut self,
        name: &str,
        w: &QMatrix<'_>,
        x: &[f32],
        n: usize,
    ) -> Result<Vec<f32>, VulkanError> {
        self.require_fast()?;
        if self.kernels.matvec_fast(w.ty(), 1)?.is_none() {
            return Err(VulkanError::UnsupportedType {
                tensor: name.into(),
                ty: w.ty().name(),
                supported: fast_types()
                    .map(|t| t.name())
                    .collect::<Vec<_>>()
                    .join(", "),
            });
        }
        self.run(name, true, w, x, n)
    }

    /// `x` (rows of `cols` values, `cols` a multiple of 32) as the fast mode's quantized
    /// activations: per 32 values [`QBLOCK_WORDS`] words (8 words of int8 codes, value
    /// `4k + i` in byte `i` of word `k`; the f32 scale's bits; the signed code sums of values
    /// 0..16 and 16..32 in the low and high 16 bits).
    pub fn quantize(&mut self, x: &[f32], cols: usize) -> Result<Vec<u32>, VulkanError> {
        self.require_fast()?;
        if cols == 0 || !cols.is_multiple_of(MATVEC_CHUNK_VALUES) || !x.len().is_multiple_of(cols) {
            return Err(VulkanError::InvalidInput(format!(
                "quantize: {} values in rows of {cols} (a multiple of {MATVEC_CHUNK_VALUES})",
                x.len()
            )));
        }
        let blocks = x.len() / MATVEC_CHUNK_VALUES;
        let input = self.upload_f32(x, "quantize input")?;
        let output = Buffer::new(&self.device, 4 * QBLOCK_WORDS * blocks, "quantize output")?;
        self.commands.elementwise(
            &self.device,
            &self.kernels.quantize,
            &[&input, &output],
            &[blocks as u32],
            blocks,
        )?;
        self.commands.submit_and_wait()?;
        Ok(output
            .bytes()
            .chunks_exact(4)
            .take(QBLOCK_WORDS * blocks)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect())
    }

    /// The fast shaders need `shaderIntegerDotProduct`.
    fn require_fast(&self) -> Result<(), VulkanError> {
        if self.kernels.has_fast() {
            return Ok(());
        }
        Err(VulkanError::Unusable {
            device: self.device.info.name.clone(),
            what: "no shaderIntegerDotProduct, which the fast mode's integer-dot shaders need"
                .into(),
        })
    }

    fn upload_f32(&self, x: &[f32], what: &str) -> Result<Buffer, VulkanError> {
        let mut input = Buffer::new(&self.device, 4 * x.len(), what)?;
        let xb: Vec<u8> = x.iter().flat_map(|v| v.to_le_bytes()).collect();
        input.write(0, &xb);
        Ok(input)
    }

    /// One matvec of `w` by the `n` rows of `x` through its type's f32 shader, or (when
    /// `quantized`) its integer-dot shader after quantizing `x`; the caller checked that the
    /// shader exists.
    fn run(
        &mut self,
        name: &str,
        quantized: bool,
        w: &QMatrix<'_>,
        x: &[f32],
        n: usize,
    ) -> Result<Vec<f32>, VulkanError> {
        let (rows, cols) = (w.rows(), w.cols());
        if cols % MATVEC_CHUNK_VALUES != 0 || x.len() != n * cols {
            return Err(VulkanError::InvalidInput(format!(
                "{name}: {n} rows of {} values for a {rows}x{cols} matrix (columns must be a multiple of {MATVEC_CHUNK_VALUES})",
                x.len() / n.max(1)
            )));
        }
        if rows as u64 > self.device.max_groups[0] as u64 {
            return Err(VulkanError::DeviceLimit {
                tensor: name.into(),
                what: format!(
                    "{rows} rows exceed maxComputeWorkGroupCount[0] ({})",
                    self.device.max_groups[0]
                ),
            });
        }
        let mut weights = Buffer::new(&self.device, w.data().len(), name)?;
        weights.write(0, w.data());
        let input = self.upload_f32(x, "matvec input")?;
        let output = Buffer::new(&self.device, 4 * n * rows, "matvec output")?;
        // Every input row is a route of the one matrix (offset 0), reading its own row.
        let own: Vec<u32> = (0..n as u32).collect();
        let meta = TileMeta::new(&vec![0; n], &vec![0; n], &[&own], ROUTE_TILE);
        let meta_bytes: Vec<u8> = meta.words.iter().flat_map(|v| v.to_le_bytes()).collect();
        let mut meta_buf = Buffer::new(&self.device, meta_bytes.len().max(4), "matvec tiles")?;
        meta_buf.write(0, &meta_bytes);
        let blocks = x.len() / MATVEC_CHUNK_VALUES;
        let xq = if quantized {
            let xq = Buffer::new(&self.device, 4 * QBLOCK_WORDS * blocks, "quantized input")?;
            self.commands.elementwise(
                &self.device,
                &self.kernels.quantize,
                &[&input, &xq],
                &[blocks as u32],
                blocks,
            )?;
            Some(xq)
        } else {
            None
        };
        let kernel = if quantized {
            self.kernels.matvec_fast(w.ty(), meta.pipeline_tile())?
        } else {
            self.kernels.matvec(w.ty(), meta.pipeline_tile())?
        }
        .ok_or_else(|| {
            VulkanError::InvalidInput(format!("{name}: no shader for {}", w.ty().name()))
        })?;
        record_tiles(
            &mut self.commands,
            kernel,
            &self.device,
            [&weights, xq.as_ref().unwrap_or(&input), &output, &meta_buf],
            rows,
            0..meta.tiles(),
            |base| meta.push(rows, cols, w.row_bytes(), 0, 0, base, 0),
        )?;
        self.commands.submit_and_wait()?;
        Ok(output
            .bytes()
            .chunks_exact(4)
            .take(n * rows)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect())
    }
}
