//! The 1-bit and ternary formats' Fast-mode decoders: IQ1_S, IQ1_M (ternary grid plus a
//! ±1/8 offset), TQ1_0 and TQ2_0 (plain ternary).
//!
//! IQ1: the weight `d·(2s + 1)·(g ± 1/8)` is `(d/8)·(2s + 1)·(8g ± 1)`: codes `8g ± 1` (in
//! −9..=9) with the offset folded in, `a = 2s + 1` (≤ 15), no offsets; both have AVX2
//! unpackers (grid rows as bytes, `8g` by `vpsignb`, the offsets added). TQ: codes `q − 1`
//! with unit scales and `d` (TQ2_0's unused code 3 decodes to 2, as in the dequantizer).

use super::format::{arr, arr_mut, f16_at, FastFormat};
use crate::dequant::{iq1_m_d, iq1_m_scale, tq1_0_values, IQ1S_GRID};

/// The 8 codes `8g ± 1` of grid row `idx` with the offset's sign `neg`.
#[inline(always)]
fn codes8(c: &mut [u8], idx: usize, neg: bool) {
    let delta: i8 = if neg { -1 } else { 1 };
    for (v, g) in c.iter_mut().zip(IQ1S_GRID[idx].to_le_bytes()) {
        *v = (8 * (g as i8) + delta) as u8;
    }
}

/// IQ1_S chunk `j` (elements `32j .. 32j + 32`) in a register: four grid rows (bytes in
/// −1..=1), `8g` as `vpsignb` of 8 by them, plus the chunk's one offset `±1`; the same bytes
/// as [`codes8`].
///
/// # Safety
/// AVX2.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn iq1s_chunk(b: &[u8; 50], j: usize) -> std::arch::x86_64::__m256i {
    use std::arch::x86_64::{
        _mm256_add_epi8, _mm256_set1_epi8, _mm256_set_epi64x, _mm256_sign_epi8,
    };
    let qh = u16::from_le_bytes([b[34 + 2 * j], b[35 + 2 * j]]);
    let g = [0, 1, 2, 3].map(|l| {
        let idx = b[2 + 4 * j + l] as usize | ((((qh >> (3 * l)) & 7) as usize) << 8);
        IQ1S_GRID[idx] as i64
    });
    let delta: i8 = if qh & 0x8000 != 0 { -1 } else { 1 };
    // SAFETY: AVX2 per the caller.
    unsafe {
        let v = _mm256_set_epi64x(g[3], g[2], g[1], g[0]);
        _mm256_add_epi8(
            _mm256_sign_epi8(_mm256_set1_epi8(8), v),
            _mm256_set1_epi8(delta),
        )
    }
}

/// IQ1_M chunk `j` in a register: rows `4j .. 4j + 4`, each an 11-bit grid index and its own
/// offset sign (a nibble of `qh`); `8g` by `vpsignb` as for IQ1_S, plus each row's `±1`.
///
/// # Safety
/// AVX2.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn iq1m_chunk(b: &[u8; 56], j: usize) -> std::arch::x86_64::__m256i {
    use std::arch::x86_64::{
        _mm256_add_epi8, _mm256_set1_epi8, _mm256_set_epi64x, _mm256_sign_epi8,
    };
    // Nibble `i % 2` of byte `32 + i / 2`: rows 4j, 4j + 1 in byte 32 + 2j, the next two in
    // byte 33 + 2j.
    let qh = u16::from_le_bytes([b[32 + 2 * j], b[33 + 2 * j]]);
    let nib = |l: usize| (qh >> (4 * l)) & 15;
    let g = [0, 1, 2, 3].map(|l| {
        let idx = b[4 * j + l] as usize | (((nib(l) & 7) as usize) << 8);
        IQ1S_GRID[idx] as i64
    });
    // Each row's offset as 8 equal bytes: +1 (0x01..) or −1 (0xFF..).
    let delta = [0, 1, 2, 3].map(|l| {
        if nib(l) & 8 != 0 {
            -1i64
        } else {
            0x0101_0101_0101_0101
        }
    });
    // SAFETY: AVX2 per the caller.
    unsafe {
        let v = _mm256_set_epi64x(g[3], g[2], g[1], g[0]);
        _mm256_add_epi8(
            _mm256_sign_epi8(_mm256_set1_epi8(8), v),
            _mm256_set_epi64x(delta[3], delta[2], delta[1], delta[0]),
        )
    }
}

/// IQ1_S: per 32 elements an 11-bit grid index per 8, `s` and the offset's sign in `qh`.
pub(crate) struct Iq1S;
impl FastFormat for Iq1S {
    const HAS_OFFSET: bool = false;
    const REGISTER_CHUNKS: bool = true;
    const BLOCK_BYTES: usize = 50;
    const BLOCK_ELEMS: usize = 256;
    const SIGNED: bool = true;
    const SHARED_D: bool = true;

