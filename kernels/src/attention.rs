//! Flash-style attention over a cache whose rows every query row shares (MLA's latent cache:
//! one key/value row per position for all heads), the CPU kernel of the fast numeric mode.
//!
//! [`flash_attend`] folds a range of cache positions into an online softmax
//! ([`FlashState`]: running max, running sum and weighted value sum per query row), block by
//! block of [`FLASH_BLOCK_POSITIONS`], so the score row never exists whole: scratch is
//! `rows × FLASH_BLOCK_POSITIONS` scores whatever the context length. Each cache row is read
//! once per block of query rows (all heads of all new tokens) instead of once per row.
//! Ranges computed separately (split over the cache for decode) are combined with
//! [`FlashState::merge`]; [`FlashState::finish`] divides by the sums.
//!
//! Every row's arithmetic depends only on that row, the cache and the block boundaries
//! (multiples of [`FLASH_BLOCK_POSITIONS`] from the range start), never on the other rows:
//! a sequence gets the same bits whether its prompt came in one chunk or several.
//!
//! The cache rows come in their stored type ([`KvRows`]): f32 rows are read in place; narrower
//! ones (bf16, f16, q8_0) are converted block by block into a scratch of
//! `FLASH_BLOCK_POSITIONS × kdim` f32 values, so the cache is never widened whole and the
//! arithmetic after the conversion is the same as for f32 rows holding those values.

use crate::kv_rows::KvRows;
use crate::matmul::dots::{dot, dot4, dot4x4, POS_TILE, ROW_TILE};
#[cfg(target_arch = "x86_64")]
use crate::matmul::simd::Avx2Fma;
use crate::matmul::simd::{dispatch, F32Lanes, IsaKernel, Portable, SimdIsa, LANES};

/// Cache positions scored together before the softmax state is updated.
pub const FLASH_BLOCK_POSITIONS: usize = 32;

/// The online softmax of a block of query rows.
#[derive(Debug, Clone)]
pub struct FlashState {
    vdim: usize,
    /// Running max of each row's scores (`-inf` before any visible position).
    max: Vec<f32>,
    /// Running `Σ exp(score - max)` of each row.
    sum: Vec<f32>,
    /// Running `Σ exp(score - max) · value` of each row, `[rows, vdim]`.
    acc: Vec<f32>,
}

impl FlashState {
    /// Nothing seen yet, for `rows` query rows with values of `vdim`.
    pub fn new(rows: usize, vdim: usize) -> Self {
        Self {
            vdim,
            max: vec![f32::NEG_INFINITY; rows],
            sum: vec![0.0; rows],
            acc: vec![0.0; rows * vdim],
        }
    }

    /// Query rows.
    pub fn rows(&self) -> usize {
        self.max.len()
    }

    /// Adds `other` (the same rows over other positions) into `self`.
    pub fn merge(&mut self, other: &FlashState) {
        let vdim = self.vdim;
        for r in 0..self.rows() {
            let (m0, m1) = (self.max[r], other.max[r]);
            if m1 == f32::NEG_INFINITY {
                continue;
            }
            let m = m0.max(m1);
            let (f0, f1) = ((m0 - m).exp(), (m1 - m).exp());
            self.sum[r] = self.sum[r] * f0 + other.sum[r] * f1;
            let acc = &mut self.acc[r * vdim..(r + 1) * vdim];
            for (a, &b) in acc.iter_mut().zip(&other.acc[r * vdim..(r + 1) * vdim]) {
                *a = *a * f0 + b * f1;
            }
            self.max[r] = m;
        }
    }

    /// The attention output of each row (`[rows, vdim]`): the weighted values over the sums;
    /// zeros for a row that saw no position.
    pub fn finish(&self, out: &mut [f32]) {
        let vdim = self.vdim;
        for (r, o) in out.chunks_exact_mut(vdim).enumerate().take(self.rows()) {
            let inv = if self.sum[r] > 0.0 {
                1.0 / self.sum[r]
            } else {
                0.0
            };
            for (o, &a) in o.iter_mut().zip(&self.acc[r * vdim..(r + 1) * vdim]) {
                *o = a * inv;
            }
        }
    }
}

