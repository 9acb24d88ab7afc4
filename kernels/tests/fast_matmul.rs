//! `NumericMode::Fast` matmuls for every block format with a fast kernel:
//!
//! 1. against the exact f32 matmul (f64 reference over the exactly dequantized weights) within
//!    the bound the activation rounding allows: `Σ_c |W[r,c]| · dx(c)/2` (each activation is
//!    represented within half its block's step `dx = amax/127`) plus f32 rounding;
//! 2. against an emulation of the documented arithmetic (the same int8 activations, f64
//!    products with the dequantized weights) within f32 rounding only, which catches any
//!    wrongly indexed code, scale or offset that the looser bound of 1. might hide;
//! 3. the AVX2 and AVX-512 VNNI implementations against the portable one, bit for bit
//!    (each skipped, said on stderr, on CPUs without it), at token counts that take every
//!    token-tile width and the single-token path;
//! 4. threaded and batched results against single-token, single-thread ones, bit for bit.
//!
//! Each check runs on the row kernels over the file's blocks and, for the types that
//! repack ([`PackedMatrix::packs`]), on the panel kernels over the packed matrix.
//!
//! Shapes: rows that are not a multiple of the row tile, token counts 1..=5 and one over
//! `FAST_TOKEN_CHUNK`.

mod common;

use common::{weights, Rng};
use moe_kernels::{
    dequantize_rows, has_fast_kernel, GgmlType, NumericMode, PackedMatrix, QMatrix, SimdIsa,
    FAST_TOKEN_CHUNK,
};

/// Relative f32 rounding allowance of the fast kernel's float part (a few roundings per block
/// and a sequential sum over at most `cols / 32` blocks), as a fraction of the magnitude
/// `Σ_c (|W[r,c]| + 2·max_block|W|) · |x[c]|` (the offset term of formats with minimums can
/// reach the block's largest weight, and is formed separately from the scaled codes).
const FAST_F32_REL_TOL: f64 = 2e-6;

/// Types with block formats (every one has a fast kernel).
const FAST_TYPES: [GgmlType; 21] = [
    GgmlType::Q2_K,
    GgmlType::Q3_K,
    GgmlType::Q4_K,
    GgmlType::Q5_K,
    GgmlType::Q6_K,
    GgmlType::Q8_0,
    GgmlType::Q4_0,
    GgmlType::Q4_1,
    GgmlType::Q5_0,
    GgmlType::Q5_1,
    GgmlType::IQ4_NL,
    GgmlType::IQ4_XS,
    GgmlType::IQ2_XXS,
    GgmlType::IQ2_XS,
    GgmlType::IQ2_S,
    GgmlType::IQ3_XXS,
    GgmlType::IQ3_S,
    GgmlType::IQ1_S,
    GgmlType::IQ1_M,
    GgmlType::TQ1_0,
    GgmlType::TQ2_0,
];

/// Activations with a spread of magnitudes across blocks and an occasional outlier.
fn activations(n: usize, rng: &mut Rng) -> Vec<f32> {
    let mut v = rng.weights(n);
    for x in v.iter_mut() {
        *x *= 3.0;
    }
    v
}

/// The documented activation quantizer (`q8.rs`): per block of `block`, `iscale = 127/amax`,
/// `q = round_half_even(x·iscale)` clamped to ±127, `d = 1/iscale`. Returns `d·q` per element
/// and the step `d` per element.
fn dequantized_activations(x: &[f32], block: usize) -> (Vec<f32>, Vec<f32>) {
    let mut back = vec![0f32; x.len()];
    let mut step = vec![0f32; x.len()];
    for ((xb, bb), sb) in x
        .chunks(block)
        .zip(back.chunks_mut(block))
        .zip(step.chunks_mut(block))
    {
        let amax = xb.iter().fold(0f32, |a, v| a.max(v.abs()));
        if amax == 0.0 {
            continue;
        }
        let iscale = 127.0 / amax;
        let d = 1.0 / iscale;
        for ((v, b), s) in xb.iter().zip(bb.iter_mut()).zip(sb.iter_mut()) {
            *b = (v * iscale).round_ties_even().clamp(-127.0, 127.0) * d;
            *s = d;
        }
    }
    (back, step)
}

