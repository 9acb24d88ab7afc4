//! The formats with a panel layout ([`PanelFormat`] impls): what each stores per code and
//! per unit, read from the file's blocks.
//!
//! - The k-quants Q2_K .. Q6_K: the unsigned codes and per-16 scales of the Fast decoders
//!   (`fast/kquants.rs`), one super-block per file block.
//! - IQ4_XS: 4-bit indices into the IQ4 grid (looked up in the kernel), `a = ls − 32` per
//!   32 elements (both scale bytes of a unit), the super-block's `d`.
//! - The 32-element types Q8_0, Q4_0 and IQ4_NL, eight file blocks to a super-block, each
//!   unit's f16 `d` as its scale bytes ([`ScaleKind::UnitF16`]): Q8_0's signed bytes, Q4_0's
//!   nibbles looked up in `nibble − 8`, IQ4_NL's in the grid.
//!
//! Bytes per row and 256 elements, panel vs file: Q2_K 84 = 84, Q3_K 116 vs 110, Q4_K 148 vs
//! 144, Q5_K 180 vs 176, Q6_K 212 vs 210, IQ4_XS 140 vs 136 (one scale byte per unit), Q8_0
//! 276 vs 272, Q4_0 and IQ4_NL 148 vs 144.

use super::layout::{CodeKind, PanelFormat, ScaleKind, SUPER, UNIT, UNITS};
use crate::dequant::IQ4_NL_GRID;
use crate::matmul::fast::format::FastFormat;
use crate::matmul::fast::iq4::Iq4Xs;
use crate::matmul::fast::kquants::{Q2K, Q3K, Q4K, Q5K, Q6K};

/// Q4_0's nibbles as signed values: `nibble − 8`.
const Q4_0_VALUES: [i8; 16] = [-8, -7, -6, -5, -4, -3, -2, -1, 0, 1, 2, 3, 4, 5, 6, 7];

/// The two scale bytes per unit of a k-quant block, from its Fast decoder's `a` and `m`
/// per 16 elements, as `kind` lays them out.
fn kquant_scale_bytes<F: FastFormat>(kind: ScaleKind, b: &[u8]) -> [[u8; 2]; UNITS] {
    let (mut a, mut m) = ([0i8; 16], [0i16; 16]);
    F::scales(b, &mut a, &mut m);
    std::array::from_fn(|u| {
        let (g0, g1) = (2 * u, 2 * u + 1);
        match kind {
            ScaleKind::Nibbles => {
                let b = |g: usize| (a[g] as u8 & 0x0F) | ((m[g] as u8 & 0x0F) << 4);
                [b(g0), b(g1)]
            }
            ScaleKind::Signed { .. } => [a[g0] as u8, a[g1] as u8],
            ScaleKind::Pair32 => [a[g0] as u8, m[g0] as u8],
            ScaleKind::UnitF16 => unreachable!("no k-quant has f16 unit scales"),
        }
    })
}

/// A k-quant's impl: its Fast decoder's codes and scales.
macro_rules! kquant_panel {
    ($t:ty, lo: $lo:expr, hi: $hi:expr, $scales:expr, d: $d:expr, dm: $dm:expr) => {
        impl PanelFormat for $t {
            const LO: u32 = $lo;
            const HI: u32 = $hi;
            const SCALES: ScaleKind = $scales;
            const CODES: CodeKind = CodeKind::Unsigned;
            const SRC_BYTES: usize = <$t as FastFormat>::BLOCK_BYTES;
            const ACT_BLOCK: usize = SUPER;
            const D_AT: Option<usize> = Some($d);
            const DM_AT: Option<usize> = $dm;

            fn src_codes(b: &[u8], c: &mut [u8; SUPER]) {
                <$t as FastFormat>::codes(b, c);
            }

            fn src_scale_bytes(b: &[u8]) -> [[u8; 2]; UNITS] {
                kquant_scale_bytes::<$t>(Self::SCALES, b)
            }
        }
    };
}

kquant_panel!(Q2K, lo: 2, hi: 0, ScaleKind::Nibbles, d: 80, dm: Some(82));
kquant_panel!(Q3K, lo: 2, hi: 1, ScaleKind::Signed { off: 4 }, d: 108, dm: None);
kquant_panel!(Q4K, lo: 4, hi: 0, ScaleKind::Pair32, d: 0, dm: Some(2));
kquant_panel!(Q5K, lo: 4, hi: 1, ScaleKind::Pair32, d: 0, dm: Some(2));
kquant_panel!(Q6K, lo: 4, hi: 2, ScaleKind::Signed { off: 32 }, d: 208, dm: None);

