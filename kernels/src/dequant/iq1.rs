//! The 1-bit grid formats IQ1_S and IQ1_M: every 8 elements are one row of a ternary grid
//! (−1, 0, 1) shifted by ±1/8 (`delta`), with odd 3-bit scales `2s + 1`:
//! `y = dl·(grid + delta)`, `dl = d·(2s + 1)`.

use super::f16_to_f32;
use super::iq_tables::IQ1S_GRID;

/// IQ1_S's and IQ1_M's grid offset magnitude.
pub(crate) const IQ1_DELTA: f32 = 0.125;

/// Writes 8 elements `dl·(grid[j] + delta)`.
#[inline(always)]
fn put8(y: &mut [f32], dl: f32, grid: u64, delta: f32) {
    for (v, g) in y.iter_mut().zip(grid.to_le_bytes()) {
        *v = dl * (g as i8 as f32 + delta);
    }
}

/// IQ1_S: `d f16; qs[32]; qh u16[8]`. Sub-block `ib` (32 elements): `qh[ib]` holds the high
/// 3 bits of four 11-bit grid indices (bits `3l..3l+3`, low bits `qs[4ib + l]`), `s` (bits
/// 12..15) and the sign of `delta` (bit 15 set: negative).
#[inline(always)]
pub(crate) fn iq1_s(b: &[u8; 50], y: &mut [f32; 256]) {
    let d = f16_to_f32([b[0], b[1]]);
    for ib in 0..8 {
        let qh = u16::from_le_bytes([b[34 + 2 * ib], b[35 + 2 * ib]]);
        let dl = d * (2 * ((qh >> 12) & 7) + 1) as f32;
        let delta = if qh & 0x8000 == 0 {
            IQ1_DELTA
        } else {
            -IQ1_DELTA
        };
        for l in 0..4 {
            let idx = b[2 + 4 * ib + l] as usize | ((((qh >> (3 * l)) & 7) as usize) << 8);
            let at = 32 * ib + 8 * l;
            put8(&mut y[at..at + 8], dl, IQ1S_GRID[idx], delta);
        }
    }
}

/// The bits of IQ1_M's f16 `d`: the top 4 bits of its four little-endian u16 scale words at
/// `48..56`.
#[inline(always)]
pub(crate) fn iq1_m_d_bits(b: &[u8]) -> u16 {
    let w = |k: usize| u16::from_le_bytes([b[48 + 2 * k], b[49 + 2 * k]]);
    (w(0) >> 12) | ((w(1) >> 8) & 0x00F0) | ((w(2) >> 4) & 0x0F00) | (w(3) & 0xF000)
}

/// IQ1_M's f16 `d` ([`iq1_m_d_bits`]).
#[inline(always)]
pub(crate) fn iq1_m_d(b: &[u8]) -> f32 {
    f16_to_f32(iq1_m_d_bits(b).to_le_bytes())
}

/// IQ1_M's 3-bit scale of the 16 elements `16k..16k+16`: bits `3(k%4)..` of scale word `k/4`.
#[inline(always)]
pub(crate) fn iq1_m_scale(b: &[u8], k: usize) -> u16 {
    let w = u16::from_le_bytes([b[48 + 2 * (k / 4)], b[49 + 2 * (k / 4)]]);
    (w >> (3 * (k % 4))) & 7
}

/// IQ1_M: `qs[32]; qh[16]; scales u16[4]` (`d` split over the scale words, [`iq1_m_d`]).
/// Group `i` (8 elements): nibble `(qh[i/2] >> 4(i%2)) & 15` holds the high 3 bits of the
/// 11-bit grid index (low bits `qs[i]`) and, in bit 3, the sign of `delta`; the scale is
/// [`iq1_m_scale`] of `i/2`.
#[inline(always)]
pub(crate) fn iq1_m(b: &[u8; 56], y: &mut [f32; 256]) {
    let d = iq1_m_d(b);
    for i in 0..32 {
        let nib = (b[32 + i / 2] >> (4 * (i % 2))) & 15;
        let idx = b[i] as usize | (((nib & 7) as usize) << 8);
        let delta = if nib & 8 == 0 { IQ1_DELTA } else { -IQ1_DELTA };
        let dl = d * (2 * iq1_m_scale(b, i / 2) + 1) as f32;
        put8(&mut y[8 * i..8 * i + 8], dl, IQ1S_GRID[idx], delta);
    }
}
