//! `QMatrix`: a borrowed quantized matrix `[rows, cols]` (ggml ne = [cols, rows]) and the
//! kernel `y[t, r] = Σ_c W[r, c] · x[t, c]`, threaded over rows.
//!
//! Decides: how the work is split. Rows are cut into one contiguous range per thread
//! (multiples of the row tile; [`MATMUL_GRID_RANGES_PER_THREAD`] for the compute-bound grid
//! panels, claimed by whichever thread is free), each running the per-type row kernel chosen
//! by `matmul/kernel_table.rs` on its range, and products below [`MATMUL_PARALLEL_MIN_MACS`]
//! stay on the calling thread, where handing off would cost more than it saves. The ranges
//! run on the compute team (`team.rs`: the calling thread and persistent members that spin
//! between regions), so no thread is spawned or woken per call; [`set_num_threads`] decides
//! how many threads take part. Results never depend on the split.
//!
//! Decides also: the [`NumericMode`] arithmetic a matrix is computed with. A [`QMatrix`]
//! carries its mode (set by whoever hands it out, e.g. the model); [`NumericMode::Exact`]
//! runs the f32 kernels (`matmul/exact.rs`, `matmul/exact_fused.rs`), [`NumericMode::Fast`]
//! quantizes the activations once per call (`matmul/q8.rs`, on the calling thread) and runs
//! the integer kernels of `matmul/fast.rs` on them (or, for a matrix carrying its
//! [`PackedMatrix`], the panel kernels of `matmul/panel.rs`, split at panel boundaries),
//! with the same row split. Both run the
//! implementation [`SimdIsa::detected`] names (`matmul/simd.rs`).
//!
//! Leaves to the row kernels: the arithmetic. In Exact mode activations and accumulation are
//! f32; weights are never rounded further than their stored format.
//!
//! Files, each importing only from files listed after it:
//!
//! ```text
//! kernel_table.rs  which row kernel each type runs
//! panel.rs         Fast kernels over repacked matrices     (panel/: layout, formats, grid, dots)
//! fast.rs          Fast kernels: tile and token loops      (fast/: formats, block dots)
//! exact_fused.rs   Exact fused kernels: Q4_K, Q6_K, Q8_0
//! exact.rs         Exact kernel for the rest: dequantize, then dot
//! dots.rs          f32 dot products over simd.rs's lanes: the Exact accumulation order
//! prepared.rs      activations prepared once; row ranges for caller-scheduled work
//! q8.rs            activations to int8 blocks (Fast)
//! rows.rs          WeightRows, RowCall: what a row kernel is given
//! simd.rs          SimdIsa (probed once), dispatch, the f32 lanes, the reduction
//! ```

pub(crate) mod dots;
mod exact;
mod exact_fused;
mod fast;
mod kernel_table;
mod panel;
mod prepared;
mod q8;
mod rows;
pub(crate) mod simd;
#[cfg(test)]
mod test_data;

use std::ops::Range;
use std::sync::atomic::{AtomicUsize, Ordering};

pub use fast::FAST_TOKEN_CHUNK;
pub use panel::PackedMatrix;
pub use prepared::PreparedActs;
pub use simd::SimdIsa;

use self::rows::{RowCall, WeightRows};
use crate::{dequantize_row, GgmlType, KernelError};

/// The arithmetic of a matmul.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum NumericMode {
    /// f32 activations and accumulation over exactly dequantized weights: the verification
    /// reference (results independent of batching and threads, within f32 rounding of the
    /// fixtures' oracle).
    #[default]
    Exact,
    /// Activations rounded to int8 once per matmul (per block of 256 as ggml's Q8_K for the
    /// k-quants and IQ4_XS, per 32 as Q8_0 for the legacy types), integer dot products with
    /// the weights' codes, f32 block scales: llama.cpp's CPU arithmetic. Every block format
    /// has a fast kernel; F32, F16 and BF16 weights compute as in `Exact`.
    Fast,
}

impl NumericMode {
    /// `"exact"` or `"fast"`.
    pub fn name(self) -> &'static str {
        match self {
            Self::Exact => "exact",
            Self::Fast => "fast",
        }
    }
}

/// Whether weights of type `ty` have a Fast-mode kernel (otherwise Fast computes them as
/// Exact does).
pub fn has_fast_kernel(ty: GgmlType) -> bool {
    kernel_table::fast_rows_fn(ty).is_some()
}

/// Multiply-adds (`rows · cols · n_tokens`) below which a matmul runs on the calling thread
/// (128 Ki: a decode step's small projections take microseconds, less than handing half of
/// one to another thread costs; measured on two threads, 2^18 decoded 5-10% slower).
pub const MATMUL_PARALLEL_MIN_MACS: usize = 1 << 17;

/// Fewest rows a worker thread is given (fewer threads are used for short matrices).
pub const MATMUL_MIN_ROWS_PER_THREAD: usize = 16;

