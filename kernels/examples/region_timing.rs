//! Times one decode-sized Fast matmul (one token, a packed Q4_K matrix of `rows × 1024`)
//! repeated back to back, on 1 and on `THREADS` threads: the cost of starting and ending a
//! parallel region against the work it splits. Rows from the arguments (default: the sizes
//! of a synth `small` model's decode matrices).
//!
//! `cargo run --release -p moe-kernels --example region_timing [ROWS ...]`

use std::time::Instant;

use moe_kernels::{quantize_row, set_num_threads, GgmlType, NumericMode, PackedMatrix, QMatrix};

/// Columns of every timed matrix (the synth `small` model's hidden size).
const COLS: usize = 1024;
/// Calls per measurement; the median of [`ROUNDS`] measurements is printed.
const CALLS: usize = 2000;
const ROUNDS: usize = 7;
/// Thread counts timed.
const THREADS: [usize; 2] = [1, 2];

fn main() {
    let mut rows: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    if rows.is_empty() {
        rows = vec![256, 512, 768, 1024, 2816, 32768];
    }
    let ty = GgmlType::Q4_K;
    println!("| rows | MACs | 1 thread µs | 2 threads µs | speedup |");
    println!("|---:|---:|---:|---:|---:|");
    for r in rows {
        let rb = ty.row_bytes(COLS).expect("row bytes");
        let mut bytes = vec![0u8; r * rb];
        let src: Vec<f32> = (0..COLS)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) / 50.0)
            .collect();
        for dst in bytes.chunks_mut(rb) {
            quantize_row(ty, &src, dst).expect("quantize");
        }
        let m = QMatrix::new(ty, r, COLS, &bytes)
            .expect("matrix")
            .with_mode(NumericMode::Fast);
        let packed = PackedMatrix::pack(&m).expect("Q4_K packs");
        let m = m.with_packed(&packed).expect("packed");
        let x: Vec<f32> = (0..COLS).map(|i| (i as f32 * 0.01).sin()).collect();
        let mut y = vec![0f32; r];
        let mut per_threads = Vec::new();
        for t in THREADS {
            set_num_threads(t);
            let mut times: Vec<f64> = (0..ROUNDS)
                .map(|_| {
                    let start = Instant::now();
                    for _ in 0..CALLS {
                        m.matmul(&x, 1, &mut y).expect("matmul");
                    }
                    start.elapsed().as_secs_f64() * 1e6 / CALLS as f64
                })
                .collect();
            times.sort_by(f64::total_cmp);
            per_threads.push(times[ROUNDS / 2]);
        }
        println!(
            "| {r} | {} | {:.2} | {:.2} | {:.2} |",
            r * COLS,
            per_threads[0],
            per_threads[1],
            per_threads[0] / per_threads[1]
        );
    }
}
