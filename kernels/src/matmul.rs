//! `QMatrix`: a borrowed quantized matrix `[rows, cols]` (ggml ne = [cols, rows]) and the
//! kernel `y[t, r] = Σ_c W[r, c] · x[t, c]`, threaded over rows.

use std::sync::atomic::{AtomicUsize, Ordering};

use crate::{dequantize_row, GgmlType, KernelError};

static NUM_THREADS: AtomicUsize = AtomicUsize::new(0);

/// Sets the worker thread count for matmuls (0 = all available cores).
pub fn set_num_threads(n: usize) {
    NUM_THREADS.store(n, Ordering::Relaxed);
}

fn num_threads() -> usize {
    match NUM_THREADS.load(Ordering::Relaxed) {
        0 => std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
        n => n,
    }
}

/// A quantized row-major matrix borrowed from a mapped file: `rows` rows of `cols` elements.
#[derive(Debug, Clone, Copy)]
pub struct QMatrix<'a> {
    ty: GgmlType,
    rows: usize,
    cols: usize,
    data: &'a [u8],
}

impl<'a> QMatrix<'a> {
    /// Wraps `data`, checking that it holds exactly `rows` rows of `cols` elements of `ty`.
    pub fn new(ty: GgmlType, rows: usize, cols: usize, data: &'a [u8]) -> Result<Self, KernelError> {
        let expected = ty.row_bytes(cols)? * rows;
        if data.len() != expected {
            return Err(KernelError::LengthMismatch { what: "QMatrix data", expected, got: data.len() });
        }
        Ok(Self { ty, rows, cols, data })
    }

    /// Element type.
    pub fn ty(&self) -> GgmlType {
        self.ty
    }
    /// Output features.
    pub fn rows(&self) -> usize {
        self.rows
    }
    /// Input features.
    pub fn cols(&self) -> usize {
        self.cols
    }
    /// The raw bytes.
    pub fn data(&self) -> &'a [u8] {
        self.data
    }

    /// The raw bytes of row `r`.
    pub fn row_data(&self, r: usize) -> &'a [u8] {
        let rb = self.data.len() / self.rows.max(1);
        &self.data[r * rb..(r + 1) * rb]
    }

    /// Dequantizes row `r` into `dst` (`cols` long).
    pub fn dequantize_row(&self, r: usize, dst: &mut [f32]) -> Result<(), KernelError> {
        dequantize_row(self.ty, self.row_data(r), dst)
    }

    /// `y[t * rows + r] = Σ_c W[r, c] · x[t * cols + c]` for `t < n_tokens`.
    pub fn matmul(&self, x: &[f32], n_tokens: usize, y: &mut [f32]) -> Result<(), KernelError> {
        if x.len() != n_tokens * self.cols {
            return Err(KernelError::LengthMismatch { what: "matmul input", expected: n_tokens * self.cols, got: x.len() });
        }
        if y.len() != n_tokens * self.rows {
            return Err(KernelError::LengthMismatch { what: "matmul output", expected: n_tokens * self.rows, got: y.len() });
        }
        let mut row = vec![0f32; self.cols];
        for r in 0..self.rows {
            self.dequantize_row(r, &mut row)?;
            for t in 0..n_tokens {
                y[t * self.rows + r] = dot(&row, &x[t * self.cols..(t + 1) * self.cols]);
            }
        }
        let _ = num_threads();
        Ok(())
    }
}

/// f32 dot product.
pub(crate) fn dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}