/// The 32 nibble codes of 16 packed pairs: element `j` the low nibble of `qs[j]`, `j + 16`
/// the high one (Q4_0, IQ4_NL, each 32 of IQ4_XS).
fn nibble_codes(qs: &[u8], c: &mut [u8]) {
    for j in 0..16 {
        c[j] = qs[j] & 0x0F;
        c[j + 16] = qs[j] >> 4;
    }
}

impl PanelFormat for Iq4Xs {
    const LO: u32 = 4;
    const HI: u32 = 0;
    const SCALES: ScaleKind = ScaleKind::Signed { off: 0 };
    const UNIT_SCALE: bool = true;
    const SCALE_BYTES: usize = 1;
    const CODES: CodeKind = CodeKind::Lookup(&IQ4_NL_GRID);
    const SRC_BYTES: usize = 136;
    const ACT_BLOCK: usize = SUPER;
    const D_AT: Option<usize> = Some(0);
    const DM_AT: Option<usize> = None;

    fn src_codes(b: &[u8], c: &mut [u8; SUPER]) {
        for u in 0..UNITS {
            nibble_codes(
                &b[8 + 16 * u..24 + 16 * u],
                &mut c[UNIT * u..UNIT * (u + 1)],
            );
        }
    }

    fn src_scale_bytes(b: &[u8]) -> [[u8; 2]; UNITS] {
        kquant_scale_bytes::<Iq4Xs>(Self::SCALES, b)
    }
}

/// Eight 32-element blocks of `BYTES` bytes (f16 `d` first) as one super-block.
pub(crate) struct Blocks32<const BYTES: usize, const Q8: bool, const TABLE: u8>;

/// Q8_0 panels: signed bytes.
pub(crate) type Q80x8 = Blocks32<34, true, 0>;
/// Q4_0 panels: nibbles looked up as `nibble − 8`.
pub(crate) type Q40x8 = Blocks32<18, false, 0>;
/// IQ4_NL panels: nibbles looked up in the grid.
pub(crate) type Iq4Nlx8 = Blocks32<18, false, 1>;

impl<const BYTES: usize, const Q8: bool, const TABLE: u8> PanelFormat
    for Blocks32<BYTES, Q8, TABLE>
{
    const LO: u32 = if Q8 { 8 } else { 4 };
    const HI: u32 = 0;
    const SCALES: ScaleKind = ScaleKind::UnitF16;
    const CODES: CodeKind = match (Q8, TABLE) {
        (true, _) => CodeKind::Signed,
        (false, 0) => CodeKind::Lookup(&Q4_0_VALUES),
        (false, _) => CodeKind::Lookup(&IQ4_NL_GRID),
    };
    const SRC_BYTES: usize = UNITS * BYTES;
    const ACT_BLOCK: usize = UNIT;
    const D_AT: Option<usize> = None;
    const DM_AT: Option<usize> = None;

    fn src_codes(b: &[u8], c: &mut [u8; SUPER]) {
        for (u, (blk, cu)) in b
            .chunks_exact(BYTES)
            .zip(c.chunks_exact_mut(UNIT))
            .enumerate()
        {
            debug_assert!(u < UNITS);
            if Q8 {
                cu.copy_from_slice(&blk[2..34]);
            } else {
                nibble_codes(&blk[2..18], cu);
            }
        }
    }

    fn src_scale_bytes(b: &[u8]) -> [[u8; 2]; UNITS] {
        std::array::from_fn(|u| [b[BYTES * u], b[BYTES * u + 1]])
    }
}

#[cfg(test)]
mod tests {
    use super::super::grid::{Iq1MPanel, Iq1SPanel, Iq2XsPanel, Iq2XxsPanel, Iq3XxsPanel};
    use super::super::layout::tests::{roundtrip, rows};
    use super::super::layout::PANEL_ROWS;
    use super::*;
    use crate::{dequantize_rows, GgmlType};

    #[test]
    fn panel_layout_roundtrips() {
        roundtrip::<Q2K>(GgmlType::Q2_K);
        roundtrip::<Q3K>(GgmlType::Q3_K);
        roundtrip::<Q4K>(GgmlType::Q4_K);
        roundtrip::<Q5K>(GgmlType::Q5_K);
        roundtrip::<Q6K>(GgmlType::Q6_K);
        roundtrip::<Iq4Xs>(GgmlType::IQ4_XS);
        roundtrip::<Q80x8>(GgmlType::Q8_0);
        roundtrip::<Q40x8>(GgmlType::Q4_0);
        roundtrip::<Iq4Nlx8>(GgmlType::IQ4_NL);
    }

