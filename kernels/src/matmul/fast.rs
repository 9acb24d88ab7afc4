//! Fast-mode row kernels: integer dot products of the weights' codes with activations
//! quantized to int8 once per matmul (`q8.rs`), as llama.cpp computes on CPUs.
//!
//! Decides: the arithmetic of [`crate::NumericMode::Fast`]. Every supported weight block is
//! decoded (by [`FastFormat::decode`]) into
//!
//! - one byte code `c` per element: unsigned (`0..=63`) or, for [`FastFormat::SIGNED`]
//!   formats, a signed byte;
//! - per 16 elements an integer scale `a` (i8) and an integer offset coefficient `m` (i16);
//! - two f32 factors `d` and `dm`,
//!
//! such that the weight is `w = d·a·c − dm·m` element-wise (for formats with
//! [`FastFormat::SHARED_D`], `dm = d`). With activations `x ≈ dx·q` (block scale `dx`, codes
//! `q`, 16-sums `bsum`), one block's dot is
//!
//! ```text
//! A = Σ_g a[g] · Σ_{i in g} c[i]·q[i]        (exact, i32)
//! M = Σ_g m[g] · bsum[g]                     (exact, i32)
//! block = (dx·d)·f32(A − M)                  (SHARED_D)
//!       = (dx·d)·f32(A) − (dx·dm)·f32(M)     (otherwise)
//! ```
//!
//! formed per lane: `A` and `M` are split into 8 exact i32 lane sums (the lanes AVX2's
//! `_mm256_maddubs_epi16` + `_mm256_madd_epi16` produce, see [`lane_sums`]), each lane is
//! scaled as above into an f32 lane accumulator of the row, and the row's result is its 8
//! lanes summed pairwise. The integer part is exact, so the AVX2 implementation and the
//! portable one give the same integers, and as the f32 part is the same operations in the same
//! order (separate multiplies and adds, no fused multiply-adds), the same bits. Neither the
//! token count, nor the tile position, nor the thread split changes a result (each depends
//! only on the row's bytes and the token's quantized activations).
//!
//! Range of the integer part (why nothing overflows): `|q| ≤ 127`; unsigned codes ≤ 63 and
//! signed codes' magnitudes ≤ 128, so a `maddubs` pair sum is at most `2·128·127 = 32512`
//! (no i16 saturation); the largest block sum (Q6_K: `16 groups · 127 · 16 · 63 · 127`) is
//! below 2^28.
//!
//! Tiling: [`ROW_TILE`] rows are decoded together (codes into a scratch tile; the k-quants
//! and the legacy 4/5-bit formats unpack with AVX2 where available) and dotted against the
//! tokens of a chunk of [`FAST_TOKEN_CHUNK`], two tokens per pass: one decode serves the
//! chunk, one load of a token's codes serves the 4 rows, and one load of a row's codes and
//! scales serves both tokens.

use std::ops::Range;

use super::q8::QActs;
use super::row_kernel::ROW_TILE;
use super::QMatrix;
use crate::dequant::{f16_to_f32, IQ4_NL_GRID};

/// Tokens dotted against one decoded row tile before the next tile is decoded: 32 tokens of
/// quantized activations of a 7168-wide matrix are 224 KiB, within a core's L2.
pub const FAST_TOKEN_CHUNK: usize = 32;

/// Elements per integer scale.
const GROUP: usize = 16;

/// A weight block format with a fast kernel (see the module docs).
pub(super) trait FastFormat {
    /// Bytes of one block.
    const BLOCK_BYTES: usize;
    /// Elements of one block; also the activation block (32 or 256).
    const BLOCK_ELEMS: usize;
    /// Whether codes are signed bytes (else unsigned, at most 63).
    const SIGNED: bool;
    /// Whether the offset term uses the block's `d` (then `A − M` is formed exactly).
    const SHARED_D: bool;
    /// Whether any offset coefficient `m` can be nonzero (else `M = 0` is not computed).
    const HAS_OFFSET: bool = true;

    /// Decodes one block: `c` gets [`FastFormat::BLOCK_ELEMS`] codes, `a` and `m` one value
    /// per 16 elements (32-element formats: `a = 1`); returns `(d, dm)`.
    fn decode(b: &[u8], c: &mut [u8], a: &mut [i8], m: &mut [i16]) -> (f32, f32);

    /// [`FastFormat::decode`] with the codes unpacked by AVX2 where that is written (the
    /// k-quants); must produce identical values.
    ///
    /// # Safety
    /// The CPU must support AVX2.
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn decode_avx2(b: &[u8], c: &mut [u8], a: &mut [i8], m: &mut [i16]) -> (f32, f32) {
        Self::decode(b, c, a, m)
    }
}

/// `&b[..N]` as an array (the callers pass whole blocks).
#[inline(always)]
fn arr<const N: usize>(b: &[u8]) -> &[u8; N] {
    b[..N].try_into().expect("whole block")
}

/// `&mut c[..N]` as an array.
#[inline(always)]
fn arr_mut<const N: usize>(c: &mut [u8]) -> &mut [u8; N] {
    (&mut c[..N]).try_into().expect("whole block")
}

/// Q2_K: `w = (d·(sc & 15))·q − dmin·(sc >> 4)`, `q` 2-bit.
pub(super) struct Q2K;
impl FastFormat for Q2K {
    const BLOCK_BYTES: usize = 84;
    const BLOCK_ELEMS: usize = 256;
    const SIGNED: bool = false;
    const SHARED_D: bool = false;

    #[inline(always)]
    fn decode(b: &[u8], c: &mut [u8], a: &mut [i8], m: &mut [i16]) -> (f32, f32) {
        let b = arr::<84>(b);
        let c = arr_mut::<256>(c);
        // Element 128n + 32s + l is (qs[32n + l] >> 2s) & 3.
        for n in 0..2 {
            for s in 0..4 {
                for l in 0..32 {
                    c[128 * n + 32 * s + l] = (b[16 + 32 * n + l] >> (2 * s)) & 3;
                }
            }
        }
        q2k_scales(b, a, m)
    }

    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn decode_avx2(b: &[u8], c: &mut [u8], a: &mut [i8], m: &mut [i16]) -> (f32, f32) {
        // SAFETY: AVX2 per the caller.
        unsafe { avx2::q2k_codes(b, c) };
        q2k_scales(b, a, m)
    }
}

/// Q2_K's per-16 scales (low nibbles) and mins (high nibbles), `(d, dmin)`.
#[inline(always)]
fn q2k_scales(b: &[u8], a: &mut [i8], m: &mut [i16]) -> (f32, f32) {
    for g in 0..16 {
        a[g] = (b[g] & 0x0F) as i8;
        m[g] = (b[g] >> 4) as i16;
    }
    (f16_to_f32([b[80], b[81]]), f16_to_f32([b[82], b[83]]))
}

/// Q3_K: `w = (d·(sc − 32))·(u − 4)` with `u = low2 | high << 2` in `0..=7`: codes `u`,
/// `a = sc − 32`, `m = 4·a`.
pub(super) struct Q3K;
impl FastFormat for Q3K {
    const BLOCK_BYTES: usize = 110;
    const BLOCK_ELEMS: usize = 256;
    const SIGNED: bool = false;
    const SHARED_D: bool = true;

