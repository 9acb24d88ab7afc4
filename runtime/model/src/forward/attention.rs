//! MLA attention (spec §2.2): the cache holds only the normalized latent `c` and the roped
//! shared key. This file computes the absorbed form: `attn_k_b` is folded into the query and
//! `attn_v_b` applied to the attention-weighted latent. Fast mode's prompt tokens, but a
//! prompt's short tail, take the decompressed form instead (`attention_prompt.rs`, see
//! [`super::TokenKind`]); a chunk holding both splits its rows between the forms.
//!
//! The per-head query absorption and value projection are matmuls, one job per head. The
//! attention proper, absorbed form in both modes (every head scores the same latent rows, so
//! the cache is read as one key/value matrix shared by all heads; decompressing per-head keys
//! would multiply the bytes read by the head count for no saving in a prompt chunk's work):
//! - Exact: every (head, new position) pair as one job on the compute team, a two-pass softmax
//!   over its whole score row, computed exactly as it would be alone (the reference bits).
//! - Fast: flash-style tiles ([`moe_kernels::flash_attend`]): blocks of
//!   [`FLASH_ROWS_PER_JOB`] query rows (heads × new tokens) against ranges of
//!   [`FLASH_SPLIT_POSITIONS`] cache positions, one job each, online softmax within a range
//!   and a merge across ranges, so decode at depth is split over the cache and a prompt
//!   chunk reads each cache row once per block of rows. Scratch is O(rows), never
//!   O(rows × context). Results depend only on each row and the cache, not on the thread
//!   count or how a prompt was chunked.

use moe_kernels::{
    flash_attend, num_threads, run_jobs, FlashState, NumericMode, MATMUL_PARALLEL_MIN_MACS,
};

use super::attention_prompt;
use super::ffn_region::{keep_first_error, take_error};
use super::layer_compute::push_latent_rows;
use super::ops::{dot, rms_norm_inplace, softmax_inplace};
use super::{KvCache, TokenKind};
use crate::config::LATENT_NORM_EPS;
use crate::model::Model;
use crate::ModelError;

/// Multiply-adds of the score and context loops below which attention stays on the calling
/// thread (handing (head, position) pairs to the pool costs more than it saves).
pub const ATTENTION_PARALLEL_MIN_MACS: usize = 1 << 16;
/// Query rows (heads × new tokens) of one flash job (fast mode).
pub const FLASH_ROWS_PER_JOB: usize = 16;
/// Cache positions of one flash job (fast mode): decode splits the cache into ranges of this
/// (64: a decode step at depth 256 is four jobs, enough for the threads of a small machine;
/// each merge costs one rescale of a row block's accumulators, under 1% of a range's work).
/// Fixed, never derived from the thread count or the rows, so the bits do not depend on them.
pub const FLASH_SPLIT_POSITIONS: usize = 64;

/// Attention of layer `l` for `t` consecutive new tokens of one sequence starting at
/// `cache.len()`, of kind `kind`: `x` is the normalized input `[t, D]`, `out` receives
/// `[t, D]`. Appends the new positions to the cache's layer `l` (committed by the caller
/// after the last layer).
pub fn attention(
    model: &Model,
    l: usize,
    x: &[f32],
    t: usize,
    cache: &mut KvCache,
    kind: TokenKind,
    out: &mut [f32],
) -> Result<(), ModelError> {
    attention_with(
        model,
        l,
        x,
        t,
        cache,
        kind,
        out,
        ATTENTION_PARALLEL_MIN_MACS,
    )
}

