//! The panel kernels: one panel (8 rows, all super-blocks) against up to 4 tokens, the 8
//! rows in the 8 i32/f32 lanes of one vector, so nothing is summed across lanes.
//!
//! Decides: the arithmetic, the same in every implementation. Per row, token and
//! super-block two exact integers are formed from the panel's codes `c`, the token's int8
//! codes `x` and 16-sums `bs` (`layout.rs`'s [`ScaleKind`]):
//!
//! ```text
//! A = Σ_g a_g · Σ_{k in g} c_k·x_k          M = Σ_g m_g · bs_g   (Signed: M' = Σ_g a_g·bs_g)
//! ```
//!
//! then one f32 step, `fd = d·dx` and `v = fd·f32(A − off·M')` (Signed) or
//! `v = fd·f32(A) − (dm·dx)·f32(M)`, added to the row's accumulator (starting at +0.0) in
//! block order: separate multiplies, no fused multiply-add. The [`ScaleKind::UnitF16`]
//! formats take that step per 32 elements instead: `v = (d_u·dx_u)·f32(S_u)`, `S_u` the
//! unit's exact `Σ c·x`. Codes are the stored unsigned codes, the stored signed bytes, or
//! the table values of stored indices ([`CodeKind`]). The integers are exact (in any
//! order), so the portable and the AVX2 / AVX-512 VNNI implementations give the same bits,
//! whatever the number of tokens per pass and whichever panel or thread computes a row.
//!
//! Signed codes meet the unsigned-by-signed byte dots two ways: AVX2 moves each code's sign
//! onto the activation (`maddubs(|c|, sign(x, c))`), VNNI adds 128 to the codes and takes
//! `128·Σx` (from the 16-sums) back off, as an extra offset; both give the exact `Σ c·x`.
//!
//! Range (why nothing overflows): unsigned codes ≤ 63, `|c| ≤ 128` with AVX2's sign move and
//! `|x| ≤ 127`, so a `maddubs` pair is at most 32,512 (no saturation); biased codes ≤ 255
//! make a 16-group sum at most 518,160, and `|a| ≤ 32` for the signed-code formats (IQ4_XS,
//! the grids) keeps `|A| < 2^28`; unsigned codes with `|a| ≤ 128` keep `|A| < 2^29`; `|bs| ≤ 2032` and
//! `|m| ≤ 128` keep `|M| < 2^23`.

use super::grid;
use super::layout::{
    code_at, factor_bits, scale_byte, CodeKind, PanelFormat, ScaleKind, PANEL_ROWS, SUPER, UNITS,
};
use crate::matmul::fast::format::f16_bits_to_f32;
use crate::matmul::q8::{QActs, BSUM_ELEMS};
use crate::matmul::simd::Portable;
#[cfg(target_arch = "x86_64")]
use crate::matmul::simd::{Avx2Fma, Avx512Vnni};

/// One panel against tokens: implemented per ISA marker.
pub(crate) trait PanelDot {
    /// The widest token pass (4 with VNNI's 32 registers, 2 with AVX2's 16, 1 portable).
    const TOKENS: usize;

    /// The 8 rows of `panel` (its `panel.len() / F::PANEL_BLOCK_BYTES` blocks) against tokens
    /// `ts` of `acts`: per token, the 8 rows' results.
    fn tokens<F: PanelFormat, const T: usize>(
        panel: &[u8],
        acts: &QActs,
        ts: [usize; T],
    ) -> [[f32; PANEL_ROWS]; T];

    /// The grid `panel` of `F` decoded into `out` (`grid.rs`'s `Decoded` blocks).
    fn decode_grid<F: PanelFormat>(panel: &[u8], out: &mut [u8]) {
        grid::decode::<F>(panel, out, None);
    }
}

impl PanelDot for Portable {
    const TOKENS: usize = 1;

