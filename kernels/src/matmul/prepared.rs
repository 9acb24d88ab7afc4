//! Activations prepared once and consumed by many row-range calls: the entry point for
//! callers that schedule the work themselves (the MoE layer's one parallel region runs every
//! expert's row blocks as jobs of one pool, instead of a fork/join per matrix).
//!
//! Decides: what "prepared" means per mode. Fast mode with a type that has an integer kernel
//! quantizes the activations for that type's block size (`q8.rs`); every other case keeps
//! the f32 rows. A row range computed from prepared activations gives the same bits as the
//! same rows of [`QMatrix::matmul`] (the row kernels' results depend only on the row and the
//! token), whatever the ranges and whichever thread runs them.

use std::ops::Range;

use super::q8::QActs;
use super::rows::RowCall;
use super::{kernel_table, NumericMode, QMatrix, SimdIsa};
use crate::KernelError;

/// `n_tokens` rows of `cols` activations, ready for the row kernels of matrices that
/// [`QMatrix::accepts`] them.
#[derive(Debug)]
pub struct PreparedActs<'x> {
    x: &'x [f32],
    n_tokens: usize,
    cols: usize,
    /// Quantized codes (Fast mode, a type with an integer kernel), else `None`.
    q: Option<QActs>,
}

impl PreparedActs<'_> {
    /// Tokens held.
    pub fn n_tokens(&self) -> usize {
        self.n_tokens
    }
}

impl QMatrix<'_> {
    /// Prepares `x` (`[n_tokens, cols]`) for this matrix's mode and type (quantized once in
    /// Fast mode); the result serves every matrix that [`QMatrix::accepts`] it.
    pub fn prepare<'x>(
        &self,
        x: &'x [f32],
        n_tokens: usize,
    ) -> Result<PreparedActs<'x>, KernelError> {
        let want = n_tokens.checked_mul(self.cols);
        if want != Some(x.len()) {
            return Err(KernelError::LengthMismatch {
                what: "prepared activations (n_tokens · cols)",
                expected: want.unwrap_or(usize::MAX),
                got: x.len(),
            });
        }
        let q = self.quantizes().then(|| {
            let isa = SimdIsa::detected();
            QActs::quantize(x, n_tokens, self.cols, self.ty.block_elems(), isa)
        });
        Ok(PreparedActs {
            x,
            n_tokens,
            cols: self.cols,
            q,
        })
    }

    /// Whether `acts` was prepared in the form this matrix's kernel reads (same width, and
    /// quantized for the same block size exactly when this matrix quantizes).
    pub fn accepts(&self, acts: &PreparedActs<'_>) -> bool {
        let form = match &acts.q {
            Some(q) => self.quantizes() && q.block == self.ty.block_elems(),
            None => !self.quantizes(),
        };
        acts.cols == self.cols && form
    }

    /// Rows `rows` of `y = x · Wᵀ` for every prepared token, on the calling thread:
    /// `out[t]` receives token `t`'s `rows.len()` results. The same bits as those rows of
    /// [`QMatrix::matmul`].
    pub fn matmul_rows(
        &self,
        acts: &PreparedActs<'_>,
        rows: Range<usize>,
        out: &mut [&mut [f32]],
    ) -> Result<(), KernelError> {
        if !self.accepts(acts) {
            return Err(KernelError::LengthMismatch {
                what: "prepared activations (width or form of another matrix)",
                expected: self.cols,
                got: acts.cols,
            });
        }
        if rows.end > self.rows || rows.start > rows.end {
            return Err(KernelError::LengthMismatch {
                what: "row range end (matrix rows)",
                expected: self.rows,
                got: rows.end,
            });
        }
        if out.len() != acts.n_tokens {
            return Err(KernelError::LengthMismatch {
                what: "row-range outputs (one per token)",
                expected: acts.n_tokens,
                got: out.len(),
            });
        }
        if let Some(bad) = out.iter().find(|o| o.len() < rows.len()) {
            return Err(KernelError::LengthMismatch {
                what: "row-range output slice (rows in the range)",
                expected: rows.len(),
                got: bad.len(),
            });
        }
        if rows.is_empty() || acts.n_tokens == 0 {
            return Ok(());
        }
        let (isa, n_tokens) = (SimdIsa::detected(), acts.n_tokens);
        match &acts.q {
            Some(q) => self.fast_rows(q, rows, n_tokens, out, isa),
            None => kernel_table::exact_rows_fn(self.ty)(
                RowCall {
                    w: self.weight_rows(),
                    rows,
                    x: acts.x,
                    n_tokens,
                    out,
                },
                isa,
            ),
        }
        Ok(())
    }

    /// Whether this matrix computes from quantized activations (Fast mode with an integer
    /// kernel for its type).
    fn quantizes(&self) -> bool {
        self.mode == NumericMode::Fast && kernel_table::fast_rows_fn(self.ty).is_some()
    }
}
