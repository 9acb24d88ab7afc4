//! The CPU's routed-expert region (`forward/ffn_region.rs`: every expert's row blocks as
//! jobs of one pool, activations prepared once per expert, experts in waves) gives the bits
//! of the plain algorithm it replaced: each expert alone, gate and up and down through
//! `QMatrix::matmul` on its gathered tokens, outputs added into each token in ascending
//! expert order. Checked in both numeric modes, on one thread and on three, on the
//! k-quant fixtures (Q4_K_M and Q2_K mixes: gate, up and down of different types), with
//! enough routes to cross a wave boundary.

use moe_kernels::NumericMode;
use moe_model::forward::{CpuCompute, ExpertCompute, Route};
use moe_model::model::Model;

/// The replaced algorithm, written out with the public matmul.
fn plain(model: &Model, layer: usize, h: &[f32], routes: &[Route], out: &mut [f32]) {
    let moe = model.layers[layer].moe.as_ref().unwrap();
    let d = model.cfg.n_embd;
    for e in 0..model.cfg.n_experts {
        let toks: Vec<(usize, f32)> = routes
            .iter()
            .filter(|r| r.expert as usize == e)
            .map(|r| (r.token as usize, r.weight))
            .collect();
        if toks.is_empty() {
            continue;
        }
        let n = toks.len();
        let x: Vec<f32> = toks
            .iter()
            .flat_map(|&(t, _)| h[t * d..(t + 1) * d].iter().copied())
            .collect();
        let gate = model.expert_mat(&moe.gate_exps, e).unwrap();
        let f = gate.rows();
        let (mut g, mut u, mut y) = (vec![0f32; n * f], vec![0f32; n * f], vec![0f32; n * d]);
        gate.matmul(&x, n, &mut g).unwrap();
        let up = model.expert_mat(&moe.up_exps, e).unwrap();
        up.matmul(&x, n, &mut u).unwrap();
        for (gv, uv) in g.iter_mut().zip(&u) {
            *gv = *gv / (1.0 + (-*gv).exp()) * uv;
        }
        let down = model.expert_mat(&moe.down_exps, e).unwrap();
        down.matmul(&g, n, &mut y).unwrap();
        for (&(t, w), yr) in toks.iter().zip(y.chunks_exact(d)) {
            for (o, &v) in out[t * d..(t + 1) * d].iter_mut().zip(yr) {
                *o += w * v;
            }
        }
    }
}

#[test]
fn region_equals_expert_by_expert() {
    let dir = moe_devdata::fixtures::fixtures_dir().join("kimi-k25-kq");
    for file in ["kimi-k25-kq-Q4_K_M.gguf", "kimi-k25-kq-Q2_K.gguf"] {
        for mode in [NumericMode::Exact, NumericMode::Fast] {
            let model = Model::open(dir.join(file)).unwrap().with_mode(mode);
            let layer = (0..model.cfg.n_layers)
                .find(|&l| model.cfg.is_moe_layer(l))
                .unwrap();
            let d = model.cfg.n_embd;
            let n_experts = model.cfg.n_experts as u32;
            // 200 tokens x 8 routes: 1600 routes, more than one wave; tokens share experts
            // (a few popular ones) and use lone ones.
            let n_tokens = 200;
            let h: Vec<f32> = (0..n_tokens * d)
                .map(|i| ((i * 7919 % 2003) as f32 - 1001.0) / 700.0)
                .collect();
            let mut routes = Vec::new();
            for t in 0..n_tokens as u32 {
                let mut es: Vec<u32> = (0..8)
                    .map(|j| {
                        if j < 2 {
                            j
                        } else {
                            (t * 31 + j * 97) % n_experts
                        }
                    })
                    .collect();
                es.sort_unstable();
                es.dedup();
                for (j, e) in es.into_iter().enumerate() {
                    routes.push(Route {
                        token: t,
                        expert: e,
                        weight: 0.1 + 0.05 * j as f32,
                    });
                }
            }
            let mut want = vec![0.25f32; n_tokens * d];
            plain(&model, layer, &h, &routes, &mut want);
            for threads in [1, 3] {
                moe_kernels::set_num_threads(threads);
                let mut got = vec![0.25f32; n_tokens * d];
                CpuCompute
                    .apply_routes(&model, layer, &h, &routes, &mut got)
                    .unwrap();
                let same = want
                    .iter()
                    .zip(&got)
                    .all(|(a, b)| a.to_bits() == b.to_bits());
                assert!(same, "{file} {mode:?} threads {threads}: bits differ");
            }
            moe_kernels::set_num_threads(0);
        }
    }
}