fn check_type(ty: GgmlType, rows: usize, cols: usize, token_counts: &[usize], seed: u64) {
    assert!(has_fast_kernel(ty), "{ty:?} has no fast kernel");
    let mut rng = Rng::new(seed);
    let bytes = weights(ty, rows, cols, &mut rng);
    let exact = QMatrix::new(ty, rows, cols, &bytes).unwrap();
    let packed = PackedMatrix::pack(&exact);
    let unpacked = exact.with_mode(NumericMode::Fast);
    let mut forms = vec![("rows", unpacked)];
    if let Some(p) = &packed {
        forms.push(("panels", unpacked.with_packed(p).unwrap()));
    }
    let mut w = vec![0f32; rows * cols];
    dequantize_rows(ty, &bytes, cols, &mut w).unwrap();
    let block = ty.block_elems();

    for (&n, (form, fast)) in token_counts
        .iter()
        .flat_map(|n| forms.iter().map(move |f| (n, f)))
    {
        let x = activations(n * cols, &mut rng);
        let (xq, step) = dequantized_activations(&x, block);
        let mut y = vec![f32::NAN; n * rows];
        fast.matmul(&x, n, &mut y).unwrap();
        for t in 0..n {
            let xt = &x[t * cols..(t + 1) * cols];
            let qt = &xq[t * cols..(t + 1) * cols];
            let st = &step[t * cols..(t + 1) * cols];
            for r in 0..rows {
                let wr = &w[r * cols..(r + 1) * cols];
                let (mut want, mut emul, mut quant_err, mut mag) = (0f64, 0f64, 0f64, 0f64);
                for blk in 0..cols / block {
                    let range = blk * block..(blk + 1) * block;
                    let wmax = wr[range.clone()]
                        .iter()
                        .fold(0f64, |a, v| a.max(v.abs() as f64));
                    for c in range {
                        let (wc, xc) = (wr[c] as f64, xt[c] as f64);
                        want += wc * xc;
                        emul += wc * qt[c] as f64;
                        quant_err += wc.abs() * st[c] as f64 * 0.5;
                        mag += (wc.abs() + 2.0 * wmax) * xc.abs();
                    }
                }
                let got = y[t * rows + r] as f64;
                let float_tol = FAST_F32_REL_TOL * mag + 1e-30;
                assert!(
                    (got - emul).abs() <= float_tol,
                    "{ty:?} {form} {rows}x{cols} n={n} token {t} row {r}: fast {got} vs emulated {emul} \
                     (tol {float_tol})"
                );
                let tol = quant_err * (1.0 + 1e-6) + float_tol;
                assert!(
                    (got - want).abs() <= tol,
                    "{ty:?} {form} {rows}x{cols} n={n} token {t} row {r}: fast {got} vs exact {want} \
                     (activation-rounding bound {tol})"
                );
            }
        }

        // Single thread, each token alone, each implementation: bit-identical.
        let detected = SimdIsa::detected();
        for isa in [SimdIsa::Portable, SimdIsa::Avx2, SimdIsa::Avx512Vnni] {
            if !isa.available() {
                eprintln!("skipped: fast {isa:?} kernel of {ty:?} (CPU lacks it)");
                continue;
            }
            for t in 0..n {
                let mut one = vec![f32::NAN; rows];
                fast.matmul_fast_with_isa(&x[t * cols..(t + 1) * cols], 1, &mut one, isa)
                    .unwrap();
                for r in 0..rows {
                    assert_eq!(
                        one[r].to_bits(),
                        y[t * rows + r].to_bits(),
                        "{ty:?} {form} n={n} token {t} row {r}: {isa:?} alone vs batched+threaded \
                         ({detected:?})"
                    );
                }
            }
        }
    }
}

#[test]
fn fast_types_against_exact_and_emulation() {
    let counts = [1, 2, 3, 4, 5, FAST_TOKEN_CHUNK + 5];
    for (i, ty) in FAST_TYPES.into_iter().enumerate() {
        // Odd row counts (tile tails) at two widths; 67 × 1024 × 5 tokens is over the
        // parallel threshold, so the threaded split runs too.
        check_type(ty, 7, 512, &counts, 100 + i as u64);
        check_type(ty, 67, 1024, &counts[..5], 200 + i as u64);
        check_type(ty, 1, 256, &[1, 3], 300 + i as u64);
        // Kimi's width: a grid panel is decoded once per 54 tokens here (the panel
        // kernel's activation budget), so 69 tokens cross that chunk and the 32-token one.
        check_type(ty, 9, 7168, &[2 * FAST_TOKEN_CHUNK + 5], 400 + i as u64);
    }
}