    fn tokens<F: PanelFormat, const T: usize>(
        panel: &[u8],
        acts: &QActs,
        ts: [usize; T],
    ) -> [[f32; PANEL_ROWS]; T] {
        let mut acc = [[0f32; PANEL_ROWS]; T];
        let per = SUPER / F::ACT_BLOCK;
        for (blk, p) in panel.chunks_exact(F::PANEL_BLOCK_BYTES).enumerate() {
            for (at, &t) in acc.iter_mut().zip(&ts) {
                let (x, dx, bs) = acts.token(t);
                let x = &x[blk * SUPER..(blk + 1) * SUPER];
                let bs = &bs[blk * SUPER / BSUM_ELEMS..(blk + 1) * SUPER / BSUM_ELEMS];
                let dx = &dx[blk * per..(blk + 1) * per];
                for (r, a) in at.iter_mut().enumerate() {
                    portable_block::<F>(p, r, x, bs, dx, a);
                }
            }
        }
        acc
    }
}

/// The integer a stored code multiplies with ([`CodeKind`]).
#[inline(always)]
fn value<F: PanelFormat>(c: u8) -> i32 {
    match F::CODES {
        CodeKind::Unsigned => c as i32,
        CodeKind::Signed => c as i8 as i32,
        CodeKind::Lookup(t) => t[c as usize] as i32,
    }
}

/// Row `r` of panel block `p` against one token's super-block (codes `x`, 16-sums `bs`,
/// scales `dx`): its f32 steps added to `acc` (see the module docs).
fn portable_block<F: PanelFormat>(
    p: &[u8],
    r: usize,
    x: &[i8],
    bs: &[i16],
    dx: &[f32],
    acc: &mut f32,
) {
    let d = f16_bits_to_f32(factor_bits::<F>(p, r, false)) * F::D_FACTOR;
    if F::GRID {
        let mut a = 0i32;
        for u in 0..UNITS {
            let (c, (a0, a1)) = (F::grid_codes(p, r, u), F::grid_scales(p, r, u));
            let half = |h: usize| -> i32 {
                (16 * h..16 * h + 16)
                    .map(|k| c[k] as i32 * x[32 * u + k] as i32)
                    .sum()
            };
            a += a0 * half(0) + a1 * half(1);
        }
        *acc += d * dx[0] * a as f32;
        return;
    }
    let sum = |g: usize| -> i32 {
        (16 * g..16 * g + 16)
            .map(|k| value::<F>(code_at::<F>(p, r, k)) * x[k] as i32)
            .sum()
    };
    if F::SCALES == ScaleKind::UnitF16 {
        for (u, dxu) in dx.iter().enumerate().take(UNITS) {
            let bits = u16::from_le_bytes([
                scale_byte::<F>(p, r, 2 * u),
                scale_byte::<F>(p, r, 2 * u + 1),
            ]);
            let fd = f16_bits_to_f32(bits) * dxu;
            *acc += fd * (sum(2 * u) + sum(2 * u + 1)) as f32;
        }
        return;
    }
    let (mut a, mut m) = (0i32, 0i32);
    for u in 0..UNITS {
        let (s0, s1) = (
            scale_byte::<F>(p, r, 2 * u),
            scale_byte::<F>(p, r, 2 * u + 1),
        );
        let (b0, b1) = (bs[2 * u] as i32, bs[2 * u + 1] as i32);
        let (t0, t1) = (sum(2 * u), sum(2 * u + 1));
        match F::SCALES {
            ScaleKind::Nibbles => {
                a += (s0 & 15) as i32 * t0 + (s1 & 15) as i32 * t1;
                m += (s0 >> 4) as i32 * b0 + (s1 >> 4) as i32 * b1;
            }
            ScaleKind::Signed { .. } => {
                a += s0 as i8 as i32 * t0 + s1 as i8 as i32 * t1;
                m += s0 as i8 as i32 * b0 + s1 as i8 as i32 * b1;
            }
            ScaleKind::Pair32 => {
                a += s0 as i32 * (t0 + t1);
                m += s1 as i32 * (b0 + b1);
            }
            ScaleKind::UnitF16 => unreachable!("handled above"),
        }
    }
    let fd = d * dx[0];
    *acc += match F::SCALES {
        ScaleKind::Signed { off } => fd * (a - off * m) as f32,
        _ => {
            let fm = f16_bits_to_f32(factor_bits::<F>(p, r, true)) * dx[0];
            fd * a as f32 - fm * m as f32
        }
    };
}