/// Folds cache positions `start..start + kv.positions()` into `state`.
///
/// `q` is `[rows, kdim]` with `kdim` the width of a cache row (a row scores a position by its
/// dot product with the position's `kdim` values, times `scale`); `limits[r]` is the first
/// position row `r` may not see; the value of a position is its first `vdim` values.
pub fn flash_attend(
    q: &[f32],
    limits: &[usize],
    kv: KvRows<'_>,
    start: usize,
    scale: f32,
    state: &mut FlashState,
) {
    let keys = kv.shape().width();
    flash_attend_split(q, limits, kv, keys, start, scale, state);
}

/// [`flash_attend`] over rows of separate keys and values: a position's key is its first
/// `keys` values (`q` is `[rows, keys]`) and its value the `vdim` after them (MLA's
/// decompressed form, rows `[k | v]`); `keys` = the row width is [`flash_attend`]. The same
/// arithmetic per score and per value.
pub fn flash_attend_split(
    q: &[f32],
    limits: &[usize],
    kv: KvRows<'_>,
    keys: usize,
    start: usize,
    scale: f32,
    state: &mut FlashState,
) {
    let kdim = kv.shape().width();
    // Callers' shapes, not data.
    assert!(
        keys == kdim || keys + state.vdim <= kdim,
        "flash: keys {keys} and values {} do not fit rows of {kdim}",
        state.vdim
    );
    let kernel = Flash {
        q,
        kdim,
        keys,
        values_at: if keys == kdim { 0 } else { keys },
        limits,
        kv,
        start,
        scale,
        state,
    };
    dispatch(SimdIsa::detected(), kernel);
}

struct Flash<'a> {
    q: &'a [f32],
    /// Values a cache row.
    kdim: usize,
    /// Key values at the start of a row (the width of a query row).
    keys: usize,
    /// Where a row's values start.
    values_at: usize,
    limits: &'a [usize],
    kv: KvRows<'a>,
    start: usize,
    scale: f32,
    state: &'a mut FlashState,
}

impl IsaKernel for Flash<'_> {
    fn run_portable(self) {
        self.run::<Portable>();
    }

    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn run_avx2_fma(self) {
        self.run::<Avx2Fma>();
    }
}

