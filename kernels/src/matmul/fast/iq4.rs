//! The IQ4 formats' Fast-mode decoders: signed codes from the non-linear grid
//! (`IQ4_NL_GRID`), 32-element IQ4_NL blocks and 256-element IQ4_XS super-blocks.

use super::format::{arr, arr_mut, f16_at, unit_scales, FastFormat};
use crate::dequant::IQ4_NL_GRID;

/// The 32 grid codes of 16 packed nibble pairs: element `j` from the low nibble of `qs[j]`,
/// `j + 16` from the high one.
#[inline(always)]
fn grid_codes(qs: &[u8], c: &mut [u8]) {
    for j in 0..16 {
        c[j] = IQ4_NL_GRID[(qs[j] & 0x0F) as usize] as u8;
        c[j + 16] = IQ4_NL_GRID[(qs[j] >> 4) as usize] as u8;
    }
}

/// IQ4_NL: `d f16; qs[16]`, `w = d·GRID[nibble]`.
pub(crate) struct Iq4Nl;
impl FastFormat for Iq4Nl {
    const HAS_OFFSET: bool = false;
    const BLOCK_BYTES: usize = 18;
    const BLOCK_ELEMS: usize = 32;
    const SIGNED: bool = true;
    const SHARED_D: bool = true;

    #[inline(always)]
    fn codes(b: &[u8], c: &mut [u8]) {
        grid_codes(&arr::<18>(b)[2..18], c);
    }

    #[inline(always)]
    fn scales(b: &[u8], a: &mut [i8], m: &mut [i16]) -> (f32, f32) {
        let d = f16_at(b, 0);
        unit_scales(a, m, 0, d, d)
    }
}

/// IQ4_XS: `d f16; scales_h u16; scales_l[4]; qs[128]`, grid codes, `a = ls − 32` per 32
/// elements.
pub(crate) struct Iq4Xs;
impl FastFormat for Iq4Xs {
    const HAS_OFFSET: bool = false;
    const BLOCK_BYTES: usize = 136;
    const BLOCK_ELEMS: usize = 256;
    const SIGNED: bool = true;
    const SHARED_D: bool = true;

    #[inline(always)]
    fn codes(b: &[u8], c: &mut [u8]) {
        let b = arr::<136>(b);
        let c = arr_mut::<256>(c);
        for ib in 0..8 {
            grid_codes(&b[8 + 16 * ib..24 + 16 * ib], &mut c[32 * ib..32 * ib + 32]);
        }
    }

    #[inline(always)]
    fn scales(b: &[u8], a: &mut [i8], m: &mut [i16]) -> (f32, f32) {
        let scales_h = u16::from_le_bytes([b[2], b[3]]);
        for ib in 0..8 {
            let lo = (b[4 + ib / 2] >> (4 * (ib % 2))) & 0x0F;
            let hi = ((scales_h >> (2 * ib)) & 3) as u8;
            let ls = (lo | (hi << 4)) as i8 - 32;
            a[2 * ib] = ls;
            a[2 * ib + 1] = ls;
        }
        m[..16].fill(0);
        let d = f16_at(b, 0);
        (d, d)
    }
}
