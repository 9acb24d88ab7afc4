//! How faithful the Vulkan backend's fast mode (`--backend vulkan`'s default: routed experts,
//! attention, dense FFNs and shared experts on Vulkan device 0, lavapipe in CI: activations
//! quantized per 32 values on the device, integer dot products) is on the
//! reference fixtures, beside the CPU's fast mode on the same files, measured as
//! `fast_faithfulness.rs` measures the CPU (`moe_tests::faithfulness`: top-1 agreement and
//! mean `KL(reference ‖ model)` over every position of every case, teacher-forced, f32 KV
//! cache), with its bars:
//!
//! - pooled over the quantized files: top-1 ≥ [`FAST_TOP1_MIN`], mean KL ≤
//!   [`FAST_MEAN_KL_MAX`];
//! - every file: top-1 ≥ [`FILE_TOP1_FLOOR`] (a single file below the pooled bars is a NOTE
//!   line, as there).
//!
//! Routing, the norms and the output head run on the CPU in both columns. The BF16 file's
//! matrices have no fast shader (they
//! stay on the f32 one, as the CPU's fast mode computes BF16 exactly); it is printed, checked
//! against the floor and left out of the pool, as in `fast_faithfulness.rs`.
//!
//! `cargo test -p moe-tests --test vulkan_fast_faithfulness -- --nocapture` shows the table.
//! Without a Vulkan device (and without `MOE_REQUIRE_VULKAN=1`, which `.ci/run` sets) the
//! test prints why it skipped.

use std::sync::Arc;

use moe_kernels::{KvType, NumericMode};
use moe_model::forward::ComputeHandle;
use moe_tests::faithfulness::{score_file, score_file_on, Score};
use moe_tests::fixtures::{all_fixture_cases, FixtureCase};
use moe_vulkan::{Device, VulkanCompute, VulkanError, VulkanLayers};

/// Lowest accepted pooled top-1 agreement (`fast_faithfulness.rs`'s bar).
const FAST_TOP1_MIN: f64 = 0.70;
/// Highest accepted pooled mean KL (`fast_faithfulness.rs`'s bar).
const FAST_MEAN_KL_MAX: f64 = 2e-2;
/// Lowest accepted top-1 agreement of a single file (`fast_faithfulness.rs`'s floor).
const FILE_TOP1_FLOOR: f64 = 0.65;

/// Device 0 with integer dot products, or `None` after printing why the test cannot run
/// (a failure under `MOE_REQUIRE_VULKAN=1`).
fn device_or_skip(test: &str) -> Option<Arc<Device>> {
    let required = std::env::var("MOE_REQUIRE_VULKAN").is_ok_and(|v| v == "1");
    match Device::open(0) {
        Ok(d) if d.has_integer_dot_product() => {
            println!(
                "{test}: on Vulkan device 0: {} ({})",
                d.info.name, d.info.driver
            );
            Some(d)
        }
        Ok(d) => {
            let why = format!("{} has no shaderIntegerDotProduct", d.info.name);
            assert!(!required, "{test}: MOE_REQUIRE_VULKAN=1 but {why}");
            println!("SKIPPED {test}: {why}");
            None
        }
        Err(e @ (VulkanError::NoLoader(_) | VulkanError::NoDevice)) => {
            assert!(!required, "{test}: MOE_REQUIRE_VULKAN=1 but {e}");
            println!("SKIPPED {test}: {e}");
            None
        }
        Err(e) => panic!("{test}: opening Vulkan device 0: {e}"),
    }
}

/// Every fixture GGUF (the four `kernels/vulkan/tests/fixtures.rs` runs in exact mode) in
/// the fast mode with its experts and layers on Vulkan meets `fast_faithfulness.rs`'s bars; the
/// CPU fast mode's numbers are printed beside it.
#[test]
fn vulkan_fast_mode_is_as_faithful_as_the_cpu_fast_mode() {
    let Some(device) = device_or_skip("vulkan_fast_mode_is_as_faithful_as_the_cpu_fast_mode")
    else {
        return;
    };
    let all = all_fixture_cases().expect("the fixture manifests");
    let mut files: Vec<&std::path::Path> = all.iter().map(|c| c.gguf.as_path()).collect();
    files.dedup();
    assert_eq!(
        files.len(),
        4,
        "expected the four fixture GGUFs, got {files:?}"
    );
    eprintln!(
        "| file | positions | Vulkan fast top-1 | Vulkan fast mean KL | Vulkan fast max KL | CPU fast top-1 | CPU fast mean KL |"
    );
    eprintln!("|---|---:|---:|---:|---:|---:|---:|");
    let mut failures = Vec::new();
    let mut notes = Vec::new();
    let (mut pooled, mut pooled_cpu) = (Score::default(), Score::default());
    for file in files {
        let cases: Vec<&FixtureCase> = all.iter().filter(|c| c.gguf == file).collect();
        let vk = score_file_on(&cases, NumericMode::Fast, KvType::F32, |model| {
            let compute = VulkanCompute::new(device.clone(), &model).expect("upload");
            assert!(compute.has_fast_shaders(), "no integer-dot shaders built");
            let layers = VulkanLayers::new(device.clone(), &model).expect("upload");
            let model = model.with_layer_compute(Arc::new(layers));
            (model, ComputeHandle(Arc::new(compute)))
        });
        let cpu = score_file(&cases, NumericMode::Fast, KvType::F32);
        let name = file.file_name().and_then(|n| n.to_str()).unwrap_or("?");
        eprintln!(
            "| {name} | {} | {:.3} | {:.2e} | {:.2e} | {:.3} | {:.2e} |",
            vk.positions,
            vk.top1_rate(),
            vk.mean_kl(),
            vk.kl_max,
            cpu.top1_rate(),
            cpu.mean_kl()
        );
        if vk.top1_rate() < FILE_TOP1_FLOOR {
            failures.push(format!(
                "{name}: Vulkan fast top-1 {:.3} (min {FILE_TOP1_FLOOR})",
                vk.top1_rate()
            ));
        } else if vk.top1_rate() < FAST_TOP1_MIN {
            notes.push(format!(
                "NOTE: {name}: Vulkan fast top-1 {:.3} is below llama.cpp's worst ({FAST_TOP1_MIN})",
                vk.top1_rate()
            ));
        }
        if vk.mean_kl() > FAST_MEAN_KL_MAX {
            notes.push(format!(
                "NOTE: {name}: Vulkan fast mean KL {:.2e} is above llama.cpp's worst ({FAST_MEAN_KL_MAX:e})",
                vk.mean_kl()
            ));
        }
        if !name.contains("BF16") {
            pooled.add(&vk);
            pooled_cpu.add(&cpu);
        }
    }
    eprintln!(
        "| quantized files pooled | {} | {:.3} | {:.2e} | {:.2e} | {:.3} | {:.2e} |",
        pooled.positions,
        pooled.top1_rate(),
        pooled.mean_kl(),
        pooled.kl_max,
        pooled_cpu.top1_rate(),
        pooled_cpu.mean_kl()
    );
    for n in &notes {
        eprintln!("{n}");
    }
    if pooled.top1_rate() < FAST_TOP1_MIN || pooled.mean_kl() > FAST_MEAN_KL_MAX {
        failures.push(format!(
            "pooled: Vulkan fast top-1 {:.3} (min {FAST_TOP1_MIN}), mean KL {:.2e} (max {FAST_MEAN_KL_MAX:e})",
            pooled.top1_rate(),
            pooled.mean_kl()
        ));
    }
    assert!(pooled.positions > 0, "no quantized fixture file found");
    assert!(failures.is_empty(), "{failures:#?}");
}
