//! [`FastFormat`]: what a weight block format contributes to the Fast kernels (its block
//! geometry, code unpacking and scales), and the helpers the formats share.
//!
//! Decides: the decoded form of a block, which every format produces and the kernel body
//! (`fast.rs`) and the block dots (`block_dot.rs`) consume:
//!
//! - one byte code `c` per element: unsigned (at most 63) or, for [`FastFormat::SIGNED`]
//!   formats, a signed byte;
//! - per [`GROUP`] elements an integer scale `a` (i8) and an integer offset coefficient `m`
//!   (i16); 32-element blocks have unit scales (`a = 1`, which the AVX2 block dot relies on);
//! - two f32 factors `d` and `dm`,
//!
//! such that the weight is `w = d·a·c − dm·m` element-wise (`dm = d` for formats with
//! [`FastFormat::SHARED_D`]).

/// Elements per integer scale.
pub(crate) const GROUP: usize = 16;

/// A weight block format with a fast kernel (see the module docs).
pub(crate) trait FastFormat {
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

    /// One block's [`FastFormat::BLOCK_ELEMS`] codes into `c`.
    fn codes(b: &[u8], c: &mut [u8]);

    /// Whether the format builds its code chunks in registers (it overrides
    /// [`FastFormat::chunks_avx2`]); then the default [`FastFormat::codes_avx2`] stores
    /// those chunks.
    const REGISTER_CHUNKS: bool = false;

    /// [`FastFormat::codes`] unpacked with AVX2 where a format writes that; must produce
    /// identical bytes. Default: the register chunks stored ([`FastFormat::REGISTER_CHUNKS`]),
    /// else the portable unpacker.
    ///
    /// # Safety
    /// The CPU must support AVX2.
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn codes_avx2(b: &[u8], c: &mut [u8]) {
        if Self::REGISTER_CHUNKS {
            // SAFETY: AVX2 per the caller.
            unsafe { avx2::store_chunks(Self::chunks_avx2(b), c) }
        } else {
            Self::codes(b, c);
        }
    }

    /// The block's codes as 32-byte vectors in registers: vector `j` holds the codes of
    /// elements `32j .. 32j + 32` (only the first `BLOCK_ELEMS / 32` are meaningful), the
    /// same bytes as [`FastFormat::codes`]. The single-token kernel dots them without a
    /// scratch tile. Default: [`FastFormat::codes_avx2`] through a stack buffer.
    ///
    /// # Safety
    /// The CPU must support AVX2.
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn chunks_avx2(b: &[u8]) -> [std::arch::x86_64::__m256i; 8] {
        let mut c = [0u8; 256];
        // SAFETY: AVX2 per the caller; `c` holds the 8 · 32 bytes read.
        unsafe {
            Self::codes_avx2(b, &mut c);
            std::array::from_fn(|j| avx2::ld(c.as_ptr().add(32 * j)))
        }
    }

    /// [`FastFormat::scales`] as vectors, for 16-group formats: `a` as 16 i8, `m` as 16
    /// i16, and `(d, dm)`; the same values. Default: through stack arrays.
    ///
    /// # Safety
    /// The CPU must support AVX2.
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
        let (mut a, mut m) = ([0i8; 16], [0i16; 16]);
        let (d, dm) = Self::scales(b, &mut a, &mut m);
        // SAFETY: AVX2 per the caller; the arrays hold the 16 and 32 bytes read.
        unsafe {
            (
                std::arch::x86_64::_mm_loadu_si128(a.as_ptr().cast()),
                std::arch::x86_64::_mm256_loadu_si256(m.as_ptr().cast()),
                d,
                dm,
            )
        }
    }

    /// One block's `a` and `m` (one per [`GROUP`] elements); returns `(d, dm)`.
    fn scales(b: &[u8], a: &mut [i8], m: &mut [i16]) -> (f32, f32);
}

/// `&b[..N]` as an array (the callers pass whole blocks).
#[inline(always)]
pub(crate) fn arr<const N: usize>(b: &[u8]) -> &[u8; N] {
    b[..N].try_into().expect("whole block")
}

/// `&mut c[..N]` as an array.
#[inline(always)]
pub(crate) fn arr_mut<const N: usize>(c: &mut [u8]) -> &mut [u8; N] {
    (&mut c[..N]).try_into().expect("whole block")
}

