//! The 2-bit grid formats IQ2_XXS, IQ2_XS and IQ2_S: every 8 elements are one row of a grid
//! of magnitudes (8, 25, 43) with 8 sign bits; sub-block scales are 4-bit.
//!
//! Float order (gguf-py's): `db = (d·(0.5 + ls))·0.25`, then `y = (db·grid)·sign`.

use super::f16_to_f32;
use super::iq_tables::{IQ2S_GRID, IQ2XS_GRID, IQ2XXS_GRID, KSIGNS_IQ2XS};

/// Writes 8 elements `(db·grid[j])·sign_j`: `grid` a packed grid row, bit `j` of `signs` set
/// for a negative element.
#[inline(always)]
fn put8(y: &mut [f32], db: f32, grid: u64, signs: u8) {
    for (j, (v, g)) in y.iter_mut().zip(grid.to_le_bytes()).enumerate() {
        let s = if (signs >> j) & 1 == 1 { -1.0 } else { 1.0 };
        *v = db * g as f32 * s;
    }
}

/// `(d·(0.5 + ls))·0.25`.
#[inline(always)]
fn scale(d: f32, ls: u32) -> f32 {
    d * (0.5 + ls as f32) * 0.25
}

/// IQ2_XXS: `d f16; qs u16[32]`. Sub-block `ib` (32 elements) is two little-endian u32 at
/// `2 + 8ib`: the first holds four grid indices (one per byte), the second four 7-bit sign
/// indices (bits `7l..7l+7`, through `KSIGNS_IQ2XS`) and the scale `ls` in bits 28..32.
#[inline(always)]
pub(crate) fn iq2_xxs(b: &[u8; 66], y: &mut [f32; 256]) {
    let d = f16_to_f32([b[0], b[1]]);
    for ib in 0..8 {
        let o = 2 + 8 * ib;
        let idx = [b[o], b[o + 1], b[o + 2], b[o + 3]];
        let aux = u32::from_le_bytes([b[o + 4], b[o + 5], b[o + 6], b[o + 7]]);
        let db = scale(d, aux >> 28);
        for l in 0..4 {
            let signs = KSIGNS_IQ2XS[((aux >> (7 * l)) & 127) as usize];
            let at = 32 * ib + 8 * l;
            put8(&mut y[at..at + 8], db, IQ2XXS_GRID[idx[l] as usize], signs);
        }
    }
}

/// IQ2_XS: `d f16; qs u16[32]; scales[8]`. Each `qs` entry is a 9-bit grid index and a 7-bit
/// sign index (bits 9..16); the 16 elements `16k..16k+16` have scale
/// `(scales[k/2] >> 4(k%2)) & 15`.
#[inline(always)]
pub(crate) fn iq2_xs(b: &[u8; 74], y: &mut [f32; 256]) {
    let d = f16_to_f32([b[0], b[1]]);
    for i in 0..32 {
        let q = u16::from_le_bytes([b[2 + 2 * i], b[3 + 2 * i]]);
        let k = i / 2;
        let ls = (b[66 + k / 2] >> (4 * (k % 2))) & 15;
        let signs = KSIGNS_IQ2XS[(q >> 9) as usize];
        let grid = IQ2XS_GRID[(q & 511) as usize];
        put8(&mut y[8 * i..8 * i + 8], scale(d, ls as u32), grid, signs);
    }
}

/// IQ2_S: `d f16; qs[32]; signs[32]; qh[8]; scales[8]`. Group `i` (8 elements) has the
/// 10-bit grid index `qs[i] | ((qh[i/4] >> 2(i%4)) & 3) << 8` and the sign bits `signs[i]`;
/// scales as IQ2_XS.
#[inline(always)]
pub(crate) fn iq2_s(b: &[u8; 82], y: &mut [f32; 256]) {
    let d = f16_to_f32([b[0], b[1]]);
    for i in 0..32 {
        let hi = ((b[66 + i / 4] >> (2 * (i % 4))) & 3) as usize;
        let grid = IQ2S_GRID[b[2 + i] as usize | (hi << 8)];
        let k = i / 2;
        let ls = (b[74 + k / 2] >> (4 * (k % 2))) & 15;
        put8(
            &mut y[8 * i..8 * i + 8],
            scale(d, ls as u32),
            grid,
            b[34 + i],
        );
    }
}
