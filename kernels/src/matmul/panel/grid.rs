//! The panel layouts of the grid formats IQ2_XXS, IQ2_XS and IQ3_XXS (IQ1_S and IQ1_M in
//! `grid/iq1.rs`), whose codes are grid entries, not bit fields: the file's bytes regrouped
//! rows-in-lanes, nothing decoded at load, so a panel is as small as the file (bytes per row
//! and 256 elements: IQ2_XXS 68 vs 66, IQ2_XS 76 vs 74, IQ3_XXS 100 vs 98).
//!
//! ```text
//! d       16 bytes   8 f16 `d` (the weight is (d/8)·(2s + 1)·code; IQ3_XXS d/4)
//! pad     16 bytes
//! unit u  IQ2_XXS, 64 bytes: per row its 4 grid indices (the file's first word of unit u),
//!                  then per row its second word (4 7-bit sign indices, `s` in bits 28..32);
//!         IQ2_XS, 72 bytes: per row its 16-bit words of grid entries 0, 1 (9-bit grid
//!                  index, 7-bit sign index), then of 2, 3, then per row its scale byte
//!                  (`s` of each 16 values);
//!         IQ3_XXS, 96 bytes: per row grid indices 0..4, then 4..8 (one per 4 values), then
//!                  per row its sign-and-scale word (as IQ2_XXS's second word)
//! ```
//!
//! Decoding a unit for 8 rows (`grid_unit_avx`) loads each row's grid entries (IQ2_XXS and
//! IQ2_XS by scalar loads, each measured the faster for its format; IQ3_XXS's 4-value
//! entries are one 32-bit gather per quad) and shuffles them into the quad vectors. The
//! codes are `±grid`: the sign byte is the 7-bit sign index plus its parity bit
//! (`KSIGNS_IQ2XS[i] = i | parity(i) << 7`, parity by a nibble table shuffle), applied as
//! byte masks. Scales `a = 2s + 1`, one per unit ([`PanelFormat::UNIT_SCALE`]; IQ2_XS one
//! per 16 values).
//!
//! A chunk of more tokens than one pass decodes each panel once ([`decode`]) into
//! [`Decoded`] blocks: signed bytes, the same integers, so the same bits.

use std::marker::PhantomData;

use super::layout::{CodeKind, PanelFormat, ScaleKind, PANEL_ROWS, SUPER, UNIT, UNITS};
use crate::dequant::{IQ2XS_GRID, IQ2XXS_GRID, IQ3XXS_GRID};

/// The layout constants every grid format shares.
macro_rules! grid_consts {
    ($d_factor:expr, unit_scale: $unit_scale:expr) => {
        const LO: u32 = 8;
        const HI: u32 = 0;
        const SCALES: ScaleKind = ScaleKind::Signed { off: 0 };
        const UNIT_SCALE: bool = $unit_scale;
        const CODES: CodeKind = CodeKind::Signed;
        const GRID: bool = true;
        const D_FACTOR: f32 = $d_factor;
        const ACT_BLOCK: usize = SUPER;
        const D_AT: Option<usize> = Some(0);
        const DM_AT: Option<usize> = None;
        const FACTORS_AT: usize = 0;
        const UNITS_AT: usize = 32;

        fn src_codes(_: &[u8], _: &mut [u8; SUPER]) {
            unreachable!("grid panels pack the file's bytes (PanelFormat::pack)")
        }

        fn src_scale_bytes(_: &[u8]) -> [[u8; 2]; UNITS] {
            unreachable!("grid panels keep their scales in the units")
        }
    };
}