/// Row ranges per thread a parallel matmul of grid panels (IQ1_S .. IQ3_XXS, Fast) is cut
/// into, claimed by whichever thread is free: with one range per thread, a thread slowed by
/// a neighbour or woken late held the others idle at the join (`perf` of the small IQ1_S
/// file's decode on two threads: the member spinning while the caller finished its half of
/// the output head). Measured on two threads, tg256, interleaved: IQ1_S 427-438 -> 442-481
/// t/s; for the memory-bound types one contiguous range per thread stays faster (Q4_K with 4
/// ranges 752-820 vs 856-860 t/s, Q2_K 1046-1107 vs 1077-1133).
pub const MATMUL_GRID_RANGES_PER_THREAD: usize = 4;

/// Most worker threads a matmul uses, whatever [`set_num_threads`] asks for.
pub const MATMUL_THREADS_MAX: usize = 256;

static NUM_THREADS: AtomicUsize = AtomicUsize::new(0);

/// Sets the worker thread count for matmuls (0 = all available cores; at most
/// [`MATMUL_THREADS_MAX`] are used).
pub fn set_num_threads(n: usize) {
    NUM_THREADS.store(n, Ordering::Relaxed);
}

/// Sets [`set_num_threads`], which sizes every parallel region of the kernels and of the
/// forward pass on the compute team (`team.rs`; attention jobs included), and sizes rayon's
/// global pool (load-time packing, and the regions of a caller that finds the team busy) to
/// `n` workers (0 = one per core): so `--threads 1` is one core for everything. The pool can
/// be sized only before its first use; returns whether this call did (a later call still
/// sets the thread count).
pub fn set_compute_threads(n: usize) -> bool {
    set_num_threads(n);
    rayon::ThreadPoolBuilder::new()
        .num_threads(n)
        .build_global()
        .is_ok()
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
    mode: NumericMode,
    /// The same matrix repacked into panels (Fast mode computes from it when present).
    packed: Option<&'a PackedMatrix>,
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
            mode: NumericMode::Exact,
            packed: None,
        })
    }

    /// The same matrix computed in `mode` (a new matrix is [`NumericMode::Exact`]).
    pub fn with_mode(self, mode: NumericMode) -> Self {
        Self { mode, ..self }
    }

    /// This matrix computing its Fast mode from `p`, the same matrix repacked
    /// ([`PackedMatrix::pack`]); an error if `p` has another type or shape. Exact mode
    /// never reads it.
    pub fn with_packed(self, p: &'a PackedMatrix) -> Result<Self, KernelError> {
        if (p.ty(), p.rows(), p.cols()) != (self.ty, self.rows, self.cols) {
            return Err(KernelError::LengthMismatch {
                what: "packed matrix (another type or shape)",
                expected: self.rows,
                got: p.rows(),
            });
        }
        Ok(Self {
            packed: Some(p),
            ..self
        })
    }

    /// The packed form Fast mode computes from, if any.
    pub fn packed(&self) -> Option<&'a PackedMatrix> {
        self.packed
    }

    /// The arithmetic [`QMatrix::matmul`] uses.
    pub fn mode(&self) -> NumericMode {
        self.mode
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
        self.check_lengths(x.len(), n_tokens, y.len())?;
        if self.rows == 0 || n_tokens == 0 {
            return Ok(());
        }
        let isa = SimdIsa::detected();
        let w = self.weight_rows();
        if self.mode == NumericMode::Fast && kernel_table::fast_rows_fn(self.ty).is_some() {
            let acts = q8::QActs::quantize(x, n_tokens, self.cols, self.ty.block_elems(), isa);
            self.split(n_tokens, y, threads, |rows, out| {
                self.fast_rows(&acts, rows, n_tokens, out, isa)
            });
            return Ok(());
        }
        let kernel = kernel_table::exact_rows_fn(self.ty);
        self.split(n_tokens, y, threads, |rows, out| {
            kernel(
                RowCall {
                    w,
                    rows,
                    x,
                    n_tokens,
                    out,
                },
                isa,
            )
        });
        Ok(())
    }

    /// Exact mode on the calling thread with the implementation `isa`: the tests' handle to
    /// compare implementations. Fails if this CPU cannot run `isa`.
    pub fn matmul_exact_with_isa(
        &self,
        x: &[f32],
        n_tokens: usize,
        y: &mut [f32],
        isa: SimdIsa,
    ) -> Result<(), KernelError> {
        Self::check_isa(isa)?;
        self.check_lengths(x.len(), n_tokens, y.len())?;
        if self.rows == 0 || n_tokens == 0 {
            return Ok(());
        }
        let mut out: Vec<&mut [f32]> = y.chunks_exact_mut(self.rows).collect();
        let call = RowCall {
            w: self.weight_rows(),
            rows: 0..self.rows,
            x,
            n_tokens,
            out: &mut out,
        };
        kernel_table::exact_rows_fn(self.ty)(call, isa);
        Ok(())
    }

    /// Fast mode on the calling thread with the integer implementation `isa`: the tests'
    /// handle to compare implementations. Fails if `ty` has no fast kernel or this CPU
    /// cannot run `isa`.
    pub fn matmul_fast_with_isa(
        &self,
        x: &[f32],
        n_tokens: usize,
        y: &mut [f32],
        isa: SimdIsa,
    ) -> Result<(), KernelError> {
        kernel_table::fast_rows_fn(self.ty).ok_or(KernelError::Unavailable {
            what: "fast kernel for this weight type",
        })?;
        Self::check_isa(isa)?;
        self.check_lengths(x.len(), n_tokens, y.len())?;
        if self.rows == 0 || n_tokens == 0 {
            return Ok(());
        }
        let acts = q8::QActs::quantize(x, n_tokens, self.cols, self.ty.block_elems(), isa);
        let mut out: Vec<&mut [f32]> = y.chunks_exact_mut(self.rows).collect();
        self.fast_rows(&acts, 0..self.rows, n_tokens, &mut out, isa);
        Ok(())
    }

    /// Rows `rows` in Fast mode from quantized activations: the panel kernel when this
    /// matrix carries its packed form, else the type's row kernel (the caller checked that
    /// one exists).
    fn fast_rows(
        &self,
        acts: &q8::QActs,
        rows: Range<usize>,
        n_tokens: usize,
        out: &mut [&mut [f32]],
        isa: SimdIsa,
    ) {
        if let Some(p) = self.packed {
            let call = panel::PanelCall {
                p,
                rows,
                x: acts,
                n_tokens,
                out,
            };
            return panel::panel_rows(call, isa);
        }
        if let Some(kernel) = kernel_table::fast_rows_fn(self.ty) {
            let call = RowCall {
                w: self.weight_rows(),
                rows,
                x: acts,
                n_tokens,
                out,
            };
            kernel(call, isa);
        }
    }

    /// Refuses an implementation this CPU cannot run.
    fn check_isa(isa: SimdIsa) -> Result<(), KernelError> {
        if isa.available() {
            Ok(())
        } else {
            Err(KernelError::Unavailable {
                what: "this SIMD implementation on this CPU",
            })
        }
    }

    /// The rows as the kernels read them.
    fn weight_rows(&self) -> WeightRows<'a> {
        WeightRows {
            ty: self.ty,
            cols: self.cols,
            row_bytes: self.row_bytes,
            data: self.data,
        }
    }

    /// `x` must hold `n_tokens · cols` values and `y` `n_tokens · rows`.
    fn check_lengths(&self, x: usize, n_tokens: usize, y: usize) -> Result<(), KernelError> {
        let x_len = n_tokens.checked_mul(self.cols);
        if x_len != Some(x) {
            return Err(KernelError::LengthMismatch {
                what: "matmul input (n_tokens · cols)",
                expected: x_len.unwrap_or(usize::MAX),
                got: x,
            });
        }
        let y_len = n_tokens.checked_mul(self.rows);
        if y_len != Some(y) {
            return Err(KernelError::LengthMismatch {
                what: "matmul output (n_tokens · rows)",
                expected: y_len.unwrap_or(usize::MAX),
                got: y,
            });
        }
        Ok(())
    }

    /// Runs `kernel(rows, out)` over contiguous row ranges claimed by `threads` threads
    /// (see the module docs); `out[t]` is token `t`'s slice of `y` for those rows.
    fn split<K>(&self, n_tokens: usize, y: &mut [f32], threads: usize, kernel: K)
    where
        K: Fn(Range<usize>, &mut [&mut [f32]]) + Sync,
    {
        // Packed matrices split at panel boundaries (a range inside a panel would compute
        // the whole panel).
        let tile = match self.packed {
            Some(_) if self.mode == NumericMode::Fast => panel::PANEL_ROWS,
            _ => dots::ROW_TILE,
        };

        let macs = self.rows.saturating_mul(self.cols).saturating_mul(n_tokens);
        let by_rows = self.rows / MATMUL_MIN_ROWS_PER_THREAD.max(tile);
        let threads = if macs < MATMUL_PARALLEL_MIN_MACS {
            1
        } else {
            threads.clamp(1, MATMUL_THREADS_MAX).min(by_rows.max(1))
        };

        // Rows per range, rounded up to whole tiles, at least the rows a thread is given.
        let grid = self.mode == NumericMode::Fast
            && self.packed.is_some()
            && PackedMatrix::is_grid(self.ty);
        let ranges = match threads {
            1 => 1,
            _ if grid => threads * MATMUL_GRID_RANGES_PER_THREAD,
            _ => threads,
        };
        let min_rows = MATMUL_MIN_ROWS_PER_THREAD.max(tile);
        let per = (self.rows.div_ceil(ranges).div_ceil(tile) * tile).max(min_rows.min(self.rows));
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

        let jobs: Vec<(Range<usize>, Vec<&mut [f32]>)> = outs
            .into_iter()
            .enumerate()
            .map(|(k, out)| (k * per..((k + 1) * per).min(self.rows), out))
            .collect();
        crate::run_jobs(jobs, threads, |(rows, mut out)| kernel(rows, &mut out));
    }
}
