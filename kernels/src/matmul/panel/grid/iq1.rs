//! The panels of the 1-bit grid formats IQ1_S and IQ1_M: per 8 values an 11-bit index into
//! the 2048-entry ternary grid, with an offset `±1/8` whose sign IQ1_S keeps per unit and
//! IQ1_M per grid entry. Their codes are `8g ± 1` (`g` in −1..=1), as `fast/ternary.rs`
//! defines them; scales `a = 2s + 1`, IQ1_S one per unit, IQ1_M one per 16 values.
//!
//! ```text
//! d       16 bytes   8 f16 `d` (IQ1_M's assembled from the top nibbles of its scale words)
//! pad     16 bytes
//! unit u  IQ1_S, 48 bytes: per row its 4 low index bytes (`qs`), then per row its `qh` word
//!                  (3 high index bits per grid entry, `s` in bits 12..15, the offset's sign
//!                  in bit 15);
//!         IQ1_M, 56 bytes: per row its 4 low index bytes, then per row its two `qh` bytes
//!                  as one word (per grid entry a nibble: 3 high index bits, the offset's
//!                  sign in bit 3), then per row its scale byte (`s` of each 16 values, bits
//!                  0..3 and 3..6)
//! ```
//!
//! Bytes per row and 256 elements: IQ1_S 52 (the file's 50), IQ1_M 60 (56).
//!
//! Decoding a unit for 8 rows for the quad kernels ([`avx::iq1_unit`]) takes each row's grid
//! entries by two 64-bit gathers per 8 rows, or in one-token passes by scalar loads of
//! indices computed in a vector (each measured the faster for its pass). On AVX-512 VNNI a
//! one-token pass skips the quads ([`avx512::unit_sums`]): each row's grid entry stays one
//! 64-bit lane (8 rows a vector), one `vpdpbusd` per entry against the token's 8 bytes
//! broadcast, the two halves of a row summed at the end; and a chunk's decoding loads the 8
//! rows' entries into one vector and turns it into the two quad vectors by one byte shuffle
//! and one dword permutation ([`avx512::store_unit_codes`]).

use super::super::layout::{CodeKind, PanelFormat, ScaleKind, PANEL_ROWS, SUPER, UNIT, UNITS};
use super::pack_grid;
use crate::dequant::{iq1_m_d_bits, iq1_m_scale, IQ1S_GRID};

/// IQ1_S's grid with every value times 8 (bytes −8, 0, 8): the `8g` of the codes `8g ± 1`
/// without a multiply per decoded unit.
static IQ1S_GRID8: [u64; 2048] = {
    let mut t = [0u64; 2048];
    let mut i = 0;
    while i < t.len() {
        let mut b = 0;
        while b < 8 {
            let g = (IQ1S_GRID[i] >> (8 * b)) as u8 as i8;
            t[i] |= ((g * 8) as u8 as u64) << (8 * b);
            b += 1;
        }
        i += 1;
    }
    t
};

/// [`IQ1S_GRID8`] plus 128 in every byte (120, 128, 136): the unsigned bytes `8g + 128` that
/// the AVX-512 one-token kernel ([`avx512::unit_sums`]) adds the offset to, so its codes
/// come out biased as `vpdpbusd` takes them.
#[cfg(target_arch = "x86_64")]
static IQ1S_GRID8_BIASED: [u64; 2048] = {
    let mut t = [0u64; 2048];
    let mut i = 0;
    while i < t.len() {
        t[i] = IQ1S_GRID8[i] ^ 0x8080_8080_8080_8080;
        i += 1;
    }
    t
};

/// Row `r`'s `qh` word of unit `u` in panel block `p` (both formats keep it at 32).
fn qh<F: PanelFormat>(p: &[u8], r: usize, u: usize) -> u16 {
    let at = F::UNITS_AT + F::UNIT_BYTES * u + 32 + 2 * r;
    u16::from_le_bytes([p[at], p[at + 1]])
}

