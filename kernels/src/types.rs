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
}

impl GgmlType {
    /// Every supported type.
    pub const ALL: [GgmlType; 15] = [
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
            Self::Q2_K | Self::Q3_K | Self::Q4_K | Self::Q5_K | Self::Q6_K | Self::IQ4_XS => 256,
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
