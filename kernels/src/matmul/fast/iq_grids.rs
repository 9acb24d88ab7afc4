//! The 2- and 3-bit grid formats' Fast-mode decoders (IQ2_XXS, IQ2_XS, IQ2_S, IQ3_XXS,
//! IQ3_S): signed codes `±grid[j]` (grid lookup, then the element's sign bit) and odd integer
//! scales per 16 elements.
//!
//! With `ls` the 4-bit sub-block scale, the IQ2 formats' weight `(d·(0.5 + ls)·0.25)·g·s` is
//! `(d/8)·(2ls + 1)·(s·g)`, IQ3_XXS's `(d·(0.5 + ls)·0.5)·g·s` is `(d/4)·(2ls + 1)·(s·g)` and
//! IQ3_S's `d·(1 + 2ls)·g·s` is `d·(2ls + 1)·(s·g)`: codes `s·g` (|g| ≤ 62), `a = 2ls + 1`
//! (≤ 31), no offsets. Unpacking is table lookups; IQ2_XXS and IQ2_XS (the types of the
//! UD-IQ2 Kimi files) also have AVX2 unpackers that build each 32-byte chunk from four grid
//! rows and four sign patterns with one `vpsignb` (the other formats dot the portable
//! codes through `format.rs`'s default stores).

use super::format::{arr, arr_mut, f16_at, FastFormat};
use crate::dequant::{IQ2S_GRID, IQ2XS_GRID, IQ2XXS_GRID, IQ3S_GRID, IQ3XXS_GRID, KSIGNS_IQ2XS};

/// The codes `±grid[j]` of `N` elements from a packed grid row and sign bits (bit `j` set:
/// negative).
#[inline(always)]
fn signed<const N: usize>(c: &mut [u8], grid: [u8; N], signs: u8) {
    // Branch-free: with `s` 0 or 1, `(g ^ −s) + s` is `g` or `−g` (grid magnitudes ≤ 62).
    for (j, (v, g)) in c.iter_mut().zip(grid).enumerate() {
        let s = (signs >> j) & 1;
        *v = (g ^ s.wrapping_neg()).wrapping_add(s);
    }
}

/// The eight 4-bit scales of `scales[4]` or the sixteen of `scales[8]` (low nibble first) as
/// `a = 2ls + 1` per 16 elements, `per` groups each.
#[inline(always)]
fn odd_scales(nibbles: impl Iterator<Item = u8>, a: &mut [i8], per: usize) {
    for (k, ls) in nibbles.enumerate() {
        for g in 0..per {
            a[per * k + g] = (2 * ls + 1) as i8;
        }
    }
}

/// The `scales` of the formats with one 4-bit scale `ls(ib)` per 32 elements (IQ2_XXS,
/// IQ3_XXS, IQ1_S): `a = 2ls + 1` for both 16-groups of sub-block `ib`, no offsets, and
/// `d = f16(b[0..2]) · factor` for both factors.
#[inline(always)]
pub(super) fn per32_scales(
    b: &[u8],
    a: &mut [i8],
    m: &mut [i16],
    ls: impl Fn(usize) -> u8,
    factor: f32,
) -> (f32, f32) {
    odd_scales((0..8).map(ls), a, 2);
    m[..16].fill(0);
    let d = f16_at(b, 0) * factor;
    (d, d)
}

/// The nibbles of `bytes`, low first.
#[inline(always)]
fn nibbles(bytes: &[u8]) -> impl Iterator<Item = u8> + '_ {
    bytes.iter().flat_map(|b| [b & 15, b >> 4])
}

/// Each 7-bit sign index's 8 signs (`KSIGNS_IQ2XS`) as bytes `+1` / `−1`: the operand of
/// `_mm256_sign_epi8`, which then negates exactly the grid values `signed` negates.
const SIGNS_PM1: [u64; 128] = {
    let mut t = [0u64; 128];
    let mut k = 0;
    while k < 128 {
        let mut v = 0u64;
        let mut j = 0;
        while j < 8 {
            let byte: u64 = if (KSIGNS_IQ2XS[k] >> j) & 1 == 1 {
                0xFF
            } else {
                0x01
            };
            v |= byte << (8 * j);
            j += 1;
        }
        t[k] = v;
        k += 1;
    }
    t
};

