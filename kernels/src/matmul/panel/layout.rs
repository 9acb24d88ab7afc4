//! The panel layout of the k-quants: how [`PANEL_ROWS`] rows' super-blocks are repacked so
//! that a 32-byte load (plus shifts and masks) yields 4 consecutive codes of each of the 8
//! rows, the operand of one `vpdpbusd` whose 8 i32 lanes are the 8 rows.
//!
//! A panel block (8 rows, one 256-element super-block) is read front to back, one stream:
//!
//! ```text
//! scales    128 bytes     per unit u (32 elements): [row r: byte 2u, byte 2u + 1] · 8 rows
//! d, dm      32 bytes     8 f16 `d`, then 8 f16 `dm` (zeros where the format has no dm)
//! unit 0    32·(LO + HI)  its LO low-bit vectors, then its HI high-bit vectors
//! ..        (8 units)
//! ```
//!
//! With `V_q` the "quad vector" of quad `q` of the unit (elements `4q .. 4q + 4` of it, q < 8),
//! byte `4r + i` of `V_q` being row `r`'s code of element `4q + i`, a field of `b` bits
//! (the low LO = 2 or 4 bits, or the high HI = 1 or 2 bits of the codes) takes `b` vectors,
//! vector `j` holding quads `j·8/b .. (j + 1)·8/b`: `Σ_s field(V_(j·8/b + s)) << b·s`. So a
//! unit of LO = 4 is `V_0 | V_1 << 4`, `V_2 | V_3 << 4`, ..., of LO = 2 `V_0 | V_1 << 2 |
//! V_2 << 4 | V_3 << 6` and the same of `V_4 .. V_7`; HI = 1 is one vector
//! `Σ_q hi(V_q) << q`, HI = 2 two.
//!
//! The codes are the unsigned codes of the Fast decoders (`fast/kquants.rs`); the scale
//! bytes per unit are the format's own ([`ScaleKind`]), so a panel row costs at most 6 bytes
//! more per super-block than the file's block (Q2_K: 84 either way, Q3_K 116 vs 110, Q4_K
//! 148 vs 144, Q5_K 180 vs 176, Q6_K 212 vs 210). A layout of whole planes (all low bits,
//! then all high bits) read as three interleaved streams measured 2-4x slower from DRAM
//! for Q5_K and Q6_K (the prefetchers lose them); one stream does not.

/// Rows per panel: the 8 i32 lanes of a 256-bit vector.
pub(crate) const PANEL_ROWS: usize = 8;
/// Elements of a super-block (every panel format's block).
pub(crate) const SUPER: usize = 256;
/// Elements per unit (8 quads; one or two scale groups).
pub(crate) const UNIT: usize = 32;
/// Units per super-block.
pub(crate) const UNITS: usize = SUPER / UNIT;

/// A grid format's unit decoded for 8 rows: its 8 quad vectors of signed codes and the
/// scales of its two 16-value halves (i32 lanes).
#[cfg(target_arch = "x86_64")]
pub(crate) type GridUnit = (
    [std::arch::x86_64::__m256i; 8],
    (std::arch::x86_64::__m256i, std::arch::x86_64::__m256i),
);

/// A grid unit against `T` tokens (AVX-512): per token and row (i32 lanes) `Σ (c + 128)·x`
/// of its first and second 16 values (a format with one scale per unit may put all in the
/// first), then the scales of the two halves.
#[cfg(target_arch = "x86_64")]
pub(crate) type UnitSums<const T: usize> = (
    [(std::arch::x86_64::__m256i, std::arch::x86_64::__m256i); T],
    (std::arch::x86_64::__m256i, std::arch::x86_64::__m256i),
);

/// How a format's two scale bytes per unit give its integer scales and offsets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ScaleKind {
    /// Q2_K: per 16 elements one byte `a | m << 4` (the file's byte): `A = Σ a·S`,
    /// `M = Σ m·bs`, `w = d·a·c − dm·m`.
    Nibbles,
    /// Q3_K, Q6_K, IQ4_XS: per 16 elements a signed `a`; the offset is `off·a`:
    /// `A = Σ a·S`, `M' = Σ a·bs`, `w = d·a·(c − off)`.
    Signed {
        /// The code offset (4 or 32; 0 for signed codes).
        off: i32,
    },
    /// Q4_K, Q5_K: per 32 elements `a` then `m` (unsigned 6-bit): `A = Σ a·S`,
    /// `M = Σ m·bs`.
    Pair32,
    /// Q8_0, Q4_0, IQ4_NL (32-element blocks, 8 per super-block): the unit's two bytes are
    /// its block's f16 `d`, and each unit takes its own f32 step, `w = d·c`.
    UnitF16,
}

