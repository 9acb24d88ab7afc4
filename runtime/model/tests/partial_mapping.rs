//! A process maps only the weights it computes: an expert node its own experts (and norms),
//! a router everything but the experts other nodes own.

use std::path::PathBuf;

use moe_model::forward::{CpuCompute, ExpertCompute, Route};
use moe_model::model::{Model, WeightSet};
use moe_model::LayerExperts;
use moe_model::ModelError;

fn fixture() -> PathBuf {
    moe_devdata::fixtures::fixtures_dir().join("kimi-k25-kq/kimi-k25-kq-Q4_K_M.gguf")
}

fn sets(model: &Model, text: &str) -> LayerExperts {
    let cfg = &model.cfg;
    LayerExperts::parse_uniform(text, cfg.n_experts, cfg.n_layers, |l| cfg.is_moe_layer(l)).unwrap()
}

#[test]
fn expert_node_maps_its_experts_and_computes_them_exactly() {
    let full = Model::open(fixture()).unwrap();
    let file_bytes = std::fs::metadata(fixture()).unwrap().len() as usize;
    let owned = sets(&full, "0-127");
    let node = Model::open_with(fixture(), &WeightSet::Experts { owned }).unwrap();

    // Experts 0-127 of the one MoE layer's three expert tensors, plus 1-D tensors.
    let moe = full.layers[1].moe.as_ref().unwrap();
    let expert_bytes: usize = [&moe.gate_exps, &moe.up_exps, &moe.down_exps]
        .iter()
        .map(|w| w.expert_bytes())
        .sum();
    let mapped = node.file().mapped_bytes();
    assert!(mapped >= 128 * expert_bytes, "mapped {mapped}");
    assert!(
        mapped < 128 * expert_bytes + 64 * 1024,
        "mapped {mapped} of {file_bytes}: more than its experts and norms"
    );

    // Owned experts compute bit-identically; an expert it does not own is an error.
    let d = full.cfg.n_embd;
    let h: Vec<f32> = (0..2 * d)
        .map(|i| ((i * 37 % 101) as f32 - 50.0) / 100.0)
        .collect();
    let routes = [
        Route {
            token: 0,
            expert: 3,
            weight: 0.5,
        },
        Route {
            token: 1,
            expert: 127,
            weight: 1.5,
        },
    ];
    let (mut a, mut b) = (vec![0f32; 2 * d], vec![0f32; 2 * d]);
    CpuCompute
        .apply_routes(&full, 1, &h, &routes, &mut a)
        .unwrap();
    CpuCompute
        .apply_routes(&node, 1, &h, &routes, &mut b)
        .unwrap();
    assert_eq!(a, b);
    let err = CpuCompute
        .apply_routes(
            &node,
            1,
            &h,
            &[Route {
                token: 0,
                expert: 200,
                weight: 1.0,
            }],
            &mut b,
        )
        .unwrap_err();
    assert!(matches!(err, ModelError::NotMapped { .. }), "{err}");
    assert!(err.to_string().contains("expert 200"), "{err}");
    // Attention weights are not mapped on an expert node either.
    assert!(node.mat(&node.layers[0].attn.output).is_err());
}

#[test]
fn router_maps_no_remote_experts() {
    let full = Model::open(fixture()).unwrap();
    let none = LayerExperts::none(full.cfg.n_layers);
    let router = Model::open_with(fixture(), &WeightSet::Router { local: none }).unwrap();
    let moe = full.layers[1].moe.as_ref().unwrap();
    let all_experts: usize = [&moe.gate_exps, &moe.up_exps, &moe.down_exps]
        .iter()
        .map(|w| w.expert_bytes() * full.cfg.n_experts)
        .sum();
    let file_bytes = std::fs::metadata(fixture()).unwrap().len() as usize;
    let mapped = router.file().mapped_bytes();
    assert!(
        mapped <= file_bytes - all_experts,
        "router mapped {mapped} bytes; non-expert bytes are {}",
        file_bytes - all_experts
    );
    assert!(router
        .expert_mat(&router.layers[1].moe.as_ref().unwrap().up_exps, 0)
        .is_err());
}

