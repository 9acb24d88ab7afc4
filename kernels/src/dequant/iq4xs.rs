//! IQ4_XS: a 256-element super-block of eight 32-element sub-blocks on IQ4_NL's grid.

use super::{f16_to_f32, IQ4_NL_GRID};

/// IQ4_XS: `d f16; scales_h u16; scales_l[4]; qs[128]`. Sub-block `ib` has the 6-bit scale
/// `ls = ((scales_l[ib/2] >> 4(ib%2)) & 15) | (((scales_h >> 2ib) & 3) << 4)` and packs its
/// 32 elements as IQ4_NL does in `qs[16ib..][..16]`; `y = (d·(ls − 32))·GRID[nibble]`.
#[inline(always)]
pub(crate) fn iq4_xs(b: &[u8; 136], y: &mut [f32; 256]) {
    let d = f16_to_f32([b[0], b[1]]);
    let scales_h = u16::from_le_bytes([b[2], b[3]]);
    for ib in 0..8 {
        let lo = (b[4 + ib / 2] >> (4 * (ib % 2))) & 0x0F;
        let hi = ((scales_h >> (2 * ib)) & 3) as u8;
        let dl = d * ((lo | (hi << 4)) as i32 - 32) as f32;
        for j in 0..16 {
            let q = b[8 + 16 * ib + j];
            y[32 * ib + j] = dl * IQ4_NL_GRID[(q & 0x0F) as usize] as f32;
            y[32 * ib + 16 + j] = dl * IQ4_NL_GRID[(q >> 4) as usize] as f32;
        }
    }
}