/// A grid format's `grid_unit_avx`: the AVX decoder `avx::$f`.
macro_rules! grid_avx {
    ($f:ident$(::<$($g:tt),*>)?, one_token: $one:ident::<$($h:tt),*>) => {
        grid_avx!($f$(::<$($g),*>)?);
        #[cfg(target_arch = "x86_64")]
        #[inline(always)]
        unsafe fn grid_unit_avx_one(unit: *const u8) -> $crate::matmul::panel::layout::GridUnit {
            // SAFETY: per the caller.
            unsafe { avx::$one::<$($h),*>(unit) }
        }
    };
    ($f:ident$(::<$($g:tt),*>)?) => {
        #[cfg(target_arch = "x86_64")]
        #[inline(always)]
        unsafe fn grid_unit_avx(unit: *const u8) -> $crate::matmul::panel::layout::GridUnit {
            // SAFETY: per the caller.
            unsafe { avx::$f$(::<$($g),*>)?(unit) }
        }
    };
}

mod iq1;
pub(crate) use self::iq1::{Iq1MPanel, Iq1SPanel};

/// Row `r`'s 4-byte word at `at` + 4r in panel block `p`.
fn word(p: &[u8], at: usize, r: usize) -> u32 {
    let at = at + 4 * r;
    u32::from_le_bytes([p[at], p[at + 1], p[at + 2], p[at + 3]])
}

/// The scale `2s + 1` (both halves) of an IQ2_XXS / IQ3_XXS sign-and-scale word (`s` in bits
/// 28..32).
fn aux_scales(aux: u32) -> (i32, i32) {
    let a = 2 * (aux >> 28) as i32 + 1;
    (a, a)
}

/// The 32 codes `±value(k)` of a unit of the ±grid formats (IQ2_XXS, IQ3_XXS), the signs
/// of values `8l .. 8l + 8` from the 7-bit sign index `l` of `aux`.
fn signed_codes(aux: u32, value: impl Fn(usize) -> i8) -> [i8; UNIT] {
    std::array::from_fn(|k| {
        let g = value(k);
        if (sign_byte(aux >> (7 * (k / 8))) >> (k % 8)) & 1 == 1 {
            -g
        } else {
            g
        }
    })
}

/// One per-row field of a unit in the file: its byte offset in the block for unit `u`, and
/// its bytes.
type Word = (fn(usize) -> usize, usize);

/// Copies the 8 rows' `d` and, per unit, `words` (source offset in the block, bytes per
/// row) into consecutive 8-row vectors of the unit.
fn pack_grid<F: PanelFormat>(blocks: &[&[u8]], p: &mut [u8], words: &[Word]) {
    for (r, b) in blocks.iter().enumerate().take(PANEL_ROWS) {
        p[2 * r..2 * r + 2].copy_from_slice(&b[..2]);
        for u in 0..UNITS {
            let mut dst = F::UNITS_AT + F::UNIT_BYTES * u;
            for &(src, n) in words {
                let (s, d) = (src(u), dst + n * r);
                p[d..d + n].copy_from_slice(&b[s..s + n]);
                dst += n * PANEL_ROWS;
            }
        }
    }
}

/// IQ2_XXS panels.
pub(crate) struct Iq2XxsPanel;

impl PanelFormat for Iq2XxsPanel {
    grid_consts!(0.125, unit_scale: true);
    const SRC_BYTES: usize = 66;
    const UNIT_BYTES: usize = 64;

    fn pack(blocks: &[&[u8]], p: &mut [u8]) {
        pack_grid::<Self>(blocks, p, &[(|u| 2 + 8 * u, 4), (|u| 6 + 8 * u, 4)]);
    }

    fn grid_codes(p: &[u8], r: usize, u: usize) -> [i8; UNIT] {
        let at = Self::UNITS_AT + Self::UNIT_BYTES * u + 4 * r;
        signed_codes(Self::aux(p, r, u), |k| {
            IQ2XXS_GRID[p[at + k / 8] as usize].to_le_bytes()[k % 8] as i8
        })
    }

    fn grid_scales(p: &[u8], r: usize, u: usize) -> (i32, i32) {
        aux_scales(Self::aux(p, r, u))
    }

    grid_avx!(iq2xxs_unit);
}

