//! The messages a frame carries, and the checks an archived message passes before it is used.

use std::collections::BTreeMap;

use moe_model::LayerExperts;
use rkyv::{Archive, Deserialize, Serialize};

use super::hidden::{encode_hidden, ArchivedWireDtype, WireDtype};
use super::limits::*;
use crate::placement::{ExpertSet, NodeName, PlacementNode};
use crate::ClusterError;

/// The receiver's model dimensions that request and reply frames are checked against.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ModelShape {
    /// Routed experts per MoE layer: every expert id must be below this.
    pub n_experts: usize,
    /// Hidden dimension (elements per token's hidden state).
    pub hidden_dim: usize,
}

/// Everything one frame can carry.
#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq)]
pub enum Message {
    /// The first frame each side sends (unauthenticated: version, nonce, options only).
    Hello(Hello),
    /// The handshake's proof of the cluster secret.
    AuthProof(AuthProof),
    /// Router -> expert node: tokens and their routes for one MoE layer step.
    ExpertRequest(ExpertRequest),
    /// Expert node -> router: the weighted partial sums for one request.
    ExpertReply(ExpertReply),
    /// Liveness when a link is otherwise idle.
    Heartbeat(Heartbeat),
    /// A refusal with its reason, sent before closing.
    Error(ErrorMessage),
    /// Router -> expert node: change the experts this node owns (live re-placement).
    Reassign(Reassign),
    /// Expert node -> router: the outcome of a [`Reassign`].
    ReassignAck(ReassignAck),
    /// Each side's first frame after the proofs, under the session keys: who it is.
    Identity(Identity),
}

/// The two phases of a live re-placement, per node.
#[derive(Archive, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReassignPhase {
    /// Map `shards` in addition to what the node owns now; it keeps serving both.
    Prepare,
    /// Own exactly `shards`; release everything else (after the router has switched).
    Commit,
}

/// Router -> expert node: a new shard assignment.
#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Reassign {
    /// Identifies this re-placement; the ack repeats it.
    pub epoch: u64,
    /// Which phase.
    pub phase: ReassignPhase,
    /// The node's experts in the new placement.
    pub shards: ShardSummary,
}

/// Expert node -> router: the outcome of a [`Reassign`].
#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct ReassignAck {
    /// The request's epoch.
    pub epoch: u64,
    /// Empty on success, else why the node refused (it then keeps its old experts).
    pub error: String,
}

impl Message {
    /// The variant's name, for messages ("ExpertRequest").
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Hello(_) => "Hello",
            Self::AuthProof(_) => "AuthProof",
            Self::ExpertRequest(_) => "ExpertRequest",
            Self::ExpertReply(_) => "ExpertReply",
            Self::Heartbeat(_) => "Heartbeat",
            Self::Error(_) => "Error",
            Self::Reassign(_) => "Reassign",
            Self::ReassignAck(_) => "ReassignAck",
            Self::Identity(_) => "Identity",
        }
    }
}

/// The first frame of each side, before either has proven the secret: only what the
/// handshake needs, so that a peer without the secret learns nothing about the node.
///
/// Its layout stays as it is in every later protocol version, so that a node of another
/// version can always read the version and report the mismatch.
#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct Hello {
    /// The sender's [`PROTOCOL_VERSION`].
    pub protocol_version: u32,
    /// 32 fresh random bytes; both nonces go into the proofs and the session keys.
    pub nonce: [u8; 32],
    /// Whether the sender encrypts its frames after the handshake (both sides must agree).
    pub encrypt: bool,
}

/// A node introducing itself, sent only after both sides proved the cluster secret, under
/// the session keys (MAC'd, and encrypted when the link is).
#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct Identity {
    /// SHA-256 of the model's metadata and tensor table: both sides must run the same model.
    pub model_fingerprint: [u8; 32],
    /// The sender's node name (a valid `NodeName`).
    pub node_name: String,
    /// The experts the sender owns (empty for a router without a local shard).
    pub shards: ShardSummary,
    /// Whether the sender computes in the exact numeric mode (f32 activations) rather than
    /// the fast one: a router and its expert nodes must agree, so that an exact run is never
    /// silently computed partly in the fast mode.
    pub exact: bool,
}

