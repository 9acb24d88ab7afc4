//! How the rows of an MLA latent KV cache are stored: one row per position, the latent `c`
//! followed by the roped key (`KvRowShape`), in one of four element types ([`KvType`]).
//!
//! Decides: the row encodings and their rounding (each value is rounded once, when its row is
//! written; reading never rounds again), and the conversion of stored rows back to f32
//! ([`KvRows::decode_into`]), which is what the attention kernels consume. [`KvBuf`] owns the
//! rows of one layer; [`KvRows`] borrows a range of them (for the flash kernel and for copying
//! a prefix out).
//!
//! - `f32`: the values as computed (4 bytes a value; Exact mode's cache).
//! - `bf16`: round to nearest even to bfloat16 (8 mantissa bits; 2 bytes).
//! - `f16`: round to nearest even to IEEE half (11 mantissa bits, finite range ±65504; values
//!   beyond it saturate to ±65504 instead of becoming infinite; 2 bytes).
//! - `q8_0`: ggml's Q8_0 rounding: blocks of [`KV_Q8_BLOCK_VALUES`] values share one f16 scale
//!   `d = max|x| / 127`, each value stored as `round(x / d)` in an i8 (34 bytes per 32 values).
//!   The latent and the rope part are blocked separately (a block never straddles them), and
//!   a part whose width is not a multiple of the block has a shorter last block.

use std::borrow::Cow;
use std::fmt;
use std::ops::Range;
use std::str::FromStr;

use half::slice::HalfFloatSliceExt;
use half::{bf16, f16};

use crate::error::KernelError;
use crate::matmul::NumericMode;

/// Values that share one scale in a [`KvType::Q8_0`] row (ggml's Q8_0 block).
pub const KV_Q8_BLOCK_VALUES: usize = 32;
/// Bytes of a [`KvType::Q8_0`] block's scale (an f16).
const Q8_SCALE_BYTES: usize = 2;
/// Largest finite f16.
const F16_MAX: f32 = 65504.0;

/// The element type of a KV cache's rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum KvType {
    /// f32, the values as computed (the exact cache).
    #[default]
    F32,
    /// bfloat16, round to nearest even.
    Bf16,
    /// IEEE half, round to nearest even, saturating at ±65504.
    F16,
    /// ggml's Q8_0 rounding: an f16 scale and 32 i8 values per block.
    Q8_0,
}

impl KvType {
    /// Every type, narrowest last.
    pub const ALL: [KvType; 4] = [KvType::F32, KvType::Bf16, KvType::F16, KvType::Q8_0];

    /// The cache type a model computing in `mode` uses unless told otherwise: f32 in Exact
    /// (the reference), f16 in Fast. f16 over bf16 because it is the more faithful of the two
    /// 2-byte types: with 11 significand bits to bf16's 8 its rounding alone moves the
    /// fixtures' logits ~10x less (mean KL 4e-4 against 6e-3 on kimi-k25-tiny-BF16 in Exact
    /// mode), and cached latents (RMS-normalized) and roped keys are far inside its range.
    pub fn default_for(mode: NumericMode) -> Self {
        match mode {
            NumericMode::Exact => KvType::F32,
            NumericMode::Fast => KvType::F16,
        }
    }

    /// The option spelling (`f32`, `bf16`, `f16`, `q8_0`).
    pub fn name(self) -> &'static str {
        match self {
            KvType::F32 => "f32",
            KvType::Bf16 => "bf16",
            KvType::F16 => "f16",
            KvType::Q8_0 => "q8_0",
        }
    }

    /// Bytes of one stored row of `shape`.
    pub fn row_bytes(self, shape: KvRowShape) -> usize {
        match self {
            KvType::F32 => shape.width() * 4,
            KvType::Bf16 | KvType::F16 => shape.width() * 2,
            KvType::Q8_0 => q8_part_bytes(shape.latent) + q8_part_bytes(shape.rope),
        }
    }
}

impl fmt::Display for KvType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for KvType {
    type Err = KernelError;

