//! 32-element block formats: Q4_0, Q4_1, Q5_0, Q5_1, Q8_0 and IQ4_NL.
//!
//! Every format stores the first 16 elements in the low nibbles of `qs[0..16]` and elements
//! 16..32 in the high nibbles (Q8_0: one signed byte each). Products are `d * q` (then `+ m`).

use super::f16_to_f32;

/// The non-linear 4-bit grid of IQ4_NL and IQ4_XS (ggml `kvalues_iq4nl`).
pub(crate) const IQ4_NL_GRID: [i8; 16] = [
    -127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113,
];

/// Q4_0: `d f16; qs[16]`; `y = d * (nibble - 8)`.
#[inline(always)]
pub(crate) fn q4_0(b: &[u8; 18], y: &mut [f32; 32]) {
    let d = f16_to_f32([b[0], b[1]]);
    for j in 0..16 {
        let q = b[2 + j];
        y[j] = d * ((q & 0x0F) as i32 - 8) as f32;
        y[j + 16] = d * ((q >> 4) as i32 - 8) as f32;
    }
}

/// Q4_1: `d f16; m f16; qs[16]`; `y = d * nibble + m`.
#[inline(always)]
pub(crate) fn q4_1(b: &[u8; 20], y: &mut [f32; 32]) {
    let d = f16_to_f32([b[0], b[1]]);
    let m = f16_to_f32([b[2], b[3]]);
    for j in 0..16 {
        let q = b[4 + j];
        y[j] = d * (q & 0x0F) as f32 + m;
        y[j + 16] = d * (q >> 4) as f32 + m;
    }
}

/// Q5_0: `d f16; qh[4]; qs[16]`; bit `i` of the little-endian u32 `qh` is bit 4 of element
/// `i`; `y = d * (q - 16)`.
#[inline(always)]
pub(crate) fn q5_0(b: &[u8; 22], y: &mut [f32; 32]) {
    let d = f16_to_f32([b[0], b[1]]);
    let qh = u32::from_le_bytes([b[2], b[3], b[4], b[5]]);
    for j in 0..16 {
        let q = b[6 + j];
        let lo = (q & 0x0F) as i32 | ((((qh >> j) & 1) as i32) << 4);
        let hi = (q >> 4) as i32 | ((((qh >> (j + 16)) & 1) as i32) << 4);
        y[j] = d * (lo - 16) as f32;
        y[j + 16] = d * (hi - 16) as f32;
    }
}

/// Q5_1: `d f16; m f16; qh[4]; qs[16]`; as Q5_0 without the offset, `y = d * q + m`.
#[inline(always)]
pub(crate) fn q5_1(b: &[u8; 24], y: &mut [f32; 32]) {
    let d = f16_to_f32([b[0], b[1]]);
    let m = f16_to_f32([b[2], b[3]]);
    let qh = u32::from_le_bytes([b[4], b[5], b[6], b[7]]);
    for j in 0..16 {
        let q = b[8 + j];
        let lo = (q & 0x0F) as u32 | (((qh >> j) & 1) << 4);
        let hi = (q >> 4) as u32 | (((qh >> (j + 16)) & 1) << 4);
        y[j] = d * lo as f32 + m;
        y[j + 16] = d * hi as f32 + m;
    }
}

/// Q8_0: `d f16; qs i8[32]`; `y = q * d`.
#[inline(always)]
pub(crate) fn q8_0(b: &[u8; 34], y: &mut [f32; 32]) {
    let d = f16_to_f32([b[0], b[1]]);
    for j in 0..32 {
        y[j] = (b[2 + j] as i8) as f32 * d;
    }
}

/// IQ4_NL: `d f16; qs[16]`; `y = d * IQ4_NL_GRID[nibble]`.
#[inline(always)]
pub(crate) fn iq4_nl(b: &[u8; 18], y: &mut [f32; 32]) {
    let d = f16_to_f32([b[0], b[1]]);
    for j in 0..16 {
        let q = b[2 + j];
        y[j] = d * IQ4_NL_GRID[(q & 0x0F) as usize] as f32;
        y[j + 16] = d * IQ4_NL_GRID[(q >> 4) as usize] as f32;
    }
}
