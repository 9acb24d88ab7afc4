//! The one error type of this crate.

/// Everything the runtime can refuse.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// I/O on a named path.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// A kernel refused its input.
    #[error(transparent)]
    Kernel(#[from] moe_kernels::KernelError),
}