impl Flash<'_> {
    #[inline(always)]
    fn run<S: F32Lanes>(self) {
        let Flash {
            q,
            kdim,
            keys,
            values_at,
            limits,
            kv,
            start,
            scale,
            state,
        } = self;
        let rows = state.rows();
        let vdim = state.vdim;
        let n_pos = kv.positions();
        // This thread's scratch (decode at depth runs many short ranges: allocating and
        // zeroing it per range cost ~5% of a step). Every score and converted value is
        // written before it is read.
        let mut scratch = SCRATCH.with(|s| std::mem::take(&mut *s.borrow_mut()));
        scratch.scores.resize(rows * FLASH_BLOCK_POSITIONS, 0.0);
        let scores = &mut scratch.scores[..rows * FLASH_BLOCK_POSITIONS];
        // Narrow rows are converted here a block at a time; f32 rows are read in place.
        let in_place = kv.as_f32();
        if in_place.is_none() {
            scratch.converted.resize(FLASH_BLOCK_POSITIONS * kdim, 0.0);
        }
        let converted = &mut scratch.converted;
        let mut block0 = 0;
        while block0 < n_pos {
            let n = FLASH_BLOCK_POSITIONS.min(n_pos - block0);
            let pos0 = start + block0;
            let block: &[f32] = match in_place {
                Some(all) => &all[block0 * kdim..(block0 + n) * kdim],
                None => {
                    let out = &mut converted[..n * kdim];
                    kv.slice(block0..block0 + n).decode_into(out);
                    out
                }
            };
            // Scores, position-major so each cache row is loaded once per tile of query
            // rows: ROW_TILE rows × POS_TILE positions through `dot4x4`, then the block's last
            // positions through `dot4`, the last rows through `dot` (every result equals
            // `dot`'s, so the tiling never changes a score).
            let q_row = |r: usize| &q[r * keys..(r + 1) * keys];
            let k_row = |j: usize| &block[j * kdim..j * kdim + keys];
            let mut put = |r: usize, j: usize, d: f32| {
                scores[r * FLASH_BLOCK_POSITIONS + j] = if pos0 + j < limits[r] {
                    d * scale
                } else {
                    f32::NEG_INFINITY
                };
            };
            let full_rows = rows - rows % ROW_TILE;
            let mut j = 0;
            while j + POS_TILE <= n {
                for r in (0..full_rows).step_by(ROW_TILE) {
                    let d = dot4x4::<S>(
                        [q_row(r), q_row(r + 1), q_row(r + 2), q_row(r + 3)],
                        [k_row(j), k_row(j + 1), k_row(j + 2), k_row(j + 3)],
                    );
                    for (k, dk) in d.iter().enumerate() {
                        for (i, &v) in dk.iter().enumerate() {
                            put(r + k, j + i, v);
                        }
                    }
                }
                j += POS_TILE;
            }
            for j in j..n {
                for r in (0..full_rows).step_by(ROW_TILE) {
                    let d = dot4::<S>(
                        [q_row(r), q_row(r + 1), q_row(r + 2), q_row(r + 3)],
                        k_row(j),
                    );
                    for (k, &v) in d.iter().enumerate() {
                        put(r + k, j, v);
                    }
                }
            }
            for r in full_rows..rows {
                for j in 0..n {
                    put(r, j, dot::<S>(q_row(r), k_row(j)));
                }
            }
            // Softmax state: new max, rescale, probabilities in place of the scores.
            for r in 0..rows {
                let sc = &mut scores[r * FLASH_BLOCK_POSITIONS..r * FLASH_BLOCK_POSITIONS + n];
                let block_max = sc.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                if block_max == f32::NEG_INFINITY {
                    // Nothing visible in this block: no weight to any of its values.
                    sc.fill(0.0);
                    continue;
                }
                let m_old = state.max[r];
                let m = m_old.max(block_max);
                if m > m_old && m_old > f32::NEG_INFINITY {
                    let f = (m_old - m).exp();
                    state.sum[r] *= f;
                    for a in &mut state.acc[r * vdim..(r + 1) * vdim] {
                        *a *= f;
                    }
                }
                state.max[r] = m;
                state.sum[r] += exp_shifted_sum::<S>(sc, m);
            }
            // Weighted values, ROW_TILE rows at a time (each value load serves them all):
            // the rows' accumulators stay in registers, a chunk at a time, across the
            // block's positions (the block's values are in cache).
            let p_row =
                |r: usize| &scores[r * FLASH_BLOCK_POSITIONS..r * FLASH_BLOCK_POSITIONS + n];
            let values = &block[values_at..];
            let mut r = 0;
            for accs in state.acc[..rows * vdim].chunks_exact_mut(ROW_TILE * vdim) {
                let ps = [p_row(r), p_row(r + 1), p_row(r + 2), p_row(r + 3)];
                weighted_sum4::<S>(accs, ps, values, kdim);
                r += ROW_TILE;
            }
            for r in r..rows {
                weighted_sum::<S>(
                    &mut state.acc[r * vdim..(r + 1) * vdim],
                    p_row(r),
                    values,
                    kdim,
                );
            }
            block0 += n;
        }
        SCRATCH.with(|s| *s.borrow_mut() = scratch);
    }
}

/// [`Flash::run`]'s per-thread scratch, kept between calls.
#[derive(Default)]
struct Scratch {
    scores: Vec<f32>,
    converted: Vec<f32>,
}

thread_local! {
    static SCRATCH: std::cell::RefCell<Scratch> = std::cell::RefCell::new(Scratch::default());
}

