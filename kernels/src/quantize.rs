//! Quantization of f32 rows into ggml block formats (used to write models, e.g. `synth`).
//!
//! Decides: a simple, fast round-to-nearest quantizer per format, with per-block (and for
//! k-quants per-sub-block) absmax or min/max scales. Scales are rounded to their stored
//! precision (f16, 4/6/8-bit) *before* the elements are quantized, so the bytes written
//! dequantize (with [`crate::dequantize_row`]) to the nearest grid point the block can
//! express. Output is not bit-identical to ggml's quantizers (which search for better
//! scales); every block written is valid.
//!
//! Leaves to others: choosing the type per tensor, and parallelism (rows are independent).
//!
//! ```text
//! quantize/legacy.rs   Q4_0, Q4_1, Q5_0, Q5_1, Q8_0
//! quantize/kquants.rs  Q2_K, Q3_K, Q4_K, Q5_K, Q6_K
//! quantize/stand_in.rs IQ4_NL, IQ4_XS, IQ1/IQ2/IQ3 grids, TQ1_0, TQ2_0: NOT quantizers;
//!                      random codes scaled to the block's RMS, for synthetic models
//!                      ([`synthesize_row`])
//! ```
//!
//! Non-finite inputs are refused for block formats ([`KernelError::NonFinite`]). Scales that
//! would overflow f16 saturate at f16's largest finite value (elements then clamp).

mod kquants;
mod legacy;
mod stand_in;

use crate::{GgmlType, KernelError};

/// Rounds `v` to the f16 stored in a block: returns its little-endian bytes and its f32 value.
/// Finite values beyond f16's range saturate to ±65504 instead of becoming infinite.
#[inline(always)]
pub(crate) fn to_f16(v: f32) -> ([u8; 2], f32) {
    let h = half::f16::from_f32(v.clamp(-65504.0, 65504.0));
    (h.to_le_bytes(), h.to_f32())
}

/// `1 / v`, or 0 when `v` is 0 (a block of zeros quantizes to zeros).
#[inline(always)]
pub(crate) fn recip_or_zero(v: f32) -> f32 {
    if v == 0.0 {
        0.0
    } else {
        1.0 / v
    }
}

/// Runs `f` on every `(input block, output block)` pair; lengths were checked by the caller.
/// Fails on the first block holding a NaN or infinity, naming the element.
#[inline(always)]
fn for_each_block<const ELEMS: usize, const BYTES: usize>(
    ty: GgmlType,
    src: &[f32],
    dst: &mut [u8],
    f: impl Fn(&[f32; ELEMS], &mut [u8; BYTES]),
) -> Result<(), KernelError> {
    for (i, (s, d)) in src
        .chunks_exact(ELEMS)
        .zip(dst.chunks_exact_mut(BYTES))
        .enumerate()
    {
        if !s.iter().all(|v| v.is_finite()) {
            let j = s.iter().position(|v| !v.is_finite()).unwrap_or(0);
            return Err(KernelError::NonFinite {
                ty: ty.name(),
                index: i * ELEMS + j,
            });
        }
        // Both conversions always succeed: chunks_exact yields exactly ELEMS / BYTES items.
        if let (Ok(s), Ok(d)) = (
            <&[f32; ELEMS]>::try_from(s),
            <&mut [u8; BYTES]>::try_from(d),
        ) {
            d.fill(0);
            f(s, d);
        }
    }
    Ok(())
}

impl GgmlType {
    /// Whether [`quantize_row`] can write this type (F32, F16, BF16, the legacy types and
    /// the k-quants; not the IQ and TQ types).
    pub fn can_quantize(self) -> bool {
        !stand_in::has_stand_in(self)
    }
}

