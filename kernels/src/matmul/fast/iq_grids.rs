//! The 2- and 3-bit grid formats' Fast-mode decoders (IQ2_XXS, IQ2_XS, IQ2_S, IQ3_XXS,
//! IQ3_S): signed codes `±grid[j]` (grid lookup, then the element's sign bit) and odd integer
//! scales per 16 elements.
//!
//! With `ls` the 4-bit sub-block scale, the IQ2 formats' weight `(d·(0.5 + ls)·0.25)·g·s` is
//! `(d/8)·(2ls + 1)·(s·g)`, IQ3_XXS's `(d·(0.5 + ls)·0.5)·g·s` is `(d/4)·(2ls + 1)·(s·g)` and
//! IQ3_S's `d·(1 + 2ls)·g·s` is `d·(2ls + 1)·(s·g)`: codes `s·g` (|g| ≤ 62), `a = 2ls + 1`
//! (≤ 31), no offsets. Unpacking is table lookups; every format also has an AVX2 unpacker
//! that builds each 32-byte chunk from four 8-element grid rows (IQ3's 4-element grid
//! entries in pairs) and four sign patterns with one `vpsignb`.

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

/// The 8 signs of a sign byte (bit `j` set: element `j` negative) as bytes `+1` / `−1`: the
/// operand of `_mm256_sign_epi8`, which then negates exactly the grid values `signed`
/// negates.
const fn signs_pm1(bits: u8) -> u64 {
    let mut v = 0u64;
    let mut j = 0;
    while j < 8 {
        let byte: u64 = if (bits >> j) & 1 == 1 { 0xFF } else { 0x01 };
        v |= byte << (8 * j);
        j += 1;
    }
    v
}

/// [`signs_pm1`] of each 7-bit sign index's 8 signs (`KSIGNS_IQ2XS`).
const KSIGNS_PM1: [u64; 128] = {
    let mut t = [0u64; 128];
    let mut k = 0;
    while k < 128 {
        t[k] = signs_pm1(KSIGNS_IQ2XS[k]);
        k += 1;
    }
    t
};

/// [`signs_pm1`] of every sign byte (the formats with explicit sign bytes).
const BYTE_SIGNS_PM1: [u64; 256] = {
    let mut t = [0u64; 256];
    let mut k = 0;
    while k < 256 {
        t[k] = signs_pm1(k as u8);
        k += 1;
    }
    t
};