    #[inline(always)]
    fn decode(b: &[u8], c: &mut [u8], a: &mut [i8], m: &mut [i16]) -> (f32, f32) {
        let b = arr::<110>(b);
        let c = arr_mut::<256>(c);
        // Element 128n + 32s + l: low bits (qs[32n + l] >> 2s) & 3, high bit
        // (hmask[l] >> (4n + s)) & 1.
        for n in 0..2 {
            for s in 0..4 {
                for l in 0..32 {
                    let low = (b[32 + 32 * n + l] >> (2 * s)) & 3;
                    let high = (b[l] >> (4 * n + s)) & 1;
                    c[128 * n + 32 * s + l] = low | (high << 2);
                }
            }
        }
        q3k_scales(b, a, m)
    }

    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn decode_avx2(b: &[u8], c: &mut [u8], a: &mut [i8], m: &mut [i16]) -> (f32, f32) {
        // SAFETY: AVX2 per the caller.
        unsafe { avx2::q3k_codes(b, c) };
        q3k_scales(b, a, m)
    }
}

/// Q3_K's 16 signed scales `sc − 32` and offsets `4·(sc − 32)`, `(d, d)`.
#[inline(always)]
fn q3k_scales(b: &[u8], a: &mut [i8], m: &mut [i16]) -> (f32, f32) {
    // Scale j has low bits (s[j % 8] >> 4(j / 8)) & 15 and high bits
    // (s[8 + j % 4] >> 2(j / 4)) & 3; four at a time in 32-bit words.
    let [w0, w1, w2] = words3(&b[96..108]);
    const LO: u32 = 0x0F0F_0F0F;
    const HI: u32 = 0x0303_0303;
    let packed = [
        (w0 & LO) | ((w2 & HI) << 4),
        (w1 & LO) | (((w2 >> 2) & HI) << 4),
        ((w0 >> 4) & LO) | (((w2 >> 4) & HI) << 4),
        ((w1 >> 4) & LO) | (((w2 >> 6) & HI) << 4),
    ];
    for (q, word) in packed.iter().enumerate() {
        for (i, byte) in word.to_le_bytes().into_iter().enumerate() {
            let sc = byte as i8 - 32;
            a[4 * q + i] = sc;
            m[4 * q + i] = 4 * sc as i16;
        }
    }
    let d = f16_to_f32([b[108], b[109]]);
    (d, d)
}

/// Three little-endian 32-bit words from 12 bytes.
#[inline(always)]
fn words3(s: &[u8]) -> [u32; 3] {
    std::array::from_fn(|i| {
        u32::from_le_bytes([s[4 * i], s[4 * i + 1], s[4 * i + 2], s[4 * i + 3]])
    })
}

/// Q4_K/Q5_K's per-16 scales and mins: sub-block `j` (32 elements) is groups `2j, 2j + 1`.
/// The 6-bit pairs of ggml's `get_scale_min_k4` (`dequant.rs`'s `scale_min_k4`), four at a
/// time in 32-bit words: scales 0..4 and mins 0..4 are the low 6 bits of bytes 0..4 and
/// 4..8; scales 4..8 are the low nibbles of bytes 8..12 with the top 2 bits of bytes 0..4
/// above them, mins 4..8 the high nibbles with the top 2 bits of bytes 4..8.
#[inline(always)]
fn k4_scales(b: &[u8], a: &mut [i8], m: &mut [i16]) -> (f32, f32) {
    let [w0, w1, w2] = words3(&b[4..16]);
    const SIX: u32 = 0x3F3F_3F3F;
    const LO: u32 = 0x0F0F_0F0F;
    const TOP: u32 = 0x0303_0303;
    let sc = [w0 & SIX, (w2 & LO) | (((w0 >> 6) & TOP) << 4)];
    let mn = [w1 & SIX, ((w2 >> 4) & LO) | (((w1 >> 6) & TOP) << 4)];
    for h in 0..2 {
        let (sb, mb) = (sc[h].to_le_bytes(), mn[h].to_le_bytes());
        for i in 0..4 {
            let j = 4 * h + i;
            a[2 * j] = sb[i] as i8;
            a[2 * j + 1] = sb[i] as i8;
            m[2 * j] = mb[i] as i16;
            m[2 * j + 1] = mb[i] as i16;
        }
    }
    (f16_to_f32([b[0], b[1]]), f16_to_f32([b[2], b[3]]))
}

/// Q4_K: `w = (d·sc)·q − dmin·m`, `q` 4-bit.
pub(super) struct Q4K;
impl FastFormat for Q4K {
    const BLOCK_BYTES: usize = 144;
    const BLOCK_ELEMS: usize = 256;
    const SIGNED: bool = false;
    const SHARED_D: bool = false;

    #[inline(always)]
    fn decode(b: &[u8], c: &mut [u8], a: &mut [i8], m: &mut [i16]) -> (f32, f32) {
        let b = arr::<144>(b);
        let c = arr_mut::<256>(c);
        for p in 0..4 {
            for l in 0..32 {
                let v = b[16 + 32 * p + l];
                c[64 * p + l] = v & 0x0F;
                c[64 * p + 32 + l] = v >> 4;
            }
        }
        k4_scales(b, a, m)
    }

    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn decode_avx2(b: &[u8], c: &mut [u8], a: &mut [i8], m: &mut [i16]) -> (f32, f32) {
        // SAFETY: AVX2 per the caller.
        unsafe { avx2::q4k_codes(b, c) };
        k4_scales(b, a, m)
    }
}

/// Q5_K: as Q4_K with a fifth bit from `qh`.
pub(super) struct Q5K;
impl FastFormat for Q5K {
    const BLOCK_BYTES: usize = 176;
    const BLOCK_ELEMS: usize = 256;
    const SIGNED: bool = false;
    const SHARED_D: bool = false;

    #[inline(always)]
    fn decode(b: &[u8], c: &mut [u8], a: &mut [i8], m: &mut [i16]) -> (f32, f32) {
        let b = arr::<176>(b);
        let c = arr_mut::<256>(c);
        for p in 0..4 {
            for l in 0..32 {
                let v = b[48 + 32 * p + l];
                let h = b[16 + l];
                c[64 * p + l] = (v & 0x0F) | (((h >> (2 * p)) & 1) << 4);
                c[64 * p + 32 + l] = (v >> 4) | (((h >> (2 * p + 1)) & 1) << 4);
            }
        }
        k4_scales(b, a, m)
    }

    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn decode_avx2(b: &[u8], c: &mut [u8], a: &mut [i8], m: &mut [i16]) -> (f32, f32) {
        // SAFETY: AVX2 per the caller.
        unsafe { avx2::q5k_codes(b, c) };
        k4_scales(b, a, m)
    }
}

/// Q6_K: `w = (d·sc)·(u − 32)`, `u` 6-bit: codes `u`, `a = sc`, `m = 32·sc`.
pub(super) struct Q6K;
impl FastFormat for Q6K {
    const BLOCK_BYTES: usize = 210;
    const BLOCK_ELEMS: usize = 256;
    const SIGNED: bool = false;
    const SHARED_D: bool = true;

    #[inline(always)]
    fn decode(b: &[u8], c: &mut [u8], a: &mut [i8], m: &mut [i16]) -> (f32, f32) {
        let b = arr::<210>(b);
        let c = arr_mut::<256>(c);
        for h in 0..2 {
            for s in 0..4 {
                for l in 0..32 {
                    let lo = (b[64 * h + 32 * (s % 2) + l] >> (4 * (s / 2))) & 0x0F;
                    let hi = (b[128 + 32 * h + l] >> (2 * s)) & 3;
                    c[128 * h + 32 * s + l] = lo | (hi << 4);
                }
            }
        }
        q6k_scales(b, a, m)
    }

    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn decode_avx2(b: &[u8], c: &mut [u8], a: &mut [i8], m: &mut [i16]) -> (f32, f32) {
        // SAFETY: AVX2 per the caller.
        unsafe { avx2::q6k_codes(b, c) };
        q6k_scales(b, a, m)
    }
}

