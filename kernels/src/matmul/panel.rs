//! Weights repacked at load for the Fast mode: [`PackedMatrix`], a matrix of the k-quants
//! (Q2_K .. Q6_K), IQ4_XS, the grids IQ2_XXS, IQ2_XS, IQ3_XXS, IQ1_S and IQ1_M, or the
//! 32-element Q8_0, Q4_0 and IQ4_NL (rows of whole 256-element super-blocks) in 8-row panels
//! whose codes lie rows-in-lanes, so that one `vpdpbusd` (AVX-512 VNNI; `maddubs` + `madd`
//! on AVX2) takes 4 codes of each of 8 rows and the 8 rows' sums end in the 8 lanes of a
//! vector: no
//! horizontal sums per row, one unpack of a panel's codes serving up to 4 tokens, and the
//! same kernel for decode and prompts.
//!
//! Decides: which types repack ([`PackedMatrix::pack`]), the panel height
//! ([`PANEL_ROWS`]; a last panel of fewer rows is padded with zero rows), and the loop
//! order of a call: token chunks of [`FAST_TOKEN_CHUNK`] (a grid format's as many as
//! [`GRID_CHUNK_ACT_BYTES`] of activations hold), panels, then tokens
//! [`PanelDot::TOKENS`] (then 2, 1) at a time. A row's result depends only on its packed
//! bytes and the token's quantized activations (`panel/dot.rs`), never on the row range,
//! the thread split or the tokens computed with it.
//!
//! Leaves to `panel/layout.rs` the byte layout and the packing of one panel block, to
//! `panel/formats.rs` and `panel/grid.rs` what each format stores (the grid formats also how
//! a unit decodes), and to `panel/dot.rs` the arithmetic of a panel against tokens. A grid
//! panel serving a token chunk longer than one pass is decoded once for the chunk
//! (`grid::Decoded`: the same integers, so the same bits).
//!
//! Memory: the packed copy is owned (64-byte aligned) and as large as the file's blocks
//! within 6 bytes per row and super-block; the owner of the mapping may release the file's
//! pages once packed (the model does, see `moe-model`'s `Model::with_mode`).

mod dot;
mod formats;
mod grid;
pub(crate) mod layout;

use std::marker::PhantomData;
use std::ops::Range;

use self::dot::PanelDot;
use self::formats::{Iq4Nlx8, Q40x8, Q80x8};
use self::grid::{Decoded, Iq1MPanel, Iq1SPanel, Iq2XsPanel, Iq2XxsPanel, Iq3XxsPanel};
pub(crate) use self::layout::PANEL_ROWS;
use self::layout::{PanelFormat, SUPER};
use super::fast::iq4::Iq4Xs;
use super::fast::kquants::{Q2K, Q3K, Q4K, Q5K, Q6K};
use super::fast::FAST_TOKEN_CHUNK;
use super::q8::QActs;
use super::simd::{dispatch, IsaKernel, Portable, SimdIsa};
use super::QMatrix;
use crate::GgmlType;

/// `$body` with `$F` the panel format of `$ty`, or `$other` when `$ty` has none: the one place
/// that maps the types that repack to their formats.
macro_rules! by_format {
    ($ty:expr, $F:ident => $body:expr, _ => $other:expr) => {
        match $ty {
            GgmlType::Q2_K => by_format!(@ $F = Q2K, $body),
            GgmlType::Q3_K => by_format!(@ $F = Q3K, $body),
            GgmlType::Q4_K => by_format!(@ $F = Q4K, $body),
            GgmlType::Q5_K => by_format!(@ $F = Q5K, $body),
            GgmlType::Q6_K => by_format!(@ $F = Q6K, $body),
            GgmlType::IQ4_XS => by_format!(@ $F = Iq4Xs, $body),
            GgmlType::Q8_0 => by_format!(@ $F = Q80x8, $body),
            GgmlType::Q4_0 => by_format!(@ $F = Q40x8, $body),
            GgmlType::IQ4_NL => by_format!(@ $F = Iq4Nlx8, $body),
            GgmlType::IQ2_XXS => by_format!(@ $F = Iq2XxsPanel, $body),
            GgmlType::IQ2_XS => by_format!(@ $F = Iq2XsPanel, $body),
            GgmlType::IQ3_XXS => by_format!(@ $F = Iq3XxsPanel, $body),
            GgmlType::IQ1_S => by_format!(@ $F = Iq1SPanel, $body),
            GgmlType::IQ1_M => by_format!(@ $F = Iq1MPanel, $body),
            _ => $other,
        }
    };
    (@ $F:ident = $format:ty, $body:expr) => {{
        #[allow(dead_code)]
        type $F = $format;
        $body
    }};
}

