//! Helpers shared by the integration tests: a tiny deterministic RNG and data generators.

#![allow(dead_code)]

use moe_kernels::{quantize_row, synthesize_row, GgmlType};

/// xorshift64* — deterministic, dependency-free test data.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in [0, 1).
    pub fn unit(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 24) as f32
    }

    /// Uniform in [-1, 1).
    pub fn signed(&mut self) -> f32 {
        2.0 * self.unit() - 1.0
    }

    /// Roughly normal (sum of four uniforms), mean 0.
    pub fn normalish(&mut self) -> f32 {
        (self.signed() + self.signed() + self.signed() + self.signed()) * 0.5
    }

    /// `n` values shaped like weights: normal-ish, a per-32 block scale spread over 2^±6,
    /// occasional outliers, and an occasional offset block (to exercise mins).
    pub fn weights(&mut self, n: usize) -> Vec<f32> {
        let mut v = Vec::with_capacity(n);
        while v.len() < n {
            let scale = 2f32.powi((self.next_u64() % 13) as i32 - 6);
            let offset = if self.next_u64().is_multiple_of(5) {
                self.signed() * scale
            } else {
                0.0
            };
            for _ in 0..32.min(n - v.len()) {
                let outlier = if self.next_u64().is_multiple_of(64) {
                    8.0
                } else {
                    1.0
                };
                v.push(self.normalish() * scale * outlier + offset);
            }
        }
        v
    }
}

/// Random but valid weight bytes for a `rows × cols` matrix of `ty`.
pub fn weights(ty: GgmlType, rows: usize, cols: usize, rng: &mut Rng) -> Vec<u8> {
    let rb = ty.row_bytes(cols).unwrap();
    let mut bytes = vec![0u8; rows * rb];
    if ty.can_quantize() {
        let x = rng.weights(rows * cols);
        for (src, dst) in x.chunks(cols).zip(bytes.chunks_mut(rb)) {
            quantize_row(ty, src, dst).unwrap();
        }
    } else if !matches!(ty, GgmlType::IQ4_NL | GgmlType::IQ4_XS) {
        // IQ1/IQ2/IQ3 grids, TQ: stand-in blocks (random codes, `d` from the block's RMS).
        let x = rng.weights(rows * cols);
        for (src, dst) in x.chunks(cols).zip(bytes.chunks_mut(rb)) {
            synthesize_row(ty, src, dst).unwrap();
        }
    } else {
        // IQ4_NL / IQ4_XS: random bytes with a moderate f16 `d` at the start of each block.
        for b in bytes.iter_mut() {
            *b = rng.next_u64() as u8;
        }
        for block in bytes.chunks_mut(ty.block_bytes()) {
            let d = half::f16::from_f32(rng.signed() * 0.01);
            block[..2].copy_from_slice(&d.to_le_bytes());
        }
    }
    bytes
}