    fn from_str(s: &str) -> Result<Self, KernelError> {
        KvType::ALL
            .into_iter()
            .find(|t| t.name().eq_ignore_ascii_case(s))
            .ok_or_else(|| KernelError::UnknownKvType { name: s.to_owned() })
    }
}

/// The widths of one cache row: the latent `c` (also the attention value) then the roped key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct KvRowShape {
    /// Latent values (`kv_lora_rank`).
    pub latent: usize,
    /// Roped key values (`qk_rope_head_dim`).
    pub rope: usize,
}

impl KvRowShape {
    /// Values a row.
    pub fn width(self) -> usize {
        self.latent + self.rope
    }
}

/// Bytes of `n` values in [`KvType::Q8_0`] blocks (the last one possibly shorter).
fn q8_part_bytes(n: usize) -> usize {
    n + n.div_ceil(KV_Q8_BLOCK_VALUES) * Q8_SCALE_BYTES
}

/// Appends `x` as [`KvType::Q8_0`] blocks: each a little-endian f16 scale, then its i8 values.
fn q8_encode(x: &[f32], out: &mut Vec<u8>) {
    for block in x.chunks(KV_Q8_BLOCK_VALUES) {
        let amax = block.iter().fold(0f32, |m, v| m.max(v.abs()));
        let d = amax / 127.0;
        let id = if d > 0.0 { 1.0 / d } else { 0.0 };
        out.extend_from_slice(&f16::from_f32(d).to_le_bytes());
        // `as` saturates (and maps NaN to 0), so a non-finite value cannot wrap.
        out.extend(
            block
                .iter()
                .map(|v| ((v * id).round().clamp(-127.0, 127.0) as i8) as u8),
        );
    }
}

/// Decodes `out.len()` values of [`KvType::Q8_0`] blocks from the start of `bytes`; returns
/// the bytes read.
#[inline(always)]
fn q8_decode(bytes: &[u8], out: &mut [f32]) -> usize {
    let mut at = 0;
    for block in out.chunks_mut(KV_Q8_BLOCK_VALUES) {
        let d = f16::from_le_bytes([bytes[at], bytes[at + 1]]).to_f32();
        let q = &bytes[at + Q8_SCALE_BYTES..at + Q8_SCALE_BYTES + block.len()];
        for (o, &b) in block.iter_mut().zip(q) {
            *o = d * f32::from(b as i8);
        }
        at += Q8_SCALE_BYTES + block.len();
    }
    at
}

