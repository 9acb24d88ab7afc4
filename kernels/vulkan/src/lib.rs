//! # moe-vulkan
//!
//! The Vulkan backend of moe-node, through `ash`: routed experts computed on a GPU (or on
//! Mesa's lavapipe, which CI uses). The Vulkan loader is opened at run time, so a binary
//! built with this crate still starts on a machine without Vulkan and reports
//! [`VulkanError::NoLoader`] or [`VulkanError::NoDevice`] when asked for a device.
//!
//! ```text
//! instance.rs        loader, instance, DeviceInfo (what `moe-node devices` prints)
//! device.rs          logical device, compute queue, host-visible mapped buffers
//! kernels.rs         pipelines built from the SPIR-V that build.rs compiles from kernels/
//! kernels/           GLSL: matvec.comp + dequant/<type>.glsl (IQ4_NL and IQ4_XS share
//!                    dequant/iq4_grid.glsl, Q4_K and Q5_K dequant/k4_scale_min.glsl);
//!                    the fast mode's quantize.comp and matvec_fast.comp + fast/<type>.glsl
//!                    (integer dot products), both over tile_io.glsl + tile_main.glsl;
//!                    swiglu.comp, combine.comp; attention's rms_norm.comp, rope.comp,
//!                    gather.comp, attend.comp
//! tiles.rs           route tiles (up to ROUTE_TILE routes of one expert per matvec
//!                    workgroup, sharing its weight reads) and the metadata the shaders read
//! commands.rs        one command buffer: record, submit, wait
//! expert_weights.rs  the node's expert stacks on the device once, in chunks within device
//!                    limits: imported maps of the model file where the device can, else copies
//! expert_compute.rs  VulkanCompute: moe-model's ExpertCompute on the device
//! device_mat.rs      DeviceMat: one matrix (or stack) on the device, checked against limits
//! attention_weights.rs  every layer's attention matrices on the device, uploaded once
//! layers.rs          VulkanLayers: moe-model's LayerCompute on the device (pipelines,
//!                    scratch, the matvec over a DeviceMat that attention and FFNs share)
//! attention.rs       its MLA attention (absorbed form, the sequence's cache rows in a
//!                    device copy, VulkanKv)
//! ffn_weights.rs     every dense FFN and shared expert on the device, uploaded once
//! ffn.rs             VulkanLayers' dense FFNs and shared experts
//! head.rs            VulkanLayers' output head (where it fits the device's limits)
//! scratch.rs         per-call buffers grown on demand; byte views
//! matvec.rs          one matrix times rows on the device, f32 or fast (the kernel-level
//!                    tests' tool)
//! ```
//!
//! What runs on the device today: the routed-expert FFN (gate and up matvecs, SwiGLU, down
//! matvec, weighted add) over the raw GGUF blocks of F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q5_0,
//! Q5_1, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K, IQ4_NL and IQ4_XS experts, in the calling model's
//! numeric mode: f32 activations in Exact; in Fast, activations quantized on the device to
//! int8 per 32 values and integer dot products (`GL_EXT_integer_dot_product`) for Q8_0,
//! Q2_K..Q6_K, IQ4_NL and IQ4_XS, the other types keeping the f32 shaders (on a device without `shaderIntegerDotProduct`, Fast
//! falls back to the f32 shaders: [`VulkanCompute::has_fast_shaders`]). A call's routes to
//! one expert are computed in tiles that share each weight read (on GPUs by default:
//! [`VulkanCompute::with_route_tiles`]); the weights are imported from maps of the model file
//! where the device can ([`HostMemory`]). A router's or single process's share of each layer runs
//! here too ([`VulkanLayers`]): the MLA attention (projections, rope, absorption, scores,
//! softmax and context, with each sequence's cache rows on the device), the leading dense
//! layers' FFNs, the shared experts and the output head. The norms between blocks, routing
//! and the residual adds stay on the CPU.
//!
//! ```no_run
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use std::sync::Arc;
//! use moe_model::forward::{ComputeHandle, LocalExperts};
//! let model = moe_model::model::Model::open("model.gguf")?;
//! let device = moe_vulkan::Device::open(0)?;
//! let compute = moe_vulkan::VulkanCompute::new(device, &model)?;
//! let experts = LocalExperts::on(ComputeHandle(Arc::new(compute)));
//! # let _ = experts;
//! # Ok(())
//! # }
//! ```

mod attention;
mod attention_weights;
mod commands;
mod device;
mod device_mat;
mod error;
mod expert_compute;
mod expert_weights;
mod ffn;
mod ffn_weights;
mod head;
mod instance;
mod kernels;
mod layers;
mod matvec;
mod scratch;
mod tiles;

pub use attention::{round_kv_on_device, VulkanKv, SCORES_BYTES_MAX};
pub use device::Device;
pub use error::VulkanError;
pub use expert_compute::VulkanCompute;
pub use expert_weights::{HostMemory, CHUNK_BYTES_MAX};
pub use instance::{DeviceInfo, Instance};
pub use kernels::{fast_types, supported_type_names, supported_types, QBLOCK_WORDS, ROUTE_TILE};
pub use layers::VulkanLayers;
pub use matvec::Matvec;

/// Every Vulkan device with its properties, or why there is none.
pub fn list_devices() -> Result<Vec<DeviceInfo>, VulkanError> {
    Instance::new()?.devices()
}