/// Row `r`'s 32 codes `8g ± 1` of unit `u`: grid entry `l`'s index has the high bits
/// `(qh >> high(l)) & 7`, its offset is negative where bit `neg(l)` of `qh` is set.
fn codes<F: PanelFormat>(
    p: &[u8],
    r: usize,
    u: usize,
    high: impl Fn(usize) -> u32,
    neg: impl Fn(usize) -> u32,
) -> [i8; UNIT] {
    let at = F::UNITS_AT + F::UNIT_BYTES * u + 4 * r;
    let qh = qh::<F>(p, r, u);
    let mut c = [0i8; UNIT];
    for l in 0..4 {
        let idx = p[at + l] as usize | ((((qh >> high(l)) & 7) as usize) << 8);
        let delta: i8 = if (qh >> neg(l)) & 1 == 1 { -1 } else { 1 };
        for (j, g) in IQ1S_GRID[idx].to_le_bytes().into_iter().enumerate() {
            c[8 * l + j] = 8 * g as i8 + delta;
        }
    }
    c
}

/// The AVX-512 kernels of a 1-bit grid format (`M`: IQ1_M's layout, else IQ1_S's).
macro_rules! iq1_avx512 {
    ($m:expr) => {
        const AVX512_GRID: bool = true;

        #[cfg(target_arch = "x86_64")]
        #[inline(always)]
        unsafe fn grid_unit_sums_512<const T: usize>(
            unit: *const u8,
            xs: [*const i8; T],
        ) -> $crate::matmul::panel::layout::UnitSums<T> {
            // SAFETY: per the caller.
            unsafe { avx512::unit_sums::<$m, T>(unit, xs) }
        }

        #[cfg(target_arch = "x86_64")]
        #[inline(always)]
        unsafe fn grid_store_unit_512(unit: *const u8, out: *mut u8) {
            // SAFETY: per the caller.
            unsafe { avx512::store_unit_codes::<$m>(unit, out) }
        }
    };
}

/// IQ1_S panels.
pub(crate) struct Iq1SPanel;

impl PanelFormat for Iq1SPanel {
    grid_consts!(0.125, unit_scale: true);
    const SRC_BYTES: usize = 50;
    const UNIT_BYTES: usize = 48;

    fn pack(blocks: &[&[u8]], p: &mut [u8]) {
        pack_grid::<Self>(blocks, p, &[(|u| 2 + 4 * u, 4), (|u| 34 + 2 * u, 2)]);
    }

    fn grid_codes(p: &[u8], r: usize, u: usize) -> [i8; UNIT] {
        codes::<Self>(p, r, u, |l| 3 * l as u32, |_| 15)
    }

    fn grid_scales(p: &[u8], r: usize, u: usize) -> (i32, i32) {
        let a = 2 * ((qh::<Self>(p, r, u) >> 12) & 7) as i32 + 1;
        (a, a)
    }

    grid_avx!(iq1_unit::<false, false>, one_token: iq1_unit::<false, true>);
    iq1_avx512!(false);
}

/// IQ1_M panels.
pub(crate) struct Iq1MPanel;

impl PanelFormat for Iq1MPanel {
    grid_consts!(0.125, unit_scale: false);
    const SRC_BYTES: usize = 56;
    const UNIT_BYTES: usize = 56;

    fn pack(blocks: &[&[u8]], p: &mut [u8]) {
        pack_grid::<Self>(blocks, p, &[(|u| 4 * u, 4), (|u| 32 + 2 * u, 2)]);
        // `d` and the scales are not bytes of the file: assembled per row.
        for (r, b) in blocks.iter().enumerate().take(PANEL_ROWS) {
            p[2 * r..2 * r + 2].copy_from_slice(&iq1_m_d_bits(b).to_le_bytes());
            for u in 0..UNITS {
                let s = iq1_m_scale(b, 2 * u) | iq1_m_scale(b, 2 * u + 1) << 3;
                p[Self::UNITS_AT + Self::UNIT_BYTES * u + 48 + r] = s as u8;
            }
        }
    }

