//! The f32 dot products of the Exact kernels, written once over [`F32Lanes`] and so
//! instantiated per ISA by whoever calls them inside a [`super::simd::dispatch`]ed body.
//!
//! Decides: the order of accumulation of every Exact-mode result, which the reference
//! fixtures compare bit for bit, so it must not change:
//!
//! - [`dot`]: lane `l` accumulates the products of elements `8i + l` in order (starting from
//!   0), the lanes are reduced pairwise ([`super::simd::reduce_lanes`]), and the tail
//!   (`n % 8` elements, sequentially from 0) is added last;
//! - [`group_dot`]: per group of `G`, lane `l` starts with the product of element `l` and
//!   accumulates elements `8i + l`; each group's lanes are scaled by its scale into a row
//!   total (a multiply-add per lane), which is reduced pairwise.
//!
//! The four-row variants ([`dot4`], [`group_dot4`]) share each load of the activations and
//! run each row's operations exactly as the one-row variants do, so a row's result never
//! depends on which tile it is in: that is what makes results independent of the thread split.

use super::simd::{F32Lanes, LANES};

/// Weight rows dotted together by the four-row variants (and decoded together by every row
/// kernel, so that one read of a token's activations serves them all).
pub(crate) const ROW_TILE: usize = 4;

/// `s` as whole groups of [`LANES`] (a tail of `s.len() % LANES` is dropped).
#[inline(always)]
fn lanes(s: &[f32]) -> impl Iterator<Item = &[f32; LANES]> {
    // chunks_exact yields exactly LANES elements, so the fallback is never taken; the
    // fixed-size arrays let LLVM drop bounds checks.
    s.chunks_exact(LANES)
        .map(|c| <&[f32; LANES]>::try_from(c).unwrap_or(&[0.0; LANES]))
}

/// `Σ a[i]·b[i]` over `min(a.len(), b.len())` (order: see the module docs).
#[inline(always)]
pub(crate) fn dot<S: F32Lanes>(a: &[f32], b: &[f32]) -> f32 {
    let n = a.len().min(b.len());
    let (a, b) = (&a[..n], &b[..n]);
    let mut acc = S::zero();
    for (x, y) in lanes(a).zip(lanes(b)) {
        acc = S::mul_add(S::load(x), S::load(y), acc);
    }
    S::reduce(acc) + tail_dot::<S>(a, b)
}

/// The products of the elements after the last whole group of [`LANES`], summed in order.
#[inline(always)]
fn tail_dot<S: F32Lanes>(a: &[f32], b: &[f32]) -> f32 {
    let main = a.len() - a.len() % LANES;
    let mut tail = 0f32;
    for (x, y) in a[main..].iter().zip(&b[main..]) {
        tail = S::mul_add_scalar(*x, *y, tail);
    }
    tail
}

/// `[dot(w[0], x), .., dot(w[3], x)]` (each bit-identical to [`dot`]) sharing each load of
/// `x`; the length is the shortest of all five.
#[inline(always)]
pub(crate) fn dot4<S: F32Lanes>(w: [&[f32]; ROW_TILE], x: &[f32]) -> [f32; ROW_TILE] {
    let n = x.len().min(w.iter().map(|r| r.len()).min().unwrap_or(0));
    let x = &x[..n];
    let [w0, w1, w2, w3] = w.map(|r| &r[..n]);
    let mut acc = [S::zero(); ROW_TILE];
    let rows = lanes(w0).zip(lanes(w1)).zip(lanes(w2)).zip(lanes(w3));
    for (xs, (((r0, r1), r2), r3)) in lanes(x).zip(rows) {
        let xv = S::load(xs);
        acc[0] = S::mul_add(S::load(r0), xv, acc[0]);
        acc[1] = S::mul_add(S::load(r1), xv, acc[1]);
        acc[2] = S::mul_add(S::load(r2), xv, acc[2]);
        acc[3] = S::mul_add(S::load(r3), xv, acc[3]);
    }
    let mut res = [0f32; ROW_TILE];
    for ((r, a), wk) in res.iter_mut().zip(acc).zip([w0, w1, w2, w3]) {
        *r = S::reduce(a) + tail_dot::<S>(wk, x);
    }
    res
}

/// Positions scored together by [`dot4x4`].
pub(crate) const POS_TILE: usize = 4;