    #[inline(always)]
    fn codes(b: &[u8], c: &mut [u8]) {
        let b = arr::<50>(b);
        let c = arr_mut::<256>(c);
        for ib in 0..8 {
            let qh = u16::from_le_bytes([b[34 + 2 * ib], b[35 + 2 * ib]]);
            for l in 0..4 {
                let idx = b[2 + 4 * ib + l] as usize | ((((qh >> (3 * l)) & 7) as usize) << 8);
                let at = 32 * ib + 8 * l;
                codes8(&mut c[at..at + 8], idx, qh & 0x8000 != 0);
            }
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn chunks_avx2(b: &[u8]) -> [std::arch::x86_64::__m256i; 8] {
        let b = arr::<50>(b);
        // SAFETY: AVX2 per the caller.
        unsafe {
            let mut out = [std::arch::x86_64::_mm256_setzero_si256(); 8];
            for (j, o) in out.iter_mut().enumerate() {
                *o = iq1s_chunk(b, j);
            }
            out
        }
    }

    #[inline(always)]
    fn scales(b: &[u8], a: &mut [i8], m: &mut [i16]) -> (f32, f32) {
        super::iq_grids::per32_scales(b, a, m, |ib| (b[35 + 2 * ib] >> 4) & 7, 0.125)
    }
}

/// IQ1_M: per 8 elements an 11-bit grid index and the offset's sign (a nibble of `qh`),
/// 3-bit scales per 16, `d` split over the scale words.
pub(crate) struct Iq1M;
impl FastFormat for Iq1M {
    const HAS_OFFSET: bool = false;
    const REGISTER_CHUNKS: bool = true;
    const BLOCK_BYTES: usize = 56;
    const BLOCK_ELEMS: usize = 256;
    const SIGNED: bool = true;
    const SHARED_D: bool = true;

    #[inline(always)]
    fn codes(b: &[u8], c: &mut [u8]) {
        let b = arr::<56>(b);
        let c = arr_mut::<256>(c);
        for i in 0..32 {
            let nib = (b[32 + i / 2] >> (4 * (i % 2))) & 15;
            let idx = b[i] as usize | (((nib & 7) as usize) << 8);
            codes8(&mut c[8 * i..8 * i + 8], idx, nib & 8 != 0);
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn chunks_avx2(b: &[u8]) -> [std::arch::x86_64::__m256i; 8] {
        let b = arr::<56>(b);
        // SAFETY: AVX2 per the caller.
        unsafe {
            let mut out = [std::arch::x86_64::_mm256_setzero_si256(); 8];
            for (j, o) in out.iter_mut().enumerate() {
                *o = iq1m_chunk(b, j);
            }
            out
        }
    }

    #[inline(always)]
    fn scales(b: &[u8], a: &mut [i8], m: &mut [i16]) -> (f32, f32) {
        for (k, ak) in a[..16].iter_mut().enumerate() {
            *ak = (2 * iq1_m_scale(b, k) + 1) as i8;
        }
        m[..16].fill(0);
        let d = iq1_m_d(b) * 0.125;
        (d, d)
    }
}

/// TQ1_0: five base-3 digits per byte, `d` at the end.
pub(crate) struct Tq10;
impl FastFormat for Tq10 {
    const HAS_OFFSET: bool = false;
    const BLOCK_BYTES: usize = 54;
    const BLOCK_ELEMS: usize = 256;
    const SIGNED: bool = true;
    const SHARED_D: bool = true;

    #[inline(always)]
    fn codes(b: &[u8], c: &mut [u8]) {
        let c = arr_mut::<256>(c);
        tq1_0_values(arr::<54>(b), |i, q| c[i] = q as i8 as u8);
    }

    #[inline(always)]
    fn scales(b: &[u8], a: &mut [i8], m: &mut [i16]) -> (f32, f32) {
        a[..16].fill(1);
        m[..16].fill(0);
        let d = f16_at(b, 52);
        (d, d)
    }
}

/// TQ2_0: four 2-bit values per byte, `d` at the end.
pub(crate) struct Tq20;
impl FastFormat for Tq20 {
    const HAS_OFFSET: bool = false;
    const BLOCK_BYTES: usize = 66;
    const BLOCK_ELEMS: usize = 256;
    const SIGNED: bool = true;
    const SHARED_D: bool = true;

    #[inline(always)]
    fn codes(b: &[u8], c: &mut [u8]) {
        let b = arr::<66>(b);
        let c = arr_mut::<256>(c);
        for k in 0..2 {
            for n in 0..4 {
                for j in 0..32 {
                    let q = ((b[32 * k + j] >> (2 * n)) & 3) as i8 - 1;
                    c[128 * k + 32 * n + j] = q as u8;
                }
            }
        }
    }

    #[inline(always)]
    fn scales(b: &[u8], a: &mut [i8], m: &mut [i16]) -> (f32, f32) {
        a[..16].fill(1);
        m[..16].fill(0);
        let d = f16_at(b, 64);
        (d, d)
    }
}
