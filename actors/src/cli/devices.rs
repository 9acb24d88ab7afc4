//! `moe-node devices`: what Vulkan sees, with the properties that decide how this runtime can
//! use each device (integer dot products, subgroup size, cooperative matrix, memory heaps,
//! the largest shader binding). No loader or no device is an error (non-zero exit) with the
//! reason, never a crash.

/// Arguments of `devices` (none yet).
#[derive(Debug, clap::Args)]
pub struct DevicesArgs {}

/// Prints every Vulkan device, or why there is none.
#[cfg(feature = "vulkan")]
pub fn run(_: DevicesArgs) -> anyhow::Result<()> {
    let devices = moe_vulkan::list_devices()?;
    for d in &devices {
        print!("{d}");
    }
    println!(
        "expert weight types with Vulkan shaders: {}",
        moe_vulkan::supported_type_names()
    );
    Ok(())
}

/// Without the `vulkan` feature there is nothing to list.
#[cfg(not(feature = "vulkan"))]
pub fn run(_: DevicesArgs) -> anyhow::Result<()> {
    anyhow::bail!(
        "this moe-node was built without Vulkan: rebuild with `--features vulkan` (on by default)"
    )
}