/// Below this, `exp` is 0 in [`exp_approx`] (`ln` of the smallest normal f32).
const EXP_MIN: f32 = -87.336_55;
const LN2_HI: f32 = 0.693_359_4;
const LN2_LO: f32 = -2.121_944_4e-4;
/// Cephes `expf`'s polynomial for `e^r − 1 − r` over `|r| ≤ ln 2 / 2`, highest power first.
const EXP_POLY: [f32; 6] = [
    1.987_569_1e-4,
    1.398_199_9e-3,
    8.333_452e-3,
    4.166_579_6e-2,
    1.666_666_5e-1,
    0.5,
];

/// `e^x` for `x ≤ 0` (softmax scores less their max; `-inf` gives 0), within 2 ulp of the
/// correctly rounded value: Cody-Waite reduction `x = n·ln 2 + r`, Cephes' polynomial, `2^n`
/// by the exponent bits. Branch-free, so a loop of it vectorizes (libm's `expf` is a call per
/// value: at depth 4096 a decode step's softmax took as long as its flash dot products).
#[inline(always)]
fn exp_approx<S: F32Lanes>(x: f32) -> f32 {
    let xc = x.max(EXP_MIN);
    let n = (xc * std::f32::consts::LOG2_E + 0.5).floor();
    let r = S::mul_add_scalar(n, -LN2_HI, xc);
    let r = S::mul_add_scalar(n, -LN2_LO, r);
    let mut p = EXP_POLY[0];
    for c in &EXP_POLY[1..] {
        p = S::mul_add_scalar(p, r, *c);
    }
    let y = S::mul_add_scalar(p, r * r, r) + 1.0;
    // n ∈ [-126, 0]: 2^n is a normal f32.
    let scale = f32::from_bits(((n as i32 + 127) as u32) << 23);
    if x < EXP_MIN {
        0.0
    } else {
        y * scale
    }
}

/// Replaces every score `s` of `sc` by `e^(s − m)` ([`exp_approx`]) and returns their sum,
/// added in [`LANES`] interleaved partial sums, then those in lane order (a fixed order, so
/// the bits depend only on the scores).
#[inline(always)]
fn exp_shifted_sum<S: F32Lanes>(sc: &mut [f32], m: f32) -> f32 {
    for s in sc.iter_mut() {
        *s = exp_approx::<S>(*s - m);
    }
    let mut lanes = [0f32; LANES];
    for chunk in sc.chunks(LANES) {
        for (l, &v) in lanes.iter_mut().zip(chunk) {
            *l += v;
        }
    }
    lanes.iter().sum()
}

/// Accumulator vectors per row held in registers per pass of [`weighted_sum4`].
const VALUE_CHUNK_VECTORS4: usize = 4;

