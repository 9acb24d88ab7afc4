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

    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn codes_avx2(b: &[u8], c: &mut [u8]) {
        assert!(c.len() >= 32);
        // SAFETY: AVX2 per the caller; writes c[..32] (checked above).
        unsafe { super::format::avx2::st(c.as_mut_ptr(), avx2::grid_chunk(&b[2..18])) }
    }

    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn chunks_avx2(b: &[u8]) -> [std::arch::x86_64::__m256i; 8] {
        // SAFETY: AVX2 per the caller.
        [unsafe { avx2::grid_chunk(&b[2..18]) }; 8]
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

    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn codes_avx2(b: &[u8], c: &mut [u8]) {
        assert!(c.len() >= 256);
        // SAFETY: AVX2 per the caller; writes c[..256] (checked above).
        unsafe {
            for (j, v) in Self::chunks_avx2(b).into_iter().enumerate() {
                super::format::avx2::st(c.as_mut_ptr().add(32 * j), v);
            }
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn chunks_avx2(b: &[u8]) -> [std::arch::x86_64::__m256i; 8] {
        let b = arr::<136>(b);
        // SAFETY: AVX2 per the caller.
        std::array::from_fn(|ib| unsafe { avx2::grid_chunk(&b[8 + 16 * ib..24 + 16 * ib]) })
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

/// AVX2 grid lookup: 16 table entries, one byte shuffle per 16 nibbles.
#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::{
        __m256i, _mm256_set_m128i, _mm_and_si128, _mm_loadu_si128, _mm_set1_epi8, _mm_shuffle_epi8,
        _mm_srli_epi16,
    };

    use crate::dequant::IQ4_NL_GRID;

    /// The 32 grid codes of 16 packed nibble pairs (layout as `super::grid_codes`).
    ///
    /// # Safety
    /// AVX2.
    #[inline(always)]
    pub(super) unsafe fn grid_chunk(qs: &[u8]) -> __m256i {
        assert!(qs.len() >= 16);
        // SAFETY: AVX2 per the caller; reads qs[..16] and the 16-entry grid.
        unsafe {
            let grid = _mm_loadu_si128(IQ4_NL_GRID.as_ptr().cast());
            let v = _mm_loadu_si128(qs.as_ptr().cast());
            let m4 = _mm_set1_epi8(0x0F);
            let lo = _mm_shuffle_epi8(grid, _mm_and_si128(v, m4));
            let hi = _mm_shuffle_epi8(grid, _mm_and_si128(_mm_srli_epi16::<4>(v), m4));
            _mm256_set_m128i(hi, lo)
        }
    }
}