/// The experts a node owns, as expert-list texts (`0-95,200`): the wire form of a
/// [`LayerExperts`], nothing more. [`ShardSummary::parse`] turns it back into one.
#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
pub struct ShardSummary {
    /// Experts owned in every MoE layer without an override.
    pub all_layers: String,
    /// Per-layer sets that replace `all_layers` in their layer.
    pub overrides: Vec<LayerShards>,
}

/// One per-layer entry of a [`ShardSummary`].
#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct LayerShards {
    /// The model layer index.
    pub layer: u16,
    /// The experts owned in that layer.
    pub experts: String,
}

impl ShardSummary {
    /// The summary of a placement node's sets.
    pub fn of_node(node: &PlacementNode) -> Self {
        Self {
            all_layers: node.shards.to_string(),
            overrides: node
                .layer_overrides
                .iter()
                .map(|(&layer, set)| LayerShards {
                    // Placement bounds layer indices by MOE_LAYERS_MAX < u16::MAX.
                    layer: u16::try_from(layer).unwrap_or(u16::MAX),
                    experts: set.to_string(),
                })
                .collect(),
        }
    }

    /// The same experts in every MoE layer.
    pub fn uniform(set: &ExpertSet) -> Self {
        Self {
            all_layers: set.to_string(),
            overrides: Vec::new(),
        }
    }

    /// The text form of `experts`: no `all_layers`, one override per layer with an entry.
    pub fn of(experts: &LayerExperts) -> Self {
        Self {
            all_layers: String::new(),
            overrides: experts
                .iter()
                .map(|(layer, set)| LayerShards {
                    // Model layers are bounded by the GGUF config, far below u16::MAX.
                    layer: u16::try_from(layer).unwrap_or(u16::MAX),
                    experts: set.to_string(),
                })
                .collect(),
        }
    }

    /// Checks every text against a model with `n_experts` experts (and that no layer is
    /// overridden twice), without knowing its layers; the handshake's check of a hello.
    pub fn check(&self, n_experts: usize) -> Result<(), ClusterError> {
        self.parse_parts(n_experts).map(|_| ())
    }

    /// The experts owned in each of `n_layers` model layers: for every layer with
    /// `is_moe(layer)`, its override or else `all_layers`; nothing in other layers.
    /// Overrides of layers that are not MoE layers of this model are ignored.
    pub fn parse(
        &self,
        n_experts: usize,
        n_layers: usize,
        is_moe: impl Fn(usize) -> bool,
    ) -> Result<LayerExperts, ClusterError> {
        let (all_layers, overrides) = self.parse_parts(n_experts)?;
        Ok(LayerExperts::new(
            (0..n_layers)
                .map(|l| is_moe(l).then(|| overrides.get(&l).unwrap_or(&all_layers).clone()))
                .collect(),
        ))
    }

    fn parse_parts(
        &self,
        n_experts: usize,
    ) -> Result<(ExpertSet, BTreeMap<usize, ExpertSet>), ClusterError> {
        let all_layers = ExpertSet::parse(&self.all_layers, n_experts)?;
        let mut overrides = BTreeMap::new();
        for entry in &self.overrides {
            let set = ExpertSet::parse(&entry.experts, n_experts)?;
            if overrides.insert(usize::from(entry.layer), set).is_some() {
                return Err(ClusterError::FrameInvalid(format!(
                    "hello: layer {} is overridden twice in the shard summary",
                    entry.layer
                )));
            }
        }
        Ok((all_layers, overrides))
    }
}

/// A handshake proof: HMAC-SHA256 over the transcript with the cluster secret.
#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct AuthProof {
    /// The MAC.
    pub hmac: [u8; 32],
}

/// One (expert, weight) route of a token.
#[derive(Archive, Serialize, Deserialize, Clone, Copy, Debug, PartialEq)]
pub struct ExpertRoute {
    /// The expert id in its layer (below the model's expert count).
    pub expert: u16,
    /// The gate weight multiplying that expert's output (finite).
    pub weight: f32,
}

