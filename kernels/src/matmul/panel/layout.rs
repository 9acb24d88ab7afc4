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

use super::super::fast::format::FastFormat;
use super::super::fast::kquants::{Q2K, Q3K, Q4K, Q5K, Q6K};

/// Rows per panel: the 8 i32 lanes of a 256-bit vector.
pub(crate) const PANEL_ROWS: usize = 8;
/// Elements of a super-block (every panel format's block).
pub(crate) const SUPER: usize = 256;
/// Elements per unit (8 quads; one or two scale groups).
pub(crate) const UNIT: usize = 32;
/// Units per super-block.
pub(crate) const UNITS: usize = SUPER / UNIT;
/// Scale bytes per row per super-block (two per unit).
const SCALE_BYTES_PER_ROW: usize = 2 * UNITS;

/// How a format's two scale bytes per unit give its integer scales and offsets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ScaleKind {
    /// Q2_K: per 16 elements one byte `a | m << 4` (the file's byte): `A = Σ a·S`,
    /// `M = Σ m·bs`, `w = d·a·c − dm·m`.
    Nibbles,
    /// Q3_K, Q6_K: per 16 elements a signed `a`; the offset is `off·a`: `A = Σ a·S`,
    /// `M' = Σ a·bs`, `w = d·a·(c − off)`.
    Signed {
        /// The code offset (4 or 32).
        off: i32,
    },
    /// Q4_K, Q5_K: per 32 elements `a` then `m` (unsigned 6-bit): `A = Σ a·S`,
    /// `M = Σ m·bs`.
    Pair32,
}

/// A k-quant with a panel layout (see the module docs).
pub(crate) trait PanelFormat: FastFormat {
    /// Low bits of a code in the lo plane (2 or 4).
    const LO: u32;
    /// High bits in the hi plane (0, 1 or 2).
    const HI: u32;
    /// The scale bytes.
    const SCALES: ScaleKind;
    /// Byte offset of the block's f16 `d`.
    const D_AT: usize;
    /// Byte offset of the block's f16 `dmin`, if it has one.
    const DM_AT: Option<usize>;

    /// Offset of the scales in a panel block.
    const SCALES_AT: usize = 0;
    /// Offset of the 8 f16 `d` (the 8 `dm` follow).
    const FACTORS_AT: usize = PANEL_ROWS * SCALE_BYTES_PER_ROW;
    /// Offset of unit 0's codes.
    const UNITS_AT: usize = Self::FACTORS_AT + 2 * PANEL_ROWS * 2;
    /// Bytes of one unit's codes.
    const UNIT_BYTES: usize = 32 * (Self::LO + Self::HI) as usize;
    /// Offset of a unit's high-bit vectors within the unit.
    const HI_AT: usize = 32 * Self::LO as usize;
    /// Bytes of one panel block.
    const PANEL_BLOCK_BYTES: usize = Self::UNITS_AT + UNITS * Self::UNIT_BYTES;
}

/// The two scale bytes of unit `u` from a block's decoded `a` and `m` (per 16), as `F`'s
/// [`PanelFormat::SCALES`] lays them out.
fn scale_bytes<F: PanelFormat>(a: &[i8; 16], m: &[i16; 16], u: usize) -> [u8; 2] {
    let (g0, g1) = (2 * u, 2 * u + 1);
    match F::SCALES {
        ScaleKind::Nibbles => {
            let b = |g: usize| (a[g] as u8 & 0x0F) | ((m[g] as u8 & 0x0F) << 4);
            [b(g0), b(g1)]
        }
        ScaleKind::Signed { .. } => [a[g0] as u8, a[g1] as u8],
        ScaleKind::Pair32 => [a[g0] as u8, m[g0] as u8],
    }
}

impl PanelFormat for Q2K {
    const LO: u32 = 2;
    const HI: u32 = 0;
    const SCALES: ScaleKind = ScaleKind::Nibbles;
    const D_AT: usize = 80;
    const DM_AT: Option<usize> = Some(82);
}

