//! Hidden states and partial sums between the compute type (f32) and the wire dtype.
//!
//! bf16 halves the bytes per token (14 KB instead of 28 KB for Kimi K2.5) at about three
//! significant digits; f32 is exact. Rounding is to nearest even (the `half` crate). `q8`
//! sends hidden states as int8 blocks of [`Q8_BLOCK`] values with an f32 scale each (7.9 KB
//! per Kimi K2.5 token: what a fast-mode node quantizes its activations to anyway) and the
//! partial sums back in bf16 ([`WireDtype::reply`]).

use half::bf16;
use rkyv::{Archive, Deserialize, Serialize};

use crate::ClusterError;

/// How hidden states and partial sums are encoded on the wire (`--wire-dtype`).
#[derive(Archive, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum WireDtype {
    /// IEEE-754 binary32, little-endian: 4 bytes per element, exact.
    F32,
    /// bfloat16 (the top half of an f32, rounded to nearest even), little-endian: 2 bytes
    /// per element, half the traffic.
    Bf16,
    /// Hidden states as blocks of [`Q8_BLOCK`] int8 values, each block led by its f32 scale
    /// (`value = scale * q`, `scale = max |value| / 127`): 1.125 bytes per element. Replies
    /// (partial sums) are bf16.
    Q8,
}

/// Elements per `q8` block (a hidden size must be a multiple of it).
pub const Q8_BLOCK: usize = 32;
/// Bytes per `q8` block: the f32 scale and the int8 values.
pub const Q8_BLOCK_BYTES: usize = 4 + Q8_BLOCK;

impl WireDtype {
    /// `(elements, bytes)` of the smallest whole unit of this encoding.
    pub fn unit(self) -> (usize, usize) {
        match self {
            Self::F32 => (1, 4),
            Self::Bf16 => (1, 2),
            Self::Q8 => (Q8_BLOCK, Q8_BLOCK_BYTES),
        }
    }

    /// Bytes of one hidden state of `dim` elements; `None` when `dim` is not a whole number
    /// of units.
    pub fn row_bytes(self, dim: usize) -> Option<usize> {
        let (elems, bytes) = self.unit();
        dim.is_multiple_of(elems).then(|| dim / elems * bytes)
    }

    /// The encoding of the partial sums that answer hidden states in this one.
    pub fn reply(self) -> Self {
        match self {
            Self::Q8 => Self::Bf16,
            other => other,
        }
    }
}

impl std::str::FromStr for WireDtype {
    type Err = ClusterError;

    /// `f32`, `bf16` or `q8`, as `--wire-dtype` takes them.
    fn from_str(text: &str) -> Result<Self, ClusterError> {
        match text {
            "f32" => Ok(Self::F32),
            "bf16" => Ok(Self::Bf16),
            "q8" => Ok(Self::Q8),
            other => Err(ClusterError::InvalidInput(format!(
                "wire dtype {other:?}: expected f32, bf16 or q8"
            ))),
        }
    }
}

impl std::fmt::Display for WireDtype {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::F32 => "f32",
            Self::Bf16 => "bf16",
            Self::Q8 => "q8",
        })
    }
}

/// Appends `values` to `out` in `dtype`, little-endian. For `q8`, `values` is a whole number
/// of blocks (callers check the row size with [`WireDtype::row_bytes`]); a short last block
/// is padded with zeros.
pub fn encode_hidden(values: &[f32], dtype: WireDtype, out: &mut Vec<u8>) {
    let (elems, bytes) = dtype.unit();
    out.reserve(values.len().div_ceil(elems) * bytes);
    match dtype {
        WireDtype::F32 => values
            .iter()
            .for_each(|v| out.extend_from_slice(&v.to_le_bytes())),
        WireDtype::Bf16 => values
            .iter()
            .for_each(|&v| out.extend_from_slice(&bf16::from_f32(v).to_le_bytes())),
        WireDtype::Q8 => values.chunks(Q8_BLOCK).for_each(|block| {
            let amax = block.iter().fold(0f32, |m, v| m.max(v.abs()));
            let scale = amax / 127.0;
            let inv = if scale > 0.0 { 1.0 / scale } else { 0.0 };
            out.extend_from_slice(&scale.to_le_bytes());
            let mut q = [0u8; Q8_BLOCK];
            for (q, &v) in q.iter_mut().zip(block) {
                *q = ((v * inv).round().clamp(-127.0, 127.0) as i8) as u8;
            }
            out.extend_from_slice(&q);
        }),
    }
}

