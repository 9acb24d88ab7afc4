//! The machine's memory read bandwidth, measured the way a decode step reads weights: each
//! of `threads` threads streams its share of a buffer far larger than any cache, summing
//! 64-bit words (the loop vectorizes; the sum keeps the reads from being optimized away).

use std::time::Instant;

/// Bytes streamed per pass: far beyond the last-level cache of any machine this runs on.
pub const BANDWIDTH_BUFFER_BYTES: usize = 512 << 20;
/// Passes; the fastest one is reported (the first also faults the pages in).
pub const BANDWIDTH_PASSES: usize = 4;

/// Read bandwidth in GB/s (10^9 bytes per second) with `threads` threads.
pub fn read_bandwidth_gbs(threads: usize) -> f64 {
    let threads = threads.max(1);
    let words = BANDWIDTH_BUFFER_BYTES / 8;
    let buf: Vec<u64> = (0..words as u64).collect();
    let per = words.div_ceil(threads);
    let mut best = f64::INFINITY;
    let mut sink = 0u64;
    for _ in 0..BANDWIDTH_PASSES {
        let t = Instant::now();
        let sums: Vec<u64> = std::thread::scope(|s| {
            let handles: Vec<_> = buf
                .chunks(per)
                .map(|part| s.spawn(move || part.iter().fold(0u64, |a, &w| a.wrapping_add(w))))
                .collect();
            handles.into_iter().map(|h| h.join().unwrap_or(0)).collect()
        });
        best = best.min(t.elapsed().as_secs_f64());
        sink = sums.iter().fold(sink, |a, &v| a.wrapping_add(v));
    }
    std::hint::black_box(sink);
    BANDWIDTH_BUFFER_BYTES as f64 / best / 1e9
}
