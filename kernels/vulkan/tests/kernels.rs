//! Kernel-level checks: every matvec shader (one per weight type) against the CPU's exact
//! kernel on the same quantized bytes, on Vulkan device 0 (lavapipe in CI).

mod common;

use moe_kernels::{dequantize_rows, quantize_rows, synthesize_row, GgmlType, NumericMode, QMatrix};
use moe_vulkan::Matvec;

/// Largest accepted |device - CPU| of one output, relative to `Σ|w_i·x_i|` of its row: the
/// two sum the same f32 products in different orders (and the device may fuse multiply-adds).
const MATVEC_REL_TOL: f32 = 2e-6;

/// Deterministic values in [-1, 1) (a 64-bit LCG), with a few larger outliers so scales vary.
fn values(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..n)
        .map(|i| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let v = ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0;
            if i % 97 == 0 {
                v * 8.0
            } else {
                v
            }
        })
        .collect()
}

/// `w` (`[rows, cols]`) as blocks of `ty`: quantized where moe-kernels has a quantizer, else
/// (IQ4_NL, IQ4_XS) stand-in blocks (pseudo-random codes and sub-block scales, `d` from the
/// block's RMS): a matvec check needs valid bytes of the type, not a close approximation.
fn weight_bytes(ty: GgmlType, w: &[f32], cols: usize) -> Vec<u8> {
    let row_bytes = ty.row_bytes(cols).unwrap();
    let mut bytes = vec![0u8; row_bytes * (w.len() / cols)];
    if ty.can_quantize() {
        quantize_rows(ty, w, cols, &mut bytes).unwrap();
    } else {
        for (src, dst) in w.chunks_exact(cols).zip(bytes.chunks_exact_mut(row_bytes)) {
            synthesize_row(ty, src, dst).unwrap();
        }
    }
    bytes
}

/// Each shader's rows of a 40x512 matrix (two 256-value super-blocks per row) times three
/// activation rows match the CPU exact matmul on the same bytes within `MATVEC_REL_TOL`
/// (IQ4_NL and IQ4_XS included, on stand-in blocks with every grid index and 6-bit scale
/// in play); an unsupported type is a named error.
#[test]
fn every_matvec_shader_matches_the_cpu_exact_kernel() {
    let Some(device) = common::device_or_skip("every_matvec_shader_matches_the_cpu_exact_kernel")
    else {
        return;
    };
    let mut mv = Matvec::new(&device).expect("pipelines");
    let (rows, cols, n) = (40, 512, 3);
    let w = values(rows * cols, 1);
    let x = values(n * cols, 2);
    let types: Vec<GgmlType> = moe_vulkan::supported_types().collect();
    for want in [GgmlType::Q6_K, GgmlType::IQ4_NL, GgmlType::IQ4_XS] {
        assert!(types.contains(&want), "{want:?} missing from {types:?}");
    }
    assert!(types.len() >= 11, "{types:?}");
    for ty in types {
        let bytes = weight_bytes(ty, &w, cols);
        let q = QMatrix::new(ty, rows, cols, &bytes)
            .unwrap()
            .with_mode(NumericMode::Exact);
        let mut cpu = vec![0f32; n * rows];
        q.matmul(&x, n, &mut cpu).unwrap();
        let gpu = mv.matmul(ty.name(), &q, &x, n).expect("device matmul");
        let mut deq = vec![0f32; rows * cols];
        dequantize_rows(ty, &bytes, cols, &mut deq).unwrap();
        let mut worst = 0f32;
        for t in 0..n {
            for r in 0..rows {
                let scale: f32 = (0..cols)
                    .map(|c| (deq[r * cols + c] * x[t * cols + c]).abs())
                    .sum::<f32>()
                    .max(1e-6);
                let (a, b) = (gpu[t * rows + r], cpu[t * rows + r]);
                worst = worst.max((a - b).abs() / scale);
            }
        }
        println!("{}: max |device - cpu| / sum|w x| = {worst:.2e}", ty.name());
        assert!(
            worst <= MATVEC_REL_TOL,
            "{}: device matvec differs from the CPU by {worst:e} (relative)",
            ty.name()
        );
    }
    // A type without a shader is refused with its name and the tensor's.
    let ty = GgmlType::Q4_0;
    let mut bytes = vec![0u8; ty.row_bytes(cols).unwrap() * rows];
    quantize_rows(ty, &w, cols, &mut bytes).unwrap();
    let q = QMatrix::new(ty, rows, cols, &bytes).unwrap();
    let err = mv
        .matmul("blk.9.ffn_up_exps.weight", &q, &x, n)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("blk.9.ffn_up_exps.weight") && err.contains("Q4_0"),
        "{err}"
    );
}
