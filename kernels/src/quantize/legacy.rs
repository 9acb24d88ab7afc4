//! Round-to-nearest quantizers for the 32-element formats (layouts in `dequant/legacy.rs`).
//!
//! Symmetric formats (Q4_0, Q5_0) follow ggml: the element of largest magnitude maps exactly
//! to the most negative level, so values of the other sign may clamp one step short.

use super::{recip_or_zero, to_f16};

/// The element of largest magnitude, with its sign.
#[inline(always)]
fn signed_absmax(x: &[f32]) -> f32 {
    x.iter()
        .fold(0.0f32, |m, &v| if v.abs() > m.abs() { v } else { m })
}

/// `(min, max)` of a block.
#[inline(always)]
fn min_max(x: &[f32]) -> (f32, f32) {
    x.iter()
        .fold((f32::INFINITY, f32::NEG_INFINITY), |(lo, hi), &v| {
            (lo.min(v), hi.max(v))
        })
}

/// Nearest level `round(v * inv) + offset`, clamped to `0..=max`.
#[inline(always)]
fn level(v: f32, inv: f32, offset: f32, max: f32) -> u8 {
    (v * inv + offset).round().clamp(0.0, max) as u8
}

/// Packs 32 levels < 16 as nibbles: element `j` low, element `j + 16` high.
#[inline(always)]
fn pack_nibbles(q: &[u8; 32], qs: &mut [u8]) {
    for j in 0..16 {
        qs[j] = (q[j] & 0x0F) | ((q[j + 16] & 0x0F) << 4);
    }
}

/// Bit 4 of each of 32 levels, as the little-endian u32 `qh`.
#[inline(always)]
fn high_bits(q: &[u8; 32]) -> [u8; 4] {
    let mut qh = 0u32;
    for (j, &v) in q.iter().enumerate() {
        qh |= ((v >> 4) as u32 & 1) << j;
    }
    qh.to_le_bytes()
}

/// Q8_0: `d = absmax / 127`, `q = round(x / d)`.
pub(crate) fn q8_0(x: &[f32; 32], b: &mut [u8; 34]) {
    let amax = x.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    let (bytes, d) = to_f16(amax / 127.0);
    b[..2].copy_from_slice(&bytes);
    let inv = recip_or_zero(d);
    for j in 0..32 {
        b[2 + j] = ((x[j] * inv).round().clamp(-127.0, 127.0) as i8) as u8;
    }
}

/// Symmetric 4/5-bit: `d = max / -half`, level `round(x / d) + half` in `0..2·half`.
#[inline(always)]
fn symmetric(x: &[f32; 32], half: f32) -> ([u8; 2], [u8; 32]) {
    let (bytes, d) = to_f16(signed_absmax(x) / -half);
    let inv = recip_or_zero(d);
    let mut q = [0u8; 32];
    for j in 0..32 {
        q[j] = level(x[j], inv, half, 2.0 * half - 1.0);
    }
    (bytes, q)
}

/// Asymmetric 4/5-bit: `m = min`, `d = (max − min) / levels`, level `round((x − m) / d)`.
#[inline(always)]
fn asymmetric(x: &[f32; 32], levels: f32) -> ([u8; 2], [u8; 2], [u8; 32]) {
    let (lo, hi) = min_max(x);
    let (d_bytes, d) = to_f16((hi - lo) / levels);
    let (m_bytes, m) = to_f16(lo);
    let inv = recip_or_zero(d);
    let mut q = [0u8; 32];
    for j in 0..32 {
        q[j] = level(x[j] - m, inv, 0.0, levels);
    }
    (d_bytes, m_bytes, q)
}

/// Q4_0: `d f16; qs[16]`.
pub(crate) fn q4_0(x: &[f32; 32], b: &mut [u8; 18]) {
    let (d, q) = symmetric(x, 8.0);
    b[..2].copy_from_slice(&d);
    pack_nibbles(&q, &mut b[2..]);
}

/// Q4_1: `d f16; m f16; qs[16]`.
pub(crate) fn q4_1(x: &[f32; 32], b: &mut [u8; 20]) {
    let (d, m, q) = asymmetric(x, 15.0);
    b[..2].copy_from_slice(&d);
    b[2..4].copy_from_slice(&m);
    pack_nibbles(&q, &mut b[4..]);
}

/// Q5_0: `d f16; qh[4]; qs[16]`.
pub(crate) fn q5_0(x: &[f32; 32], b: &mut [u8; 22]) {
    let (d, q) = symmetric(x, 16.0);
    b[..2].copy_from_slice(&d);
    b[2..6].copy_from_slice(&high_bits(&q));
    pack_nibbles(&q, &mut b[6..]);
}

/// Q5_1: `d f16; m f16; qh[4]; qs[16]`.
pub(crate) fn q5_1(x: &[f32; 32], b: &mut [u8; 24]) {
    let (d, m, q) = asymmetric(x, 31.0);
    b[..2].copy_from_slice(&d);
    b[2..4].copy_from_slice(&m);
    b[4..8].copy_from_slice(&high_bits(&q));
    pack_nibbles(&q, &mut b[8..]);
}
