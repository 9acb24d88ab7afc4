mod common;
use common::Rng;
use moe_kernels::*;
#[test]
fn probe() {
    let (rows, cols) = (32, 4096);
    let mut rng = Rng::new(1);
    let x = rng.weights(rows * cols);
    for ty in [GgmlType::Q4_K, GgmlType::Q8_0, GgmlType::F32, GgmlType::Q6_K] {
        let mut bytes = vec![0u8; ty.row_bytes(cols).unwrap() * rows];
        quantize_rows(ty, &x, cols, &mut bytes).unwrap();
        let mut w = vec![0f32; rows * cols];
        let reps = 200;
        let t = std::time::Instant::now();
        for _ in 0..reps { dequantize_rows(ty, &bytes, cols, &mut w).unwrap(); }
        let s = t.elapsed().as_secs_f64() / reps as f64;
        println!("{} dequant {:.2} Gelem/s", ty.name(), (rows*cols) as f64 / s / 1e9);
        let m = QMatrix::new(ty, rows, cols, &bytes).unwrap();
        for n in [1, 8] {
        let xs: Vec<f32> = (0..cols*n).map(|_| rng.signed()).collect();
        let mut y = vec![0f32; rows*n];
        let t = std::time::Instant::now();
        for _ in 0..reps { m.matmul_with_threads(&xs, n, &mut y, 1).unwrap(); }
        let s = t.elapsed().as_secs_f64() / reps as f64;
        println!("{} matmul n={n} {:.2} GMAC/s", ty.name(), (rows*cols*n) as f64 / s / 1e9);
        }
    }
}
