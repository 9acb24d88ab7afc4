//! `QMatrix::matmul` against a plain scalar reference (dequantize the whole matrix, then
//! naive sequential f32 loops) for every type, several shapes and token counts, with every
//! implementation this CPU runs (portable and AVX2 + FMA; a missing one is reported on
//! stderr as skipped).

mod common;

use common::{weights, Rng};
use moe_kernels::{dequantize_rows, GgmlType, KernelError, QMatrix, SimdIsa};

/// Allowed `|y − y_ref|` as a fraction of `Σ_c |W[r,c]·x[t,c]|` (the scale of the rounding
/// error of any f32 summation order; the kernel reorders sums into 8 lanes and may fuse
/// multiply-adds).
const MATMUL_REL_TOL: f32 = 1e-5;

/// Token counts every type is tested with.
const TOKEN_COUNTS: [usize; 3] = [1, 3, 17];

/// `(y, Σ|w·x|)` by naive loops over the dequantized matrix.
fn reference(
    ty: GgmlType,
    bytes: &[u8],
    rows: usize,
    cols: usize,
    x: &[f32],
    n: usize,
) -> (Vec<f32>, Vec<f32>) {
    let mut w = vec![0f32; rows * cols];
    dequantize_rows(ty, bytes, cols, &mut w).unwrap();
    let mut y = vec![0f32; n * rows];
    let mut mag = vec![0f32; n * rows];
    for t in 0..n {
        for r in 0..rows {
            let (mut s, mut m) = (0f32, 0f32);
            for c in 0..cols {
                s += w[r * cols + c] * x[t * cols + c];
                m += (w[r * cols + c] * x[t * cols + c]).abs();
            }
            y[t * rows + r] = s;
            mag[t * rows + r] = m;
        }
    }
    (y, mag)
}

fn check(ty: GgmlType, rows: usize, cols: usize, rng: &mut Rng) {
    let bytes = weights(ty, rows, cols, rng);
    let m = QMatrix::new(ty, rows, cols, &bytes).unwrap();
    for n in TOKEN_COUNTS {
        let x: Vec<f32> = (0..n * cols).map(|_| rng.signed()).collect();
        let (want, mag) = reference(ty, &bytes, rows, cols, &x, n);
        let mut one = vec![f32::NAN; n * rows];
        m.matmul_with_threads(&x, n, &mut one, 1).unwrap();
        let mut many = vec![f32::NAN; n * rows];
        m.matmul_with_threads(&x, n, &mut many, 3).unwrap();
        let mut default = vec![f32::NAN; n * rows];
        m.matmul(&x, n, &mut default).unwrap();
        for isa in [SimdIsa::Portable, SimdIsa::Avx2, SimdIsa::Avx512Vnni] {
            if !isa.available() {
                eprintln!(
                    "skipped: exact {isa:?} kernel of {} (CPU lacks it)",
                    ty.name()
                );
                continue;
            }
            let mut y = vec![f32::NAN; n * rows];
            m.matmul_exact_with_isa(&x, n, &mut y, isa).unwrap();
            for i in 0..n * rows {
                assert!(
                    (y[i] - want[i]).abs() <= MATMUL_REL_TOL * mag[i] + f32::MIN_POSITIVE,
                    "{} {isa:?} {rows}x{cols} n={n} out {i}: got {} want {}",
                    ty.name(),
                    y[i],
                    want[i]
                );
                // Every SIMD implementation runs the AVX2 exact body (AVX-512 VNNI compiles
                // it with more registers): all give the default's bits.
                if isa == SimdIsa::detected()
                    || (isa != SimdIsa::Portable && SimdIsa::detected() != SimdIsa::Portable)
                {
                    assert_eq!(
                        y[i].to_bits(),
                        one[i].to_bits(),
                        "{} {isa:?} at {i}",
                        ty.name()
                    );
                }
            }
        }
        for i in 0..n * rows {
            let err = (one[i] - want[i]).abs();
            assert!(
                err <= MATMUL_REL_TOL * mag[i] + f32::MIN_POSITIVE,
                "{} {rows}x{cols} n={n} out {i}: got {} want {} (Σ|wx| {})",
                ty.name(),
                one[i],
                want[i],
                mag[i]
            );
            // Each row is summed the same way whichever thread owns it.
            assert_eq!(
                one[i].to_bits(),
                many[i].to_bits(),
                "{} threads differ at {i}",
                ty.name()
            );
            assert_eq!(
                one[i].to_bits(),
                default[i].to_bits(),
                "{} default threads differ at {i}",
                ty.name()
            );
        }
    }
}

