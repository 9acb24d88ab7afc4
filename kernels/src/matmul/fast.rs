//! Fast-mode row kernels: integer dot products of the weights' codes with activations
//! quantized to int8 once per matmul (`q8.rs`), as llama.cpp computes on CPUs.
//!
//! Decides: the tiling and the loop structure, shared by every format. A chunk of one token
//! (decode) goes row by row with each block decoded in registers and dotted at once
//! ([`BlockDot::block_direct`]; no scratch tile). Longer chunks (up to
//! [`FAST_TOKEN_CHUNK`]) decode [`ROW_TILE`] rows together (codes into a scratch tile, per-16
//! scales and offsets, per-block factors) and dot them against the chunk's tokens 8 at a time
//! (then 4, 2, 1; 2 at a time for 32-element blocks and the portable implementation): one
//! decode serves the chunk, and one load of a row's code chunk and one scale shuffle serve
//! the pass's tokens. Tail rows (fewer than a tile) go through the same loop one row at a
//! time.
//!
//! Leaves to the formats (`fast/kquants.rs`, `fast/legacy.rs`, `fast/iq4.rs`,
//! `fast/iq_grids.rs`, `fast/ternary.rs`, under the
//! contract of `fast/format.rs`) how a block unpacks, and to `fast/block_dot.rs` the
//! arithmetic of one block (exact integer lane sums, then f32 scaling per lane without fused
//! multiply-adds), so the AVX2, AVX-512 VNNI and portable implementations give the same bits,
//! and neither the token count, nor the tile position, nor the thread split changes a result
//! (each depends only on the row's bytes and the token's quantized activations). A row's
//! result is its 8 lanes summed pairwise (`simd.rs`).

mod block_dot;
pub(super) mod format;
pub(super) mod iq4;
pub(super) mod iq_grids;
pub(super) mod kquants;
pub(super) mod legacy;
pub(super) mod ternary;

use std::marker::PhantomData;

use self::block_dot::{BlockDot, RowsBlock, TokensBlock};
use self::format::{FastFormat, GROUP};
use super::dots::ROW_TILE;
use super::q8::QActs;
use super::rows::RowCall;
use super::simd::{dispatch, IsaKernel, Portable, SimdIsa};

/// Tokens dotted against one decoded row tile before the next tile is decoded: 32 tokens of
/// quantized activations of a 7168-wide matrix are 224 KiB, within a core's L2.
pub const FAST_TOKEN_CHUNK: usize = 32;

/// The fast row kernel of format `F`, with `isa` where this CPU has it.
pub(super) fn dot_rows<F: FastFormat>(call: RowCall<'_, '_, '_, QActs>, isa: SimdIsa) {
    dispatch(isa, Fast::<F>(call, PhantomData));
}

/// [`body`] of `F` as an [`IsaKernel`].
struct Fast<'w, 'o, 'y, F>(RowCall<'w, 'o, 'y, QActs>, PhantomData<F>);

impl<F: FastFormat> IsaKernel for Fast<'_, '_, '_, F> {
    #[inline(always)]
    fn run_portable(self) {
        body::<F, Portable>(self.0);
    }

    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn run_avx2_fma(self) {
        body::<F, super::simd::Avx2Fma>(self.0);
    }

    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn run_avx512_vnni(self) {
        body::<F, super::simd::Avx512Vnni>(self.0);
    }
}

/// Decoded rows: per row its codes (`cols`), per-16 scales and offsets (`cols / 16`) and
/// per-block factors (`cols / BLOCK_ELEMS`).
struct Tile {
    cols: usize,
    c: Vec<u8>,
    a: Vec<i8>,
    m: Vec<i16>,
    d: Vec<f32>,
    dm: Vec<f32>,
}

impl Tile {
    fn new<F: FastFormat>(cols: usize) -> Self {
        let (ng, nb) = (cols / GROUP, cols / F::BLOCK_ELEMS);
        Self {
            cols,
            c: vec![0u8; ROW_TILE * cols],
            a: vec![0i8; ROW_TILE * ng],
            m: vec![0i16; ROW_TILE * ng],
            d: vec![0f32; ROW_TILE * nb],
            dm: vec![0f32; ROW_TILE * nb],
        }
    }