/// `[r][j] = dot(q[r], k[j])` for 4 query rows and 4 key rows, each bit-identical to
/// [`dot`], sharing every load (16 accumulators per 8 loads: the flash attention's score
/// tile); the length is the shortest of all eight.
#[inline(always)]
pub(crate) fn dot4x4<S: F32Lanes>(
    q: [&[f32]; ROW_TILE],
    k: [&[f32]; POS_TILE],
) -> [[f32; POS_TILE]; ROW_TILE] {
    let n = q.iter().chain(k.iter()).map(|r| r.len()).min().unwrap_or(0);
    let (q, k) = (q.map(|r| &r[..n]), k.map(|r| &r[..n]));
    let mut acc = [[S::zero(); POS_TILE]; ROW_TILE];
    let main = n - n % LANES;
    let mut at = 0;
    while at < main {
        // Plain loops: a closure around the loads may stay an out-of-line call.
        let mut kv = [S::zero(); POS_TILE];
        for (v, kj) in kv.iter_mut().zip(k) {
            *v = S::load(lane_at(kj, at));
        }
        for (ar, qr) in acc.iter_mut().zip(q) {
            let qv = S::load(lane_at(qr, at));
            for (a, kj) in ar.iter_mut().zip(kv) {
                *a = S::mul_add(qv, kj, *a);
            }
        }
        at += LANES;
    }
    let mut res = [[0f32; POS_TILE]; ROW_TILE];
    for ((rr, ar), qr) in res.iter_mut().zip(acc).zip(q) {
        for ((r, a), kj) in rr.iter_mut().zip(ar).zip(k) {
            *r = S::reduce(a) + tail_dot::<S>(qr, kj);
        }
    }
    res
}

/// One group's lanes: `q[0..8]·x[0..8]`, then `+ q[8k..]·x[8k..]` for each further 8.
#[inline(always)]
fn group_lanes<S: F32Lanes>(q: &[f32], x: &[f32]) -> S::V {
    let mut pairs = lanes(q).zip(lanes(x));
    let mut acc = match pairs.next() {
        Some((q0, x0)) => S::mul(S::load(q0), S::load(x0)),
        None => S::zero(),
    };
    for (qk, xk) in pairs {
        acc = S::mul_add(S::load(qk), S::load(xk), acc);
    }
    acc
}

/// `Σ_g scale[g] · Σ_{c in g} q[c]·x[c]` over `scale.len()` groups of `G` (a multiple of
/// [`LANES`]; order: see the module docs).
#[inline(always)]
pub(crate) fn group_dot<S: F32Lanes, const G: usize>(q: &[f32], scale: &[f32], x: &[f32]) -> f32 {
    let n = scale.len() * G;
    let mut tot = S::zero();
    for ((qg, xg), s) in q[..n]
        .chunks_exact(G)
        .zip(x[..n].chunks_exact(G))
        .zip(scale)
    {
        tot = S::mul_add_splat(group_lanes::<S>(qg, xg), *s, tot);
    }
    S::reduce(tot)
}

/// [`group_dot`] for four rows sharing `x`, each bit-identical to `group_dot`; every row
/// has as many groups as `scale[0]`.
#[inline(always)]
pub(crate) fn group_dot4<S: F32Lanes, const G: usize>(
    q: [&[f32]; ROW_TILE],
    scale: [&[f32]; ROW_TILE],
    x: &[f32],
) -> [f32; ROW_TILE] {
    let groups = scale[0].len();
    let n = groups * G;
    let xs = x[..n].chunks_exact(G);
    let qs = q.map(|r| &r[..n]);
    let mut tot = [S::zero(); ROW_TILE];
    for (g, xg) in xs.enumerate() {
        let base = g * G;
        let mut acc = [S::zero(); ROW_TILE];
        let mut xl = lanes(xg);
        if let Some(x0) = xl.next() {
            let x0 = S::load(x0);
            for (a, qk) in acc.iter_mut().zip(qs) {
                *a = S::mul(S::load(lane_at(qk, base)), x0);
            }
        }
        for (i, xv) in xl.enumerate() {
            let xv = S::load(xv);
            let at = base + LANES * (i + 1);
            for (a, qk) in acc.iter_mut().zip(qs) {
                *a = S::mul_add(S::load(lane_at(qk, at)), xv, *a);
            }
        }
        for ((t, a), sk) in tot.iter_mut().zip(acc).zip(scale) {
            *t = S::mul_add_splat(a, sk[g], *t);
        }
    }
    tot.map(S::reduce)
}

