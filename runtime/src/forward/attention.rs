//! MLA attention in its absorbed form (spec §2.2): the cache holds only the normalized latent
//! `c` and the roped shared key; `attn_k_b` is folded into the query and `attn_v_b` applied to
//! the attention-weighted latent.

use super::ops::{dot, rms_norm, rms_norm_inplace, softmax_inplace};
use super::KvCache;
use crate::config::LATENT_NORM_EPS;
use crate::model::Model;
use crate::RuntimeError;

/// Attention of layer `l` for `t` consecutive new tokens of one sequence starting at
/// `cache.len()`: `x` is the normalized input `[t, D]`, `out` receives `[t, D]`. Appends the
/// new positions to the cache's layer `l` (committed by the caller after the last layer).
pub fn attention(
    model: &Model,
    l: usize,
    x: &[f32],
    t: usize,
    cache: &mut KvCache,
    out: &mut [f32],
) -> Result<(), RuntimeError> {
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
    let mut latent = vec![0f32; lkv];
    for (i, row) in kv.chunks_exact_mut(lkv + dr).enumerate() {
        let (cpart, rpart) = row.split_at_mut(lkv);
        rms_norm(cpart, &w.kv_a_norm, LATENT_NORM_EPS, &mut latent);
        model.rope.apply(rpart, pos0 + i);
        cache.push(l, &latent, rpart);
    }

    let scale = c.attn_scale();
    let mut q_nope = vec![0f32; t * dn];
    let mut q_abs = vec![0f32; t * lkv];
    let mut ctx = vec![0f32; t * lkv];
    let mut o_h = vec![0f32; t * dv];
    let mut o = vec![0f32; t * h * dv];
    let mut scores = Vec::with_capacity(pos0 + t);
    for head in 0..h {
        for i in 0..t {
            let src = &mut q[(i * h + head) * qk..(i * h + head + 1) * qk];
            q_nope[i * dn..(i + 1) * dn].copy_from_slice(&src[..dn]);
            model.rope.apply(&mut src[dn..], pos0 + i);
        }
        // q_abs = Wkb_h · q_nope : [t, Lkv]
        model
            .expert_mat(&w.k_b, head)?
            .matmul(&q_nope, t, &mut q_abs)?;
        for i in 0..t {
            let q_rot = &q[(i * h + head) * qk + dn..(i * h + head + 1) * qk];
            let qa = &q_abs[i * lkv..(i + 1) * lkv];
            let n_ctx = pos0 + i + 1;
            scores.clear();
            for s in 0..n_ctx {
                let (cs, ks) = cache.get(l, s);
                scores.push((dot(qa, cs) + dot(q_rot, ks)) * scale);
            }
            softmax_inplace(&mut scores);
            let acc = &mut ctx[i * lkv..(i + 1) * lkv];
            acc.fill(0.0);
            for (s, &p) in scores.iter().enumerate() {
                let (cs, _) = cache.get(l, s);
                for (a, &v) in acc.iter_mut().zip(cs) {
                    *a += p * v;
                }
            }
        }
        // o_h = Wvb_h · ctx : [t, dv]
        model.expert_mat(&w.v_b, head)?.matmul(&ctx, t, &mut o_h)?;
        for i in 0..t {
            o[(i * h + head) * dv..(i * h + head + 1) * dv]
                .copy_from_slice(&o_h[i * dv..(i + 1) * dv]);
        }
    }
    model.mat(&w.output)?.matmul(&o, t, out)?;
    Ok(())
}
