//! Deterministic random weights, generated and quantized one chunk of rows at a time and
//! streamed to a [`GgufDataWriter`].
//!
//! Every element is a pure function of `(seed, tensor name, flat element index)`: a
//! counter-based splitmix64 stream, so the bytes do not depend on the thread count or the
//! chunking. Values are approximately normal (Irwin-Hall sum of four 16-bit uniforms, scaled to
//! unit variance), which is close enough for weights whose only job is to keep activations at a
//! sane scale.
//!
//! Memory stays bounded: at most [`CHUNKS_IN_FLIGHT`] + 1 buffers of about
//! [`CHUNK_BYTES_TARGET`] exist at once; the main thread fills a chunk with all cores (rows
//! split between scoped threads) while a writer thread writes the previous one.

use std::sync::mpsc::sync_channel;

use moe_kernels::{synthesize_row, GgmlType};

use crate::DevDataError;
use moe_model::gguf::GgufDataWriter;

/// Target size of one chunk of quantized rows, in bytes.
pub const CHUNK_BYTES_TARGET: usize = 32 << 20;
/// Chunks queued for the writer thread at most.
pub const CHUNKS_IN_FLIGHT: usize = 2;
/// Below this many elements a chunk is generated on the calling thread alone.
const PARALLEL_ELEMS_MIN: usize = 1 << 16;
/// splitmix64's increment (2^64 / golden ratio).
const GOLDEN_GAMMA: u64 = 0x9E37_79B9_7F4A_7C15;

/// How a tensor's values are drawn.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Init {
    /// N(0, std²) (approximately).
    Normal {
        /// Standard deviation, typically `1/sqrt(fan_in)`.
        std: f32,
    },
    /// The output head: N(0, std²) per row, except rows `pad_rows.0..pad_rows.1` (the
    /// vocabulary's `[PAD]` tokens), which are zero, so a random model's greedy output is
    /// made of real tokens as a trained model's is.
    OutputHead {
        /// Standard deviation of the live rows.
        std: f32,
        /// First and one-past-last padding row.
        pad_rows: (u64, u64),
    },
    /// `1 + N(0, spread²)`: RMSNorm weights.
    NearOne {
        /// Standard deviation around 1.
        spread: f32,
    },
    /// The router's selection bias (`exp_probs_b.bias`): `N(0, noise²)` plus
    /// `skew * ln(E / (e + 1)) / ln(E)` for expert `e` of `E` (see `SynthOptions::skew`).
    RouterBias {
        /// Zipf-like preference for low-numbered experts (0 = none).
        skew: f32,
        /// Standard deviation of the per-expert noise.
        noise: f32,
    },
}

/// One tensor to generate: its declaration and its values.
#[derive(Debug, Clone)]
pub struct PlannedTensor {
    /// GGUF name.
    pub name: String,
    /// Storage type (after any fallback).
    pub ty: GgmlType,
    /// ggml dims, `ne[0]` fastest.
    pub ne: Vec<u64>,
    /// How its values are drawn.
    pub init: Init,
}

impl PlannedTensor {
    /// Number of elements.
    pub fn elems(&self) -> u64 {
        self.ne.iter().product()
    }
}

/// splitmix64's output function.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The stream key of a tensor: the seed mixed with an FNV-1a hash of its name.
pub fn tensor_key(seed: u64, name: &str) -> u64 {
    let hash = name.bytes().fold(0xCBF2_9CE4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01B3)
    });
    mix(seed ^ mix(hash))
}

/// An approximately standard-normal value from 64 random bits.
fn approx_normal(r: u64) -> f32 {
    let s = (r & 0xFFFF) + ((r >> 16) & 0xFFFF) + ((r >> 32) & 0xFFFF) + (r >> 48);
    // Four uniforms on 0..65536: mean 2 * 65535, variance 65536² / 3 (to 1 part in 4e9).
    (s as f32 - 131_070.0) * (1.732_050_8 / 65_536.0)
}

