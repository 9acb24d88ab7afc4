//! The k-quant formats' Fast-mode decoders (Q2_K .. Q6_K, 256-element super-blocks of 16
//! groups): how each unpacks its codes (portable and AVX2) and its per-16 scales and offsets
//! into the form of `format.rs`.

use super::format::{arr, arr_mut, f16_at, FastFormat};

/// Q2_K: `w = (d·(sc & 15))·q − dmin·(sc >> 4)`, `q` 2-bit.
pub(crate) struct Q2K;
impl FastFormat for Q2K {
    const BLOCK_BYTES: usize = 84;
    const BLOCK_ELEMS: usize = 256;
    const SIGNED: bool = false;
    const SHARED_D: bool = false;

    #[inline(always)]
    fn codes(b: &[u8], c: &mut [u8]) {
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
    }

    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn codes_avx2(b: &[u8], c: &mut [u8]) {
        // SAFETY: AVX2 per the caller.
        unsafe { avx2::q2k_codes(b, c) };
    }

    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn chunks_avx2(b: &[u8]) -> [std::arch::x86_64::__m256i; 8] {
        // SAFETY: AVX2 per the caller.
        unsafe { avx2::q2k_chunks(b) }
    }

    #[inline(always)]
    fn scales(b: &[u8], a: &mut [i8], m: &mut [i16]) -> (f32, f32) {
        q2k_scales(b, a, m)
    }

    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn scales_avx2(
        b: &[u8],
    ) -> (
        std::arch::x86_64::__m128i,
        std::arch::x86_64::__m256i,
        f32,
        f32,
    ) {
        // SAFETY: AVX2 per the caller.
        unsafe { avx2::q2k_scales(b) }
    }
}

/// Q2_K's per-16 scales (low nibbles) and mins (high nibbles), `(d, dmin)`.
#[inline(always)]
fn q2k_scales(b: &[u8], a: &mut [i8], m: &mut [i16]) -> (f32, f32) {
    for g in 0..16 {
        a[g] = (b[g] & 0x0F) as i8;
        m[g] = (b[g] >> 4) as i16;
    }
    (f16_at(b, 80), f16_at(b, 82))
}

/// Q3_K: `w = (d·(sc − 32))·(u − 4)` with `u = low2 | high << 2` in `0..=7`: codes `u`,
/// `a = sc − 32`, `m = 4·a`.
pub(crate) struct Q3K;
impl FastFormat for Q3K {
    const BLOCK_BYTES: usize = 110;
    const BLOCK_ELEMS: usize = 256;
    const SIGNED: bool = false;
    const SHARED_D: bool = true;

    #[inline(always)]
    fn codes(b: &[u8], c: &mut [u8]) {
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
    }

    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn codes_avx2(b: &[u8], c: &mut [u8]) {
        // SAFETY: AVX2 per the caller.
        unsafe { avx2::q3k_codes(b, c) };
    }

    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn chunks_avx2(b: &[u8]) -> [std::arch::x86_64::__m256i; 8] {
        // SAFETY: AVX2 per the caller.
        unsafe { avx2::q3k_chunks(b) }
    }

    #[inline(always)]
    fn scales(b: &[u8], a: &mut [i8], m: &mut [i16]) -> (f32, f32) {
        q3k_scales(b, a, m)
    }

    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn scales_avx2(
        b: &[u8],
    ) -> (
        std::arch::x86_64::__m128i,
        std::arch::x86_64::__m256i,
        f32,
        f32,
    ) {
        // SAFETY: AVX2 per the caller.
        unsafe { avx2::q3k_scales(b) }
    }
}

/// Q3_K's 16 unsigned 6-bit scales `sc` (bytes of the four words, scale `4q + i` byte `i`
/// of word `q`).
#[inline(always)]
fn q3k_scale_words(b: &[u8]) -> [u32; 4] {
    // Scale j has low bits (s[j % 8] >> 4(j / 8)) & 15 and high bits
    // (s[8 + j % 4] >> 2(j / 4)) & 3; four at a time in 32-bit words.
    let [w0, w1, w2] = words3(&b[96..108]);
    const LO: u32 = 0x0F0F_0F0F;
    const HI: u32 = 0x0303_0303;
    [
        (w0 & LO) | ((w2 & HI) << 4),
        (w1 & LO) | (((w2 >> 2) & HI) << 4),
        ((w0 >> 4) & LO) | (((w2 >> 4) & HI) << 4),
        ((w1 >> 4) & LO) | (((w2 >> 6) & HI) << 4),
    ]
}

