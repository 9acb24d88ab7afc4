//! What a row kernel is given: [`WeightRows`], the bytes of a quantized matrix as the kernels
//! read them, and [`RowCall`], one call's rows, activations and outputs. The kernels depend
//! on these and not on `QMatrix` (which dispatches to them).

use std::ops::Range;

use crate::GgmlType;

/// A row-major matrix of `ty` with `cols` elements per row, `row_bytes` bytes per row.
#[derive(Debug, Clone, Copy)]
pub(crate) struct WeightRows<'a> {
    /// Element type.
    pub(crate) ty: GgmlType,
    /// Elements per row.
    pub(crate) cols: usize,
    /// Bytes per row (`ty.row_bytes(cols)`, checked by whoever built the view).
    pub(crate) row_bytes: usize,
    /// All rows, back to back.
    pub(crate) data: &'a [u8],
}

impl<'a> WeightRows<'a> {
    /// The bytes of rows `first .. first + n`.
    ///
    /// # Panics
    /// If the rows are out of range (an index from the caller's row range, not data).
    #[inline(always)]
    pub(crate) fn rows(&self, first: usize, n: usize) -> &'a [u8] {
        &self.data[first * self.row_bytes..(first + n) * self.row_bytes]
    }
}

/// One row-kernel call: `out[t][i] = Σ_c W[rows.start + i, c] · x_t[c]` for
/// `i < rows.len()`, `t < n_tokens`. `x` is the activations of all tokens (`[f32]` for the
/// Exact kernels, quantized for the Fast ones); `out` has `n_tokens` slices of at least
/// `rows.len()` elements.
pub(crate) struct RowCall<'w, 'o, 'y, X: ?Sized> {
    /// The matrix.
    pub(crate) w: WeightRows<'w>,
    /// The weight rows to compute.
    pub(crate) rows: Range<usize>,
    /// The activations.
    pub(crate) x: &'w X,
    /// Tokens in `x`.
    pub(crate) n_tokens: usize,
    /// Per token, the outputs of `rows`.
    pub(crate) out: &'o mut [&'y mut [f32]],
}
