//! Row kernels: the per-type seam where `QMatrix::matmul` does its arithmetic.
//!
//! A row kernel computes, for a contiguous range of weight rows and every token,
//! `out[t][i] = Σ_c W[rows.start + i, c] · x[t · cols + c]`. Q4_K, Q6_K and Q8_0 use the
//! fused kernels of `fused.rs` (dots from the integer codes with per-group scales); every
//! other type uses [`dot_rows_dequantized`]: it dequantizes [`ROW_TILE`] rows at a time into
//! a scratch buffer (exactly, see `dequant.rs`) and dots them against each token with 8
//! independent f32 accumulators per row, so one read of a token's activations serves the
//! whole tile. Another fused kernel plugs in by returning it from [`dot_rows_fn`] for its
//! type.
//!
//! [`fast_rows_fn`] is the same seam for [`crate::NumericMode::Fast`]: the integer kernels of
//! `fast.rs` over int8-quantized activations, for every block format.
//!
//! Two dot-product implementations behind [`DotKernel`]: portable Rust (vectorized by LLVM
//! at opt-level 3; the workspace's opt-level-2 dev/test profiles leave it scalar) and, on
//! x86-64 with AVX2 and FMA detected at run time, intrinsics with fused multiply-adds (the
//! whole row kernel, dequantization included, is compiled for those features). Both use the
//! same lane assignment and reduction order, so they differ only by the FMA's single
//! rounding; within one implementation `dot4` equals `dot` bit for bit, so the thread split
//! never changes a result.

use std::ops::Range;

use super::QMatrix;
use crate::dequant::dequantize_unchecked;
use crate::GgmlType;

/// Weight rows dequantized and dotted together.
pub(crate) const ROW_TILE: usize = 4;

/// Independent accumulators per dot product (lanes LLVM vectorizes over).
const LANES: usize = 8;

/// A row kernel: `out[t][i] = Σ_c W[rows.start + i, c] · x[t·cols + c]` for `i < rows.len()`,
/// `t < n_tokens`; `out` has `n_tokens` slices of at least `rows.len()` elements.
pub(crate) type DotRowsFn = fn(&QMatrix<'_>, Range<usize>, &[f32], usize, &mut [&mut [f32]]);

/// The row kernel for weights of type `ty`.
pub(crate) fn dot_rows_fn(ty: GgmlType) -> DotRowsFn {
    // The hot types have fused kernels (`fused.rs`); the rest go through exact
    // dequantization.
    match ty {
        GgmlType::Q4_K => super::fused::dot_rows::<super::fused::Q4K>,
        GgmlType::Q6_K => super::fused::dot_rows::<super::fused::Q6K>,
        GgmlType::Q8_0 => super::fused::dot_rows::<super::fused::Q80>,
        GgmlType::F32
        | GgmlType::F16
        | GgmlType::BF16
        | GgmlType::Q4_0
        | GgmlType::Q4_1
        | GgmlType::Q5_0
        | GgmlType::Q5_1
        | GgmlType::Q2_K
        | GgmlType::Q3_K
        | GgmlType::Q5_K
        | GgmlType::IQ4_NL
        | GgmlType::IQ4_XS => dot_rows_dequantized,
    }
}

/// The Fast-mode row kernel for weights of type `ty` (integer dots over int8-quantized
/// activations, `fast.rs`), or `None` where only the exact kernel exists (F32, F16, BF16).
pub(crate) fn fast_rows_fn(ty: GgmlType) -> Option<super::fast::FastRowsFn> {
    use super::fast;
    Some(match ty {
        GgmlType::Q2_K => fast::dot_rows::<fast::Q2K>,
        GgmlType::Q3_K => fast::dot_rows::<fast::Q3K>,
        GgmlType::Q4_K => fast::dot_rows::<fast::Q4K>,
        GgmlType::Q5_K => fast::dot_rows::<fast::Q5K>,
        GgmlType::Q6_K => fast::dot_rows::<fast::Q6K>,
        GgmlType::Q8_0 => fast::dot_rows::<fast::Q80>,
        GgmlType::Q4_0 => fast::dot_rows::<fast::Q40>,
        GgmlType::Q4_1 => fast::dot_rows::<fast::Q41>,
        GgmlType::Q5_0 => fast::dot_rows::<fast::Q50>,
        GgmlType::Q5_1 => fast::dot_rows::<fast::Q51>,
        GgmlType::IQ4_NL => fast::dot_rows::<fast::Iq4Nl>,
        GgmlType::IQ4_XS => fast::dot_rows::<fast::Iq4Xs>,
        GgmlType::F32 | GgmlType::F16 | GgmlType::BF16 => return None,
    })
}

/// The dot products a row kernel body is built from.
trait DotKernel {
    /// `Σ a[i]·b[i]` over `min(a.len(), b.len())`.
    fn dot(a: &[f32], b: &[f32]) -> f32;
    /// `[dot(w[0], x), .., dot(w[3], x)]`, each bit-identical to [`DotKernel::dot`].
    fn dot4(w: [&[f32]; ROW_TILE], x: &[f32]) -> [f32; ROW_TILE];
}

/// Plain Rust with [`LANES`] accumulators, vectorized by LLVM where it can.
struct Portable;
impl DotKernel for Portable {
    #[inline(always)]
    fn dot(a: &[f32], b: &[f32]) -> f32 {
        dot(a, b)
    }
    #[inline(always)]
    fn dot4(w: [&[f32]; ROW_TILE], x: &[f32]) -> [f32; ROW_TILE] {
        dot4(w, x)
    }
}

/// AVX2 + FMA intrinsics; only instantiated inside [`dot_rows_avx2_fma`].
#[cfg(target_arch = "x86_64")]
struct Avx2Fma;
#[cfg(target_arch = "x86_64")]
impl DotKernel for Avx2Fma {
    #[inline(always)]
    fn dot(a: &[f32], b: &[f32]) -> f32 {
        // SAFETY: `Avx2Fma` is only used (by `dot_rows_avx2_fma` and the tests) after the
        // CPU was found to support AVX2 and FMA.
        unsafe { avx2::dot(a, b) }
    }
    #[inline(always)]
    fn dot4(w: [&[f32]; ROW_TILE], x: &[f32]) -> [f32; ROW_TILE] {
        // SAFETY: as in `dot` above.
        unsafe { avx2::dot4(w, x) }
    }
}

/// Dequantize-then-dot row kernel for any type (see the module docs).
pub(crate) fn dot_rows_dequantized(
    w: &QMatrix<'_>,
    rows: Range<usize>,
    x: &[f32],
    n_tokens: usize,
    out: &mut [&mut [f32]],
) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
        // SAFETY: the CPU supports AVX2 and FMA, checked just above; that is the only
        // requirement of a `#[target_feature]` function.
        unsafe { dot_rows_avx2_fma(w, rows, x, n_tokens, out) };
        return;
    }
    dot_rows_body::<Portable>(w, rows, x, n_tokens, out);
}