/// [`attention`] with the size from which the (head, position) jobs go to the pool.
#[allow(clippy::too_many_arguments)] // attention's own, plus the pool threshold
fn attention_with(
    model: &Model,
    l: usize,
    x: &[f32],
    t: usize,
    cache: &mut KvCache,
    kind: TokenKind,
    out: &mut [f32],
    parallel_min_macs: usize,
) -> Result<(), ModelError> {
    let c = &model.cfg;
    let w = &model.layers[l].attn;
    let (h, dn, dr, dv, lkv) = (c.n_heads, c.qk_nope, c.qk_rope, c.v_head, c.kv_lora_rank);
    let qk = dn + dr;
    let pos0 = cache.len();

    // q = q_b(norm(q_a(x))) : [t, H*(dn+dr)]
    let mut q = vec![0f32; t * h * qk];
    match &w.q_a {
        Some(q_a) => {
            let mut cq = vec![0f32; t * q_a.rows()];
            model.mat(q_a)?.matmul(x, t, &mut cq)?;
            rms_norm_inplace(&mut cq, &w.q_a_norm, LATENT_NORM_EPS);
            model.mat(&w.q_b)?.matmul(&cq, t, &mut q)?;
        }
        None => model.mat(&w.q_b)?.matmul(x, t, &mut q)?,
    }

    // [c | k_rot] = kv_a(x) : [t, Lkv+dr]; c normalized, k_rot roped; appended to the cache.
    let mut kv = vec![0f32; t * (lkv + dr)];
    model.mat(&w.kv_a)?.matmul(x, t, &mut kv)?;
    push_latent_rows(model, l, &mut kv, pos0, cache);

    let scale = c.attn_scale();
    // q_rot roped in place, every head of every token (both forms read it).
    for (i, qi) in q.chunks_exact_mut(h * qk).enumerate() {
        for qh in qi.chunks_exact_mut(qk) {
            model.rope.apply(&mut qh[dn..], pos0 + i);
        }
    }
    // Rows before `split` take the decompressed form (fast mode's prompt tokens but a short
    // tail, `attention_prompt.rs`), the others the absorbed one: o = [t, H*dv].
    // The decompression weights are looked up only for a chunk with such rows.
    let decompressed = match kind {
        TokenKind::Prompt { len } => {
            model.prompt_form().absorbed_from(len).clamp(pos0, pos0 + t) - pos0
        }
        TokenKind::Generated => 0,
    };
    let weights = (decompressed > 0)
        .then(|| attention_prompt::PromptWeights::of(model, l))
        .flatten();
    let split = if weights.is_some() { decompressed } else { 0 };
    let mut o = vec![0f32; t * h * dv];
    let (o_dec, o_abs) = o.split_at_mut(split * h * dv);
    if let Some(weights) = weights {
        let dims = attention_prompt::Dims::of(c);
        let q_dec = &q[..split * h * qk];
        attention_prompt::attend(&weights, q_dec, (pos0, split), cache, l, dims, scale, o_dec)?;
    }
    if split < t {
        let q_abs_rows = &q[split * h * qk..];
        let rows = (pos0 + split, t - split);
        absorbed(model, l, q_abs_rows, rows, cache, parallel_min_macs, o_abs)?;
    }
    model.mat(&w.output)?.matmul(&o, t, out)?;
    Ok(())
}

/// The absorbed form for `t` new tokens at positions `pos0..pos0 + t` (already in layer `l`
/// of `cache`) with queries `q` (`[t, H, dn + dr]`, q_rot roped): `o` receives `[t, H·dv]`.
fn absorbed(
    model: &Model,
    l: usize,
    q: &[f32],
    (pos0, t): (usize, usize),
    cache: &KvCache,
    parallel_min_macs: usize,
    o: &mut [f32],
) -> Result<(), ModelError> {
    let c = &model.cfg;
    let w = &model.layers[l].attn;
    let (h, dn, dr, dv, lkv) = (c.n_heads, c.qk_nope, c.qk_rope, c.v_head, c.kv_lora_rank);
    let qk = dn + dr;
    let scale = c.attn_scale();
    // q_abs[head][i] = Wkb_head · q_nope[i] : [H, t, Lkv].
    let mut q_abs = vec![0f32; h * t * lkv];
    let heads: Vec<_> = q_abs.chunks_exact_mut(t * lkv).enumerate().collect();
    per_head(heads, h * t * lkv * dn, |(head, q_abs_h)| {
        let mut q_nope = vec![0f32; t * dn];
        for i in 0..t {
            let src = &q[(i * h + head) * qk..(i * h + head) * qk + dn];
            q_nope[i * dn..(i + 1) * dn].copy_from_slice(src);
        }
        Ok(model.head_mat(&w.k_b, head)?.matmul(&q_nope, t, q_abs_h)?)
    })?;
    // ctx[head][i] = softmax(scores) · c over positions 0..=pos0+i.
    let mut ctx = vec![0f32; h * t * lkv];
    if model.mode() == NumericMode::Fast {
        let (q_cat, limits) = flash_queries(q, &q_abs, (h, t, dn, qk, lkv), pos0);
        context_flash(&q_cat, lkv + dr, &limits, cache, l, lkv, scale, &mut ctx);
    } else {
        context_exact(
            q,
            &q_abs,
            cache,
            l,
            (h, t, dn, qk, lkv),
            pos0,
            scale,
            parallel_min_macs,
            &mut ctx,
        );
    }
    // o[i][head] = Wvb_head · ctx[head][i] : [t, H*dv]
    let mut o_heads = vec![0f32; h * t * dv];
    let heads: Vec<_> = ctx
        .chunks_exact(t * lkv)
        .zip(o_heads.chunks_exact_mut(t * dv))
        .enumerate()
        .collect();
    per_head(heads, h * t * lkv * dv, |(head, (ctx_h, o_h))| {
        Ok(model.head_mat(&w.v_b, head)?.matmul(ctx_h, t, o_h)?)
    })?;
    for (head, o_h) in o_heads.chunks_exact(t * dv).enumerate() {
        for i in 0..t {
            o[(i * h + head) * dv..(i * h + head + 1) * dv]
                .copy_from_slice(&o_h[i * dv..(i + 1) * dv]);
        }
    }
    Ok(())
}