#[test]
fn matches_scalar_reference_every_type() {
    let mut rng = Rng::new(42);
    for ty in GgmlType::ALL {
        // Rows not a multiple of the row tile; small enough to stay single-threaded.
        check(ty, 7, 256, &mut rng);
        // Large enough to be split across threads (rows · cols · n over the threshold).
        check(ty, 203, 1024, &mut rng);
    }
}

#[test]
fn odd_column_counts_for_scalar_types() {
    // Lengths that leave a tail after the 8-lane loop.
    let mut rng = Rng::new(5);
    for ty in [GgmlType::F32, GgmlType::F16, GgmlType::BF16] {
        for cols in [1, 7, 13, 33] {
            check(ty, 9, cols, &mut rng);
        }
    }
    for ty in [GgmlType::Q4_0, GgmlType::Q8_0, GgmlType::IQ4_NL] {
        check(ty, 5, 32, &mut rng);
    }
}

#[test]
fn shape_errors() {
    let bytes = vec![0u8; 4 * 34];
    assert!(matches!(
        QMatrix::new(GgmlType::Q8_0, 2, 64, &bytes[1..]),
        Err(KernelError::LengthMismatch { .. })
    ));
    assert!(matches!(
        QMatrix::new(GgmlType::Q8_0, 2, 48, &bytes),
        Err(KernelError::RowNotBlockAligned { .. })
    ));
    let m = QMatrix::new(GgmlType::Q8_0, 2, 64, &bytes).unwrap();
    let mut y = vec![0f32; 2];
    assert!(m.matmul(&[0.0; 63], 1, &mut y).is_err());
    assert!(m.matmul(&[0.0; 64], 1, &mut y[..1]).is_err());
    assert!(m.matmul(&[0.0; 128], 1, &mut y).is_err());
    let mut row = vec![0f32; 64];
    assert!(m.dequantize_row(2, &mut row).is_err());
    // Zero tokens is a valid, empty product.
    m.matmul(&[], 0, &mut []).unwrap();
}

/// Throughput probe, not a pass/fail test: `cargo test -p moe-kernels --test matmul_reference
/// -- --ignored --nocapture matmul_throughput`.
#[test]
#[ignore]
fn matmul_throughput() {
    let (rows, cols) = (2048, 7168);
    let mut rng = Rng::new(1);
    for ty in [
        GgmlType::Q4_K,
        GgmlType::Q2_K,
        GgmlType::Q6_K,
        GgmlType::Q8_0,
        GgmlType::BF16,
    ] {
        let bytes = weights(ty, rows, cols, &mut rng);
        let m = QMatrix::new(ty, rows, cols, &bytes).unwrap();
        for n in [1usize, 8] {
            let x: Vec<f32> = (0..n * cols).map(|_| rng.signed()).collect();
            let mut y = vec![0f32; n * rows];
            for threads in [1, 2] {
                m.matmul_with_threads(&x, n, &mut y, threads).unwrap();
                let reps = 5;
                let start = std::time::Instant::now();
                for _ in 0..reps {
                    m.matmul_with_threads(&x, n, &mut y, threads).unwrap();
                }
                let s = start.elapsed().as_secs_f64() / reps as f64;
                println!(
                    "{:>5} {rows}x{cols} n={n:<2} threads={threads}: {:7.2} ms  {:6.2} GB/s weights  {:6.2} GFLOP/s",
                    ty.name(),
                    s * 1e3,
                    bytes.len() as f64 / s / 1e9,
                    2.0 * (rows * cols * n) as f64 / s / 1e9
                );
            }
        }
    }
}
