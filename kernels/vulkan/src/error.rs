//! `VulkanError`, the one error enum of this crate. Each variant says what failed and where,
//! so `moe-node` can print it as it is.

/// Everything the Vulkan backend can refuse or fail at.
#[derive(Debug, thiserror::Error)]
pub enum VulkanError {
    /// No Vulkan loader (libvulkan) could be opened.
    #[error(
        "no Vulkan loader: {0} (install the Vulkan loader and a driver, e.g. Debian's \
         libvulkan1 and mesa-vulkan-drivers)"
    )]
    NoLoader(String),
    /// The loader is there but exposes no physical device.
    #[error("Vulkan sees no device (no driver installed for this machine's GPU, nor lavapipe)")]
    NoDevice,
    /// `--device N` beyond the devices present.
    #[error("Vulkan device {index} does not exist ({count} device(s): see `moe-node devices`)")]
    DeviceIndex {
        /// The index asked for.
        index: usize,
        /// Devices present.
        count: usize,
    },
    /// A Vulkan call returned an error.
    #[error("Vulkan call {call} failed: {result}")]
    Call {
        /// The entry point.
        call: &'static str,
        /// Its result code.
        result: ash::vk::Result,
    },
    /// The device has nothing this backend can use (no compute queue, no host-visible memory).
    #[error("Vulkan device {device:?}: {what}")]
    Unusable {
        /// The device's name.
        device: String,
        /// What it lacks.
        what: String,
    },
    /// A tensor whose type has no shader on this backend.
    #[error("tensor {tensor:?} has type {ty}, which the Vulkan backend cannot compute (supported: {supported})")]
    UnsupportedType {
        /// Its GGUF name.
        tensor: String,
        /// Its type's name.
        ty: &'static str,
        /// The types that have shaders.
        supported: String,
    },
    /// A tensor (or one expert matrix of it) past a device limit.
    #[error("tensor {tensor:?}: {what}")]
    DeviceLimit {
        /// Its GGUF name.
        tensor: String,
        /// The limit crossed, with both numbers.
        what: String,
    },
    /// A call that asks for something the backend was not given (an expert not uploaded, a
    /// layer that is not a MoE layer, mismatched lengths).
    #[error("{0}")]
    InvalidInput(String),
}

impl VulkanError {
    /// Wraps a failed Vulkan call.
    pub(crate) fn call(call: &'static str) -> impl FnOnce(ash::vk::Result) -> Self {
        move |result| Self::Call { call, result }
    }
}

impl From<VulkanError> for moe_model::ModelError {
    fn from(e: VulkanError) -> Self {
        moe_model::ModelError::Backend {
            backend: "vulkan",
            message: e.to_string(),
        }
    }
}
