//! [`Matvec`]: one weight matrix times f32 rows on the device through the same matvec shaders
//! the experts use. The kernel-level tests compare it with the CPU's exact kernel for every
//! weight type; it uploads the matrix on every call, so it is a checking tool, not a fast path.

use std::sync::Arc;

use moe_kernels::QMatrix;

use crate::commands::Commands;
use crate::device::{Buffer, Device};
use crate::kernels::{supported_type_names, Kernels, MATVEC_CHUNK_VALUES};
use crate::VulkanError;

/// Pipelines and a command buffer for one-off matrix products.
pub struct Matvec {
    kernels: Kernels,
    commands: Commands,
    device: Arc<Device>,
}

impl Matvec {
    /// Builds the pipelines on `device`.
    pub fn new(device: &Arc<Device>) -> Result<Self, VulkanError> {
        Ok(Self {
            kernels: Kernels::new(device)?,
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
        let kernel = self
            .kernels
            .matvec(w.ty())
            .ok_or_else(|| VulkanError::UnsupportedType {
                tensor: name.into(),
                ty: w.ty().name(),
                supported: supported_type_names(),
            })?;
        let (rows, cols) = (w.rows(), w.cols());
        if cols % MATVEC_CHUNK_VALUES != 0 || x.len() != n * cols {
            return Err(VulkanError::InvalidInput(format!(
                "{name}: {n} rows of {} values for a {rows}x{cols} matrix (columns must be a multiple of {MATVEC_CHUNK_VALUES})",
                x.len() / n.max(1)
            )));
        }
        let mut weights = Buffer::new(&self.device, w.data().len(), name)?;
        weights.write(0, w.data());
        let mut input = Buffer::new(&self.device, 4 * x.len(), "matvec input")?;
        let xb: Vec<u8> = x.iter().flat_map(|v| v.to_le_bytes()).collect();
        input.write(0, &xb);
        let output = Buffer::new(&self.device, 4 * n * rows, "matvec output")?;
        let mut offsets = Buffer::new(&self.device, 4 * n, "matvec offsets")?;
        offsets.write(0, &vec![0u8; 4 * n]);
        let (cmd, set) = self.commands.next(kernel)?;
        kernel.record(
            cmd,
            set,
            &[&weights, &input, &output, &offsets],
            &[rows as u32, cols as u32, w.row_bytes() as u32, 0, 0],
            [rows as u32, n as u32, 1],
        );
        self.commands.submit_and_wait()?;
        Ok(output
            .bytes()
            .chunks_exact(4)
            .take(n * rows)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect())
    }
}
