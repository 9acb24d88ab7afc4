//! Fast mode's attention for prompt tokens, in MLA's decompressed form: the cached latents
//! of a range of positions are multiplied out into per-head keys (`attn_k_b` transposed, made
//! at load) and values (`attn_v_b`), and every prompt row of the chunk attends to them with
//! the flash kernel, so a scored position costs `dn + dr` multiply-adds per head and a
//! weighted one `dv` (Kimi K2.5: 192 + 128), against `Lkv + dr` and `Lkv` (576 + 512) in the
//! absorbed form. The decompression costs `Lkv · (dn + dv)` per position and head, once per
//! chunk, so it pays from about `Lkv·(dn+dv) / saving` ≈ 170 rows (fewer at the
//! integer kernels' speed, which the decompression runs at); prompt chunks are up to 512.
//!
//! Decides: the position ranges ([`DECOMPRESS_POSITIONS`], aligned to absolute positions,
//! folded into each row's online softmax in order) and the job split (one flash job per
//! head and block of [`PROMPT_ROWS_PER_JOB`] rows, on the pool). A row's result depends only
//! on its query and the cache (the decompressed keys and values of a position depend only on
//! its latent; the ranges do not depend on the chunk), so a prompt gives the same bits
//! however it is chunked and whichever prefix was restored from the prefix cache.
//!
//! A row is `[q_nope (dn) | q_rot (dr)]` against a position's `[k_nope (dn) | k_rot (dr) |
//! v (dv)]` ([`flash_attend_split`]: keys first, values after them).
//!
//! Which prompt tokens take this form ([`PromptForm`]): a chunk of few rows over a deep cache
//! would pay the decompression of every cached position for little saving (one new token at
//! depth 4096 on the small preset: 50-120 ms against 3 ms absorbed), so the short tail of a
//! prompt takes the absorbed form. The choice must not depend on how the prompt is chunked or
//! which prefix was restored, so it is a function of the position and the prompt's length
//! only: prompts are cut into aligned groups of [`FORM_GROUP_TOKENS`]; a prompt's last,
//! partial group is absorbed when it holds fewer tokens than the break-even row count
//! ([`Dims::decompress_min_rows`]), every other prompt token decompressed.

use moe_kernels::{
    flash_attend_split, num_threads, run_jobs, FlashState, KvRowShape, KvRows, QMatrix,
};

use super::KvCache;
use crate::config::ModelConfig;
use crate::model::Model;
use crate::ModelError;

/// Cache positions decompressed at a time (ranges aligned to multiples of this).
pub const DECOMPRESS_POSITIONS: usize = 256;
/// Query rows (tokens of one head) of one flash job.
pub const PROMPT_ROWS_PER_JOB: usize = 16;
/// Prompt positions are grouped in aligned runs of this many for the choice of form (see the
/// module docs): a prompt's last partial group is its tail.
pub const FORM_GROUP_TOKENS: usize = 64;
/// Cost of a decompression multiply-add relative to a flash one: the decompression runs on
/// the integer matmul kernels, the flash kernel in f32. Measured on the small preset (pp N at
/// depth 4096, two threads): the decompressed form wins from 48-64 rows, where counting
/// multiply-adds alone says 85.
const DECOMPRESS_MAC_WEIGHT: f64 = 0.6;

/// Which prompt tokens fast mode computes in the decompressed form.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PromptForm {
    /// Every token absorbed (exact mode, or no decompression weights).
    Absorbed,
    /// Decompressed, except a prompt's last partial group of [`FORM_GROUP_TOKENS`] when it
    /// holds fewer than `min_tail` tokens.
    Decompressed {
        /// Fewest tokens of a prompt's last partial group computed decompressed.
        min_tail: usize,
    },
}

impl PromptForm {
    /// The first position of a prompt of `len` tokens computed in the absorbed form (`len`
    /// when none is): a function of `len` alone.
    pub fn absorbed_from(self, len: usize) -> usize {
        match self {
            PromptForm::Absorbed => 0,
            PromptForm::Decompressed { min_tail } => {
                let tail = len % FORM_GROUP_TOKENS;
                if tail < min_tail {
                    len - tail
                } else {
                    len
                }
            }
        }
    }

