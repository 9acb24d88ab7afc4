//! What every Vulkan test shares: opening device 0, or saying why the test cannot run.

use std::sync::Arc;

use moe_vulkan::{Device, VulkanError};

/// Device 0, or `None` after printing why the test is skipped. With `MOE_REQUIRE_VULKAN=1`
/// (set by `.ci/run`, which installs lavapipe) a missing device fails the test instead, so CI
/// cannot pass without running it.
pub fn device_or_skip(test: &str) -> Option<Arc<Device>> {
    match Device::open(0) {
        Ok(d) => {
            println!(
                "{test}: on Vulkan device 0: {} ({})",
                d.info.name, d.info.driver
            );
            Some(d)
        }
        Err(e @ (VulkanError::NoLoader(_) | VulkanError::NoDevice)) => {
            if std::env::var("MOE_REQUIRE_VULKAN").is_ok_and(|v| v == "1") {
                panic!("{test}: MOE_REQUIRE_VULKAN=1 but {e}");
            }
            println!("SKIPPED {test}: {e}");
            None
        }
        Err(e) => panic!("{test}: opening Vulkan device 0: {e}"),
    }
}

/// The kq fixture's Q4_K_M file (Q4_K gate/up, Q6_K down experts; hidden size 256).
#[allow(dead_code)] // not every test binary that includes this module uses it
pub fn kq_q4_k_m() -> std::path::PathBuf {
    moe_devdata::fixtures::fixtures_dir().join("kimi-k25-kq/kimi-k25-kq-Q4_K_M.gguf")
}