/// How a panel's stored codes become the integers the dot multiplies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CodeKind {
    /// Unsigned codes (at most 63) as stored.
    Unsigned,
    /// Signed bytes as stored (`LO = 8`).
    Signed,
    /// 4-bit indices into a table of 16 signed values.
    Lookup(&'static [i8; 16]),
}

/// A format with a panel layout (see the module docs); the impls are in `formats.rs`.
pub(crate) trait PanelFormat {
    /// Low bits of a code in the lo plane (2, 4 or 8).
    const LO: u32;
    /// High bits in the hi plane (0, 1 or 2).
    const HI: u32;
    /// The scale bytes.
    const SCALES: ScaleKind;
    /// Whether a unit's two 16-groups always share one scale (`Pair32`, IQ4_XS): then the
    /// kernels multiply the unit's sum by it once.
    const UNIT_SCALE: bool = matches!(Self::SCALES, ScaleKind::Pair32);
    /// Scale bytes stored per row and unit: 2, or 1 for a [`ScaleKind::Signed`] format with
    /// [`PanelFormat::UNIT_SCALE`] (IQ4_XS), whose two bytes are equal.
    const SCALE_BYTES: usize = 2;
    /// What the codes are.
    const CODES: CodeKind;
    /// A grid format (IQ2_XXS, `grid.rs`): its units decode from grid and sign indices, not
    /// from bit fields, and its scales are in the units.
    const GRID: bool = false;
    /// What the super-block's `d` is multiplied by (the IQ2 grids' 1/8; exact in f32).
    const D_FACTOR: f32 = 1.0;
    /// Bytes of one row's [`SUPER`] elements in the file.
    const SRC_BYTES: usize;
    /// Elements per activation block (one scale `dx` each): [`SUPER`], or [`UNIT`] for the
    /// [`ScaleKind::UnitF16`] formats.
    const ACT_BLOCK: usize;
    /// Byte offset of the super-block's f16 `d` in the file (`None`: no per-super-block `d`).
    const D_AT: Option<usize>;
    /// Byte offset of the super-block's f16 `dmin`, if it has one.
    const DM_AT: Option<usize>;

    /// The stored codes of one row's super-block `b` (a field of `LO + HI` bits each).
    fn src_codes(b: &[u8], c: &mut [u8; SUPER]);
    /// The two scale bytes per unit of one row's super-block `b` ([`ScaleKind`]).
    fn src_scale_bytes(b: &[u8]) -> [[u8; 2]; UNITS];

    /// Writes the panel block `p` (zeroed) from up to 8 rows' super-blocks (default: the
    /// bit fields of [`pack_block`]).
    fn pack(blocks: &[&[u8]], p: &mut [u8])
    where
        Self: Sized,
    {
        pack_block::<Self>(blocks, p);
    }

    /// A grid format's row `r` of unit `u` of panel block `p`: its 32 signed codes.
    fn grid_codes(_p: &[u8], _r: usize, _u: usize) -> [i8; UNIT] {
        unreachable!("not a grid format")
    }

    /// A grid format's scales of row `r` in unit `u` of panel block `p`: its first and
    /// second 16 values'.
    fn grid_scales(_p: &[u8], _r: usize, _u: usize) -> (i32, i32) {
        unreachable!("not a grid format")
    }

    /// A grid format's unit at `unit` decoded for its 8 rows: the quad vectors of signed
    /// codes and the scales of its two 16-value halves (i32 lanes).
    ///
    /// # Safety
    /// AVX2; `unit` valid for [`PanelFormat::UNIT_BYTES`] reads.
    #[cfg(target_arch = "x86_64")]
    unsafe fn grid_unit_avx(_unit: *const u8) -> GridUnit {
        unreachable!("not a grid format")
    }

    /// [`PanelFormat::grid_unit_avx`] for a pass of one token, where a format may decode
    /// differently (IQ1_S: scalar table loads instead of gathers).
    ///
    /// # Safety
    /// As [`PanelFormat::grid_unit_avx`].
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn grid_unit_avx_one(unit: *const u8) -> GridUnit {
        // SAFETY: per the caller.
        unsafe { Self::grid_unit_avx(unit) }
    }

    /// A grid format with AVX-512 kernels of its own ([`PanelFormat::grid_unit_sums_512`],
    /// [`PanelFormat::grid_store_unit_512`]: IQ1_S, IQ1_M).
    const AVX512_GRID: bool = false;