/// One aligned line of a packed buffer.
#[derive(Clone, Copy)]
#[repr(C, align(64))]
struct Line([u8; 64]);

/// A quantized matrix repacked into panels (see the module docs), owned.
pub struct PackedMatrix {
    ty: GgmlType,
    rows: usize,
    cols: usize,
    lines: Vec<Line>,
    len: usize,
}

impl std::fmt::Debug for PackedMatrix {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PackedMatrix")
            .field("ty", &self.ty)
            .field("rows", &self.rows)
            .field("cols", &self.cols)
            .field("bytes", &self.len)
            .finish()
    }
}

impl PackedMatrix {
    /// Whether a matrix of `ty` with rows of `cols` elements repacks: the types of the module
    /// docs, rows of whole 256-element super-blocks.
    pub fn packs(ty: GgmlType, cols: usize) -> bool {
        by_format!(ty, F => true, _ => false) && cols.is_multiple_of(SUPER)
    }

    /// Whether `ty`'s panels are a grid format, whose kernels are bound by decoding the grid
    /// rather than by reading the weights.
    pub fn is_grid(ty: GgmlType) -> bool {
        by_format!(ty, F => F::GRID, _ => false)
    }

    /// `m` repacked, or `None` when it does not repack ([`PackedMatrix::packs`]).
    pub fn pack(m: &QMatrix<'_>) -> Option<Self> {
        if !Self::packs(m.ty(), m.cols()) {
            return None;
        }
        by_format!(m.ty(), F => Some(Self::pack_as::<F>(m)), _ => None)
    }

    fn pack_as<F: PanelFormat>(m: &QMatrix<'_>) -> Self {
        let (rows, cols) = (m.rows(), m.cols());
        // `packs` checked that rows are whole super-blocks.
        let nb = cols / SUPER;
        let panels = rows.div_ceil(PANEL_ROWS);
        let len = panels * nb * F::PANEL_BLOCK_BYTES;
        let mut out = Self {
            ty: m.ty(),
            rows,
            cols,
            lines: vec![Line([0; 64]); len.div_ceil(64)],
            len,
        };
        let data = out.bytes_mut();
        let panel_bytes = nb * F::PANEL_BLOCK_BYTES;
        for (pi, panel) in data.chunks_exact_mut(panel_bytes.max(1)).enumerate() {
            let r0 = pi * PANEL_ROWS;
            let r1 = (r0 + PANEL_ROWS).min(rows);
            for (blk, pb) in panel.chunks_exact_mut(F::PANEL_BLOCK_BYTES).enumerate() {
                let mut blocks: [&[u8]; PANEL_ROWS] = [&[]; PANEL_ROWS];
                for (b, r) in blocks.iter_mut().zip(r0..r1) {
                    *b = &m.row_data(r)[blk * F::SRC_BYTES..(blk + 1) * F::SRC_BYTES];
                }
                F::pack(&blocks[..r1 - r0], pb);
            }
        }
        out
    }

    /// Element type of the source matrix.
    pub fn ty(&self) -> GgmlType {
        self.ty
    }

    /// Rows.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Columns.
    pub fn cols(&self) -> usize {
        self.cols
    }

    /// Bytes held.
    pub fn bytes(&self) -> usize {
        self.len
    }

    fn bytes_ref(&self) -> &[u8] {
        // SAFETY: `lines` holds at least `len` initialized bytes (64 per line, no padding).
        unsafe { std::slice::from_raw_parts(self.lines.as_ptr().cast::<u8>(), self.len) }
    }

    fn bytes_mut(&mut self) -> &mut [u8] {
        // SAFETY: as in `bytes_ref`, uniquely borrowed.
        unsafe { std::slice::from_raw_parts_mut(self.lines.as_mut_ptr().cast::<u8>(), self.len) }
    }
}

/// One panel-kernel call: `out[t][i] = row (rows.start + i) · x_t` for `i < rows.len()`.
pub(crate) struct PanelCall<'a, 'o, 'y> {
    /// The packed matrix.
    pub(crate) p: &'a PackedMatrix,
    /// The rows to compute (any range; whole panels are computed, the rows outside dropped).
    pub(crate) rows: Range<usize>,
    /// Activations quantized for the type's blocks.
    pub(crate) x: &'a QActs,
    /// Tokens in `x`.
    pub(crate) n_tokens: usize,
    /// Per token, the outputs of `rows`.
    pub(crate) out: &'o mut [&'y mut [f32]],
}

