//! What the Vulkan backend uploads and refuses: an expert node's device holds exactly its own
//! experts (which compute as on the CPU) and names any other expert it is asked for; an
//! expert type without a shader and a device index past the last are named errors.

mod common;

use moe_kernels::GgmlType;
use moe_model::forward::{CpuCompute, ExpertCompute, Route};
use moe_model::model::{Model, WeightSet};
use moe_model::LayerExperts;
use moe_vulkan::{Device, VulkanCompute, VulkanError};

/// Largest accepted |device - CPU| of one routed output value (f32 sums in another order).
const OUTPUT_ABS_TOL: f32 = 1e-5;

#[test]
fn an_expert_node_uploads_only_its_experts_and_names_the_others() {
    let Some(device) =
        common::device_or_skip("an_expert_node_uploads_only_its_experts_and_names_the_others")
    else {
        return;
    };
    let header = Model::open(common::kq_q4_k_m()).unwrap();
    let cfg = &header.cfg;
    let owned = LayerExperts::parse_uniform("0-127", cfg.n_experts, cfg.n_layers, |l| {
        cfg.is_moe_layer(l)
    })
    .unwrap();
    let node = Model::open_with(common::kq_q4_k_m(), &WeightSet::Experts { owned }).unwrap();
    let vk = VulkanCompute::new(device, &node).unwrap();
    let moe = node.layers[1].moe.as_ref().unwrap();
    let per_expert: u64 = [&moe.gate_exps, &moe.up_exps, &moe.down_exps]
        .iter()
        .map(|s| s.expert_bytes() as u64)
        .sum();
    // Whole u32 words per chunk buffer; the kq expert sizes are multiples of 4 already.
    assert_eq!(vk.uploaded_bytes(), 128 * per_expert);

    let d = node.cfg.n_embd;
    let h: Vec<f32> = (0..3 * d)
        .map(|i| ((i * 37 % 101) as f32 - 50.0) / 100.0)
        .collect();
    let route = |token, expert, weight| Route {
        token,
        expert,
        weight,
    };
    let routes = [
        route(0, 3, 0.5),
        route(1, 127, 1.5),
        route(2, 3, -0.25),
        route(2, 64, 1.0),
        route(0, 64, 2.0),
    ];
    let start: Vec<f32> = (0..3 * d).map(|i| (i % 7) as f32 * 0.1).collect();
    let (mut cpu, mut gpu) = (start.clone(), start);
    CpuCompute
        .apply_routes(&node, 1, &h, &routes, &mut cpu)
        .unwrap();
    vk.apply_routes(&node, 1, &h, &routes, &mut gpu).unwrap();
    let worst = cpu
        .iter()
        .zip(&gpu)
        .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
    assert!(worst <= OUTPUT_ABS_TOL, "device vs CPU: {worst:e}");

    let err = vk
        .apply_routes(&node, 1, &h, &[route(0, 200, 1.0)], &mut gpu)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("expert 200") && err.contains("not on the Vulkan device"),
        "{err}"
    );
    let err = vk
        .apply_routes(&node, 0, &h, &routes, &mut gpu)
        .unwrap_err()
        .to_string();
    assert!(err.contains("layer 0 is not a MoE layer"), "{err}");
}

#[test]
fn an_expert_or_attention_type_without_a_shader_is_named() {
    let Some(device) =
        common::device_or_skip("an_expert_or_attention_type_without_a_shader_is_named")
    else {
        return;
    };
    let path = std::env::temp_dir().join(format!("moe-vulkan-iq2_xxs-{}.gguf", std::process::id()));
    moe_devdata::synth::synthesize(
        &moe_devdata::synth::SynthOptions {
            ty: GgmlType::IQ2_XXS,
            // Whole 256-value blocks, so the experts are stored as IQ2_XXS.
            preset: moe_devdata::synth::SynthPreset::Kq,
            layers: Some(2),
            ..Default::default()
        },
        &path,
    )
    .unwrap();
    let model = Model::open(&path).unwrap();
    let err = VulkanCompute::new(device.clone(), &model)
        .unwrap_err()
        .to_string();
    // The attention weights too: the first one uploaded is named.
    let attention_err = moe_vulkan::VulkanLayers::new(device, &model)
        .unwrap_err()
        .to_string();
    std::fs::remove_file(&path).ok();
    assert!(
        err.contains("blk.1.ffn_gate_exps.weight") && err.contains("IQ2_XXS"),
        "{err}"
    );
    assert!(
        attention_err.contains("blk.0.attn_q_a.weight") && attention_err.contains("IQ2_XXS"),
        "{attention_err}"
    );
}

#[test]
fn a_device_index_past_the_last_is_named() {
    if common::device_or_skip("a_device_index_past_the_last_is_named").is_none() {
        return;
    }
    match Device::open(1000) {
        Err(VulkanError::DeviceIndex { index: 1000, count }) => assert!(count >= 1),
        other => panic!("want a DeviceIndex error, got {other:?}"),
    }
}