/// Fills `out` with row `row` of a tensor whose rows are `out.len()` long.
pub fn fill_row(key: u64, init: Init, row: u64, out: &mut [f32]) {
    let base = row.wrapping_mul(out.len() as u64);
    let n = out.len();
    for (c, o) in out.iter_mut().enumerate() {
        let counter = base.wrapping_add(c as u64 + 1);
        let z = approx_normal(mix(key.wrapping_add(counter.wrapping_mul(GOLDEN_GAMMA))));
        *o = match init {
            Init::Normal { std } => z * std,
            Init::OutputHead { std, pad_rows } if !(pad_rows.0..pad_rows.1).contains(&row) => {
                z * std
            }
            Init::OutputHead { .. } => 0.0,
            Init::NearOne { spread } => 1.0 + z * spread,
            Init::RouterBias { skew, noise } => z * noise + zipf_bias(skew, c, n),
        };
    }
}

/// `skew * ln(n / (e + 1)) / ln(n)`: `skew` for expert 0, falling like a log-frequency to 0 for
/// the last expert.
fn zipf_bias(skew: f32, e: usize, n: usize) -> f32 {
    if skew == 0.0 || n < 2 {
        return 0.0;
    }
    let n = n as f32;
    skew * (n / (e as f32 + 1.0)).ln() / n.ln()
}

/// Generates `rows` rows starting at `first_row` into `dst` (`rows * row_bytes` bytes).
fn fill_rows(
    t: &PlannedTensor,
    key: u64,
    first_row: u64,
    dst: &mut [u8],
    row_bytes: usize,
) -> Result<(), DevDataError> {
    let row_elems = t.ne[0] as usize;
    let mut scratch = vec![0.0f32; row_elems];
    for (i, out) in dst.chunks_exact_mut(row_bytes).enumerate() {
        fill_row(key, t.init, first_row + i as u64, &mut scratch);
        synthesize_row(t.ty, &scratch, out)?;
    }
    Ok(())
}

/// Generates one chunk with up to `threads` threads.
fn fill_chunk(
    t: &PlannedTensor,
    key: u64,
    first_row: u64,
    dst: &mut [u8],
    row_bytes: usize,
    threads: usize,
) -> Result<(), DevDataError> {
    let rows = dst.len() / row_bytes;
    if threads <= 1 || rows < 2 || rows * t.ne[0] as usize <= PARALLEL_ELEMS_MIN {
        return fill_rows(t, key, first_row, dst, row_bytes);
    }
    let rows_per_thread = rows.div_ceil(threads);
    std::thread::scope(|s| {
        let handles: Vec<_> = dst
            .chunks_mut(rows_per_thread * row_bytes)
            .enumerate()
            .map(|(i, part)| {
                let start = first_row + (i * rows_per_thread) as u64;
                s.spawn(move || fill_rows(t, key, start, part, row_bytes))
            })
            .collect();
        handles.into_iter().try_for_each(|h| {
            h.join()
                .unwrap_or_else(|_| Err(DevDataError::Synth("a generator thread panicked".into())))
        })
    })
}

