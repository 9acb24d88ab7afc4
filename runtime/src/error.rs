//! The one error type of this crate.

use std::path::Path;

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
    /// `synth` refused its options.
    #[error("synth: {0}")]
    Synth(String),
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
    /// A placement file that is not TOML of the expected shape (unknown field, wrong type, ...).
    #[error("placement line {line}, column {column}: {message}")]
    PlacementSyntax {
        /// 1-based line of the offending text.
        line: usize,
        /// 1-based column (in characters) of the offending text.
        column: usize,
        /// What is wrong.
        message: String,
    },
    /// A placement node entry that is well-formed TOML but not a valid node.
    #[error("placement {location} (node {node:?}): {message}")]
    PlacementNode {
        /// Where the entry is: "line 7" in a file, "entry 2" in a `--shards` list.
        location: String,
        /// The entry's node name as written.
        node: String,
        /// What is wrong.
        message: String,
    },
    /// A placement that leaves experts of a MoE layer without any owner.
    #[error("placement: MoE layer {layer}: experts {experts} have no owner{hint}")]
    ExpertUnowned {
        /// The model layer index.
        layer: usize,
        /// The unowned experts, as an expert list.
        experts: String,
        /// Which node entries override this layer (they are the usual cause), or "".
        hint: String,
    },
    /// The model shape a placement or frame is checked against is itself out of bounds.
    #[error("placement: {0}")]
    PlacementModel(String),
    /// A frame whose length prefix exceeds the limit in force; refused before allocating.
    #[error("frame of {bytes} bytes exceeds {limit_name} = {limit} bytes")]
    FrameTooLarge {
        /// The length the prefix announced (or the encoder produced).
        bytes: u64,
        /// Which limit: `FRAME_BYTES_MAX` or `HANDSHAKE_FRAME_BYTES_MAX`.
        limit_name: &'static str,
        /// Its value in bytes.
        limit: usize,
    },
    /// The connection ended inside a frame.
    #[error("connection closed inside a frame ({expected} bytes announced)")]
    FrameTruncated {
        /// Bytes the length prefix announced (or the minimum frame size).
        expected: usize,
    },
    /// The peer closed the connection between frames.
    #[error("connection closed by peer")]
    PeerClosed,
    /// I/O error on a data-plane connection.
    #[error("connection: {0}")]
    WireIo(#[source] std::io::Error),
    /// A frame whose MAC does not verify: corrupted in transit or forged.
    #[error("frame authentication failed: MAC mismatch (frame corrupted or forged)")]
    FrameMac,
    /// A frame whose sequence number is not the next one: replayed, reordered or dropped.
    #[error("frame sequence {got}, expected {expected} (replayed, reordered or dropped frame)")]
    FrameSequence {
        /// The next sequence number this side expected.
        expected: u64,
        /// The number the frame carried.
        got: u64,
    },
    /// A field of a frame exceeds a named wire limit.
    #[error("frame field {field} = {value} exceeds {limit_name} = {limit}")]
    FrameLimit {
        /// The field.
        field: &'static str,
        /// Its value.
        value: u64,
        /// The limit's name (a constant in `wire`).
        limit_name: &'static str,
        /// The limit.
        limit: u64,
    },
    /// A frame that fails validation (archive check, offsets, ids, lengths).
    #[error("invalid frame: {0}")]
    FrameInvalid(String),
    /// The peer did not prove knowledge of the cluster secret, or rejected our proof.
    #[error("authentication failed: peer {peer:?} {detail}")]
    AuthFailed {
        /// The peer's name as it claimed it in its hello.
        peer: String,
        /// "did not prove the cluster secret" or "rejected our proof ...".
        detail: String,
    },
    /// The peer runs a different model (fingerprints differ).
    #[error("model fingerprint mismatch with peer {peer:?}: ours {ours}…, theirs {theirs}…")]
    FingerprintMismatch {
        /// The peer's name.
        peer: String,
        /// Hex prefix of our fingerprint.
        ours: String,
        /// Hex prefix of the peer's fingerprint.
        theirs: String,
    },
    /// The peer speaks a different wire protocol version.
    #[error("protocol version mismatch with peer {peer:?}: ours {ours}, theirs {theirs}")]
    ProtocolMismatch {
        /// The peer's name.
        peer: String,
        /// Our `PROTOCOL_VERSION`.
        ours: u32,
        /// The peer's.
        theirs: u32,
    },
    /// The peer refused the handshake or the session with an error frame.
    #[error("peer {peer:?} refused: {reason}")]
    PeerRefused {
        /// The peer's name ("" before its hello).
        peer: String,
        /// The reason it sent.
        reason: String,
    },
    /// A handshake step that did not finish in time.
    #[error("handshake timed out after {ms} ms ({step})")]
    HandshakeTimeout {
        /// The step that was waiting.
        step: &'static str,
        /// The limit in milliseconds.
        ms: u64,
    },
    /// A cluster secret that is too short or could not be used.
    #[error("cluster secret: {0}")]
    ClusterSecret(String),
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
    /// A routing trace that is malformed or exceeds a limit (line 0 = the stream as a whole).
    #[error("routing trace line {line}: {message}")]
    TraceFormat {
        /// 1-based line number.
        line: usize,
        /// What is wrong: the record, the value, and what was expected (or which limit).
        message: String,
    },
    /// A placement plan that cannot be made (capacities, node list, replicas).
    #[error("placement plan: {0}")]
    Plan(String),
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

impl RuntimeError {
    /// A GGUF error naming `path`.
    pub fn gguf(path: &Path, message: impl Into<String>) -> Self {
        Self::Gguf {
            path: path.display().to_string(),
            message: message.into(),
        }
    }

    /// Whether a handshake failed because the peer (or this side) refused it on its merits:
    /// a wrong secret, another protocol or model, link options or shards that do not match.
    /// Retrying will not help until an operator changes something. Everything else (a reset,
    /// a close, a timeout, a garbled frame) is a transport failure worth retrying.
    pub fn is_refusal(&self) -> bool {
        matches!(
            self,
            Self::AuthFailed { .. }
                | Self::FingerprintMismatch { .. }
                | Self::ProtocolMismatch { .. }
                | Self::PeerRefused { .. }
                | Self::ClusterSecret(_)
                | Self::ExpertSetSyntax { .. }
        )
    }

    /// Attaches a file name to a `GgufFormat` error.
    pub(crate) fn in_file(self, path: &Path) -> Self {
        match self {
            Self::GgufFormat(message) => Self::gguf(path, message),
            other => other,
        }
    }
}