/// Q6_K's 16 signed scales and offsets `32·sc`, `(d, d)`.
#[inline(always)]
fn q6k_scales(b: &[u8], a: &mut [i8], m: &mut [i16]) -> (f32, f32) {
    for g in 0..16 {
        let sc = b[192 + g] as i8;
        a[g] = sc;
        m[g] = 32 * sc as i16;
    }
    let d = f16_to_f32([b[208], b[209]]);
    (d, d)
}

/// Q8_0: signed codes as stored, `w = d·q`.
pub(super) struct Q80;
impl FastFormat for Q80 {
    const HAS_OFFSET: bool = false;
    const BLOCK_BYTES: usize = 34;
    const BLOCK_ELEMS: usize = 32;
    const SIGNED: bool = true;
    const SHARED_D: bool = true;

    #[inline(always)]
    fn decode(b: &[u8], c: &mut [u8], a: &mut [i8], m: &mut [i16]) -> (f32, f32) {
        let b = arr::<34>(b);
        c[..32].copy_from_slice(&b[2..34]);
        a[..2].fill(1);
        m[..2].fill(0);
        let d = f16_to_f32([b[0], b[1]]);
        (d, d)
    }
}

/// The 32 nibbles of a legacy block: element `j < 16` is the low nibble of `qs[j]`, element
/// `j + 16` the high one.
#[inline(always)]
fn nibbles(qs: &[u8], c: &mut [u8]) {
    for j in 0..16 {
        c[j] = qs[j] & 0x0F;
        c[j + 16] = qs[j] >> 4;
    }
}

/// Q4_0: `w = d·(u − 8)`: codes `u`, `m = 8`.
pub(super) struct Q40;
impl FastFormat for Q40 {
    const BLOCK_BYTES: usize = 18;
    const BLOCK_ELEMS: usize = 32;
    const SIGNED: bool = false;
    const SHARED_D: bool = true;

    #[inline(always)]
    fn decode(b: &[u8], c: &mut [u8], a: &mut [i8], m: &mut [i16]) -> (f32, f32) {
        let b = arr::<18>(b);
        nibbles(&b[2..18], c);
        a[..2].fill(1);
        m[..2].fill(8);
        let d = f16_to_f32([b[0], b[1]]);
        (d, d)
    }

    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn decode_avx2(b: &[u8], c: &mut [u8], a: &mut [i8], m: &mut [i16]) -> (f32, f32) {
        // SAFETY: AVX2 per the caller.
        unsafe { avx2::legacy_codes(&b[2..18], None, c) };
        a[..2].fill(1);
        m[..2].fill(8);
        let d = f16_to_f32([b[0], b[1]]);
        (d, d)
    }
}

/// Q4_1: `w = d·u + mn`: `dm = −mn`, `m = 1`.
pub(super) struct Q41;
impl FastFormat for Q41 {
    const BLOCK_BYTES: usize = 20;
    const BLOCK_ELEMS: usize = 32;
    const SIGNED: bool = false;
    const SHARED_D: bool = false;

    #[inline(always)]
    fn decode(b: &[u8], c: &mut [u8], a: &mut [i8], m: &mut [i16]) -> (f32, f32) {
        let b = arr::<20>(b);
        nibbles(&b[4..20], c);
        a[..2].fill(1);
        m[..2].fill(1);
        (f16_to_f32([b[0], b[1]]), -f16_to_f32([b[2], b[3]]))
    }

    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn decode_avx2(b: &[u8], c: &mut [u8], a: &mut [i8], m: &mut [i16]) -> (f32, f32) {
        // SAFETY: AVX2 per the caller.
        unsafe { avx2::legacy_codes(&b[4..20], None, c) };
        a[..2].fill(1);
        m[..2].fill(1);
        (f16_to_f32([b[0], b[1]]), -f16_to_f32([b[2], b[3]]))
    }
}

/// The fifth bits of Q5_0/Q5_1: bit `j` of `qh` belongs to element `j`.
#[inline(always)]
fn fifth_bits(qh: u32, c: &mut [u8]) {
    for (j, v) in c.iter_mut().take(32).enumerate() {
        *v |= (((qh >> j) & 1) as u8) << 4;
    }
}

/// Q5_0: `w = d·(u − 16)`: codes `u`, `m = 16`.
pub(super) struct Q50;
impl FastFormat for Q50 {
    const BLOCK_BYTES: usize = 22;
    const BLOCK_ELEMS: usize = 32;
    const SIGNED: bool = false;
    const SHARED_D: bool = true;

    #[inline(always)]
    fn decode(b: &[u8], c: &mut [u8], a: &mut [i8], m: &mut [i16]) -> (f32, f32) {
        let b = arr::<22>(b);
        nibbles(&b[6..22], c);
        fifth_bits(u32::from_le_bytes([b[2], b[3], b[4], b[5]]), c);
        a[..2].fill(1);
        m[..2].fill(16);
        let d = f16_to_f32([b[0], b[1]]);
        (d, d)
    }

    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn decode_avx2(b: &[u8], c: &mut [u8], a: &mut [i8], m: &mut [i16]) -> (f32, f32) {
        let qh = u32::from_le_bytes([b[2], b[3], b[4], b[5]]);
        // SAFETY: AVX2 per the caller.
        unsafe { avx2::legacy_codes(&b[6..22], Some(qh), c) };
        a[..2].fill(1);
        m[..2].fill(16);
        let d = f16_to_f32([b[0], b[1]]);
        (d, d)
    }
}

/// Q5_1: `w = d·u + mn`.
pub(super) struct Q51;
impl FastFormat for Q51 {
    const BLOCK_BYTES: usize = 24;
    const BLOCK_ELEMS: usize = 32;
    const SIGNED: bool = false;
    const SHARED_D: bool = false;

    #[inline(always)]
    fn decode(b: &[u8], c: &mut [u8], a: &mut [i8], m: &mut [i16]) -> (f32, f32) {
        let b = arr::<24>(b);
        nibbles(&b[8..24], c);
        fifth_bits(u32::from_le_bytes([b[4], b[5], b[6], b[7]]), c);
        a[..2].fill(1);
        m[..2].fill(1);
        (f16_to_f32([b[0], b[1]]), -f16_to_f32([b[2], b[3]]))
    }

    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn decode_avx2(b: &[u8], c: &mut [u8], a: &mut [i8], m: &mut [i16]) -> (f32, f32) {
        let qh = u32::from_le_bytes([b[4], b[5], b[6], b[7]]);
        // SAFETY: AVX2 per the caller.
        unsafe { avx2::legacy_codes(&b[8..24], Some(qh), c) };
        a[..2].fill(1);
        m[..2].fill(1);
        (f16_to_f32([b[0], b[1]]), -f16_to_f32([b[2], b[3]]))
    }
}

/// IQ4_NL: signed codes from the non-linear grid, `w = d·GRID[nibble]`.
pub(super) struct Iq4Nl;
impl FastFormat for Iq4Nl {
    const HAS_OFFSET: bool = false;
    const BLOCK_BYTES: usize = 18;
    const BLOCK_ELEMS: usize = 32;
    const SIGNED: bool = true;
    const SHARED_D: bool = true;