impl Iq2XxsPanel {
    /// Row `r`'s second word of unit `u` in panel block `p`.
    fn aux(p: &[u8], r: usize, u: usize) -> u32 {
        word(p, Self::UNITS_AT + Self::UNIT_BYTES * u + 32, r)
    }
}

/// IQ2_XS panels.
pub(crate) struct Iq2XsPanel;

impl Iq2XsPanel {
    /// Row `r`'s 16-bit word of grid entry `l` (9-bit grid index, 7-bit sign index) in unit
    /// `u` of panel block `p`.
    fn entry(p: &[u8], r: usize, u: usize, l: usize) -> u16 {
        let at = Self::UNITS_AT + Self::UNIT_BYTES * u + 32 * (l / 2) + 4 * r + 2 * (l % 2);
        u16::from_le_bytes([p[at], p[at + 1]])
    }
}

impl PanelFormat for Iq2XsPanel {
    grid_consts!(0.125, unit_scale: false);
    const SRC_BYTES: usize = 74;
    const UNIT_BYTES: usize = 72;

    fn pack(blocks: &[&[u8]], p: &mut [u8]) {
        let words: [Word; 3] = [(|u| 2 + 8 * u, 4), (|u| 6 + 8 * u, 4), (|u| 66 + u, 1)];
        pack_grid::<Self>(blocks, p, &words);
    }

    fn grid_codes(p: &[u8], r: usize, u: usize) -> [i8; UNIT] {
        let q: [u16; 4] = std::array::from_fn(|l| Self::entry(p, r, u, l));
        let aux = (0..4).fold(0u32, |a, l| a | (((q[l] >> 9) as u32) << (7 * l)));
        signed_codes(aux, |k| {
            IQ2XS_GRID[(q[k / 8] & 511) as usize].to_le_bytes()[k % 8] as i8
        })
    }

    fn grid_scales(p: &[u8], r: usize, u: usize) -> (i32, i32) {
        let s = p[Self::UNITS_AT + Self::UNIT_BYTES * u + 64 + r];
        (2 * (s & 15) as i32 + 1, 2 * (s >> 4) as i32 + 1)
    }

    grid_avx!(iq2xs_unit);
}

/// IQ3_XXS panels.
pub(crate) struct Iq3XxsPanel;

impl PanelFormat for Iq3XxsPanel {
    grid_consts!(0.25, unit_scale: true);
    const SRC_BYTES: usize = 98;
    const UNIT_BYTES: usize = 96;

    fn pack(blocks: &[&[u8]], p: &mut [u8]) {
        let words: [Word; 3] = [(|u| 2 + 8 * u, 4), (|u| 6 + 8 * u, 4), (|u| 66 + 4 * u, 4)];
        pack_grid::<Self>(blocks, p, &words);
    }

    fn grid_codes(p: &[u8], r: usize, u: usize) -> [i8; UNIT] {
        let at = Self::UNITS_AT + Self::UNIT_BYTES * u + 4 * r;
        // Grid entry e (values 4e .. 4e + 4): index byte e % 4 of vector e / 4.
        signed_codes(Self::aux(p, r, u), |k| {
            let e = k / 4;
            IQ3XXS_GRID[p[at + 32 * (e / 4) + e % 4] as usize].to_le_bytes()[k % 4] as i8
        })
    }

    fn grid_scales(p: &[u8], r: usize, u: usize) -> (i32, i32) {
        aux_scales(Self::aux(p, r, u))
    }

    grid_avx!(iq3xxs_unit);
}

impl Iq3XxsPanel {
    /// Row `r`'s sign-and-scale word of unit `u` in panel block `p`.
    fn aux(p: &[u8], r: usize, u: usize) -> u32 {
        word(p, Self::UNITS_AT + Self::UNIT_BYTES * u + 64, r)
    }
}

/// A grid panel decoded for a chunk of tokens: the same integers as the grid format's, as
/// signed bytes with per-unit scale bytes (`a` twice) and `d`, read by the plain
/// signed-code kernels.
pub(crate) struct Decoded<F>(PhantomData<F>);

