//! Every reference fixture GGUF with its routed experts computed on Vulkan device 0 (lavapipe
//! in CI): per case, the teacher-forced logits within `LOGIT_ABS_TOL` of the CPU's exact
//! forward and of the reference, routing identical to the reference at every MoE layer and
//! position, and the 16-token greedy continuation (KV-cache decode, one token per step, so
//! one route list per call) identical to the reference's. The expert stacks are uploaded in
//! small chunks so that the multi-buffer path is exercised too.

mod common;

use std::sync::Arc;

use moe_devdata::fixtures::{all_fixture_cases, ids};
use moe_devdata::npy;
use moe_model::forward::{
    ComputeHandle, KvCache, LocalExperts, NoObserver, Observer, Routing, SeqInput, TokenKind,
};
use moe_model::model::Model;
use moe_vulkan::VulkanCompute;

/// Largest accepted |logit difference| against the CPU exact forward and the reference.
const LOGIT_ABS_TOL: f32 = 1e-4;
/// Expert chunk size for the upload (small, so each kq stack spans several buffers).
const TEST_CHUNK_BYTES: u64 = 4 << 20;

#[derive(Default)]
struct Capture {
    routing: Vec<(usize, Routing)>,
}

impl Observer for Capture {
    fn routing(&mut self, layer: usize, routing: &Routing) {
        self.routing.push((layer, routing.clone()));
    }
}

fn argmax(v: &[f32]) -> usize {
    v.iter()
        .enumerate()
        .fold(
            (0, f32::NEG_INFINITY),
            |b, (i, &x)| if x > b.1 { (i, x) } else { b },
        )
        .0
}

fn prompt_logits(
    model: &Model,
    experts: &mut LocalExperts,
    tokens: &[u32],
    obs: &mut dyn Observer,
) -> Vec<f32> {
    let mut cache = KvCache::for_model(model, 4096);
    model
        .forward(
            &mut [SeqInput {
                cache: &mut cache,
                tokens,
                all_logits: true,
                kind: TokenKind::Prompt { len: tokens.len() },
            }],
            experts,
            obs,
        )
        .expect("forward")
        .remove(0)
}

fn greedy(model: &Model, compute: &ComputeHandle, tokens: &[u32], n: usize) -> Vec<u32> {
    let mut experts = LocalExperts::on(compute.clone());
    let mut cache = KvCache::for_model(model, 4096);
    let step = |cache: &mut KvCache, experts: &mut LocalExperts, t: &[u32], kind| {
        model
            .forward(
                &mut [SeqInput {
                    cache,
                    tokens: t,
                    all_logits: false,
                    kind,
                }],
                experts,
                &mut NoObserver,
            )
            .expect("forward")
            .remove(0)
    };
    let mut last = step(
        &mut cache,
        &mut experts,
        tokens,
        TokenKind::Prompt { len: tokens.len() },
    );
    let mut out = Vec::new();
    for _ in 0..n {
        let next = argmax(&last) as u32;
        out.push(next);
        last = step(&mut cache, &mut experts, &[next], TokenKind::Generated);
    }
    out
}

#[test]
fn every_fixture_matches_the_reference_with_experts_on_vulkan() {
    let Some(device) =
        common::device_or_skip("every_fixture_matches_the_reference_with_experts_on_vulkan")
    else {
        return;
    };
    let mut open: Option<(std::path::PathBuf, Model, ComputeHandle)> = None;
    let mut files = 0;
    for fc in all_fixture_cases().expect("the fixture manifests") {
        if open.as_ref().is_none_or(|(p, _, _)| *p != fc.gguf) {
            let model = Model::open(&fc.gguf).expect("fixture model");
            let vk = VulkanCompute::with_chunk_bytes(device.clone(), &model, TEST_CHUNK_BYTES)
                .expect("upload");
            println!(
                "{}: {:.1} MiB of experts uploaded",
                fc.gguf.display(),
                vk.uploaded_bytes() as f64 / 1048576.0
            );
            open = Some((fc.gguf.clone(), model, ComputeHandle(Arc::new(vk))));
            files += 1;
        }
        let Some((_, model, vk)) = &open else {
            unreachable!("opened above")
        };
        let (what, tokens, limit, vocab) = (&fc.what, &fc.tokens, fc.limit, model.cfg.vocab);
        let mut cap = Capture::default();
        let got = prompt_logits(model, &mut LocalExperts::on(vk.clone()), tokens, &mut cap);
        let cpu = prompt_logits(model, &mut LocalExperts::default(), tokens, &mut NoObserver);
        let reference = npy::read_f32(&fc.ref_dir.join(fc.json["logits"].as_str().unwrap()))
            .expect("reference logits");
        assert_eq!(reference.shape, vec![tokens.len(), vocab]);
        for (layer, r) in &cap.routing {
            let want = &fc.json["routing"][layer.to_string()];
            for pos in 0..limit {
                assert_eq!(
                    r.token(pos).0,
                    &ids(&want["experts"][pos], what).unwrap()[..],
                    "{what}: layer {layer} position {pos} routing"
                );
            }
        }
        let (mut vs_cpu, mut vs_ref, mut cpu_ref) = (0f32, 0f32, 0f32);
        for pos in 0..limit {
            let row = pos * vocab..(pos + 1) * vocab;
            assert_eq!(
                argmax(&got[row.clone()]),
                argmax(&reference.data[row.clone()]),
                "{what}: argmax at {pos}"
            );
            for ((g, c), r) in got[row.clone()]
                .iter()
                .zip(&cpu[row.clone()])
                .zip(&reference.data[row])
            {
                vs_cpu = vs_cpu.max((g - c).abs());
                vs_ref = vs_ref.max((g - r).abs());
                cpu_ref = cpu_ref.max((c - r).abs());
            }
        }
        let cont = if limit == tokens.len() {
            let want = ids(&fc.json["greedy_continuation"], what).unwrap();
            assert_eq!(
                greedy(model, vk, tokens, want.len()),
                want,
                "{what}: greedy continuation"
            );
            "identical"
        } else {
            "exempt (near tie)"
        };
        println!(
            "{what}: {limit}/{} positions, max|dlogit| vulkan-cpu {vs_cpu:.2e}, vulkan-ref {vs_ref:.2e} (cpu-ref {cpu_ref:.2e}), routing identical, continuation {cont}",
            tokens.len()
        );
        assert!(
            vs_cpu <= LOGIT_ABS_TOL && vs_ref <= LOGIT_ABS_TOL,
            "{what}: max |logit diff| vs CPU {vs_cpu:e}, vs reference {vs_ref:e} > {LOGIT_ABS_TOL:e}"
        );
    }
    assert_eq!(files, 4, "fixture GGUF files walked");
}