impl PanelFormat for Q3K {
    const LO: u32 = 2;
    const HI: u32 = 1;
    const SCALES: ScaleKind = ScaleKind::Signed { off: 4 };
    const D_AT: usize = 108;
    const DM_AT: Option<usize> = None;
}

impl PanelFormat for Q4K {
    const LO: u32 = 4;
    const HI: u32 = 0;
    const SCALES: ScaleKind = ScaleKind::Pair32;
    const D_AT: usize = 0;
    const DM_AT: Option<usize> = Some(2);
}

impl PanelFormat for Q5K {
    const LO: u32 = 4;
    const HI: u32 = 1;
    const SCALES: ScaleKind = ScaleKind::Pair32;
    const D_AT: usize = 0;
    const DM_AT: Option<usize> = Some(2);
}

impl PanelFormat for Q6K {
    const LO: u32 = 4;
    const HI: u32 = 2;
    const SCALES: ScaleKind = ScaleKind::Signed { off: 32 };
    const D_AT: usize = 208;
    const DM_AT: Option<usize> = None;
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
    let lo = (p[lo_at] >> lo_shift) & ((1u8 << F::LO) - 1);
    if F::HI == 0 {
        return lo;
    }
    let hi = (p[hi_at] >> hi_shift) & ((1u8 << F::HI) - 1);
    lo | (hi << F::LO)
}

/// Row `r`'s scale byte `s` (of 16) in the panel block `p`.
#[inline(always)]
pub(crate) fn scale_byte<F: PanelFormat>(p: &[u8], r: usize, s: usize) -> u8 {
    p[F::SCALES_AT + 16 * (s / 2) + 2 * r + s % 2]
}

/// Row `r`'s f16 `d` (`dm` when `second`) bits in the panel block `p`.
#[inline(always)]
pub(crate) fn factor_bits<F: PanelFormat>(p: &[u8], r: usize, second: bool) -> u16 {
    let at = F::FACTORS_AT + 2 * r + if second { 2 * PANEL_ROWS } else { 0 };
    u16::from_le_bytes([p[at], p[at + 1]])
}