impl<F: PanelFormat> PanelFormat for Decoded<F> {
    const LO: u32 = 8;
    const HI: u32 = 0;
    const SCALES: ScaleKind = ScaleKind::Signed { off: 0 };
    const UNIT_SCALE: bool = F::UNIT_SCALE;
    const CODES: CodeKind = CodeKind::Signed;
    const D_FACTOR: f32 = F::D_FACTOR;
    const SRC_BYTES: usize = 0;
    const ACT_BLOCK: usize = SUPER;
    const D_AT: Option<usize> = None;
    const DM_AT: Option<usize> = None;

    fn src_codes(_: &[u8], _: &mut [u8; SUPER]) {
        unreachable!("decoded panels are written by `decode`, not packed")
    }

    fn src_scale_bytes(_: &[u8]) -> [[u8; 2]; UNITS] {
        unreachable!("decoded panels are written by `decode`, not packed")
    }
}

/// The grid `panel` of `F` (whole blocks) decoded into `out` (as many [`Decoded`] blocks),
/// the codes by `unit_codes` (portable when `None`).
pub(crate) fn decode<F: PanelFormat>(
    panel: &[u8],
    out: &mut [u8],
    unit_codes: Option<unsafe fn(*const u8, *mut u8)>,
) {
    let d_at = Decoded::<F>::FACTORS_AT;
    for (blk, dst) in panel
        .chunks_exact(F::PANEL_BLOCK_BYTES)
        .zip(out.chunks_exact_mut(Decoded::<F>::PANEL_BLOCK_BYTES))
    {
        dst[d_at..d_at + 2 * PANEL_ROWS].copy_from_slice(&blk[F::FACTORS_AT..][..2 * PANEL_ROWS]);
        for u in 0..UNITS {
            for r in 0..PANEL_ROWS {
                let (a0, a1) = F::grid_scales(blk, r, u);
                let at = Decoded::<F>::SCALES_AT + 16 * u + 2 * r;
                dst[at..at + 2].copy_from_slice(&[a0 as u8, a1 as u8]);
            }
            let unit = &blk[F::UNITS_AT + F::UNIT_BYTES * u..][..F::UNIT_BYTES];
            let codes = &mut dst[Decoded::<F>::UNITS_AT + Decoded::<F>::UNIT_BYTES * u..]
                [..Decoded::<F>::UNIT_BYTES];
            match unit_codes {
                // SAFETY: the caller's implementation runs on this CPU; the unit's bytes are
                // read and 256 written (the slices above).
                Some(f) => unsafe { f(unit.as_ptr(), codes.as_mut_ptr()) },
                None => {
                    for r in 0..PANEL_ROWS {
                        for (k, v) in F::grid_codes(blk, r, u).iter().enumerate() {
                            codes[32 * (k / 4) + 4 * r + k % 4] = *v as u8;
                        }
                    }
                }
            }
        }
    }
}

/// The sign byte of 7-bit sign index `i`: `i` with bit 7 making the parity even.
#[inline(always)]
fn sign_byte(i: u32) -> u8 {
    let i = (i & 127) as u8;
    i | (((i.count_ones() & 1) as u8) << 7)
}

/// The AVX decoding of a unit for 8 rows.
#[cfg(target_arch = "x86_64")]
pub(crate) mod avx {
    use std::arch::x86_64::*;

    use super::{PanelFormat, IQ2XS_GRID, IQ2XXS_GRID, IQ3XXS_GRID};

    /// The grid entries `table[index]` of 8 rows (`index` i32 lanes, row order) as the two
    /// quad vectors of their first and last 4 bytes.
    ///
    /// # Safety
    /// AVX2; every index inside `table`.
    #[inline(always)]
    pub(super) unsafe fn gather_quads(table: &[u64], index: __m256i) -> (__m256i, __m256i) {
        // SAFETY: per the caller.
        unsafe {
            let t = table.as_ptr().cast::<i64>();
            let a = _mm256_i32gather_epi64::<8>(t, _mm256_castsi256_si128(index));
            let b = _mm256_i32gather_epi64::<8>(t, _mm256_extracti128_si256::<1>(index));
            pair_quads(a, b)
        }
    }