    #[inline(always)]
    fn decode(b: &[u8], c: &mut [u8], a: &mut [i8], m: &mut [i16]) -> (f32, f32) {
        let b = arr::<18>(b);
        for j in 0..16 {
            c[j] = IQ4_NL_GRID[(b[2 + j] & 0x0F) as usize] as u8;
            c[j + 16] = IQ4_NL_GRID[(b[2 + j] >> 4) as usize] as u8;
        }
        a[..2].fill(1);
        m[..2].fill(0);
        let d = f16_to_f32([b[0], b[1]]);
        (d, d)
    }
}

/// IQ4_XS: signed grid codes, `a = ls − 32` per 32 elements.
pub(super) struct Iq4Xs;
impl FastFormat for Iq4Xs {
    const HAS_OFFSET: bool = false;
    const BLOCK_BYTES: usize = 136;
    const BLOCK_ELEMS: usize = 256;
    const SIGNED: bool = true;
    const SHARED_D: bool = true;

    #[inline(always)]
    fn decode(b: &[u8], c: &mut [u8], a: &mut [i8], m: &mut [i16]) -> (f32, f32) {
        let b = arr::<136>(b);
        let scales_h = u16::from_le_bytes([b[2], b[3]]);
        for ib in 0..8 {
            let lo = (b[4 + ib / 2] >> (4 * (ib % 2))) & 0x0F;
            let hi = ((scales_h >> (2 * ib)) & 3) as u8;
            let ls = (lo | (hi << 4)) as i8 - 32;
            a[2 * ib] = ls;
            a[2 * ib + 1] = ls;
            for j in 0..16 {
                let q = b[8 + 16 * ib + j];
                c[32 * ib + j] = IQ4_NL_GRID[(q & 0x0F) as usize] as u8;
                c[32 * ib + 16 + j] = IQ4_NL_GRID[(q >> 4) as usize] as u8;
            }
        }
        m[..16].fill(0);
        let d = f16_to_f32([b[0], b[1]]);
        (d, d)
    }
}

/// One block for `N` rows sharing one token's codes, accumulated per lane (see
/// [`lane_sums`] for the lane layout both implementations share).
pub(super) trait Dots {
    /// Per-row running sum: [`LANES`] f32 lanes.
    type Acc: Copy;
    /// A zero sum.
    fn zero() -> Self::Acc;
    /// Decodes one block of `F` (see [`FastFormat::decode`]).
    fn decode<F: FastFormat>(b: &[u8], c: &mut [u8], a: &mut [i8], m: &mut [i16]) -> (f32, f32);
    /// Adds one block to `acc[t][k]` for each of `T` tokens `t` and `N` rows `k`: `c[k]` the
    /// row's codes for this block (`16·a[k].len()` bytes), `a[k]`, `m[k]` its per-16 scales
    /// and offsets, `fd[t][k]`, `fm[t][k]` its `dx·d` and `dx·dm`; `x[t]`, `bs[t]` the token's
    /// codes and 16-sums. Per lane `l`: `acc[l] += fd·f32(A_l − M_l)` (`SHARED_D`), else
    /// `acc[l] += fd·f32(A_l) − fm·f32(M_l)`, as separate f32 multiplies, subtraction and
    /// addition (no fused multiply-add); so each `(t, k)` gets the same bits whatever `T`
    /// and `N`.
    #[allow(clippy::too_many_arguments)]
    fn block<F: FastFormat, const N: usize, const T: usize>(
        c: [&[u8]; N],
        a: [&[i8]; N],
        m: [&[i16]; N],
        x: [&[i8]; T],
        bs: [&[i16]; T],
        fd: [[f32; N]; T],
        fm: [[f32; N]; T],
        acc: &mut [[Self::Acc; N]; T],
    );
    /// The row's result: the lanes summed pairwise (as `fused.rs` reduces).
    fn finish(acc: Self::Acc) -> f32;
}

/// f32 lanes of the per-row sums.
const LANES: usize = 8;

/// The exact integer lane sums of one block, laid out as AVX2 forms them: the block is cut
/// into 32-byte chunks `j`; lane `l` holds `Σ_j a[2j + l/4] · Σ_{i<4} c[32j + 4l + i] ·
/// x[32j + 4l + i]` (`A_l`), and `M_l = m[2l]·bs[2l] + m[2l+1]·bs[2l+1]` for 16 groups, or
/// `M_0 = Σ_g m[g]·bs[g]` (other lanes 0) for 2.
#[inline(always)]
fn lane_sums<F: FastFormat>(
    c: &[u8],
    a: &[i8],
    m: &[i16],
    x: &[i8],
    bs: &[i16],
) -> ([i32; LANES], [i32; LANES]) {
    let groups = bs.len();
    let (mut big, mut off) = ([0i32; LANES], [0i32; LANES]);
    for j in 0..groups / 2 {
        for (l, bl) in big.iter_mut().enumerate() {
            let base = 32 * j + 4 * l;
            let mut s = 0i32;
            for i in 0..4 {
                let cv = if F::SIGNED {
                    c[base + i] as i8 as i32
                } else {
                    c[base + i] as i32
                };
                s += cv * x[base + i] as i32;
            }
            *bl += a[2 * j + l / 4] as i32 * s;
        }
    }
    if groups == 16 {
        for (l, ol) in off.iter_mut().enumerate() {
            *ol = m[2 * l] as i32 * bs[2 * l] as i32 + m[2 * l + 1] as i32 * bs[2 * l + 1] as i32;
        }
    } else {
        for (mv, b) in m.iter().zip(bs).take(groups) {
            off[0] += *mv as i32 * *b as i32;
        }
    }
    (big, off)
}

/// Sums 8 lanes pairwise (the order of `fused.rs` and `row_kernel.rs`).
#[inline(always)]
fn reduce(acc: [f32; LANES]) -> f32 {
    ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]))
}

/// Plain Rust.
pub(super) struct Portable;
impl Dots for Portable {
    type Acc = [f32; LANES];

    #[inline(always)]
    fn zero() -> Self::Acc {
        [0.0; LANES]
    }

    #[inline(always)]
    fn decode<F: FastFormat>(b: &[u8], c: &mut [u8], a: &mut [i8], m: &mut [i16]) -> (f32, f32) {
        F::decode(b, c, a, m)
    }

    #[inline(always)]
    fn block<F: FastFormat, const N: usize, const T: usize>(
        c: [&[u8]; N],
        a: [&[i8]; N],
        m: [&[i16]; N],
        x: [&[i8]; T],
        bs: [&[i16]; T],
        fd: [[f32; N]; T],
        fm: [[f32; N]; T],
        acc: &mut [[Self::Acc; N]; T],
    ) {
        for t in 0..T {
            for k in 0..N {
                let (big, off) = lane_sums::<F>(c[k], a[k], m[k], x[t], bs[t]);
                for l in 0..LANES {
                    let v = if F::SHARED_D {
                        fd[t][k] * (big[l] - off[l]) as f32
                    } else {
                        fd[t][k] * big[l] as f32 - fm[t][k] * off[l] as f32
                    };
                    acc[t][k][l] += v;
                }
            }
        }
    }

    #[inline(always)]
    fn finish(acc: Self::Acc) -> f32 {
        reduce(acc)
    }
}

/// AVX2; only instantiated inside [`body_avx2`] (and tests after detection).
#[cfg(target_arch = "x86_64")]
pub(super) struct Avx2;
#[cfg(target_arch = "x86_64")]
impl Dots for Avx2 {
    type Acc = std::arch::x86_64::__m256;

    #[inline(always)]
    fn zero() -> Self::Acc {
        // SAFETY: `Avx2` is only used after the CPU was found to support AVX2.
        unsafe { std::arch::x86_64::_mm256_setzero_ps() }
    }

