//! The Exact-mode row kernel for every type without a fused kernel: dequantize, then dot.
//!
//! Decides: the tiling. [`ROW_TILE`] rows at a time are dequantized into a scratch buffer
//! (exactly, see `dequant.rs`) and dotted against each token with `dots.rs`'s [`dot4`]
//! (one read of a token's activations serves the whole tile), tail rows with [`dot`]. As
//! `dot4` equals `dot` bit for bit, a row's result never depends on the tile it falls in.
//!
//! Leaves to `dots.rs` the order of accumulation and to `simd.rs` the implementation: the
//! whole body, dequantization included, is compiled for AVX2 + FMA when that runs.

use super::dots::{dot, dot4, ROW_TILE};
use super::rows::RowCall;
use super::simd::{dispatch, F32Lanes, IsaKernel, Portable, SimdIsa};
use crate::dequant::dequantize_unchecked;

/// Dequantize-then-dot for any type (see the module docs), with `isa` where this CPU has it.
pub(crate) fn dot_rows_dequantized(call: RowCall<'_, '_, '_, [f32]>, isa: SimdIsa) {
    dispatch(isa, Dequantized(call));
}

/// [`body`] as an [`IsaKernel`].
struct Dequantized<'w, 'o, 'y>(RowCall<'w, 'o, 'y, [f32]>);

impl IsaKernel for Dequantized<'_, '_, '_> {
    #[inline(always)]
    fn run_portable(self) {
        body::<Portable>(self.0);
    }

    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn run_avx2_fma(self) {
        body::<super::simd::Avx2Fma>(self.0);
    }
}

#[inline(always)]
fn body<S: F32Lanes>(call: RowCall<'_, '_, '_, [f32]>) {
    let RowCall {
        w,
        rows,
        x,
        n_tokens,
        out,
    } = call;
    let cols = w.cols;
    let mut scratch = vec![0f32; ROW_TILE * cols];
    let mut r = rows.start;
    while r < rows.end {
        let n = ROW_TILE.min(rows.end - r);
        dequantize_unchecked(w.ty, w.rows(r, n), &mut scratch[..n * cols]);
        let i = r - rows.start;
        if n == ROW_TILE {
            let tile: [&[f32]; ROW_TILE] =
                std::array::from_fn(|k| &scratch[k * cols..(k + 1) * cols]);
            for (t, o) in out.iter_mut().enumerate().take(n_tokens) {
                let d = dot4::<S>(tile, &x[t * cols..(t + 1) * cols]);
                o[i..i + ROW_TILE].copy_from_slice(&d);
            }
        } else {
            for k in 0..n {
                let wk = &scratch[k * cols..(k + 1) * cols];
                for (t, o) in out.iter_mut().enumerate().take(n_tokens) {
                    o[i + k] = dot::<S>(wk, &x[t * cols..(t + 1) * cols]);
                }
            }
        }
        r += n;
    }
}
