//! The 3-bit grid formats IQ3_XXS and IQ3_S: every 4 elements are one row of a grid of
//! magnitudes, with sign bits per element and 4-bit scales per 32 elements.

use super::f16_to_f32;
use super::iq_tables::{IQ3S_GRID, IQ3XXS_GRID, KSIGNS_IQ2XS};

/// Writes 4 elements `(db·grid[j])·sign_j` (bit `j` of `signs` set: negative).
#[inline(always)]
fn put4(y: &mut [f32], db: f32, grid: u32, signs: u8) {
    for (j, (v, g)) in y.iter_mut().zip(grid.to_le_bytes()).enumerate() {
        let s = if (signs >> j) & 1 == 1 { -1.0 } else { 1.0 };
        *v = db * g as f32 * s;
    }
}

/// IQ3_XXS: `d f16; qs[64]; scales_and_signs u32[8]`. Sub-block `ib` (32 elements): grid
/// indices `qs[8ib..8ib+8]` (4 elements each); the little-endian u32 at `66 + 4ib` holds four
/// 7-bit sign indices (through `KSIGNS_IQ2XS`, 8 elements each) and `ls` in bits 28..32;
/// `y = ((d·(0.5 + ls))·0.5·grid)·sign`.
#[inline(always)]
pub(crate) fn iq3_xxs(b: &[u8; 98], y: &mut [f32; 256]) {
    let d = f16_to_f32([b[0], b[1]]);
    for ib in 0..8 {
        let o = 66 + 4 * ib;
        let aux = u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]]);
        let db = d * (0.5 + (aux >> 28) as f32) * 0.5;
        for l in 0..4 {
            let signs = KSIGNS_IQ2XS[((aux >> (7 * l)) & 127) as usize];
            let at = 32 * ib + 8 * l;
            let (g0, g1) = (b[2 + 8 * ib + 2 * l], b[3 + 8 * ib + 2 * l]);
            put4(&mut y[at..at + 4], db, IQ3XXS_GRID[g0 as usize], signs);
            put4(
                &mut y[at + 4..at + 8],
                db,
                IQ3XXS_GRID[g1 as usize],
                signs >> 4,
            );
        }
    }
}

/// IQ3_S: `d f16; qs[64]; qh[8]; signs[32]; scales[4]`. Group `i` (4 elements) has the 9-bit
/// grid index `qs[i] | ((qh[i/8] >> (i%8)) & 1) << 8`; byte `signs[k]` signs elements
/// `8k..8k+8`; sub-block `ib` (32 elements) has `db = d·(1 + 2·((scales[ib/2] >> 4(ib%2)) &
/// 15))` (the integer factor formed first).
#[inline(always)]
pub(crate) fn iq3_s(b: &[u8; 110], y: &mut [f32; 256]) {
    let d = f16_to_f32([b[0], b[1]]);
    for ib in 0..8 {
        let ls = (b[106 + ib / 2] >> (4 * (ib % 2))) & 15;
        let db = d * (1 + 2 * ls as u32) as f32;
        for g in 0..8 {
            let i = 8 * ib + g;
            let hi = ((b[66 + i / 8] >> (i % 8)) & 1) as usize;
            let grid = IQ3S_GRID[b[2 + i] as usize | (hi << 8)];
            let signs = b[74 + i / 2] >> (4 * (i % 2));
            put4(&mut y[4 * i..4 * i + 4], db, grid, signs);
        }
    }
}
