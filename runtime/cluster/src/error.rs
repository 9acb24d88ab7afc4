//! `ClusterError`, the one error enum of this crate.

/// Everything placement files and the wire can refuse.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// A model-level error (GGUF, expert lists, an expert backend, ...).
    #[error(transparent)]
    Model(#[from] moe_model::ModelError),
    /// A bad argument from a caller (token id out of range, context full, ...).
    #[error("{0}")]
    InvalidInput(String),
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
}

impl ClusterError {
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
                | Self::Model(moe_model::ModelError::ExpertSetSyntax { .. })
        )
    }
}
