//! quantize_row → dequantize_row round trips: every element within a named per-type
//! tolerance of its block's magnitude, and the bytes written are stable (re-quantizing the
//! dequantized values reproduces them within the same bound).

mod common;

use common::Rng;
use moe_kernels::{
    dequantize_row, quantize_row, quantize_rows, synthesize_row, GgmlType, KernelError,
};
use proptest::prelude::*;

/// Largest allowed `|dequant(quant(x)) − x|` as a fraction of the largest `|x|` in the
/// element's block (32 or 256 elements; 1 element for F32/F16/BF16).
///
/// Derivations: Q8_0 half a step of `absmax/127` plus f16 scale rounding; Q4_0/Q5_0 one full
/// step of `absmax/8` / `absmax/16` (ggml's symmetric scheme clamps the opposite extreme one
/// step short); Q4_1/Q5_1 half a step of `range/15` / `range/31` (range ≤ 2·absmax) plus f16
/// min rounding; k-quants add the 4/6/8-bit sub-block scale rounding on top of their level
/// spacing (Q2_K: range/3 per sub-block; Q3_K: absmax/4; Q4_K: range/15; Q5_K: range/31;
/// Q6_K: absmax/32), measured on skewed weight-like data with margin.
fn tolerance(ty: GgmlType) -> f32 {
    match ty {
        GgmlType::F32 => 0.0,
        GgmlType::F16 => 1.0 / 2000.0,
        GgmlType::BF16 => 1.0 / 250.0,
        GgmlType::Q8_0 => 0.005,
        GgmlType::Q4_0 => 0.126,
        GgmlType::Q5_0 => 0.0635,
        GgmlType::Q4_1 => 0.068,
        GgmlType::Q5_1 => 0.034,
        GgmlType::Q2_K => 0.36,
        // One step of absmax/4 (the clamped extreme) + 6-bit sub-scale rounding on up to 4
        // levels + f16 rounding of d: ~0.27; a block of ±1e4 among zeros reached 0.2714.
        GgmlType::Q3_K => 0.28,
        GgmlType::Q4_K => 0.072,
        GgmlType::Q5_K => 0.036,
        GgmlType::Q6_K => 0.034,
        // No quantizer (stand-in blocks only, see `stand_in_blocks_match_block_rms`).
        GgmlType::IQ4_NL
        | GgmlType::IQ4_XS
        | GgmlType::IQ2_XXS
        | GgmlType::IQ2_XS
        | GgmlType::IQ2_S
        | GgmlType::IQ3_XXS
        | GgmlType::IQ3_S
        | GgmlType::IQ1_S
        | GgmlType::IQ1_M
        | GgmlType::TQ1_0
        | GgmlType::TQ2_0 => f32::NAN,
    }
}

/// Below f16's smallest normal (2^-14) its spacing is absolute, so F16's relative bound is
/// taken against at least that magnitude.
fn magnitude_floor(ty: GgmlType) -> f32 {
    if ty == GgmlType::F16 {
        2f32.powi(-14)
    } else {
        0.0
    }
}

fn quantizable() -> impl Iterator<Item = GgmlType> {
    GgmlType::ALL.into_iter().filter(|t| t.can_quantize())
}

/// Worst error over all elements as a fraction of the element's block absmax.
fn worst_ratio(ty: GgmlType, x: &[f32]) -> f32 {
    let mut bytes = vec![0u8; ty.row_bytes(x.len()).expect("whole blocks")];
    quantize_row(ty, x, &mut bytes).expect("quantize");
    let mut y = vec![0f32; x.len()];
    dequantize_row(ty, &bytes, &mut y).expect("dequantize");
    let block = ty.block_elems();
    let mut worst = 0f32;
    for (xb, yb) in x.chunks(block).zip(y.chunks(block)) {
        let amax = xb
            .iter()
            .fold(0f32, |m, v| m.max(v.abs()))
            .max(magnitude_floor(ty));
        for (a, b) in xb.iter().zip(yb) {
            let err = (a - b).abs();
            let ratio = if amax == 0.0 {
                if err == 0.0 {
                    0.0
                } else {
                    f32::INFINITY
                }
            } else {
                err / amax
            };
            worst = worst.max(ratio);
        }
    }
    worst
}