/// [`weighted_sum`] for [`ROW_TILE`] rows at once (`ys` their `[ROW_TILE, vdim]`
/// accumulators, `ps[k]` row `k`'s weights), each row's elements getting the same
/// multiply-adds in the same order as `weighted_sum` gives them (the same bits), every value
/// load shared by the rows.
#[inline(always)]
fn weighted_sum4<S: F32Lanes>(
    ys: &mut [f32],
    ps: [&[f32]; ROW_TILE],
    block: &[f32],
    stride: usize,
) {
    let vdim = ys.len() / ROW_TILE;
    let main = vdim - vdim % LANES;
    let n = ps.iter().map(|p| p.len()).min().unwrap_or(0);
    let mut c0 = 0;
    while c0 < main {
        let nv = VALUE_CHUNK_VECTORS4.min((main - c0) / LANES);
        let mut acc = [[S::zero(); VALUE_CHUNK_VECTORS4]; ROW_TILE];
        for (k, ak) in acc.iter_mut().enumerate() {
            for (v, a) in ak.iter_mut().enumerate().take(nv) {
                *a = S::load(lane_of(ys, k * vdim + c0 + v * LANES));
            }
        }
        for j in 0..n {
            let row = &block[j * stride..j * stride + vdim];
            let mut vals = [S::zero(); VALUE_CHUNK_VECTORS4];
            for (v, x) in vals.iter_mut().enumerate().take(nv) {
                *x = S::load(lane_of(row, c0 + v * LANES));
            }
            for (ak, p) in acc.iter_mut().zip(ps) {
                let pj = p[j];
                if pj != 0.0 {
                    for (a, x) in ak.iter_mut().zip(vals).take(nv) {
                        *a = S::mul_add_splat(x, pj, *a);
                    }
                }
            }
        }
        for (k, ak) in acc.iter().enumerate() {
            for (v, a) in ak.iter().enumerate().take(nv) {
                let mut out = [0f32; LANES];
                S::store(*a, &mut out);
                let at = k * vdim + c0 + v * LANES;
                ys[at..at + LANES].copy_from_slice(&out);
            }
        }
        c0 += nv * LANES;
    }
    for (k, p) in ps.iter().enumerate() {
        for i in main..vdim {
            let mut v = ys[k * vdim + i];
            for (j, &pj) in p.iter().enumerate().take(n) {
                if pj != 0.0 {
                    v = S::mul_add_scalar(block[j * stride + i], pj, v);
                }
            }
            ys[k * vdim + i] = v;
        }
    }
}

/// `v[at..at + LANES]` as an array.
#[inline(always)]
fn lane_of(v: &[f32], at: usize) -> &[f32; LANES] {
    let Ok(a) = <&[f32; LANES]>::try_from(&v[at..at + LANES]) else {
        unreachable!("a slice of LANES elements")
    };
    a
}

/// Accumulator vectors held in registers per pass of [`weighted_sum`].
const VALUE_CHUNK_VECTORS: usize = 8;