/// Runs `call` with `isa` where this CPU has it.
pub(crate) fn panel_rows(call: PanelCall<'_, '_, '_>, isa: SimdIsa) {
    by_format!(call.p.ty, F => dispatch(isa, Panels::<F>(call, PhantomData)),
        // `PackedMatrix::pack` made only the types `by_format!` names.
        _ => unreachable!("no panel layout for {:?}", call.p.ty))
}

/// [`body`] of `F` as an [`IsaKernel`].
struct Panels<'a, 'o, 'y, F>(PanelCall<'a, 'o, 'y>, PhantomData<F>);

impl<F: PanelFormat> IsaKernel for Panels<'_, '_, '_, F> {
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

/// The loops of a call (see the module docs).
#[inline(always)]
fn body<F: PanelFormat, S: PanelDot>(call: PanelCall<'_, '_, '_>) {
    let PanelCall {
        p,
        rows,
        x: acts,
        n_tokens,
        out,
    } = call;
    // Invariants of the callers (QMatrix quantized for this shape), not data.
    assert!(
        acts.block == F::ACT_BLOCK && acts.cols == p.cols,
        "panel kernel: activations quantized for another shape"
    );
    let nb = p.cols / SUPER;
    let panel_bytes = nb * F::PANEL_BLOCK_BYTES;
    let data = p.bytes_ref();
    // A grid panel serving more tokens than one pass is decoded once per token chunk.
    let mut decoded = Vec::new();
    let chunk = if F::GRID {
        grid_token_chunk(p.cols)
    } else {
        FAST_TOKEN_CHUNK
    };
    let mut t0 = 0;
    while t0 < n_tokens {
        let t1 = (t0 + chunk).min(n_tokens);
        for pi in rows.start / PANEL_ROWS..rows.end.div_ceil(PANEL_ROWS) {
            let panel = &data[pi * panel_bytes..(pi + 1) * panel_bytes];
            let first = pi * PANEL_ROWS;
            let (r0, r1) = (first.max(rows.start), (first + PANEL_ROWS).min(rows.end));
            let mut put = |t: usize, rq: &[f32; PANEL_ROWS]| {
                out[t][r0 - rows.start..r1 - rows.start]
                    .copy_from_slice(&rq[r0 - first..r1 - first]);
            };
            if F::GRID && t1 - t0 > S::TOKENS {
                decoded.resize(nb * Decoded::<F>::PANEL_BLOCK_BYTES, 0);
                S::decode_grid::<F>(panel, &mut decoded);
                passes::<Decoded<F>, S>(&decoded, acts, t0..t1, &mut put);
            } else {
                passes::<F, S>(panel, acts, t0..t1, &mut put);
            }
        }
        t0 = t1;
    }
}

/// Quantized activations a grid panel's decoding serves at most (bytes): its tokens'
/// activations stay within a core's L2 (1 MiB on Zen 4 and 5) beside the decoded panel.
const GRID_CHUNK_ACT_BYTES: usize = 384 << 10;

/// Tokens per decoding of a grid panel with `cols` inputs: as many as
/// [`GRID_CHUNK_ACT_BYTES`] of activations hold, at least [`FAST_TOKEN_CHUNK`] (decoding
/// costs a grid lookup per 8 codes, so it is amortized over as many tokens as stay cached;
/// `kernel_timing`, IQ1_S 2048 x 7168, 256 tokens, one thread: 35.6 -> 32.8 ms).
fn grid_token_chunk(cols: usize) -> usize {
    (GRID_CHUNK_ACT_BYTES / cols.max(1)).max(FAST_TOKEN_CHUNK)
}

/// One panel against tokens `ts`, [`PanelDot::TOKENS`] (then 2, 1) at a time, each token's 8
/// results given to `put`.
#[inline(always)]
fn passes<F: PanelFormat, S: PanelDot>(
    panel: &[u8],
    acts: &QActs,
    ts: Range<usize>,
    put: &mut impl FnMut(usize, &[f32; PANEL_ROWS]),
) {
    let mut t = ts.start;
    macro_rules! pass {
        ($T:expr) => {
            while S::TOKENS >= $T && ts.end - t >= $T {
                let mut tq = [0usize; $T];
                for (q, v) in tq.iter_mut().enumerate() {
                    *v = t + q;
                }
                let res = S::tokens::<F, { $T }>(panel, acts, tq);
                for (q, rq) in res.iter().enumerate() {
                    put(t + q, rq);
                }
                t += $T;
            }
        };
    }
    pass!(4);
    pass!(2);
    pass!(1);
}