/// [`dot_rows_body`] compiled for AVX2 + FMA (dequantization included).
///
/// # Safety
/// The CPU must support AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn dot_rows_avx2_fma(
    w: &QMatrix<'_>,
    rows: Range<usize>,
    x: &[f32],
    n_tokens: usize,
    out: &mut [&mut [f32]],
) {
    dot_rows_body::<Avx2Fma>(w, rows, x, n_tokens, out);
}

#[inline(always)]
fn dot_rows_body<D: DotKernel>(
    w: &QMatrix<'_>,
    rows: Range<usize>,
    x: &[f32],
    n_tokens: usize,
    out: &mut [&mut [f32]],
) {
    let cols = w.cols();
    let row_bytes = w.row_bytes();
    let mut scratch = vec![0f32; ROW_TILE * cols];
    let mut r = rows.start;
    while r < rows.end {
        let n = ROW_TILE.min(rows.end - r);
        let src = &w.data()[r * row_bytes..(r + n) * row_bytes];
        dequantize_unchecked(w.ty(), src, &mut scratch[..n * cols]);
        let i = r - rows.start;
        if n == ROW_TILE {
            let (w0, rest) = scratch.split_at(cols);
            let (w1, rest) = rest.split_at(cols);
            let (w2, w3) = rest.split_at(cols);
            for (t, o) in out.iter_mut().enumerate().take(n_tokens) {
                let d = D::dot4([w0, w1, w2, w3], &x[t * cols..(t + 1) * cols]);
                o[i..i + ROW_TILE].copy_from_slice(&d);
            }
        } else {
            for k in 0..n {
                let wk = &scratch[k * cols..(k + 1) * cols];
                for (t, o) in out.iter_mut().enumerate().take(n_tokens) {
                    o[i + k] = D::dot(wk, &x[t * cols..(t + 1) * cols]);
                }
            }
        }
        r += n;
    }
}