/// Runs one job per head (the per-head query absorption or value projection): on the team
/// when the heads' `macs` reach [`MATMUL_PARALLEL_MIN_MACS`] and there are at least as many
/// heads as threads (each head's matmul then runs on its job's thread), else head by head
/// with each matmul threaded inside. A head's bits do not depend on which.
fn per_head<J: Send>(
    jobs: Vec<J>,
    macs: usize,
    work: impl Fn(J) -> Result<(), ModelError> + Sync,
) -> Result<(), ModelError> {
    let threads = num_threads();
    if macs < MATMUL_PARALLEL_MIN_MACS || jobs.len() < threads {
        return jobs.into_iter().try_for_each(work);
    }
    let failed = std::sync::Mutex::new(None);
    run_jobs(jobs, threads, |job| keep_first_error(&failed, work(job)));
    take_error(failed)
}

/// Exact mode's attention proper: every (head, i) on the pool at once, each computed exactly
/// as alone (the same bits on any thread count).
#[allow(clippy::too_many_arguments)] // the shapes of one layer's attention
fn context_exact(
    q: &[f32],
    q_abs: &[f32],
    cache: &KvCache,
    l: usize,
    (h, t, dn, qk, lkv): (usize, usize, usize, usize, usize),
    pos0: usize,
    scale: f32,
    parallel_min_macs: usize,
    ctx: &mut [f32],
) {
    let dr = qk - dn;
    let stride = lkv + dr;
    // The layer's rows as f32: the cache itself when it is f32 (the reference), else widened
    // once here (linear in the context).
    let rows = cache.layer_f32(l, 0..pos0 + t);
    let row = |s: usize| rows[s * stride..(s + 1) * stride].split_at(lkv);
    let one = |scores: &mut Vec<f32>, (k, acc): (usize, &mut [f32])| {
        let (head, i) = (k / t, k % t);
        let q_rot = &q[(i * h + head) * qk + dn..(i * h + head + 1) * qk];
        let qa = &q_abs[k * lkv..(k + 1) * lkv];
        let n_ctx = pos0 + i + 1;
        scores.clear();
        for s in 0..n_ctx {
            let (cs, ks) = row(s);
            scores.push((dot(qa, cs) + dot(q_rot, ks)) * scale);
        }
        softmax_inplace(scores);
        acc.fill(0.0);
        for (s, &p) in scores.iter().enumerate() {
            let (cs, _) = row(s);
            for (a, &v) in acc.iter_mut().zip(cs) {
                *a += p * v;
            }
        }
    };
    let work = h * t * (pos0 + t) * (lkv + dr);
    if work < parallel_min_macs {
        let mut scores = Vec::with_capacity(pos0 + t);
        ctx.chunks_exact_mut(lkv)
            .enumerate()
            .for_each(|job| one(&mut scores, job));
    } else {
        let jobs: Vec<_> = ctx.chunks_exact_mut(lkv).enumerate().collect();
        run_jobs(jobs, num_threads(), |job| {
            one(&mut Vec::with_capacity(pos0 + t), job)
        });
    }
}

