//! Activation quantization for the Fast numeric mode: each token's row of f32 activations is
//! cut into blocks of the weight type's block size (256 for the k-quants and IQ4_XS, as
//! ggml's `block_q8_K`; 32 for the legacy types, Q8_0-style) and every block is stored as
//! signed bytes with one f32 scale and the sums of each 16 bytes.
//!
//! Decides: the rounding of activations. A block with largest magnitude `amax` gets the
//! scale `d = amax / 127` and the codes `q = round_half_even(x · 127 / amax)`, clamped to
//! `[-127, 127]` (never −128, which the AVX2 sign trick of `fast.rs` relies on); so each
//! activation is represented within `d / 2` (plus f32 rounding of the scale). An all-zero
//! block gets `d = 0`; a block holding a NaN or infinity gets `d = NaN`, so the products
//! that read it are NaN, as the exact path's would be.
//!
//! The quantizer is plain Rust shared by every implementation of the integer dot products,
//! so the portable and AVX2 kernels see the same bytes.

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
    /// 16): the caller (`QMatrix::matmul`) checked the lengths.
    pub(crate) fn quantize(x: &[f32], n_tokens: usize, cols: usize, block: usize) -> Self {
        debug_assert!(block.is_multiple_of(BSUM_ELEMS) && cols.is_multiple_of(block));
        let n = n_tokens * cols;
        let mut qs = vec![0i8; n];
        let mut d = vec![0f32; n / block];
        let mut bsums = vec![0i16; n / BSUM_ELEMS];
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_within_half_a_step() {
        let x: Vec<f32> = (0..512)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) * 0.013)
            .collect();
        let a = QActs::quantize(&x, 2, 256, 32);
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
        let a = QActs::quantize(&x, 1, 64, 32);
        let (_, d, _) = a.token(0);
        assert_eq!(d[0], 0.0);
        assert!(d[1].is_nan());
    }
}