    /// The leading positions of a `len`-token prompt whose KV every longer prompt with the same
    /// first `len` tokens computes with the same bits (what a prefix cache may keep): all of
    /// them, except an absorbed tail, which a longer prompt may decompress.
    pub fn reusable(self, len: usize) -> usize {
        match self {
            PromptForm::Absorbed => len,
            PromptForm::Decompressed { .. } => self.absorbed_from(len),
        }
    }
}

/// A layer's attention shapes.
#[derive(Debug, Clone, Copy)]
pub(super) struct Dims {
    /// Heads.
    pub heads: usize,
    /// Non-roped key width per head (`qk_nope`).
    pub nope: usize,
    /// Roped key width (`qk_rope`, shared by the heads).
    pub rope: usize,
    /// Value width per head.
    pub value: usize,
    /// Latent width (`kv_lora_rank`).
    pub latent: usize,
}

impl Dims {
    /// The shapes of `cfg`'s attention.
    pub(super) fn of(cfg: &ModelConfig) -> Self {
        Self {
            heads: cfg.n_heads,
            nope: cfg.qk_nope,
            rope: cfg.qk_rope,
            value: cfg.v_head,
            latent: cfg.kv_lora_rank,
        }
    }

    /// Fewest prompt rows over which decompressing the cache pays: per head and position the
    /// absorbed form scores `Lkv + dr` and weighs `Lkv` values, the decompressed one `dn + dr`
    /// and `dv`, after decompressing `Lkv · (dn + dv)` (weighted by
    /// [`DECOMPRESS_MAC_WEIGHT`]). Kimi K2.5: 103 (above a group: its tails are always
    /// absorbed); the small preset: 52.
    pub fn decompress_min_rows(&self) -> usize {
        let absorbed = 2 * self.latent + self.rope;
        let decompressed = self.nope + self.rope + self.value;
        let per_position = (self.latent * (self.nope + self.value)) as f64 * DECOMPRESS_MAC_WEIGHT;
        match absorbed.checked_sub(decompressed) {
            Some(saving) if saving > 0 => (per_position / saving as f64).ceil() as usize,
            _ => usize::MAX,
        }
    }
}

/// The per-head matrices of one layer's decompression.
pub(super) struct PromptWeights<'a> {
    /// `attn_k_b` transposed: per head `[dn, Lkv]`.
    k_t: Vec<QMatrix<'a>>,
    /// `attn_v_b`: per head `[dv, Lkv]`.
    v_b: Vec<QMatrix<'a>>,
}

impl<'a> PromptWeights<'a> {
    /// Layer `l`'s, where the model made the transposed keys (fast mode, attention mapped).
    pub(super) fn of(model: &'a Model, l: usize) -> Option<Self> {
        let heads = model.cfg.n_heads;
        let v_stack = &model.layers.get(l)?.attn.v_b;
        let k_t = (0..heads)
            .map(|h| model.k_b_transposed(l, h))
            .collect::<Option<Vec<_>>>()?;
        let v_b = (0..heads)
            .map(|h| model.head_mat(v_stack, h).ok())
            .collect::<Option<Vec<_>>>()?;
        Some(Self { k_t, v_b })
    }
}

