//! Quantization of f32 rows into ggml block formats (used to write models, e.g. `synth`).
//! Bit-exactness with ggml's quantizers is not required; round trips must be exact through
//! `dequantize_row` of the bytes written.

use crate::{GgmlType, KernelError};

/// Quantizes one row `src` (whole blocks of `ty`) into `dst` (`ty.row_bytes(src.len())` bytes).
pub fn quantize_row(ty: GgmlType, src: &[f32], dst: &mut [u8]) -> Result<(), KernelError> {
    let expected = ty.row_bytes(src.len())?;
    if dst.len() != expected {
        return Err(KernelError::LengthMismatch { what: "quantize_row destination", expected, got: dst.len() });
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
        other => return Err(KernelError::UnsupportedType { id: other.id(), name: other.name() }),
    }
    Ok(())
}
