//! Activation quantization for the Fast numeric mode: each token's row of f32 activations is
//! cut into blocks of the weight type's block size (256 for the k-quants and IQ4_XS, as
//! ggml's `block_q8_K`; 32 for the legacy types, Q8_0-style) and every block is stored as
//! signed bytes with one f32 scale and the sums of each 16 bytes.
//!
//! Decides: the rounding of activations. A block with largest magnitude `amax` gets the
//! scale `d = amax / 127` and the codes `q = round_half_even(x · 127 / amax)`, clamped to
//! `[-127, 127]` (never −128, which the AVX2 sign trick of `fast.rs` relies on); so each
//! activation is represented within `d / 2` (plus f32 rounding of the scale). An all-zero
//! block, or one so small that `127 / amax` overflows, gets `d = 0` (and zero codes); a
//! block holding a NaN or infinity gets `d = NaN`, so the products that read it are NaN, as
//! the exact path's would be.
//!
//! The quantizer is plain Rust, with an AVX2 twin (`avx2` below) that produces the same
//! bytes (the same f32 multiply, round-to-nearest-even, clamp and scale), so the portable
//! and SIMD kernels see the same activations.

use super::simd::SimdIsa;

/// Largest code magnitude of a quantized activation.
pub(crate) const Q8_MAX: f32 = 127.0;

/// Elements per partial sum (`bsums`).
pub(crate) const BSUM_ELEMS: usize = 16;

/// Quantized activations of `n_tokens` tokens of `cols` elements each.
#[derive(Debug)]
pub(crate) struct QActs {
    /// Elements per block (one scale each).
    pub(crate) block: usize,
    /// Elements per token.
    pub(crate) cols: usize,
    /// Codes, `n_tokens · cols`.
    qs: Vec<i8>,
    /// Block scales, `n_tokens · cols / block`.
    d: Vec<f32>,
    /// Sums of each 16 codes, `n_tokens · cols / 16`.
    bsums: Vec<i16>,
}

impl QActs {
    /// Quantizes `x` (`n_tokens · cols`, `cols` a multiple of `block`, `block` a multiple of
    /// 32): the caller (`QMatrix::matmul`) checked the lengths. `isa` picks the
    /// implementation (all give the same bytes).
    pub(crate) fn quantize(
        x: &[f32],
        n_tokens: usize,
        cols: usize,
        block: usize,
        isa: SimdIsa,
    ) -> Self {
        debug_assert!(block.is_multiple_of(BSUM_ELEMS) && cols.is_multiple_of(block));
        let n = n_tokens * cols;
        let mut qs = vec![0i8; n];
        let mut d = vec![0f32; n / block];
        let mut bsums = vec![0i16; n / BSUM_ELEMS];
        #[cfg(target_arch = "x86_64")]
        if isa != SimdIsa::Portable && isa.available() && block.is_multiple_of(32) {
            // SAFETY: AVX2 is available (every non-portable implementation has it).
            unsafe { avx2::quantize_all(&x[..n], block, &mut qs, &mut d, &mut bsums) };
            return Self {
                block,
                cols,
                qs,
                d,
                bsums,
            };
        }
        let _ = isa;
        for ((xb, qb), db) in x[..n]
            .chunks_exact(block)
            .zip(qs.chunks_exact_mut(block))
            .zip(d.iter_mut())
        {
            *db = quantize_block(xb, qb);
        }
        for (q, s) in qs.chunks_exact(BSUM_ELEMS).zip(bsums.iter_mut()) {
            // |Σ| ≤ 16 · 127 = 2032 fits i16.
            *s = q.iter().map(|v| *v as i16).sum();
        }
        Self {
            block,
            cols,
            qs,
            d,
            bsums,
        }
    }

    /// Token `t`'s codes, block scales and 16-sums.
    #[inline(always)]
    pub(crate) fn token(&self, t: usize) -> (&[i8], &[f32], &[i16]) {
        let (c, b) = (self.cols, self.cols / self.block);
        let s = self.cols / BSUM_ELEMS;
        (
            &self.qs[t * c..(t + 1) * c],
            &self.d[t * b..(t + 1) * b],
            &self.bsums[t * s..(t + 1) * s],
        )
    }
}

/// Quantizes one block into `q`, returning its scale (see the module docs).
#[inline(always)]
fn quantize_block(x: &[f32], q: &mut [i8]) -> f32 {
    let mut amax = 0f32;
    let mut finite = true;
    for v in x {
        finite &= v.is_finite();
        amax = amax.max(v.abs());
    }
    if !finite {
        q.fill(0);
        return f32::NAN;
    }
    if amax == 0.0 {
        q.fill(0);
        return 0.0;
    }
    let iscale = Q8_MAX / amax;
    if !iscale.is_finite() {
        // amax below ~3.7e-37: the scale would be 0 anyway (1 / ∞), so the block
        // contributes nothing; zero codes keep both implementations' bytes equal.
        q.fill(0);
        return 0.0;
    }
    for (qv, v) in q.iter_mut().zip(x) {
        // |v · iscale| ≤ 127 up to one rounding; the clamp keeps −128 out.
        *qv = round_half_even(*v * iscale).clamp(-127, 127) as i8;
    }
    1.0 / iscale
}