/// Sums 8 lanes pairwise.
#[inline(always)]
fn reduce(acc: [f32; LANES]) -> f32 {
    ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]))
}

/// `s` as whole groups of [`LANES`] (the tail, `s.len() % LANES` elements, is dropped).
#[inline(always)]
fn lanes(s: &[f32]) -> impl Iterator<Item = &[f32; LANES]> {
    // chunks_exact yields exactly LANES elements, so the fallback is never taken; the
    // fixed-size arrays let LLVM drop bounds checks and vectorize the lane loops.
    s.chunks_exact(LANES)
        .map(|c| <&[f32; LANES]>::try_from(c).unwrap_or(&[0.0; LANES]))
}

/// `acc[l] += w[l] · x[l]` for every lane.
#[inline(always)]
fn mul_add_lanes(acc: &mut [f32; LANES], w: &[f32; LANES], x: &[f32; LANES]) {
    for l in 0..LANES {
        acc[l] += w[l] * x[l];
    }
}

/// `Σ a[i]·b[i]` over `min(a.len(), b.len())` with [`LANES`] independent accumulators.
#[inline(always)]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let n = a.len().min(b.len());
    let (a, b) = (&a[..n], &b[..n]);
    let mut acc = [0f32; LANES];
    for (x, y) in lanes(a).zip(lanes(b)) {
        mul_add_lanes(&mut acc, x, y);
    }
    let main = n - n % LANES;
    let mut tail = 0f32;
    for (x, y) in a[main..].iter().zip(&b[main..]) {
        tail += *x * *y;
    }
    reduce(acc) + tail
}

/// Four dot products of `w[k]` with one `x`, sharing each load of `x`. Each row's sum is
/// formed exactly as [`dot`] forms it.
#[inline(always)]
fn dot4(w: [&[f32]; ROW_TILE], x: &[f32]) -> [f32; ROW_TILE] {
    let n = x.len().min(w.iter().map(|r| r.len()).min().unwrap_or(0));
    let x = &x[..n];
    let [w0, w1, w2, w3] = w.map(|r| &r[..n]);
    let (mut a0, mut a1, mut a2, mut a3) =
        ([0f32; LANES], [0f32; LANES], [0f32; LANES], [0f32; LANES]);
    let rows = lanes(w0).zip(lanes(w1)).zip(lanes(w2)).zip(lanes(w3));
    for (xs, (((r0, r1), r2), r3)) in lanes(x).zip(rows) {
        mul_add_lanes(&mut a0, r0, xs);
        mul_add_lanes(&mut a1, r1, xs);
        mul_add_lanes(&mut a2, r2, xs);
        mul_add_lanes(&mut a3, r3, xs);
    }
    let main = n - n % LANES;
    let mut res = [0f32; ROW_TILE];
    for ((r, acc), wk) in res.iter_mut().zip([a0, a1, a2, a3]).zip([w0, w1, w2, w3]) {
        let mut tail = 0f32;
        for (wv, xv) in wk[main..].iter().zip(&x[main..]) {
            tail += *wv * *xv;
        }
        *r = reduce(acc) + tail;
    }
    res
}

