//! `QMatrix`: a borrowed quantized matrix `[rows, cols]` (ggml ne = [cols, rows]) and the
//! kernel `y[t, r] = Σ_c W[r, c] · x[t, c]`, threaded over rows.
//!
//! Decides: how the work is split. Rows are cut into one contiguous range per thread
//! (multiples of the row tile), each thread runs the per-type row kernel of
//! `matmul/row_kernel.rs` on its range, and products below [`MATMUL_PARALLEL_MIN_MACS`]
//! stay on the calling thread, where handing off would cost more than it saves. The calling
//! thread runs the first range; the others are queued on rayon's global pool of persistent
//! (parked when idle) workers, so no thread is spawned per call. [`set_num_threads`] still
//! decides how many ranges a matmul is cut into; the global pool (one worker per core, or
//! `RAYON_NUM_THREADS`) decides how many run at once. Results never depend on the split.
//!
//! Leaves to the row kernels: the arithmetic. Activations and accumulation are f32; weights
//! are never rounded further than their stored format.

mod fused;
mod row_kernel;

use std::sync::atomic::{AtomicUsize, Ordering};

use crate::{dequantize_row, GgmlType, KernelError};

/// Multiply-adds (`rows · cols · n_tokens`) below which a matmul runs on the calling thread.
pub const MATMUL_PARALLEL_MIN_MACS: usize = 1 << 18;

/// Fewest rows a worker thread is given (fewer threads are used for short matrices).
pub const MATMUL_MIN_ROWS_PER_THREAD: usize = 16;

/// Most worker threads a matmul uses, whatever [`set_num_threads`] asks for.
pub const MATMUL_THREADS_MAX: usize = 256;

static NUM_THREADS: AtomicUsize = AtomicUsize::new(0);

/// Sets the worker thread count for matmuls (0 = all available cores; at most
/// [`MATMUL_THREADS_MAX`] are used).
pub fn set_num_threads(n: usize) {
    NUM_THREADS.store(n, Ordering::Relaxed);
}

/// The worker thread count matmuls use now (resolving 0 to the available cores).
pub fn num_threads() -> usize {
    let n = match NUM_THREADS.load(Ordering::Relaxed) {
        0 => std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1),
        n => n,
    };
    n.min(MATMUL_THREADS_MAX)
}

/// A quantized row-major matrix borrowed from a mapped file: `rows` rows of `cols` elements.
#[derive(Debug, Clone, Copy)]
pub struct QMatrix<'a> {
    ty: GgmlType,
    rows: usize,
    cols: usize,
    row_bytes: usize,
    data: &'a [u8],
}

impl<'a> QMatrix<'a> {
    /// Wraps `data`, checking that it holds exactly `rows` rows of `cols` elements of `ty`.
    pub fn new(
        ty: GgmlType,
        rows: usize,
        cols: usize,
        data: &'a [u8],
    ) -> Result<Self, KernelError> {
        let row_bytes = ty.row_bytes(cols)?;
        let expected = row_bytes
            .checked_mul(rows)
            .ok_or(KernelError::LengthMismatch {
                what: "QMatrix data (rows · row bytes overflows)",
                expected: usize::MAX,
                got: data.len(),
            })?;
        if data.len() != expected {
            return Err(KernelError::LengthMismatch {
                what: "QMatrix data",
                expected,
                got: data.len(),
            });
        }
        Ok(Self {
            ty,
            rows,
            cols,
            row_bytes,
            data,
        })
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

    /// Bytes of one row.
    pub fn row_bytes(&self) -> usize {
        self.row_bytes
    }

    /// The raw bytes of row `r`.
    ///
    /// # Panics
    /// If `r >= rows` (an index, not data: callers loop over `0..rows`).
    pub fn row_data(&self, r: usize) -> &'a [u8] {
        &self.data[r * self.row_bytes..(r + 1) * self.row_bytes]
    }

    /// Dequantizes row `r` into `dst` (`cols` long).
    pub fn dequantize_row(&self, r: usize, dst: &mut [f32]) -> Result<(), KernelError> {
        if r >= self.rows {
            return Err(KernelError::LengthMismatch {
                what: "QMatrix row index (rows)",
                expected: self.rows,
                got: r,
            });
        }
        dequantize_row(self.ty, self.row_data(r), dst)
    }

    /// `y[t * rows + r] = Σ_c W[r, c] · x[t * cols + c]` for `t < n_tokens`, threaded over
    /// rows with [`num_threads`] workers.
    pub fn matmul(&self, x: &[f32], n_tokens: usize, y: &mut [f32]) -> Result<(), KernelError> {
        self.matmul_with_threads(x, n_tokens, y, num_threads())
    }

    /// [`QMatrix::matmul`] with an explicit worker count (1 = the calling thread only).
    pub fn matmul_with_threads(
        &self,
        x: &[f32],
        n_tokens: usize,
        y: &mut [f32],
        threads: usize,
    ) -> Result<(), KernelError> {
        let x_len = n_tokens.checked_mul(self.cols);
        if x_len != Some(x.len()) {
            return Err(KernelError::LengthMismatch {
                what: "matmul input (n_tokens · cols)",
                expected: x_len.unwrap_or(usize::MAX),
                got: x.len(),
            });
        }
        let y_len = n_tokens.checked_mul(self.rows);
        if y_len != Some(y.len()) {
            return Err(KernelError::LengthMismatch {
                what: "matmul output (n_tokens · rows)",
                expected: y_len.unwrap_or(usize::MAX),
                got: y.len(),
            });
        }
        if self.rows == 0 || n_tokens == 0 {
            return Ok(());
        }
        let kernel = row_kernel::dot_rows_fn(self.ty);
        let tile = row_kernel::ROW_TILE;

        let macs = self.rows.saturating_mul(self.cols).saturating_mul(n_tokens);
        let by_rows = self.rows / MATMUL_MIN_ROWS_PER_THREAD.max(tile);
        let threads = if macs < MATMUL_PARALLEL_MIN_MACS {
            1
        } else {
            threads.clamp(1, MATMUL_THREADS_MAX).min(by_rows.max(1))
        };

        // Rows per thread, rounded up to whole tiles.
        let per = self.rows.div_ceil(threads).div_ceil(tile) * tile;
        // outs[k][t] is token t's output for the k-th row range.
        let n_ranges = self.rows.div_ceil(per);
        let mut outs: Vec<Vec<&mut [f32]>> = (0..n_ranges)
            .map(|_| Vec::with_capacity(n_tokens))
            .collect();
        for token_out in y.chunks_exact_mut(self.rows) {
            for (k, part) in token_out.chunks_mut(per).enumerate() {
                outs[k].push(part);
            }
        }

        let mut jobs = outs.into_iter().enumerate();
        let first = jobs.next();
        if n_ranges == 1 {
            if let Some((_, mut out)) = first {
                kernel(self, 0..self.rows, x, n_tokens, &mut out);
            }
            return Ok(());
        }
        // Ranges after the first go to the persistent pool; the calling thread runs the first
        // and then waits for (or helps with) the rest.
        rayon::in_place_scope(|s| {
            for (k, mut out) in jobs {
                let rows = k * per..((k + 1) * per).min(self.rows);
                s.spawn(move |_| kernel(self, rows, x, n_tokens, &mut out));
            }
            if let Some((_, mut out)) = first {
                kernel(self, 0..per.min(self.rows), x, n_tokens, &mut out);
            }
        });
        Ok(())
    }
}
