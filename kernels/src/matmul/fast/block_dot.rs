//! The integer dot of one block of decoded weight rows with one block of quantized
//! activations, accumulated per lane into f32 row sums: [`BlockDot`], implemented for
//! `simd.rs`'s [`Portable`], [`Avx2Fma`] and [`Avx512Vnni`] (the AVX2 dot with VNNI
//! multiply-adds: `vpdpwssd` for `madd` + `add`, `vpdpbusd` for unit-scale
//! `maddubs` + `madd` + `add`; the same exact integer lanes, so the same bits).
//!
//! Decides: the arithmetic of a Fast-mode block. With weights decoded as in `format.rs`
//! (`w = d·a·c − dm·m`) and activations `x ≈ dx·q` (block scale `dx`, codes `q`, 16-sums
//! `bsum`, `q8.rs`), one block's dot is
//!
//! ```text
//! A = Σ_g a[g] · Σ_{i in g} c[i]·q[i]        (exact, i32)
//! M = Σ_g m[g] · bsum[g]                     (exact, i32)
//! block = (dx·d)·f32(A − M)                  (SHARED_D)
//!       = (dx·d)·f32(A) − (dx·dm)·f32(M)     (otherwise)
//! ```
//!
//! formed per lane: `A` and `M` are split into 8 exact i32 lane sums (the lanes AVX2's
//! `_mm256_maddubs_epi16` + `_mm256_madd_epi16` produce, see [`lane_sums`]), and each lane
//! is scaled as above and added to the row's f32 lane accumulator as separate multiplies, a
//! subtraction and an addition (no fused multiply-add). The integer part is exact and the
//! f32 part is the same operations in the same order in both implementations, so they give
//! the same bits, whatever the number of rows `N` and tokens `T` of a call.
//!
//! Range of the integer part (why nothing overflows): `|q| ≤ 127`; unsigned codes ≤ 63 and
//! signed codes' magnitudes ≤ 128, so a `maddubs` pair sum is at most `2·128·127 = 32512`
//! (no i16 saturation); the largest block sum (Q6_K: `16 groups · 127 · 16 · 63 · 127`) is
//! below 2^28.

#[cfg(target_arch = "x86_64")]
use super::super::simd::{Avx2Fma, Avx512Vnni};
use super::super::simd::{F32Lanes, Portable, LANES};
use super::format::{FastFormat, GROUP};