    fn grid_codes(p: &[u8], r: usize, u: usize) -> [i8; UNIT] {
        codes::<Self>(p, r, u, |l| 4 * l as u32, |l| 4 * l as u32 + 3)
    }

    fn grid_scales(p: &[u8], r: usize, u: usize) -> (i32, i32) {
        let s = p[Self::UNITS_AT + Self::UNIT_BYTES * u + 48 + r] as i32;
        (2 * (s & 7) + 1, 2 * ((s >> 3) & 7) + 1)
    }

    grid_avx!(iq1_unit::<true, false>, one_token: iq1_unit::<true, true>);
    iq1_avx512!(true);
}

/// The AVX2 pieces shared by both formats' decoders (`M`: IQ1_M's layout).
#[cfg(target_arch = "x86_64")]
mod avx {
    use std::arch::x86_64::*;

    use super::super::avx::{gather_quads, load_quads, odd_scale};
    use super::IQ1S_GRID8;

    /// The unit's 8 rows' grid indices of entry `l` (i32 lanes, row order): 8 bits of
    /// `qs`, 3 of `qh` (at `3l` in IQ1_S, `4l` in IQ1_M).
    ///
    /// # Safety
    /// AVX2.
    #[inline(always)]
    pub(super) unsafe fn indices<const M: bool>(qs: __m256i, qh: __m256i, l: usize) -> __m256i {
        // SAFETY: AVX2 per the caller.
        unsafe {
            let at = if M { 4 * l } else { 3 * l } as i32;
            let low = _mm256_and_si256(
                _mm256_srlv_epi32(qs, _mm256_set1_epi32(8 * l as i32)),
                _mm256_set1_epi32(255),
            );
            let high = _mm256_and_si256(
                _mm256_srlv_epi32(qh, _mm256_set1_epi32(at)),
                _mm256_set1_epi32(7),
            );
            _mm256_or_si256(low, _mm256_slli_epi32::<8>(high))
        }
    }

    /// Where entry `l`'s offset is negative, per row (i32 lanes all ones): the sign bit of
    /// `qh` (bit 15 in IQ1_S, `4l + 3` in IQ1_M).
    ///
    /// # Safety
    /// AVX2.
    #[inline(always)]
    pub(super) unsafe fn negative<const M: bool>(qh: __m256i, l: usize) -> __m256i {
        // SAFETY: AVX2 per the caller.
        unsafe {
            let up = if M { 28 - 4 * l } else { 16 } as i32;
            _mm256_srai_epi32::<31>(_mm256_sllv_epi32(qh, _mm256_set1_epi32(up)))
        }
    }

    /// Entry `l`'s offset per row (i32 lanes): bytes +1, or −1 (0xFF) where [`negative`].
    ///
    /// # Safety
    /// AVX2.
    #[inline(always)]
    pub(super) unsafe fn offsets<const M: bool>(qh: __m256i, l: usize) -> __m256i {
        // SAFETY: AVX2 per the caller.
        unsafe { _mm256_or_si256(negative::<M>(qh, l), _mm256_set1_epi8(1)) }
    }

    /// The unit's scales per row (i32 lanes): of its first and second 16 values.
    ///
    /// # Safety
    /// AVX2; `p` valid for the unit's reads.
    #[inline(always)]
    pub(super) unsafe fn scales<const M: bool>(p: *const u8, qh: __m256i) -> (__m256i, __m256i) {
        // SAFETY: AVX2 per the caller; IQ1_M's 8 scale bytes are at 48.
        unsafe {
            if M {
                let s = _mm256_cvtepu8_epi32(_mm_loadl_epi64(p.add(48).cast()));
                (odd_scale::<0>(s, 7), odd_scale::<3>(s, 7))
            } else {
                let a = odd_scale::<12>(qh, 7);
                (a, a)
            }
        }
    }