/// The integer dot instructions of the AVX implementations.
#[cfg(target_arch = "x86_64")]
trait IntDots {
    /// `acc + Σ_{i<4} c[4l + i]·x[4l + i]` per i32 lane `l` (`c` unsigned bytes ≤ 63, `x`
    /// signed).
    ///
    /// # Safety
    /// The CPU must have the implementation's features.
    unsafe fn dp(acc: avx::V, c: avx::V, x: avx::V) -> avx::V;
    /// `acc + p[2l]·b[2l] + p[2l + 1]·b[2l + 1]` per i32 lane (i16 pairs).
    ///
    /// # Safety
    /// As [`IntDots::dp`].
    unsafe fn dpw(acc: avx::V, p: avx::V, b: avx::V) -> avx::V;

    /// What [`IntDots::bias`] adds to a signed code (the extra offset of signed codes).
    const SIGNED_BIAS: i32;
    /// AVX-512 VNNI, where [`PanelFormat::grid_unit_sums_512`] runs.
    const AVX512: bool = false;
    /// Signed codes (or a table of them) as [`IntDots::dps`] takes them.
    ///
    /// # Safety
    /// As [`IntDots::dp`].
    unsafe fn bias(c: avx::V) -> avx::V;
    /// `acc + Σ_{i<4} (c + SIGNED_BIAS)[4l + i]·x[4l + i]` per lane, `c` signed codes
    /// through [`IntDots::bias`].
    ///
    /// # Safety
    /// As [`IntDots::dp`].
    unsafe fn dps(acc: avx::V, c: avx::V, x: avx::V) -> avx::V;
}

#[cfg(target_arch = "x86_64")]
impl IntDots for Avx2Fma {
    #[inline(always)]
    unsafe fn dp(acc: avx::V, c: avx::V, x: avx::V) -> avx::V {
        use std::arch::x86_64::{
            _mm256_add_epi32, _mm256_madd_epi16, _mm256_maddubs_epi16, _mm256_set1_epi16,
        };
        // SAFETY: AVX2 per the caller. Pairs are at most 2·63·127: no saturation.
        unsafe {
            let pairs = _mm256_maddubs_epi16(c, x);
            _mm256_add_epi32(acc, _mm256_madd_epi16(pairs, _mm256_set1_epi16(1)))
        }
    }

    #[inline(always)]
    unsafe fn dpw(acc: avx::V, p: avx::V, b: avx::V) -> avx::V {
        use std::arch::x86_64::{_mm256_add_epi32, _mm256_madd_epi16};
        // SAFETY: AVX2 per the caller.
        unsafe { _mm256_add_epi32(acc, _mm256_madd_epi16(p, b)) }
    }

    const SIGNED_BIAS: i32 = 0;

    #[inline(always)]
    unsafe fn bias(c: avx::V) -> avx::V {
        c
    }

    #[inline(always)]
    unsafe fn dps(acc: avx::V, c: avx::V, x: avx::V) -> avx::V {
        use std::arch::x86_64::{_mm256_abs_epi8, _mm256_sign_epi8};
        // SAFETY: AVX2 per the caller. |c| ≤ 128 (−128's abs is 0x80 = 128 unsigned).
        unsafe { Self::dp(acc, _mm256_abs_epi8(c), _mm256_sign_epi8(x, c)) }
    }
}

#[cfg(target_arch = "x86_64")]
impl IntDots for Avx512Vnni {
    #[inline(always)]
    unsafe fn dp(acc: avx::V, c: avx::V, x: avx::V) -> avx::V {
        // SAFETY: AVX-512 VL + VNNI per the caller.
        unsafe { std::arch::x86_64::_mm256_dpbusd_epi32(acc, c, x) }
    }