/// Generates every tensor of `plan` in order and streams it into `data`, then finishes the
/// file. Returns the file size in bytes. On error the partial file is deleted.
pub fn write_tensors(
    mut data: GgufDataWriter,
    plan: &[PlannedTensor],
    seed: u64,
    threads: usize,
) -> Result<u64, DevDataError> {
    let (tx, rx) = sync_channel::<Vec<u8>>(CHUNKS_IN_FLIGHT);
    let (free_tx, free_rx) = sync_channel::<Vec<u8>>(CHUNKS_IN_FLIGHT + 1);
    std::thread::scope(|s| {
        let writer = s.spawn(move || {
            for buf in rx {
                if let Err(e) = data.write_tensor_data(&buf) {
                    return Err((e.into(), Some(Box::new(data))));
                }
                // The pool is bounded; a full pool just drops the buffer.
                let _ = free_tx.try_send(buf);
            }
            if data.current_tensor().is_some() {
                // The producer stopped early: its error is the one to report.
                return Err((
                    DevDataError::Synth("generation stopped".into()),
                    Some(Box::new(data)),
                ));
            }
            data.finish().map_err(|e| (DevDataError::from(e), None))
        });
        let produced = (|| -> Result<(), DevDataError> {
            for t in plan {
                let row_bytes = t.ty.row_bytes(t.ne[0] as usize)?;
                let rows: u64 = t.ne[1..].iter().product();
                let rows_per_chunk = (CHUNK_BYTES_TARGET / row_bytes).max(1) as u64;
                let key = tensor_key(seed, &t.name);
                let mut first = 0u64;
                while first < rows {
                    let n = rows_per_chunk.min(rows - first) as usize;
                    let mut buf = free_rx.try_recv().unwrap_or_default();
                    buf.clear();
                    buf.resize(n * row_bytes, 0);
                    fill_chunk(t, key, first, &mut buf, row_bytes, threads)?;
                    if tx.send(buf).is_err() {
                        return Ok(()); // the writer failed; its error is reported below
                    }
                    first += n as u64;
                }
            }
            Ok(())
        })();
        drop(tx);
        let written = writer.join().unwrap_or_else(|_| {
            Err((
                DevDataError::Synth("the writer thread panicked".into()),
                None,
            ))
        });
        match (produced, written) {
            (Ok(()), Ok(bytes)) => Ok(bytes),
            (Err(e), Err((_, data))) | (Ok(()), Err((e, data))) => {
                if let Some(d) = data {
                    d.abandon();
                }
                Err(e)
            }
            (Err(e), Ok(_)) => Err(e),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_deterministic_and_scaled() {
        let key = tensor_key(7, "blk.0.attn_q_a.weight");
        let mut a = vec![0.0f32; 4096];
        let mut b = vec![0.0f32; 4096];
        fill_row(key, Init::Normal { std: 0.5 }, 3, &mut a);
        fill_row(key, Init::Normal { std: 0.5 }, 3, &mut b);
        assert_eq!(a, b);
        let mean = a.iter().sum::<f32>() / a.len() as f32;
        let var = a.iter().map(|x| (x - mean) * (x - mean)).sum::<f32>() / a.len() as f32;
        assert!(mean.abs() < 0.03, "mean {mean}");
        assert!((var.sqrt() - 0.5).abs() < 0.03, "std {}", var.sqrt());
        fill_row(key, Init::Normal { std: 0.5 }, 4, &mut b);
        assert_ne!(a, b, "rows differ");
        assert_ne!(tensor_key(7, "a"), tensor_key(7, "b"));
        assert_ne!(tensor_key(7, "a"), tensor_key(8, "a"));
    }

    #[test]
    fn output_head_zeroes_pad_rows() {
        let init = Init::OutputHead {
            std: 1.0,
            pad_rows: (2, 4),
        };
        let mut r = vec![0.0f32; 64];
        for row in 0..6 {
            fill_row(9, init, row, &mut r);
            assert_eq!(
                r.iter().all(|&x| x == 0.0),
                (2..4).contains(&row),
                "row {row}"
            );
        }
    }

    #[test]
    fn router_bias_favours_low_experts() {
        let mut b = vec![0.0f32; 384];
        fill_row(
            1,
            Init::RouterBias {
                skew: 0.5,
                noise: 0.0,
            },
            0,
            &mut b,
        );
        assert!((b[0] - 0.5).abs() < 1e-6);
        assert!(b[383].abs() < 1e-6);
        assert!(b.windows(2).all(|w| w[0] > w[1]));
        fill_row(
            1,
            Init::RouterBias {
                skew: 0.0,
                noise: 0.0,
            },
            0,
            &mut b,
        );
        assert!(b.iter().all(|&x| x == 0.0));
    }
}