/// `s[at..at + 8]` as an array.
#[inline(always)]
fn lane_at(s: &[f32], at: usize) -> &[f32; LANES] {
    s[at..at + LANES].try_into().unwrap_or(&[0.0; LANES])
}

#[cfg(test)]
mod tests {
    use super::super::simd::Portable;
    use super::super::test_data::data;
    use super::*;

    /// Allowed `|dot − exact|` as a fraction of `Σ|a·b|` (f64 reference).
    const DOT_REL_TOL: f64 = 1e-6;

    fn exact(a: &[f32], b: &[f32]) -> (f64, f64) {
        let dot = a.iter().zip(b).map(|(x, y)| *x as f64 * *y as f64).sum();
        let mag = a
            .iter()
            .zip(b)
            .map(|(x, y)| (*x as f64 * *y as f64).abs())
            .sum();
        (dot, mag)
    }

    /// Within tolerance of an f64 reference, and every four-row variant bit-identical to
    /// its one-row variant row by row (so thread splits never change results).
    fn check<S: F32Lanes>(name: &str) {
        for n in [0usize, 1, 7, 8, 9, 31, 256, 1000] {
            let x = data(n, 1);
            let w: Vec<Vec<f32>> = (0..4).map(|k| data(n, 10 + k)).collect();
            let ks: Vec<Vec<f32>> = (0..4).map(|k| data(n, 50 + k)).collect();
            let tile = dot4x4::<S>(
                [&w[0], &w[1], &w[2], &w[3]],
                [&ks[0], &ks[1], &ks[2], &ks[3]],
            );
            for (r, wr) in w.iter().enumerate() {
                for (j, kj) in ks.iter().enumerate() {
                    let one = dot::<S>(wr, kj);
                    assert_eq!(
                        one.to_bits(),
                        tile[r][j].to_bits(),
                        "{name} 4x4 n={n} {r},{j}"
                    );
                }
            }
            let four = dot4::<S>([&w[0], &w[1], &w[2], &w[3]], &x);
            for k in 0..4 {
                let one = dot::<S>(&w[k], &x);
                assert_eq!(one.to_bits(), four[k].to_bits(), "{name} n={n} row {k}");
                let (want, mag) = exact(&w[k], &x);
                let err = (one as f64 - want).abs();
                assert!(
                    err <= DOT_REL_TOL * mag + 1e-30,
                    "{name} n={n}: {one} vs {want}"
                );
            }
        }
        for groups in [1usize, 3, 16] {
            let x = data(32 * groups, 2);
            let q: Vec<Vec<f32>> = (0..4).map(|k| data(32 * groups, 20 + k)).collect();
            let s: Vec<Vec<f32>> = (0..4).map(|k| data(2 * groups, 30 + k)).collect();
            let qs = [&q[0][..], &q[1], &q[2], &q[3]];
            let ss = [&s[0][..], &s[1], &s[2], &s[3]];
            let four16 = group_dot4::<S, 16>(qs, ss, &x);
            let four32 = group_dot4::<S, 32>(qs, ss.map(|r| &r[..groups]), &x);
            for k in 0..4 {
                let one16 = group_dot::<S, 16>(&q[k], &s[k], &x);
                let one32 = group_dot::<S, 32>(&q[k], &s[k][..groups], &x);
                assert_eq!(one16.to_bits(), four16[k].to_bits(), "{name} G16 row {k}");
                assert_eq!(one32.to_bits(), four32[k].to_bits(), "{name} G32 row {k}");
                let want: f64 = (0..32 * groups)
                    .map(|c| s[k][c / 16] as f64 * q[k][c] as f64 * x[c] as f64)
                    .sum();
                let mag: f64 = (0..32 * groups)
                    .map(|c| (s[k][c / 16] as f64 * q[k][c] as f64 * x[c] as f64).abs())
                    .sum();
                assert!(
                    (one16 as f64 - want).abs() <= DOT_REL_TOL * mag + 1e-30,
                    "{name} G16 row {k}: {one16} vs {want}"
                );
            }
        }
    }

    #[test]
    fn portable_dots() {
        check::<Portable>("portable");
    }

    #[test]
    #[cfg(target_arch = "x86_64")]
    fn avx2_fma_dots() {
        if !super::super::simd::avx2_or_skip("avx2_fma_dots") {
            return;
        }
        check::<super::super::simd::Avx2Fma>("avx2+fma");
    }
}
