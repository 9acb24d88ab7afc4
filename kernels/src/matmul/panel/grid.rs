//! The panel layout of IQ2_XXS, whose codes are grid entries, not bit fields: the file's
//! bytes regrouped rows-in-lanes, nothing decoded at load, so the panel is as small as the
//! file (68 bytes per row and 256 elements vs 66).
//!
//! ```text
//! d       16 bytes   8 f16 `d` (the weight is (d/8)·(2ls + 1)·(±grid))
//! pad     16 bytes
//! unit u  64 bytes   32 bytes: per row its 4 grid indices (the file's first word of unit u),
//!                    32 bytes: per row its second word (4 7-bit sign indices, `ls` in bits
//!                    28..32)
//! ```
//!
//! Decoding a unit for 8 rows (`avx::unit_codes`) takes two 64-bit gathers per grid entry,
//! a shuffle into the quad vectors, and the signs as bit masks: the 7-bit sign index plus its
//! parity bit is the sign byte (`KSIGNS_IQ2XS[i] = i | parity(i) << 7`), parity by a nibble
//! table shuffle. The codes are signed (`±grid`, at most 43 in magnitude), the scale
//! `a = 2ls + 1` one per unit ([`PanelFormat::UNIT_SCALE`]).

use std::marker::PhantomData;

use super::layout::{CodeKind, PanelFormat, ScaleKind, PANEL_ROWS, SUPER, UNIT, UNITS};
use crate::dequant::IQ2XXS_GRID;

/// IQ2_XXS panels.
pub(crate) struct Iq2XxsPanel;

/// Bytes of one file block.
const BLOCK_BYTES: usize = 66;

impl PanelFormat for Iq2XxsPanel {
    // LO + HI = 2 bits per element: 64 bytes a unit.
    const LO: u32 = 2;
    const HI: u32 = 0;
    const SCALES: ScaleKind = ScaleKind::Signed { off: 0 };
    const UNIT_SCALE: bool = true;
    const CODES: CodeKind = CodeKind::Signed;
    const GRID: bool = true;
    const D_FACTOR: f32 = 0.125;
    const SRC_BYTES: usize = BLOCK_BYTES;
    const ACT_BLOCK: usize = SUPER;
    const D_AT: Option<usize> = Some(0);
    const DM_AT: Option<usize> = None;
    const FACTORS_AT: usize = 0;
    const UNITS_AT: usize = 32;

    fn src_codes(_: &[u8], _: &mut [u8; SUPER]) {
        unreachable!("IQ2_XXS panels pack the file's words (Iq2XxsPanel::pack)")
    }

    fn src_scale_bytes(_: &[u8]) -> [[u8; 2]; UNITS] {
        unreachable!("IQ2_XXS panels keep their scales in the unit words")
    }

    fn pack(blocks: &[&[u8]], p: &mut [u8]) {
        for (r, b) in blocks.iter().enumerate().take(PANEL_ROWS) {
            p[2 * r..2 * r + 2].copy_from_slice(&b[..2]);
            for u in 0..UNITS {
                let (src, dst) = (2 + 8 * u, Self::UNITS_AT + Self::UNIT_BYTES * u + 4 * r);
                p[dst..dst + 4].copy_from_slice(&b[src..src + 4]);
                p[dst + 32..dst + 36].copy_from_slice(&b[src + 4..src + 8]);
            }
        }
    }
}

/// A grid panel decoded (for a chunk of tokens, `panel.rs`): the same integers as the grid
/// format's, stored as signed bytes with per-unit scale bytes (`a` twice) and `d`, so the
/// plain signed-code kernels read it.
pub(crate) struct Decoded<F>(PhantomData<F>);