    /// [`gather_quads`] by scalar loads of `table[idx(r)]` (for IQ2_XXS, whose indices are
    /// bytes in memory: measured faster than the gathers on Zen 4, one token 227 -> 158 µs
    /// for a 512 x 7168 matrix; IQ1_S's 11-bit indices measured slower this way).
    #[inline(always)]
    pub(super) unsafe fn load_quads(
        table: &[u64],
        idx: impl Fn(usize) -> usize,
    ) -> (__m256i, __m256i) {
        // SAFETY: AVX2 per the caller; `table` indexing is bounds-checked.
        unsafe {
            let g = |r: usize| table[idx(r)] as i64;
            let a = _mm256_set_epi64x(g(3), g(2), g(1), g(0));
            let b = _mm256_set_epi64x(g(7), g(6), g(5), g(4));
            pair_quads(a, b)
        }
    }

    /// Rows 0..4's and 4..8's 8-byte entries (`a`, `b`) as the quad vectors of their first
    /// and last 4 bytes.
    #[inline(always)]
    pub(super) unsafe fn pair_quads(a: __m256i, b: __m256i) -> (__m256i, __m256i) {
        // SAFETY: AVX2 per the caller.
        unsafe {
            let (af, bf) = (_mm256_castsi256_ps(a), _mm256_castsi256_ps(b));
            // [r0 r1 r4 r5 | r2 r3 r6 r7] halves, then the 64-bit pairs in row order.
            let lo = _mm256_castps_si256(_mm256_shuffle_ps::<0b10_00_10_00>(af, bf));
            let hi = _mm256_castps_si256(_mm256_shuffle_ps::<0b11_01_11_01>(af, bf));
            (
                _mm256_permute4x64_epi64::<0b11_01_10_00>(lo),
                _mm256_permute4x64_epi64::<0b11_01_10_00>(hi),
            )
        }
    }

    /// `2s + 1` of the 3- or 4-bit field `s` at bit `SHIFT` of each lane.
    #[inline(always)]
    pub(super) unsafe fn odd_scale<const SHIFT: i32>(w: __m256i, mask: i32) -> __m256i {
        // SAFETY: AVX2 per the caller.
        unsafe {
            let s = _mm256_and_si256(_mm256_srli_epi32::<SHIFT>(w), _mm256_set1_epi32(mask));
            _mm256_or_si256(_mm256_slli_epi32::<1>(s), _mm256_set1_epi32(1))
        }
    }

    /// Per lane the 4 sign bytes of an IQ2_XXS / IQ3_XXS word: its four 7-bit sign indices
    /// with their parity in bit 7.
    #[inline(always)]
    unsafe fn sign_bytes(aux: __m256i) -> __m256i {
        // SAFETY: AVX2 per the caller.
        unsafe {
            let m7 = _mm256_set1_epi32(127);
            with_parity(_mm256_or_si256(
                _mm256_or_si256(
                    _mm256_and_si256(aux, m7),
                    _mm256_slli_epi32::<8>(_mm256_and_si256(_mm256_srli_epi32::<7>(aux), m7)),
                ),
                _mm256_or_si256(
                    _mm256_slli_epi32::<16>(_mm256_and_si256(_mm256_srli_epi32::<14>(aux), m7)),
                    _mm256_slli_epi32::<24>(_mm256_and_si256(_mm256_srli_epi32::<21>(aux), m7)),
                ),
            ))
        }
    }