#[test]
fn round_trip_error_within_tolerance() {
    let mut rng = Rng::new(7);
    let cols = 1024;
    let mut failures: Vec<String> = Vec::new();
    for ty in quantizable() {
        let mut worst = 0f32;
        for _ in 0..64 {
            let x = rng.weights(cols);
            worst = worst.max(worst_ratio(ty, &x));
        }
        // Plain uniform data, and an all-positive row (mins of 0).
        let uniform: Vec<f32> = (0..cols).map(|_| rng.signed()).collect();
        let positive: Vec<f32> = (0..cols).map(|_| rng.unit() + 0.5).collect();
        worst = worst
            .max(worst_ratio(ty, &uniform))
            .max(worst_ratio(ty, &positive));
        println!(
            "{:>6}: worst error / block absmax = {worst:.5} (tolerance {})",
            ty.name(),
            tolerance(ty)
        );
        if worst > tolerance(ty) {
            failures.push(format!("{}: {worst} > {}", ty.name(), tolerance(ty)));
        }
    }
    assert!(failures.is_empty(), "{failures:?}");
}

#[test]
fn zeros_and_constants_are_exact_enough() {
    for ty in quantizable() {
        let n = ty.block_elems().max(256);
        for v in [0.0f32, 1.0, -3.5] {
            let x = vec![v; n];
            let ratio = worst_ratio(ty, &x);
            assert!(
                ratio <= tolerance(ty),
                "{} constant {v}: {ratio}",
                ty.name()
            );
        }
    }
}

#[test]
fn huge_values_saturate_instead_of_overflowing() {
    // Scales beyond f16 saturate; the output must stay finite.
    for ty in quantizable().filter(|t| t.block_elems() > 1) {
        let x: Vec<f32> = (0..256).map(|i| (i as f32 - 128.0) * 1e30).collect();
        let mut bytes = vec![0u8; ty.row_bytes(256).unwrap()];
        quantize_row(ty, &x, &mut bytes).unwrap();
        let mut y = vec![0f32; 256];
        dequantize_row(ty, &bytes, &mut y).unwrap();
        assert!(y.iter().all(|v| v.is_finite()), "{}", ty.name());
    }
}

#[test]
fn errors() {
    let x = vec![0f32; 256];
    for ty in GgmlType::ALL {
        let rb = ty.row_bytes(256).unwrap();
        let mut short = vec![0u8; rb - 1];
        assert!(matches!(
            quantize_row(ty, &x, &mut short),
            Err(KernelError::LengthMismatch { .. })
        ));
        if ty.block_elems() > 1 {
            let mut out = vec![0u8; rb];
            assert!(matches!(
                quantize_row(ty, &x[..255], &mut out),
                Err(KernelError::RowNotBlockAligned { .. })
            ));
        }
        let mut out = vec![0u8; rb];
        if !ty.can_quantize() {
            assert!(matches!(
                quantize_row(ty, &x, &mut out),
                Err(KernelError::UnsupportedType { .. })
            ));
        } else if ty.block_elems() > 1 {
            let mut bad = x.clone();
            bad[77] = f32::NAN;
            assert!(matches!(
                quantize_row(ty, &bad, &mut out),
                Err(KernelError::NonFinite { index: 77, .. })
            ));
            bad[77] = f32::INFINITY;
            assert!(quantize_row(ty, &bad, &mut out).is_err());
        }
    }
}

#[test]
fn rows_equal_row_by_row() {
    let mut rng = Rng::new(11);
    for ty in quantizable() {
        let (rows, cols) = (3, 512);
        let x = rng.weights(rows * cols);
        let rb = ty.row_bytes(cols).unwrap();
        let mut all = vec![0u8; rows * rb];
        quantize_rows(ty, &x, cols, &mut all).unwrap();
        for r in 0..rows {
            let mut one = vec![0u8; rb];
            quantize_row(ty, &x[r * cols..(r + 1) * cols], &mut one).unwrap();
            assert_eq!(
                &all[r * rb..(r + 1) * rb],
                &one[..],
                "{} row {r}",
                ty.name()
            );
        }
        assert!(quantize_rows(ty, &x[..cols + 1], cols, &mut all).is_err());
    }
}