/// The flash rows of a chunk: row `k = head·t + i` is `[absorbed query | roped query]` of
/// head `head` and new token `i`, which sees positions `0..pos0 + i + 1`.
fn flash_queries(
    q: &[f32],
    q_abs: &[f32],
    (h, t, dn, qk, lkv): (usize, usize, usize, usize, usize),
    pos0: usize,
) -> (Vec<f32>, Vec<usize>) {
    let kdim = lkv + qk - dn;
    let mut q_cat = vec![0f32; h * t * kdim];
    let mut limits = vec![0usize; h * t];
    for (k, row) in q_cat.chunks_exact_mut(kdim).enumerate() {
        let (head, i) = (k / t, k % t);
        row[..lkv].copy_from_slice(&q_abs[k * lkv..(k + 1) * lkv]);
        row[lkv..].copy_from_slice(&q[(i * h + head) * qk + dn..(i * h + head + 1) * qk]);
        limits[k] = pos0 + i + 1;
    }
    (q_cat, limits)
}

/// Fast mode's attention proper: flash tiles of [`FLASH_ROWS_PER_JOB`] rows ×
/// [`FLASH_SPLIT_POSITIONS`] positions on the pool, merged per row block in range order.
/// `q_cat` is `[rows, kdim]` (absorbed query | roped query), `limits[r]` the positions row `r`
/// sees; `ctx` receives `[rows, lkv]`.
#[allow(clippy::too_many_arguments)] // the shapes of one layer's attention
fn context_flash(
    q_cat: &[f32],
    kdim: usize,
    limits: &[usize],
    cache: &KvCache,
    l: usize,
    lkv: usize,
    scale: f32,
    ctx: &mut [f32],
) {
    let rows = limits.len();
    let jobs: Vec<(usize, usize)> = (0..rows.div_ceil(FLASH_ROWS_PER_JOB))
        .flat_map(|b| {
            let end = rows.min((b + 1) * FLASH_ROWS_PER_JOB);
            let seen = limits[b * FLASH_ROWS_PER_JOB..end]
                .iter()
                .copied()
                .max()
                .unwrap_or(0);
            (0..seen.div_ceil(FLASH_SPLIT_POSITIONS)).map(move |s| (b, s))
        })
        .collect();
    let mut states: Vec<Option<FlashState>> = jobs.iter().map(|_| None).collect();
    let tasks: Vec<_> = jobs.iter().zip(&mut states).collect();
    run_jobs(tasks, num_threads(), |(&(b, s), slot)| {
        let r = b * FLASH_ROWS_PER_JOB..rows.min((b + 1) * FLASH_ROWS_PER_JOB);
        let lim = &limits[r.clone()];
        let seen = lim.iter().copied().max().unwrap_or(0);
        let p = s * FLASH_SPLIT_POSITIONS..seen.min((s + 1) * FLASH_SPLIT_POSITIONS);
        let mut state = FlashState::new(r.len(), lkv);
        let q = &q_cat[r.start * kdim..r.end * kdim];
        flash_attend(
            q,
            lim,
            cache.layer_rows(l, p.clone()),
            p.start,
            scale,
            &mut state,
        );
        *slot = Some(state);
    });
    let mut merged: Option<(usize, FlashState)> = None;
    let flush = |done: Option<(usize, FlashState)>, ctx: &mut [f32]| {
        if let Some((b, state)) = done {
            let r = b * FLASH_ROWS_PER_JOB..rows.min((b + 1) * FLASH_ROWS_PER_JOB);
            state.finish(&mut ctx[r.start * lkv..r.end * lkv]);
        }
    };
    for (&(b, _), state) in jobs.iter().zip(states.into_iter().flatten()) {
        match &mut merged {
            Some((mb, m)) if *mb == b => m.merge(&state),
            _ => flush(merged.replace((b, state)), ctx),
        }
    }
    flush(merged, ctx);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The pool path gives the same bits as the calling thread alone, for a prompt chunk at
    /// several cache lengths (including ones that are not multiples of anything) and a decode
    /// step, on every layer of the tiny reference model.
    #[test]
    fn pooled_attention_equals_sequential_attention_bit_for_bit() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../../shared/fixtures/kimi-k25-tiny/kimi-k25-tiny-Q8_0.gguf");
        let model = Model::open(&path).expect("the tiny fixture model");
        let d = model.cfg.n_embd;
        let x_of = |t: usize, seed: usize| -> Vec<f32> {
            (0..t * d)
                .map(|i| (((i * 7919 + seed * 104_729) % 2003) as f32 / 1001.5 - 1.0) * 0.5)
                .collect()
        };
        for (pos0, t) in [(0usize, 7usize), (13, 5), (61, 1), (100, 19)] {
            for l in 0..model.cfg.n_layers {
                let mut caches = [
                    KvCache::for_model(&model, 256),
                    KvCache::for_model(&model, 256),
                ];
                let mut outs = [vec![0f32; t * d], vec![0f32; t * d]];
                for (k, (cache, out)) in caches.iter_mut().zip(&mut outs).enumerate() {
                    let threshold = if k == 0 { usize::MAX } else { 0 };
                    if pos0 > 0 {
                        let mut prefix_out = vec![0f32; pos0 * d];
                        attention_with(
                            &model,
                            l,
                            &x_of(pos0, 1),
                            pos0,
                            cache,
                            TokenKind::Prompt { len: pos0 + t },
                            &mut prefix_out,
                            threshold,
                        )
                        .unwrap();
                        cache.commit(pos0);
                    }
                    attention_with(
                        &model,
                        l,
                        &x_of(t, 2),
                        t,
                        cache,
                        TokenKind::Prompt { len: pos0 + t },
                        out,
                        threshold,
                    )
                    .unwrap();
                }
                let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                assert_eq!(
                    bits(&outs[0]),
                    bits(&outs[1]),
                    "layer {l}, pos0 {pos0}, t {t}"
                );
            }
        }
    }

    /// Fast mode's flash tiles give exact mode's attention up to rounding, for decode and
    /// prompt chunks at depths that split the cache into several ranges (the merge).
    #[test]
    fn flash_context_matches_exact_context() {
        let (h, dn, dr, lkv) = (3usize, 8usize, 4usize, 40usize);
        let qk = dn + dr;
        let shape = moe_kernels::KvRowShape {
            latent: lkv,
            rope: dr,
        };
        let val = |i: usize, seed: usize| {
            (((i * 7919 + seed * 104_729) % 2003) as f32 / 1001.5 - 1.0) * 0.5
        };
        for (pos0, t) in [(0usize, 9usize), (300, 1), (530, 21)] {
            let n = pos0 + t;
            let mut cache = KvCache::with_shape(1, shape, moe_kernels::KvType::F32, n);
            for p in 0..n {
                let c: Vec<f32> = (0..lkv).map(|i| val(p * 97 + i, 1)).collect();
                let k: Vec<f32> = (0..dr).map(|i| val(p * 89 + i, 2)).collect();
                cache.push(0, &c, &k);
            }
            let q: Vec<f32> = (0..t * h * qk).map(|i| val(i, 3)).collect();
            let q_abs: Vec<f32> = (0..h * t * lkv).map(|i| val(i, 4)).collect();
            let scale = 0.2;
            let mut exact = vec![0f32; h * t * lkv];
            context_exact(
                &q,
                &q_abs,
                &cache,
                0,
                (h, t, dn, qk, lkv),
                pos0,
                scale,
                0,
                &mut exact,
            );
            let (q_cat, limits) = flash_queries(&q, &q_abs, (h, t, dn, qk, lkv), pos0);
            let mut flash = vec![0f32; h * t * lkv];
            context_flash(&q_cat, lkv + dr, &limits, &cache, 0, lkv, scale, &mut flash);
            for (j, (a, b)) in exact.iter().zip(&flash).enumerate() {
                assert!(
                    (a - b).abs() < 1e-5,
                    "pos0 {pos0}, t {t}, value {j}: {a} vs {b}"
                );
            }
        }
    }

    /// The tiny fixture model (Q8_0) in fast mode.
    fn tiny_fast_model() -> Model {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../../shared/fixtures/kimi-k25-tiny/kimi-k25-tiny-Q8_0.gguf");
        Model::open(&path)
            .expect("the tiny fixture model")
            .with_mode(NumericMode::Fast)
    }

    /// Fast mode's prompt tokens (the decompressed form, `attention_prompt.rs`): a prompt
    /// cut into chunks at any point gives each token the bits of the uncut prompt (what
    /// prefix reuse relies on), over more than one decompressed range; and the result is the
    /// absorbed form's (generated tokens) up to rounding.
    #[test]
    fn prompt_form_is_chunk_invariant_and_close_to_the_absorbed_form() {
        let model = tiny_fast_model();
        assert!(
            super::attention_prompt::PromptWeights::of(&model, 0).is_some(),
            "fast mode made the transposed k_b"
        );
        let d = model.cfg.n_embd;
        let t = super::attention_prompt::DECOMPRESS_POSITIONS + 45;
        let x: Vec<f32> = (0..t * d)
            .map(|i| (((i * 7919) % 2003) as f32 / 1001.5 - 1.0) * 0.5)
            .collect();
        let run = |cuts: &[usize], kind: TokenKind| {
            let mut cache = KvCache::for_model(&model, 1024);
            let mut out = vec![0f32; t * d];
            let mut at = 0;
            for &end in cuts.iter().chain(std::iter::once(&t)) {
                let n = end - at;
                let rows = at * d..end * d;
                attention(
                    &model,
                    0,
                    &x[rows.clone()],
                    n,
                    &mut cache,
                    kind,
                    &mut out[rows],
                )
                .unwrap();
                cache.commit(n);
                at = end;
            }
            out
        };
        let prompt = TokenKind::Prompt { len: t };
        let whole = run(&[], prompt);
        for cuts in [vec![1], vec![17, 200], vec![255, 256, 257]] {
            let cut = run(&cuts, prompt);
            let same = whole
                .iter()
                .zip(&cut)
                .all(|(a, b)| a.to_bits() == b.to_bits());
            assert!(same, "prompt cut at {cuts:?} changed bits");
        }
        let absorbed = run(&[], TokenKind::Generated);
        let (mut err, mut mag) = (0f64, 0f64);
        for (a, b) in whole.iter().zip(&absorbed) {
            err += (*a as f64 - *b as f64).powi(2);
            mag += (*b as f64).powi(2);
        }
        let rel = (err / mag.max(1e-30)).sqrt();
        assert!(
            rel < 2e-2,
            "decompressed vs absorbed: relative RMS difference {rel}"
        );
    }

    /// Fast mode's choice of form for a prompt's short tail depends only on the prompt's
    /// length, and what [`crate::forward::PromptForm::reusable`] promises holds: a prompt of `2G + 1` tokens
    /// (its one-token tail absorbed) and a prompt of `3G` tokens starting with the same
    /// inputs (no tail: all decompressed) agree bit for bit on the first `2G` positions, and
    /// differ on the tail position (so a prefix cache keeping it would change results).
    #[test]
    fn prompt_tail_is_absorbed_and_the_reusable_positions_keep_their_bits() {
        use super::attention_prompt::FORM_GROUP_TOKENS as G;
        let model = tiny_fast_model();
        let form = model.prompt_form();
        assert!(
            matches!(form, crate::forward::PromptForm::Decompressed { min_tail } if min_tail > 1),
            "{form:?}"
        );
        let (short, long) = (2 * G + 1, 3 * G);
        assert_eq!(form.absorbed_from(short), 2 * G);
        assert_eq!(form.reusable(short), 2 * G);
        assert_eq!(form.absorbed_from(long), long);
        let d = model.cfg.n_embd;
        let x: Vec<f32> = (0..long * d)
            .map(|i| (((i * 7919) % 2003) as f32 / 1001.5 - 1.0) * 0.5)
            .collect();
        let run = |len: usize| {
            let mut cache = KvCache::for_model(&model, 1024);
            let mut out = vec![0f32; len * d];
            let kind = TokenKind::Prompt { len };
            attention(&model, 0, &x[..len * d], len, &mut cache, kind, &mut out).unwrap();
            out
        };
        let (a, b) = (run(short), run(long));
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&a[..2 * G * d]), bits(&b[..2 * G * d]));
        assert_ne!(
            bits(&a[2 * G * d..short * d]),
            bits(&b[2 * G * d..short * d]),
            "the absorbed tail position has the decompressed form's bits"
        );
    }
}