/// Writes the panel block `p` (zeroed, [`PanelFormat::PANEL_BLOCK_BYTES`]) from up to 8
/// rows' blocks `blocks[r]` (absent rows stay zero: zero codes, scales and factors).
pub(crate) fn pack_block<F: PanelFormat>(blocks: &[&[u8]], p: &mut [u8]) {
    let mut codes = [[0u8; SUPER]; PANEL_ROWS];
    let (mut a, mut m) = ([0i8; 16], [0i16; 16]);
    for (r, b) in blocks.iter().enumerate().take(PANEL_ROWS) {
        F::codes(b, &mut codes[r]);
        F::scales(b, &mut a, &mut m);
        for u in 0..UNITS {
            let [b0, b1] = scale_bytes::<F>(&a, &m, u);
            p[F::SCALES_AT + 16 * u + 2 * r] = b0;
            p[F::SCALES_AT + 16 * u + 2 * r + 1] = b1;
        }
        let d_at = F::FACTORS_AT + 2 * r;
        p[d_at..d_at + 2].copy_from_slice(&b[F::D_AT..F::D_AT + 2]);
        if let Some(dm) = F::DM_AT {
            let at = d_at + 2 * PANEL_ROWS;
            p[at..at + 2].copy_from_slice(&b[dm..dm + 2]);
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
            let (per, mask) = (8 / bits as usize, (1u8 << bits) - 1);
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
mod tests {
    use super::*;
    use crate::matmul::test_data::data;
    use crate::{quantize_row, GgmlType};

    /// Every code, scale and factor of 8 real rows reads back from the panel block as the
    /// Fast decoders give it from the file's blocks (the layout loses nothing), and the
    /// scale bytes satisfy the relations the kernels assume (Q4_K/Q5_K: one scale and min
    /// per 32; Q3_K/Q6_K: offset `off·a`).
    fn roundtrip<F: PanelFormat>(ty: GgmlType) {
        let rows: Vec<Vec<u8>> = (0..PANEL_ROWS)
            .map(|r| {
                let mut b = vec![0u8; ty.row_bytes(SUPER).unwrap()];
                quantize_row(ty, &data(SUPER, 40 + r as u32), &mut b).unwrap();
                b
            })
            .collect();
        let blocks: Vec<&[u8]> = rows.iter().map(|r| &r[..]).collect();
        let mut p = vec![0u8; F::PANEL_BLOCK_BYTES];
        pack_block::<F>(&blocks, &mut p);
        for (r, b) in blocks.iter().enumerate() {
            let mut codes = [0u8; SUPER];
            let (mut a, mut m) = ([0i8; 16], [0i16; 16]);
            F::codes(b, &mut codes);
            F::scales(b, &mut a, &mut m);
            for (k, c) in codes.iter().enumerate() {
                assert_eq!(code_at::<F>(&p, r, k), *c, "{ty:?} row {r} element {k}");
            }
            for g in 0..16 {
                let (u, half) = (g / 2, g % 2);
                let (s0, s1) = (
                    scale_byte::<F>(&p, r, 2 * u),
                    scale_byte::<F>(&p, r, 2 * u + 1),
                );
                match F::SCALES {
                    ScaleKind::Nibbles => {
                        let s = if half == 0 { s0 } else { s1 };
                        assert_eq!((s & 15) as i8, a[g], "{ty:?} a {g}");
                        assert_eq!((s >> 4) as i16, m[g], "{ty:?} m {g}");
                    }
                    ScaleKind::Signed { off } => {
                        let s = if half == 0 { s0 } else { s1 } as i8;
                        assert_eq!(s, a[g], "{ty:?} a {g}");
                        assert_eq!(off as i16 * s as i16, m[g], "{ty:?} m {g}");
                    }
                    ScaleKind::Pair32 => {
                        assert_eq!(s0 as i8, a[g], "{ty:?} a {g}");
                        assert_eq!(s1 as i16, m[g], "{ty:?} m {g}");
                    }
                }
            }
            let d = u16::from_le_bytes([b[F::D_AT], b[F::D_AT + 1]]);
            assert_eq!(factor_bits::<F>(&p, r, false), d, "{ty:?} d");
            if let Some(at) = F::DM_AT {
                let dm = u16::from_le_bytes([b[at], b[at + 1]]);
                assert_eq!(factor_bits::<F>(&p, r, true), dm, "{ty:?} dm");
            }
        }
    }

    #[test]
    fn panel_layout_roundtrips() {
        roundtrip::<Q2K>(GgmlType::Q2_K);
        roundtrip::<Q3K>(GgmlType::Q3_K);
        roundtrip::<Q4K>(GgmlType::Q4_K);
        roundtrip::<Q5K>(GgmlType::Q5_K);
        roundtrip::<Q6K>(GgmlType::Q6_K);
    }

    /// The panel blocks are whole 32-byte vectors (every load in the kernels is aligned
    /// when the buffer is), and the sizes the module docs state.
    #[test]
    fn panel_block_sizes() {
        let per_row = |b: usize| b / PANEL_ROWS;
        assert_eq!(per_row(Q2K::PANEL_BLOCK_BYTES), 84);
        assert_eq!(per_row(Q3K::PANEL_BLOCK_BYTES), 116);
        assert_eq!(per_row(Q4K::PANEL_BLOCK_BYTES), 148);
        assert_eq!(per_row(Q5K::PANEL_BLOCK_BYTES), 180);
        assert_eq!(per_row(Q6K::PANEL_BLOCK_BYTES), 212);
        for b in [
            Q2K::PANEL_BLOCK_BYTES,
            Q3K::PANEL_BLOCK_BYTES,
            Q4K::PANEL_BLOCK_BYTES,
            Q5K::PANEL_BLOCK_BYTES,
            Q6K::PANEL_BLOCK_BYTES,
        ] {
            assert_eq!(b % 32, 0, "{b}");
        }
    }
}