/// Largest relative difference between a stand-in block's RMS and its source block's: the
/// f16 rounding of `d` (2^-11) plus the f32 rounding of the dequantized products.
const STAND_IN_RMS_REL_TOL: f64 = 1e-3;
/// Largest `|mean| / rms` of a stand-in row of 1024 elements: random signs give about
/// `1/sqrt(1024)` ≈ 0.03 (IQ4_NL's asymmetric grid about 0.1); a format whose stand-in codes
/// are biased (every row pushing activations the same way) goes above.
const STAND_IN_MEAN_REL_MAX: f64 = 0.15;

/// `synthesize_row` for the types without a quantizer writes valid, deterministic blocks
/// whose dequantized root mean square is the source block's (its documented contract) and
/// whose rows have mean near zero (as a weight row of `synth` should), and
/// refuses non-finite input; for the others it writes `quantize_row`'s bytes.
#[test]
fn stand_in_blocks_match_block_rms() {
    let mut rng = Rng::new(21);
    for ty in GgmlType::ALL {
        let cols = 1024;
        let x = rng.weights(cols);
        let rb = ty.row_bytes(cols).unwrap();
        let (mut a, mut b) = (vec![0u8; rb], vec![0u8; rb]);
        synthesize_row(ty, &x, &mut a).unwrap();
        synthesize_row(ty, &x, &mut b).unwrap();
        assert_eq!(a, b, "{}: not deterministic", ty.name());
        if ty.can_quantize() {
            quantize_row(ty, &x, &mut b).unwrap();
            assert_eq!(a, b, "{}: not quantize_row's bytes", ty.name());
            continue;
        }
        let mut y = vec![0f32; cols];
        dequantize_row(ty, &a, &mut y).unwrap();
        let rms = |v: &[f32]| {
            (v.iter().map(|e| (*e as f64).powi(2)).sum::<f64>() / v.len() as f64).sqrt()
        };
        let mean = y.iter().map(|v| *v as f64).sum::<f64>() / cols as f64;
        assert!(
            mean.abs() <= STAND_IN_MEAN_REL_MAX * rms(&y),
            "{}: stand-in row mean {mean} vs rms {}",
            ty.name(),
            rms(&y)
        );
        let n = ty.block_elems();
        for (blk, (xb, yb)) in x.chunks(n).zip(y.chunks(n)).enumerate() {
            assert!(
                yb.iter().all(|v| v.is_finite()),
                "{} block {blk}",
                ty.name()
            );
            let (want, got) = (rms(xb), rms(yb));
            assert!(
                (got - want).abs() <= STAND_IN_RMS_REL_TOL * want,
                "{} block {blk}: rms {got} vs source {want}",
                ty.name()
            );
        }
        let mut bad = x.clone();
        bad[300] = f32::NAN;
        assert!(matches!(
            synthesize_row(ty, &bad, &mut a),
            Err(KernelError::NonFinite { index: 300, .. })
        ));
        assert!(matches!(
            synthesize_row(ty, &x, &mut a[..rb - 1]),
            Err(KernelError::LengthMismatch { .. })
        ));
    }
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 64,
        failure_persistence: None,
        // A fixed seed: the same cases on every run, so a failure reproduces.
        rng_seed: proptest::test_runner::RngSeed::Fixed(0x5EED),
        ..ProptestConfig::default()
    })]

    /// Arbitrary finite values of mixed magnitudes: the round trip stays within tolerance.
    #[test]
    fn prop_round_trip(
        x in prop::collection::vec(-1e4f32..1e4f32, 256),
        shrink in 0u32..20,
        type_index in 0usize..13,
    ) {
        let ty = quantizable().nth(type_index).unwrap();
        let x: Vec<f32> = x.iter().map(|v| v / 2f32.powi(shrink as i32)).collect();
        let worst = worst_ratio(ty, &x);
        // Blocks stay above ~0.01 in magnitude, so f16 scales are normal numbers.
        prop_assert!(worst <= tolerance(ty), "{}: {} > {}", ty.name(), worst, tolerance(ty));
    }
}