/// Router -> expert node: the tokens of one MoE layer step that this node must compute.
///
/// Token `t`'s hidden state is `hidden[t * dtype.row_bytes(hidden_dim) ..][..]`, its
/// routes are `routes[token_offsets[t] .. token_offsets[t + 1]]`.
#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct ExpertRequest {
    /// The router's step counter; the reply echoes it.
    pub step_id: u64,
    /// The model layer index.
    pub layer: u16,
    /// Encoding of `hidden` (the reply's partials are in `dtype.reply()`).
    pub dtype: WireDtype,
    /// Tokens in this frame, 1 to [`TOKENS_PER_FRAME_MAX`].
    pub n_tokens: u32,
    /// Elements per hidden state; must equal the receiver's model.
    pub hidden_dim: u32,
    /// `n_tokens` rows of `hidden_dim` elements in `dtype`, token-major, little-endian.
    pub hidden: Vec<u8>,
    /// `n_tokens + 1` offsets into `routes`: starts at 0, strictly increasing (every token
    /// has 1 to [`EXPERTS_PER_TOKEN_MAX`] routes), ends at `routes.len()`.
    pub token_offsets: Vec<u32>,
    /// Every token's routes, flattened; no expert twice within one token.
    pub routes: Vec<ExpertRoute>,
}

impl ExpertRequest {
    /// An empty request, to be filled with [`ExpertRequest::push_token`].
    pub fn new(step_id: u64, layer: u16, dtype: WireDtype, hidden_dim: u32) -> Self {
        Self {
            step_id,
            layer,
            dtype,
            n_tokens: 0,
            hidden_dim,
            hidden: Vec::new(),
            token_offsets: vec![0],
            routes: Vec::new(),
        }
    }

    /// Appends one token: its hidden state (converted to `dtype`) and its routes.
    pub fn push_token(
        &mut self,
        hidden: &[f32],
        routes: &[ExpertRoute],
    ) -> Result<(), ClusterError> {
        if hidden.len() != self.hidden_dim as usize {
            return Err(ClusterError::InvalidInput(format!(
                "hidden state of {} elements, the request's hidden_dim is {}",
                hidden.len(),
                self.hidden_dim
            )));
        }
        if self.dtype.row_bytes(hidden.len()).is_none() {
            return Err(ClusterError::InvalidInput(format!(
                "a hidden size of {} is not a whole number of {} units ({} elements)",
                hidden.len(),
                self.dtype,
                self.dtype.unit().0
            )));
        }
        if routes.is_empty() || routes.len() > EXPERTS_PER_TOKEN_MAX {
            return Err(limit_error(
                "routes per token",
                routes.len(),
                "EXPERTS_PER_TOKEN_MAX",
                EXPERTS_PER_TOKEN_MAX,
            ));
        }
        if self.n_tokens as usize >= TOKENS_PER_FRAME_MAX {
            return Err(limit_error(
                "n_tokens",
                TOKENS_PER_FRAME_MAX + 1,
                "TOKENS_PER_FRAME_MAX",
                TOKENS_PER_FRAME_MAX,
            ));
        }
        encode_hidden(hidden, self.dtype, &mut self.hidden);
        self.routes.extend_from_slice(routes);
        self.token_offsets
            .push(u32::try_from(self.routes.len()).unwrap_or(u32::MAX));
        self.n_tokens += 1;
        Ok(())
    }

    /// Token `token`'s routes (empty past the last token).
    pub fn routes_of(&self, token: usize) -> &[ExpertRoute] {
        let (Some(&start), Some(&end)) = (
            self.token_offsets.get(token),
            self.token_offsets.get(token + 1),
        ) else {
            return &[];
        };
        self.routes.get(start as usize..end as usize).unwrap_or(&[])
    }

    /// Token `token`'s hidden state in wire bytes (empty past the last token).
    pub fn hidden_of(&self, token: usize) -> &[u8] {
        let row = self
            .dtype
            .row_bytes(self.hidden_dim as usize)
            .unwrap_or_default();
        self.hidden
            .get(token * row..(token + 1) * row)
            .unwrap_or(&[])
    }
}

/// Expert node -> router: per token of the request, in its order, the sum over the token's
/// routes of `weight * expert(hidden)`.
#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct ExpertReply {
    /// The request's `step_id`.
    pub step_id: u64,
    /// The request's layer.
    pub layer: u16,
    /// Encoding of `partials`.
    pub dtype: WireDtype,
    /// The request's token count.
    pub n_tokens: u32,
    /// Elements per partial sum; must equal the receiver's model.
    pub hidden_dim: u32,
    /// `n_tokens * hidden_dim` elements of `dtype`, token-major, little-endian.
    pub partials: Vec<u8>,
}

/// Liveness probe; any frame counts as a sign of life, this one is sent when idle.
#[derive(Archive, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub struct Heartbeat {
    /// The sender's heartbeat counter.
    pub counter: u64,
}