    #[inline(always)]
    fn decode<F: FastFormat>(b: &[u8], c: &mut [u8], a: &mut [i8], m: &mut [i16]) -> (f32, f32) {
        // SAFETY: as in `zero`.
        unsafe { F::decode_avx2(b, c, a, m) }
    }

    #[inline(always)]
    fn block<F: FastFormat, const N: usize, const T: usize>(
        c: [&[u8]; N],
        a: [&[i8]; N],
        m: [&[i16]; N],
        x: [&[i8]; T],
        bs: [&[i16]; T],
        fd: [[f32; N]; T],
        fm: [[f32; N]; T],
        acc: &mut [[Self::Acc; N]; T],
    ) {
        // SAFETY: as in `zero`.
        unsafe { avx2::block::<F, N, T>(c, a, m, x, bs, fd, fm, acc) }
    }

    #[inline(always)]
    fn finish(acc: Self::Acc) -> f32 {
        let mut a = [0f32; LANES];
        // SAFETY: as in `zero`; `a` holds 8 f32.
        unsafe { std::arch::x86_64::_mm256_storeu_ps(a.as_mut_ptr(), acc) };
        reduce(a)
    }
}

/// Which implementation of the integer part runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SimdIsa {
    /// Plain Rust (any CPU).
    Portable,
    /// x86-64 AVX2 (+ FMA, which the exact kernels of the same build use).
    Avx2,
}

impl SimdIsa {
    /// The best implementation this CPU runs: AVX2 when detected (with FMA, the same test
    /// the exact kernels of `row_kernel.rs` and `fused.rs` make), else portable.
    pub fn detected() -> Self {
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
        {
            return Self::Avx2;
        }
        Self::Portable
    }

    /// Whether this CPU can run `self`.
    pub fn available(self) -> bool {
        self == Self::Portable || Self::detected() == Self::Avx2
    }
}

/// A fast row kernel: as `row_kernel::DotRowsFn` over quantized activations, with the
/// implementation to run (which the caller checked is [`SimdIsa::available`]).
pub(crate) type FastRowsFn =
    fn(&QMatrix<'_>, Range<usize>, &QActs, usize, &mut [&mut [f32]], SimdIsa);

/// The fast row kernel of format `F` (see [`FastRowsFn`]).
pub(super) fn dot_rows<F: FastFormat>(
    w: &QMatrix<'_>,
    rows: Range<usize>,
    acts: &QActs,
    n_tokens: usize,
    out: &mut [&mut [f32]],
    isa: SimdIsa,
) {
    #[cfg(target_arch = "x86_64")]
    if isa == SimdIsa::Avx2 && SimdIsa::detected() == SimdIsa::Avx2 {
        // SAFETY: the CPU supports AVX2 and FMA, checked just above.
        unsafe { body_avx2::<F>(w, rows, acts, n_tokens, out) };
        return;
    }
    let _ = isa;
    body::<F, Portable>(w, rows, acts, n_tokens, out);
}

/// [`body`] compiled for AVX2 + FMA (decoders included).
///
/// # Safety
/// The CPU must support AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn body_avx2<F: FastFormat>(
    w: &QMatrix<'_>,
    rows: Range<usize>,
    acts: &QActs,
    n_tokens: usize,
    out: &mut [&mut [f32]],
) {
    body::<F, Avx2>(w, rows, acts, n_tokens, out);
}

/// Decoded row tile: codes, per-16 scales and offsets, per-block factors.
struct Tile {
    c: Vec<u8>,
    a: Vec<i8>,
    m: Vec<i16>,
    d: Vec<f32>,
    dm: Vec<f32>,
}

/// A full tile of [`ROW_TILE`] decoded rows against tokens `ts`: their results per token.
#[inline(always)]
fn tile_tokens<F: FastFormat, D: Dots, const T: usize>(
    tile: &Tile,
    cols: usize,
    acts: &QActs,
    ts: [usize; T],
) -> [[f32; ROW_TILE]; T] {
    let nb = cols / F::BLOCK_ELEMS;
    let ng = cols / GROUP;
    let gpb = F::BLOCK_ELEMS / GROUP;
    let tok: [(&[i8], &[f32], &[i16]); T] = std::array::from_fn(|q| acts.token(ts[q]));
    let mut acc = [[D::zero(); ROW_TILE]; T];
    for blk in 0..nb {
        let (e0, e1) = (blk * F::BLOCK_ELEMS, (blk + 1) * F::BLOCK_ELEMS);
        let (g0, g1) = (blk * gpb, (blk + 1) * gpb);
        D::block::<F, ROW_TILE, T>(
            std::array::from_fn(|k| &tile.c[k * cols + e0..k * cols + e1]),
            std::array::from_fn(|k| &tile.a[k * ng + g0..k * ng + g1]),
            std::array::from_fn(|k| &tile.m[k * ng + g0..k * ng + g1]),
            std::array::from_fn(|t| &tok[t].0[e0..e1]),
            std::array::from_fn(|t| &tok[t].2[g0..g1]),
            std::array::from_fn(|t| std::array::from_fn(|k| tok[t].1[blk] * tile.d[k * nb + blk])),
            std::array::from_fn(|t| std::array::from_fn(|k| tok[t].1[blk] * tile.dm[k * nb + blk])),
            &mut acc,
        );
    }
    // Plain loops: a closure passed to `map` may stay an out-of-line call, and with it the
    // AVX2 store inside `finish`.
    let mut res = [[0f32; ROW_TILE]; T];
    for (rt, at) in res.iter_mut().zip(acc) {
        for (r, a) in rt.iter_mut().zip(at) {
            *r = D::finish(a);
        }
    }
    res
}

