//! Host-memory import and staged copies (`src/expert_weights.rs`, `Buffer::import`,
//! `Buffer::device_only`): where the device has
//! `VK_EXT_external_memory_host` (lavapipe does; `.ci/run` requires the device), the experts
//! are read in place from maps of the model file instead of copied. What this proves on
//! Vulkan device 0, on the kq fixture's Q4_K_M file, for a whole model and for an expert
//! node owning two separate runs of experts (0-40 and 100-140, so two spans per stack), with
//! stacks split over several chunks:
//!
//! - every expert is imported (`imported_bytes == uploaded_bytes`, the experts' own bytes);
//! - routed results in both numeric modes equal those of copied weights bit for bit (a
//!   wrong span offset reads another expert's or a neighbouring tensor's bytes and changes
//!   them);
//! - `HostMemory::Copy` and `HostMemory::Stage` (through a staging buffer into device-only
//!   memory) import nothing and give the same results bit for bit (a staged copy landing
//!   at a wrong offset changes them).
//!
//! On a discrete GPU or a device without the extension (which copy) the import half says it
//! skipped and the copy half runs.

mod common;

use moe_kernels::NumericMode;
use moe_model::expert_set::LayerExperts;
use moe_model::forward::{ExpertCompute, Route};
use moe_model::model::{Model, WeightSet};
use moe_vulkan::{HostMemory, VulkanCompute};

/// Expert chunks of at most this many bytes (several per stack, so several spans).
const TEST_CHUNK_BYTES: u64 = 1 << 20;

fn routes() -> Vec<Route> {
    let route = |token, expert, weight| Route {
        token,
        expert,
        weight,
    };
    vec![
        route(0, 0, 0.5),
        route(0, 140, 1.5),
        route(1, 40, -0.25),
        route(1, 100, 1.0),
        route(2, 17, 2.0),
        route(2, 123, 0.75),
    ]
}

fn run(vk: &VulkanCompute, model: &Model) -> Vec<f32> {
    let d = model.cfg.n_embd;
    let h: Vec<f32> = (0..3 * d)
        .map(|i| ((i * 41 % 103) as f32 - 51.0) / 90.0)
        .collect();
    let mut out: Vec<f32> = (0..3 * d).map(|i| (i % 3) as f32 * 0.2).collect();
    vk.apply_routes(model, 1, &h, &routes(), &mut out).unwrap();
    out
}

#[test]
fn imported_and_staged_experts_compute_as_copied_ones() {
    let Some(device) = common::device_or_skip("imported_and_staged_experts_compute_as_copied_ones")
    else {
        return;
    };
    let header = Model::open(common::kq_q4_k_m()).unwrap();
    let cfg = &header.cfg;
    let owned = LayerExperts::parse_uniform("0-40,100-140", cfg.n_experts, cfg.n_layers, |l| {
        cfg.is_moe_layer(l)
    })
    .unwrap();
    let can_import = device.host_import_alignment().is_some() && device.unified_memory();
    if !can_import {
        println!(
            "SKIPPED the import half of imported_and_staged_experts_compute_as_copied_ones: {} ({}) is not a unified-memory device with VK_EXT_external_memory_host",
            device.info.name, device.info.kind
        );
    }
    for set in [WeightSet::All, WeightSet::Experts { owned }] {
        for mode in [NumericMode::Exact, NumericMode::Fast] {
            let model = Model::open_with(common::kq_q4_k_m(), &set)
                .unwrap()
                .with_mode_packing(
                    mode,
                    moe_model::model::CpuShare {
                        routed_experts: false,
                        layers: true,
                    },
                );
            let upload = |host| {
                VulkanCompute::with_upload(device.clone(), &model, TEST_CHUNK_BYTES, host).unwrap()
            };
            let copied = upload(HostMemory::Copy);
            let staged = upload(HostMemory::Stage);
            let imported = upload(HostMemory::Import);
            assert_eq!(copied.imported_bytes(), 0, "{mode:?}: Copy imported");
            assert_eq!(staged.imported_bytes(), 0, "{mode:?}: Stage imported");
            assert_eq!(imported.uploaded_bytes(), copied.uploaded_bytes());
            let want = if can_import {
                copied.uploaded_bytes()
            } else {
                0
            };
            assert_eq!(
                imported.imported_bytes(),
                want,
                "{mode:?}: not all imported"
            );
            let a = run(&copied, &model);
            for (how, vk) in [("imported", &imported), ("staged", &staged)] {
                let b = run(vk, &model);
                assert!(
                    a.iter().zip(&b).all(|(x, y)| x.to_bits() == y.to_bits()),
                    "{mode:?}: {how} experts compute differently from copied ones"
                );
            }
            println!(
                "{mode:?}: {} of {} expert bytes imported; imported, staged, copied identical",
                imported.imported_bytes(),
                imported.uploaded_bytes()
            );
        }
    }
}
