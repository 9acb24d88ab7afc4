//! Fused Exact-mode row kernels for the hot weight types (Q4_K, Q6_K, Q8_0): dots straight
//! from the quantized blocks, without forming the dequantized weights `d·sc·q − dmin·m`.
//!
//! Decides: the arithmetic of these types' Exact matmuls. Each weight row is decoded once per
//! call into its *integer* codes (held exactly as f32: `q`, `q − 32`, or the signed byte) plus
//! one f32 scale per group of [`Format::GROUP`] elements (`d·sc`, formed as the dequantizer
//! forms it) and, for formats with minimums, one offset per group (`dmin·m`). The dot of the
//! row with a token's f32 activations `x` is then
//!
//! ```text
//! Σ_g scale[g] · (Σ_{c in g} q[c]·x[c])  −  Σ_g offset[g] · Σ_{c in g} x[c]
//! ```
//!
//! so there is no per-element multiply by the scale and no per-element subtraction. The
//! first sum is `dots.rs`'s [`group_dot`] (whose order of accumulation the fixtures pin);
//! the offset term (a plain sequential sum over groups, with per-token group sums of `x`
//! formed sequentially) is subtracted last. Activations stay f32 (never quantized).
//!
//! Invariance: a result depends only on the row's bytes and the token's activations. The
//! decoded codes are exact (both decoders produce the same values), every row of a
//! [`ROW_TILE`] uses the same operations as a lone row, and tokens are independent, so
//! neither `n_tokens`, nor the thread split, nor the tile position changes a bit. The
//! AVX2 + FMA and portable implementations differ only by the FMA's single rounding.
//!
//! Leaves to `dequant.rs`: exact dequantization (the reference these kernels are tested
//! against, within `FUSED_REL_TOL` in the tests below).

use std::marker::PhantomData;

use super::dots::{group_dot, group_dot4, ROW_TILE};
use super::rows::RowCall;
use super::simd::{dispatch, F32Lanes, IsaKernel, Portable, SimdIsa};
use crate::dequant::{f16_to_f32, scale_min_k4, scales12};

/// A block format the fused kernel decodes.
pub(super) trait Format {
    /// Bytes of one block.
    const BLOCK_BYTES: usize;
    /// Elements of one block (a multiple of [`Format::GROUP`]).
    const BLOCK_ELEMS: usize;
    /// Elements sharing one scale (and offset): a multiple of `simd.rs`'s `LANES`.
    const GROUP: usize;
    /// Whether groups carry an offset (`dmin·m`) to subtract.
    const HAS_MIN: bool;

    /// Decodes one block: `q` gets [`Format::BLOCK_ELEMS`] codes, `scale` and `min` one
    /// value per group (`min` only written when [`Format::HAS_MIN`]).
    fn decode(b: &[u8], q: &mut [f32], scale: &mut [f32], min: &mut [f32]);

    /// [`Format::decode`] with AVX2 intrinsics; must produce identical values.
    ///
    /// # Safety
    /// The CPU must support AVX2.
    #[cfg(target_arch = "x86_64")]
    unsafe fn decode_avx2(b: &[u8], q: &mut [f32], scale: &mut [f32], min: &mut [f32]);
}

/// Q4_K: `d f16; dmin f16; scales[12]; qs[128]`, 8 groups of 32 with offsets.
pub(super) struct Q4K;
impl Format for Q4K {
    const BLOCK_BYTES: usize = 144;
    const BLOCK_ELEMS: usize = 256;
    const GROUP: usize = 32;
    const HAS_MIN: bool = true;