impl<F: PanelFormat> PanelFormat for Decoded<F> {
    const LO: u32 = 8;
    const HI: u32 = 0;
    const SCALES: ScaleKind = ScaleKind::Signed { off: 0 };
    const UNIT_SCALE: bool = true;
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

/// The IQ2_XXS `panel` (whole blocks) decoded into `out` (as many [`Decoded`] blocks), the
/// codes by `unit_codes` (portable when `None`).
pub(crate) fn decode(
    panel: &[u8],
    out: &mut [u8],
    unit_codes: Option<unsafe fn(*const u8, *mut u8)>,
) {
    type G = Iq2XxsPanel;
    type D = Decoded<Iq2XxsPanel>;
    for (blk, dst) in panel
        .chunks_exact(G::PANEL_BLOCK_BYTES)
        .zip(out.chunks_exact_mut(D::PANEL_BLOCK_BYTES))
    {
        dst[D::FACTORS_AT..D::FACTORS_AT + 16].copy_from_slice(&blk[..16]);
        for u in 0..UNITS {
            for r in 0..PANEL_ROWS {
                let at = G::UNITS_AT + G::UNIT_BYTES * u + 4 * r + 32;
                let a = 2 * (blk[at + 3] >> 4) + 1;
                dst[D::SCALES_AT + 16 * u + 2 * r] = a;
                dst[D::SCALES_AT + 16 * u + 2 * r + 1] = a;
            }
            let unit = &blk[G::UNITS_AT + G::UNIT_BYTES * u..][..G::UNIT_BYTES];
            let codes = &mut dst[D::UNITS_AT + D::UNIT_BYTES * u..][..D::UNIT_BYTES];
            match unit_codes {
                // SAFETY: the caller's implementation runs on this CPU; 64 bytes read, 256
                // written (the slices above).
                Some(f) => unsafe { f(unit.as_ptr(), codes.as_mut_ptr()) },
                None => {
                    for r in 0..PANEL_ROWS {
                        let (c, _) = portable_unit(blk, r, u);
                        for (k, v) in c.iter().enumerate() {
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

/// Row `r`'s unit `u` of the panel block `p`: its 32 signed codes and its scale `2ls + 1`.
pub(crate) fn portable_unit(p: &[u8], r: usize, u: usize) -> ([i8; UNIT], i32) {
    let at = Iq2XxsPanel::UNITS_AT + Iq2XxsPanel::UNIT_BYTES * u + 4 * r;
    let aux = u32::from_le_bytes([p[at + 32], p[at + 33], p[at + 34], p[at + 35]]);
    let mut c = [0i8; UNIT];
    for l in 0..4 {
        let grid = IQ2XXS_GRID[p[at + l] as usize].to_le_bytes();
        let signs = sign_byte(aux >> (7 * l));
        for j in 0..8 {
            let g = grid[j] as i8;
            c[8 * l + j] = if (signs >> j) & 1 == 1 { -g } else { g };
        }
    }
    (c, 2 * (aux >> 28) as i32 + 1)
}

/// The AVX decoding of a unit for 8 rows.
#[cfg(target_arch = "x86_64")]
pub(crate) mod avx {
    use std::arch::x86_64::*;

    use super::IQ2XXS_GRID;

    /// The 8 quad vectors of the unit at `p` (its 64 bytes), signed codes.
    ///
    /// # Safety
    /// AVX2; `p` valid for 64 reads.
    #[inline(always)]
    pub(crate) unsafe fn unit_codes(p: *const u8) -> [__m256i; 8] {
        // SAFETY: AVX2 per the caller; loads inside the unit; gathers index the 256-entry
        // grid with bytes.
        unsafe {
            let idx = _mm256_loadu_si256(p.cast());
            let aux = _mm256_loadu_si256(p.add(32).cast());
            // Per lane the 4 sign bytes: the 7-bit indices, then their parity in bit 7.
            let m7 = _mm256_set1_epi32(127);
            let s = _mm256_or_si256(
                _mm256_or_si256(
                    _mm256_and_si256(aux, m7),
                    _mm256_slli_epi32::<8>(_mm256_and_si256(_mm256_srli_epi32::<7>(aux), m7)),
                ),
                _mm256_or_si256(
                    _mm256_slli_epi32::<16>(_mm256_and_si256(_mm256_srli_epi32::<14>(aux), m7)),
                    _mm256_slli_epi32::<24>(_mm256_and_si256(_mm256_srli_epi32::<21>(aux), m7)),
                ),
            );
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
            let signs = _mm256_or_si256(s, _mm256_slli_epi16::<7>(par));
            let bits_lo = _mm256_set1_epi32(0x0804_0201);
            let bits_hi = _mm256_set1_epi32(0x8040_2010_u32 as i32);
            let grid = IQ2XXS_GRID.as_ptr().cast::<i64>();
            let mut c = [_mm256_setzero_si256(); 8];
            for l in 0..4 {
                let gi = _mm256_and_si256(
                    _mm256_srlv_epi32(idx, _mm256_set1_epi32(8 * l as i32)),
                    _mm256_set1_epi32(255),
                );
                let a = _mm256_i32gather_epi64::<8>(grid, _mm256_castsi256_si128(gi));
                let b = _mm256_i32gather_epi64::<8>(grid, _mm256_extracti128_si256::<1>(gi));
                let (af, bf) = (_mm256_castsi256_ps(a), _mm256_castsi256_ps(b));
                // [r0 r1 r4 r5 | r2 r3 r6 r7] halves, then the 64-bit pairs in row order.
                let g_lo = _mm256_castps_si256(_mm256_shuffle_ps::<0b10_00_10_00>(af, bf));
                let g_hi = _mm256_castps_si256(_mm256_shuffle_ps::<0b11_01_11_01>(af, bf));
                let g_lo = _mm256_permute4x64_epi64::<0b11_01_10_00>(g_lo);
                let g_hi = _mm256_permute4x64_epi64::<0b11_01_10_00>(g_hi);
                // Sign byte l of each lane in all 4 bytes of the lane.
                let sel = _mm256_set1_epi32(0x0101_0101 * l as i32);
                let spread = _mm256_shuffle_epi8(
                    signs,
                    _mm256_add_epi8(
                        sel,
                        _mm256_setr_epi8(
                            0, 0, 0, 0, 4, 4, 4, 4, 8, 8, 8, 8, 12, 12, 12, 12, 0, 0, 0, 0, 4, 4,
                            4, 4, 8, 8, 8, 8, 12, 12, 12, 12,
                        ),
                    ),
                );
                let neg_lo = _mm256_cmpeq_epi8(_mm256_and_si256(spread, bits_lo), bits_lo);
                let neg_hi = _mm256_cmpeq_epi8(_mm256_and_si256(spread, bits_hi), bits_hi);
                // (g ^ m) − m: g where m = 0, −g where m = −1.
                c[2 * l] = _mm256_sub_epi8(_mm256_xor_si256(g_lo, neg_lo), neg_lo);
                c[2 * l + 1] = _mm256_sub_epi8(_mm256_xor_si256(g_hi, neg_hi), neg_hi);
            }
            c
        }
    }

    /// [`unit_codes`] stored: 64 bytes read at `p`, 256 written at `out`.
    ///
    /// # Safety
    /// As [`unit_codes`]; `out` valid for 256 writes.
    #[target_feature(enable = "avx2")]
    pub(crate) unsafe fn store_unit_codes(p: *const u8, out: *mut u8) {
        // SAFETY: per the caller.
        unsafe {
            for (q, v) in unit_codes(p).into_iter().enumerate() {
                _mm256_storeu_si256(out.add(32 * q).cast(), v);
            }
        }
    }

    /// The unit's scale `2ls + 1` per row (i32 lanes).
    ///
    /// # Safety
    /// As [`unit_codes`].
    #[inline(always)]
    pub(crate) unsafe fn unit_scale(p: *const u8) -> __m256i {
        // SAFETY: as `unit_codes`.
        unsafe {
            let aux = _mm256_loadu_si256(p.add(32).cast());
            let ls = _mm256_srli_epi32::<28>(aux);
            _mm256_or_si256(_mm256_slli_epi32::<1>(ls), _mm256_set1_epi32(1))
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