/// Stored rows by type.
#[derive(Debug, Clone, Copy)]
enum RowData<'a> {
    F32(&'a [f32]),
    Bf16(&'a [bf16]),
    F16(&'a [f16]),
    /// Whole rows of `KvType::row_bytes` bytes.
    Q8_0(&'a [u8]),
}

/// Borrowed whole rows of one cache layer, in their stored type.
#[derive(Debug, Clone, Copy)]
pub struct KvRows<'a> {
    shape: KvRowShape,
    data: RowData<'a>,
}

impl<'a> KvRows<'a> {
    /// f32 rows as they are (`values.len()` a multiple of the shape's width).
    ///
    /// # Panics
    /// If `values` is not a whole number of rows.
    pub fn from_f32(shape: KvRowShape, values: &'a [f32]) -> Self {
        assert_eq!(values.len() % shape.width(), 0, "not whole rows");
        Self {
            shape,
            data: RowData::F32(values),
        }
    }

    /// The row shape.
    pub fn shape(&self) -> KvRowShape {
        self.shape
    }

    /// The stored type.
    pub fn kv_type(&self) -> KvType {
        match self.data {
            RowData::F32(_) => KvType::F32,
            RowData::Bf16(_) => KvType::Bf16,
            RowData::F16(_) => KvType::F16,
            RowData::Q8_0(_) => KvType::Q8_0,
        }
    }

    /// Rows held.
    pub fn positions(&self) -> usize {
        let w = self.shape.width();
        match self.data {
            RowData::F32(v) => v.len() / w,
            RowData::Bf16(v) => v.len() / w,
            RowData::F16(v) => v.len() / w,
            RowData::Q8_0(v) => v.len() / KvType::Q8_0.row_bytes(self.shape),
        }
    }

    /// Bytes held.
    pub fn bytes(&self) -> usize {
        self.positions() * self.kv_type().row_bytes(self.shape)
    }

    /// Rows `range` of these rows.
    ///
    /// # Panics
    /// If `range` reaches past [`KvRows::positions`].
    pub fn slice(&self, range: Range<usize>) -> KvRows<'a> {
        let w = self.shape.width();
        let (a, b) = (range.start * w, range.end * w);
        let data = match self.data {
            RowData::F32(v) => RowData::F32(&v[a..b]),
            RowData::Bf16(v) => RowData::Bf16(&v[a..b]),
            RowData::F16(v) => RowData::F16(&v[a..b]),
            RowData::Q8_0(v) => {
                let rb = KvType::Q8_0.row_bytes(self.shape);
                RowData::Q8_0(&v[range.start * rb..range.end * rb])
            }
        };
        KvRows {
            shape: self.shape,
            data,
        }
    }

    /// The values themselves when the rows are f32 (no conversion needed).
    pub fn as_f32(&self) -> Option<&'a [f32]> {
        match self.data {
            RowData::F32(v) => Some(v),
            _ => None,
        }
    }

    /// Every row as f32 into `out` (`positions × width` values, row-major).
    ///
    /// # Panics
    /// If `out` does not hold exactly that many values.
    #[inline(always)]
    pub fn decode_into(&self, out: &mut [f32]) {
        let w = self.shape.width();
        assert_eq!(out.len(), self.positions() * w, "decode_into: output size");
        match self.data {
            RowData::F32(v) => out.copy_from_slice(v),
            // bf16 is the top half of an f32: a shift (LLVM vectorizes this loop).
            RowData::Bf16(v) => {
                for (o, b) in out.iter_mut().zip(v) {
                    *o = f32::from_bits(u32::from(b.to_bits()) << 16);
                }
            }
            RowData::F16(v) => f16_to_f32(v, out),
            RowData::Q8_0(v) => {
                let rb = KvType::Q8_0.row_bytes(self.shape);
                for (row, o) in v.chunks_exact(rb).zip(out.chunks_exact_mut(w)) {
                    let (c, k) = o.split_at_mut(self.shape.latent);
                    let at = q8_decode(row, c);
                    q8_decode(&row[at..], k);
                }
            }
        }
    }

    /// Every row as f32: borrowed when the rows are f32, converted otherwise.
    pub fn to_f32(&self) -> Cow<'a, [f32]> {
        match self.as_f32() {
            Some(v) => Cow::Borrowed(v),
            None => {
                let mut out = vec![0f32; self.positions() * self.shape.width()];
                self.decode_into(&mut out);
                Cow::Owned(out)
            }
        }
    }
}

/// `src` as f32 into `dst` (equal lengths): one F16C loop where the CPU has F16C (`half`'s
/// slice conversion makes an out-of-line call per 8 values, a few percent of a long
/// prompt's time), else `half`'s conversion. Exact either way, so the same values.
#[inline(always)]
fn f16_to_f32(src: &[half::f16], dst: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("f16c") && std::arch::is_x86_feature_detected!("avx") {
        // SAFETY: F16C and AVX were detected just above.
        unsafe { f16_to_f32_f16c(src, dst) };
        return;
    }
    src.convert_to_f32_slice(dst);
}