/// `y += Σ_j p[j] · v_j` with `v_j` the first `y.len()` values of `block`'s row `j` (rows
/// `stride` apart), skipping `p[j] = 0`: per element the same multiply-adds in the same
/// position order as one `y += p[j]·v_j` pass per position (lanes through
/// [`F32Lanes::mul_add_splat`], the tail through [`F32Lanes::mul_add_scalar`]), so the same
/// bits, with `y` loaded and stored once per chunk instead of once per position.
#[inline(always)]
fn weighted_sum<S: F32Lanes>(y: &mut [f32], p: &[f32], block: &[f32], stride: usize) {
    let vdim = y.len();
    let main = vdim - vdim % LANES;
    fn lanes(v: &[f32], at: usize) -> &[f32; LANES] {
        let Ok(a) = <&[f32; LANES]>::try_from(&v[at..at + LANES]) else {
            unreachable!("a slice of LANES elements")
        };
        a
    }
    let mut c0 = 0;
    while c0 < main {
        let nv = VALUE_CHUNK_VECTORS.min((main - c0) / LANES);
        let mut acc = [S::zero(); VALUE_CHUNK_VECTORS];
        for (k, a) in acc.iter_mut().enumerate().take(nv) {
            *a = S::load(lanes(y, c0 + k * LANES));
        }
        for (j, &pj) in p.iter().enumerate() {
            if pj != 0.0 {
                let row = &block[j * stride..j * stride + vdim];
                for (k, a) in acc.iter_mut().enumerate().take(nv) {
                    *a = S::mul_add_splat(S::load(lanes(row, c0 + k * LANES)), pj, *a);
                }
            }
        }
        for (k, a) in acc.iter().enumerate().take(nv) {
            let mut out = [0f32; LANES];
            S::store(*a, &mut out);
            y[c0 + k * LANES..c0 + (k + 1) * LANES].copy_from_slice(&out);
        }
        c0 += nv * LANES;
    }
    for i in main..vdim {
        let mut v = y[i];
        for (j, &pj) in p.iter().enumerate() {
            if pj != 0.0 {
                v = S::mul_add_scalar(block[j * stride + i], pj, v);
            }
        }
        y[i] = v;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The softmax's exponential against libm's over the range it is used on, and its end:
    /// within 2 ulp, exactly 1 at 0, exactly 0 below the smallest normal (and at `-inf`).
    #[test]
    fn exp_approx_is_within_two_ulp_of_libm() {
        fn check<S: F32Lanes>(name: &str) {
            let mut worst = 0u32;
            let mut x = 0f32;
            while x > EXP_MIN {
                let (got, want) = (exp_approx::<S>(x), x.exp());
                worst = worst.max(got.to_bits().abs_diff(want.to_bits()));
                x -= 0.000_37;
            }
            assert!(worst <= 2, "{name}: worst error {worst} ulp");
            assert_eq!(exp_approx::<S>(0.0), 1.0, "{name}");
            assert_eq!(exp_approx::<S>(-88.0), 0.0, "{name}");
            assert_eq!(exp_approx::<S>(f32::NEG_INFINITY), 0.0, "{name}");
        }
        // Two roundings per multiply-add (portable) and fused ones (the AVX2 lanes' rounding,
        // computed here by libm's fmaf, so on any CPU).
        check::<Portable>("portable");
        #[cfg(target_arch = "x86_64")]
        check::<Avx2Fma>("fused");
    }
    use crate::kv_rows::{KvBuf, KvRowShape, KvType};

    /// Plain two-pass softmax attention of one row, in f64.
    fn reference(
        q: &[f32],
        kv: &[f32],
        kdim: usize,
        vdim: usize,
        limit: usize,
        scale: f32,
    ) -> Vec<f64> {
        let scores: Vec<f64> = (0..limit)
            .map(|p| {
                let row = &kv[p * kdim..(p + 1) * kdim];
                q.iter()
                    .zip(row)
                    .map(|(&a, &b)| a as f64 * b as f64)
                    .sum::<f64>()
                    * scale as f64
            })
            .collect();
        let m = scores.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let w: Vec<f64> = scores.iter().map(|s| (s - m).exp()).collect();
        let total: f64 = w.iter().sum();
        (0..vdim)
            .map(|i| {
                (0..limit)
                    .map(|p| w[p] * kv[p * kdim + i] as f64)
                    .sum::<f64>()
                    / total
            })
            .collect()
    }

    /// A row shape whose value part is the first `vdim` of `kdim` values.
    fn shape_of(kdim: usize, vdim: usize) -> KvRowShape {
        KvRowShape {
            latent: vdim,
            rope: kdim - vdim,
        }
    }

    fn data(n: usize, seed: u32) -> Vec<f32> {
        (0..n)
            .map(|i| {
                ((i as u32).wrapping_mul(2_654_435_761).wrapping_add(seed) % 2001) as f32 / 1000.0
                    - 1.0
            })
            .collect()
    }

    /// Split ranges merged, causal limits and odd sizes agree with the two-pass softmax.
    #[test]
    fn flash_attention_matches_two_pass_softmax() {
        let (kdim, vdim, rows, n_pos) = (19, 13, 5, 101);
        let q = data(rows * kdim, 1);
        let kv = data(n_pos * kdim, 2);
        let limits: Vec<usize> = (0..rows).map(|r| n_pos - 3 * r).collect();
        let scale = 0.3;
        let shape = shape_of(kdim, vdim);
        let mut whole = FlashState::new(rows, vdim);
        flash_attend(
            &q,
            &limits,
            KvRows::from_f32(shape, &kv),
            0,
            scale,
            &mut whole,
        );
        let mut split = FlashState::new(rows, vdim);
        for (a, b) in [(0usize, 40usize), (40, 77), (77, n_pos)] {
            let mut part = FlashState::new(rows, vdim);
            flash_attend(
                &q,
                &limits,
                KvRows::from_f32(shape, &kv[a * kdim..b * kdim]),
                a,
                scale,
                &mut part,
            );
            split.merge(&part);
        }
        for state in [&whole, &split] {
            let mut out = vec![0f32; rows * vdim];
            state.finish(&mut out);
            for r in 0..rows {
                let want = reference(
                    &q[r * kdim..(r + 1) * kdim],
                    &kv,
                    kdim,
                    vdim,
                    limits[r],
                    scale,
                );
                for (i, (&g, &w)) in out[r * vdim..(r + 1) * vdim].iter().zip(&want).enumerate() {
                    assert!((g as f64 - w).abs() < 1e-5, "row {r} value {i}: {g} vs {w}");
                }
            }
        }
    }

    /// A row's result does not depend on the other rows of its block.
    #[test]
    fn rows_are_independent() {
        let (kdim, vdim, n_pos) = (24, 16, 70);
        let q = data(3 * kdim, 5);
        let kv = data(n_pos * kdim, 6);
        let limits = [70, 33, 1];
        let kv = KvRows::from_f32(shape_of(kdim, vdim), &kv);
        let mut all = FlashState::new(3, vdim);
        flash_attend(&q, &limits, kv, 0, 0.5, &mut all);
        let mut out_all = vec![0f32; 3 * vdim];
        all.finish(&mut out_all);
        for r in 0..3 {
            let mut one = FlashState::new(1, vdim);
            flash_attend(
                &q[r * kdim..(r + 1) * kdim],
                &limits[r..r + 1],
                kv,
                0,
                0.5,
                &mut one,
            );
            let mut out = vec![0f32; vdim];
            one.finish(&mut out);
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert_eq!(
                bits(&out),
                bits(&out_all[r * vdim..(r + 1) * vdim]),
                "row {r}"
            );
        }
    }

    /// `weighted_sum` gives the bits of one `y += p·v` pass per position (the order it
    /// replaced), and `weighted_sum4` each row's `weighted_sum` bits, with zero weights skipped, a row tail past the lanes and rows wider than
    /// the chunk, on the portable lanes and (where the CPU has them) AVX2 + FMA.
    #[test]
    fn weighted_sum_equals_position_passes() {
        fn check<S: F32Lanes>() {
            let (kdim, n) = (300usize, 29usize);
            for vdim in [8usize, 77, 256, 300] {
                let block = data(n * kdim, 7);
                let mut p = data(n, 8);
                p[3] = 0.0;
                p[17] = 0.0;
                let y0 = data(vdim, 9);
                let mut want = y0.clone();
                for (j, &pj) in p.iter().enumerate() {
                    if pj == 0.0 {
                        continue;
                    }
                    let v = &block[j * kdim..j * kdim + vdim];
                    let main = vdim - vdim % LANES;
                    for c in (0..main).step_by(LANES) {
                        let x: [f32; LANES] = std::array::from_fn(|l| v[c + l]);
                        let yv: [f32; LANES] = std::array::from_fn(|l| want[c + l]);
                        let mut o = [0f32; LANES];
                        S::store(S::mul_add_splat(S::load(&x), pj, S::load(&yv)), &mut o);
                        want[c..c + LANES].copy_from_slice(&o);
                    }
                    for i in main..vdim {
                        want[i] = S::mul_add_scalar(v[i], pj, want[i]);
                    }
                }
                let mut got = y0.clone();
                weighted_sum::<S>(&mut got, &p, &block, kdim);
                for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                    assert_eq!(g.to_bits(), w.to_bits(), "vdim {vdim} element {i}");
                }
                // Four rows at once: each row as alone (rows with other zero weights).
                let ps: Vec<Vec<f32>> = (0..ROW_TILE as u32)
                    .map(|k| {
                        let mut pk = data(n, 20 + k);
                        pk[(5 * k as usize) % n] = 0.0;
                        pk
                    })
                    .collect();
                let mut ys: Vec<f32> = (0..ROW_TILE as u32)
                    .flat_map(|k| data(vdim, 30 + k))
                    .collect();
                let mut alone = ys.clone();
                for (k, pk) in ps.iter().enumerate() {
                    weighted_sum::<S>(&mut alone[k * vdim..(k + 1) * vdim], pk, &block, kdim);
                }
                weighted_sum4::<S>(&mut ys, [&ps[0], &ps[1], &ps[2], &ps[3]], &block, kdim);
                for (i, (g, w)) in ys.iter().zip(&alone).enumerate() {
                    assert_eq!(g.to_bits(), w.to_bits(), "4 rows, vdim {vdim} element {i}");
                }
            }
        }
        check::<Portable>();
        #[cfg(target_arch = "x86_64")]
        if crate::matmul::simd::avx2_or_skip("weighted_sum_equals_position_passes (AVX2 half)") {
            check::<crate::matmul::simd::Avx2Fma>();
        }
    }

    /// Narrow rows read in their stored type (converted a block at a time, over several
    /// blocks and a partial one) give the same bits as f32 rows holding the same values:
    /// the conversion is the only thing a narrow type changes.
    #[test]
    fn narrow_rows_equal_f32_rows_of_their_values() {
        let (latent, rope, rows, n_pos) = (64, 16, 6, 101);
        let shape = KvRowShape { latent, rope };
        let kdim = shape.width();
        let q = data(rows * kdim, 7);
        let values = data(n_pos * kdim, 8);
        let limits: Vec<usize> = (0..rows).map(|r| n_pos - 7 * r).collect();
        for ty in [KvType::Bf16, KvType::F16, KvType::Q8_0] {
            let mut buf = KvBuf::new(ty, shape);
            for row in values.chunks_exact(kdim) {
                buf.push(&row[..latent], &row[latent..]);
            }
            let widened = buf.all().to_f32().into_owned();
            let mut narrow = FlashState::new(rows, latent);
            flash_attend(&q, &limits, buf.all(), 0, 0.25, &mut narrow);
            let mut wide = FlashState::new(rows, latent);
            let wide_rows = KvRows::from_f32(shape, &widened);
            flash_attend(&q, &limits, wide_rows, 0, 0.25, &mut wide);
            let (mut a, mut b) = (vec![0f32; rows * latent], vec![0f32; rows * latent]);
            narrow.finish(&mut a);
            wide.finish(&mut b);
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&a), bits(&b), "{ty}");
        }
    }

    /// Rows of separate keys and values (`flash_attend_split`, keys first) attend as the
    /// f64 reference over those keys and values, over several blocks and a partial one.
    #[test]
    fn split_rows_match_the_reference() {
        let (keys, vdim, rows, n_pos) = (24usize, 40usize, 6usize, 77usize);
        let width = keys + vdim;
        let q = data(rows * keys, 3);
        let kv = data(n_pos * width, 4);
        let limits: Vec<usize> = (0..rows).map(|r| n_pos - 5 * r).collect();
        let scale = 0.3;
        let mut state = FlashState::new(rows, vdim);
        let shape = KvRowShape {
            latent: keys,
            rope: vdim,
        };
        flash_attend_split(
            &q,
            &limits,
            KvRows::from_f32(shape, &kv),
            keys,
            0,
            scale,
            &mut state,
        );
        let mut out = vec![0f32; rows * vdim];
        state.finish(&mut out);
        for r in 0..rows {
            // The reference wants values first: rebuild each row as [v | k] and q as [0 | q].
            let swapped: Vec<f32> = kv
                .chunks_exact(width)
                .flat_map(|row| row[keys..].iter().chain(&row[..keys]).copied())
                .collect();
            let qr: Vec<f32> = std::iter::repeat_n(0.0, vdim)
                .chain(q[r * keys..(r + 1) * keys].iter().copied())
                .collect();
            let want = reference(&qr, &swapped, width, vdim, limits[r], scale);
            for (i, (g, w)) in out[r * vdim..(r + 1) * vdim].iter().zip(&want).enumerate() {
                assert!(
                    (*g as f64 - w).abs() < 1e-5,
                    "row {r} value {i}: {g} vs {w}"
                );
            }
        }
    }
}
