//! Deterministic test data shared by the kernel unit tests (compiled for tests only).

/// `n` deterministic values in [-0.5, 0.5) from `seed` (a small LCG: no dependencies).
pub(crate) fn data(n: usize, seed: u32) -> Vec<f32> {
    let mut s = seed.wrapping_mul(2_654_435_761).wrapping_add(1);
    (0..n)
        .map(|_| {
            s = s.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            (s >> 8) as f32 / (1u32 << 24) as f32 - 0.5
        })
        .collect()
}

/// `n` deterministic bytes from `seed` (the values of [`data`] spread over 0..=255).
pub(crate) fn bytes(n: usize, seed: u32) -> Vec<u8> {
    data(n, seed)
        .iter()
        .map(|v| ((v + 0.5) * 255.0) as u8)
        .collect()
}