    /// Decodes the row `src` (whole blocks of `F`) into tile row `k`.
    #[inline(always)]
    fn decode<F: FastFormat, S: BlockDot>(&mut self, k: usize, src: &[u8]) {
        let (cols, ng, nb) = (self.cols, self.cols / GROUP, self.cols / F::BLOCK_ELEMS);
        let gpb = F::BLOCK_ELEMS / GROUP;
        let blocks = src
            .chunks_exact(F::BLOCK_BYTES)
            .zip(self.c[k * cols..(k + 1) * cols].chunks_exact_mut(F::BLOCK_ELEMS))
            .zip(
                self.a[k * ng..(k + 1) * ng]
                    .chunks_exact_mut(gpb)
                    .zip(self.m[k * ng..(k + 1) * ng].chunks_exact_mut(gpb)),
            )
            .zip(
                self.d[k * nb..(k + 1) * nb]
                    .iter_mut()
                    .zip(&mut self.dm[k * nb..(k + 1) * nb]),
            );
        for (((b, cb), (ab, mb)), (db, dmb)) in blocks {
            S::codes::<F>(b, cb);
            (*db, *dmb) = F::scales(b, ab, mb);
        }
    }

    /// Tile rows `k0 .. k0 + N` against tokens `ts`: their results per token.
    #[inline(always)]
    fn dot<F: FastFormat, S: BlockDot, const N: usize, const T: usize>(
        &self,
        k0: usize,
        acts: &QActs,
        ts: [usize; T],
    ) -> [[f32; N]; T] {
        let cols = self.cols;
        let (ng, nb) = (cols / GROUP, cols / F::BLOCK_ELEMS);
        let gpb = F::BLOCK_ELEMS / GROUP;
        // Plain loops throughout: `std::array::from_fn` with a closure may stay an
        // out-of-line call per block.
        let mut tok: [(&[i8], &[f32], &[i16]); T] = [(&[], &[], &[]); T];
        for (q, tq) in tok.iter_mut().enumerate() {
            *tq = acts.token(ts[q]);
        }
        let mut acc = [[S::zero(); N]; T];
        let mut rows = RowsBlock::<N> {
            c: [&[]; N],
            a: [&[]; N],
            m: [&[]; N],
        };
        let mut toks = TokensBlock::<N, T> {
            x: [&[]; T],
            bs: [&[]; T],
            fd: [[0.0; N]; T],
            fm: [[0.0; N]; T],
        };
        for blk in 0..nb {
            let (e0, e1) = (blk * F::BLOCK_ELEMS, (blk + 1) * F::BLOCK_ELEMS);
            let (g0, g1) = (blk * gpb, (blk + 1) * gpb);
            for i in 0..N {
                let (r, g) = ((k0 + i) * cols, (k0 + i) * ng);
                rows.c[i] = &self.c[r + e0..r + e1];
                rows.a[i] = &self.a[g + g0..g + g1];
                rows.m[i] = &self.m[g + g0..g + g1];
            }
            for (t, (xs, dxs, bss)) in tok.iter().enumerate() {
                toks.x[t] = &xs[e0..e1];
                toks.bs[t] = &bss[g0..g1];
                let dx = dxs[blk];
                for i in 0..N {
                    toks.fd[t][i] = dx * self.d[(k0 + i) * nb + blk];
                    toks.fm[t][i] = dx * self.dm[(k0 + i) * nb + blk];
                }
            }
            S::block::<F, N, T>(&rows, &toks, &mut acc);
        }
        // Plain loops: a closure passed to `map` may stay an out-of-line call, and with it the
        // AVX2 store inside `reduce`.
        let mut res = [[0f32; N]; T];
        for (rt, at) in res.iter_mut().zip(acc) {
            for (r, a) in rt.iter_mut().zip(at) {
                *r = S::reduce(a);
            }
        }
        res
    }
}