/// AVX2 unpacking of the IQ2 grid formats.
#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::{__m256i, _mm256_set_epi64x, _mm256_setzero_si256, _mm256_sign_epi8};

    use super::SIGNS_PM1;

    /// Four grid rows (elements `8l .. 8l + 8` of a chunk) with their sign indices, as one
    /// chunk of signed codes.
    ///
    /// # Safety
    /// AVX2.
    #[inline(always)]
    unsafe fn chunk(g: [u64; 4], s: [usize; 4]) -> __m256i {
        let sg = |l: usize| SIGNS_PM1[s[l] & 127] as i64;
        // SAFETY: AVX2 per the caller.
        unsafe {
            let v = _mm256_set_epi64x(g[3] as i64, g[2] as i64, g[1] as i64, g[0] as i64);
            _mm256_sign_epi8(v, _mm256_set_epi64x(sg(3), sg(2), sg(1), sg(0)))
        }
    }

    /// The 8 chunks of a block from `rows(j)`: chunk `j`'s four (grid row, sign index) pairs.
    ///
    /// # Safety
    /// AVX2.
    #[inline(always)]
    pub(super) unsafe fn chunks(rows: impl Fn(usize) -> ([u64; 4], [usize; 4])) -> [__m256i; 8] {
        // SAFETY: AVX2 per the caller.
        unsafe {
            let mut out = [_mm256_setzero_si256(); 8];
            for (j, o) in out.iter_mut().enumerate() {
                let (g, s) = rows(j);
                *o = chunk(g, s);
            }
            out
        }
    }
}

/// IQ2_XXS chunk `j`: its four grid rows and sign indices.
#[inline(always)]
fn iq2xxs_rows(b: &[u8; 66], j: usize) -> ([u64; 4], [usize; 4]) {
    let o = 2 + 8 * j;
    let aux = u32::from_le_bytes([b[o + 4], b[o + 5], b[o + 6], b[o + 7]]);
    let g = [0, 1, 2, 3].map(|l| IQ2XXS_GRID[b[o + l] as usize]);
    let s = [0, 1, 2, 3].map(|l| ((aux >> (7 * l)) & 127) as usize);
    (g, s)
}

/// IQ2_XS chunk `j`: its four grid rows and sign indices.
#[inline(always)]
fn iq2xs_rows(b: &[u8; 74], j: usize) -> ([u64; 4], [usize; 4]) {
    let q = [0, 1, 2, 3].map(|l| {
        let i = 4 * j + l;
        u16::from_le_bytes([b[2 + 2 * i], b[3 + 2 * i]])
    });
    (
        q.map(|q| IQ2XS_GRID[(q & 511) as usize]),
        q.map(|q| (q >> 9) as usize),
    )
}

/// IQ2_XXS: per 32 elements, four grid indices, four 7-bit sign indices and `ls` (bits
/// 28..32 of the second word); `d/8`.
pub(crate) struct Iq2Xxs;
impl FastFormat for Iq2Xxs {
    const HAS_OFFSET: bool = false;
    const BLOCK_BYTES: usize = 66;
    const BLOCK_ELEMS: usize = 256;
    const SIGNED: bool = true;
    const SHARED_D: bool = true;