    /// A grid format's unit at `unit` against `T` tokens' 32 activation bytes at `xs`, on
    /// AVX-512 VNNI, without the quad vectors of [`PanelFormat::grid_unit_avx`]
    /// ([`UnitSums`]).
    ///
    /// # Safety
    /// AVX-512 F/BW/VL/VNNI; `unit` valid for [`PanelFormat::UNIT_BYTES`] reads, each of `xs`
    /// for 32.
    #[cfg(target_arch = "x86_64")]
    unsafe fn grid_unit_sums_512<const T: usize>(
        _unit: *const u8,
        _xs: [*const i8; T],
    ) -> UnitSums<T> {
        unreachable!("no AVX-512 grid kernels")
    }

    /// A grid format's unit at `unit` decoded into the 8 quad vectors of `grid.rs`'s
    /// `Decoded` (256 bytes at `out`), on AVX-512.
    ///
    /// # Safety
    /// AVX-512 F/BW/VL; `unit` valid for [`PanelFormat::UNIT_BYTES`] reads, `out` for 256
    /// writes.
    #[cfg(target_arch = "x86_64")]
    unsafe fn grid_store_unit_512(_unit: *const u8, _out: *mut u8) {
        unreachable!("no AVX-512 grid kernels")
    }

    /// Offset of the scales in a panel block.
    const SCALES_AT: usize = 0;
    /// Offset of the 8 f16 `d` (the 8 `dm` follow).
    const FACTORS_AT: usize = PANEL_ROWS * UNITS * Self::SCALE_BYTES;
    /// Offset of unit 0's codes.
    const UNITS_AT: usize = Self::FACTORS_AT + 2 * PANEL_ROWS * 2;
    /// Bytes of one unit's codes.
    const UNIT_BYTES: usize = 32 * (Self::LO + Self::HI) as usize;
    /// Offset of a unit's high-bit vectors within the unit.
    const HI_AT: usize = 32 * Self::LO as usize;
    /// Bytes of one panel block.
    const PANEL_BLOCK_BYTES: usize = Self::UNITS_AT + UNITS * Self::UNIT_BYTES;
}

/// The mask of a field of `bits` bits (up to 8).
#[inline(always)]
const fn field_mask(bits: u32) -> u8 {
    ((1u16 << bits) - 1) as u8
}

/// Where row `r`'s code of element `k` lives: (lo byte offset, lo shift, hi byte offset, hi
/// shift) within a panel block of `F`.
#[inline(always)]
fn code_place<F: PanelFormat>(r: usize, k: usize) -> (usize, u32, usize, u32) {
    let (q, i) = ((k % UNIT) / 4, k % 4);
    let unit = F::UNITS_AT + (k / UNIT) * F::UNIT_BYTES;
    let byte = 4 * r + i;
    // A field of `b` bits: vector q / (8 / b), shift b · (q % (8 / b)).
    let place = |b: u32| {
        let per = 8 / b as usize;
        (32 * (q / per) + byte, b * (q % per) as u32)
    };
    let (lo_at, lo_shift) = place(F::LO);
    let (hi_at, hi_shift) = if F::HI > 0 { place(F::HI) } else { (0, 0) };
    (unit + lo_at, lo_shift, unit + F::HI_AT + hi_at, hi_shift)
}

/// Row `r`'s code of element `k` in the panel block `p`.
#[inline(always)]
pub(crate) fn code_at<F: PanelFormat>(p: &[u8], r: usize, k: usize) -> u8 {
    let (lo_at, lo_shift, hi_at, hi_shift) = code_place::<F>(r, k);
    let lo = (p[lo_at] >> lo_shift) & field_mask(F::LO);
    if F::HI == 0 {
        return lo;
    }
    let hi = (p[hi_at] >> hi_shift) & field_mask(F::HI);
    lo | (hi << F::LO)
}

/// Row `r`'s scale byte `s` (of 16) in the panel block `p`.
#[inline(always)]
pub(crate) fn scale_byte<F: PanelFormat>(p: &[u8], r: usize, s: usize) -> u8 {
    let per = F::SCALE_BYTES;
    p[F::SCALES_AT + PANEL_ROWS * per * (s / 2) + per * r + (s % 2).min(per - 1)]
}

/// Row `r`'s f16 `d` (`dm` when `second`) bits in the panel block `p`.
#[inline(always)]
pub(crate) fn factor_bits<F: PanelFormat>(p: &[u8], r: usize, second: bool) -> u16 {
    let at = F::FACTORS_AT + 2 * r + if second { 2 * PANEL_ROWS } else { 0 };
    u16::from_le_bytes([p[at], p[at + 1]])
}