/// The fast row kernel (see the module docs).
#[inline(always)]
#[allow(clippy::needless_range_loop)] // `blk` indexes codes, scales, factors and activations.
fn body<F: FastFormat, D: Dots>(
    w: &QMatrix<'_>,
    rows: Range<usize>,
    acts: &QActs,
    n_tokens: usize,
    out: &mut [&mut [f32]],
) {
    let cols = w.cols();
    let row_bytes = w.row_bytes();
    let nb = cols / F::BLOCK_ELEMS;
    let ng = cols / GROUP;
    let gpb = F::BLOCK_ELEMS / GROUP;
    // Invariants of the callers (`QMatrix::new` checked the row geometry, `matmul`
    // quantized the activations for this type), not data.
    assert!(
        nb * F::BLOCK_ELEMS == cols && row_bytes == nb * F::BLOCK_BYTES,
        "fast kernel: row of {cols} elements is not whole blocks"
    );
    assert!(
        acts.block == F::BLOCK_ELEMS && acts.cols == cols,
        "fast kernel: activations quantized for another shape"
    );

    let mut tile = Tile {
        c: vec![0u8; ROW_TILE * cols],
        a: vec![0i8; ROW_TILE * ng],
        m: vec![0i16; ROW_TILE * ng],
        d: vec![0f32; ROW_TILE * nb],
        dm: vec![0f32; ROW_TILE * nb],
    };

    let mut t0 = 0;
    while t0 < n_tokens {
        let t1 = (t0 + FAST_TOKEN_CHUNK).min(n_tokens);
        let mut r = rows.start;
        while r < rows.end {
            let n = ROW_TILE.min(rows.end - r);
            for k in 0..n {
                let src = &w.data()[(r + k) * row_bytes..(r + k + 1) * row_bytes];
                let ck = &mut tile.c[k * cols..(k + 1) * cols];
                let ak = &mut tile.a[k * ng..(k + 1) * ng];
                let mk = &mut tile.m[k * ng..(k + 1) * ng];
                let dk = &mut tile.d[k * nb..(k + 1) * nb];
                let dmk = &mut tile.dm[k * nb..(k + 1) * nb];
                let blocks = src
                    .chunks_exact(F::BLOCK_BYTES)
                    .zip(ck.chunks_exact_mut(F::BLOCK_ELEMS))
                    .zip(ak.chunks_exact_mut(gpb).zip(mk.chunks_exact_mut(gpb)))
                    .zip(dk.iter_mut().zip(dmk.iter_mut()));
                for (((b, cb), (ab, mb)), (db, dmb)) in blocks {
                    (*db, *dmb) = D::decode::<F>(b, cb, ab, mb);
                }
            }
            let i = r - rows.start;
            let mut t = t0;
            while t < t1 {
                // Two tokens at a time through a full tile (one load of each row's codes and
                // scales serves both), else one.
                let pair = n == ROW_TILE && t + 1 < t1;
                if pair {
                    let res = tile_tokens::<F, D, 2>(&tile, cols, acts, [t, t + 1]);
                    for (q, rq) in res.iter().enumerate() {
                        out[t + q][i..i + n].copy_from_slice(rq);
                    }
                    t += 2;
                } else if n == ROW_TILE {
                    let [res] = tile_tokens::<F, D, 1>(&tile, cols, acts, [t]);
                    out[t][i..i + n].copy_from_slice(&res);
                    t += 1;
                } else {
                    let (xq, dx, bs) = acts.token(t);
                    for k in 0..n {
                        let mut acc = [[D::zero()]];
                        for blk in 0..nb {
                            let (e0, e1) = (blk * F::BLOCK_ELEMS, (blk + 1) * F::BLOCK_ELEMS);
                            let (g0, g1) = (blk * gpb, (blk + 1) * gpb);
                            D::block::<F, 1, 1>(
                                [&tile.c[k * cols + e0..k * cols + e1]],
                                [&tile.a[k * ng + g0..k * ng + g1]],
                                [&tile.m[k * ng + g0..k * ng + g1]],
                                [&xq[e0..e1]],
                                [&bs[g0..g1]],
                                [[dx[blk] * tile.d[k * nb + blk]]],
                                [[dx[blk] * tile.dm[k * nb + blk]]],
                                &mut acc,
                            );
                        }
                        out[t][i + k] = D::finish(acc[0][0]);
                    }
                    t += 1;
                }
            }
            r += n;
        }
        t0 = t1;
    }
}

