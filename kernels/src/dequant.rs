//! Exact dequantization of ggml block formats to f32 (bit-identical to ggml / gguf-py).

use crate::{GgmlType, KernelError};

/// Dequantizes one row: `src` holds whole blocks of `ty`, `dst` receives every element.
pub fn dequantize_row(ty: GgmlType, src: &[u8], dst: &mut [f32]) -> Result<(), KernelError> {
    let expected = ty.row_bytes(dst.len())?;
    if src.len() != expected {
        return Err(KernelError::LengthMismatch { what: "dequantize_row source", expected, got: src.len() });
    }
    match ty {
        GgmlType::F32 => {
            for (d, s) in dst.iter_mut().zip(src.chunks_exact(4)) {
                *d = f32::from_le_bytes([s[0], s[1], s[2], s[3]]);
            }
        }
        GgmlType::F16 => {
            for (d, s) in dst.iter_mut().zip(src.chunks_exact(2)) {
                *d = half::f16::from_le_bytes([s[0], s[1]]).to_f32();
            }
        }
        GgmlType::BF16 => {
            for (d, s) in dst.iter_mut().zip(src.chunks_exact(2)) {
                *d = f32::from_bits((u16::from_le_bytes([s[0], s[1]]) as u32) << 16);
            }
        }
        other => return Err(KernelError::UnsupportedType { id: other.id(), name: other.name() }),
    }
    Ok(())
}

/// Dequantizes `dst.len() / cols` consecutive rows of `cols` elements each.
pub fn dequantize_rows(ty: GgmlType, src: &[u8], cols: usize, dst: &mut [f32]) -> Result<(), KernelError> {
    let row_bytes = ty.row_bytes(cols)?;
    if cols == 0 || dst.len() % cols != 0 || src.len() != dst.len() / cols * row_bytes {
        return Err(KernelError::LengthMismatch {
            what: "dequantize_rows source",
            expected: if cols == 0 { 0 } else { dst.len() / cols * row_bytes },
            got: src.len(),
        });
    }
    for (s, d) in src.chunks_exact(row_bytes).zip(dst.chunks_exact_mut(cols)) {
        dequantize_row(ty, s, d)?;
    }
    Ok(())
}
