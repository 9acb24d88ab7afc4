//! Exact dequantization of ggml block formats to f32.
//!
//! Decides: the element order and the float operation order of every supported format, which
//! are those of gguf-py's `gguf.quants.dequantize` (identical to ggml's C
//! `dequantize_row_*`: each product is formed left to right in f32, e.g. Q4_K is
//! `(d·sc)·q − (dmin·m)`, never fused). Results are bit-identical to gguf-py; the oracle
//! vectors in `tests/vectors/` check this for every type.
//!
//! Leaves to others: tensor shapes (a row is whole blocks, blocks never span rows) and the
//! choice of which rows to decode.
//!
//! ```text
//! dequant/legacy.rs   32-element blocks: Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, IQ4_NL
//! dequant/kquants.rs  256-element super-blocks: Q2_K, Q3_K, Q4_K, Q5_K, Q6_K
//! dequant/iq4xs.rs    256-element super-block with IQ4_NL's non-linear grid: IQ4_XS
//! dequant/iq2.rs      2-bit grids: IQ2_XXS, IQ2_XS, IQ2_S
//! dequant/iq3.rs      3-bit grids: IQ3_XXS, IQ3_S
//! dequant/iq1.rs      ternary grid plus offset: IQ1_S, IQ1_M
//! dequant/ternary.rs  TQ1_0, TQ2_0
//! dequant/iq_tables.rs the grids and sign masks, generated from gguf-py's
//!                     (`kernels/tools/gen_iq_tables.py`)
//! ```

mod iq1;
mod iq2;
mod iq3;
mod iq4xs;
mod iq_tables;
mod kquants;
mod legacy;
mod ternary;

pub(crate) use iq1::{iq1_m_d, iq1_m_d_bits, iq1_m_scale};
pub(crate) use iq_tables::{
    IQ1S_GRID, IQ2S_GRID, IQ2XS_GRID, IQ2XXS_GRID, IQ3S_GRID, IQ3XXS_GRID, KSIGNS_IQ2XS,
};
pub(crate) use kquants::{scale_min_k4, scales12};
pub(crate) use legacy::IQ4_NL_GRID;
pub(crate) use ternary::tq1_0_values;

use crate::{GgmlType, KernelError};

/// Reads the little-endian IEEE half at `bytes` as f32 (exact).
#[inline(always)]
pub(crate) fn f16_to_f32(bytes: [u8; 2]) -> f32 {
    half::f16::from_le_bytes(bytes).to_f32()
}

/// Runs `f` on every `(block, output)` pair of a row whose lengths the caller checked.
#[inline(always)]
fn for_each_block<const BYTES: usize, const ELEMS: usize>(
    src: &[u8],
    dst: &mut [f32],
    f: impl Fn(&[u8; BYTES], &mut [f32; ELEMS]),
) {
    for (s, d) in src.chunks_exact(BYTES).zip(dst.chunks_exact_mut(ELEMS)) {
        // Both conversions always succeed: chunks_exact yields exactly BYTES / ELEMS items.
        if let (Ok(s), Ok(d)) = (
            <&[u8; BYTES]>::try_from(s),
            <&mut [f32; ELEMS]>::try_from(d),
        ) {
            f(s, d);
        }
    }
}

/// Dequantizes one row: `src` holds whole blocks of `ty`, `dst` receives every element.
///
/// Fails if `dst.len()` is not whole blocks of `ty` or `src` is not exactly that many blocks.
pub fn dequantize_row(ty: GgmlType, src: &[u8], dst: &mut [f32]) -> Result<(), KernelError> {
    let expected = ty.row_bytes(dst.len())?;
    if src.len() != expected {
        return Err(KernelError::LengthMismatch {
            what: "dequantize_row source",
            expected,
            got: src.len(),
        });
    }
    dequantize_unchecked(ty, src, dst);
    Ok(())
}