/// The AVX2 + FMA dot products: the same lane assignment, reduction order and tail as the
/// portable ones, with fused multiply-adds.
#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::{__m256, _mm256_fmadd_ps, _mm256_loadu_ps, _mm256_storeu_ps};

    use super::{reduce, LANES, ROW_TILE};

    /// The 8 lanes of `v`.
    ///
    /// # Safety
    /// The CPU must support AVX.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn to_array(v: __m256) -> [f32; LANES] {
        let mut out = [0f32; LANES];
        // SAFETY: `out` has room for the 8 f32 an unaligned 256-bit store writes.
        unsafe { _mm256_storeu_ps(out.as_mut_ptr(), v) };
        out
    }

    /// `Σ a[i]·b[i]`.
    ///
    /// # Safety
    /// The CPU must support AVX2 and FMA.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn dot(a: &[f32], b: &[f32]) -> f32 {
        let n = a.len().min(b.len());
        let main = n - n % LANES;
        let zero = [0f32; LANES];
        // SAFETY: `zero` holds 8 f32.
        let mut acc = unsafe { _mm256_loadu_ps(zero.as_ptr()) };
        let mut c = 0;
        while c < main {
            // SAFETY: c + 8 <= main <= n, and n is within both slices.
            acc = unsafe {
                _mm256_fmadd_ps(
                    _mm256_loadu_ps(a.as_ptr().add(c)),
                    _mm256_loadu_ps(b.as_ptr().add(c)),
                    acc,
                )
            };
            c += LANES;
        }
        let mut tail = 0f32;
        for (x, y) in a[main..n].iter().zip(&b[main..n]) {
            tail = x.mul_add(*y, tail);
        }
        // SAFETY: this function's own requirement.
        reduce(unsafe { to_array(acc) }) + tail
    }

    /// Four dot products sharing each load of `x`.
    ///
    /// # Safety
    /// The CPU must support AVX2 and FMA.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn dot4(w: [&[f32]; ROW_TILE], x: &[f32]) -> [f32; ROW_TILE] {
        let n = x.len().min(w.iter().map(|r| r.len()).min().unwrap_or(0));
        let main = n - n % LANES;
        let zero = [0f32; LANES];
        // SAFETY: `zero` holds 8 f32.
        let z = unsafe { _mm256_loadu_ps(zero.as_ptr()) };
        let (mut a0, mut a1, mut a2, mut a3) = (z, z, z, z);
        let [w0, w1, w2, w3] = w;
        let mut c = 0;
        while c < main {
            // SAFETY: c + 8 <= main <= n, and n is within `x` and every row of `w`.
            unsafe {
                let xv = _mm256_loadu_ps(x.as_ptr().add(c));
                a0 = _mm256_fmadd_ps(_mm256_loadu_ps(w0.as_ptr().add(c)), xv, a0);
                a1 = _mm256_fmadd_ps(_mm256_loadu_ps(w1.as_ptr().add(c)), xv, a1);
                a2 = _mm256_fmadd_ps(_mm256_loadu_ps(w2.as_ptr().add(c)), xv, a2);
                a3 = _mm256_fmadd_ps(_mm256_loadu_ps(w3.as_ptr().add(c)), xv, a3);
            }
            c += LANES;
        }
        let mut res = [0f32; ROW_TILE];
        for ((r, acc), wk) in res.iter_mut().zip([a0, a1, a2, a3]).zip(w) {
            let mut tail = 0f32;
            for (wv, xv) in wk[main..n].iter().zip(&x[main..n]) {
                tail = wv.mul_add(*xv, tail);
            }
            // SAFETY: this function's own requirement.
            *r = reduce(unsafe { to_array(acc) }) + tail;
        }
        res
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    /// Allowed `|dot − exact|` as a fraction of `Σ|a·b|` (f64 reference).
    const DOT_REL_TOL: f64 = 1e-6;

    /// Deterministic values in [-0.5, 0.5) from `seed` (shared by the kernel tests).
    pub(in crate::matmul) fn data(n: usize, seed: u32) -> Vec<f32> {
        // A small LCG: deterministic, no dependencies.
        let mut s = seed.wrapping_mul(2_654_435_761).wrapping_add(1);
        (0..n)
            .map(|_| {
                s = s.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                (s >> 8) as f32 / (1u32 << 24) as f32 - 0.5
            })
            .collect()
    }

    fn exact(a: &[f32], b: &[f32]) -> (f64, f64) {
        let dot = a.iter().zip(b).map(|(x, y)| *x as f64 * *y as f64).sum();
        let mag = a
            .iter()
            .zip(b)
            .map(|(x, y)| (*x as f64 * *y as f64).abs())
            .sum();
        (dot, mag)
    }

    /// Every dot kernel present on this machine: within tolerance of an f64 reference, and
    /// `dot4` bit-identical to `dot` row by row (so thread splits never change results).
    fn check<D: DotKernel>(name: &str) {
        for n in [0usize, 1, 7, 8, 9, 31, 256, 1000] {
            let x = data(n, 1);
            let w: Vec<Vec<f32>> = (0..4).map(|k| data(n, 10 + k)).collect();
            let four = D::dot4([&w[0], &w[1], &w[2], &w[3]], &x);
            for k in 0..4 {
                let one = D::dot(&w[k], &x);
                assert_eq!(one.to_bits(), four[k].to_bits(), "{name} n={n} row {k}");
                let (want, mag) = exact(&w[k], &x);
                let err = (one as f64 - want).abs();
                assert!(
                    err <= DOT_REL_TOL * mag + 1e-30,
                    "{name} n={n}: {one} vs {want}"
                );
            }
        }
    }

    #[test]
    fn portable_dots() {
        check::<Portable>("portable");
    }

    #[test]
    #[cfg(target_arch = "x86_64")]
    fn avx2_fma_dots() {
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
        {
            check::<Avx2Fma>("avx2+fma");
        }
    }
}
