//! Which row kernel each weight type runs: the per-type seam of `QMatrix::matmul`.
//!
//! Exact mode: Q4_K, Q6_K and Q8_0 have fused kernels (`exact_fused.rs`, dots from the
//! integer codes with per-group scales); every other type (the IQ1/IQ2/IQ3 grids and TQ
//! included) dequantizes, then dots (`exact.rs`). Fast mode: every block format has an
//! integer kernel (`fast.rs`); F32, F16 and BF16 have none (Fast computes them as Exact
//! does). A k-quant matrix carrying its `PackedMatrix` runs the panel kernel instead
//! (`panel.rs`, chosen by `QMatrix`, not here). Another kernel plugs in by being returned
//! here for its type.

use super::q8::QActs;
use super::rows::RowCall;
use super::simd::SimdIsa;
use super::{exact, exact_fused, fast};
use crate::GgmlType;

/// An Exact-mode row kernel (see [`RowCall`]), run with `isa` where this CPU has it.
pub(crate) type ExactRowsFn = fn(RowCall<'_, '_, '_, [f32]>, SimdIsa);

/// A Fast-mode row kernel over quantized activations, run with `isa` where this CPU has it.
pub(crate) type FastRowsFn = fn(RowCall<'_, '_, '_, QActs>, SimdIsa);

/// The Exact row kernel for weights of type `ty`.
pub(crate) fn exact_rows_fn(ty: GgmlType) -> ExactRowsFn {
    match ty {
        GgmlType::Q4_K => exact_fused::dot_rows::<exact_fused::Q4K>,
        GgmlType::Q6_K => exact_fused::dot_rows::<exact_fused::Q6K>,
        GgmlType::Q8_0 => exact_fused::dot_rows::<exact_fused::Q80>,
        GgmlType::F32
        | GgmlType::F16
        | GgmlType::BF16
        | GgmlType::Q4_0
        | GgmlType::Q4_1
        | GgmlType::Q5_0
        | GgmlType::Q5_1
        | GgmlType::Q2_K
        | GgmlType::Q3_K
        | GgmlType::Q5_K
        | GgmlType::IQ4_NL
        | GgmlType::IQ4_XS
        | GgmlType::IQ2_XXS
        | GgmlType::IQ2_XS
        | GgmlType::IQ2_S
        | GgmlType::IQ3_XXS
        | GgmlType::IQ3_S
        | GgmlType::IQ1_S
        | GgmlType::IQ1_M
        | GgmlType::TQ1_0
        | GgmlType::TQ2_0 => exact::dot_rows_dequantized,
    }
}

/// The Fast row kernel for weights of type `ty`, or `None` where only the Exact one exists
/// (F32, F16, BF16).
pub(crate) fn fast_rows_fn(ty: GgmlType) -> Option<FastRowsFn> {
    use fast::{iq4, iq_grids, kquants, legacy, ternary};
    Some(match ty {
        GgmlType::Q2_K => fast::dot_rows::<kquants::Q2K>,
        GgmlType::Q3_K => fast::dot_rows::<kquants::Q3K>,
        GgmlType::Q4_K => fast::dot_rows::<kquants::Q4K>,
        GgmlType::Q5_K => fast::dot_rows::<kquants::Q5K>,
        GgmlType::Q6_K => fast::dot_rows::<kquants::Q6K>,
        GgmlType::Q8_0 => fast::dot_rows::<legacy::Q80>,
        GgmlType::Q4_0 => fast::dot_rows::<legacy::Q40>,
        GgmlType::Q4_1 => fast::dot_rows::<legacy::Q41>,
        GgmlType::Q5_0 => fast::dot_rows::<legacy::Q50>,
        GgmlType::Q5_1 => fast::dot_rows::<legacy::Q51>,
        GgmlType::IQ4_NL => fast::dot_rows::<iq4::Iq4Nl>,
        GgmlType::IQ4_XS => fast::dot_rows::<iq4::Iq4Xs>,
        GgmlType::IQ2_XXS => fast::dot_rows::<iq_grids::Iq2Xxs>,
        GgmlType::IQ2_XS => fast::dot_rows::<iq_grids::Iq2Xs>,
        GgmlType::IQ2_S => fast::dot_rows::<iq_grids::Iq2S>,
        GgmlType::IQ3_XXS => fast::dot_rows::<iq_grids::Iq3Xxs>,
        GgmlType::IQ3_S => fast::dot_rows::<iq_grids::Iq3S>,
        GgmlType::IQ1_S => fast::dot_rows::<ternary::Iq1S>,
        GgmlType::IQ1_M => fast::dot_rows::<ternary::Iq1M>,
        GgmlType::TQ1_0 => fast::dot_rows::<ternary::Tq10>,
        GgmlType::TQ2_0 => fast::dot_rows::<ternary::Tq20>,
        GgmlType::F32 | GgmlType::F16 | GgmlType::BF16 => return None,
    })
}