/// Dequantizes `dst.len() / cols` consecutive rows of `cols` elements each.
pub fn dequantize_rows(
    ty: GgmlType,
    src: &[u8],
    cols: usize,
    dst: &mut [f32],
) -> Result<(), KernelError> {
    let row_bytes = ty.row_bytes(cols)?;
    let n_rows = dst
        .len()
        .checked_div(cols)
        .filter(|r| r * cols == dst.len());
    let Some(n_rows) = n_rows else {
        return Err(KernelError::LengthMismatch {
            what: "dequantize_rows destination (a multiple of a non-zero cols)",
            expected: cols,
            got: dst.len(),
        });
    };
    let expected = n_rows * row_bytes;
    if src.len() != expected {
        return Err(KernelError::LengthMismatch {
            what: "dequantize_rows source",
            expected,
            got: src.len(),
        });
    }
    dequantize_unchecked(ty, src, dst);
    Ok(())
}

/// Dequantizes whole blocks (inlined so that SIMD-enabled row kernels compile it for their
/// target features); the caller has checked that `src` is exactly the blocks of
/// `dst`. A mismatch would only decode the shorter of the two, never read out of bounds.
#[inline(always)]
pub(crate) fn dequantize_unchecked(ty: GgmlType, src: &[u8], dst: &mut [f32]) {
    match ty {
        GgmlType::F32 => {
            for (d, s) in dst.iter_mut().zip(src.chunks_exact(4)) {
                *d = f32::from_le_bytes([s[0], s[1], s[2], s[3]]);
            }
        }
        GgmlType::F16 => {
            for (d, s) in dst.iter_mut().zip(src.chunks_exact(2)) {
                *d = f16_to_f32([s[0], s[1]]);
            }
        }
        GgmlType::BF16 => {
            for (d, s) in dst.iter_mut().zip(src.chunks_exact(2)) {
                *d = f32::from_bits((u16::from_le_bytes([s[0], s[1]]) as u32) << 16);
            }
        }
        GgmlType::Q4_0 => for_each_block(src, dst, legacy::q4_0),
        GgmlType::Q4_1 => for_each_block(src, dst, legacy::q4_1),
        GgmlType::Q5_0 => for_each_block(src, dst, legacy::q5_0),
        GgmlType::Q5_1 => for_each_block(src, dst, legacy::q5_1),
        GgmlType::Q8_0 => for_each_block(src, dst, legacy::q8_0),
        GgmlType::IQ4_NL => for_each_block(src, dst, legacy::iq4_nl),
        GgmlType::Q2_K => for_each_block(src, dst, kquants::q2_k),
        GgmlType::Q3_K => for_each_block(src, dst, kquants::q3_k),
        GgmlType::Q4_K => for_each_block(src, dst, kquants::q4_k),
        GgmlType::Q5_K => for_each_block(src, dst, kquants::q5_k),
        GgmlType::Q6_K => for_each_block(src, dst, kquants::q6_k),
        GgmlType::IQ4_XS => for_each_block(src, dst, iq4xs::iq4_xs),
        GgmlType::IQ2_XXS => for_each_block(src, dst, iq2::iq2_xxs),
        GgmlType::IQ2_XS => for_each_block(src, dst, iq2::iq2_xs),
        GgmlType::IQ2_S => for_each_block(src, dst, iq2::iq2_s),
        GgmlType::IQ3_XXS => for_each_block(src, dst, iq3::iq3_xxs),
        GgmlType::IQ3_S => for_each_block(src, dst, iq3::iq3_s),
        GgmlType::IQ1_S => for_each_block(src, dst, iq1::iq1_s),
        GgmlType::IQ1_M => for_each_block(src, dst, iq1::iq1_m),
        GgmlType::TQ1_0 => for_each_block(src, dst, ternary::tq1_0),
        GgmlType::TQ2_0 => for_each_block(src, dst, ternary::tq2_0),
    }
}
