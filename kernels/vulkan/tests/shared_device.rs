//! One logical device per process (`Device::shared`, what `moe-node --backend vulkan` opens):
//! the same index gives the same device while it is held, and the routed experts
//! (`VulkanCompute`) and the layers (`VulkanLayers`) computing on it from two threads at
//! once (their submissions serialized on its queue) give the bits each gives alone.

mod common;

use std::sync::Arc;

use moe_kernels::NumericMode;
use moe_model::forward::{ExpertCompute, Route};
use moe_model::model::Model;
use moe_vulkan::{Device, VulkanCompute, VulkanLayers};

/// Calls per thread.
const ROUNDS: usize = 12;

#[test]
fn experts_and_layers_share_one_device_across_threads() {
    if common::device_or_skip("experts_and_layers_share_one_device_across_threads").is_none() {
        return;
    }
    let device = Device::shared(0).unwrap();
    assert!(Arc::ptr_eq(&device, &Device::shared(0).unwrap()));
    assert!(!Arc::ptr_eq(&device, &Device::open(0).unwrap()));

    let model = Model::open(common::kq_q4_k_m())
        .unwrap()
        .with_mode(NumericMode::Exact);
    let experts = VulkanCompute::new(device.clone(), &model).unwrap();
    let layers = VulkanLayers::new(device.clone(), &model).unwrap();
    let d = model.cfg.n_embd;
    let rows = 3;
    let h: Vec<f32> = (0..rows * d)
        .map(|i| ((i * 613 % 997) as f32 / 498.5 - 1.0) * 0.3)
        .collect();
    let moe_layer = (0..model.cfg.n_layers)
        .find(|&l| model.cfg.is_moe_layer(l))
        .unwrap();
    let routes: Vec<Route> = (0..rows * 4)
        .map(|i| Route {
            token: (i / 4) as u32,
            expert: (i * 5 % model.cfg.n_experts) as u32,
            weight: 0.25,
        })
        .collect();
    let routed = || {
        let mut out = vec![0f32; rows * d];
        experts
            .apply_routes(&model, moe_layer, &h, &routes, &mut out)
            .unwrap();
        out
    };
    let ffn = || {
        let mut out = vec![0f32; rows * d];
        moe_model::forward::LayerCompute::ffn(&layers, &model, 0, &h, &mut out).unwrap();
        out
    };
    let bits = |v: Vec<f32>| v.into_iter().map(f32::to_bits).collect::<Vec<_>>();
    let (want_routed, want_ffn) = (bits(routed()), bits(ffn()));
    std::thread::scope(|s| {
        let a = s.spawn(|| (0..ROUNDS).all(|_| bits(routed()) == want_routed));
        let b = s.spawn(|| (0..ROUNDS).all(|_| bits(ffn()) == want_ffn));
        assert!(
            a.join().unwrap(),
            "routed experts changed under concurrency"
        );
        assert!(b.join().unwrap(), "the dense FFN changed under concurrency");
    });
}

/// With the layers on a `VulkanLayers` of the same device, a MoE layer's shared expert and
/// routed experts take one submission (`VulkanCompute::apply_routes_with_shared`) and give
/// the bits of the shared expert on the layers (`LayerCompute::ffn`) then the routes
/// (`apply_routes`), two submissions; both modes, a prompt's rows and a decode step's.
#[test]
fn the_shared_expert_rides_with_the_routed_experts() {
    // A device of its own: its submission count is this test's alone.
    let Some(device) = common::device_or_skip("the_shared_expert_rides_with_the_routed_experts")
    else {
        return;
    };
    for mode in [NumericMode::Exact, NumericMode::Fast] {
        let plain = Model::open(common::kq_q4_k_m()).unwrap().with_mode(mode);
        let experts = VulkanCompute::new(device.clone(), &plain).unwrap();
        let layers = Arc::new(VulkanLayers::new(device.clone(), &plain).unwrap());
        let model = Model::open(common::kq_q4_k_m())
            .unwrap()
            .with_mode(mode)
            .with_layer_compute(layers.clone());
        let d = model.cfg.n_embd;
        let l = (0..model.cfg.n_layers)
            .find(|&l| model.cfg.is_moe_layer(l))
            .unwrap();
        let shared = model.layers[l]
            .moe
            .as_ref()
            .unwrap()
            .shared
            .as_ref()
            .unwrap();
        for rows in [5, 1] {
            let h: Vec<f32> = (0..rows * d)
                .map(|i| ((i * 389 % 1013) as f32 / 506.5 - 1.0) * 0.4)
                .collect();
            let routes: Vec<Route> = (0..rows * 3)
                .map(|i| Route {
                    token: (i / 3) as u32,
                    expert: (i * 7 % model.cfg.n_experts) as u32,
                    weight: 0.3,
                })
                .collect();
            let before = device.submissions();
            let mut fused = vec![0f32; rows * d];
            experts
                .apply_routes_with_shared(&model, l, &h, Some(shared), &routes, &mut fused)
                .unwrap();
            assert_eq!(device.submissions() - before, 1, "{mode:?}, {rows} rows");
            let mut apart = vec![0f32; rows * d];
            moe_model::forward::LayerCompute::ffn(layers.as_ref(), &model, l, &h, &mut apart)
                .unwrap();
            experts
                .apply_routes(&model, l, &h, &routes, &mut apart)
                .unwrap();
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&fused), bits(&apart), "{mode:?}, {rows} rows");
        }
    }
}