    #[inline(always)]
    unsafe fn dpw(acc: avx::V, p: avx::V, b: avx::V) -> avx::V {
        // SAFETY: AVX-512 VL + VNNI per the caller.
        unsafe { std::arch::x86_64::_mm256_dpwssd_epi32(acc, p, b) }
    }

    const SIGNED_BIAS: i32 = 128;
    const AVX512: bool = true;

    #[inline(always)]
    unsafe fn bias(c: avx::V) -> avx::V {
        use std::arch::x86_64::{_mm256_set1_epi8, _mm256_xor_si256};
        // SAFETY: AVX2 per the caller. c ^ 0x80 is c + 128 as an unsigned byte.
        unsafe { _mm256_xor_si256(c, _mm256_set1_epi8(-128)) }
    }

    #[inline(always)]
    unsafe fn dps(acc: avx::V, c: avx::V, x: avx::V) -> avx::V {
        // SAFETY: as `dp`; the biased codes are unsigned bytes.
        unsafe { Self::dp(acc, c, x) }
    }
}

#[cfg(target_arch = "x86_64")]
impl PanelDot for Avx2Fma {
    fn decode_grid<F: PanelFormat>(panel: &[u8], out: &mut [u8]) {
        // Only dispatched to on a CPU with AVX2.
        grid::decode::<F>(panel, out, Some(grid::avx::store_unit_codes::<F>));
    }

    const TOKENS: usize = 2;

    #[inline(always)]
    fn tokens<F: PanelFormat, const T: usize>(
        panel: &[u8],
        acts: &QActs,
        ts: [usize; T],
    ) -> [[f32; PANEL_ROWS]; T] {
        // SAFETY: this marker is only dispatched to on a CPU with AVX2 + FMA + F16C.
        unsafe { avx::tokens::<F, Self, T>(panel, acts, ts) }
    }
}

#[cfg(target_arch = "x86_64")]
impl PanelDot for Avx512Vnni {
    fn decode_grid<F: PanelFormat>(panel: &[u8], out: &mut [u8]) {
        // Only dispatched to on a CPU with AVX2.
        let codes = if F::AVX512_GRID {
            F::grid_store_unit_512
        } else {
            grid::avx::store_unit_codes::<F>
        };
        grid::decode::<F>(panel, out, Some(codes));
    }

    const TOKENS: usize = 4;

    #[inline(always)]
    fn tokens<F: PanelFormat, const T: usize>(
        panel: &[u8],
        acts: &QActs,
        ts: [usize; T],
    ) -> [[f32; PANEL_ROWS]; T] {
        // SAFETY: this marker is only dispatched to on a CPU with AVX-512 VNNI (and AVX2).
        unsafe { avx::tokens::<F, Self, T>(panel, acts, ts) }
    }
}

/// The AVX body shared by AVX2 and AVX-512 VNNI (which differ in [`IntDots`] only).
#[cfg(target_arch = "x86_64")]
mod avx {
    use std::arch::x86_64::*;

    use super::super::layout::{CodeKind, PanelFormat, ScaleKind, PANEL_ROWS, SUPER, UNIT, UNITS};
    use super::IntDots;
    use crate::matmul::q8::{QActs, BSUM_ELEMS};

    /// One 256-bit integer vector.
    pub(super) type V = __m256i;

    /// 32 bytes at `p`.
    #[inline(always)]
    unsafe fn ld(p: *const u8) -> V {
        // SAFETY: per the caller, `p` is valid for 32 reads.
        unsafe { _mm256_loadu_si256(p.cast()) }
    }