/// Q3_K's 16 signed scales `sc − 32` and offsets `4·(sc − 32)`, `(d, d)`.
#[inline(always)]
fn q3k_scales(b: &[u8], a: &mut [i8], m: &mut [i16]) -> (f32, f32) {
    let packed = q3k_scale_words(b);
    for (q, word) in packed.iter().enumerate() {
        for (i, byte) in word.to_le_bytes().into_iter().enumerate() {
            let sc = byte as i8 - 32;
            a[4 * q + i] = sc;
            m[4 * q + i] = 4 * sc as i16;
        }
    }
    let d = f16_at(b, 108);
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
    let (sc, mn) = k4_scale_words(b);
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
    (f16_at(b, 0), f16_at(b, 2))
}

/// The 8 scales and 8 mins of a Q4_K/Q5_K block, byte `i` of word `h` for sub-block
/// `4h + i` (see [`k4_scales`]).
#[inline(always)]
fn k4_scale_words(b: &[u8]) -> ([u32; 2], [u32; 2]) {
    let [w0, w1, w2] = words3(&b[4..16]);
    const SIX: u32 = 0x3F3F_3F3F;
    const LO: u32 = 0x0F0F_0F0F;
    const TOP: u32 = 0x0303_0303;
    let sc = [w0 & SIX, (w2 & LO) | (((w0 >> 6) & TOP) << 4)];
    let mn = [w1 & SIX, ((w2 >> 4) & LO) | (((w1 >> 6) & TOP) << 4)];
    (sc, mn)
}

/// Q4_K: `w = (d·sc)·q − dmin·m`, `q` 4-bit.
pub(crate) struct Q4K;
impl FastFormat for Q4K {
    const BLOCK_BYTES: usize = 144;
    const BLOCK_ELEMS: usize = 256;
    const SIGNED: bool = false;
    const SHARED_D: bool = false;