/// `isa` against the portable implementation, bit for bit, for every fast type and token
/// counts through every token-tile width (8, 4, 2, 1 and the single-token path).
fn simd_matches_portable(isa: SimdIsa) {
    for (i, ty) in FAST_TYPES.into_iter().enumerate() {
        let mut rng = Rng::new(900 + i as u64);
        let (rows, cols) = (13, 2048);
        let bytes = weights(ty, rows, cols, &mut rng);
        let m = QMatrix::new(ty, rows, cols, &bytes).unwrap();
        let packed = PackedMatrix::pack(&m);
        let mut forms = vec![("rows", m)];
        if let Some(p) = &packed {
            forms.push(("panels", m.with_packed(p).unwrap()));
        }
        for (form, m) in &forms {
            for n in [1, 2, 3, 4, 5, 8, 9, 15, 19] {
                let x = activations(n * cols, &mut rng);
                let mut a = vec![f32::NAN; n * rows];
                let mut b = vec![f32::NAN; n * rows];
                m.matmul_fast_with_isa(&x, n, &mut a, SimdIsa::Portable)
                    .unwrap();
                m.matmul_fast_with_isa(&x, n, &mut b, isa).unwrap();
                for (k, (p, v)) in a.iter().zip(&b).enumerate() {
                    assert_eq!(
                        p.to_bits(),
                        v.to_bits(),
                        "{ty:?} {form} {isa:?} n={n} out {k}: {p} vs {v}"
                    );
                }
            }
        }
    }
}

#[test]
fn avx2_matches_portable_bit_for_bit() {
    if !SimdIsa::Avx2.available() {
        eprintln!("skipped: avx2_matches_portable_bit_for_bit (CPU lacks avx2+fma)");
        return;
    }
    simd_matches_portable(SimdIsa::Avx2);
}

#[test]
fn avx512vnni_matches_portable_bit_for_bit() {
    if !SimdIsa::Avx512Vnni.available() {
        eprintln!(
            "skipped: avx512vnni_matches_portable_bit_for_bit (CPU lacks avx512f+bw+vl+vnni)"
        );
        return;
    }
    simd_matches_portable(SimdIsa::Avx512Vnni);
}

#[test]
fn fast_mode_propagates_non_finite_activations() {
    let mut rng = Rng::new(5);
    let (rows, cols) = (4, 256);
    for ty in [GgmlType::Q4_K, GgmlType::Q8_0] {
        let bytes = weights(ty, rows, cols, &mut rng);
        let m = QMatrix::new(ty, rows, cols, &bytes)
            .unwrap()
            .with_mode(NumericMode::Fast);
        let mut x = activations(cols, &mut rng);
        x[100] = f32::NAN;
        let mut y = vec![0f32; rows];
        m.matmul(&x, 1, &mut y).unwrap();
        assert!(y.iter().all(|v| v.is_nan()), "{ty:?}: {y:?}");
    }
}

#[test]
fn float_types_fall_back_to_exact() {
    let mut rng = Rng::new(6);
    let (rows, cols) = (5, 64);
    let w = rng.weights(rows * cols);
    let bytes: Vec<u8> = w.iter().flat_map(|v| v.to_le_bytes()).collect();
    let m = QMatrix::new(GgmlType::F32, rows, cols, &bytes).unwrap();
    assert!(!has_fast_kernel(GgmlType::F32));
    let x = activations(2 * cols, &mut rng);
    let (mut a, mut b) = (vec![0f32; 2 * rows], vec![0f32; 2 * rows]);
    m.matmul(&x, 2, &mut a).unwrap();
    m.with_mode(NumericMode::Fast)
        .matmul(&x, 2, &mut b)
        .unwrap();
    assert_eq!(a, b);
}

#[test]
fn fast_entry_points_refuse_bad_input() {
    let mut rng = Rng::new(7);
    let (rows, cols) = (4, 256);
    let bytes = weights(GgmlType::Q4_K, rows, cols, &mut rng);
    let m = QMatrix::new(GgmlType::Q4_K, rows, cols, &bytes)
        .unwrap()
        .with_mode(NumericMode::Fast);
    let x = activations(cols, &mut rng);
    let mut y = vec![0f32; rows];
    assert!(m.matmul(&x[..cols - 1], 1, &mut y).is_err());
    assert!(m.matmul(&x, 1, &mut y[..rows - 1]).is_err());
    assert!(m
        .matmul_fast_with_isa(&x[..cols - 1], 1, &mut y, SimdIsa::Portable)
        .is_err());
    let f32_bytes: Vec<u8> = x[..cols].iter().flat_map(|v| v.to_le_bytes()).collect();
    let f = QMatrix::new(GgmlType::F32, 1, cols, &f32_bytes).unwrap();
    assert!(f
        .matmul_fast_with_isa(&x, 1, &mut y[..1], SimdIsa::Portable)
        .is_err());
}