    /// Bytes of `v` shifted by `k` bits (left when positive); bits crossing into the
    /// neighbour byte must be masked off by the caller.
    #[inline(always)]
    unsafe fn shift(v: V, k: i32) -> V {
        // SAFETY: AVX2 per the caller.
        unsafe {
            if k >= 0 {
                _mm256_sll_epi16(v, _mm_cvtsi32_si128(k))
            } else {
                _mm256_srl_epi16(v, _mm_cvtsi32_si128(-k))
            }
        }
    }

    /// The 8 quad vectors of unit `u` of the panel block at `p` (see `layout.rs`), signed
    /// codes and table values through `S`'s [`IntDots::bias`].
    #[inline(always)]
    unsafe fn unit_codes<F: PanelFormat, S: IntDots>(p: *const u8, u: usize) -> [V; 8] {
        // SAFETY: AVX2 per the caller; every load is inside unit `u` of the panel block.
        unsafe {
            let p = p.add(F::UNITS_AT + u * F::UNIT_BYTES);
            let mut c = [_mm256_setzero_si256(); 8];
            if F::LO == 8 {
                for (q, cq) in c.iter_mut().enumerate() {
                    *cq = ld(p.add(32 * q));
                }
            } else if F::LO == 4 {
                let m = _mm256_set1_epi8(0x0F);
                for j in 0..4 {
                    let w = ld(p.add(32 * j));
                    c[2 * j] = _mm256_and_si256(w, m);
                    c[2 * j + 1] = _mm256_and_si256(_mm256_srli_epi16::<4>(w), m);
                }
            } else {
                let m = _mm256_set1_epi8(3);
                for j in 0..2 {
                    let w = ld(p.add(32 * j));
                    c[4 * j] = _mm256_and_si256(w, m);
                    c[4 * j + 1] = _mm256_and_si256(_mm256_srli_epi16::<2>(w), m);
                    c[4 * j + 2] = _mm256_and_si256(_mm256_srli_epi16::<4>(w), m);
                    c[4 * j + 3] = _mm256_and_si256(_mm256_srli_epi16::<6>(w), m);
                }
            }
            let lo = F::LO as i32;
            if F::HI == 1 {
                let h = ld(p.add(F::HI_AT));
                let bit = _mm256_set1_epi8(1 << lo);
                for (q, cq) in c.iter_mut().enumerate() {
                    let v = _mm256_and_si256(shift(h, lo - q as i32), bit);
                    *cq = _mm256_or_si256(*cq, v);
                }
            } else if F::HI == 2 {
                let bits = _mm256_set1_epi8(3 << lo);
                for j in 0..2 {
                    let h = ld(p.add(F::HI_AT + 32 * j));
                    for i in 0..4 {
                        let v = _mm256_and_si256(shift(h, lo - 2 * i as i32), bits);
                        c[4 * j + i] = _mm256_or_si256(c[4 * j + i], v);
                    }
                }
            }
            match F::CODES {
                CodeKind::Unsigned => {}
                CodeKind::Signed => {
                    for cq in c.iter_mut() {
                        *cq = S::bias(*cq);
                    }
                }
                CodeKind::Lookup(t) => {
                    let table = S::bias(_mm256_broadcastsi128_si256(_mm_loadu_si128(
                        t.as_ptr().cast(),
                    )));
                    for cq in c.iter_mut() {
                        *cq = _mm256_shuffle_epi8(table, *cq);
                    }
                }
            }
            c
        }
    }

    /// Unit `u` of the panel block at `p`: [`unit_codes`] and [`unit_scales`], or a grid
    /// format's decoded unit (its codes through `S`'s [`IntDots::bias`]; decoded for a
    /// one-token pass when `one_token`).
    #[inline(always)]
    unsafe fn unit<F: PanelFormat, S: IntDots>(
        p: *const u8,
        u: usize,
        one_token: bool,
    ) -> ([V; 8], (V, V, V)) {
        // SAFETY: per the caller; the grid unit is inside the panel block.
        unsafe {
            if F::GRID {
                let at = p.add(F::UNITS_AT + u * F::UNIT_BYTES);
                let (mut c, (a0, a1)) = if one_token {
                    F::grid_unit_avx_one(at)
                } else {
                    F::grid_unit_avx(at)
                };
                for cq in c.iter_mut() {
                    *cq = S::bias(*cq);
                }
                // Scales are positive and below 2^15: the i16 pairs (a0, a1).
                let pairs = _mm256_or_si256(a0, _mm256_slli_epi32::<16>(a1));
                return (c, (a0, a1, pairs));
            }
            (unit_codes::<F, S>(p, u), unit_scales::<F>(p, u))
        }
    }

