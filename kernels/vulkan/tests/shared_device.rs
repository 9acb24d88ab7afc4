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