/// The fast row kernel (see the module docs).
#[inline(always)]
fn body<F: FastFormat, S: BlockDot>(call: RowCall<'_, '_, '_, QActs>) {
    let RowCall {
        w,
        rows,
        x: acts,
        n_tokens,
        out,
    } = call;
    let cols = w.cols;
    let nb = cols / F::BLOCK_ELEMS;
    // Invariants of the callers (`QMatrix::new` checked the row geometry, `matmul`
    // quantized the activations for this type), not data.
    assert!(
        nb * F::BLOCK_ELEMS == cols && w.row_bytes == nb * F::BLOCK_BYTES,
        "fast kernel: row of {cols} elements is not whole blocks"
    );
    assert!(
        acts.block == F::BLOCK_ELEMS && acts.cols == cols,
        "fast kernel: activations quantized for another shape"
    );

    // Allocated at the first chunk of several tokens: decode never needs it.
    let mut tile: Option<Tile> = None;
    let mut t0 = 0;
    while t0 < n_tokens {
        let t1 = (t0 + FAST_TOKEN_CHUNK).min(n_tokens);
        if t1 - t0 == 1 {
            // One token (decode): each row's blocks are decoded in registers and dotted
            // directly; a scratch tile would only add a store and a load per code.
            direct::<F, S>(w, rows.clone(), acts, t0, &mut *out[t0]);
            t0 = t1;
            continue;
        }
        let tile = tile.get_or_insert_with(|| Tile::new::<F>(cols));
        let mut r = rows.start;
        while r < rows.end {
            let n = ROW_TILE.min(rows.end - r);
            for k in 0..n {
                tile.decode::<F, S>(k, w.rows(r + k, 1));
            }
            let i = r - rows.start;
            if n < ROW_TILE {
                for k in 0..n {
                    tokens::<F, S, 1>(tile, k, acts, t0..t1, out, i + k);
                }
            } else {
                tokens::<F, S, ROW_TILE>(tile, 0, acts, t0..t1, out, i);
            }
            r += n;
        }
        t0 = t1;
    }
}

/// Tokens per pass over a decoded row tile of 256-element blocks: one load of a row's code
/// chunk and one scale shuffle serve this many tokens. 32-element blocks go two tokens at a
/// time (their per-block f32 step for `N · T` accumulators outweighs the chunk reuse).
const TOKEN_TILE: usize = 8;

/// Tile rows `k0 .. k0 + N` against tokens `ts`, [`TOKEN_TILE`] (then 4, 2, 1) at a time
/// (from 2 for 32-element blocks and the portable implementation, see
/// [`BlockDot::WIDE_TOKEN_PASS`]);
/// row `k0 + k`'s result for token `t` goes to `out[t][i + k]`.
#[inline(always)]
fn tokens<F: FastFormat, S: BlockDot, const N: usize>(
    tile: &Tile,
    k0: usize,
    acts: &QActs,
    ts: std::ops::Range<usize>,
    out: &mut [&mut [f32]],
    i: usize,
) {
    let mut t = ts.start;
    macro_rules! pass {
        ($T:expr) => {
            while ts.end - t >= $T {
                let mut ts = [0usize; $T];
                for (q, tq) in ts.iter_mut().enumerate() {
                    *tq = t + q;
                }
                let res = tile.dot::<F, S, N, { $T }>(k0, acts, ts);
                for (q, rq) in res.iter().enumerate() {
                    out[t + q][i..i + N].copy_from_slice(rq);
                }
                t += $T;
            }
        };
    }
    if F::BLOCK_ELEMS >= 256 && S::WIDE_TOKEN_PASS {
        pass!(TOKEN_TILE);
        pass!(4);
    }
    pass!(2);
    pass!(1);
}