    #[inline(always)]
    fn decode(b: &[u8], q: &mut [f32], scale: &mut [f32], min: &mut [f32]) {
        q4k_scales(b, scale, min);
        for j in 0..8 {
            let shift = 4 * (j % 2);
            for l in 0..32 {
                q[32 * j + l] = ((b[16 + 32 * (j / 2) + l] >> shift) & 0x0F) as f32;
            }
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn decode_avx2(b: &[u8], q: &mut [f32], scale: &mut [f32], min: &mut [f32]) {
        q4k_scales(b, scale, min);
        // SAFETY: the caller guarantees AVX2.
        unsafe { avx2::q4k_codes(b, q) };
    }
}

/// Q4_K's 8 group scales `d·sc` and offsets `dmin·m`, formed as `dequant.rs` forms them.
#[inline(always)]
fn q4k_scales(b: &[u8], scale: &mut [f32], min: &mut [f32]) {
    let d = f16_to_f32([b[0], b[1]]);
    let dmin = f16_to_f32([b[2], b[3]]);
    let s = scales12(b);
    for j in 0..8 {
        let (sc, m) = scale_min_k4(j, &s);
        scale[j] = d * sc as f32;
        min[j] = dmin * m as f32;
    }
}

/// Q6_K: `ql[128]; qh[64]; scales i8[16]; d f16`, 16 groups of 16, codes `q − 32`.
pub(super) struct Q6K;
impl Format for Q6K {
    const BLOCK_BYTES: usize = 210;
    const BLOCK_ELEMS: usize = 256;
    const GROUP: usize = 16;
    const HAS_MIN: bool = false;

    #[inline(always)]
    fn decode(b: &[u8], q: &mut [f32], scale: &mut [f32], _min: &mut [f32]) {
        q6k_scales(b, scale);
        for h in 0..2 {
            for s in 0..4 {
                for l in 0..32 {
                    let lo = (b[64 * h + 32 * (s % 2) + l] >> (4 * (s / 2))) & 0x0F;
                    let hi = (b[128 + 32 * h + l] >> (2 * s)) & 3;
                    q[128 * h + 32 * s + l] = ((lo | (hi << 4)) as i32 - 32) as f32;
                }
            }
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn decode_avx2(b: &[u8], q: &mut [f32], scale: &mut [f32], _min: &mut [f32]) {
        q6k_scales(b, scale);
        // SAFETY: the caller guarantees AVX2.
        unsafe { avx2::q6k_codes(b, q) };
    }
}

/// Q6_K's 16 group scales `d·scales[i]`.
#[inline(always)]
fn q6k_scales(b: &[u8], scale: &mut [f32]) {
    let d = f16_to_f32([b[208], b[209]]);
    for (i, s) in scale.iter_mut().take(16).enumerate() {
        *s = d * (b[192 + i] as i8) as f32;
    }
}

/// Q8_0: `d f16; qs i8[32]`, one group of 32 per block.
pub(super) struct Q80;
impl Format for Q80 {
    const BLOCK_BYTES: usize = 34;
    const BLOCK_ELEMS: usize = 32;
    const GROUP: usize = 32;
    const HAS_MIN: bool = false;

    #[inline(always)]
    fn decode(b: &[u8], q: &mut [f32], scale: &mut [f32], _min: &mut [f32]) {
        scale[0] = f16_to_f32([b[0], b[1]]);
        for j in 0..32 {
            q[j] = (b[2 + j] as i8) as f32;
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn decode_avx2(b: &[u8], q: &mut [f32], scale: &mut [f32], _min: &mut [f32]) {
        scale[0] = f16_to_f32([b[0], b[1]]);
        // SAFETY: the caller guarantees AVX2.
        unsafe { avx2::i8_codes(&b[2..34], &mut q[..32]) };
    }
}

/// The fused row kernel of format `F` (see the module docs), with `isa` where this CPU has
/// it.
pub(crate) fn dot_rows<F: Format>(call: RowCall<'_, '_, '_, [f32]>, isa: SimdIsa) {
    dispatch(isa, Fused::<F>(call, PhantomData));
}

/// [`body`] of `F` as an [`IsaKernel`].
struct Fused<'w, 'o, 'y, F>(RowCall<'w, 'o, 'y, [f32]>, PhantomData<F>);

impl<F: Format> IsaKernel for Fused<'_, '_, '_, F> {
    #[inline(always)]
    fn run_portable(self) {
        body::<F, Portable>(self.0);
    }

    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn run_avx2_fma(self) {
        body::<F, super::simd::Avx2Fma>(self.0);
    }
}

/// The block decoder each implementation uses.
trait Decoder {
    /// Decodes one block of `F` (see [`Format::decode`]).
    fn decode<F: Format>(b: &[u8], q: &mut [f32], scale: &mut [f32], min: &mut [f32]);
}

impl Decoder for Portable {
    #[inline(always)]
    fn decode<F: Format>(b: &[u8], q: &mut [f32], scale: &mut [f32], min: &mut [f32]) {
        F::decode(b, q, scale, min);
    }
}

#[cfg(target_arch = "x86_64")]
impl Decoder for super::simd::Avx2Fma {
    #[inline(always)]
    fn decode<F: Format>(b: &[u8], q: &mut [f32], scale: &mut [f32], min: &mut [f32]) {
        // SAFETY: `Avx2Fma` is only used after AVX2 was detected (see `simd.rs`).
        unsafe { F::decode_avx2(b, q, scale, min) }
    }
}

/// `Σ_g min[g] · xsum[g]`, sequentially: the offset term of formats with minimums.
#[inline(always)]
fn offset_term(min: &[f32], xsum: &[f32]) -> f32 {
    let mut m = 0f32;
    for (a, b) in min.iter().zip(xsum) {
        m += *a * *b;
    }
    m
}

/// The fused row kernel (see the module docs).
#[inline(always)]
fn body<F: Format, S: F32Lanes + Decoder>(call: RowCall<'_, '_, '_, [f32]>) {
    let RowCall {
        w,
        rows,
        x,
        n_tokens,
        out,
    } = call;
    let cols = w.cols;
    let row_bytes = w.row_bytes;
    let groups = cols / F::GROUP;
    // `QMatrix::new` accepted `cols` for this type, so rows are whole blocks; say so loudly
    // if a caller ever breaks that (an invariant, not data).
    assert!(
        cols / F::BLOCK_ELEMS * F::BLOCK_ELEMS == cols
            && row_bytes == cols / F::BLOCK_ELEMS * F::BLOCK_BYTES,
        "fused kernel: row of {cols} elements is not whole blocks"
    );

    // Per-token group sums of x, for the offset term (sequential sums: independent of the
    // call's shape).
    let xsum: Vec<f32> = if F::HAS_MIN {
        x[..n_tokens * cols]
            .chunks_exact(F::GROUP)
            .map(|g| {
                let mut s = 0f32;
                for v in g {
                    s += *v;
                }
                s
            })
            .collect()
    } else {
        Vec::new()
    };

    let mut q = vec![0f32; ROW_TILE * cols];
    let mut scale = vec![0f32; ROW_TILE * groups];
    let mut min = vec![0f32; if F::HAS_MIN { ROW_TILE * groups } else { 0 }];
    let gpb = F::BLOCK_ELEMS / F::GROUP;

    let mut r = rows.start;
    while r < rows.end {
        let n = ROW_TILE.min(rows.end - r);
        for k in 0..n {
            let src = w.rows(r + k, 1);
            let qk = &mut q[k * cols..(k + 1) * cols];
            let sk = &mut scale[k * groups..(k + 1) * groups];
            let blocks = src
                .chunks_exact(F::BLOCK_BYTES)
                .zip(qk.chunks_exact_mut(F::BLOCK_ELEMS))
                .zip(sk.chunks_exact_mut(gpb));
            if F::HAS_MIN {
                let mk = &mut min[k * groups..(k + 1) * groups];
                for (((b, qb), sb), mb) in blocks.zip(mk.chunks_exact_mut(gpb)) {
                    S::decode::<F>(b, qb, sb, mb);
                }
            } else {
                for ((b, qb), sb) in blocks {
                    S::decode::<F>(b, qb, sb, &mut []);
                }
            }
        }
        let i = r - rows.start;
        for (t, o) in out.iter_mut().enumerate().take(n_tokens) {
            let xt = &x[t * cols..(t + 1) * cols];
            let mut d = [0f32; ROW_TILE];
            if n == ROW_TILE {
                let qs: [&[f32]; ROW_TILE] = std::array::from_fn(|k| &q[k * cols..(k + 1) * cols]);
                let ss: [&[f32]; ROW_TILE] =
                    std::array::from_fn(|k| &scale[k * groups..(k + 1) * groups]);
                d = match F::GROUP {
                    16 => group_dot4::<S, 16>(qs, ss, xt),
                    _ => group_dot4::<S, 32>(qs, ss, xt),
                };
            } else {
                for (k, dk) in d.iter_mut().enumerate().take(n) {
                    let (qk, sk) = (
                        &q[k * cols..(k + 1) * cols],
                        &scale[k * groups..(k + 1) * groups],
                    );
                    *dk = match F::GROUP {
                        16 => group_dot::<S, 16>(qk, sk, xt),
                        _ => group_dot::<S, 32>(qk, sk, xt),
                    };
                }
            }
            if F::HAS_MIN {
                let xs = &xsum[t * groups..(t + 1) * groups];
                for (k, dk) in d.iter_mut().enumerate().take(n) {
                    *dk -= offset_term(&min[k * groups..(k + 1) * groups], xs);
                }
            }
            o[i..i + n].copy_from_slice(&d[..n]);
        }
        r += n;
    }
}

/// AVX2 block decoders (codes as f32).
#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::{
        __m128i, __m256i, _mm256_and_si256, _mm256_castsi256_si128, _mm256_cvtepi32_ps,
        _mm256_cvtepi8_epi32, _mm256_cvtepu8_epi32, _mm256_extracti128_si256, _mm256_loadu_si256,
        _mm256_or_si256, _mm256_set1_epi8, _mm256_slli_epi16, _mm256_srli_epi16, _mm256_storeu_ps,
        _mm256_sub_epi8, _mm_srli_si128,
    };

    /// Stores the 32 bytes of `v`, zero- (`SIGNED = false`) or sign-extended, as f32 at
    /// `dst[0..32]`.
    ///
    /// # Safety
    /// The CPU must support AVX2; `dst` must be valid for 32 f32 writes.
    #[inline(always)]
    unsafe fn store_bytes<const SIGNED: bool>(v: __m256i, dst: *mut f32) {
        // SAFETY: AVX2 is guaranteed by the caller; each store writes 8 f32 at
        // dst + 0/8/16/24, all within the 32 the caller guarantees.
        unsafe {
            let halves = [_mm256_castsi256_si128(v), _mm256_extracti128_si256::<1>(v)];
            for (h, half) in halves.into_iter().enumerate() {
                let parts: [__m128i; 2] = [half, _mm_srli_si128::<8>(half)];
                for (p, part) in parts.into_iter().enumerate() {
                    let wide = if SIGNED {
                        _mm256_cvtepi8_epi32(part)
                    } else {
                        _mm256_cvtepu8_epi32(part)
                    };
                    _mm256_storeu_ps(dst.add(16 * h + 8 * p), _mm256_cvtepi32_ps(wide));
                }
            }
        }
    }

    /// Q4_K's 256 codes: low nibbles of `qs[32p..]` are group `2p`, high nibbles `2p + 1`.
    ///
    /// # Safety
    /// The CPU must support AVX2.
    #[inline(always)]
    pub(super) unsafe fn q4k_codes(b: &[u8], q: &mut [f32]) {
        assert!(b.len() >= 144 && q.len() >= 256);
        // SAFETY: AVX2 per the caller; loads read b[16 + 32p .. 48 + 32p] ⊆ b[..144], stores
        // write q[64p .. 64p + 64] ⊆ q[..256] (checked above).
        unsafe {
            let mask = _mm256_set1_epi8(0x0F);
            for p in 0..4 {
                let v = _mm256_loadu_si256(b.as_ptr().add(16 + 32 * p).cast::<__m256i>());
                let lo = _mm256_and_si256(v, mask);
                let hi = _mm256_and_si256(_mm256_srli_epi16::<4>(v), mask);
                store_bytes::<false>(lo, q.as_mut_ptr().add(64 * p));
                store_bytes::<false>(hi, q.as_mut_ptr().add(64 * p + 32));
            }
        }
    }

    /// Q6_K's 256 codes `(lo | hi << 4) − 32` (layout as in `dequant/kquants.rs`).
    ///
    /// # Safety
    /// The CPU must support AVX2.
    #[inline(always)]
    pub(super) unsafe fn q6k_codes(b: &[u8], q: &mut [f32]) {
        assert!(b.len() >= 210 && q.len() >= 256);
        // SAFETY: AVX2 per the caller; loads read b[64h .. 64h + 64] ⊆ b[..128] and
        // b[128 + 32h .. 160 + 32h] ⊆ b[..192]; stores write q[128h + 32s .. + 32] ⊆ q[..256].
        unsafe {
            let m4 = _mm256_set1_epi8(0x0F);
            let m2 = _mm256_set1_epi8(0x03);
            let off = _mm256_set1_epi8(32);
            for h in 0..2 {
                let qa = _mm256_loadu_si256(b.as_ptr().add(64 * h).cast::<__m256i>());
                let qb = _mm256_loadu_si256(b.as_ptr().add(64 * h + 32).cast::<__m256i>());
                let qh = _mm256_loadu_si256(b.as_ptr().add(128 + 32 * h).cast::<__m256i>());
                let lows = [
                    _mm256_and_si256(qa, m4),
                    _mm256_and_si256(qb, m4),
                    _mm256_and_si256(_mm256_srli_epi16::<4>(qa), m4),
                    _mm256_and_si256(_mm256_srli_epi16::<4>(qb), m4),
                ];
                let highs = [
                    _mm256_and_si256(qh, m2),
                    _mm256_and_si256(_mm256_srli_epi16::<2>(qh), m2),
                    _mm256_and_si256(_mm256_srli_epi16::<4>(qh), m2),
                    _mm256_and_si256(_mm256_srli_epi16::<6>(qh), m2),
                ];
                for (s, (lo, hi)) in lows.into_iter().zip(highs).enumerate() {
                    // hi ≤ 3, so the 16-bit shift keeps each byte's bits inside it.
                    let v = _mm256_or_si256(lo, _mm256_slli_epi16::<4>(hi));
                    let v = _mm256_sub_epi8(v, off);
                    store_bytes::<true>(v, q.as_mut_ptr().add(128 * h + 32 * s));
                }
            }
        }
    }

    /// 32 signed bytes as f32.
    ///
    /// # Safety
    /// The CPU must support AVX2.
    #[inline(always)]
    pub(super) unsafe fn i8_codes(b: &[u8], q: &mut [f32]) {
        assert!(b.len() >= 32 && q.len() >= 32);
        // SAFETY: AVX2 per the caller; 32 bytes read from b, 32 f32 written to q (checked).
        unsafe {
            let v = _mm256_loadu_si256(b.as_ptr().cast::<__m256i>());
            store_bytes::<true>(v, q.as_mut_ptr());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::rows::WeightRows;
    use super::super::test_data::{bytes as test_bytes, data};
    use super::*;
    use crate::{dequantize_row, quantize_row, GgmlType};

    /// Runs the fused body of `ty` with `S` over all `rows` of `w`.
    fn run<S: F32Lanes + Decoder>(
        w: WeightRows<'_>,
        rows: usize,
        x: &[f32],
        out: &mut [&mut [f32]],
    ) {
        let call = RowCall {
            w,
            rows: 0..rows,
            x,
            n_tokens: out.len(),
            out,
        };
        match w.ty {
            GgmlType::Q4_K => body::<Q4K, S>(call),
            GgmlType::Q6_K => body::<Q6K, S>(call),
            _ => body::<Q80, S>(call),
        }
    }

    /// Allowed `|fused − dequantize-then-dot|` as a fraction of `Σ_c |W[r,c]·x[c]|` plus
    /// `Σ_g |dmin·m|·|Σ_{c in g} x[c]|`-scale terms: both are f32 sums over `cols` products
    /// in different orders, so their distance is a few f32 roundings of the magnitude.
    const FUSED_REL_TOL: f64 = 1e-5;

    /// For each fused type: every row (tile rows and tail rows) and token of the fused
    /// kernel, both implementations, against dequantize-then-dot in f64.
    fn cross<S: F32Lanes + Decoder>(name: &str) {
        let (rows, cols, n_tokens) = (7usize, 512usize, 3usize);
        for ty in [GgmlType::Q4_K, GgmlType::Q6_K, GgmlType::Q8_0] {
            let rb = ty.row_bytes(cols).expect("row bytes");
            let src = data(rows * cols, 3);
            let mut bytes = vec![0u8; rows * rb];
            for (s, d) in src.chunks(cols).zip(bytes.chunks_mut(rb)) {
                quantize_row(ty, s, d).expect("quantize");
            }
            let m = WeightRows {
                ty,
                cols,
                row_bytes: rb,
                data: &bytes,
            };
            let x = data(n_tokens * cols, 9);
            let mut y = vec![f32::NAN; n_tokens * rows];
            {
                let mut outs: Vec<&mut [f32]> = y.chunks_mut(rows).collect();
                run::<S>(m, rows, &x, &mut outs);
            }
            let mut wr = vec![0f32; cols];
            for r in 0..rows {
                dequantize_row(ty, m.rows(r, 1), &mut wr).expect("dequantize");
                for t in 0..n_tokens {
                    let xt = &x[t * cols..(t + 1) * cols];
                    let want: f64 = wr.iter().zip(xt).map(|(a, b)| *a as f64 * *b as f64).sum();
                    // Magnitude: |w·x| products, plus the |offset|·|x| products the Q4_K
                    // split subtracts separately (bounded by 16·|w|max-scale terms; use
                    // Σ|w|·|x| + Σ|x|·max|w| as a generous common scale).
                    let wmax = wr.iter().fold(0f32, |a, b| a.max(b.abs())) as f64;
                    let mag: f64 = wr
                        .iter()
                        .zip(xt)
                        .map(|(a, b)| (*a as f64 * *b as f64).abs() + wmax * (*b as f64).abs())
                        .sum();
                    let got = y[t * rows + r] as f64;
                    assert!(
                        (got - want).abs() <= FUSED_REL_TOL * mag,
                        "{name} {ty:?} row {r} token {t}: {got} vs {want}"
                    );
                }
            }
            // Batch invariance: token 1 alone equals token 1 of the batch, bit for bit.
            let mut one = vec![f32::NAN; rows];
            {
                let mut outs: Vec<&mut [f32]> = vec![&mut one[..]];
                run::<S>(m, rows, &x[cols..2 * cols], &mut outs);
            }
            for r in 0..rows {
                assert_eq!(
                    one[r].to_bits(),
                    y[rows + r].to_bits(),
                    "{name} {ty:?} row {r}"
                );
            }
        }
    }

    #[test]
    fn portable_fused_matches_dequantized() {
        cross::<Portable>("portable");
    }

    #[test]
    #[cfg(target_arch = "x86_64")]
    fn avx2_fused_matches_dequantized() {
        if !super::super::simd::avx2_or_skip("avx2_fused_matches_dequantized") {
            return;
        }
        cross::<super::super::simd::Avx2Fma>("avx2+fma");
    }

    /// The AVX2 decoders produce exactly the portable decoders' codes and scales.
    #[test]
    #[cfg(target_arch = "x86_64")]
    fn avx2_decoders_exact() {
        if !super::super::simd::avx2_or_skip("avx2_decoders_exact") {
            return;
        }
        fn check<F: Format>() {
            for seed in 0..8u32 {
                let b = test_bytes(F::BLOCK_BYTES, seed);
                let g = F::BLOCK_ELEMS / F::GROUP;
                let (mut q1, mut s1, mut m1) =
                    (vec![0f32; F::BLOCK_ELEMS], vec![0f32; g], vec![0f32; g]);
                let (mut q2, mut s2, mut m2) = (q1.clone(), s1.clone(), m1.clone());
                F::decode(&b, &mut q1, &mut s1, &mut m1);
                // SAFETY: AVX2 checked above.
                unsafe { F::decode_avx2(&b, &mut q2, &mut s2, &mut m2) };
                assert_eq!(q1, q2);
                assert_eq!(
                    s1.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                    s2.iter().map(|v| v.to_bits()).collect::<Vec<_>>()
                );
                assert_eq!(m1, m2);
            }
        }
        check::<Q4K>();
        check::<Q6K>();
        check::<Q80>();
    }
}
