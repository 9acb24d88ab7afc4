//! The Exact-mode row kernel for every type without a fused kernel: dequantize, then dot.
//!
//! Decides: the tiling. [`ROW_TILE`] rows at a time are dequantized into a scratch buffer
//! (exactly, see `dequant.rs`) and dotted against the tokens [`POS_TILE`] at a time with
//! `dots.rs`'s [`dot4x4`] (each load of a row or a token serves four products), the last
//! tokens with [`dot4`], tail rows with [`dot`]. As `dot4x4` and `dot4` equal `dot` bit for
//! bit, a row's result never depends on the tile it falls in nor on the token count.
//! F32 rows that are 4-byte aligned (GGUF aligns tensor data to 32 bytes) are dotted in
//! place: the same values as their copy, so the same bits, without the copy (the MoE router
//! of the Kimi/DeepSeek files is F32 and is read at every token).
//!
//! Leaves to `dots.rs` the order of accumulation and to `simd.rs` the implementation: the
//! whole body, dequantization included, is compiled for AVX2 + FMA when that runs.

use super::dots::{dot, dot4, dot4x4, POS_TILE, ROW_TILE};
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
    // Allocated at the first tile that needs dequantizing (never for aligned F32 rows).
    let mut scratch: Vec<f32> = Vec::new();
    let mut r = rows.start;
    while r < rows.end {
        let n = ROW_TILE.min(rows.end - r);
        let tile = match in_place_f32(w.ty, w.rows(r, n)) {
            Some(t) => t,
            None => {
                scratch.resize(ROW_TILE * cols, 0.0);
                dequantize_unchecked(w.ty, w.rows(r, n), &mut scratch[..n * cols]);
                &scratch[..n * cols]
            }
        };
        let i = r - rows.start;
        if n == ROW_TILE {
            let tile: [&[f32]; ROW_TILE] = std::array::from_fn(|k| &tile[k * cols..(k + 1) * cols]);
            let xt = |t: usize| &x[t * cols..(t + 1) * cols];
            let mut t = 0;
            while t + POS_TILE <= n_tokens {
                let d = dot4x4::<S>(tile, [xt(t), xt(t + 1), xt(t + 2), xt(t + 3)]);
                for (k, dk) in d.iter().enumerate() {
                    for (q, &v) in dk.iter().enumerate() {
                        out[t + q][i + k] = v;
                    }
                }
                t += POS_TILE;
            }
            for (t, o) in out.iter_mut().enumerate().take(n_tokens).skip(t) {
                let d = dot4::<S>(tile, xt(t));
                o[i..i + ROW_TILE].copy_from_slice(&d);
            }
        } else {
            for k in 0..n {
                let wk = &tile[k * cols..(k + 1) * cols];
                for (t, o) in out.iter_mut().enumerate().take(n_tokens) {
                    o[i + k] = dot::<S>(wk, &x[t * cols..(t + 1) * cols]);
                }
            }
        }
        r += n;
    }
}

/// `bytes` as f32 values where they can be read in place: F32 rows at a 4-byte aligned
/// address on a little-endian target (the values the dequantizer would copy out).
#[inline(always)]
fn in_place_f32(ty: crate::GgmlType, bytes: &[u8]) -> Option<&[f32]> {
    if ty != crate::GgmlType::F32 || !cfg!(target_endian = "little") {
        return None;
    }
    // SAFETY: every bit pattern is a valid f32; `align_to` only yields the aligned middle.
    let (head, mid, tail) = unsafe { bytes.align_to::<f32>() };
    (head.is_empty() && tail.is_empty()).then_some(mid)
}
