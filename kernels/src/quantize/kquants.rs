//! Round-to-nearest quantizers for the 256-element k-quant formats (layouts in
//! `dequant/kquants.rs`).
//!
//! Two shapes of scale:
//! - *with min* (Q2_K, Q4_K, Q5_K): per sub-block `y = (d·sc)·q − dmin·m`, unsigned `sc`, `m`;
//!   the sub-block minimum (capped at 0) becomes `m`, its range over the levels becomes `sc`.
//! - *symmetric* (Q3_K, Q6_K): per sub-block `y = (d·sc)·q` with signed `sc` and `q`; as in
//!   Q4_0, the element of largest magnitude maps to the most negative level.
//!
//! Sub-block scales are quantized against the f16-rounded super-block scale, and elements
//! against the exact f32 products the dequantizer forms, so rounding is to the real grid.

use super::{recip_or_zero, to_f16};

/// Sub-block parameters and levels of a with-min super-block.
struct WithMin<const NSUB: usize> {
    d: [u8; 2],
    dmin: [u8; 2],
    sc: [u8; NSUB],
    m: [u8; NSUB],
    q: [u8; 256],
}

/// Quantizes `x` as `NSUB` sub-blocks with levels `0..=q_max` and scales/mins `0..=s_max`.
#[inline(always)]
fn with_min<const NSUB: usize>(x: &[f32; 256], q_max: f32, s_max: f32) -> WithMin<NSUB> {
    let sub = 256 / NSUB;
    let mut scale = [0f32; NSUB];
    let mut min = [0f32; NSUB];
    for j in 0..NSUB {
        let xs = &x[sub * j..sub * (j + 1)];
        let lo = xs.iter().fold(0.0f32, |a, &v| a.min(v)); // capped at 0: m is unsigned
        let hi = xs.iter().fold(f32::NEG_INFINITY, |a, &v| a.max(v));
        scale[j] = (hi - lo) / q_max;
        min[j] = -lo;
    }
    let (d_bytes, d) = to_f16(scale.iter().fold(0.0f32, |a, &v| a.max(v)) / s_max);
    let (dmin_bytes, dmin) = to_f16(min.iter().fold(0.0f32, |a, &v| a.max(v)) / s_max);
    let (inv_d, inv_dmin) = (recip_or_zero(d), recip_or_zero(dmin));
    let mut out = WithMin {
        d: d_bytes,
        dmin: dmin_bytes,
        sc: [0; NSUB],
        m: [0; NSUB],
        q: [0; 256],
    };
    for j in 0..NSUB {
        // Round the scale up when rounding down would clamp the sub-block's top element.
        let mut sc = (scale[j] * inv_d).round().clamp(0.0, s_max);
        if sc < s_max && d * sc < scale[j] * (1.0 - 0.5 / q_max) {
            sc += 1.0;
        }
        let m = (min[j] * inv_dmin).round().clamp(0.0, s_max);
        out.sc[j] = sc as u8;
        out.m[j] = m as u8;
        let (dl, ml) = (d * sc, dmin * m);
        let inv = recip_or_zero(dl);
        for l in 0..sub {
            let v = x[sub * j + l];
            out.q[sub * j + l] = ((v + ml) * inv).round().clamp(0.0, q_max) as u8;
        }
    }
    out
}

/// Sub-block scales and levels (biased to be unsigned) of a symmetric super-block.
struct Symmetric {
    d: [u8; 2],
    sc: [i8; 16],
    /// `q + q_neg`, in `0..2·q_neg`.
    q: [u8; 256],
}

/// Quantizes `x` as 16 sub-blocks of 16 with levels `-q_neg..q_neg` and signed scales in
/// `-s_neg..s_neg`.
#[inline(always)]
fn symmetric(x: &[f32; 256], q_neg: f32, s_neg: f32) -> Symmetric {
    let mut scale = [0f32; 16];
    for (j, s) in scale.iter_mut().enumerate() {
        let xs = &x[16 * j..16 * (j + 1)];
        let v = xs
            .iter()
            .fold(0.0f32, |m, &v| if v.abs() > m.abs() { v } else { m });
        *s = v / -q_neg;
    }
    let big = scale
        .iter()
        .fold(0.0f32, |m, &v| if v.abs() > m.abs() { v } else { m });
    let (d_bytes, d) = to_f16(big / -s_neg);
    let inv_d = recip_or_zero(d);
    let mut out = Symmetric {
        d: d_bytes,
        sc: [0; 16],
        q: [0; 256],
    };
    for j in 0..16 {
        let sc = (scale[j] * inv_d).round().clamp(-s_neg, s_neg - 1.0);
        out.sc[j] = sc as i8;
        let inv = recip_or_zero(d * sc);
        for l in 0..16 {
            let q = (x[16 * j + l] * inv).round().clamp(-q_neg, q_neg - 1.0);
            out.q[16 * j + l] = (q + q_neg) as u8;
        }
    }
    out
}

