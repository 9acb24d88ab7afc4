//! Row kernels: the per-type seam where `QMatrix::matmul` does its arithmetic.
//!
//! A row kernel computes, for a contiguous range of weight rows and every token,
//! `out[t][i] = Σ_c W[rows.start + i, c] · x[t · cols + c]`. Today every type uses
//! [`dot_rows_dequantized`]: it dequantizes [`ROW_TILE`] rows at a time into a scratch buffer
//! (exactly, see `dequant.rs`) and dots them against each token with 8 independent f32
//! accumulators per row, so one read of a token's activations serves the whole tile. A
//! fused kernel that dots straight from a type's quantized blocks plugs in by returning it
//! from [`dot_rows_fn`] for that type.
//!
//! On x86-64 with AVX2 and FMA (detected at run time) the same code is compiled a second
//! time with those features and fused multiply-adds; results differ from the portable path
//! only by rounding (both are f32 accumulations of the same exact products' inputs).

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
    // Every type goes through exact dequantization today; a fused kernel for one type
    // replaces its arm here.
    match ty {
        GgmlType::F32
        | GgmlType::F16
        | GgmlType::BF16
        | GgmlType::Q4_0
        | GgmlType::Q4_1
        | GgmlType::Q5_0
        | GgmlType::Q5_1
        | GgmlType::Q8_0
        | GgmlType::Q2_K
        | GgmlType::Q3_K
        | GgmlType::Q4_K
        | GgmlType::Q5_K
        | GgmlType::Q6_K
        | GgmlType::IQ4_NL
        | GgmlType::IQ4_XS => dot_rows_dequantized,
    }
}

/// How the kernel body multiplies and adds: separately (portable) or fused (FMA targets).
trait MulAdd {
    /// `a · b + c`.
    fn mul_add(a: f32, b: f32, c: f32) -> f32;
}

/// `a * b + c` rounded twice; what every target has.
struct Separate;
impl MulAdd for Separate {
    #[inline(always)]
    fn mul_add(a: f32, b: f32, c: f32) -> f32 {
        a * b + c
    }
}

/// One rounding; only used where the FMA instruction is enabled (else it is a libm call).
#[cfg(target_arch = "x86_64")]
struct Fused;
#[cfg(target_arch = "x86_64")]
impl MulAdd for Fused {
    #[inline(always)]
    fn mul_add(a: f32, b: f32, c: f32) -> f32 {
        a.mul_add(b, c)
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
    dot_rows_body::<Separate>(w, rows, x, n_tokens, out);
}

/// [`dot_rows_body`] compiled for AVX2 + FMA.
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
    dot_rows_body::<Fused>(w, rows, x, n_tokens, out);
}

#[inline(always)]
fn dot_rows_body<M: MulAdd>(
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
                let d = dot4::<M>([w0, w1, w2, w3], &x[t * cols..(t + 1) * cols]);
                o[i..i + ROW_TILE].copy_from_slice(&d);
            }
        } else {
            for k in 0..n {
                let wk = &scratch[k * cols..(k + 1) * cols];
                for (t, o) in out.iter_mut().enumerate().take(n_tokens) {
                    o[i + k] = dot::<M>(wk, &x[t * cols..(t + 1) * cols]);
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

/// `Σ a[i]·b[i]` over `min(a.len(), b.len())` with [`LANES`] independent accumulators.
#[inline(always)]
fn dot<M: MulAdd>(a: &[f32], b: &[f32]) -> f32 {
    let n = a.len().min(b.len());
    let (a, b) = (&a[..n], &b[..n]);
    let mut acc = [0f32; LANES];
    let (ac, bc) = (a.chunks_exact(LANES), b.chunks_exact(LANES));
    let (ta, tb) = (ac.remainder(), bc.remainder());
    for (x, y) in ac.zip(bc) {
        for k in 0..LANES {
            acc[k] = M::mul_add(x[k], y[k], acc[k]);
        }
    }
    let mut tail = 0f32;
    for (x, y) in ta.iter().zip(tb) {
        tail = M::mul_add(*x, *y, tail);
    }
    reduce(acc) + tail
}

/// Four dot products of `w[k]` with one `x`, sharing each load of `x`.
#[inline(always)]
fn dot4<M: MulAdd>(w: [&[f32]; ROW_TILE], x: &[f32]) -> [f32; ROW_TILE] {
    let n = x.len().min(w.iter().map(|r| r.len()).min().unwrap_or(0));
    let x = &x[..n];
    let w = w.map(|r| &r[..n]);
    let mut acc = [[0f32; LANES]; ROW_TILE];
    let main = n - n % LANES;
    for c in (0..main).step_by(LANES) {
        let xs = &x[c..c + LANES];
        for (k, a) in acc.iter_mut().enumerate() {
            let ws = &w[k][c..c + LANES];
            for l in 0..LANES {
                a[l] = M::mul_add(ws[l], xs[l], a[l]);
            }
        }
    }
    let mut res = [0f32; ROW_TILE];
    for (k, r) in res.iter_mut().enumerate() {
        let mut tail = 0f32;
        for c in main..n {
            tail = M::mul_add(w[k][c], x[c], tail);
        }
        *r = reduce(acc[k]) + tail;
    }
    res
}