/// AVX2 integer block sums.
#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::{
        __m128i, __m256, __m256i, _mm256_abs_epi8, _mm256_add_epi32, _mm256_add_ps,
        _mm256_and_si256, _mm256_cvtepi32_ps, _mm256_cvtepi8_epi16, _mm256_loadu_si256,
        _mm256_madd_epi16, _mm256_maddubs_epi16, _mm256_mul_ps, _mm256_or_si256, _mm256_set1_epi16,
        _mm256_set1_epi8, _mm256_set1_ps, _mm256_setr_epi32, _mm256_setzero_si256,
        _mm256_sign_epi8, _mm256_slli_epi16, _mm256_srl_epi16, _mm256_srli_epi16,
        _mm256_storeu_si256, _mm256_sub_epi32, _mm256_sub_ps, _mm_cvtsi32_si128, _mm_loadu_si128,
        _mm_set_epi64x, _mm_shuffle_epi8,
    };

    use std::arch::x86_64::{
        _mm256_cmpeq_epi8, _mm256_set1_epi32, _mm256_set1_epi64x, _mm256_set_m128i,
        _mm256_setr_epi8, _mm256_shuffle_epi8, _mm_and_si128, _mm_set1_epi8, _mm_srli_epi16,
    };

    use super::{FastFormat, GROUP};

    /// 32 bytes at `p`.
    ///
    /// # Safety
    /// AVX2; `p` valid for 32 reads.
    #[inline(always)]
    unsafe fn ld(p: *const u8) -> __m256i {
        // SAFETY: per the caller.
        unsafe { _mm256_loadu_si256(p.cast::<__m256i>()) }
    }

    /// Stores 32 bytes at `p`.
    ///
    /// # Safety
    /// AVX2; `p` valid for 32 writes.
    #[inline(always)]
    unsafe fn st(p: *mut u8, v: __m256i) {
        // SAFETY: per the caller.
        unsafe { _mm256_storeu_si256(p.cast::<__m256i>(), v) }
    }

    /// Each byte of `v` shifted right by `k` (bits from the neighbour byte must be masked
    /// off by the caller).
    ///
    /// # Safety
    /// AVX2.
    #[inline(always)]
    unsafe fn shr(v: __m256i, k: i32) -> __m256i {
        // SAFETY: AVX2 per the caller.
        unsafe { _mm256_srl_epi16(v, _mm_cvtsi32_si128(k)) }
    }

    /// A legacy block's 32 codes: the nibbles of `qs[..16]` (element `j < 16` low, `j + 16`
    /// high), with bit `j` of `qh` as bit 4 of element `j` when given (Q5_0/Q5_1).
    ///
    /// # Safety
    /// AVX2.
    #[inline(always)]
    pub(super) unsafe fn legacy_codes(qs: &[u8], qh: Option<u32>, c: &mut [u8]) {
        assert!(qs.len() >= 16 && c.len() >= 32);
        // SAFETY: AVX2 per the caller; reads qs[..16], writes c[..32] (checked above).
        unsafe {
            let v = _mm_loadu_si128(qs.as_ptr().cast::<__m128i>());
            let m4 = _mm_set1_epi8(0x0F);
            let lo = _mm_and_si128(v, m4);
            let hi = _mm_and_si128(_mm_srli_epi16::<4>(v), m4);
            let mut codes = _mm256_set_m128i(hi, lo);
            if let Some(qh) = qh {
                // Byte i gets byte i / 8 of qh, then keeps bit i % 8 of it.
                let all = _mm256_set1_epi32(qh as i32);
                let spread = _mm256_shuffle_epi8(
                    all,
                    _mm256_setr_epi8(
                        0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 2, 2, 2, 2, 2, 2, 3,
                        3, 3, 3, 3, 3, 3, 3,
                    ),
                );
                let bit = _mm256_set1_epi64x(0x8040_2010_0804_0201u64 as i64);
                let set = _mm256_cmpeq_epi8(_mm256_and_si256(spread, bit), bit);
                codes = _mm256_or_si256(codes, _mm256_and_si256(set, _mm256_set1_epi8(16)));
            }
            st(c.as_mut_ptr(), codes);
        }
    }

    /// Q2_K's 256 codes (layout as `super::Q2K::decode`).
    ///
    /// # Safety
    /// AVX2.
    #[inline(always)]
    pub(super) unsafe fn q2k_codes(b: &[u8], c: &mut [u8]) {
        assert!(b.len() >= 84 && c.len() >= 256);
        // SAFETY: AVX2 per the caller; reads b[16..80], writes c[..256] (checked above).
        unsafe {
            let m3 = _mm256_set1_epi8(3);
            for n in 0..2 {
                let v = ld(b.as_ptr().add(16 + 32 * n));
                for s in 0..4 {
                    let q = _mm256_and_si256(shr(v, 2 * s as i32), m3);
                    st(c.as_mut_ptr().add(128 * n + 32 * s), q);
                }
            }
        }
    }

    /// Q3_K's 256 codes `low | high << 2` (layout as `super::Q3K::decode`).
    ///
    /// # Safety
    /// AVX2.
    #[inline(always)]
    pub(super) unsafe fn q3k_codes(b: &[u8], c: &mut [u8]) {
        assert!(b.len() >= 110 && c.len() >= 256);
        // SAFETY: AVX2 per the caller; reads b[..96], writes c[..256] (checked above).
        unsafe {
            let m3 = _mm256_set1_epi8(3);
            let one = _mm256_set1_epi8(1);
            let hm = ld(b.as_ptr());
            for n in 0..2 {
                let v = ld(b.as_ptr().add(32 + 32 * n));
                for s in 0..4 {
                    let low = _mm256_and_si256(shr(v, 2 * s as i32), m3);
                    let high = _mm256_and_si256(shr(hm, (4 * n + s) as i32), one);
                    // high ≤ 1: the 16-bit shift keeps it inside its byte.
                    let q = _mm256_or_si256(low, _mm256_slli_epi16::<2>(high));
                    st(c.as_mut_ptr().add(128 * n + 32 * s), q);
                }
            }
        }
    }

    /// Q4_K's 256 codes (layout as `super::Q4K::decode`).
    ///
    /// # Safety
    /// AVX2.
    #[inline(always)]
    pub(super) unsafe fn q4k_codes(b: &[u8], c: &mut [u8]) {
        assert!(b.len() >= 144 && c.len() >= 256);
        // SAFETY: AVX2 per the caller; reads b[16..144], writes c[..256] (checked above).
        unsafe {
            let m4 = _mm256_set1_epi8(0x0F);
            for p in 0..4 {
                let v = ld(b.as_ptr().add(16 + 32 * p));
                st(c.as_mut_ptr().add(64 * p), _mm256_and_si256(v, m4));
                st(
                    c.as_mut_ptr().add(64 * p + 32),
                    _mm256_and_si256(_mm256_srli_epi16::<4>(v), m4),
                );
            }
        }
    }

    /// Q5_K's 256 codes (layout as `super::Q5K::decode`).
    ///
    /// # Safety
    /// AVX2.
    #[inline(always)]
    pub(super) unsafe fn q5k_codes(b: &[u8], c: &mut [u8]) {
        assert!(b.len() >= 176 && c.len() >= 256);
        // SAFETY: AVX2 per the caller; reads b[16..176], writes c[..256] (checked above).
        unsafe {
            let m4 = _mm256_set1_epi8(0x0F);
            let one = _mm256_set1_epi8(1);
            let qh = ld(b.as_ptr().add(16));
            for p in 0..4 {
                let v = ld(b.as_ptr().add(48 + 32 * p));
                let h0 = _mm256_and_si256(shr(qh, 2 * p as i32), one);
                let h1 = _mm256_and_si256(shr(qh, 2 * p as i32 + 1), one);
                let lo = _mm256_or_si256(_mm256_and_si256(v, m4), _mm256_slli_epi16::<4>(h0));
                let hi = _mm256_or_si256(
                    _mm256_and_si256(_mm256_srli_epi16::<4>(v), m4),
                    _mm256_slli_epi16::<4>(h1),
                );
                st(c.as_mut_ptr().add(64 * p), lo);
                st(c.as_mut_ptr().add(64 * p + 32), hi);
            }
        }
    }

    /// Q6_K's 256 codes `lo | hi << 4` (layout as `super::Q6K::decode`).
    ///
    /// # Safety
    /// AVX2.
    #[inline(always)]
    pub(super) unsafe fn q6k_codes(b: &[u8], c: &mut [u8]) {
        assert!(b.len() >= 210 && c.len() >= 256);
        // SAFETY: AVX2 per the caller; reads b[..192], writes c[..256] (checked above).
        unsafe {
            let m4 = _mm256_set1_epi8(0x0F);
            let m2 = _mm256_set1_epi8(3);
            for h in 0..2 {
                let qa = ld(b.as_ptr().add(64 * h));
                let qb = ld(b.as_ptr().add(64 * h + 32));
                let qh = ld(b.as_ptr().add(128 + 32 * h));
                let lows = [
                    _mm256_and_si256(qa, m4),
                    _mm256_and_si256(qb, m4),
                    _mm256_and_si256(_mm256_srli_epi16::<4>(qa), m4),
                    _mm256_and_si256(_mm256_srli_epi16::<4>(qb), m4),
                ];
                for (s, lo) in lows.into_iter().enumerate() {
                    let hi = _mm256_and_si256(shr(qh, 2 * s as i32), m2);
                    // hi ≤ 3: the 16-bit shift keeps it inside its byte.
                    let q = _mm256_or_si256(lo, _mm256_slli_epi16::<4>(hi));
                    st(c.as_mut_ptr().add(128 * h + 32 * s), q);
                }
            }
        }
    }

    /// See `super::Dots::block`; the integer lanes are `super::lane_sums`'s. Each 32-byte
    /// chunk `j` covers groups `2j` (low 128-bit half of the `maddubs` result) and `2j + 1`
    /// (high half); the per-lane scale vector holds `a[2j]` in the low half and `a[2j + 1]`
    /// in the high half. Inlined into the AVX2-compiled kernel body (a call per block would
    /// cost more than the block).
    ///
    /// # Safety
    /// The CPU must support AVX2. Codes of unsigned formats must be ≤ 127 (the format docs
    /// of `super` keep them ≤ 63) and activation codes ≠ −128 (`q8.rs`), so no `maddubs`
    /// pair saturates.
    #[inline(always)]
    #[allow(clippy::too_many_arguments)]
    pub(super) unsafe fn block<F: FastFormat, const N: usize, const T: usize>(
        c: [&[u8]; N],
        a: [&[i8]; N],
        m: [&[i16]; N],
        x: [&[i8]; T],
        bs: [&[i16]; T],
        fd: [[f32; N]; T],
        fm: [[f32; N]; T],
        acc: &mut [[__m256; N]; T],
    ) {
        let groups = F::BLOCK_ELEMS / GROUP;
        let elems = F::BLOCK_ELEMS;
        assert!((0..T).all(|t| x[t].len() >= elems && bs[t].len() >= groups));
        assert!((0..N).all(|k| c[k].len() >= elems && a[k].len() >= groups));
        assert!((0..N).all(|k| m[k].len() >= groups));
        // Unit scales of 32-element blocks (see `FastFormat::decode`), relied on below.
        debug_assert!(groups == 16 || (0..N).all(|k| a[k].iter().take(groups).all(|v| *v == 1)));
        let chunks = groups / 2;
        // The scales as one 128-bit load (16 groups: the k-quants) or unit (2 groups).
        let wide = groups == 16;
        // SAFETY: AVX2 per the caller. Loads: x[t] and c[k] at 32j .. 32j + 32 <= elems,
        // a[k] 16 bytes and m[k], bs[t] 16 i16 only when `wide` (groups == 16); all checked
        // above.
        unsafe {
            let ones = _mm256_set1_epi16(1);
            let mut big = [[_mm256_setzero_si256(); N]; T];
            for j in 0..chunks {
                let mut xv = [_mm256_setzero_si256(); T];
                for t in 0..T {
                    xv[t] = ld(x[t].as_ptr().add(32 * j).cast::<u8>());
                }
                // Byte indices 2j (×8) then 2j + 1 (×8).
                let lo = 0x0101_0101_0101_0101i64 * (2 * j as i64);
                let sel = _mm_set_epi64x(lo + 0x0101_0101_0101_0101, lo);
                for k in 0..N {
                    let cv = ld(c[k].as_ptr().add(32 * j));
                    let sc = if wide {
                        let a128 = _mm_loadu_si128(a[k].as_ptr().cast::<__m128i>());
                        _mm256_cvtepi8_epi16(_mm_shuffle_epi8(a128, sel))
                    } else {
                        // 32-element blocks have unit scales (`FastFormat` invariant).
                        ones
                    };
                    let ca = if F::SIGNED { _mm256_abs_epi8(cv) } else { cv };
                    for t in 0..T {
                        let p = if F::SIGNED {
                            _mm256_maddubs_epi16(ca, _mm256_sign_epi8(xv[t], cv))
                        } else {
                            _mm256_maddubs_epi16(ca, xv[t])
                        };
                        big[t][k] = _mm256_add_epi32(big[t][k], _mm256_madd_epi16(p, sc));
                    }
                }
            }
            for t in 0..T {
                for k in 0..N {
                    let off = if !F::HAS_OFFSET {
                        _mm256_setzero_si256()
                    } else if wide {
                        let mv = _mm256_loadu_si256(m[k].as_ptr().cast::<__m256i>());
                        let bv = _mm256_loadu_si256(bs[t].as_ptr().cast::<__m256i>());
                        _mm256_madd_epi16(mv, bv)
                    } else {
                        let mut o = 0i32;
                        for (mv, b) in m[k].iter().zip(bs[t]).take(groups) {
                            o += *mv as i32 * *b as i32;
                        }
                        _mm256_setr_epi32(o, 0, 0, 0, 0, 0, 0, 0)
                    };
                    let v = if F::SHARED_D {
                        _mm256_mul_ps(
                            _mm256_set1_ps(fd[t][k]),
                            _mm256_cvtepi32_ps(_mm256_sub_epi32(big[t][k], off)),
                        )
                    } else {
                        _mm256_sub_ps(
                            _mm256_mul_ps(_mm256_set1_ps(fd[t][k]), _mm256_cvtepi32_ps(big[t][k])),
                            _mm256_mul_ps(_mm256_set1_ps(fm[t][k]), _mm256_cvtepi32_ps(off)),
                        )
                    };
                    acc[t][k] = _mm256_add_ps(acc[t][k], v);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::matmul::row_kernel::tests::data;

    /// The word-at-a-time Q4_K/Q5_K scale unpacking equals `dequant.rs`'s per-scale one.
    #[test]
    fn k4_scales_match_scale_min_k4() {
        for seed in 0..2000u32 {
            let mut b = [0u8; 16];
            for (i, v) in data(12, seed).iter().enumerate() {
                b[4 + i] = ((v + 0.5) * 255.0) as u8;
            }
            let (mut a, mut m) = ([0i8; 16], [0i16; 16]);
            k4_scales(&b, &mut a, &mut m);
            let s = crate::dequant::scales12(&b);
            for j in 0..8 {
                let (sc, mn) = crate::dequant::scale_min_k4(j, &s);
                assert_eq!(
                    (a[2 * j], a[2 * j + 1]),
                    (sc as i8, sc as i8),
                    "seed {seed} j {j}"
                );
                assert_eq!(
                    (m[2 * j], m[2 * j + 1]),
                    (mn as i16, mn as i16),
                    "seed {seed} j {j}"
                );
            }
        }
    }

    /// The AVX2 decoders produce exactly the portable decoders' codes, scales and factors.
    #[test]
    #[cfg(target_arch = "x86_64")]
    fn avx2_decoders_exact() {
        if SimdIsa::detected() != SimdIsa::Avx2 {
            eprintln!("SKIPPED: avx2_decoders_exact (this CPU lacks AVX2/FMA)");
            return;
        }
        fn check<F: FastFormat>() {
            for seed in 0..8u32 {
                let b: Vec<u8> = data(F::BLOCK_BYTES, seed)
                    .iter()
                    .map(|v| ((v + 0.5) * 255.0) as u8)
                    .collect();
                let g = F::BLOCK_ELEMS / GROUP;
                let mut one = (vec![0u8; F::BLOCK_ELEMS], vec![0i8; g], vec![0i16; g]);
                let mut two = one.clone();
                let f1 = F::decode(&b, &mut one.0, &mut one.1, &mut one.2);
                // SAFETY: AVX2 checked above.
                let f2 = unsafe { F::decode_avx2(&b, &mut two.0, &mut two.1, &mut two.2) };
                assert_eq!(one, two);
                assert_eq!(
                    (f1.0.to_bits(), f1.1.to_bits()),
                    (f2.0.to_bits(), f2.1.to_bits())
                );
            }
        }
        check::<Q2K>();
        check::<Q3K>();
        check::<Q4K>();
        check::<Q5K>();
        check::<Q6K>();
        check::<Q40>();
        check::<Q41>();
        check::<Q50>();
        check::<Q51>();
    }

    /// Random blocks of every format, decoded: `w = d·a·c − dm·m` equals exact dequantization
    /// (up to the f32 rounding of `d·a`, which the dequantizer forms first).
    #[test]
    fn decoders_match_dequantization() {
        fn check<F: FastFormat>(ty: crate::GgmlType) {
            for seed in 0..16u32 {
                let mut b: Vec<u8> = data(F::BLOCK_BYTES, seed)
                    .iter()
                    .map(|v| ((v + 0.5) * 255.0) as u8)
                    .collect();
                // Keep the f16 factors finite and moderate: rewrite any f16 exponent of 31.
                for (i, v) in b.iter_mut().enumerate() {
                    if i % 2 == 1 && (*v & 0x7C) == 0x7C {
                        *v &= !0x40;
                    }
                }
                let g = F::BLOCK_ELEMS / GROUP;
                let (mut c, mut a, mut m) =
                    (vec![0u8; F::BLOCK_ELEMS], vec![0i8; g], vec![0i16; g]);
                let (d, dm) = F::decode(&b, &mut c, &mut a, &mut m);
                let mut want = vec![0f32; F::BLOCK_ELEMS];
                crate::dequantize_row(ty, &b, &mut want).expect("dequantize");
                for (i, w) in want.iter().enumerate() {
                    let code = if F::SIGNED {
                        c[i] as i8 as f64
                    } else {
                        c[i] as f64
                    };
                    let got =
                        d as f64 * a[i / GROUP] as f64 * code - dm as f64 * m[i / GROUP] as f64;
                    let tol = 1e-6 * (w.abs() as f64 + (d as f64 * 128.0 * 64.0).abs());
                    if !(w.is_finite() && got.is_finite()) {
                        continue;
                    }
                    assert!(
                        (got - *w as f64).abs() <= tol,
                        "{ty:?} seed {seed} elem {i}: {got} vs {w}"
                    );
                    if !F::SIGNED {
                        assert!(c[i] <= 63, "{ty:?}: unsigned code {} over 63", c[i]);
                    }
                    if F::BLOCK_ELEMS == 32 {
                        assert_eq!(
                            a[i / GROUP],
                            1,
                            "{ty:?}: 32-element blocks have unit scales"
                        );
                    }
                    if !F::HAS_OFFSET {
                        assert_eq!(m[i / GROUP], 0, "{ty:?}: offsets of a format without");
                    }
                }
            }
        }
        use crate::GgmlType as T;
        check::<Q2K>(T::Q2_K);
        check::<Q3K>(T::Q3_K);
        check::<Q4K>(T::Q4_K);
        check::<Q5K>(T::Q5_K);
        check::<Q6K>(T::Q6_K);
        check::<Q80>(T::Q8_0);
        check::<Q40>(T::Q4_0);
        check::<Q41>(T::Q4_1);
        check::<Q50>(T::Q5_0);
        check::<Q51>(T::Q5_1);
        check::<Iq4Nl>(T::IQ4_NL);
        check::<Iq4Xs>(T::IQ4_XS);
    }
}