/// The f16 at `b[at..at + 2]` as f32.
#[inline(always)]
pub(crate) fn f16_at(b: &[u8], at: usize) -> f32 {
    f16_bits_to_f32(u16::from_le_bytes([b[at], b[at + 1]]))
}

/// The IEEE half `h` as f32, exactly, in plain integer code that inlines into the kernels
/// (the `half` crate's conversion is an out-of-line call per block when the caller is not
/// compiled with F16C). The same value as `half` for every non-NaN input; NaNs stay NaN
/// (quiet, with the payload shifted up).
#[inline(always)]
pub(crate) fn f16_bits_to_f32(h: u16) -> f32 {
    let sign = ((h as u32) & 0x8000) << 16;
    let em = (h as u32) & 0x7FFF;
    if em >= 0x7C00 {
        // Infinity or NaN.
        let quiet = if em > 0x7C00 { 0x0040_0000 } else { 0 };
        f32::from_bits(sign | 0x7F80_0000 | quiet | ((em & 0x03FF) << 13))
    } else if em >= 0x0400 {
        // Normal: rebias the exponent (15 → 127).
        f32::from_bits(sign | ((em + ((127 - 15) << 10)) << 13))
    } else {
        // Zero or subnormal: em · 2^-24, exact in f32.
        f32::from_bits(sign | (em as f32 * (1.0 / 16_777_216.0)).to_bits())
    }
}

/// The scales of a 32-element block (two groups): unit `a`, offset `m` in both groups;
/// returns `(d, dm)`.
#[inline(always)]
pub(crate) fn unit_scales(a: &mut [i8], m: &mut [i16], offset: i16, d: f32, dm: f32) -> (f32, f32) {
    a[..2].fill(1);
    m[..2].fill(offset);
    (d, dm)
}

/// AVX2 byte-vector helpers of the code unpackers.
#[cfg(target_arch = "x86_64")]
pub(crate) mod avx2 {
    use std::arch::x86_64::{
        __m256i, _mm256_loadu_si256, _mm256_srl_epi16, _mm256_storeu_si256, _mm_cvtsi32_si128,
    };

    /// 32 bytes at `p`.
    ///
    /// # Safety
    /// AVX2; `p` valid for 32 reads.
    #[inline(always)]
    pub(crate) unsafe fn ld(p: *const u8) -> __m256i {
        // SAFETY: per the caller.
        unsafe { _mm256_loadu_si256(p.cast::<__m256i>()) }
    }

    /// Stores 32 bytes at `p`.
    ///
    /// # Safety
    /// AVX2; `p` valid for 32 writes.
    #[inline(always)]
    pub(crate) unsafe fn st(p: *mut u8, v: __m256i) {
        // SAFETY: per the caller.
        unsafe { _mm256_storeu_si256(p.cast::<__m256i>(), v) }
    }

    /// A block's 8 chunks (as `FastFormat::chunks_avx2` returns them) stored to `c`'s first
    /// 256 bytes: the `codes_avx2` of formats that build their chunks in registers.
    ///
    /// # Safety
    /// AVX2.
    #[inline(always)]
    pub(crate) unsafe fn store_chunks(v: [__m256i; 8], c: &mut [u8]) {
        let c = super::arr_mut::<256>(c);
        for (j, x) in v.into_iter().enumerate() {
            // SAFETY: AVX2 per the caller; chunk `j` writes c[32j .. 32j + 32] of 256.
            unsafe { st(c.as_mut_ptr().add(32 * j), x) };
        }
    }

    /// Each byte of `v` shifted right by `k` (bits from the neighbour byte must be masked
    /// off by the caller).
    ///
    /// # Safety
    /// AVX2.
    #[inline(always)]
    pub(crate) unsafe fn shr(v: __m256i, k: i32) -> __m256i {
        // SAFETY: AVX2 per the caller.
        unsafe { _mm256_srl_epi16(v, _mm_cvtsi32_si128(k)) }
    }
}

#[cfg(test)]
mod tests {
    use super::f16_bits_to_f32;

    /// Every half converts as the `half` crate converts it (NaN to NaN).
    #[test]
    fn f16_conversion_matches_half() {
        for h in 0..=u16::MAX {
            let want = half::f16::from_bits(h).to_f32();
            let got = f16_bits_to_f32(h);
            if want.is_nan() {
                assert!(got.is_nan(), "{h:#06x}");
            } else {
                assert_eq!(got.to_bits(), want.to_bits(), "{h:#06x}");
            }
        }
    }
}