/// `v` rounded to the nearest integer, ties to even, for `|v| < 2^22`: adding
/// `1.5 · 2^23` leaves the integer in the low mantissa bits (ggml's `nearest_int`; the same
/// value as `f32::round_ties_even`, which without SSE4.1 is a libm call per element).
#[inline(always)]
fn round_half_even(v: f32) -> i32 {
    const MAGIC: f32 = 12_582_912.0; // 1.5 · 2^23
    ((v + MAGIC).to_bits() & 0x007F_FFFF) as i32 - 0x0040_0000
}

/// The AVX2 quantizer: [`quantize_block`] and the 16-sums, 32 values at a time.
#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::{
        __m256, __m256i, _mm256_and_si256, _mm256_castps_si256, _mm256_castsi256_si128,
        _mm256_cvtps_epi32, _mm256_extracti128_si256, _mm256_loadu_ps, _mm256_madd_epi16,
        _mm256_maddubs_epi16, _mm256_max_epi32, _mm256_min_epi32, _mm256_mul_ps,
        _mm256_packs_epi16, _mm256_packs_epi32, _mm256_permutevar8x32_epi32, _mm256_set1_epi32,
        _mm256_set1_epi8, _mm256_set1_ps, _mm256_setr_epi32, _mm256_storeu_si256,
        _mm_cvtsi128_si32, _mm_max_epi32, _mm_shuffle_epi32, _mm_storeu_si128,
    };

    use super::{BSUM_ELEMS, Q8_MAX};

    /// Every `block` of `x` into `qs`, `d` and `bsums` (as the portable loop).
    ///
    /// # Safety
    /// The CPU must support AVX2; `block` is a multiple of 32 and the outputs are sized for
    /// `x` (as `QActs::quantize` allocates them).
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn quantize_all(
        x: &[f32],
        block: usize,
        qs: &mut [i8],
        d: &mut [f32],
        bsums: &mut [i16],
    ) {
        assert!(block.is_multiple_of(32) && x.len() == qs.len());
        assert!(d.len() * block == x.len() && bsums.len() * BSUM_ELEMS == x.len());
        for (bi, (xb, qb)) in x
            .chunks_exact(block)
            .zip(qs.chunks_exact_mut(block))
            .enumerate()
        {
            // SAFETY: AVX2 per the caller; every load and store below is within `xb`, `qb`
            // (32 elements at 32-element steps of a multiple-of-32 block) or `bsums` (two
            // per 32 elements).
            unsafe {
                // The largest magnitude as bits: for non-negative floats integer order is
                // float order, and any NaN or infinity has bits ≥ 0x7F80_0000.
                let abs = _mm256_set1_epi32(0x7FFF_FFFF);
                let mut mx = _mm256_set1_epi32(0);
                for c in xb.chunks_exact(8) {
                    let v = _mm256_castps_si256(_mm256_loadu_ps(c.as_ptr()));
                    mx = _mm256_max_epi32(mx, _mm256_and_si256(v, abs));
                }
                let m4 = _mm_max_epi32(
                    _mm256_castsi256_si128(mx),
                    _mm256_extracti128_si256::<1>(mx),
                );
                let m2 = _mm_max_epi32(m4, _mm_shuffle_epi32::<0b01_00_11_10>(m4));
                let m1 = _mm_max_epi32(m2, _mm_shuffle_epi32::<0b10_11_00_01>(m2));
                let bits = _mm_cvtsi128_si32(m1) as u32;
                if bits >= 0x7F80_0000 {
                    qb.fill(0);
                    d[bi] = f32::NAN;
                } else if bits == 0 {
                    qb.fill(0);
                    d[bi] = 0.0;
                } else if !(Q8_MAX / f32::from_bits(bits)).is_finite() {
                    // As the portable quantizer: a scale of 1 / ∞ = 0.
                    qb.fill(0);
                    d[bi] = 0.0;
                } else {
                    let iscale = Q8_MAX / f32::from_bits(bits);
                    let is = _mm256_set1_ps(iscale);
                    let (lo, hi) = (_mm256_set1_epi32(-127), _mm256_set1_epi32(127));
                    let q = |v: __m256| -> __m256i {
                        // Round to nearest even (the default MXCSR mode), then clamp.
                        _mm256_min_epi32(
                            _mm256_max_epi32(_mm256_cvtps_epi32(_mm256_mul_ps(v, is)), lo),
                            hi,
                        )
                    };
                    // packs interleave 128-bit halves; this permutation restores order.
                    let order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
                    for (xc, qc) in xb.chunks_exact(32).zip(qb.chunks_exact_mut(32)) {
                        let p = xc.as_ptr();
                        let a = q(_mm256_loadu_ps(p));
                        let b = q(_mm256_loadu_ps(p.add(8)));
                        let c = q(_mm256_loadu_ps(p.add(16)));
                        let e = q(_mm256_loadu_ps(p.add(24)));
                        let w =
                            _mm256_packs_epi16(_mm256_packs_epi32(a, b), _mm256_packs_epi32(c, e));
                        let w = _mm256_permutevar8x32_epi32(w, order);
                        _mm256_storeu_si256(qc.as_mut_ptr().cast::<__m256i>(), w);
                    }
                    d[bi] = 1.0 / iscale;
                }
            }
        }
        // The 16-sums, 32 codes (two sums) at a time.
        // SAFETY: AVX2 per the caller; loads 32 codes and stores 2 sums per step, within
        // `qs` and `bsums` (sized as checked above).
        unsafe {
            let ones8 = _mm256_set1_epi8(1);
            let ones16 = std::arch::x86_64::_mm256_set1_epi16(1);
            for (qc, sc) in qs.chunks_exact(32).zip(bsums.chunks_exact_mut(2)) {
                let v = std::arch::x86_64::_mm256_loadu_si256(qc.as_ptr().cast::<__m256i>());
                // u8 ones × i8 codes: pair sums (exact), then sums of 4 per i32 lane.
                let s4 = _mm256_madd_epi16(_mm256_maddubs_epi16(ones8, v), ones16);
                let mut l = [0i32; 8];
                _mm_storeu_si128(l.as_mut_ptr().cast(), _mm256_castsi256_si128(s4));
                _mm_storeu_si128(
                    l.as_mut_ptr().add(4).cast(),
                    _mm256_extracti128_si256::<1>(s4),
                );
                sc[0] = (l[0] + l[1] + l[2] + l[3]) as i16;
                sc[1] = (l[4] + l[5] + l[6] + l[7]) as i16;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The AVX2 quantizer gives the portable one's bytes, scales and sums, including for
    /// zero, NaN, infinite, tiny and rounding-tie blocks.
    #[test]
    #[cfg(target_arch = "x86_64")]
    fn avx2_quantizer_matches_portable() {
        if !super::super::simd::avx2_or_skip("avx2_quantizer_matches_portable") {
            return;
        }
        for block in [32usize, 256] {
            let cols = 4 * block;
            let mut x: Vec<f32> = (0..3 * cols)
                .map(|i| ((i as u64 * 2_654_435_761 % 10_007) as f32 - 5003.0) * 1.7e-3)
                .collect();
            x[..block].fill(0.0);
            x[block + 5] = f32::NAN;
            x[2 * block + 7] = f32::NEG_INFINITY;
            for v in &mut x[3 * block..4 * block] {
                *v *= 1e-40;
            }
            // Exact ties after scaling: amax 127 makes iscale 1.
            x[4 * block] = 127.0;
            for (i, v) in x[4 * block + 1..5 * block].iter_mut().enumerate() {
                *v = (i as f32 - 60.0) + 0.5;
            }
            let p = QActs::quantize(&x, 3, cols, block, SimdIsa::Portable);
            let a = QActs::quantize(&x, 3, cols, block, SimdIsa::Avx2);
            assert_eq!(p.qs, a.qs, "block {block}");
            assert_eq!(p.bsums, a.bsums, "block {block}");
            assert_eq!(p.d.len(), a.d.len());
            for (u, v) in p.d.iter().zip(&a.d) {
                assert!(
                    u.to_bits() == v.to_bits() || (u.is_nan() && v.is_nan()),
                    "{u} vs {v}"
                );
            }
        }
    }

    #[test]
    fn codes_within_half_a_step() {
        let x: Vec<f32> = (0..512)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) * 0.013)
            .collect();
        let a = QActs::quantize(&x, 2, 256, 32, SimdIsa::Portable);
        for t in 0..2 {
            let (q, d, bs) = a.token(t);
            for (i, v) in x[t * 256..(t + 1) * 256].iter().enumerate() {
                let back = q[i] as f32 * d[i / 32];
                assert!((back - v).abs() <= d[i / 32] * 0.5 * (1.0 + 1e-5), "{i}");
                assert!(q[i] != -128);
            }
            for (g, s) in bs.iter().enumerate() {
                let want: i16 = q[16 * g..16 * (g + 1)].iter().map(|v| *v as i16).sum();
                assert_eq!(*s, want);
            }
        }
    }

    #[test]
    fn rounding_is_round_ties_even() {
        for i in -130_000..130_000 {
            let v = i as f32 * 0.001_05;
            assert_eq!(round_half_even(v), v.round_ties_even() as i32, "{v}");
        }
        for v in [
            0.5f32, 1.5, 2.5, -0.5, -1.5, -2.5, 126.5, -126.5, 127.0, -127.0,
        ] {
            assert_eq!(round_half_even(v), v.round_ties_even() as i32, "{v}");
        }
    }

    #[test]
    fn zero_and_nonfinite_blocks() {
        let mut x = vec![0f32; 64];
        x[40] = f32::NAN;
        let a = QActs::quantize(&x, 1, 64, 32, SimdIsa::Portable);
        let (_, d, _) = a.token(0);
        assert_eq!(d[0], 0.0);
        assert!(d[1].is_nan());
    }
}