    /// 7-bit sign indices (one per byte) with their parity in bit 7: the sign bytes.
    #[inline(always)]
    unsafe fn with_parity(s: __m256i) -> __m256i {
        // SAFETY: AVX2 per the caller.
        unsafe {
            let parity = _mm256_setr_epi8(
                0, 1, 1, 0, 1, 0, 0, 1, 1, 0, 0, 1, 0, 1, 1, 0, 0, 1, 1, 0, 1, 0, 0, 1, 1, 0, 0, 1,
                0, 1, 1, 0,
            );
            let lo = _mm256_and_si256(s, _mm256_set1_epi8(15));
            let hi = _mm256_and_si256(_mm256_srli_epi16::<4>(s), _mm256_set1_epi8(7));
            let par = _mm256_xor_si256(
                _mm256_shuffle_epi8(parity, lo),
                _mm256_shuffle_epi8(parity, hi),
            );
            _mm256_or_si256(s, _mm256_slli_epi16::<7>(par))
        }
    }

    /// Sign byte `l` of each lane as the byte masks (−1: negative) of quads `2l` (its bits
    /// 0..4) and `2l + 1` (bits 4..8).
    #[inline(always)]
    unsafe fn sign_masks(signs: __m256i, l: usize) -> (__m256i, __m256i) {
        // SAFETY: AVX2 per the caller.
        unsafe {
            let spread = _mm256_shuffle_epi8(
                signs,
                _mm256_add_epi8(
                    _mm256_set1_epi8(l as i8),
                    _mm256_setr_epi8(
                        0, 0, 0, 0, 4, 4, 4, 4, 8, 8, 8, 8, 12, 12, 12, 12, 0, 0, 0, 0, 4, 4, 4, 4,
                        8, 8, 8, 8, 12, 12, 12, 12,
                    ),
                ),
            );
            let bits_lo = _mm256_set1_epi32(0x0804_0201);
            let bits_hi = _mm256_set1_epi32(0x8040_2010_u32 as i32);
            (
                _mm256_cmpeq_epi8(_mm256_and_si256(spread, bits_lo), bits_lo),
                _mm256_cmpeq_epi8(_mm256_and_si256(spread, bits_hi), bits_hi),
            )
        }
    }

    /// `g` where `neg` is 0, `−g` where it is −1: `(g ^ neg) − neg`.
    #[inline(always)]
    unsafe fn negate(g: __m256i, neg: __m256i) -> __m256i {
        // SAFETY: AVX2 per the caller.
        unsafe { _mm256_sub_epi8(_mm256_xor_si256(g, neg), neg) }
    }

    /// An IQ3_XXS unit (96 bytes at `p`) for 8 rows: each grid entry (4 values) is one quad,
    /// gathered for the 8 rows at once.
    ///
    /// # Safety
    /// AVX2; `p` valid for 96 reads.
    #[inline(always)]
    pub(super) unsafe fn iq3xxs_unit(p: *const u8) -> ([__m256i; 8], (__m256i, __m256i)) {
        // SAFETY: AVX2 per the caller; loads inside the unit; gathers index the 256-entry
        // grid with bytes.
        unsafe {
            let aux = _mm256_loadu_si256(p.add(64).cast());
            let signs = sign_bytes(aux);
            let grid = IQ3XXS_GRID.as_ptr().cast::<i32>();
            let mut c = [_mm256_setzero_si256(); 8];
            for l in 0..4 {
                let (neg_lo, neg_hi) = sign_masks(signs, l);
                for (h, neg) in [(0, neg_lo), (1, neg_hi)] {
                    let e = 2 * l + h;
                    let idx = _mm256_loadu_si256(p.add(32 * (e / 4)).cast());
                    let gi = _mm256_and_si256(
                        _mm256_srlv_epi32(idx, _mm256_set1_epi32(8 * (e % 4) as i32)),
                        _mm256_set1_epi32(255),
                    );
                    c[e] = negate(_mm256_i32gather_epi32::<4>(grid, gi), neg);
                }
            }
            let a = odd_scale::<28>(aux, 15);
            (c, (a, a))
        }
    }