/// Writes the panel block `p` (zeroed, [`PanelFormat::PANEL_BLOCK_BYTES`]) from up to 8
/// rows' super-blocks `blocks[r]` (absent rows stay zero: zero codes, scales and factors).
pub(crate) fn pack_block<F: PanelFormat>(blocks: &[&[u8]], p: &mut [u8]) {
    let mut codes = [[0u8; SUPER]; PANEL_ROWS];
    for (r, b) in blocks.iter().enumerate().take(PANEL_ROWS) {
        F::src_codes(b, &mut codes[r]);
        for (u, pair) in F::src_scale_bytes(b).into_iter().enumerate() {
            let at = F::SCALES_AT + PANEL_ROWS * F::SCALE_BYTES * u + F::SCALE_BYTES * r;
            p[at..at + F::SCALE_BYTES].copy_from_slice(&pair[..F::SCALE_BYTES]);
        }
        let d_at = F::FACTORS_AT + 2 * r;
        for (src, at) in [(F::D_AT, d_at), (F::DM_AT, d_at + 2 * PANEL_ROWS)] {
            if let Some(src) = src {
                p[at..at + 2].copy_from_slice(&b[src..src + 2]);
            }
        }
    }
    // Per unit, the fields of `bits` bits from bit `skip` of the codes: `bits` vectors of
    // `8 / bits` quad vectors each.
    for u in 0..UNITS {
        let unit = F::UNITS_AT + u * F::UNIT_BYTES;
        for (at, bits, skip) in [(0, F::LO, 0), (F::HI_AT, F::HI, F::LO)] {
            if bits == 0 {
                continue;
            }
            let (per, mask) = (8 / bits as usize, field_mask(bits));
            let fields = &mut p[unit + at..unit + at + 32 * bits as usize];
            for (j, v) in fields.chunks_exact_mut(32).enumerate() {
                for (byte, o) in v.iter_mut().enumerate() {
                    let (r, i) = (byte / 4, byte % 4);
                    let mut acc = 0u8;
                    for s in 0..per {
                        let c = codes[r][UNIT * u + 4 * (per * j + s) + i];
                        acc |= ((c >> skip) & mask) << (bits as usize * s);
                    }
                    *o = acc;
                }
            }
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::matmul::test_data::{bytes, data};
    use crate::{quantize_row, GgmlType};

    /// 8 rows of `ty`, one super-block each: quantized from test data, or (IQ4_XS, which
    /// this crate does not quantize) test bytes with a small f16 `d`.
    pub(crate) fn rows(ty: GgmlType) -> Vec<Vec<u8>> {
        (0..PANEL_ROWS)
            .map(|r| {
                let mut b = vec![0u8; ty.row_bytes(SUPER).unwrap()];
                if quantize_row(ty, &data(SUPER, 40 + r as u32), &mut b).is_err() {
                    b = bytes(b.len(), 40 + r as u32);
                    b[..2].copy_from_slice(&0x2000u16.to_le_bytes());
                }
                b
            })
            .collect()
    }

    /// Every code, scale byte and factor of 8 real rows reads back from the panel block as
    /// the format's source decoders give it (the layout loses nothing); what those decoders
    /// mean is checked in `formats.rs` and by the matmul tests.
    pub(crate) fn roundtrip<F: PanelFormat>(ty: GgmlType) {
        let rows = rows(ty);
        let blocks: Vec<&[u8]> = rows.iter().map(|r| &r[..]).collect();
        let mut p = vec![0u8; F::PANEL_BLOCK_BYTES];
        pack_block::<F>(&blocks, &mut p);
        for (r, b) in blocks.iter().enumerate() {
            let mut codes = [0u8; SUPER];
            F::src_codes(b, &mut codes);
            for (k, c) in codes.iter().enumerate() {
                assert_eq!(code_at::<F>(&p, r, k), *c, "{ty:?} row {r} element {k}");
            }
            for (u, [s0, s1]) in F::src_scale_bytes(b).into_iter().enumerate() {
                assert_eq!(scale_byte::<F>(&p, r, 2 * u), s0, "{ty:?} row {r} unit {u}");
                assert_eq!(
                    scale_byte::<F>(&p, r, 2 * u + 1),
                    s1,
                    "{ty:?} row {r} unit {u}"
                );
            }
            for (at, second) in [(F::D_AT, false), (F::DM_AT, true)] {
                let want = at.map_or(0, |at| u16::from_le_bytes([b[at], b[at + 1]]));
                assert_eq!(
                    factor_bits::<F>(&p, r, second),
                    want,
                    "{ty:?} factor {second}"
                );
            }
        }
    }
}