    /// What the kernels assume of the stored codes and scale bytes, against the exact
    /// dequantization of real rows: `w = d·a·value(c) − dm·m` per element with the format's
    /// [`ScaleKind`] and [`CodeKind`] (Signed: `m = off·a`, so `w = d·a·(c − off)`).
    fn decodes_like_dequant<F: PanelFormat>(ty: GgmlType) {
        for b in rows(ty) {
            let mut want = vec![0f32; SUPER];
            dequantize_rows(ty, &b, SUPER, &mut want).unwrap();
            let mut c = [0u8; SUPER];
            F::src_codes(&b, &mut c);
            let sb = F::src_scale_bytes(&b);
            let f16 = |at: Option<usize>| {
                at.map_or(0.0, |at| {
                    crate::matmul::fast::format::f16_bits_to_f32(u16::from_le_bytes([
                        b[at],
                        b[at + 1],
                    ]))
                })
            };
            let (d, dm) = (f16(F::D_AT), f16(F::DM_AT));
            let scale = want.iter().fold(0f32, |a, w| a.max(w.abs()));
            for (k, (&ck, &w)) in c.iter().zip(&want).enumerate() {
                let v = match F::CODES {
                    CodeKind::Unsigned => ck as f32,
                    CodeKind::Signed => ck as i8 as f32,
                    CodeKind::Lookup(t) => t[ck as usize] as f32,
                };
                let [s0, s1] = sb[k / UNIT];
                if F::UNIT_SCALE && F::SCALES != ScaleKind::Pair32 {
                    assert_eq!(s0, s1, "{ty:?} unit {} has two scales", k / UNIT);
                }
                let half = if (k % UNIT) < 16 { s0 } else { s1 };
                let got = match F::SCALES {
                    ScaleKind::Nibbles => d * (half & 15) as f32 * v - dm * (half >> 4) as f32,
                    ScaleKind::Signed { off } => d * (half as i8) as f32 * (v - off as f32),
                    ScaleKind::Pair32 => d * s0 as f32 * v - dm * s1 as f32,
                    ScaleKind::UnitF16 => {
                        crate::matmul::fast::format::f16_bits_to_f32(u16::from_le_bytes([s0, s1]))
                            * v
                    }
                };
                let tol = 1e-5 * scale;
                assert!((got - w).abs() <= tol, "{ty:?} element {k}: {got} vs {w}");
            }
        }
    }

    #[test]
    fn panel_formats_decode_like_dequantization() {
        decodes_like_dequant::<Q2K>(GgmlType::Q2_K);
        decodes_like_dequant::<Q3K>(GgmlType::Q3_K);
        decodes_like_dequant::<Q4K>(GgmlType::Q4_K);
        decodes_like_dequant::<Q5K>(GgmlType::Q5_K);
        decodes_like_dequant::<Q6K>(GgmlType::Q6_K);
        decodes_like_dequant::<Iq4Xs>(GgmlType::IQ4_XS);
        decodes_like_dequant::<Q80x8>(GgmlType::Q8_0);
        decodes_like_dequant::<Q40x8>(GgmlType::Q4_0);
        decodes_like_dequant::<Iq4Nlx8>(GgmlType::IQ4_NL);
    }

    /// The panel blocks are whole 32-byte vectors, and the sizes the module docs state.
    #[test]
    fn panel_block_sizes() {
        let sizes = [
            (Q2K::PANEL_BLOCK_BYTES, 84),
            (Q3K::PANEL_BLOCK_BYTES, 116),
            (Q4K::PANEL_BLOCK_BYTES, 148),
            (Q5K::PANEL_BLOCK_BYTES, 180),
            (Q6K::PANEL_BLOCK_BYTES, 212),
            (Iq4Xs::PANEL_BLOCK_BYTES, 140),
            (Q80x8::PANEL_BLOCK_BYTES, 276),
            (Q40x8::PANEL_BLOCK_BYTES, 148),
            (Iq4Nlx8::PANEL_BLOCK_BYTES, 148),
            (Iq2XxsPanel::PANEL_BLOCK_BYTES, 68),
            (Iq1SPanel::PANEL_BLOCK_BYTES, 52),
            (Iq1MPanel::PANEL_BLOCK_BYTES, 60),
            (Iq3XxsPanel::PANEL_BLOCK_BYTES, 100),
            (Iq2XsPanel::PANEL_BLOCK_BYTES, 76),
        ];
        for (bytes, per_row) in sizes {
            assert_eq!(bytes / PANEL_ROWS, per_row);
            assert_eq!(bytes % 32, 0, "{bytes}");
        }
    }
}
