//! `DevDataError`, the one error enum of this crate.

/// Everything synthesizing models and reading development data can refuse.
#[derive(Debug, thiserror::Error)]
pub enum DevDataError {
    /// A model-level error (GGUF, expert lists, an expert backend, ...).
    #[error(transparent)]
    Model(#[from] moe_model::ModelError),
    /// A kernel refused its input (a quantizer).
    #[error(transparent)]
    Kernel(#[from] moe_kernels::KernelError),
    /// I/O on a named path.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// A bad argument from a caller (token id out of range, context full, ...).
    #[error("{0}")]
    InvalidInput(String),
    /// `synth` refused its options.
    #[error("synth: {0}")]
    Synth(String),
    /// A reference-fixture manifest that is missing or not of the expected shape.
    #[error("fixture manifest: {0}")]
    Fixture(String),
}