/// Quantizes one row `src` (whole blocks of `ty`) into `dst` (`ty.row_bytes(src.len())` bytes).
///
/// Fails on a length mismatch, a type that cannot be written (see
/// [`GgmlType::can_quantize`]), or a non-finite value when `ty` is a block format.
pub fn quantize_row(ty: GgmlType, src: &[f32], dst: &mut [u8]) -> Result<(), KernelError> {
    let expected = ty.row_bytes(src.len())?;
    if dst.len() != expected {
        return Err(KernelError::LengthMismatch {
            what: "quantize_row destination",
            expected,
            got: dst.len(),
        });
    }
    match ty {
        GgmlType::F32 => {
            for (d, s) in dst.chunks_exact_mut(4).zip(src) {
                d.copy_from_slice(&s.to_le_bytes());
            }
        }
        GgmlType::F16 => {
            for (d, s) in dst.chunks_exact_mut(2).zip(src) {
                d.copy_from_slice(&half::f16::from_f32(*s).to_le_bytes());
            }
        }
        GgmlType::BF16 => {
            for (d, s) in dst.chunks_exact_mut(2).zip(src) {
                d.copy_from_slice(&half::bf16::from_f32(*s).to_le_bytes());
            }
        }
        GgmlType::Q4_0 => for_each_block(ty, src, dst, legacy::q4_0)?,
        GgmlType::Q4_1 => for_each_block(ty, src, dst, legacy::q4_1)?,
        GgmlType::Q5_0 => for_each_block(ty, src, dst, legacy::q5_0)?,
        GgmlType::Q5_1 => for_each_block(ty, src, dst, legacy::q5_1)?,
        GgmlType::Q8_0 => for_each_block(ty, src, dst, legacy::q8_0)?,
        GgmlType::Q2_K => for_each_block(ty, src, dst, kquants::q2_k)?,
        GgmlType::Q3_K => for_each_block(ty, src, dst, kquants::q3_k)?,
        GgmlType::Q4_K => for_each_block(ty, src, dst, kquants::q4_k)?,
        GgmlType::Q5_K => for_each_block(ty, src, dst, kquants::q5_k)?,
        GgmlType::Q6_K => for_each_block(ty, src, dst, kquants::q6_k)?,
        GgmlType::IQ4_NL
        | GgmlType::IQ4_XS
        | GgmlType::IQ2_XXS
        | GgmlType::IQ2_XS
        | GgmlType::IQ2_S
        | GgmlType::IQ3_XXS
        | GgmlType::IQ3_S
        | GgmlType::IQ1_S
        | GgmlType::IQ1_M
        | GgmlType::TQ1_0
        | GgmlType::TQ2_0 => {
            return Err(KernelError::UnsupportedType {
                id: ty.id(),
                name: ty.name(),
            })
        }
    }
    Ok(())
}

/// Quantizes `src.len() / cols` consecutive rows of `cols` elements each into `dst`.
pub fn quantize_rows(
    ty: GgmlType,
    src: &[f32],
    cols: usize,
    dst: &mut [u8],
) -> Result<(), KernelError> {
    let row_bytes = ty.row_bytes(cols)?;
    let n_rows = src
        .len()
        .checked_div(cols)
        .filter(|r| r * cols == src.len());
    let Some(n_rows) = n_rows else {
        return Err(KernelError::LengthMismatch {
            what: "quantize_rows source (a multiple of a non-zero cols)",
            expected: cols,
            got: src.len(),
        });
    };
    let expected = n_rows * row_bytes;
    if dst.len() != expected {
        return Err(KernelError::LengthMismatch {
            what: "quantize_rows destination",
            expected,
            got: dst.len(),
        });
    }
    // Rows are whole blocks, so one call over all rows writes the same bytes.
    quantize_row(ty, src, dst)
}

/// Writes one row of `ty` for a *synthetic* model: [`quantize_row`]'s bytes where
/// [`GgmlType::can_quantize`], else stand-in blocks (IQ and TQ types): pseudo-random codes
/// derived from the block's values, with `d` set so that each block's root mean square is the
/// source block's. Stand-in blocks are valid and deterministic but do not approximate the
/// elements, only their scale; use them for random-weight models, never for real weights.
///
/// Fails as [`quantize_row`] does (length mismatch, non-finite value).
pub fn synthesize_row(ty: GgmlType, src: &[f32], dst: &mut [u8]) -> Result<(), KernelError> {
    if ty.can_quantize() {
        return quantize_row(ty, src, dst);
    }
    let expected = ty.row_bytes(src.len())?;
    if dst.len() != expected {
        return Err(KernelError::LengthMismatch {
            what: "synthesize_row destination",
            expected,
            got: dst.len(),
        });
    }
    let (elems, bytes) = (ty.block_elems(), ty.block_bytes());
    for (i, (x, b)) in src
        .chunks_exact(elems)
        .zip(dst.chunks_exact_mut(bytes))
        .enumerate()
    {
        if let Some(j) = x.iter().position(|v| !v.is_finite()) {
            return Err(KernelError::NonFinite {
                ty: ty.name(),
                index: i * elems + j,
            });
        }
        stand_in::stand_in_block(ty, x, b);
    }
    Ok(())
}
