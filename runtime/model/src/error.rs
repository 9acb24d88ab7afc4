//! `ModelError`, the one error enum of this crate.

use std::path::Path;

/// Everything loading, checking or running a model can refuse. `NoLiveOwner` and
/// `PeerFailed` are what an [`crate::forward::ExpertBackend`] computing experts elsewhere
/// reports.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
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
    /// A GGUF file that is malformed (the message names what and where).
    #[error("invalid GGUF: {0}")]
    GgufFormat(String),
    /// A GGUF problem in a named file.
    #[error("{path}: invalid GGUF: {message}")]
    Gguf {
        /// The file.
        path: String,
        /// What is wrong.
        message: String,
    },
    /// A tensor the model needs is absent.
    #[error("missing tensor {name:?}")]
    MissingTensor {
        /// Its GGUF name.
        name: String,
    },
    /// The model's metadata or tensors do not describe a model this runtime can run.
    #[error("unsupported model: {0}")]
    UnsupportedModel(String),
    /// A tensor whose shape or type does not match the model config.
    #[error("tensor {name:?}: {message}")]
    TensorShape {
        /// Its GGUF name.
        name: String,
        /// Expected vs got.
        message: String,
    },
    /// A routed expert none of whose owners is live.
    #[error("expert {expert} of layer {layer} has no live owner (owners: {owners})")]
    NoLiveOwner {
        /// Model layer.
        layer: usize,
        /// Expert id.
        expert: usize,
        /// Names of its owners, all down.
        owners: String,
    },
    /// An expert node failed a step (connection lost, silent, refused, timed out).
    #[error("expert node {node} failed: {reason}")]
    PeerFailed {
        /// Its name.
        node: String,
        /// What happened.
        reason: String,
    },
    /// A compute backend other than the CPU (a GPU through Vulkan) failed or refused: no
    /// device, a tensor type it has no kernel for, a device limit, a failed device call.
    #[error("{backend} backend: {message}")]
    Backend {
        /// The backend's name, e.g. `vulkan`.
        backend: &'static str,
        /// What failed, naming the tensor or call.
        message: String,
    },
    /// Bytes this process did not map (e.g. an expert another node owns).
    #[error("{what} is not mapped in this process (owned by another node?)")]
    NotMapped {
        /// The tensor (and expert) asked for.
        what: String,
    },
    /// NaN or infinite values where the forward pass needs finite ones: corrupt weights, an
    /// overflow, or an expert node that sent garbage. `rows` says which token rows of the
    /// forward call's batch (its sequences' new tokens, in order) hold them, so a caller
    /// batching several sequences can fail only the sequences concerned.
    #[error(
        "non-finite values ({value}) in {what}: {} token row(s) of the batch, the first at row {} \
         (corrupt weights, an overflow, or a faulty expert node)",
        .rows.len(),
        .rows.first().copied().unwrap_or_default()
    )]
    NonFinite {
        /// What held them, naming the layer (and the node for partial sums), e.g.
        /// "the attention output of layer 3".
        what: String,
        /// The first non-finite value found (NaN, inf or -inf).
        value: f32,
        /// Batch rows holding non-finite values, ascending.
        rows: Vec<usize>,
    },
    /// A bad argument from a caller (token id out of range, context full, ...).
    #[error("{0}")]
    InvalidInput(String),
    /// `GgufWriter` refused a metadata entry or tensor declaration (duplicate, too long,
    /// shape not whole blocks, nested array, ...).
    #[error("GGUF writer: {item:?}: {reason}")]
    GgufWrite {
        /// The metadata key or tensor name.
        item: String,
        /// Why it was refused.
        reason: String,
    },
    /// Tensor data streamed to a `GgufDataWriter` did not match the declared tensors.
    #[error("GGUF writer: tensor {tensor:?}: expected {expected} bytes, got {got}")]
    GgufWriteData {
        /// The tensor being written ("" when every tensor was already complete).
        tensor: String,
        /// Bytes it still needed.
        expected: u64,
        /// Bytes offered.
        got: u64,
    },
    /// An expert list such as `0-95,200,310-320` that does not parse or leaves the model.
    #[error("expert set {text:?}: token {token:?}: {reason}")]
    ExpertSetSyntax {
        /// The whole list (shortened when long).
        text: String,
        /// The offending comma-separated token (shortened when long).
        token: String,
        /// Why it was refused.
        reason: String,
    },
    /// The model shape a placement or frame is checked against is itself out of bounds.
    #[error("placement: {0}")]
    PlacementModel(String),
    /// A tokenizer kind this runtime does not implement (`tokenizer.ggml.model` other than
    /// `gpt2`, or an unknown `tokenizer.ggml.pre`).
    #[error("tokenizer: {key} = {value:?} is not supported (supported: {supported})")]
    TokenizerUnsupported {
        /// The metadata key, e.g. `tokenizer.ggml.pre`.
        key: &'static str,
        /// The value found.
        value: String,
        /// The values this runtime implements, comma-separated.
        supported: &'static str,
    },
    /// A tokenizer vocabulary that is inconsistent or exceeds a limit (the detail says
    /// which entry and what was expected).
    #[error("tokenizer: {key}: {detail}")]
    TokenizerInvalid {
        /// The metadata key the bad value came from, e.g. `tokenizer.ggml.merges`.
        key: &'static str,
        /// What is wrong, with the index and the expected vs found value.
        detail: String,
    },
}

impl ModelError {
    /// A GGUF error naming `path`.
    pub fn gguf(path: &Path, message: impl Into<String>) -> Self {
        Self::Gguf {
            path: path.display().to_string(),
            message: message.into(),
        }
    }

    /// Attaches a file name to a `GgufFormat` error.
    pub(crate) fn in_file(self, path: &Path) -> Self {
        match self {
            Self::GgufFormat(message) => Self::gguf(path, message),
            other => other,
        }
    }
}
