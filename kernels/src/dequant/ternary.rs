//! The ternary formats TQ1_0 and TQ2_0: values `q − 1` with `q` in 0..=2, `y = d·(q − 1)`.

use super::f16_to_f32;

/// Powers of three: digit `n` of a TQ1_0 byte is read as `((byte·3ⁿ mod 256)·3) >> 8`.
const POW3: [u8; 5] = [1, 3, 9, 27, 81];

/// The ternary digit `n` of a TQ1_0 byte, as `q − 1`.
#[inline(always)]
fn trit(byte: u8, n: usize) -> i32 {
    ((byte.wrapping_mul(POW3[n]) as u16 * 3) >> 8) as i32 - 1
}

/// The 256 values `q − 1` of a TQ1_0 block, in element order: element `32n + m` is digit `n`
/// of `qs[m]` (`m < 32`), element `160 + 16n + m` digit `n` of `qs[32 + m]` (`m < 16`), and
/// element `240 + 4n + m` digit `n` of `qh[m]` (`n < 4`).
#[inline(always)]
pub(crate) fn tq1_0_values(b: &[u8], mut f: impl FnMut(usize, i32)) {
    for n in 0..5 {
        for (m, byte) in b[..32].iter().enumerate() {
            f(32 * n + m, trit(*byte, n));
        }
    }
    for n in 0..5 {
        for (m, byte) in b[32..48].iter().enumerate() {
            f(160 + 16 * n + m, trit(*byte, n));
        }
    }
    for n in 0..4 {
        for (m, byte) in b[48..52].iter().enumerate() {
            f(240 + 4 * n + m, trit(*byte, n));
        }
    }
}

/// TQ1_0: `qs[48]; qh[4]; d f16` (see [`tq1_0_values`]).
#[inline(always)]
pub(crate) fn tq1_0(b: &[u8; 54], y: &mut [f32; 256]) {
    let d = f16_to_f32([b[52], b[53]]);
    tq1_0_values(b, |i, q| y[i] = d * q as f32);
}

/// TQ2_0: `qs[64]; d f16`; element `128c + 32n + m` is `((qs[32c + m] >> 2n) & 3) − 1`.
#[inline(always)]
pub(crate) fn tq2_0(b: &[u8; 66], y: &mut [f32; 256]) {
    let d = f16_to_f32([b[64], b[65]]);
    for c in 0..2 {
        for n in 0..4 {
            for m in 0..32 {
                let q = ((b[32 * c + m] >> (2 * n)) & 3) as i32 - 1;
                y[128 * c + 32 * n + m] = d * q as f32;
            }
        }
    }
}