/// Packs Q4_K/Q5_K's eight 6-bit `(sc, m)` pairs into 12 bytes (inverse of `scale_min_k4`).
fn pack_scale_min_k4(sc: &[u8; 8], m: &[u8; 8], s: &mut [u8]) {
    for j in 0..4 {
        s[j] = (sc[j] & 63) | ((sc[j + 4] >> 4) << 6);
        s[j + 4] = (m[j] & 63) | ((m[j + 4] >> 4) << 6);
        s[j + 8] = (sc[j + 4] & 0x0F) | ((m[j + 4] & 0x0F) << 4);
    }
}

/// Q2_K: `scales[16]; qs[64]; d f16; dmin f16`.
pub(crate) fn q2_k(x: &[f32; 256], b: &mut [u8; 84]) {
    let p = with_min::<16>(x, 3.0, 15.0);
    for ((s, sc), m) in b[..16].iter_mut().zip(p.sc).zip(p.m) {
        *s = sc | (m << 4);
    }
    for (e, &q) in p.q.iter().enumerate() {
        let (n, s, l) = (e / 128, (e / 32) % 4, e % 32);
        b[16 + 32 * n + l] |= q << (2 * s);
    }
    b[80..82].copy_from_slice(&p.d);
    b[82..84].copy_from_slice(&p.dmin);
}

/// Q3_K: `hmask[32]; qs[64]; scales[12]; d f16`.
pub(crate) fn q3_k(x: &[f32; 256], b: &mut [u8; 110]) {
    let p = symmetric(x, 4.0, 32.0);
    for (e, &q) in p.q.iter().enumerate() {
        let (n, s, l) = (e / 128, (e / 32) % 4, e % 32);
        b[32 + 32 * n + l] |= (q & 3) << (2 * s);
        b[e % 32] |= (q >> 2) << (e / 32);
    }
    for (j, &sc) in p.sc.iter().enumerate() {
        let u = (sc as i32 + 32) as u8; // 0..64
        b[96 + j % 8] |= (u & 0x0F) << (4 * (j / 8));
        b[96 + 8 + j % 4] |= (u >> 4) << (2 * (j / 4));
    }
    b[108..110].copy_from_slice(&p.d);
}

/// Q4_K: `d f16; dmin f16; scales[12]; qs[128]`.
pub(crate) fn q4_k(x: &[f32; 256], b: &mut [u8; 144]) {
    let p = with_min::<8>(x, 15.0, 63.0);
    b[0..2].copy_from_slice(&p.d);
    b[2..4].copy_from_slice(&p.dmin);
    pack_scale_min_k4(&p.sc, &p.m, &mut b[4..16]);
    for (e, &q) in p.q.iter().enumerate() {
        let (j, l) = (e / 32, e % 32);
        b[16 + 32 * (j / 2) + l] |= q << (4 * (j % 2));
    }
}

/// Q5_K: `d f16; dmin f16; scales[12]; qh[32]; qs[128]`.
pub(crate) fn q5_k(x: &[f32; 256], b: &mut [u8; 176]) {
    let p = with_min::<8>(x, 31.0, 63.0);
    b[0..2].copy_from_slice(&p.d);
    b[2..4].copy_from_slice(&p.dmin);
    pack_scale_min_k4(&p.sc, &p.m, &mut b[4..16]);
    for (e, &q) in p.q.iter().enumerate() {
        let (j, l) = (e / 32, e % 32);
        b[16 + l] |= (q >> 4) << j;
        b[48 + 32 * (j / 2) + l] |= (q & 0x0F) << (4 * (j % 2));
    }
}

/// Q6_K: `ql[128]; qh[64]; scales i8[16]; d f16`.
pub(crate) fn q6_k(x: &[f32; 256], b: &mut [u8; 210]) {
    let p = symmetric(x, 32.0, 128.0);
    for (e, &q) in p.q.iter().enumerate() {
        let (h, s, l) = (e / 128, (e / 32) % 4, e % 32);
        b[64 * h + 32 * (s % 2) + l] |= (q & 0x0F) << (4 * (s / 2));
        b[128 + 32 * h + l] |= (q >> 4) << (2 * s);
    }
    for (j, &sc) in p.sc.iter().enumerate() {
        b[192 + j] = sc as u8;
    }
    b[208..210].copy_from_slice(&p.d);
}