    #[inline(always)]
    fn codes(b: &[u8], c: &mut [u8]) {
        let b = arr::<144>(b);
        let c = arr_mut::<256>(c);
        for p in 0..4 {
            for l in 0..32 {
                let v = b[16 + 32 * p + l];
                c[64 * p + l] = v & 0x0F;
                c[64 * p + 32 + l] = v >> 4;
            }
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn codes_avx2(b: &[u8], c: &mut [u8]) {
        // SAFETY: AVX2 per the caller.
        unsafe { avx2::q4k_codes(b, c) };
    }

    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn chunks_avx2(b: &[u8]) -> [std::arch::x86_64::__m256i; 8] {
        // SAFETY: AVX2 per the caller.
        unsafe { avx2::q4k_chunks(b) }
    }

    #[inline(always)]
    fn scales(b: &[u8], a: &mut [i8], m: &mut [i16]) -> (f32, f32) {
        k4_scales(b, a, m)
    }

    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn scales_avx2(
        b: &[u8],
    ) -> (
        std::arch::x86_64::__m128i,
        std::arch::x86_64::__m256i,
        f32,
        f32,
    ) {
        // SAFETY: AVX2 per the caller.
        unsafe { avx2::k4_scales(b) }
    }
}

/// Q5_K: as Q4_K with a fifth bit from `qh`.
pub(crate) struct Q5K;
impl FastFormat for Q5K {
    const BLOCK_BYTES: usize = 176;
    const BLOCK_ELEMS: usize = 256;
    const SIGNED: bool = false;
    const SHARED_D: bool = false;

    #[inline(always)]
    fn codes(b: &[u8], c: &mut [u8]) {
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
    }

    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn codes_avx2(b: &[u8], c: &mut [u8]) {
        // SAFETY: AVX2 per the caller.
        unsafe { avx2::q5k_codes(b, c) };
    }

    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn chunks_avx2(b: &[u8]) -> [std::arch::x86_64::__m256i; 8] {
        // SAFETY: AVX2 per the caller.
        unsafe { avx2::q5k_chunks(b) }
    }

    #[inline(always)]
    fn scales(b: &[u8], a: &mut [i8], m: &mut [i16]) -> (f32, f32) {
        k4_scales(b, a, m)
    }

    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn scales_avx2(
        b: &[u8],
    ) -> (
        std::arch::x86_64::__m128i,
        std::arch::x86_64::__m256i,
        f32,
        f32,
    ) {
        // SAFETY: AVX2 per the caller.
        unsafe { avx2::k4_scales(b) }
    }
}

/// Q6_K: `w = (d·sc)·(u − 32)`, `u` 6-bit: codes `u`, `a = sc`, `m = 32·sc`.
pub(crate) struct Q6K;
impl FastFormat for Q6K {
    const BLOCK_BYTES: usize = 210;
    const BLOCK_ELEMS: usize = 256;
    const SIGNED: bool = false;
    const SHARED_D: bool = true;

    #[inline(always)]
    fn codes(b: &[u8], c: &mut [u8]) {
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
    }

    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn codes_avx2(b: &[u8], c: &mut [u8]) {
        // SAFETY: AVX2 per the caller.
        unsafe { avx2::q6k_codes(b, c) };
    }

    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn chunks_avx2(b: &[u8]) -> [std::arch::x86_64::__m256i; 8] {
        // SAFETY: AVX2 per the caller.
        unsafe { avx2::q6k_chunks(b) }
    }

    #[inline(always)]
    fn scales(b: &[u8], a: &mut [i8], m: &mut [i16]) -> (f32, f32) {
        q6k_scales(b, a, m)
    }

    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn scales_avx2(
        b: &[u8],
    ) -> (
        std::arch::x86_64::__m128i,
        std::arch::x86_64::__m256i,
        f32,
        f32,
    ) {
        // SAFETY: AVX2 per the caller.
        unsafe { avx2::q6k_scales(b) }
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
    let d = f16_at(b, 208);
    (d, d)
}

/// AVX2 code unpackers (the same bytes as the portable `codes`): each format's codes as
/// eight 32-byte vectors (`*_chunks`, element `32j + i` is byte `i` of vector `j`), and
/// `*_codes` storing them.
#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::{
        __m256i, _mm256_and_si256, _mm256_or_si256, _mm256_set1_epi8, _mm256_setzero_si256,
        _mm256_slli_epi16, _mm256_srli_epi16,
    };

    use std::arch::x86_64::{
        __m128i, _mm256_cvtepi8_epi16, _mm256_cvtepu8_epi16, _mm_and_si128, _mm_loadu_si128,
        _mm_set1_epi8, _mm_set_epi32, _mm_setr_epi32, _mm_srli_epi16, _mm_sub_epi8,
        _mm_unpacklo_epi8,
    };

    use super::super::format::avx2::{ld, shr, st};
    use super::super::format::f16_at;

    /// Q2_K's scales as vectors (as `super::q2k_scales`).
    ///
    /// # Safety
    /// AVX2.
    #[inline(always)]
    pub(super) unsafe fn q2k_scales(b: &[u8]) -> (__m128i, __m256i, f32, f32) {
        assert!(b.len() >= 84);
        // SAFETY: AVX2 per the caller; reads b[..16] (checked above).
        unsafe {
            let v = _mm_loadu_si128(b.as_ptr().cast());
            let m4 = _mm_set1_epi8(0x0F);
            let a = _mm_and_si128(v, m4);
            let m = _mm256_cvtepu8_epi16(_mm_and_si128(_mm_srli_epi16::<4>(v), m4));
            (a, m, f16_at(b, 80), f16_at(b, 82))
        }
    }

    /// Q3_K's scales as vectors (as `super::q3k_scales`).
    ///
    /// # Safety
    /// AVX2.
    #[inline(always)]
    pub(super) unsafe fn q3k_scales(b: &[u8]) -> (__m128i, __m256i, f32, f32) {
        let [p0, p1, p2, p3] = super::q3k_scale_words(b);
        // SAFETY: AVX2 per the caller.
        unsafe {
            let v = _mm_setr_epi32(p0 as i32, p1 as i32, p2 as i32, p3 as i32);
            let a = _mm_sub_epi8(v, _mm_set1_epi8(32));
            // 4·a: |a| ≤ 32, so the 16-bit shift cannot overflow.
            let m = _mm256_slli_epi16::<2>(_mm256_cvtepi8_epi16(a));
            let d = f16_at(b, 108);
            (a, m, d, d)
        }
    }

    /// Q4_K/Q5_K's scales as vectors (as `super::k4_scales`): each sub-block's scale and min
    /// in both of its groups.
    ///
    /// # Safety
    /// AVX2.
    #[inline(always)]
    pub(super) unsafe fn k4_scales(b: &[u8]) -> (__m128i, __m256i, f32, f32) {
        let (sc, mn) = super::k4_scale_words(b);
        // SAFETY: AVX2 per the caller.
        unsafe {
            let s8 = _mm_set_epi32(0, 0, sc[1] as i32, sc[0] as i32);
            let m8 = _mm_set_epi32(0, 0, mn[1] as i32, mn[0] as i32);
            let a = _mm_unpacklo_epi8(s8, s8);
            let m = _mm256_cvtepu8_epi16(_mm_unpacklo_epi8(m8, m8));
            (a, m, f16_at(b, 0), f16_at(b, 2))
        }
    }

    /// Q6_K's scales as vectors (as `super::q6k_scales`).
    ///
    /// # Safety
    /// AVX2.
    #[inline(always)]
    pub(super) unsafe fn q6k_scales(b: &[u8]) -> (__m128i, __m256i, f32, f32) {
        assert!(b.len() >= 210);
        // SAFETY: AVX2 per the caller; reads b[192..208] (checked above).
        unsafe {
            let a = _mm_loadu_si128(b.as_ptr().add(192).cast());
            // 32·sc: |sc| ≤ 128, so the 16-bit shift cannot overflow.
            let m = _mm256_slli_epi16::<5>(_mm256_cvtepi8_epi16(a));
            let d = f16_at(b, 208);
            (a, m, d, d)
        }
    }

    /// Stores the 8 vectors at `c[..256]`.
    ///
    /// # Safety
    /// AVX2.
    #[inline(always)]
    unsafe fn store(v: [__m256i; 8], c: &mut [u8]) {
        assert!(c.len() >= 256);
        for (j, vj) in v.into_iter().enumerate() {
            // SAFETY: AVX2 per the caller; writes c[32j..32j + 32] (checked above).
            unsafe { st(c.as_mut_ptr().add(32 * j), vj) };
        }
    }

    /// Q2_K's codes (layout as `super::Q2K::codes`).
    ///
    /// # Safety
    /// AVX2.
    #[inline(always)]
    pub(super) unsafe fn q2k_chunks(b: &[u8]) -> [__m256i; 8] {
        assert!(b.len() >= 84);
        // SAFETY: AVX2 per the caller; reads b[16..80] (checked above).
        unsafe {
            let m3 = _mm256_set1_epi8(3);
            let mut out = [_mm256_setzero_si256(); 8];
            for n in 0..2 {
                let v = ld(b.as_ptr().add(16 + 32 * n));
                for s in 0..4 {
                    out[4 * n + s] = _mm256_and_si256(shr(v, 2 * s as i32), m3);
                }
            }
            out
        }
    }

    /// Q2_K's 256 codes into `c`.
    ///
    /// # Safety
    /// AVX2.
    #[inline(always)]
    pub(super) unsafe fn q2k_codes(b: &[u8], c: &mut [u8]) {
        // SAFETY: AVX2 per the caller.
        unsafe { store(q2k_chunks(b), c) }
    }

    /// Q3_K's codes `low | high << 2` (layout as `super::Q3K::codes`).
    ///
    /// # Safety
    /// AVX2.
    #[inline(always)]
    pub(super) unsafe fn q3k_chunks(b: &[u8]) -> [__m256i; 8] {
        assert!(b.len() >= 110);
        // SAFETY: AVX2 per the caller; reads b[..96] (checked above).
        unsafe {
            let m3 = _mm256_set1_epi8(3);
            let one = _mm256_set1_epi8(1);
            let hm = ld(b.as_ptr());
            let mut out = [_mm256_setzero_si256(); 8];
            for n in 0..2 {
                let v = ld(b.as_ptr().add(32 + 32 * n));
                for s in 0..4 {
                    let low = _mm256_and_si256(shr(v, 2 * s as i32), m3);
                    let high = _mm256_and_si256(shr(hm, (4 * n + s) as i32), one);
                    // high ≤ 1: the 16-bit shift keeps it inside its byte.
                    out[4 * n + s] = _mm256_or_si256(low, _mm256_slli_epi16::<2>(high));
                }
            }
            out
        }
    }

    /// Q3_K's 256 codes into `c`.
    ///
    /// # Safety
    /// AVX2.
    #[inline(always)]
    pub(super) unsafe fn q3k_codes(b: &[u8], c: &mut [u8]) {
        // SAFETY: AVX2 per the caller.
        unsafe { store(q3k_chunks(b), c) }
    }

    /// Q4_K's codes (layout as `super::Q4K::codes`).
    ///
    /// # Safety
    /// AVX2.
    #[inline(always)]
    pub(super) unsafe fn q4k_chunks(b: &[u8]) -> [__m256i; 8] {
        assert!(b.len() >= 144);
        // SAFETY: AVX2 per the caller; reads b[16..144] (checked above).
        unsafe {
            let m4 = _mm256_set1_epi8(0x0F);
            let mut out = [_mm256_setzero_si256(); 8];
            for p in 0..4 {
                let v = ld(b.as_ptr().add(16 + 32 * p));
                out[2 * p] = _mm256_and_si256(v, m4);
                out[2 * p + 1] = _mm256_and_si256(_mm256_srli_epi16::<4>(v), m4);
            }
            out
        }
    }

    /// Q4_K's 256 codes into `c`.
    ///
    /// # Safety
    /// AVX2.
    #[inline(always)]
    pub(super) unsafe fn q4k_codes(b: &[u8], c: &mut [u8]) {
        // SAFETY: AVX2 per the caller.
        unsafe { store(q4k_chunks(b), c) }
    }

    /// Q5_K's codes (layout as `super::Q5K::codes`).
    ///
    /// # Safety
    /// AVX2.
    #[inline(always)]
    pub(super) unsafe fn q5k_chunks(b: &[u8]) -> [__m256i; 8] {
        assert!(b.len() >= 176);
        // SAFETY: AVX2 per the caller; reads b[16..176] (checked above).
        unsafe {
            let m4 = _mm256_set1_epi8(0x0F);
            let one = _mm256_set1_epi8(1);
            let qh = ld(b.as_ptr().add(16));
            let mut out = [_mm256_setzero_si256(); 8];
            for p in 0..4 {
                let v = ld(b.as_ptr().add(48 + 32 * p));
                let h0 = _mm256_and_si256(shr(qh, 2 * p as i32), one);
                let h1 = _mm256_and_si256(shr(qh, 2 * p as i32 + 1), one);
                out[2 * p] = _mm256_or_si256(_mm256_and_si256(v, m4), _mm256_slli_epi16::<4>(h0));
                out[2 * p + 1] = _mm256_or_si256(
                    _mm256_and_si256(_mm256_srli_epi16::<4>(v), m4),
                    _mm256_slli_epi16::<4>(h1),
                );
            }
            out
        }
    }

    /// Q5_K's 256 codes into `c`.
    ///
    /// # Safety
    /// AVX2.
    #[inline(always)]
    pub(super) unsafe fn q5k_codes(b: &[u8], c: &mut [u8]) {
        // SAFETY: AVX2 per the caller.
        unsafe { store(q5k_chunks(b), c) }
    }

    /// Q6_K's codes `lo | hi << 4` (layout as `super::Q6K::codes`).
    ///
    /// # Safety
    /// AVX2.
    #[inline(always)]
    pub(super) unsafe fn q6k_chunks(b: &[u8]) -> [__m256i; 8] {
        assert!(b.len() >= 210);
        // SAFETY: AVX2 per the caller; reads b[..192] (checked above).
        unsafe {
            let m4 = _mm256_set1_epi8(0x0F);
            let m2 = _mm256_set1_epi8(3);
            let mut out = [_mm256_setzero_si256(); 8];
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
                    out[4 * h + s] = _mm256_or_si256(lo, _mm256_slli_epi16::<4>(hi));
                }
            }
            out
        }
    }

    /// Q6_K's 256 codes into `c`.
    ///
    /// # Safety
    /// AVX2.
    #[inline(always)]
    pub(super) unsafe fn q6k_codes(b: &[u8], c: &mut [u8]) {
        // SAFETY: AVX2 per the caller.
        unsafe { store(q6k_chunks(b), c) }
    }
}

#[cfg(test)]
mod tests {
    use super::super::super::test_data::bytes;
    use super::*;

    /// The word-at-a-time Q4_K/Q5_K scale unpacking equals `dequant.rs`'s per-scale one.
    #[test]
    fn k4_scales_match_scale_min_k4() {
        for seed in 0..2000u32 {
            let mut b = [0u8; 16];
            b[4..].copy_from_slice(&bytes(12, seed));
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
}