/// What kind of refusal an [`ErrorMessage`] is, so the receiver can report it precisely.
#[derive(Archive, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorCode {
    /// Protocol versions differ.
    ProtocolMismatch,
    /// Model fingerprints differ.
    FingerprintMismatch,
    /// The receiver of the sender's proof found it wrong.
    AuthFailed,
    /// Anything else (bad frame, shutdown, ...).
    Other,
}

/// A refusal, sent before closing.
#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct ErrorMessage {
    /// What kind.
    pub code: ErrorCode,
    /// For people, at most [`ERROR_MESSAGE_BYTES_MAX`] bytes.
    pub message: String,
    /// The refused request's `step_id`, or 0 when the error is about the connection.
    pub step_id: u64,
}

impl ErrorMessage {
    /// An error frame's payload, with `message` cut to [`ERROR_MESSAGE_BYTES_MAX`] bytes.
    pub fn new(code: ErrorCode, message: &str) -> Self {
        let mut end = message.len().min(ERROR_MESSAGE_BYTES_MAX);
        while !message.is_char_boundary(end) {
            end -= 1;
        }
        Self {
            code,
            message: message.get(..end).unwrap_or_default().to_string(),
            step_id: 0,
        }
    }

    /// The refusal of one request: only that step fails, the connection stays.
    pub fn for_step(step_id: u64, message: &str) -> Self {
        Self {
            step_id,
            ..Self::new(ErrorCode::Other, message)
        }
    }
}

fn limit_error(
    field: &'static str,
    value: usize,
    limit_name: &'static str,
    limit: usize,
) -> ClusterError {
    ClusterError::FrameLimit {
        field,
        value: value as u64,
        limit_name,
        limit: limit as u64,
    }
}

fn invalid(reason: impl Into<String>) -> ClusterError {
    ClusterError::FrameInvalid(reason.into())
}

/// Checks an archived message against the limits and `shape`; after this, building the
/// owned message allocates at most what the frame already holds and every index is valid.
pub(crate) fn check_archived(
    message: &ArchivedMessage,
    shape: &ModelShape,
) -> Result<(), ClusterError> {
    match message {
        ArchivedMessage::Identity(identity) => {
            NodeName::new(identity.node_name.as_str())
                .map_err(|reason| invalid(format!("identity: {reason}")))?;
            check_shards(&identity.shards)
        }
        ArchivedMessage::Hello(_) => Ok(()),
        ArchivedMessage::Reassign(reassign) => check_shards(&reassign.shards),
        ArchivedMessage::ReassignAck(ack) => check_len(
            "reassign_ack.error",
            ack.error.len(),
            "ERROR_MESSAGE_BYTES_MAX",
            ERROR_MESSAGE_BYTES_MAX,
        ),
        ArchivedMessage::AuthProof(_) | ArchivedMessage::Heartbeat(_) => Ok(()),
        ArchivedMessage::Error(error) => check_len(
            "error.message",
            error.message.len(),
            "ERROR_MESSAGE_BYTES_MAX",
            ERROR_MESSAGE_BYTES_MAX,
        ),
        ArchivedMessage::ExpertRequest(request) => check_request(request, shape),
        ArchivedMessage::ExpertReply(reply) => {
            let dtype = archived_dtype(&reply.dtype);
            check_tensor(
                reply.n_tokens.to_native(),
                reply.hidden_dim.to_native(),
                dtype,
                reply.partials.len(),
                "partials",
                shape,
            )
        }
    }
}

/// Checks the text lengths of a shard summary (hello, reassign).
fn check_shards(shards: &ArchivedShardSummary) -> Result<(), ClusterError> {
    check_len(
        "shards.overrides",
        shards.overrides.len(),
        "SHARD_OVERRIDES_MAX",
        SHARD_OVERRIDES_MAX,
    )?;
    check_len(
        "shards.all_layers",
        shards.all_layers.len(),
        "SHARDS_TEXT_BYTES_MAX",
        SHARDS_TEXT_BYTES_MAX,
    )?;
    for entry in shards.overrides.iter() {
        check_len(
            "shards.overrides.experts",
            entry.experts.len(),
            "SHARDS_TEXT_BYTES_MAX",
            SHARDS_TEXT_BYTES_MAX,
        )?;
    }
    Ok(())
}

fn check_len(
    field: &'static str,
    value: usize,
    limit_name: &'static str,
    limit: usize,
) -> Result<(), ClusterError> {
    if value > limit {
        return Err(limit_error(field, value, limit_name, limit));
    }
    Ok(())
}