    /// `acc` plus the dot of 4 codes per lane with `x`: signed or unsigned codes as `F` has.
    #[inline(always)]
    unsafe fn dot<F: PanelFormat, S: IntDots>(acc: V, c: V, x: V) -> V {
        // SAFETY: per the caller.
        unsafe {
            if F::CODES == CodeKind::Unsigned {
                S::dp(acc, c, x)
            } else {
                S::dps(acc, c, x)
            }
        }
    }

    /// The unit's exact `Σ c·x` per row from `init`, against the token codes at `x`.
    #[inline(always)]
    unsafe fn unit_sums<F: PanelFormat, S: IntDots>(c: &[V; 8], x: *const i8, init: V) -> (V, V) {
        // SAFETY: per the caller; `x` valid for 32 reads. Plain calls, no closure: a closure
        // around intrinsics may stay an out-of-line call.
        unsafe {
            let mut s0 = dot::<F, S>(init, c[0], bcast4(x));
            let mut s1 = dot::<F, S>(_mm256_setzero_si256(), c[4], bcast4(x.add(16)));
            for i in 1..4 {
                s0 = dot::<F, S>(s0, c[i], bcast4(x.add(4 * i)));
                s1 = dot::<F, S>(s1, c[4 + i], bcast4(x.add(16 + 4 * i)));
            }
            (s0, s1)
        }
    }

    /// Unit `u`'s scales: the first and second group's `a` per row (i32 lanes; `Pair32`:
    /// the unit's `a` twice), and the i16 pairs the offset dot multiplies with the token's
    /// pair of 16-sums (`m` or `a` per group; `Pair32`: `m` twice).
    #[inline(always)]
    unsafe fn unit_scales<F: PanelFormat>(p: *const u8, u: usize) -> (V, V, V) {
        // SAFETY: AVX2 per the caller; the 16 (or 8) bytes read are unit `u`'s scale bytes.
        unsafe {
            if F::SCALE_BYTES == 1 {
                // One signed scale per row: `a` twice, and the pairs `(a, a)`.
                let at = F::SCALES_AT + PANEL_ROWS * u;
                let a = _mm256_cvtepi8_epi32(_mm_loadl_epi64(p.add(at).cast()));
                let pairs = _mm256_or_si256(
                    _mm256_and_si256(a, _mm256_set1_epi32(0xFFFF)),
                    _mm256_slli_epi32::<16>(a),
                );
                return (a, a, pairs);
            }
            let sc = _mm_loadu_si128(p.add(F::SCALES_AT + 16 * u).cast());
            let low16 = _mm256_set1_epi32(0xFFFF);
            match F::SCALES {
                ScaleKind::Nibbles => {
                    let m4 = _mm_set1_epi8(0x0F);
                    let ap = _mm256_cvtepu8_epi16(_mm_and_si128(sc, m4));
                    let mp = _mm256_cvtepu8_epi16(_mm_and_si128(_mm_srli_epi16::<4>(sc), m4));
                    (_mm256_and_si256(ap, low16), _mm256_srli_epi32::<16>(ap), mp)
                }
                ScaleKind::Signed { .. } => {
                    let ap = _mm256_cvtepi8_epi16(sc);
                    let a0 = _mm256_srai_epi32::<16>(_mm256_slli_epi32::<16>(ap));
                    (a0, _mm256_srai_epi32::<16>(ap), ap)
                }
                ScaleKind::Pair32 => {
                    let pr = _mm256_cvtepu8_epi16(sc);
                    let a = _mm256_and_si256(pr, low16);
                    let m = _mm256_srli_epi32::<16>(pr);
                    (a, a, _mm256_or_si256(m, _mm256_slli_epi32::<16>(m)))
                }
                ScaleKind::UnitF16 => unreachable!("f16 unit scales are read as floats"),
            }
        }
    }

