//! Stand-in blocks for the formats this crate has no quantizer for (IQ4_NL, IQ4_XS, the
//! IQ1/IQ2/IQ3 grids, TQ1_0, TQ2_0), so that synthetic models can be written in them.
//!
//! Decides: what such a block holds. Its codes and sub-block scales are pseudo-random (bytes
//! from a hash of the source block's bits, so equal inputs give equal bytes), made valid
//! where a random byte is not (TQ2_0's unused 2-bit value 3 becomes 1); its f16 `d` is set
//! so that the block's root mean square equals the source block's. The values are *not*
//! an approximation of the source elements, only of their scale: good enough for the
//! random-weight models of `synth`, not for real weights.

use super::to_f16;
use crate::dequant::dequantize_unchecked;
use crate::GgmlType;

/// Where a stand-in format keeps its f16 `d`.
enum DField {
    /// Two bytes at this offset.
    At(usize),
    /// IQ1_M: the top 4 bits of the four u16 scale words at 48..56.
    Iq1M,
}

/// The `d` field of the stand-in formats, `None` for the others.
fn d_field(ty: GgmlType) -> Option<DField> {
    Some(match ty {
        GgmlType::IQ4_NL
        | GgmlType::IQ4_XS
        | GgmlType::IQ2_XXS
        | GgmlType::IQ2_XS
        | GgmlType::IQ2_S
        | GgmlType::IQ3_XXS
        | GgmlType::IQ3_S
        | GgmlType::IQ1_S => DField::At(0),
        GgmlType::TQ1_0 => DField::At(52),
        GgmlType::TQ2_0 => DField::At(64),
        GgmlType::IQ1_M => DField::Iq1M,
        _ => return None,
    })
}

/// Whether [`stand_in_block`] can write `ty`.
pub(crate) fn has_stand_in(ty: GgmlType) -> bool {
    d_field(ty).is_some()
}

/// Stores the f16 bytes `h` as the block's `d`.
fn set_d(field: &DField, b: &mut [u8], h: [u8; 2]) {
    match field {
        DField::At(at) => b[*at..*at + 2].copy_from_slice(&h),
        DField::Iq1M => {
            let h = u16::from_le_bytes(h);
            for k in 0..4 {
                let at = 48 + 2 * k;
                let w = u16::from_le_bytes([b[at], b[at + 1]]);
                let w = (w & 0x0FFF) | (((h >> (4 * k)) & 0xF) << 12);
                b[at..at + 2].copy_from_slice(&w.to_le_bytes());
            }
        }
    }
}

/// splitmix64's finalizer.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Writes one stand-in block of `ty` (see the module docs) for the finite source block `x`
/// into `b` (`ty.block_bytes()` bytes). `ty` must have a stand-in ([`has_stand_in`]).
pub(crate) fn stand_in_block(ty: GgmlType, x: &[f32], b: &mut [u8]) {
    let Some(field) = d_field(ty) else {
        return;
    };
    let mut h = 0x243F_6A88_85A3_08D3u64 ^ ty.id() as u64;
    for v in x {
        h = mix(h ^ v.to_bits() as u64);
    }
    for chunk in b.chunks_mut(8) {
        h = mix(h.wrapping_add(0x9E37_79B9_7F4A_7C15));
        chunk.copy_from_slice(&h.to_le_bytes()[..chunk.len()]);
    }
    if ty == GgmlType::TQ2_0 {
        // The unused 2-bit value 3 becomes 1 (weight 0): values −1, 0, 0, 1 equally likely,
        // so rows have mean zero (3 → 2 would bias every row by +d/4).
        for v in &mut b[..64] {
            *v &= !(((*v >> 1) & *v & 0x55) << 1);
        }
    }
    let rms =
        |v: &[f32]| (v.iter().map(|e| (*e as f64).powi(2)).sum::<f64>() / v.len() as f64).sqrt();
    set_d(&field, b, to_f16(1.0).0);
    let mut unit = vec![0f32; x.len()];
    dequantize_unchecked(ty, b, &mut unit);
    let (want, have) = (rms(x), rms(&unit));
    let d = if have > 0.0 {
        (want / have) as f32
    } else {
        0.0
    };
    set_d(&field, b, to_f16(d).0);
}