/// [`f16_to_f32`] with `vcvtph2ps`, 8 values per instruction, the tail through `half`.
///
/// # Safety
/// The CPU must support F16C and AVX.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx,f16c")]
unsafe fn f16_to_f32_f16c(src: &[half::f16], dst: &mut [f32]) {
    use std::arch::x86_64::{__m128i, _mm256_cvtph_ps, _mm256_storeu_ps, _mm_loadu_si128};
    let n = src.len().min(dst.len());
    let main = n - n % 8;
    for (s, d) in src[..main]
        .chunks_exact(8)
        .zip(dst[..main].chunks_exact_mut(8))
    {
        // SAFETY: F16C/AVX per the caller; `s` holds 8 halves (16 bytes) and `d` 8 floats.
        unsafe {
            let h = _mm_loadu_si128(s.as_ptr().cast::<__m128i>());
            _mm256_storeu_ps(d.as_mut_ptr(), _mm256_cvtph_ps(h));
        }
    }
    src[main..n].convert_to_f32_slice(&mut dst[main..n]);
}

/// Owned rows by type.
#[derive(Debug, Clone)]
enum RowStore {
    F32(Vec<f32>),
    Bf16(Vec<bf16>),
    F16(Vec<f16>),
    Q8_0(Vec<u8>),
}

/// The rows of one cache layer, owned, in one [`KvType`] (rows are only ever appended or
/// truncated).
#[derive(Debug, Clone)]
pub struct KvBuf {
    shape: KvRowShape,
    store: RowStore,
}

impl KvBuf {
    /// No rows yet.
    pub fn new(kv_type: KvType, shape: KvRowShape) -> Self {
        let store = match kv_type {
            KvType::F32 => RowStore::F32(Vec::new()),
            KvType::Bf16 => RowStore::Bf16(Vec::new()),
            KvType::F16 => RowStore::F16(Vec::new()),
            KvType::Q8_0 => RowStore::Q8_0(Vec::new()),
        };
        Self { shape, store }
    }

    /// A copy of `rows`, in their type.
    pub fn from_rows(rows: &KvRows<'_>) -> Self {
        let mut buf = Self::new(rows.kv_type(), rows.shape);
        buf.extend(rows)
            .unwrap_or_else(|_| unreachable!("same type and shape"));
        buf
    }

    /// The stored type.
    pub fn kv_type(&self) -> KvType {
        self.all().kv_type()
    }