/// Rows `[t, H, dn + dr]` of queries `q` (q_rot roped) of tokens at positions
/// `pos0 .. pos0 + t` (whose rows layer `l` of `cache` already holds) attending causally
/// over layer `l` of `cache`: `o` receives `[t, H·dv]`.
#[allow(clippy::too_many_arguments)] // one layer's attention
pub(super) fn attend(
    w: &PromptWeights<'_>,
    q: &[f32],
    (pos0, t): (usize, usize),
    cache: &KvCache,
    l: usize,
    d: Dims,
    scale: f32,
    o: &mut [f32],
) -> Result<(), ModelError> {
    let Dims {
        heads: h,
        nope: dn,
        rope: dr,
        value: dv,
        latent: lkv,
    } = d;
    let (qk, width, stride) = (dn + dr, dv + dn + dr, lkv + dr);
    let n_ctx = pos0 + t;
    let shape = KvRowShape {
        latent: dn + dr,
        rope: dv,
    };
    // Query rows, head-major: row (head, i) = [q_nope | q_rot].
    let mut qh = vec![0f32; h * t * qk];
    for (k, row) in qh.chunks_exact_mut(qk).enumerate() {
        let (head, i) = (k / t, k % t);
        row.copy_from_slice(&q[(i * h + head) * qk..(i * h + head + 1) * qk]);
    }
    let limits: Vec<usize> = (0..t).map(|i| pos0 + i + 1).collect();
    let blocks = t.div_ceil(PROMPT_ROWS_PER_JOB);
    let block_rows = |b: usize| b * PROMPT_ROWS_PER_JOB..t.min((b + 1) * PROMPT_ROWS_PER_JOB);
    let mut states: Vec<FlashState> = (0..h * blocks)
        .map(|j| FlashState::new(block_rows(j % blocks).len(), dv))
        .collect();

    let mut latents = Vec::with_capacity(DECOMPRESS_POSITIONS * lkv);
    let mut kv = vec![0f32; h * DECOMPRESS_POSITIONS * width];
    let (mut ks, mut vs) = (
        vec![0f32; DECOMPRESS_POSITIONS * dn],
        vec![0f32; DECOMPRESS_POSITIONS * dv],
    );
    let mut s0 = 0;
    while s0 < n_ctx {
        let range = s0..n_ctx.min(s0 + DECOMPRESS_POSITIONS);
        let np = range.len();
        let rows = cache.layer_f32(l, range.clone());
        latents.clear();
        for r in rows.chunks_exact(stride) {
            latents.extend_from_slice(&r[..lkv]);
        }
        for (head, kvh) in kv
            .chunks_exact_mut(DECOMPRESS_POSITIONS * width)
            .enumerate()
        {
            w.k_t[head].matmul(&latents, np, &mut ks[..np * dn])?;
            w.v_b[head].matmul(&latents, np, &mut vs[..np * dv])?;
            for (j, dst) in kvh.chunks_exact_mut(width).take(np).enumerate() {
                dst[..dn].copy_from_slice(&ks[j * dn..(j + 1) * dn]);
                dst[dn..qk].copy_from_slice(&rows[j * stride + lkv..(j + 1) * stride]);
                dst[qk..].copy_from_slice(&vs[j * dv..(j + 1) * dv]);
            }
        }
        // Every (head, row block) that sees any of the range folds it in, on the pool.
        let kv = &kv;
        let jobs: Vec<_> = states
            .iter_mut()
            .enumerate()
            .filter(|(j, _)| limits[block_rows(j % blocks).end - 1] > range.start)
            .collect();
        run_jobs(jobs, num_threads(), |(j, state)| {
            let (head, r) = (j / blocks, block_rows(j % blocks));
            let kvh = &kv[head * DECOMPRESS_POSITIONS * width..][..np * width];
            let qr = &qh[(head * t + r.start) * qk..(head * t + r.end) * qk];
            flash_attend_split(
                qr,
                &limits[r],
                KvRows::from_f32(shape, kvh),
                qk,
                range.start,
                scale,
                state,
            );
        });
        s0 = range.end;
    }
    let mut rows_out = vec![0f32; PROMPT_ROWS_PER_JOB * dv];
    for (j, state) in states.iter().enumerate() {
        let (head, r) = (j / blocks, block_rows(j % blocks));
        state.finish(&mut rows_out[..r.len() * dv]);
        for (k, i) in r.enumerate() {
            o[(i * h + head) * dv..(i * h + head + 1) * dv]
                .copy_from_slice(&rows_out[k * dv..(k + 1) * dv]);
        }
    }
    Ok(())
}
