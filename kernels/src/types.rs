//! ggml tensor types: ids as ggml numbers them, block geometry, names.

use crate::KernelError;

/// A ggml tensor element type this crate can decode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[allow(non_camel_case_types)]
pub enum GgmlType {
    /// 32-bit float.
    F32,
    /// IEEE half.
    F16,
    /// bfloat16.
    BF16,
    /// 32 x 4-bit, one f16 scale.
    Q4_0,
    /// 32 x 4-bit, f16 scale and min.
    Q4_1,
    /// 32 x 5-bit, one f16 scale.
    Q5_0,
    /// 32 x 5-bit, f16 scale and min.
    Q5_1,
    /// 32 x int8, one f16 scale.
    Q8_0,
    /// 256-element super-block, 2-bit.
    Q2_K,
    /// 256-element super-block, 3-bit.
    Q3_K,
    /// 256-element super-block, 4-bit.
    Q4_K,
    /// 256-element super-block, 5-bit.
    Q5_K,
    /// 256-element super-block, 6-bit.
    Q6_K,
    /// 32 x 4-bit non-linear.
    IQ4_NL,
    /// 256-element super-block, 4-bit non-linear.
    IQ4_XS,
    /// 256-element super-block, 2.06 bits: 8-element codes on a 256-entry grid, 7-bit signs.
    IQ2_XXS,
    /// 256-element super-block, 2.31 bits: 512-entry grid, 4-bit scales per 16.
    IQ2_XS,
    /// 256-element super-block, 2.56 bits: 1024-entry grid, explicit sign bits.
    IQ2_S,
    /// 256-element super-block, 3.06 bits: 4-element codes on a 256-entry grid.
    IQ3_XXS,
    /// 256-element super-block, 3.44 bits: 512-entry grid, explicit sign bits.
    IQ3_S,
    /// 256-element super-block, 1.56 bits: ternary 8-element codes on a 2048-entry grid.
    IQ1_S,
    /// 256-element super-block, 1.75 bits: IQ1_S's grid, scales per 16, f16 `d` split up.
    IQ1_M,
    /// 256-element super-block, 1.69 bits: ternary, five values per byte (base 3).
    TQ1_0,
    /// 256-element super-block, 2.06 bits: ternary, 2 bits per value.
    TQ2_0,
}

impl GgmlType {
    /// Every supported type.
    pub const ALL: [GgmlType; 24] = [
        GgmlType::F32,
        GgmlType::F16,
        GgmlType::BF16,
        GgmlType::Q4_0,
        GgmlType::Q4_1,
        GgmlType::Q5_0,
        GgmlType::Q5_1,
        GgmlType::Q8_0,
        GgmlType::Q2_K,
        GgmlType::Q3_K,
        GgmlType::Q4_K,
        GgmlType::Q5_K,
        GgmlType::Q6_K,
        GgmlType::IQ4_NL,
        GgmlType::IQ4_XS,
        GgmlType::IQ2_XXS,
        GgmlType::IQ2_XS,
        GgmlType::IQ2_S,
        GgmlType::IQ3_XXS,
        GgmlType::IQ3_S,
        GgmlType::IQ1_S,
        GgmlType::IQ1_M,
        GgmlType::TQ1_0,
        GgmlType::TQ2_0,
    ];

    /// The type with ggml id `id`, or an error naming it.
    pub fn from_id(id: u32) -> Result<Self, KernelError> {
        Ok(match id {
            0 => Self::F32,
            1 => Self::F16,
            30 => Self::BF16,
            2 => Self::Q4_0,
            3 => Self::Q4_1,
            6 => Self::Q5_0,
            7 => Self::Q5_1,
            8 => Self::Q8_0,
            10 => Self::Q2_K,
            11 => Self::Q3_K,
            12 => Self::Q4_K,
            13 => Self::Q5_K,
            14 => Self::Q6_K,
            20 => Self::IQ4_NL,
            23 => Self::IQ4_XS,
            16 => Self::IQ2_XXS,
            17 => Self::IQ2_XS,
            22 => Self::IQ2_S,
            18 => Self::IQ3_XXS,
            21 => Self::IQ3_S,
            19 => Self::IQ1_S,
            29 => Self::IQ1_M,
            34 => Self::TQ1_0,
            35 => Self::TQ2_0,
            _ => {
                return Err(KernelError::UnsupportedType {
                    id,
                    name: known_name(id),
                })
            }
        })
    }

