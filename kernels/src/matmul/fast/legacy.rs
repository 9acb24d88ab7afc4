//! The legacy formats' Fast-mode decoders (32-element blocks with one `d`): Q4_0, Q4_1,
//! Q5_0 and Q5_1 as one generic nibble layout, and Q8_0.

use super::format::{arr, f16_at, unit_scales, FastFormat};

/// The 4- and 5-bit legacy layouts: `d f16`, then `min f16` when `MIN`, then `qh u32` when
/// `FIFTH`, then `qs[16]`. Codes are the nibbles (element `j < 16` the low nibble of
/// `qs[j]`, `j + 16` the high one), with bit `j` of `qh` as bit 4 of element `j` when
/// `FIFTH`. Without `MIN`, `w = d·(u − 8)` (4-bit) or `d·(u − 16)` (5-bit): `m` is that
/// offset; with it, `w = d·u + min`: `m = 1`, `dm = −min`.
pub(crate) struct Nibbles<const MIN: bool, const FIFTH: bool>;

/// Q4_0: `d`, 4-bit codes, offset 8.
pub(crate) type Q40 = Nibbles<false, false>;
/// Q4_1: `d`, `min`, 4-bit codes.
pub(crate) type Q41 = Nibbles<true, false>;
/// Q5_0: `d`, 5-bit codes, offset 16.
pub(crate) type Q50 = Nibbles<false, true>;
/// Q5_1: `d`, `min`, 5-bit codes.
pub(crate) type Q51 = Nibbles<true, true>;

impl<const MIN: bool, const FIFTH: bool> Nibbles<MIN, FIFTH> {
    /// Where `qh` starts (when `FIFTH`).
    const QH_AT: usize = if MIN { 4 } else { 2 };
    /// Where `qs` starts.
    const QS_AT: usize = Self::QH_AT + if FIFTH { 4 } else { 0 };

    /// The fifth bits (only read when `FIFTH`).
    #[inline(always)]
    fn qh(b: &[u8]) -> u32 {
        let h = Self::QH_AT;
        u32::from_le_bytes([b[h], b[h + 1], b[h + 2], b[h + 3]])
    }
}

impl<const MIN: bool, const FIFTH: bool> FastFormat for Nibbles<MIN, FIFTH> {
    const BLOCK_BYTES: usize = Self::QS_AT + 16;
    const BLOCK_ELEMS: usize = 32;
    const SIGNED: bool = false;
    const SHARED_D: bool = !MIN;

    #[inline(always)]
    fn codes(b: &[u8], c: &mut [u8]) {
        let qs = &b[Self::QS_AT..Self::QS_AT + 16];
        for j in 0..16 {
            c[j] = qs[j] & 0x0F;
            c[j + 16] = qs[j] >> 4;
        }
        if FIFTH {
            let qh = Self::qh(b);
            for (j, v) in c.iter_mut().take(32).enumerate() {
                *v |= (((qh >> j) & 1) as u8) << 4;
            }
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn codes_avx2(b: &[u8], c: &mut [u8]) {
        let qh = FIFTH.then(|| Self::qh(b));
        // SAFETY: AVX2 per the caller.
        unsafe { avx2::legacy_codes(&b[Self::QS_AT..Self::QS_AT + 16], qh, c) };
    }

    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn chunks_avx2(b: &[u8]) -> [std::arch::x86_64::__m256i; 8] {
        let qh = FIFTH.then(|| Self::qh(b));
        // SAFETY: AVX2 per the caller.
        let v = unsafe { avx2::legacy_chunk(&b[Self::QS_AT..Self::QS_AT + 16], qh) };
        [v; 8]
    }

    #[inline(always)]
    fn scales(b: &[u8], a: &mut [i8], m: &mut [i16]) -> (f32, f32) {
        let d = f16_at(b, 0);
        match (MIN, FIFTH) {
            (true, _) => unit_scales(a, m, 1, d, -f16_at(b, 2)),
            (false, false) => unit_scales(a, m, 8, d, d),
            (false, true) => unit_scales(a, m, 16, d, d),
        }
    }
}

/// Q8_0: signed codes as stored, `w = d·q`.
pub(crate) struct Q80;
impl FastFormat for Q80 {
    const HAS_OFFSET: bool = false;
    const BLOCK_BYTES: usize = 34;
    const BLOCK_ELEMS: usize = 32;
    const SIGNED: bool = true;
    const SHARED_D: bool = true;

    #[inline(always)]
    fn codes(b: &[u8], c: &mut [u8]) {
        c[..32].copy_from_slice(&arr::<34>(b)[2..34]);
    }

    #[inline(always)]
    fn scales(b: &[u8], a: &mut [i8], m: &mut [i16]) -> (f32, f32) {
        let d = f16_at(b, 0);
        unit_scales(a, m, 0, d, d)
    }

    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn chunks_avx2(b: &[u8]) -> [std::arch::x86_64::__m256i; 8] {
        assert!(b.len() >= 34);
        // SAFETY: AVX2 per the caller; reads b[2..34] (checked above).
        let v = unsafe { super::format::avx2::ld(b.as_ptr().add(2)) };
        [v; 8]
    }
}

/// AVX2 code unpacking of the nibble layouts.
#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::{
        __m128i, __m256i, _mm256_and_si256, _mm256_cmpeq_epi8, _mm256_or_si256, _mm256_set1_epi32,
        _mm256_set1_epi64x, _mm256_set1_epi8, _mm256_set_m128i, _mm256_setr_epi8,
        _mm256_shuffle_epi8, _mm_and_si128, _mm_loadu_si128, _mm_set1_epi8, _mm_srli_epi16,
    };

    use super::super::format::avx2::st;

    /// A legacy block's 32 codes: the nibbles of `qs[..16]` (element `j < 16` low, `j + 16`
    /// high), with bit `j` of `qh` as bit 4 of element `j` when given (Q5_0/Q5_1).
    ///
    /// # Safety
    /// AVX2.
    #[inline(always)]
    pub(super) unsafe fn legacy_codes(qs: &[u8], qh: Option<u32>, c: &mut [u8]) {
        assert!(c.len() >= 32);
        // SAFETY: AVX2 per the caller; writes c[..32] (checked above).
        unsafe { st(c.as_mut_ptr(), legacy_chunk(qs, qh)) }
    }

    /// [`legacy_codes`] in a register.
    ///
    /// # Safety
    /// AVX2.
    #[inline(always)]
    pub(super) unsafe fn legacy_chunk(qs: &[u8], qh: Option<u32>) -> __m256i {
        assert!(qs.len() >= 16);
        // SAFETY: AVX2 per the caller; reads qs[..16] (checked above).
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
            codes
        }
    }
}