    /// A unit at `p` for 8 rows: its quad vectors of codes `8g ± 1` and scales; the grid
    /// entries by two 64-bit gathers per 8 rows, or with `SCALAR` by 8 scalar loads from the
    /// indices computed in a vector (one token at a time: IQ1_S 442 vs 420 tokens/s for the
    /// small file's tg128 on two threads; in multi-token passes the scalar loads measured
    /// slower: pp512 2400 vs 2925).
    ///
    /// # Safety
    /// AVX2; `p` valid for the unit's reads.
    #[inline(always)]
    pub(super) unsafe fn iq1_unit<const M: bool, const SCALAR: bool>(
        p: *const u8,
    ) -> ([__m256i; 8], (__m256i, __m256i)) {
        // SAFETY: AVX2 per the caller; loads inside the unit; indices are 11-bit.
        unsafe {
            let qs = _mm256_loadu_si256(p.cast());
            let qh = _mm256_cvtepu16_epi32(_mm_loadu_si128(p.add(32).cast()));
            let mut c = [_mm256_setzero_si256(); 8];
            for l in 0..4 {
                let gi = indices::<M>(qs, qh, l);
                let (g_lo, g_hi) = if SCALAR {
                    let mut at = [0u32; 8];
                    _mm256_storeu_si256(at.as_mut_ptr().cast(), gi);
                    load_quads(&IQ1S_GRID8, |r| at[r] as usize)
                } else {
                    gather_quads(&IQ1S_GRID8, gi)
                };
                // 8g plus the offset.
                let delta = offsets::<M>(qh, l);
                c[2 * l] = _mm256_add_epi8(g_lo, delta);
                c[2 * l + 1] = _mm256_add_epi8(g_hi, delta);
            }
            (c, scales::<M>(p, qh))
        }
    }
}

