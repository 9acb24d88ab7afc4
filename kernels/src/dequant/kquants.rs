//! 256-element super-block formats ("k-quants"): Q2_K, Q3_K, Q4_K, Q5_K, Q6_K.
//!
//! Q2_K, Q3_K and Q6_K have 16 sub-blocks of 16 elements; Q4_K and Q5_K have 8 sub-blocks of
//! 32. A sub-block scale is formed first (`d * sc`, `dmin * m`) and then applied, as in gguf-py.

use super::f16_to_f32;

/// Unpacks the 6-bit `(scale, min)` pair of sub-block `j < 8` from Q4_K/Q5_K's 12 packed
/// scale bytes (ggml `get_scale_min_k4`).
#[inline(always)]
pub(crate) fn scale_min_k4(j: usize, s: &[u8; 12]) -> (u8, u8) {
    if j < 4 {
        (s[j] & 63, s[j + 4] & 63)
    } else {
        (
            (s[j + 4] & 0x0F) | ((s[j - 4] >> 6) << 4),
            (s[j + 4] >> 4) | ((s[j] >> 6) << 4),
        )
    }
}

/// The 12 packed scale bytes of a Q4_K/Q5_K block starting at byte 4.
#[inline(always)]
pub(crate) fn scales12(b: &[u8]) -> [u8; 12] {
    let mut s = [0u8; 12];
    s.copy_from_slice(&b[4..16]);
    s
}

/// Q2_K: `scales[16]; qs[64]; d f16; dmin f16`. Element `128n + 32s + l` is
/// `(qs[32n + l] >> 2s) & 3` in sub-block `e / 16`; `y = (d·(sc & 15))·q − dmin·(sc >> 4)`.
#[inline(always)]
pub(crate) fn q2_k(b: &[u8; 84], y: &mut [f32; 256]) {
    let d = f16_to_f32([b[80], b[81]]);
    let dmin = f16_to_f32([b[82], b[83]]);
    for n in 0..2 {
        for s in 0..4 {
            for part in 0..2 {
                let sb = 8 * n + 2 * s + part;
                let sc = b[sb];
                let dl = d * (sc & 0x0F) as f32;
                let ml = dmin * (sc >> 4) as f32;
                let base = 128 * n + 32 * s + 16 * part;
                for l in 0..16 {
                    let q = (b[16 + 32 * n + 16 * part + l] >> (2 * s)) & 3;
                    y[base + l] = dl * q as f32 - ml;
                }
            }
        }
    }
}

/// The 16 unsigned 6-bit scales of a Q3_K block (stored biased by 32).
#[inline(always)]
fn q3_k_scales(s: &[u8]) -> [u8; 16] {
    let mut out = [0u8; 16];
    for (j, o) in out.iter_mut().enumerate() {
        let lo = (s[j % 8] >> (4 * (j / 8))) & 0x0F;
        let hi = (s[8 + j % 4] >> (2 * (j / 4))) & 0x03;
        *o = lo | (hi << 4);
    }
    out
}

/// Q3_K: `hmask[32]; qs[64]; scales[12]; d f16`. Element `e = 128n + 32s + l` has low bits
/// `(qs[32n + l] >> 2s) & 3` and high bit `(hmask[e % 32] >> (e / 32)) & 1`, a clear high bit
/// subtracting 4; `y = (d·(sc − 32))·q`.
#[inline(always)]
pub(crate) fn q3_k(b: &[u8; 110], y: &mut [f32; 256]) {
    let d = f16_to_f32([b[108], b[109]]);
    let scales = q3_k_scales(&b[96..108]);
    for n in 0..2 {
        for s in 0..4 {
            let k = 4 * n + s; // hmask bit of these 32 elements
            for part in 0..2 {
                let sb = 8 * n + 2 * s + part;
                let dl = d * (scales[sb] as i32 - 32) as f32;
                for l in 0..16 {
                    let idx = 16 * part + l;
                    let low = ((b[32 + 32 * n + idx] >> (2 * s)) & 3) as i32;
                    let high = ((b[idx] >> k) & 1) as i32;
                    y[128 * n + 32 * s + idx] = dl * (low - 4 * (1 - high)) as f32;
                }
            }
        }
    }
}

/// Q4_K: `d f16; dmin f16; scales[12]; qs[128]`. Sub-block `j` (32 elements) is the low
/// (even `j`) or high (odd `j`) nibbles of `qs[32(j/2)..][..32]`; `y = (d·sc)·q − dmin·m`.
#[inline(always)]
pub(crate) fn q4_k(b: &[u8; 144], y: &mut [f32; 256]) {
    let d = f16_to_f32([b[0], b[1]]);
    let dmin = f16_to_f32([b[2], b[3]]);
    let s = scales12(b);
    for j in 0..8 {
        let (sc, m) = scale_min_k4(j, &s);
        let dl = d * sc as f32;
        let ml = dmin * m as f32;
        let shift = 4 * (j % 2);
        for l in 0..32 {
            let q = (b[16 + 32 * (j / 2) + l] >> shift) & 0x0F;
            y[32 * j + l] = dl * q as f32 - ml;
        }
    }
}

/// Q5_K: `d f16; dmin f16; scales[12]; qh[32]; qs[128]`. As Q4_K with bit 4 of element
/// `32j + l` in `(qh[l] >> j) & 1`.
#[inline(always)]
pub(crate) fn q5_k(b: &[u8; 176], y: &mut [f32; 256]) {
    let d = f16_to_f32([b[0], b[1]]);
    let dmin = f16_to_f32([b[2], b[3]]);
    let s = scales12(b);
    for j in 0..8 {
        let (sc, m) = scale_min_k4(j, &s);
        let dl = d * sc as f32;
        let ml = dmin * m as f32;
        let shift = 4 * (j % 2);
        for l in 0..32 {
            let lo = (b[48 + 32 * (j / 2) + l] >> shift) & 0x0F;
            let hi = (b[16 + l] >> j) & 1;
            y[32 * j + l] = dl * (lo | (hi << 4)) as f32 - ml;
        }
    }
}

/// Q6_K: `ql[128]; qh[64]; scales i8[16]; d f16`. Element `e = 128h + 32s + l` has low
/// nibble `ql[64h + 32(s % 2) + l] >> 4(s / 2)`, high bits `(qh[32h + l] >> 2s) & 3`;
/// `y = (d·scales[e / 16])·(q − 32)`.
#[inline(always)]
pub(crate) fn q6_k(b: &[u8; 210], y: &mut [f32; 256]) {
    let d = f16_to_f32([b[208], b[209]]);
    for h in 0..2 {
        for s in 0..4 {
            for part in 0..2 {
                let base = 128 * h + 32 * s + 16 * part;
                let dl = d * (b[192 + base / 16] as i8) as f32;
                for i in 0..16 {
                    let l = 16 * part + i;
                    let lo = (b[64 * h + 32 * (s % 2) + l] >> (4 * (s / 2))) & 0x0F;
                    let hi = (b[128 + 32 * h + l] >> (2 * s)) & 3;
                    y[base + i] = dl * ((lo | (hi << 4)) as i32 - 32) as f32;
                }
            }
        }
    }
}