    /// An IQ2_XXS unit (64 bytes at `p`) for 8 rows.
    ///
    /// # Safety
    /// AVX2; `p` valid for 64 reads.
    #[inline(always)]
    pub(super) unsafe fn iq2xxs_unit(p: *const u8) -> ([__m256i; 8], (__m256i, __m256i)) {
        // SAFETY: AVX2 per the caller; loads inside the unit; the grid is indexed with bytes.
        unsafe {
            let aux = _mm256_loadu_si256(p.add(32).cast());
            let signs = sign_bytes(aux);
            let mut c = [_mm256_setzero_si256(); 8];
            for l in 0..4 {
                let (g_lo, g_hi) = load_quads(&IQ2XXS_GRID, |r| *p.add(4 * r + l) as usize);
                let (neg_lo, neg_hi) = sign_masks(signs, l);
                c[2 * l] = negate(g_lo, neg_lo);
                c[2 * l + 1] = negate(g_hi, neg_hi);
            }
            let a = odd_scale::<28>(aux, 15);
            (c, (a, a))
        }
    }

    /// An IQ2_XS unit (72 bytes at `p`) for 8 rows: per grid entry a 16-bit word per row
    /// (9-bit grid index, 7-bit sign index), then a scale byte per row (a nibble per 16
    /// values).
    ///
    /// # Safety
    /// AVX2; `p` valid for 72 reads.
    #[inline(always)]
    pub(super) unsafe fn iq2xs_unit(p: *const u8) -> ([__m256i; 8], (__m256i, __m256i)) {
        // SAFETY: AVX2 per the caller; loads inside the unit; the grid is indexed with 9-bit
        // values.
        unsafe {
            let w0 = _mm256_loadu_si256(p.cast());
            let w1 = _mm256_loadu_si256(p.add(32).cast());
            let m7 = _mm256_set1_epi32(127);
            let s = _mm256_or_si256(
                _mm256_or_si256(
                    _mm256_and_si256(_mm256_srli_epi32::<9>(w0), m7),
                    _mm256_slli_epi32::<8>(_mm256_and_si256(_mm256_srli_epi32::<25>(w0), m7)),
                ),
                _mm256_or_si256(
                    _mm256_slli_epi32::<16>(_mm256_and_si256(_mm256_srli_epi32::<9>(w1), m7)),
                    _mm256_slli_epi32::<24>(_mm256_and_si256(_mm256_srli_epi32::<25>(w1), m7)),
                ),
            );
            let signs = with_parity(s);
            let mut c = [_mm256_setzero_si256(); 8];
            for l in 0..4 {
                let (g_lo, g_hi) = load_quads(&IQ2XS_GRID, |r| {
                    let q = p.add(32 * (l / 2) + 4 * r + 2 * (l % 2)).cast::<u16>();
                    (q.read_unaligned() & 511) as usize
                });
                let (neg_lo, neg_hi) = sign_masks(signs, l);
                c[2 * l] = negate(g_lo, neg_lo);
                c[2 * l + 1] = negate(g_hi, neg_hi);
            }
            let sc = _mm256_cvtepu8_epi32(_mm_loadl_epi64(p.add(64).cast()));
            (c, (odd_scale::<0>(sc, 15), odd_scale::<4>(sc, 15)))
        }
    }

    /// `F`'s unit at `p` decoded and stored: 256 bytes at `out`.
    ///
    /// # Safety
    /// AVX2; `p` valid for the unit's reads, `out` for 256 writes.
    #[target_feature(enable = "avx2")]
    pub(crate) unsafe fn store_unit_codes<F: PanelFormat>(p: *const u8, out: *mut u8) {
        // SAFETY: per the caller.
        unsafe {
            for (q, v) in F::grid_unit_avx(p).0.into_iter().enumerate() {
                _mm256_storeu_si256(out.add(32 * q).cast(), v);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dequant::KSIGNS_IQ2XS;

    #[test]
    fn sign_bytes_are_the_ksigns_table() {
        for (i, &k) in KSIGNS_IQ2XS.iter().enumerate() {
            assert_eq!(sign_byte(i as u32), k, "{i}");
        }
    }
}
