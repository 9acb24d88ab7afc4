//! Single-thread timing of the fast mode's flash attention kernel at Kimi K2.5's MLA shape
//! (cache rows of 512 latent + 64 rope values, values = the latent): decode (64 heads, one
//! token) and a prompt tile (16 query rows) over 4096 cached positions, for each KV cache
//! type (f32 read in place; bf16, f16, q8_0 converted a block at a time).
//!
//! `cargo run --release -p moe-kernels --example flash_timing`

use std::time::Instant;

use moe_kernels::{flash_attend, FlashState, KvBuf, KvRowShape, KvRows, KvType};

const KDIM: usize = 576;
const VDIM: usize = 512;
const POSITIONS: usize = 4096;

fn main() {
    let kv: Vec<f32> = (0..POSITIONS * KDIM)
        .map(|i| ((i * 2_654_435_761) % 2001) as f32 / 1000.0 - 1.0)
        .collect();
    let shape = KvRowShape {
        latent: VDIM,
        rope: KDIM - VDIM,
    };
    for ty in KvType::ALL {
        let mut buf = KvBuf::new(ty, shape);
        for row in kv.chunks_exact(KDIM) {
            buf.push(&row[..VDIM], &row[VDIM..]);
        }
        for rows in [64usize, 16] {
            let q: Vec<f32> = (0..rows * KDIM)
                .map(|i| ((i * 7919) % 997) as f32 / 500.0 - 1.0)
                .collect();
            let limits = vec![POSITIONS; rows];
            let mut best = f64::MAX;
            let mut check = 0f32;
            for _ in 0..5 {
                let t = Instant::now();
                let mut state = FlashState::new(rows, VDIM);
                let cache: KvRows<'_> = buf.all();
                flash_attend(&q, &limits, cache, 0, 0.04, &mut state);
                let mut out = vec![0f32; rows * VDIM];
                state.finish(&mut out);
                best = best.min(t.elapsed().as_secs_f64());
                check = out.iter().sum();
            }
            let flops = 2.0 * rows as f64 * POSITIONS as f64 * (KDIM + VDIM) as f64;
            println!(
                "kv {:>4}, rows {rows:>3} x {POSITIONS} positions: {:.2} ms, {:.1} GFLOP/s \
                 (checksum {check:.6})",
                ty.name(),
                best * 1e3,
                flops / best / 1e9
            );
        }
    }
}