/// The AVX-512 kernels (see the module docs).
#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;

    use super::avx::{indices, negative, offsets, scales};
    use super::{IQ1S_GRID8, IQ1S_GRID8_BIASED};
    use crate::matmul::panel::layout::UnitSums;

    /// The 8 rows' entries `table[index]` of grid entry `l` (one row per 64-bit lane).
    ///
    /// # Safety
    /// AVX-512 F; AVX2.
    #[inline(always)]
    unsafe fn entries<const M: bool>(
        table: &[u64; 2048],
        qs: __m256i,
        qh: __m256i,
        l: usize,
    ) -> __m512i {
        // SAFETY: per the caller; `table` indexing is bounds-checked.
        unsafe {
            let mut at = [0u32; 8];
            _mm256_storeu_si256(at.as_mut_ptr().cast(), indices::<M>(qs, qh, l));
            let g = |r: usize| table[at[r] as usize] as i64;
            _mm512_set_epi64(g(7), g(6), g(5), g(4), g(3), g(2), g(1), g(0))
        }
    }

    /// Each row's two i32 halves of its qword summed, in row order (i32 lanes).
    ///
    /// # Safety
    /// AVX-512 F.
    #[inline(always)]
    unsafe fn row_sums(a: __m512i) -> __m256i {
        // SAFETY: per the caller.
        unsafe { _mm512_cvtepi64_epi32(_mm512_add_epi32(a, _mm512_srli_epi64::<32>(a))) }
    }

    /// The unit at `p` against `T` tokens' 32 activation bytes at `xs`: per token and row
    /// (i32 lanes, row order) `Σ (c + 128)·x` of its first and second 16 values (IQ1_S, one
    /// scale per unit: all in the first) and the scales; the unit's entries are loaded once
    /// for all `T` tokens. The same integers as the quad kernel's sums of the biased codes,
    /// so the same bits. IQ1_S, `kernel_timing`, one thread, 4096 x 7168: one token 1631 ->
    /// 1446 µs (gathering the 8 entries instead of loading them: 1666 µs), 2 / 4 tokens 1903
    /// / 2361 -> 1727 / 2278 µs.
    ///
    /// # Safety
    /// AVX-512 F/BW/VL/VNNI; `p` valid for the unit's reads, each of `xs` for 32.
    #[inline(always)]
    pub(super) unsafe fn unit_sums<const M: bool, const T: usize>(
        p: *const u8,
        xs: [*const i8; T],
    ) -> UnitSums<T> {
        // SAFETY: per the caller.
        unsafe {
            let qs = _mm256_loadu_si256(p.cast());
            let qh = _mm256_cvtepu16_epi32(_mm_loadu_si128(p.add(32).cast()));
            let mut acc = [[_mm512_setzero_si512(); 2]; T];
            for l in 0..4 {
                let e = entries::<M>(&IQ1S_GRID8_BIASED, qs, qh, l);
                // The row's offset in all 8 bytes of its lane (widened from its dword).
                let neg = _mm512_cvtepi32_epi64(negative::<M>(qh, l));
                let c = _mm512_add_epi8(e, _mm512_or_si512(neg, _mm512_set1_epi8(1)));
                for (a, x) in acc.iter_mut().zip(xs) {
                    let xq = _mm512_set1_epi64(x.add(8 * l).cast::<i64>().read_unaligned());
                    // The second half's own sums where it has its own scale (IQ1_M).
                    if M && l >= 2 {
                        a[1] = _mm512_dpbusd_epi32(a[1], c, xq);
                    } else {
                        a[0] = _mm512_dpbusd_epi32(a[0], c, xq);
                    }
                }
            }
            let mut sums = [(_mm256_setzero_si256(), _mm256_setzero_si256()); T];
            for (s, a) in sums.iter_mut().zip(&acc) {
                s.0 = row_sums(a[0]);
                if M {
                    s.1 = row_sums(a[1]);
                }
            }
            (sums, scales::<M>(p, qh))
        }
    }

    /// The unit at `p` decoded and stored as `Decoded`'s 8 quad vectors (256 bytes at
    /// `out`), the codes `grid_codes` gives: per grid entry the 8 rows' entries by scalar
    /// loads into one vector, then one in-lane byte shuffle and one dword permutation make
    /// them the two quad vectors (the AVX2 form gathers twice and shuffles four times).
    /// IQ1_S, `kernel_timing`, one thread, 4096 x 7168, 8 / 16 tokens: 3510 / 5070 -> 3210 /
    /// 4760 µs (one 8-row gather instead of the scalar loads: unchanged from the AVX2 form).
    ///
    /// # Safety
    /// AVX-512 F/BW/VL; `p` valid for the unit's reads, `out` for 256 writes.
    #[target_feature(enable = "avx2,avx512f,avx512bw,avx512vl")]
    pub(super) unsafe fn store_unit_codes<const M: bool>(p: *const u8, out: *mut u8) {
        // SAFETY: per the caller.
        unsafe {
            let qs = _mm256_loadu_si256(p.cast());
            let qh = _mm256_cvtepu16_epi32(_mm_loadu_si128(p.add(32).cast()));
            // In each 128-bit lane (rows 2i, 2i + 1): both rows' bytes 0..4, then 4..8.
            let halves = _mm512_broadcast_i32x4(_mm_setr_epi8(
                0, 1, 2, 3, 8, 9, 10, 11, 4, 5, 6, 7, 12, 13, 14, 15,
            ));
            // Then every row's first 4 bytes in row order, then every row's last 4.
            let rows = _mm512_setr_epi32(0, 1, 4, 5, 8, 9, 12, 13, 2, 3, 6, 7, 10, 11, 14, 15);
            for l in 0..4 {
                let e = entries::<M>(&IQ1S_GRID8, qs, qh, l);
                let q = _mm512_permutexvar_epi32(rows, _mm512_shuffle_epi8(e, halves));
                // Row r's offset in dword r of both quad vectors.
                let delta = _mm512_broadcast_i64x4(offsets::<M>(qh, l));
                _mm512_storeu_si512(out.add(64 * l).cast(), _mm512_add_epi8(q, delta));
            }
        }
    }
}