    #[inline(always)]
    fn codes(b: &[u8], c: &mut [u8]) {
        let b = arr::<66>(b);
        let c = arr_mut::<256>(c);
        for ib in 0..8 {
            let o = 2 + 8 * ib;
            let aux = u32::from_le_bytes([b[o + 4], b[o + 5], b[o + 6], b[o + 7]]);
            for l in 0..4 {
                let signs = KSIGNS_IQ2XS[((aux >> (7 * l)) & 127) as usize];
                let grid = IQ2XXS_GRID[b[o + l] as usize].to_le_bytes();
                let at = 32 * ib + 8 * l;
                signed(&mut c[at..at + 8], grid, signs);
            }
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn codes_avx2(b: &[u8], c: &mut [u8]) {
        // SAFETY: AVX2 per the caller.
        unsafe { super::format::avx2::store_chunks(Self::chunks_avx2(b), c) }
    }

    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn chunks_avx2(b: &[u8]) -> [std::arch::x86_64::__m256i; 8] {
        let b = arr::<66>(b);
        // SAFETY: AVX2 per the caller.
        unsafe { avx2::chunks(|j| iq2xxs_rows(b, j)) }
    }

    #[inline(always)]
    fn scales(b: &[u8], a: &mut [i8], m: &mut [i16]) -> (f32, f32) {
        per32_scales(b, a, m, |ib| b[2 + 8 * ib + 7] >> 4, 0.125)
    }
}

/// IQ2_XS: `qs u16[32]` (9-bit grid index, 7-bit sign index), 4-bit scales per 16; `d/8`.
pub(crate) struct Iq2Xs;
impl FastFormat for Iq2Xs {
    const HAS_OFFSET: bool = false;
    const BLOCK_BYTES: usize = 74;
    const BLOCK_ELEMS: usize = 256;
    const SIGNED: bool = true;
    const SHARED_D: bool = true;

    #[inline(always)]
    fn codes(b: &[u8], c: &mut [u8]) {
        let b = arr::<74>(b);
        let c = arr_mut::<256>(c);
        for i in 0..32 {
            let q = u16::from_le_bytes([b[2 + 2 * i], b[3 + 2 * i]]);
            let grid = IQ2XS_GRID[(q & 511) as usize].to_le_bytes();
            signed(
                &mut c[8 * i..8 * i + 8],
                grid,
                KSIGNS_IQ2XS[(q >> 9) as usize],
            );
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn codes_avx2(b: &[u8], c: &mut [u8]) {
        // SAFETY: AVX2 per the caller.
        unsafe { super::format::avx2::store_chunks(Self::chunks_avx2(b), c) }
    }

    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn chunks_avx2(b: &[u8]) -> [std::arch::x86_64::__m256i; 8] {
        let b = arr::<74>(b);
        // SAFETY: AVX2 per the caller.
        unsafe { avx2::chunks(|j| iq2xs_rows(b, j)) }
    }

    #[inline(always)]
    fn scales(b: &[u8], a: &mut [i8], m: &mut [i16]) -> (f32, f32) {
        odd_scales(nibbles(&b[66..74]), a, 1);
        m[..16].fill(0);
        let d = f16_at(b, 0) * 0.125;
        (d, d)
    }
}

/// IQ2_S: 10-bit grid indices (`qs` plus 2 bits of `qh`), explicit sign bytes, 4-bit scales
/// per 16; `d/8`.
pub(crate) struct Iq2S;
impl FastFormat for Iq2S {
    const HAS_OFFSET: bool = false;
    const BLOCK_BYTES: usize = 82;
    const BLOCK_ELEMS: usize = 256;
    const SIGNED: bool = true;
    const SHARED_D: bool = true;

    #[inline(always)]
    fn codes(b: &[u8], c: &mut [u8]) {
        let b = arr::<82>(b);
        let c = arr_mut::<256>(c);
        for i in 0..32 {
            let hi = ((b[66 + i / 4] >> (2 * (i % 4))) & 3) as usize;
            let grid = IQ2S_GRID[b[2 + i] as usize | (hi << 8)].to_le_bytes();
            signed(&mut c[8 * i..8 * i + 8], grid, b[34 + i]);
        }
    }

    #[inline(always)]
    fn scales(b: &[u8], a: &mut [i8], m: &mut [i16]) -> (f32, f32) {
        odd_scales(nibbles(&b[74..82]), a, 1);
        m[..16].fill(0);
        let d = f16_at(b, 0) * 0.125;
        (d, d)
    }
}

/// IQ3_XXS: 8-bit grid indices of 4 elements, per 32 elements a word of four 7-bit sign
/// indices and `ls`; `d/4`.
pub(crate) struct Iq3Xxs;
impl FastFormat for Iq3Xxs {
    const HAS_OFFSET: bool = false;
    const BLOCK_BYTES: usize = 98;
    const BLOCK_ELEMS: usize = 256;
    const SIGNED: bool = true;
    const SHARED_D: bool = true;

    #[inline(always)]
    fn codes(b: &[u8], c: &mut [u8]) {
        let b = arr::<98>(b);
        let c = arr_mut::<256>(c);
        for ib in 0..8 {
            let o = 66 + 4 * ib;
            let aux = u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]]);
            for l in 0..4 {
                let signs = KSIGNS_IQ2XS[((aux >> (7 * l)) & 127) as usize];
                let q = 2 + 8 * ib + 2 * l;
                let at = 32 * ib + 8 * l;
                let (g0, g1) = (IQ3XXS_GRID[b[q] as usize], IQ3XXS_GRID[b[q + 1] as usize]);
                signed(&mut c[at..at + 4], g0.to_le_bytes(), signs);
                signed(&mut c[at + 4..at + 8], g1.to_le_bytes(), signs >> 4);
            }
        }
    }

    #[inline(always)]
    fn scales(b: &[u8], a: &mut [i8], m: &mut [i16]) -> (f32, f32) {
        per32_scales(b, a, m, |ib| b[66 + 4 * ib + 3] >> 4, 0.25)
    }
}

/// IQ3_S: 9-bit grid indices of 4 elements (`qs` plus a bit of `qh`), explicit sign bytes,
/// 4-bit scales per 32; `d`.
pub(crate) struct Iq3S;
impl FastFormat for Iq3S {
    const HAS_OFFSET: bool = false;
    const BLOCK_BYTES: usize = 110;
    const BLOCK_ELEMS: usize = 256;
    const SIGNED: bool = true;
    const SHARED_D: bool = true;

    #[inline(always)]
    fn codes(b: &[u8], c: &mut [u8]) {
        let b = arr::<110>(b);
        let c = arr_mut::<256>(c);
        for i in 0..64 {
            let hi = ((b[66 + i / 8] >> (i % 8)) & 1) as usize;
            let grid = IQ3S_GRID[b[2 + i] as usize | (hi << 8)].to_le_bytes();
            let signs = b[74 + i / 2] >> (4 * (i % 2));
            signed(&mut c[4 * i..4 * i + 4], grid, signs);
        }
    }

    #[inline(always)]
    fn scales(b: &[u8], a: &mut [i8], m: &mut [i16]) -> (f32, f32) {
        odd_scales(nibbles(&b[106..110]), a, 2);
        m[..16].fill(0);
        let d = f16_at(b, 0);
        (d, d)
    }
}