/// One block of `N` decoded weight rows: per row its codes (`16·a.len()` bytes), per-16
/// scales `a` and offsets `m`.
#[derive(Clone, Copy)]
pub(crate) struct RowsBlock<'a, const N: usize> {
    /// Codes.
    pub(crate) c: [&'a [u8]; N],
    /// Integer scales.
    pub(crate) a: [&'a [i8]; N],
    /// Integer offset coefficients.
    pub(crate) m: [&'a [i16]; N],
}

/// One block of `T` tokens' quantized activations, with the f32 factors of each (token, row)
/// pair: `fd[t][k] = dx·d`, `fm[t][k] = dx·dm`.
#[derive(Clone, Copy)]
pub(crate) struct TokensBlock<'a, const N: usize, const T: usize> {
    /// Activation codes.
    pub(crate) x: [&'a [i8]; T],
    /// Activation 16-sums.
    pub(crate) bs: [&'a [i16]; T],
    /// `dx·d` per token and row.
    pub(crate) fd: [[f32; N]; T],
    /// `dx·dm` per token and row.
    pub(crate) fm: [[f32; N]; T],
}

/// One implementation of the Fast kernels' per-ISA parts.
pub(crate) trait BlockDot: F32Lanes {
    /// Whether the kernel body should dot 8 (then 4) tokens per pass over a tile of
    /// 256-element blocks (the SIMD implementations: one code chunk and scale vector serve
    /// 8 tokens), else 2 (the portable one, whose per-(token, row) lane sums gain nothing
    /// from wider passes).
    const WIDE_TOKEN_PASS: bool;

    /// One block's codes of `F` (its portable or AVX2 unpacker).
    fn codes<F: FastFormat>(b: &[u8], c: &mut [u8]);

    /// Adds the block to `acc[t][k]` for every token `t` and row `k` (see the module docs).
    fn block<F: FastFormat, const N: usize, const T: usize>(
        rows: &RowsBlock<'_, N>,
        toks: &TokensBlock<'_, N, T>,
        acc: &mut [[Self::V; N]; T],
    );

    /// Adds one block of one row, decoded from its bytes `b` without a scratch tile, dotted
    /// with one token's block (codes `x`, 16-sums `bs`, scale `dx`), to `acc`: the same
    /// value (and bits) as [`BlockDot::block`] on the decoded row with `fd = dx·d`,
    /// `fm = dx·dm`.
    fn block_direct<F: FastFormat>(b: &[u8], x: &[i8], bs: &[i16], dx: f32, acc: &mut Self::V);
}

/// The per-lane f32 step shared by both implementations: `fd·f32(A − M)` or
/// `fd·f32(A) − fm·f32(M)`, added to `acc` (separate multiplies, no fused multiply-add).
#[inline(always)]
fn finish_portable<F: FastFormat>(
    big: &[i32; LANES],
    off: &[i32; LANES],
    fd: f32,
    fm: f32,
    acc: &mut [f32; LANES],
) {
    for l in 0..LANES {
        let v = if F::SHARED_D {
            fd * (big[l] - off[l]) as f32
        } else {
            fd * big[l] as f32 - fm * off[l] as f32
        };
        acc[l] += v;
    }
}

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
    let groups = F::BLOCK_ELEMS / GROUP;
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

impl BlockDot for Portable {
    const WIDE_TOKEN_PASS: bool = false;

    #[inline(always)]
    fn codes<F: FastFormat>(b: &[u8], c: &mut [u8]) {
        F::codes(b, c);
    }

    #[inline(always)]
    #[allow(clippy::needless_range_loop)] // `t` and `k` index activations, rows and factors.
    fn block<F: FastFormat, const N: usize, const T: usize>(
        rows: &RowsBlock<'_, N>,
        toks: &TokensBlock<'_, N, T>,
        acc: &mut [[Self::V; N]; T],
    ) {
        for t in 0..T {
            for k in 0..N {
                let (big, off) =
                    lane_sums::<F>(rows.c[k], rows.a[k], rows.m[k], toks.x[t], toks.bs[t]);
                finish_portable::<F>(&big, &off, toks.fd[t][k], toks.fm[t][k], &mut acc[t][k]);
            }
        }
    }

    #[inline(always)]
    fn block_direct<F: FastFormat>(b: &[u8], x: &[i8], bs: &[i16], dx: f32, acc: &mut Self::V) {
        let mut c = [0u8; 256];
        let (mut a, mut m) = ([0i8; 16], [0i16; 16]);
        F::codes(b, &mut c);
        let (d, dm) = F::scales(b, &mut a, &mut m);
        let (big, off) = lane_sums::<F>(&c, &a, &m, x, bs);
        finish_portable::<F>(&big, &off, dx * d, dx * dm, acc);
    }
}

#[cfg(target_arch = "x86_64")]
impl BlockDot for Avx2Fma {
    const WIDE_TOKEN_PASS: bool = true;

    #[inline(always)]
    fn codes<F: FastFormat>(b: &[u8], c: &mut [u8]) {
        // SAFETY: `Avx2Fma` is only used after AVX2 was detected (see `simd.rs`).
        unsafe { F::codes_avx2(b, c) }
    }

    #[inline(always)]
    fn block<F: FastFormat, const N: usize, const T: usize>(
        rows: &RowsBlock<'_, N>,
        toks: &TokensBlock<'_, N, T>,
        acc: &mut [[Self::V; N]; T],
    ) {
        // SAFETY: as in `codes`; codes and activations are in the ranges `block` needs
        // (`format.rs`, `q8.rs`).
        unsafe { avx2::block::<F, N, T, false>(rows, toks, acc) }
    }

    #[inline(always)]
    fn block_direct<F: FastFormat>(b: &[u8], x: &[i8], bs: &[i16], dx: f32, acc: &mut Self::V) {
        // SAFETY: as in `block`.
        unsafe { avx2::block_direct::<F, false>(b, x, bs, dx, acc) }
    }
}

#[cfg(target_arch = "x86_64")]
impl BlockDot for Avx512Vnni {
    const WIDE_TOKEN_PASS: bool = true;

    #[inline(always)]
    fn codes<F: FastFormat>(b: &[u8], c: &mut [u8]) {
        // SAFETY: `Avx512Vnni` is only used after its features (AVX2 among them) were
        // detected (see `simd.rs`).
        unsafe { F::codes_avx2(b, c) }
    }

    #[inline(always)]
    fn block<F: FastFormat, const N: usize, const T: usize>(
        rows: &RowsBlock<'_, N>,
        toks: &TokensBlock<'_, N, T>,
        acc: &mut [[Self::V; N]; T],
    ) {
        // SAFETY: as in `codes` (AVX-512 VL + VNNI included); ranges as for `Avx2Fma`.
        // (A 512-bit variant, two chunks per instruction, measured no faster on Zen 4.)
        unsafe { avx2::block::<F, N, T, true>(rows, toks, acc) }
    }

    #[inline(always)]
    fn block_direct<F: FastFormat>(b: &[u8], x: &[i8], bs: &[i16], dx: f32, acc: &mut Self::V) {
        // SAFETY: as in `block`.
        unsafe { avx2::block_direct::<F, true>(b, x, bs, dx, acc) }
    }
}

/// The AVX2 integer block dot.
#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::{
        __m128i, __m256, __m256i, _mm256_abs_epi8, _mm256_add_epi32, _mm256_add_ps,
        _mm256_cvtepi32_ps, _mm256_cvtepi8_epi16, _mm256_loadu_si256, _mm256_madd_epi16,
        _mm256_maddubs_epi16, _mm256_mul_ps, _mm256_set1_epi16, _mm256_set1_ps, _mm256_setr_epi32,
        _mm256_setzero_si256, _mm256_sign_epi8, _mm256_sub_epi32, _mm256_sub_ps, _mm_loadu_si128,
    };

    use std::arch::x86_64::{
        _mm256_dpbusd_epi32, _mm256_dpwssd_epi32, _mm256_permute2x128_si256, _mm256_set_m128i,
        _mm256_shuffle_epi8, _mm_set1_epi16,
    };

    use super::super::format::avx2::ld;
    use super::{FastFormat, RowsBlock, TokensBlock, GROUP};

    /// The 16 per-group scales of a block as i16, broadcast so that one in-lane byte
    /// shuffle gives the scale vector of each 32-byte chunk: `lo` holds groups 0..8 in both
    /// 128-bit halves, `hi` groups 8..16.
    #[derive(Clone, Copy)]
    pub(super) struct ScaleVecs {
        lo: __m256i,
        hi: __m256i,
    }

    impl ScaleVecs {
        /// From the 16 scales at `a`.
        ///
        /// # Safety
        /// AVX2; `a` holds at least 16 scales.
        #[inline(always)]
        pub(super) unsafe fn new(a: &[i8]) -> Self {
            assert!(a.len() >= 16);
            // SAFETY: AVX2 per the caller; reads a[..16] (checked above).
            unsafe { Self::from_vec(_mm_loadu_si128(a.as_ptr().cast::<__m128i>())) }
        }

        /// From the 16 scales in `a`.
        ///
        /// # Safety
        /// AVX2.
        #[inline(always)]
        pub(super) unsafe fn from_vec(a: __m128i) -> Self {
            // SAFETY: AVX2 per the caller.
            unsafe {
                let a16 = _mm256_cvtepi8_epi16(a);
                Self {
                    lo: _mm256_permute2x128_si256::<0x00>(a16, a16),
                    hi: _mm256_permute2x128_si256::<0x11>(a16, a16),
                }
            }
        }

        /// Chunk `j`'s scale vector: `a[2j]` in the 8 low i16, `a[2j + 1]` in the 8 high.
        ///
        /// # Safety
        /// AVX2.
        #[inline(always)]
        pub(super) unsafe fn chunk(self, j: usize) -> __m256i {
            // The byte pair of i16 element `g % 8` of a 128-bit half, as a shuffle index.
            let pair = |g: usize| ((2 * (g % 8)) | ((2 * (g % 8) + 1) << 8)) as i16;
            let src = if j < 4 { self.lo } else { self.hi };
            // SAFETY: AVX2 per the caller.
            unsafe {
                let sel =
                    _mm256_set_m128i(_mm_set1_epi16(pair(2 * j + 1)), _mm_set1_epi16(pair(2 * j)));
                _mm256_shuffle_epi8(src, sel)
            }
        }
    }

    /// The offset lane sums `M` of one (row, token) block pair (see `super::lane_sums`).
    ///
    /// # Safety
    /// AVX2; `m` and `bs` hold the block's groups.
    #[inline(always)]
    unsafe fn offsets<F: FastFormat>(m: &[i16], bs: &[i16]) -> __m256i {
        let groups = F::BLOCK_ELEMS / GROUP;
        // SAFETY: AVX2 per the caller; 16 i16 of `m` and `bs` read only for 16 groups.
        unsafe {
            if !F::HAS_OFFSET {
                _mm256_setzero_si256()
            } else if groups == 16 {
                assert!(m.len() >= 16 && bs.len() >= 16);
                let mv = _mm256_loadu_si256(m.as_ptr().cast::<__m256i>());
                let bv = _mm256_loadu_si256(bs.as_ptr().cast::<__m256i>());
                _mm256_madd_epi16(mv, bv)
            } else {
                let mut o = 0i32;
                for (mv, b) in m.iter().zip(bs).take(groups) {
                    o += *mv as i32 * *b as i32;
                }
                _mm256_setr_epi32(o, 0, 0, 0, 0, 0, 0, 0)
            }
        }
    }

    /// `acc + (fd·f32(big − off))` or `acc + (fd·f32(big) − fm·f32(off))` (as
    /// `super::finish_portable`).
    ///
    /// # Safety
    /// AVX2.
    #[inline(always)]
    unsafe fn finish<F: FastFormat>(
        big: __m256i,
        off: __m256i,
        fd: f32,
        fm: f32,
        acc: __m256,
    ) -> __m256 {
        // SAFETY: AVX2 per the caller.
        unsafe {
            let v = if F::SHARED_D {
                _mm256_mul_ps(
                    _mm256_set1_ps(fd),
                    _mm256_cvtepi32_ps(_mm256_sub_epi32(big, off)),
                )
            } else {
                _mm256_sub_ps(
                    _mm256_mul_ps(_mm256_set1_ps(fd), _mm256_cvtepi32_ps(big)),
                    _mm256_mul_ps(_mm256_set1_ps(fm), _mm256_cvtepi32_ps(off)),
                )
            };
            _mm256_add_ps(acc, v)
        }
    }

    /// One code chunk `cv` against activation chunk `xv` with scale vector `sc` (unit for
    /// 32-element blocks), added to the i32 lanes `big`. With `VNNI`, `vpdpwssd` does the
    /// scale multiply-add and, for unit scales, `vpdpbusd` the whole chunk: the same exact
    /// lane sums (no `maddubs` pair saturates, see the module docs).
    ///
    /// # Safety
    /// AVX2 (and AVX-512 VL + VNNI when `VNNI`); ranges as in [`block`].
    #[inline(always)]
    unsafe fn chunk_dot<F: FastFormat, const VNNI: bool>(
        big: __m256i,
        cv: __m256i,
        xv: __m256i,
        sc: __m256i,
    ) -> __m256i {
        let wide = F::BLOCK_ELEMS / GROUP == 16;
        // SAFETY: AVX2 (and VNNI when `VNNI`) per the caller.
        unsafe {
            let (ca, xs) = if F::SIGNED {
                (_mm256_abs_epi8(cv), _mm256_sign_epi8(xv, cv))
            } else {
                (cv, xv)
            };
            if VNNI && !wide {
                _mm256_dpbusd_epi32(big, ca, xs)
            } else if VNNI {
                _mm256_dpwssd_epi32(big, _mm256_maddubs_epi16(ca, xs), sc)
            } else {
                _mm256_add_epi32(big, _mm256_madd_epi16(_mm256_maddubs_epi16(ca, xs), sc))
            }
        }
    }

    /// [`chunk_dot`] for the unit tests.
    ///
    /// # Safety
    /// As [`chunk_dot`].
    #[cfg(test)]
    #[inline(always)]
    pub(super) unsafe fn chunk_dot_for_test<F: FastFormat, const VNNI: bool>(
        big: __m256i,
        cv: __m256i,
        xv: __m256i,
        sc: __m256i,
    ) -> __m256i {
        // SAFETY: per the caller.
        unsafe { chunk_dot::<F, VNNI>(big, cv, xv, sc) }
    }

    /// See `super::BlockDot::block_direct`.
    ///
    /// # Safety
    /// As [`block`].
    #[inline(always)]
    pub(super) unsafe fn block_direct<F: FastFormat, const VNNI: bool>(
        b: &[u8],
        x: &[i8],
        bs: &[i16],
        dx: f32,
        acc: &mut __m256,
    ) {
        let groups = F::BLOCK_ELEMS / GROUP;
        assert!(x.len() >= F::BLOCK_ELEMS && bs.len() >= groups && b.len() >= F::BLOCK_BYTES);
        // SAFETY: AVX2 (and VNNI when `VNNI`) per the caller; x read at 32j .. 32j + 32 <=
        // BLOCK_ELEMS, bs 16 i16 only for 16 groups (checked above).
        unsafe {
            let cv = F::chunks_avx2(b);
            let mut big = _mm256_setzero_si256();
            let (off, d, dm) = if groups == 16 {
                // Scales in registers (no byte-wise stores to read back).
                let (a, m, d, dm) = F::scales_avx2(b);
                let scv = ScaleVecs::from_vec(a);
                for (j, c) in cv.into_iter().enumerate().take(groups / 2) {
                    let xv = ld(x.as_ptr().add(32 * j).cast::<u8>());
                    big = chunk_dot::<F, VNNI>(big, c, xv, scv.chunk(j));
                }
                let off = if F::HAS_OFFSET {
                    _mm256_madd_epi16(m, _mm256_loadu_si256(bs.as_ptr().cast::<__m256i>()))
                } else {
                    _mm256_setzero_si256()
                };
                (off, d, dm)
            } else {
                let (mut a, mut m) = ([0i8; 16], [0i16; 16]);
                let (d, dm) = F::scales(b, &mut a, &mut m);
                let ones = _mm256_set1_epi16(1);
                for (j, c) in cv.into_iter().enumerate().take(groups / 2) {
                    let xv = ld(x.as_ptr().add(32 * j).cast::<u8>());
                    big = chunk_dot::<F, VNNI>(big, c, xv, ones);
                }
                (offsets::<F>(&m, bs), d, dm)
            };
            *acc = finish::<F>(big, off, dx * d, dx * dm, *acc);
        }
    }

    /// See `super::BlockDot::block`; the integer lanes are `super::lane_sums`'s. Each
    /// 32-byte chunk `j` covers groups `2j` (low 128-bit half of the `maddubs` result) and
    /// `2j + 1` (high half); the per-lane scale vector holds `a[2j]` in the low half and
    /// `a[2j + 1]` in the high half. Inlined into the AVX2-compiled kernel body (a call per
    /// block would cost more than the block).
    ///
    /// # Safety
    /// The CPU must support AVX2. Codes of unsigned formats must be ≤ 127 (`format.rs` keeps
    /// them ≤ 63) and activation codes ≠ −128 (`q8.rs`), so no `maddubs` pair saturates.
    #[inline(always)]
    pub(super) unsafe fn block<F: FastFormat, const N: usize, const T: usize, const VNNI: bool>(
        rows: &RowsBlock<'_, N>,
        toks: &TokensBlock<'_, N, T>,
        acc: &mut [[__m256; N]; T],
    ) {
        let groups = F::BLOCK_ELEMS / GROUP;
        let elems = F::BLOCK_ELEMS;
        let RowsBlock { c, a, m } = *rows;
        let TokensBlock { x, bs, fd, fm } = *toks;
        for t in 0..T {
            assert!(x[t].len() >= elems && bs[t].len() >= groups);
        }
        for k in 0..N {
            assert!(c[k].len() >= elems && a[k].len() >= groups && m[k].len() >= groups);
            // Unit scales of 32-element blocks (see `format.rs`), relied on below.
            debug_assert!(groups == 16 || a[k][..groups].iter().all(|v| *v == 1));
        }
        let chunks = groups / 2;
        // The scales as one 128-bit load (16 groups: the k-quants) or unit (2 groups).
        let wide = groups == 16;
        // SAFETY: AVX2 per the caller. Loads: x[t] and c[k] at 32j .. 32j + 32 <= elems,
        // a[k] 16 bytes and m[k], bs[t] 16 i16 only when `wide` (groups == 16); all checked
        // above.
        unsafe {
            let ones = _mm256_set1_epi16(1);
            // Row by row: the row's scale vectors and each code chunk are formed once and
            // serve the `T` tokens, whose activation chunks are read from L1 (the block's
            // activations of all `T` tokens are 256·T bytes).
            for k in 0..N {
                let scv = if wide {
                    Some(ScaleVecs::new(a[k]))
                } else {
                    None
                };
                let mut big = [_mm256_setzero_si256(); T];
                for j in 0..chunks {
                    let cv = ld(c[k].as_ptr().add(32 * j));
                    // 32-element blocks have unit scales (`FastFormat` invariant).
                    let sc = match scv {
                        Some(v) => v.chunk(j),
                        None => ones,
                    };
                    for t in 0..T {
                        let xv = ld(x[t].as_ptr().add(32 * j).cast::<u8>());
                        big[t] = chunk_dot::<F, VNNI>(big[t], cv, xv, sc);
                    }
                }
                for t in 0..T {
                    let off = offsets::<F>(m[k], bs[t]);
                    acc[t][k] = finish::<F>(big[t], off, fd[t][k], fm[t][k], acc[t][k]);
                }
            }
        }
    }
}

#[cfg(all(test, target_arch = "x86_64"))]
mod tests {
    use std::arch::x86_64::{__m256i, _mm256_loadu_si256, _mm256_storeu_si256};

    use super::super::format::FastFormat;
    use super::super::kquants::Q2K;
    use super::super::legacy::{Q40, Q80};
    use super::avx2::chunk_dot_for_test;

    /// One chunk dot with and without VNNI.
    ///
    /// # Safety
    /// The CPU must support AVX2 and AVX-512 F/BW/VL/VNNI.
    #[target_feature(enable = "avx2,fma,avx512f,avx512bw,avx512vl,avx512vnni")]
    unsafe fn both<F: FastFormat>(
        c: &[u8; 32],
        x: &[i8; 32],
        sc: &[i16; 16],
    ) -> ([i32; 8], [i32; 8]) {
        // SAFETY: per the caller; the arrays hold the 32 bytes read and written.
        unsafe {
            let ld = |p: *const u8| _mm256_loadu_si256(p.cast::<__m256i>());
            let (cv, xv, sv) = (
                ld(c.as_ptr()),
                ld(x.as_ptr().cast()),
                ld(sc.as_ptr().cast()),
            );
            let big = ld([7i32, -3, 0, 1, 2, -9, 100, -100].as_ptr().cast());
            let (mut a, mut b) = ([0i32; 8], [0i32; 8]);
            let va = chunk_dot_for_test::<F, false>(big, cv, xv, sv);
            let vb = chunk_dot_for_test::<F, true>(big, cv, xv, sv);
            _mm256_storeu_si256(a.as_mut_ptr().cast(), va);
            _mm256_storeu_si256(b.as_mut_ptr().cast(), vb);
            (a, b)
        }
    }

    /// The VNNI chunk dot (vpdpwssd for scaled chunks, vpdpbusd for unit-scale and signed
    /// ones) gives the AVX2 one's exact lanes, at the extremes of the code ranges.
    #[test]
    fn vnni_chunk_dot_matches_avx2() {
        if !super::super::super::simd::avx512vnni_or_skip("vnni_chunk_dot_matches_avx2") {
            return;
        }
        let mut s = 0x1234_5678u32;
        let mut next = move || {
            s ^= s << 13;
            s ^= s >> 17;
            s ^= s << 5;
            s
        };
        for case in 0..400 {
            let x: [i8; 32] = std::array::from_fn(|_| {
                match case % 4 {
                    0 => 127,
                    1 => -127,
                    _ => ((next() % 255) as i32 - 127) as i8,
                }
                .clamp(-127, 127)
            });
            let unsigned: [u8; 32] = std::array::from_fn(|_| {
                if case % 3 == 0 {
                    63
                } else {
                    (next() % 64) as u8
                }
            });
            let signed: [u8; 32] =
                std::array::from_fn(|_| if case % 3 == 0 { 0x80 } else { next() as u8 });
            let sc: [i16; 16] = std::array::from_fn(|_| (next() % 128) as i16 - 64);
            let ones = [1i16; 16];
            // SAFETY: VNNI and the rest checked above.
            unsafe {
                let (a, b) = both::<Q2K>(&unsigned, &x, &sc);
                assert_eq!(a, b, "Q2_K case {case}");
                let (a, b) = both::<Q40>(&unsigned, &x, &ones);
                assert_eq!(a, b, "Q4_0 case {case}");
                let (a, b) = both::<Q80>(&signed, &x, &ones);
                assert_eq!(a, b, "Q8_0 case {case}");
            }
        }
    }
}