/// AVX2 unpacking of the grid formats by gathers: each 32-byte chunk is its grid entries
/// (four 8-element rows, or eight 4-element IQ3 entries) in one gather, its four 8-element
/// sign patterns (`±1` bytes, [`KSIGNS_PM1`] or [`BYTE_SIGNS_PM1`]) in another, and one
/// `vpsignb`. Each format only says where its indices are. IQ2_XXS, whose four grid rows and
/// sign indices sit in 8 consecutive bytes, loads them with four table reads instead (faster
/// than a gather there, measured on Zen 4). (Scales stay on `format.rs`'s default
/// `scales_avx2`: register-built scale vectors measured no faster for these formats.)
#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::{
        __m128i, __m256i, _mm256_and_si256, _mm256_cvtepu8_epi32, _mm256_i32gather_epi32,
        _mm256_i32gather_epi64, _mm256_or_si256, _mm256_set1_epi32, _mm256_set_epi64x,
        _mm256_setr_epi32, _mm256_setzero_si256, _mm256_sign_epi8, _mm256_slli_epi32,
        _mm256_srlv_epi32, _mm_and_si128, _mm_cvtepu16_epi32, _mm_cvtepu8_epi32, _mm_cvtsi32_si128,
        _mm_loadl_epi64, _mm_or_si128, _mm_set1_epi32, _mm_setr_epi32, _mm_slli_epi32,
        _mm_srli_epi32, _mm_srlv_epi32,
    };

    use super::{
        BYTE_SIGNS_PM1, IQ2S_GRID, IQ2XS_GRID, IQ2XXS_GRID, IQ3S_GRID, IQ3XXS_GRID, KSIGNS_PM1,
    };

    /// Four 8-element grid rows (`grid[gidx]`) signed by `signs[sidx]`.
    ///
    /// # Safety
    /// AVX2; every index is within its table.
    #[inline(always)]
    unsafe fn rows8(grid: &[u64], gidx: __m128i, signs: &[u64], sidx: __m128i) -> __m256i {
        // SAFETY: AVX2 per the caller; the gathers read the tables at the caller's indices.
        unsafe {
            let g = _mm256_i32gather_epi64::<8>(grid.as_ptr().cast::<i64>(), gidx);
            let s = _mm256_i32gather_epi64::<8>(signs.as_ptr().cast::<i64>(), sidx);
            _mm256_sign_epi8(g, s)
        }
    }

    /// Eight 4-element grid entries (`grid[gidx]`) signed by `signs[sidx]` (one pattern per
    /// two entries).
    ///
    /// # Safety
    /// AVX2; every index is within its table.
    #[inline(always)]
    unsafe fn rows4(grid: &[u32], gidx: __m256i, signs: &[u64], sidx: __m128i) -> __m256i {
        // SAFETY: AVX2 per the caller; the gathers read the tables at the caller's indices.
        unsafe {
            let g = _mm256_i32gather_epi32::<4>(grid.as_ptr().cast::<i32>(), gidx);
            let s = _mm256_i32gather_epi64::<8>(signs.as_ptr().cast::<i64>(), sidx);
            _mm256_sign_epi8(g, s)
        }
    }

    /// The four 7-bit sign indices of a 32-bit word (bits `7l .. 7l + 7`).
    ///
    /// # Safety
    /// AVX2.
    #[inline(always)]
    unsafe fn sign_indices(aux: u32) -> __m128i {
        // SAFETY: AVX2 per the caller.
        unsafe {
            _mm_and_si128(
                _mm_srlv_epi32(_mm_set1_epi32(aux as i32), _mm_setr_epi32(0, 7, 14, 21)),
                _mm_set1_epi32(127),
            )
        }
    }

    /// 4 bytes at `p` as four i32.
    ///
    /// # Safety
    /// AVX2; `p` valid for 4 reads.
    #[inline(always)]
    unsafe fn bytes4(p: *const u8) -> __m128i {
        // SAFETY: per the caller.
        unsafe { _mm_cvtepu8_epi32(_mm_cvtsi32_si128(p.cast::<i32>().read_unaligned())) }
    }

    /// 8 bytes at `p` as eight i32.
    ///
    /// # Safety
    /// AVX2; `p` valid for 8 reads.
    #[inline(always)]
    unsafe fn bytes8(p: *const u8) -> __m256i {
        // SAFETY: per the caller.
        unsafe { _mm256_cvtepu8_epi32(_mm_loadl_epi64(p.cast())) }
    }

    /// The 8 chunks of a block, chunk `j` from the expression `$chunk` (a macro, not a
    /// closure: a closure's intrinsics would not be compiled with the caller's features).
    macro_rules! chunks {
        (|$j:ident| $chunk:expr) => {{
            let mut out = [_mm256_setzero_si256(); 8];
            for ($j, o) in out.iter_mut().enumerate() {
                *o = $chunk;
            }
            out
        }};
    }

    /// IQ2_XXS: per chunk, grid bytes `b[2 + 8j .. + 4]`, sign word `b[6 + 8j ..]`.
    ///
    /// # Safety
    /// AVX2.
    #[inline(always)]
    pub(super) unsafe fn iq2xxs(b: &[u8; 66]) -> [__m256i; 8] {
        // SAFETY: AVX2 per the caller; reads within the 66 bytes; indices < 256 and < 128.
        unsafe {
            chunks!(|j| {
                let o = 2 + 8 * j;
                let aux = u32::from_le_bytes([b[o + 4], b[o + 5], b[o + 6], b[o + 7]]);
                // Four table loads beat a gather here (measured on Zen 4).
                let g = |l: usize| IQ2XXS_GRID[b[o + l] as usize] as i64;
                let s = |l: usize| KSIGNS_PM1[((aux >> (7 * l)) & 127) as usize] as i64;
                _mm256_sign_epi8(
                    _mm256_set_epi64x(g(3), g(2), g(1), g(0)),
                    _mm256_set_epi64x(s(3), s(2), s(1), s(0)),
                )
            })
        }
    }

    /// IQ2_XS: per chunk, four u16 at `b[2 + 8j ..]`: grid index (low 9 bits), sign index
    /// (high 7).
    ///
    /// # Safety
    /// AVX2.
    #[inline(always)]
    pub(super) unsafe fn iq2xs(b: &[u8; 74]) -> [__m256i; 8] {
        // SAFETY: AVX2 per the caller; reads within the 74 bytes; indices < 512 and < 128.
        unsafe {
            chunks!(|j| {
                let q = _mm_cvtepu16_epi32(_mm_loadl_epi64(b.as_ptr().add(2 + 8 * j).cast()));
                let gidx = _mm_and_si128(q, _mm_set1_epi32(511));
                rows8(&IQ2XS_GRID, gidx, &KSIGNS_PM1, _mm_srli_epi32::<9>(q))
            })
        }
    }

    /// IQ2_S: per chunk, grid bytes `b[2 + 4j ..]` with 2 high bits each from `b[66 + j]`,
    /// sign bytes `b[34 + 4j ..]`.
    ///
    /// # Safety
    /// AVX2.
    #[inline(always)]
    pub(super) unsafe fn iq2s(b: &[u8; 82]) -> [__m256i; 8] {
        // SAFETY: AVX2 per the caller; reads within the 82 bytes; indices < 1024 and < 256.
        unsafe {
            chunks!(|j| {
                let hi = _mm_and_si128(
                    _mm_srlv_epi32(_mm_set1_epi32(b[66 + j] as i32), _mm_setr_epi32(0, 2, 4, 6)),
                    _mm_set1_epi32(3),
                );
                let gidx = _mm_or_si128(bytes4(b.as_ptr().add(2 + 4 * j)), _mm_slli_epi32::<8>(hi));
                rows8(
                    &IQ2S_GRID,
                    gidx,
                    &BYTE_SIGNS_PM1,
                    bytes4(b.as_ptr().add(34 + 4 * j)),
                )
            })
        }
    }

    /// IQ3_XXS: per chunk, eight grid bytes `b[2 + 8j ..]`, sign word `b[66 + 4j ..]`.
    ///
    /// # Safety
    /// AVX2.
    #[inline(always)]
    pub(super) unsafe fn iq3xxs(b: &[u8; 98]) -> [__m256i; 8] {
        // SAFETY: AVX2 per the caller; reads within the 98 bytes; indices < 256 and < 128.
        unsafe {
            chunks!(|j| {
                let at = 66 + 4 * j;
                let aux = u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]]);
                rows4(
                    &IQ3XXS_GRID,
                    bytes8(b.as_ptr().add(2 + 8 * j)),
                    &KSIGNS_PM1,
                    sign_indices(aux),
                )
            })
        }
    }

    /// IQ3_S: per chunk, eight grid bytes `b[2 + 8j ..]` with a high bit each from
    /// `b[66 + j]`, sign bytes `b[74 + 4j ..]`.
    ///
    /// # Safety
    /// AVX2.
    #[inline(always)]
    pub(super) unsafe fn iq3s(b: &[u8; 110]) -> [__m256i; 8] {
        // SAFETY: AVX2 per the caller; reads within the 110 bytes; indices < 512 and < 256.
        unsafe {
            chunks!(|j| {
                let hi = _mm256_and_si256(
                    _mm256_srlv_epi32(
                        _mm256_set1_epi32(b[66 + j] as i32),
                        _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7),
                    ),
                    _mm256_set1_epi32(1),
                );
                let gidx = _mm256_or_si256(
                    bytes8(b.as_ptr().add(2 + 8 * j)),
                    _mm256_slli_epi32::<8>(hi),
                );
                rows4(
                    &IQ3S_GRID,
                    gidx,
                    &BYTE_SIGNS_PM1,
                    bytes4(b.as_ptr().add(74 + 4 * j)),
                )
            })
        }
    }
}

/// The AVX2 unpacker of a grid format from its chunk builder: `chunks_avx2` builds the
/// register chunks (which the default `codes_avx2` stores, `REGISTER_CHUNKS`).
macro_rules! grid_avx2 {
    ($bytes:literal, $chunks:ident) => {
        const REGISTER_CHUNKS: bool = true;

        #[cfg(target_arch = "x86_64")]
        #[inline(always)]
        unsafe fn chunks_avx2(b: &[u8]) -> [std::arch::x86_64::__m256i; 8] {
            // SAFETY: AVX2 per the caller.
            unsafe { avx2::$chunks(arr::<$bytes>(b)) }
        }
    };
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

    grid_avx2!(66, iq2xxs);

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

    grid_avx2!(74, iq2xs);

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

    grid_avx2!(82, iq2s);

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

    grid_avx2!(98, iq3xxs);

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

    grid_avx2!(110, iq3s);

    #[inline(always)]
    fn scales(b: &[u8], a: &mut [i8], m: &mut [i16]) -> (f32, f32) {
        odd_scales(nibbles(&b[106..110]), a, 2);
        m[..16].fill(0);
        let d = f16_at(b, 0);
        (d, d)
    }
}