/// Appends the elements of `bytes` (in `dtype`, little-endian) to `out` as f32.
///
/// Fails when `bytes` is not a whole number of elements.
pub fn decode_hidden(
    bytes: &[u8],
    dtype: WireDtype,
    out: &mut Vec<f32>,
) -> Result<(), ClusterError> {
    let (elems, size) = dtype.unit();
    if !bytes.chunks_exact(size).remainder().is_empty() {
        return Err(ClusterError::FrameInvalid(format!(
            "{} bytes is not a whole number of {dtype} units of {size} bytes",
            bytes.len()
        )));
    }
    out.reserve(bytes.len() / size * elems);
    match dtype {
        WireDtype::F32 => out.extend(
            bytes
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])),
        ),
        WireDtype::Bf16 => out.extend(
            bytes
                .chunks_exact(2)
                .map(|c| bf16::from_le_bytes([c[0], c[1]]).to_f32()),
        ),
        WireDtype::Q8 => {
            for block in bytes.chunks_exact(Q8_BLOCK_BYTES) {
                let (scale, q) = block.split_at(4);
                let scale = f32::from_le_bytes([scale[0], scale[1], scale[2], scale[3]]);
                out.extend(q.iter().map(|&q| scale * f32::from(q as i8)));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn f32_is_exact() {
        let values = [0.0, -1.5, f32::MAX, f32::MIN_POSITIVE, 1e-30, 3.25];
        let mut bytes = Vec::new();
        encode_hidden(&values, WireDtype::F32, &mut bytes);
        assert_eq!(bytes.len(), 24);
        let mut back = Vec::new();
        decode_hidden(&bytes, WireDtype::F32, &mut back).unwrap();
        assert_eq!(back, values);
    }

    #[test]
    fn bf16_rounds_to_about_three_digits() {
        let values: Vec<f32> = (0..1000).map(|i| (i as f32 - 500.0) * 0.0137).collect();
        let mut bytes = Vec::new();
        encode_hidden(&values, WireDtype::Bf16, &mut bytes);
        assert_eq!(bytes.len(), 2000);
        let mut back = Vec::new();
        decode_hidden(&bytes, WireDtype::Bf16, &mut back).unwrap();
        for (a, b) in values.iter().zip(&back) {
            assert!((a - b).abs() <= a.abs() / 256.0, "{a} vs {b}");
        }
        // Values that bf16 holds exactly survive unchanged.
        let exact = [1.0f32, -2.0, 0.5, 384.0];
        let mut bytes = Vec::new();
        encode_hidden(&exact, WireDtype::Bf16, &mut bytes);
        let mut back = Vec::new();
        decode_hidden(&bytes, WireDtype::Bf16, &mut back).unwrap();
        assert_eq!(back, exact);
    }

    #[test]
    fn q8_keeps_each_block_within_half_a_step() {
        // Blocks of very different magnitudes, a zero block and an exact extreme.
        let mut values: Vec<f32> = (0..96)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) * 0.3)
            .collect();
        values.extend((0..32).map(|i| (i as f32 - 16.0) * 1e-4));
        values.extend([0.0f32; 32]);
        let mut bytes = Vec::new();
        encode_hidden(&values, WireDtype::Q8, &mut bytes);
        assert_eq!(bytes.len(), values.len() / Q8_BLOCK * Q8_BLOCK_BYTES);
        assert_eq!(WireDtype::Q8.row_bytes(values.len()), Some(bytes.len()));
        let mut back = Vec::new();
        decode_hidden(&bytes, WireDtype::Q8, &mut back).unwrap();
        assert_eq!(back.len(), values.len());
        for (block, got) in values.chunks(Q8_BLOCK).zip(back.chunks(Q8_BLOCK)) {
            let step = block.iter().fold(0f32, |m, v| m.max(v.abs())) / 127.0;
            for (a, b) in block.iter().zip(got) {
                assert!(
                    (a - b).abs() <= step * 0.5 + step * 1e-5,
                    "{a} vs {b} (step {step})"
                );
            }
            // The block's extreme comes back exactly (+-127 steps).
            let (i, _) = block
                .iter()
                .enumerate()
                .fold((0, 0f32), |(bi, bm), (i, v)| {
                    if v.abs() > bm {
                        (i, v.abs())
                    } else {
                        (bi, bm)
                    }
                });
            assert!((block[i] - got[i]).abs() <= block[i].abs() * 1e-6);
        }
        assert!(back[128..].iter().all(|&v| v == 0.0));
        assert_eq!(WireDtype::Q8.reply(), WireDtype::Bf16);
        assert_eq!(WireDtype::Q8.row_bytes(7168), Some(7168 / 32 * 36));
        assert_eq!(WireDtype::Q8.row_bytes(100), None);
    }

    #[test]
    fn partial_elements_are_refused() {
        let mut out = Vec::new();
        assert!(decode_hidden(&[0; 3], WireDtype::F32, &mut out).is_err());
        assert!(decode_hidden(&[0; 3], WireDtype::Bf16, &mut out).is_err());
        assert!(decode_hidden(&[0; Q8_BLOCK_BYTES + 1], WireDtype::Q8, &mut out).is_err());
        assert!(out.is_empty());
    }
}