fn archived_dtype(dtype: &ArchivedWireDtype) -> WireDtype {
    match dtype {
        ArchivedWireDtype::F32 => WireDtype::F32,
        ArchivedWireDtype::Bf16 => WireDtype::Bf16,
        ArchivedWireDtype::Q8 => WireDtype::Q8,
    }
}

/// Token count, hidden dim and the byte length of a token-major tensor.
fn check_tensor(
    n_tokens: u32,
    hidden_dim: u32,
    dtype: WireDtype,
    bytes: usize,
    what: &str,
    shape: &ModelShape,
) -> Result<(), ClusterError> {
    let n_tokens = n_tokens as usize;
    if n_tokens == 0 {
        return Err(invalid("n_tokens is 0"));
    }
    check_len(
        "n_tokens",
        n_tokens,
        "TOKENS_PER_FRAME_MAX",
        TOKENS_PER_FRAME_MAX,
    )?;
    check_len(
        "hidden_dim",
        hidden_dim as usize,
        "HIDDEN_DIM_MAX",
        HIDDEN_DIM_MAX,
    )?;
    if hidden_dim as usize != shape.hidden_dim {
        return Err(invalid(format!(
            "hidden_dim {hidden_dim}, this node's model has {}",
            shape.hidden_dim
        )));
    }
    let Some(row) = dtype.row_bytes(hidden_dim as usize) else {
        return Err(invalid(format!(
            "hidden_dim {hidden_dim} is not a whole number of {dtype} units ({} elements)",
            dtype.unit().0
        )));
    };
    // Both factors are bounded above, so this cannot overflow; checked anyway.
    if n_tokens.checked_mul(row) != Some(bytes) {
        return Err(invalid(format!(
            "{what} is {bytes} bytes, expected n_tokens {n_tokens} x {row} bytes (hidden_dim \
             {hidden_dim} in {dtype})"
        )));
    }
    Ok(())
}

fn check_request(request: &ArchivedExpertRequest, shape: &ModelShape) -> Result<(), ClusterError> {
    let n_tokens = request.n_tokens.to_native();
    let dtype = archived_dtype(&request.dtype);
    check_tensor(
        n_tokens,
        request.hidden_dim.to_native(),
        dtype,
        request.hidden.len(),
        "hidden",
        shape,
    )?;
    let offsets = request.token_offsets.as_slice();
    let routes = request.routes.as_slice();
    if offsets.len() != n_tokens as usize + 1 {
        return Err(invalid(format!(
            "{} token offsets for {n_tokens} tokens (expected n_tokens + 1)",
            offsets.len()
        )));
    }
    if offsets.first().map(|o| o.to_native()) != Some(0) {
        return Err(invalid("token offsets do not start at 0"));
    }
    if offsets.last().map(|o| o.to_native() as usize) != Some(routes.len()) {
        return Err(invalid(format!(
            "token offsets do not end at the {} routes",
            routes.len()
        )));
    }
    for (token, pair) in offsets.windows(2).enumerate() {
        let [start, end] = pair else { continue };
        let (start, end) = (start.to_native() as usize, end.to_native() as usize);
        if end <= start {
            return Err(invalid(format!(
                "token {token}: offsets {start}..{end} are not increasing (every token needs a route)"
            )));
        }
        check_len(
            "routes per token",
            end - start,
            "EXPERTS_PER_TOKEN_MAX",
            EXPERTS_PER_TOKEN_MAX,
        )?;
        let Some(token_routes) = routes.get(start..end) else {
            return Err(invalid(format!(
                "token {token}: routes {start}..{end} out of range"
            )));
        };
        for (i, route) in token_routes.iter().enumerate() {
            let expert = route.expert.to_native();
            if expert as usize >= shape.n_experts {
                return Err(invalid(format!(
                    "token {token}: expert {expert} is past this model's {} experts",
                    shape.n_experts
                )));
            }
            let weight = route.weight.to_native();
            if !weight.is_finite() {
                return Err(invalid(format!(
                    "token {token}: expert {expert} has weight {weight}"
                )));
            }
            if token_routes
                .iter()
                .take(i)
                .any(|r| r.expert.to_native() == expert)
            {
                return Err(invalid(format!(
                    "token {token}: expert {expert} appears twice"
                )));
            }
        }
    }
    Ok(())
}