/// Token `t` against rows `rows` without a tile (see [`BlockDot::block_direct`]): the same
/// bits as the tiled loop.
#[inline(always)]
fn direct<F: FastFormat, S: BlockDot>(
    w: super::rows::WeightRows<'_>,
    rows: std::ops::Range<usize>,
    acts: &QActs,
    t: usize,
    out: &mut [f32],
) {
    let (x, dx, bs) = acts.token(t);
    let gpb = F::BLOCK_ELEMS / GROUP;
    for (r, o) in rows.zip(out.iter_mut()) {
        let row = w.rows(r, 1);
        let mut acc = S::zero();
        let blocks = row
            .chunks_exact(F::BLOCK_BYTES)
            .zip(x.chunks_exact(F::BLOCK_ELEMS))
            .zip(bs.chunks_exact(gpb).zip(dx));
        for ((b, xb), (bsb, dxb)) in blocks {
            S::block_direct::<F>(b, xb, bsb, *dxb, &mut acc);
        }
        *o = S::reduce(acc);
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_data::bytes as test_bytes;
    use super::iq4::{Iq4Nl, Iq4Xs};
    use super::iq_grids::{Iq2S, Iq2Xs, Iq2Xxs, Iq3S, Iq3Xxs};
    use super::kquants::{Q2K, Q3K, Q4K, Q5K, Q6K};
    use super::legacy::{Q40, Q41, Q50, Q51, Q80};
    use super::ternary::{Iq1M, Iq1S, Tq10, Tq20};
    use super::*;

    /// One block of `F` decoded by the portable unpacker: codes, scales, offsets, `(d, dm)`.
    fn decode<F: FastFormat>(b: &[u8]) -> (Vec<u8>, Vec<i8>, Vec<i16>, (f32, f32)) {
        let g = F::BLOCK_ELEMS / GROUP;
        let (mut c, mut a, mut m) = (vec![0u8; F::BLOCK_ELEMS], vec![0i8; g], vec![0i16; g]);
        F::codes(b, &mut c);
        let f = F::scales(b, &mut a, &mut m);
        (c, a, m, f)
    }

    /// The AVX2 code unpackers (stored and in registers) and scale unpackers produce exactly
    /// the portable ones' bytes.
    #[test]
    #[cfg(target_arch = "x86_64")]
    fn avx2_unpackers_exact() {
        if !super::super::simd::avx2_or_skip("avx2_unpackers_exact") {
            return;
        }
        fn check<F: FastFormat>() {
            for seed in 0..8u32 {
                let b = test_bytes(F::BLOCK_BYTES, seed);
                let (mut one, mut two) = (vec![0u8; F::BLOCK_ELEMS], vec![0u8; F::BLOCK_ELEMS]);
                F::codes(&b, &mut one);
                // SAFETY: AVX2 checked above.
                unsafe { F::codes_avx2(&b, &mut two) };
                assert_eq!(one, two);
                // The register forms: code chunks and (16-group formats) scale vectors.
                let mut three = vec![0u8; 256];
                // SAFETY: AVX2 checked above; `three` holds the 8 · 32 bytes written.
                unsafe {
                    for (j, v) in F::chunks_avx2(&b).into_iter().enumerate() {
                        std::arch::x86_64::_mm256_storeu_si256(
                            three.as_mut_ptr().add(32 * j).cast(),
                            v,
                        );
                    }
                }
                assert_eq!(one[..], three[..F::BLOCK_ELEMS]);
                if F::BLOCK_ELEMS == 256 {
                    let (mut a, mut m) = ([0i8; 16], [0i16; 16]);
                    let f = F::scales(&b, &mut a, &mut m);
                    let (mut va, mut vm) = ([0i8; 16], [0i16; 16]);
                    // SAFETY: AVX2 checked above; the arrays hold the bytes written.
                    let (d, dm) = unsafe {
                        let (av, mv, d, dm) = F::scales_avx2(&b);
                        std::arch::x86_64::_mm_storeu_si128(va.as_mut_ptr().cast(), av);
                        std::arch::x86_64::_mm256_storeu_si256(vm.as_mut_ptr().cast(), mv);
                        (d, dm)
                    };
                    assert_eq!((a, m), (va, vm), "seed {seed}");
                    assert_eq!((f.0.to_bits(), f.1.to_bits()), (d.to_bits(), dm.to_bits()));
                }
            }
        }
        check::<Q2K>();
        check::<Q3K>();
        check::<Q4K>();
        check::<Q5K>();
        check::<Q6K>();
        check::<Q40>();
        check::<Q41>();
        check::<Q50>();
        check::<Q51>();
        check::<Q80>();
        check::<Iq4Nl>();
        check::<Iq4Xs>();
        check::<Iq2Xxs>();
        check::<Iq2Xs>();
        check::<Iq2S>();
        check::<Iq3Xxs>();
        check::<Iq3S>();
        check::<Iq1S>();
        check::<Iq1M>();
        check::<Tq10>();
        check::<Tq20>();
    }

    /// Random blocks of every format, decoded: `w = d·a·c − dm·m` equals exact dequantization
    /// (up to the f32 rounding of `d·a`, which the dequantizer forms first).
    #[test]
    fn decoders_match_dequantization() {
        fn check<F: FastFormat>(ty: crate::GgmlType) {
            for seed in 0..16u32 {
                let mut b = test_bytes(F::BLOCK_BYTES, seed);
                // Keep the f16 factors finite and moderate: rewrite any f16 exponent of 31.
                for (i, v) in b.iter_mut().enumerate() {
                    if i % 2 == 1 && (*v & 0x7C) == 0x7C {
                        *v &= !0x40;
                    }
                }
                let (c, a, m, (d, dm)) = decode::<F>(&b);
                let mut want = vec![0f32; F::BLOCK_ELEMS];
                crate::dequantize_row(ty, &b, &mut want).expect("dequantize");
                for (i, w) in want.iter().enumerate() {
                    let code = if F::SIGNED {
                        c[i] as i8 as f64
                    } else {
                        c[i] as f64
                    };
                    let got =
                        d as f64 * a[i / GROUP] as f64 * code - dm as f64 * m[i / GROUP] as f64;
                    let tol = 1e-6 * (w.abs() as f64 + (d as f64 * 128.0 * 64.0).abs());
                    if !(w.is_finite() && got.is_finite()) {
                        continue;
                    }
                    assert!(
                        (got - *w as f64).abs() <= tol,
                        "{ty:?} seed {seed} elem {i}: {got} vs {w}"
                    );
                    if !F::SIGNED {
                        assert!(c[i] <= 63, "{ty:?}: unsigned code {} over 63", c[i]);
                    }
                    if F::BLOCK_ELEMS == 32 {
                        assert_eq!(
                            a[i / GROUP],
                            1,
                            "{ty:?}: 32-element blocks have unit scales"
                        );
                    }
                    if !F::HAS_OFFSET {
                        assert_eq!(m[i / GROUP], 0, "{ty:?}: offsets of a format without");
                    }
                }
            }
        }
        use crate::GgmlType as T;
        check::<Q2K>(T::Q2_K);
        check::<Q3K>(T::Q3_K);
        check::<Q4K>(T::Q4_K);
        check::<Q5K>(T::Q5_K);
        check::<Q6K>(T::Q6_K);
        check::<Q80>(T::Q8_0);
        check::<Q40>(T::Q4_0);
        check::<Q41>(T::Q4_1);
        check::<Q50>(T::Q5_0);
        check::<Q51>(T::Q5_1);
        check::<Iq4Nl>(T::IQ4_NL);
        check::<Iq4Xs>(T::IQ4_XS);
        check::<Iq2Xxs>(T::IQ2_XXS);
        check::<Iq2Xs>(T::IQ2_XS);
        check::<Iq2S>(T::IQ2_S);
        check::<Iq3Xxs>(T::IQ3_XXS);
        check::<Iq3S>(T::IQ3_S);
        check::<Iq1S>(T::IQ1_S);
        check::<Iq1M>(T::IQ1_M);
        check::<Tq10>(T::TQ1_0);
        check::<Tq20>(T::TQ2_0);
    }
}