/// `with_mode_packing` without the routed experts (computed on another device) packs everything
/// `with_mode(Fast)` packs but the routed experts: exactly 3 matrices (gate, up, down) per
/// expert of every MoE layer fewer, and at least their bytes less memory.
#[test]
fn fast_mode_without_expert_packing_leaves_exactly_the_experts_unpacked() {
    let path = fixture();
    let all = Model::open(&path)
        .unwrap()
        .with_mode(moe_kernels::NumericMode::Fast);
    let no_experts = Model::open(&path).unwrap().with_mode_packing(
        moe_kernels::NumericMode::Fast,
        moe_model::model::CpuShare {
            routed_experts: false,
            layers: true,
        },
    );
    let (n_all, bytes_all) = all.packed_summary();
    let (n_rest, bytes_rest) = no_experts.packed_summary();
    let cfg = &all.cfg;
    let moe_layers = (0..cfg.n_layers).filter(|&l| cfg.is_moe_layer(l)).count();
    assert!(moe_layers > 0 && n_rest > 0, "nothing to compare");
    assert_eq!(n_all - n_rest, 3 * cfg.n_experts * moe_layers);
    let expert_bytes: usize = all
        .layers
        .iter()
        .filter_map(|l| l.moe.as_ref())
        .map(|m| {
            [&m.gate_exps, &m.up_exps, &m.down_exps]
                .iter()
                .map(|s| s.expert_bytes() * s.count())
                .sum::<usize>()
        })
        .sum();
    assert!(
        bytes_all - bytes_rest >= expert_bytes,
        "{bytes_all} - {bytes_rest} < {expert_bytes}"
    );
}

/// `with_mode_packing` without the layers (attention, dense FFNs, shared experts and the
/// output head computed on another device) packs the routed experts only: exactly the layers'
/// matrices fewer (attention's q_a, q_b, kv_a, output and every k_b, v_b head; three per dense
/// FFN or shared expert; the head), no transposed `attn_k_b`, so prompts take the absorbed
/// form.
#[test]
fn fast_mode_without_layer_packing_leaves_exactly_the_layers_unpacked() {
    use moe_kernels::NumericMode::Fast;
    use moe_kernels::PackedMatrix;
    use moe_model::forward::PromptForm;
    let path = moe_devdata::fixtures::fixtures_dir().join("kimi-k25-kq/kimi-k25-kq-Q4_K_M.gguf");
    let all = Model::open(&path).unwrap().with_mode(Fast);
    let no_layers = Model::open(&path).unwrap().with_mode_packing(
        Fast,
        moe_model::model::CpuShare {
            routed_experts: true,
            layers: false,
        },
    );
    // The layers' matrices of a type and width that packs (`PackedMatrix::packs`).
    let packs = |q: moe_kernels::QMatrix<'_>| usize::from(PackedMatrix::packs(q.ty(), q.cols()));
    let layer_mats: usize = all
        .layers
        .iter()
        .map(|l| {
            let a = &l.attn;
            let shared = l.moe.as_ref().and_then(|m| m.shared.as_ref());
            let mats = [a.q_a.as_ref(), Some(&a.q_b), Some(&a.kv_a), Some(&a.output)]
                .into_iter()
                .flatten()
                .chain(
                    [l.dense.as_ref(), shared]
                        .into_iter()
                        .flatten()
                        .flat_map(|f| [&f.gate, &f.up, &f.down]),
                );
            let heads = [&a.k_b, &a.v_b]
                .into_iter()
                .flat_map(|s| (0..s.count()).map(move |h| (s, h)));
            mats.map(|m| packs(all.mat(m).unwrap())).sum::<usize>()
                + heads
                    .map(|(s, h)| packs(all.head_mat(s, h).unwrap()))
                    .sum::<usize>()
        })
        .sum::<usize>()
        + packs(all.mat(&all.output).unwrap());
    let (n_all, _) = all.packed_summary();
    let (n_rest, _) = no_layers.packed_summary();
    assert!(n_rest > 0 && layer_mats > 0, "nothing to compare");
    assert_eq!(
        n_all - n_rest,
        layer_mats,
        "{n_all} packed with the layers, {n_rest} without"
    );
    assert!(all.k_b_transposed(0, 0).is_some());
    assert!(no_layers.k_b_transposed(0, 0).is_none());
    assert_eq!(no_layers.prompt_form(), PromptForm::Absorbed);
}