    /// ggml's numeric id.
    pub fn id(self) -> u32 {
        match self {
            Self::F32 => 0,
            Self::F16 => 1,
            Self::BF16 => 30,
            Self::Q4_0 => 2,
            Self::Q4_1 => 3,
            Self::Q5_0 => 6,
            Self::Q5_1 => 7,
            Self::Q8_0 => 8,
            Self::Q2_K => 10,
            Self::Q3_K => 11,
            Self::Q4_K => 12,
            Self::Q5_K => 13,
            Self::Q6_K => 14,
            Self::IQ4_NL => 20,
            Self::IQ4_XS => 23,
            Self::IQ2_XXS => 16,
            Self::IQ2_XS => 17,
            Self::IQ2_S => 22,
            Self::IQ3_XXS => 18,
            Self::IQ3_S => 21,
            Self::IQ1_S => 19,
            Self::IQ1_M => 29,
            Self::TQ1_0 => 34,
            Self::TQ2_0 => 35,
        }
    }

    /// ggml's name ("Q4_K", "BF16", ...).
    pub fn name(self) -> &'static str {
        known_name(self.id())
    }

    /// The type named `name` (case-insensitive), if supported.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL
            .into_iter()
            .find(|t| t.name().eq_ignore_ascii_case(name))
    }

    /// Elements per block.
    pub fn block_elems(self) -> usize {
        match self {
            Self::F32 | Self::F16 | Self::BF16 => 1,
            Self::Q4_0 | Self::Q4_1 | Self::Q5_0 | Self::Q5_1 | Self::Q8_0 | Self::IQ4_NL => 32,
            Self::Q2_K
            | Self::Q3_K
            | Self::Q4_K
            | Self::Q5_K
            | Self::Q6_K
            | Self::IQ4_XS
            | Self::IQ2_XXS
            | Self::IQ2_XS
            | Self::IQ2_S
            | Self::IQ3_XXS
            | Self::IQ3_S
            | Self::IQ1_S
            | Self::IQ1_M
            | Self::TQ1_0
            | Self::TQ2_0 => 256,
        }
    }

    /// Bytes per block.
    pub fn block_bytes(self) -> usize {
        match self {
            Self::F32 => 4,
            Self::F16 | Self::BF16 => 2,
            Self::Q4_0 | Self::IQ4_NL => 18,
            Self::Q4_1 => 20,
            Self::Q5_0 => 22,
            Self::Q5_1 => 24,
            Self::Q8_0 => 34,
            Self::Q2_K => 84,
            Self::Q3_K => 110,
            Self::Q4_K => 144,
            Self::Q5_K => 176,
            Self::Q6_K => 210,
            Self::IQ4_XS => 136,
            Self::IQ2_XXS => 66,
            Self::IQ2_XS => 74,
            Self::IQ2_S => 82,
            Self::IQ3_XXS => 98,
            Self::IQ3_S => 110,
            Self::IQ1_S => 50,
            Self::IQ1_M => 56,
            Self::TQ1_0 => 54,
            Self::TQ2_0 => 66,
        }
    }

    /// Bytes of a row of `elems` elements, or an error if `elems` is not whole blocks.
    pub fn row_bytes(self, elems: usize) -> Result<usize, KernelError> {
        let block = self.block_elems();
        if !elems.is_multiple_of(block) {
            return Err(KernelError::RowNotBlockAligned {
                ty: self.name(),
                elems,
                block,
            });
        }
        Ok(elems / block * self.block_bytes())
    }
}

/// ggml's name for a type id, including types this crate does not decode.
fn known_name(id: u32) -> &'static str {
    match id {
        0 => "F32",
        1 => "F16",
        2 => "Q4_0",
        3 => "Q4_1",
        6 => "Q5_0",
        7 => "Q5_1",
        8 => "Q8_0",
        9 => "Q8_1",
        10 => "Q2_K",
        11 => "Q3_K",
        12 => "Q4_K",
        13 => "Q5_K",
        14 => "Q6_K",
        15 => "Q8_K",
        16 => "IQ2_XXS",
        17 => "IQ2_XS",
        18 => "IQ3_XXS",
        19 => "IQ1_S",
        20 => "IQ4_NL",
        21 => "IQ3_S",
        22 => "IQ2_S",
        23 => "IQ4_XS",
        24 => "I8",
        25 => "I16",
        26 => "I32",
        27 => "I64",
        28 => "F64",
        29 => "IQ1_M",
        30 => "BF16",
        34 => "TQ1_0",
        35 => "TQ2_0",
        39 => "MXFP4",
        _ => "unknown",
    }
}
