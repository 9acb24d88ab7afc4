//! Single-thread timing and output checksums of every block format's matmul kernels, Exact
//! and Fast, without a model: a before/after check for kernel changes.
//!
//! ```sh
//! cargo run --release -p moe-kernels --example kernel_timing            # all types
//! cargo run --release -p moe-kernels --example kernel_timing -- Q4_K Q8_0
//! ```
//!
//! Each row is one (type, mode, implementation, token count; mode `panels` is Fast over the
//! matrix repacked at load, for the types that repack): the best of [`REPS`] calls on
//! one thread, in microseconds and in multiply-adds per nanosecond, and an FNV-1a hash of the
//! output bits, so a refactor that must not change results can be checked by comparing the
//! hash columns of two runs. Inputs are generated from fixed seeds.

use std::time::Instant;

use moe_kernels::{quantize_row, synthesize_row, GgmlType, PackedMatrix, QMatrix, SimdIsa};

/// Weight rows of the timed matrix (`KT_ROWS` overrides).
const ROWS: usize = 512;
/// Input features of the timed matrix (Kimi K2.5's hidden size).
const COLS: usize = 7168;
/// Timed calls per row; the best is reported (`KT_REPS` overrides).
const REPS: usize = 7;

/// `KT_REPS`, else [`REPS`].
fn reps() -> usize {
    std::env::var("KT_REPS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(REPS)
}
/// Token counts timed: one decode token and a prompt chunk (`KT_TOKENS=1,16,64` overrides).
const TOKEN_COUNTS: [usize; 2] = [1, 16];

/// `KT_ROWS`, else [`ROWS`].
fn rows() -> usize {
    std::env::var("KT_ROWS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(ROWS)
}

/// `KT_TOKENS` (comma-separated), else [`TOKEN_COUNTS`].
fn token_counts() -> Vec<usize> {
    std::env::var("KT_TOKENS")
        .ok()
        .map(|v| v.split(',').filter_map(|n| n.trim().parse().ok()).collect())
        .unwrap_or_else(|| TOKEN_COUNTS.to_vec())
}

/// `KT_ISA=avx2` (or `portable`, ...) times only that implementation.
fn isa_wanted(name: &str) -> bool {
    std::env::var("KT_ISA").map_or(true, |v| v.split(',').any(|w| w == name))
}

/// `KT_MODE=fast` (or `exact`) times only that mode.
fn mode_wanted(name: &str) -> bool {
    std::env::var("KT_MODE").map_or(true, |v| v == name)
}

const TYPES: [GgmlType; 21] = [
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

/// One timed call, writing its output into the slice.
type Run<'a> = Box<dyn FnMut(&mut [f32]) + 'a>;

/// Deterministic values in [-1, 1) (xorshift64*).
fn values(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            s ^= s >> 12;
            s ^= s << 25;
            s ^= s >> 27;
            let u = (s.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 40) as f32 / (1u64 << 24) as f32;
            2.0 * u - 1.0
        })
        .collect()
}

/// Valid weight bytes of `ty`: quantized values, (IQ4_*) random bytes with a small `d`, or
/// (the IQ1/IQ2/IQ3 grids, TQ) `synthesize_row`'s stand-in blocks.
fn weight_bytes(ty: GgmlType) -> Vec<u8> {
    let rb = ty.row_bytes(COLS).expect("row bytes");
    let mut bytes = vec![0u8; rows() * rb];
    if ty.can_quantize() {
        let x = values(rows() * COLS, 1);
        for (src, dst) in x.chunks(COLS).zip(bytes.chunks_mut(rb)) {
            quantize_row(ty, src, dst).expect("quantize");
        }
    } else if !matches!(ty, GgmlType::IQ4_NL | GgmlType::IQ4_XS) {
        let x = values(rows() * COLS, 1);
        for (src, dst) in x.chunks(COLS).zip(bytes.chunks_mut(rb)) {
            synthesize_row(ty, src, dst).expect("stand-in blocks");
        }
    } else {
        for (i, v) in values(rows() * rb, 2).iter().enumerate() {
            bytes[i] = (v.to_bits() >> 7) as u8;
        }
        let d = half::f16::from_f32(0.01).to_le_bytes();
        for block in bytes.chunks_mut(ty.block_bytes()) {
            block[..2].copy_from_slice(&d);
        }
    }
    bytes
}

/// FNV-1a over the bits of `y`.
fn checksum(y: &[f32]) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325u64;
    for v in y {
        for b in v.to_bits().to_le_bytes() {
            h = (h ^ b as u64).wrapping_mul(0x0100_0000_01b3);
        }
    }
    h
}

fn main() {
    let wanted: Vec<String> = std::env::args().skip(1).collect();
    println!("| type | mode | isa | tokens | best µs | MAC/ns | checksum |");
    println!("|---|---|---|---|---|---|---|");
    for ty in TYPES {
        if !wanted.is_empty() && !wanted.iter().any(|w| w == ty.name()) {
            continue;
        }
        let bytes = weight_bytes(ty);
        let m = QMatrix::new(ty, rows(), COLS, &bytes).expect("matrix");
        // The panel form of the types that repack (timed as mode `panels`).
        let packed = PackedMatrix::pack(&m);
        let pm = packed.as_ref().map(|p| m.with_packed(p).expect("packed"));
        for n in token_counts() {
            let x = values(n * COLS, 3 + n as u64);
            let mut y = vec![0f32; n * rows()];
            let mut runs: Vec<(&str, &str, Run)> = Vec::new();
            for (isa, name) in [
                (SimdIsa::Portable, "portable"),
                (SimdIsa::Avx2, "avx2"),
                (SimdIsa::Avx512Vnni, "avx512vnni"),
            ] {
                if !isa_wanted(name) {
                    continue;
                }
                if !isa.available() {
                    eprintln!("skipped: {name} (this CPU lacks it)");
                    continue;
                }
                let x = &x;
                runs.push((
                    "exact",
                    name,
                    Box::new(move |y: &mut [f32]| {
                        m.matmul_exact_with_isa(x, n, y, isa).expect("exact")
                    }),
                ));
                runs.push((
                    "fast",
                    name,
                    Box::new(move |y: &mut [f32]| {
                        m.matmul_fast_with_isa(x, n, y, isa).expect("fast")
                    }),
                ));
                if let Some(pm) = pm {
                    runs.push((
                        "panels",
                        name,
                        Box::new(move |y: &mut [f32]| {
                            pm.matmul_fast_with_isa(x, n, y, isa).expect("panels")
                        }),
                    ));
                }
            }
            for (mode, isa, run) in runs.iter_mut() {
                if !mode_wanted(mode) {
                    continue;
                }
                let mut best = f64::INFINITY;
                for _ in 0..reps() {
                    let t = Instant::now();
                    run(&mut y);
                    best = best.min(t.elapsed().as_secs_f64());
                }
                let macs = (rows() * COLS * n) as f64;
                println!(
                    "| {} | {mode} | {isa} | {n} | {:.0} | {:.2} | {:016x} |",
                    ty.name(),
                    best * 1e6,
                    macs / (best * 1e9),
                    checksum(&y)
                );
            }
        }
    }
}
