//! IQ4_XS and IQ4_NL expert stacks through the whole device path (upload, gate/up matvecs,
//! SwiGLU, down matvec, weighted add): a synthetic `kq`-sized model stored in each type has
//! its routed experts computed on Vulkan device 0 as the CPU's exact kernel computes them.

mod common;

use moe_kernels::GgmlType;
use moe_model::forward::{CpuCompute, ExpertCompute, Route};
use moe_model::model::Model;
use moe_vulkan::VulkanCompute;

/// Largest accepted |device - CPU| of one routed output value (f32 sums in another order),
/// as for the Q4_K fixture in `refusals.rs`.
const OUTPUT_ABS_TOL: f32 = 1e-5;

/// For IQ4_XS and IQ4_NL: a 2-layer `kq` synthetic model (hidden and expert width 256, so
/// every expert matrix is stored in the type itself, no fallback) uploads to the device, and
/// five routes over four experts of its MoE layer give the CPU exact result within
/// `OUTPUT_ABS_TOL`.
#[test]
fn iq4_expert_models_compute_on_the_device_as_on_the_cpu() {
    let Some(device) =
        common::device_or_skip("iq4_expert_models_compute_on_the_device_as_on_the_cpu")
    else {
        return;
    };
    for ty in [GgmlType::IQ4_XS, GgmlType::IQ4_NL] {
        let path = std::env::temp_dir().join(format!(
            "moe-vulkan-{}-{}.gguf",
            ty.name(),
            std::process::id()
        ));
        moe_devdata::synth::synthesize(
            &moe_devdata::synth::SynthOptions {
                preset: moe_devdata::synth::SynthPreset::Kq,
                ty,
                layers: Some(2),
                ..Default::default()
            },
            &path,
        )
        .unwrap();
        let model = Model::open(&path).unwrap();
        std::fs::remove_file(&path).ok();
        let moe = model.layers[1].moe.as_ref().unwrap();
        for stack in [&moe.gate_exps, &moe.up_exps, &moe.down_exps] {
            let stored = model.expert_mat(stack, 0).unwrap().ty();
            assert_eq!(stored, ty, "{} is stored as {}", stack.name, stored.name());
        }
        let vk = VulkanCompute::new(device.clone(), &model).unwrap();

        let d = model.cfg.n_embd;
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
            route(1, 383, 1.5),
            route(2, 3, -0.25),
            route(2, 200, 1.0),
            route(0, 64, 2.0),
        ];
        let start: Vec<f32> = (0..3 * d).map(|i| (i % 7) as f32 * 0.1).collect();
        let (mut cpu, mut gpu) = (start.clone(), start.clone());
        CpuCompute
            .apply_routes(&model, 1, &h, &routes, &mut cpu)
            .unwrap();
        vk.apply_routes(&model, 1, &h, &routes, &mut gpu).unwrap();
        let moved = cpu
            .iter()
            .zip(&start)
            .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
        let worst = cpu
            .iter()
            .zip(&gpu)
            .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
        println!(
            "{}: max |device - cpu| = {worst:.2e} (largest routed contribution {moved:.2e})",
            ty.name()
        );
        assert!(moved > 1e-3, "{}: the routes added nothing", ty.name());
        assert!(
            worst <= OUTPUT_ABS_TOL,
            "{}: device vs CPU: {worst:e}",
            ty.name()
        );
    }
}