    /// 4 bytes at `p` in every i32 lane.
    #[inline(always)]
    unsafe fn bcast4(p: *const i8) -> V {
        // SAFETY: AVX2 per the caller; `p` valid for 4 reads.
        unsafe { _mm256_set1_epi32(p.cast::<i32>().read_unaligned()) }
    }

    /// See [`super::PanelDot::tokens`].
    ///
    /// # Safety
    /// The CPU must have AVX2, FMA, F16C and what `S` uses.
    #[inline(always)]
    pub(super) unsafe fn tokens<F: PanelFormat, S: IntDots, const T: usize>(
        panel: &[u8],
        acts: &QActs,
        ts: [usize; T],
    ) -> [[f32; PANEL_ROWS]; T] {
        let nb = panel.len() / F::PANEL_BLOCK_BYTES;
        let per = SUPER / F::ACT_BLOCK;
        let mut xs = [std::ptr::null::<i8>(); T];
        let mut dxs: [&[f32]; T] = [&[]; T];
        let mut bss = [std::ptr::null::<i16>(); T];
        for q in 0..T {
            let (x, dx, bs) = acts.token(ts[q]);
            // The caller's activations cover this matrix's columns (checked by QMatrix).
            assert!(x.len() >= nb * SUPER && dx.len() >= nb * per && bs.len() >= nb * 16);
            (xs[q], dxs[q], bss[q]) = (x.as_ptr(), dx, bs.as_ptr());
        }
        // The offset the signed codes' bias adds, and the offset of a Signed format.
        let bias = if F::CODES == CodeKind::Unsigned {
            0
        } else {
            S::SIGNED_BIAS
        };
        let off = match F::SCALES {
            ScaleKind::Signed { off } => off + bias,
            _ => 0,
        };
        let needs_m = !matches!(F::SCALES, ScaleKind::Signed { .. }) || off != 0;
        // SAFETY: AVX2/F16C and `S`'s features per the caller; every pointer stays inside
        // the panel (nb whole blocks) and the tokens' activations (asserted above).
        unsafe {
            let mut acc = [_mm256_setzero_ps(); T];
            let zero = _mm256_setzero_si256();
            // `blk` indexes the panel, the codes and the scales of every token alike.
            #[allow(clippy::needless_range_loop)]
            for blk in 0..nb {
                let p = panel.as_ptr().add(blk * F::PANEL_BLOCK_BYTES);
                if F::SCALES == ScaleKind::UnitF16 {
                    let neg_bias = _mm256_set1_epi16(-bias as i16);
                    for u in 0..UNITS {
                        let c = unit_codes::<F, S>(p, u);
                        let d =
                            _mm256_cvtph_ps(_mm_loadu_si128(p.add(F::SCALES_AT + 16 * u).cast()));
                        for q in 0..T {
                            let x = xs[q].add(blk * SUPER + u * UNIT);
                            let init = if bias != 0 {
                                let bs = bss[q].add(blk * SUPER / BSUM_ELEMS + 2 * u);
                                S::dpw(zero, neg_bias, bcast4(bs.cast()))
                            } else {
                                zero
                            };
                            let (s0, s1) = unit_sums::<F, S>(&c, x, init);
                            let sum = _mm256_cvtepi32_ps(_mm256_add_epi32(s0, s1));
                            let fd = _mm256_mul_ps(d, _mm256_set1_ps(dxs[q][blk * per + u]));
                            acc[q] = _mm256_add_ps(acc[q], _mm256_mul_ps(fd, sum));
                        }
                    }
                    continue;
                }
                let mut ia = [zero; T];
                let mut im = [zero; T];
                for u in 0..UNITS {
                    if F::AVX512_GRID && S::AVX512 && bias == 128 && (T == 1 || F::UNIT_SCALE) {
                        // A 1-bit grid on AVX-512: the unit's sums without quads (for IQ1_M,
                        // two scales a unit, measured slower than the quads past one token:
                        // 4096 x 7168, 2 / 4 tokens 1944 / 2512 vs 2067 / 2929 µs).
                        let at = p.add(F::UNITS_AT + u * F::UNIT_BYTES);
                        let mut x = xs;
                        for xq in x.iter_mut() {
                            *xq = xq.add(blk * SUPER + u * UNIT);
                        }
                        let (sums, (a0, a1)) = F::grid_unit_sums_512(at, x);
                        let mp = _mm256_or_si256(a0, _mm256_slli_epi32::<16>(a1));
                        for (q, &(s0, s1)) in sums.iter().enumerate() {
                            let v = if F::UNIT_SCALE {
                                _mm256_mullo_epi32(_mm256_add_epi32(s0, s1), a0)
                            } else {
                                _mm256_add_epi32(
                                    _mm256_mullo_epi32(s0, a0),
                                    _mm256_mullo_epi32(s1, a1),
                                )
                            };
                            ia[q] = _mm256_add_epi32(ia[q], v);
                            let bs = bss[q].add(blk * SUPER / BSUM_ELEMS + 2 * u);
                            im[q] = S::dpw(im[q], mp, bcast4(bs.cast()));
                        }
                        continue;
                    }
                    let (c, (a0, a1, mp)) = unit::<F, S>(p, u, T == 1);
                    for q in 0..T {
                        let x = xs[q].add(blk * SUPER + u * UNIT);
                        let (s0, s1) = unit_sums::<F, S>(&c, x, zero);
                        ia[q] = if F::UNIT_SCALE {
                            _mm256_add_epi32(
                                ia[q],
                                _mm256_mullo_epi32(_mm256_add_epi32(s0, s1), a0),
                            )
                        } else {
                            let v = _mm256_add_epi32(
                                _mm256_mullo_epi32(s0, a0),
                                _mm256_mullo_epi32(s1, a1),
                            );
                            _mm256_add_epi32(ia[q], v)
                        };
                        if needs_m {
                            let bs = bss[q].add(blk * SUPER / BSUM_ELEMS + 2 * u);
                            im[q] = S::dpw(im[q], mp, bcast4(bs.cast()));
                        }
                    }
                }
                let f = p.add(F::FACTORS_AT);
                let d = _mm256_mul_ps(
                    _mm256_cvtph_ps(_mm_loadu_si128(f.cast())),
                    _mm256_set1_ps(F::D_FACTOR),
                );
                let dm = _mm256_cvtph_ps(_mm_loadu_si128(f.add(16).cast()));
                for q in 0..T {
                    let dx = _mm256_set1_ps(dxs[q][blk]);
                    let fd = _mm256_mul_ps(d, dx);
                    let v = match F::SCALES {
                        ScaleKind::Signed { .. } => {
                            let am = _mm256_sub_epi32(
                                ia[q],
                                _mm256_mullo_epi32(im[q], _mm256_set1_epi32(off)),
                            );
                            _mm256_mul_ps(fd, _mm256_cvtepi32_ps(am))
                        }
                        _ => {
                            let fm = _mm256_mul_ps(dm, dx);
                            _mm256_sub_ps(
                                _mm256_mul_ps(fd, _mm256_cvtepi32_ps(ia[q])),
                                _mm256_mul_ps(fm, _mm256_cvtepi32_ps(im[q])),
                            )
                        }
                    };
                    acc[q] = _mm256_add_ps(acc[q], v);
                }
            }
            let mut res = [[0f32; PANEL_ROWS]; T];
            for (r, a) in res.iter_mut().zip(acc) {
                _mm256_storeu_ps(r.as_mut_ptr(), a);
            }
            res
        }
    }
}