    /// Every row.
    pub fn all(&self) -> KvRows<'_> {
        let data = match &self.store {
            RowStore::F32(v) => RowData::F32(v),
            RowStore::Bf16(v) => RowData::Bf16(v),
            RowStore::F16(v) => RowData::F16(v),
            RowStore::Q8_0(v) => RowData::Q8_0(v),
        };
        KvRows {
            shape: self.shape,
            data,
        }
    }

    /// Rows `range`.
    ///
    /// # Panics
    /// If `range` reaches past the rows held.
    pub fn rows(&self, range: Range<usize>) -> KvRows<'_> {
        self.all().slice(range)
    }

    /// Rows held.
    pub fn positions(&self) -> usize {
        self.all().positions()
    }

    /// Bytes held.
    pub fn bytes(&self) -> usize {
        self.all().bytes()
    }

    /// Appends one row, rounding each value once to the stored type.
    ///
    /// # Panics
    /// If `c` and `k_rot` do not have the shape's widths.
    pub fn push(&mut self, c: &[f32], k_rot: &[f32]) {
        assert_eq!(
            (c.len(), k_rot.len()),
            (self.shape.latent, self.shape.rope),
            "KvBuf::push: row widths"
        );
        match &mut self.store {
            RowStore::F32(v) => {
                v.extend_from_slice(c);
                v.extend_from_slice(k_rot);
            }
            RowStore::Bf16(v) => v.extend(c.iter().chain(k_rot).map(|&x| bf16::from_f32(x))),
            RowStore::F16(v) => v.extend(
                c.iter()
                    .chain(k_rot)
                    .map(|&x| f16::from_f32(x.clamp(-F16_MAX, F16_MAX))),
            ),
            RowStore::Q8_0(v) => {
                q8_encode(c, v);
                q8_encode(k_rot, v);
            }
        }
    }

    /// Keeps the first `positions` rows.
    pub fn truncate(&mut self, positions: usize) {
        let w = self.shape.width();
        match &mut self.store {
            RowStore::F32(v) => v.truncate(positions * w),
            RowStore::Bf16(v) => v.truncate(positions * w),
            RowStore::F16(v) => v.truncate(positions * w),
            RowStore::Q8_0(v) => v.truncate(positions * KvType::Q8_0.row_bytes(self.shape)),
        }
    }

    /// Appends `rows` as they are stored (no rounding: they must already be of this type and
    /// shape).
    pub fn extend(&mut self, rows: &KvRows<'_>) -> Result<(), KernelError> {
        if rows.shape != self.shape || rows.kv_type() != self.kv_type() {
            return Err(KernelError::KvRowsMismatch {
                want: format!(
                    "{} rows of {}+{}",
                    self.kv_type(),
                    self.shape.latent,
                    self.shape.rope
                ),
                got: format!(
                    "{} rows of {}+{}",
                    rows.kv_type(),
                    rows.shape.latent,
                    rows.shape.rope
                ),
            });
        }
        match (&mut self.store, rows.data) {
            (RowStore::F32(v), RowData::F32(r)) => v.extend_from_slice(r),
            (RowStore::Bf16(v), RowData::Bf16(r)) => v.extend_from_slice(r),
            (RowStore::F16(v), RowData::F16(r)) => v.extend_from_slice(r),
            (RowStore::Q8_0(v), RowData::Q8_0(r)) => v.extend_from_slice(r),
            _ => unreachable!("types checked above"),
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Largest relative rounding error of bf16 (half an ulp of an 8-bit significand).
    const BF16_REL_ERR_MAX: f32 = 1.0 / 256.0;
    /// Largest relative rounding error of f16 in its normal range (11-bit significand).
    const F16_REL_ERR_MAX: f32 = 1.0 / 2048.0;
    /// Largest absolute error of a Q8_0 value, relative to its block's max |x|: half a step
    /// of `d = max/127`, plus the rounding of `d` to f16 carried over up to 127 steps.
    const Q8_BLOCK_REL_ERR_MAX: f32 = 0.5 / 127.0 + 1.0 / 2048.0;

    fn row(n: usize, seed: u32, scale: f32) -> Vec<f32> {
        (0..n)
            .map(|i| {
                let h = (i as u32)
                    .wrapping_mul(2_654_435_761)
                    .wrapping_add(seed.wrapping_mul(40_503));
                ((h % 20_001) as f32 / 10_000.0 - 1.0) * scale
            })
            .collect()
    }

    /// Every type stores rows of shapes with and without whole Q8 blocks (the tiny fixture's
    /// 64 + 16, Kimi K2.5's 512 + 64, and odd widths) and reads back each value within its
    /// rounding bound; f32 reads back every bit; the sizes are the documented bytes a row.
    /// The slice conversion (F16C loop where the CPU has it, with a tail) gives every half's
    /// exact f32 value (`half`'s), NaN to NaN.
    #[test]
    fn f16_slice_conversion_is_exact() {
        let all: Vec<f16> = (0..=u16::MAX).map(f16::from_bits).collect();
        // 65,536 values: 8-value steps plus a tail of 0 (and of 5 below).
        for src in [&all[..], &all[3..]] {
            let mut out = vec![0f32; src.len()];
            super::f16_to_f32(src, &mut out);
            for (h, o) in src.iter().zip(&out) {
                let want = h.to_f32();
                if want.is_nan() {
                    assert!(o.is_nan(), "{:#06x}", h.to_bits());
                } else {
                    assert_eq!(o.to_bits(), want.to_bits(), "{:#06x}", h.to_bits());
                }
            }
        }
    }

    #[test]
    fn each_type_round_trips_rows_within_its_rounding_bound() {
        for shape in [
            KvRowShape {
                latent: 64,
                rope: 16,
            },
            KvRowShape {
                latent: 512,
                rope: 64,
            },
            KvRowShape {
                latent: 37,
                rope: 5,
            },
        ] {
            let w = shape.width();
            for ty in KvType::ALL {
                let mut buf = KvBuf::new(ty, shape);
                let rows: Vec<Vec<f32>> = (0..5)
                    .map(|r| row(w, r, [1.0, 30.0, 0.01, 500.0, 3.0][r as usize]))
                    .collect();
                for r in &rows {
                    buf.push(&r[..shape.latent], &r[shape.latent..]);
                }
                assert_eq!(buf.positions(), 5);
                assert_eq!(buf.bytes(), 5 * ty.row_bytes(shape), "{ty} {shape:?}");
                let got = buf.all().to_f32();
                for (r, want) in rows.iter().enumerate() {
                    let got = &got[r * w..(r + 1) * w];
                    for part in [0..shape.latent, shape.latent..w] {
                        let amax = want[part.clone()].iter().fold(0f32, |m, v| m.max(v.abs()));
                        for i in part.clone() {
                            let (g, x) = (got[i], want[i]);
                            let bound = match ty {
                                KvType::F32 => 0.0,
                                KvType::Bf16 => x.abs() * BF16_REL_ERR_MAX,
                                KvType::F16 => x.abs() * F16_REL_ERR_MAX + 6e-8,
                                KvType::Q8_0 => amax * Q8_BLOCK_REL_ERR_MAX,
                            };
                            assert!(
                                (g - x).abs() <= bound,
                                "{ty} {shape:?} row {r} value {i}: {g} vs {x} (bound {bound})"
                            );
                        }
                    }
                }
                if ty == KvType::F32 {
                    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                    assert_eq!(bits(&got), bits(&rows.concat()));
                }
            }
        }
    }

    /// The bytes a Kimi K2.5 row (512 + 64) takes: 2x and ~3.76x less than f32.
    #[test]
    fn row_bytes_of_kimi_shape() {
        let shape = KvRowShape {
            latent: 512,
            rope: 64,
        };
        assert_eq!(KvType::F32.row_bytes(shape), 2304);
        assert_eq!(KvType::Bf16.row_bytes(shape), 1152);
        assert_eq!(KvType::F16.row_bytes(shape), 1152);
        assert_eq!(KvType::Q8_0.row_bytes(shape), 576 + 18 * 2);
    }

    /// Slices, truncation, copies and appends keep the stored bytes; appending rows of another
    /// type or shape is refused; f16 saturates instead of overflowing; names parse back.
    #[test]
    fn slices_copies_and_mismatches() {
        let shape = KvRowShape {
            latent: 40,
            rope: 8,
        };
        for ty in KvType::ALL {
            let mut buf = KvBuf::new(ty, shape);
            for r in 0..6 {
                let v = row(48, r, 2.0);
                buf.push(&v[..40], &v[40..]);
            }
            let whole = buf.all().to_f32().into_owned();
            let copy = KvBuf::from_rows(&buf.rows(2..5));
            assert_eq!(copy.positions(), 3);
            assert_eq!(&copy.all().to_f32()[..], &whole[2 * 48..5 * 48]);
            let mut joined = KvBuf::new(ty, shape);
            joined.extend(&buf.rows(0..2)).unwrap();
            joined.extend(&copy.all()).unwrap();
            assert_eq!(&joined.all().to_f32()[..], &whole[..5 * 48]);
            buf.truncate(1);
            assert_eq!(&buf.all().to_f32()[..], &whole[..48]);
            let other = if ty == KvType::F32 {
                KvType::Bf16
            } else {
                KvType::F32
            };
            assert!(buf.extend(&KvBuf::new(other, shape).all()).is_err());
            let narrow = KvRowShape {
                latent: 40,
                rope: 4,
            };
            assert!(buf.extend(&KvBuf::new(ty, narrow).all()).is_err());
            assert_eq!(ty.name().parse::<KvType>().unwrap(), ty);
        }
        assert!("q4".parse::<KvType>().is_err());
        let mut f = KvBuf::new(KvType::F16, KvRowShape { latent: 1, rope: 1 });
        f.push(&[1e6], &[-1e6]);
        assert_eq!(&f.all().to_f32()[..], &[F16_MAX, -F16_MAX]);
    }
}
