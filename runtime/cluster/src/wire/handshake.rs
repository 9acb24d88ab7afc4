//! The hello handshake: versions and link options compared, then mutual proof of the cluster
//! secret, then per-direction frame keys for the session, then identities under those keys.
//!
//! ```text
//! client -> server  Hello { version, nonce_c, encrypt }          unkeyed
//! server -> client  Hello { version, nonce_s, encrypt }          unkeyed
//! client -> server  AuthProof { HMAC(secret, "client proof" | transcript) }
//! server -> client  AuthProof { HMAC(secret, "server proof" | transcript) }   (or Error)
//! client -> server  Identity { fingerprint, name, shards, exact }  under the session keys
//! server -> client  Identity { ... } once it accepts the client's (or Error)
//! ```
//!
//! Each side sends its `Hello` before checking the other's, so that a version mismatch is
//! seen by both sides with both values, each reporting it and sending an `Error` frame before
//! closing. The server judges the client's identity (model fingerprint, numeric mode) before
//! sending its own, and on a mismatch answers with an `Error` naming both nodes' values. The client
//! proves the secret first; the server answers with its own proof only after checking the
//! client's. A peer without the secret learns the protocol version, a nonce and whether the
//! link would be encrypted: never a node name, model fingerprint or shard list, and nothing
//! computed. `transcript` is SHA-256 over both hello frames as sent; the session key is
//! derived from the secret and the transcript, so both nonces make every session's keys new.
//!
//! Hello frames are not MAC'd (no key yet); what they claim is authenticated by the proofs.
//! An attacker on the path can still forge an early `Error` frame: that only ends a link it
//! could have cut anyway.

use std::future::Future;
use std::time::Duration;

use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncRead, AsyncWrite};

use super::frame::{
    decode_handshake_frame, derive_key, encode_frame, RecvMac, SendMac, SessionMac,
};
use super::io::{read_frame, write_frame};
use super::limits::{
    HANDSHAKE_FRAME_BYTES_MAX, HANDSHAKE_HELLO_TIMEOUT_MS, HANDSHAKE_TIMEOUT_MS, PROTOCOL_VERSION,
};
use super::message::{
    AuthProof, ErrorCode, ErrorMessage, Hello, Identity, Message, ModelShape, ShardSummary,
};
use crate::placement::NodeName;
use crate::ClusterError;

/// The shortest cluster secret accepted, in bytes.
pub const CLUSTER_SECRET_BYTES_MIN: usize = 16;
/// The longest cluster secret accepted, in bytes.
const CLUSTER_SECRET_BYTES_MAX: usize = 4096;

const TRANSCRIPT_LABEL: &[u8] = b"moe-node handshake v1";
const CLIENT_PROOF_LABEL: &[u8] = b"moe-node client proof";
const SERVER_PROOF_LABEL: &[u8] = b"moe-node server proof";
const SESSION_LABEL: &[u8] = b"moe-node session key";
const CLIENT_TO_SERVER_LABEL: &[u8] = b"client to server";
const SERVER_TO_CLIENT_LABEL: &[u8] = b"server to client";
const CLIENT_TO_SERVER_CIPHER_LABEL: &[u8] = b"client to server cipher";
const SERVER_TO_CLIENT_CIPHER_LABEL: &[u8] = b"server to client cipher";

/// How a peer is named in errors before its identity is authenticated.
const UNAUTHENTICATED_PEER: &str = "(unauthenticated)";

/// Hex digits of a fingerprint shown in a mismatch error.
const FINGERPRINT_HEX_SHOWN: usize = 16;

/// The cluster secret every node of a cluster shares (from a file or the environment, read
/// by the binary). Never printed.
#[derive(Clone)]
pub struct ClusterSecret(Vec<u8>);

impl ClusterSecret {
    /// Wraps `bytes`; fails when shorter than [`CLUSTER_SECRET_BYTES_MIN`] or over 4096 bytes.
    pub fn new(bytes: impl Into<Vec<u8>>) -> Result<Self, ClusterError> {
        let bytes = bytes.into();
        if bytes.is_empty() {
            return Err(ClusterError::ClusterSecret(format!(
                "empty, at least CLUSTER_SECRET_BYTES_MIN = {CLUSTER_SECRET_BYTES_MIN} bytes needed"
            )));
        }
        if bytes.len() < CLUSTER_SECRET_BYTES_MIN {
            return Err(ClusterError::ClusterSecret(format!(
                "{} bytes, at least CLUSTER_SECRET_BYTES_MIN = {CLUSTER_SECRET_BYTES_MIN} needed",
                bytes.len()
            )));
        }
        if bytes.len() > CLUSTER_SECRET_BYTES_MAX {
            return Err(ClusterError::ClusterSecret(format!(
                "{} bytes, at most {CLUSTER_SECRET_BYTES_MAX} accepted",
                bytes.len()
            )));
        }
        Ok(Self(bytes))
    }

    /// The secret as a secret file holds it: every byte as it is (binary secrets keep all
    /// their entropy; nothing is decoded as text), less leading and trailing ASCII whitespace
    /// (the newline `echo` or an editor adds). Empty or too short after trimming is refused.
    pub fn from_file_bytes(bytes: &[u8]) -> Result<Self, ClusterError> {
        Self::new(bytes.trim_ascii())
    }

    fn mac(&self) -> Hmac<Sha256> {
        // HMAC accepts keys of any length.
        <Hmac<Sha256> as Mac>::new_from_slice(&self.0)
            .unwrap_or_else(|_| unreachable!("HMAC accepts any key length"))
    }
}

impl std::fmt::Debug for ClusterSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ClusterSecret({} bytes, redacted)", self.0.len())
    }
}

/// What this node says about itself and checks of its peers.
#[derive(Clone, Debug)]
pub struct HandshakeConfig {
    /// This node's name.
    pub node_name: NodeName,
    /// This node's model fingerprint (GGUF metadata + tensor table hash).
    pub model_fingerprint: [u8; 32],
    /// The shared secret.
    pub secret: ClusterSecret,
    /// The experts this node owns.
    pub shards: ShardSummary,
    /// This node's model shape, to check the peer's shard lists and later frames.
    pub shape: ModelShape,
    /// How long each read or write of the handshake may take.
    pub step_timeout: Duration,
    /// How long a server waits for an accepted peer's whole hello (a peer that connects and
    /// says nothing frees its slot after this).
    pub hello_timeout: Duration,
    /// Whether frames after the handshake are encrypted (both sides must agree).
    pub encrypt: bool,
    /// Whether this node computes in the exact numeric mode (both sides must agree).
    pub exact: bool,
}

impl HandshakeConfig {
    /// A config with the default step timeout, [`HANDSHAKE_TIMEOUT_MS`].
    pub fn new(
        node_name: NodeName,
        model_fingerprint: [u8; 32],
        secret: ClusterSecret,
        shards: ShardSummary,
        shape: ModelShape,
    ) -> Self {
        Self {
            node_name,
            model_fingerprint,
            secret,
            shards,
            shape,
            step_timeout: Duration::from_millis(HANDSHAKE_TIMEOUT_MS),
            hello_timeout: Duration::from_millis(HANDSHAKE_HELLO_TIMEOUT_MS),
            encrypt: false,
            exact: true,
        }
    }
}

/// An authenticated peer, as its hello described it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerInfo {
    /// Its node name.
    pub name: NodeName,
    /// Its protocol version (equal to ours).
    pub protocol_version: u32,
    /// Its model fingerprint (equal to ours).
    pub model_fingerprint: [u8; 32],
    /// The experts it owns (checked against this node's expert count; turn it into a
    /// `LayerExperts` with [`ShardSummary::parse`]).
    pub shards: ShardSummary,
}

/// Connects as the client (the side that opened the connection): sends its hello first.
pub async fn client_handshake<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    config: &HandshakeConfig,
) -> Result<(PeerInfo, SessionMac), ClusterError> {
    handshake(stream, config, Side::Client).await
}

/// Accepts as the server (the side that accepted the connection): reads the client's hello
/// first, and proves the secret only after the client has.
pub async fn server_handshake<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    config: &HandshakeConfig,
) -> Result<(PeerInfo, SessionMac), ClusterError> {
    handshake(stream, config, Side::Server).await
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Side {
    Client,
    Server,
}

/// The stream and the handshake's unkeyed frame counters.
struct Link<'a, S> {
    stream: &'a mut S,
    send: SendMac,
    recv: RecvMac,
    config: &'a HandshakeConfig,
    /// The peer's name once its hello is in, for messages.
    peer: String,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Link<'_, S> {
    async fn send_frame(&mut self, frame: &[u8], step: &'static str) -> Result<(), ClusterError> {
        within(
            self.config.step_timeout,
            step,
            write_frame(self.stream, frame),
        )
        .await
    }

    async fn send(&mut self, message: &Message, step: &'static str) -> Result<(), ClusterError> {
        let frame = encode_frame(message, &mut self.send)?;
        self.send_frame(&frame, step).await
    }

    /// Sends an error frame, best effort: the caller is about to fail anyway.
    async fn refuse(&mut self, code: ErrorCode, reason: &str) {
        let _ = self
            .send(
                &Message::Error(ErrorMessage::new(code, reason)),
                "sending a refusal",
            )
            .await;
    }

    /// Reads one frame within the step timeout; returns it raw (for the transcript) with its
    /// message.
    async fn receive(&mut self, step: &'static str) -> Result<(Vec<u8>, Message), ClusterError> {
        self.receive_within(self.config.step_timeout, step).await
    }

    /// [`Link::receive`] within `limit`.
    async fn receive_within(
        &mut self,
        limit: Duration,
        step: &'static str,
    ) -> Result<(Vec<u8>, Message), ClusterError> {
        let frame = within(
            limit,
            step,
            read_frame(self.stream, HANDSHAKE_FRAME_BYTES_MAX),
        )
        .await?;
        let message = decode_handshake_frame(&frame, &mut self.recv, &self.config.shape)?;
        if let Message::Error(error) = &message {
            return Err(self.refused(error));
        }
        Ok((frame, message))
    }

    /// The error for a peer's `Error` frame.
    fn refused(&self, error: &ErrorMessage) -> ClusterError {
        match error.code {
            ErrorCode::AuthFailed => ClusterError::AuthFailed {
                peer: self.peer.clone(),
                detail: "rejected our proof of the cluster secret (the two nodes' secrets differ)"
                    .into(),
            },
            _ => ClusterError::PeerRefused {
                peer: self.peer.clone(),
                reason: error.message.clone(),
            },
        }
    }
}

async fn within<T>(
    limit: Duration,
    step: &'static str,
    work: impl Future<Output = Result<T, ClusterError>>,
) -> Result<T, ClusterError> {
    tokio::time::timeout(limit, work)
        .await
        .map_err(|_| ClusterError::HandshakeTimeout {
            step,
            ms: u64::try_from(limit.as_millis()).unwrap_or(u64::MAX),
        })?
}

async fn handshake<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    config: &HandshakeConfig,
    side: Side,
) -> Result<(PeerInfo, SessionMac), ClusterError> {
    let mut link = Link {
        stream,
        send: SendMac::unkeyed(),
        recv: RecvMac::unkeyed(),
        config,
        peer: UNAUTHENTICATED_PEER.into(),
    };
    let hello = Message::Hello(Hello {
        protocol_version: PROTOCOL_VERSION,
        nonce: fresh_nonce()?,
        encrypt: config.encrypt,
    });
    let my_hello = encode_frame(&hello, &mut link.send)?;

    // Hellos: the client speaks first; each side sends its hello before judging the peer's.
    if side == Side::Client {
        link.send_frame(&my_hello, "sending hello").await?;
    }
    let first_wait = match side {
        Side::Client => config.step_timeout,
        Side::Server => config.hello_timeout,
    };
    let (peer_hello_frame, peer_hello) = match link
        .receive_within(first_wait, "waiting for the peer's hello")
        .await
        .map_err(not_our_hello)?
    {
        (frame, Message::Hello(hello)) => (frame, hello),
        (_, other) => {
            let reason = format!("expected Hello, got {}", other.kind());
            link.refuse(ErrorCode::Other, &reason).await;
            return Err(ClusterError::FrameInvalid(reason));
        }
    };
    if side == Side::Server {
        link.send_frame(&my_hello, "sending hello").await?;
    }
    if let Err((code, error)) = check_hello(&peer_hello, config) {
        link.refuse(code, &error.to_string()).await;
        return Err(error);
    }

    // Proofs over the transcript of both hellos, client's first.
    let (client_hello, server_hello) = match side {
        Side::Client => (&my_hello, &peer_hello_frame),
        Side::Server => (&peer_hello_frame, &my_hello),
    };
    let transcript = Sha256::new()
        .chain_update(TRANSCRIPT_LABEL)
        .chain_update(client_hello)
        .chain_update(server_hello)
        .finalize();
    let proof = |label: &[u8]| {
        config
            .secret
            .mac()
            .chain_update(label)
            .chain_update(transcript)
    };
    let (my_label, peer_label) = match side {
        Side::Client => (CLIENT_PROOF_LABEL, SERVER_PROOF_LABEL),
        Side::Server => (SERVER_PROOF_LABEL, CLIENT_PROOF_LABEL),
    };
    let my_proof = Message::AuthProof(AuthProof {
        hmac: proof(my_label).finalize().into_bytes().into(),
    });

    if side == Side::Client {
        link.send(&my_proof, "sending the proof").await?;
    }
    let peer_proof = match link.receive("waiting for the peer's proof").await? {
        (_, Message::AuthProof(p)) => p,
        (_, other) => {
            let reason = format!("expected AuthProof, got {}", other.kind());
            link.refuse(ErrorCode::Other, &reason).await;
            return Err(ClusterError::FrameInvalid(reason));
        }
    };
    // Constant-time comparison.
    if proof(peer_label).verify_slice(&peer_proof.hmac).is_err() {
        let error = ClusterError::AuthFailed {
            peer: link.peer.clone(),
            detail: "did not prove the cluster secret".into(),
        };
        link.refuse(
            ErrorCode::AuthFailed,
            "this node could not verify your proof of the cluster secret",
        )
        .await;
        return Err(error);
    }
    if side == Side::Server {
        link.send(&my_proof, "sending the proof").await?;
    }

    // Both sides proved the secret: from here every frame is under the session keys.
    let session = config
        .secret
        .mac()
        .chain_update(SESSION_LABEL)
        .chain_update(transcript);
    let session: [u8; 32] = session.finalize().into_bytes().into();
    let keys = |label: &[u8], cipher_label: &[u8]| {
        (
            derive_key(&session, label),
            config.encrypt.then(|| derive_key(&session, cipher_label)),
        )
    };
    let client_to_server = keys(CLIENT_TO_SERVER_LABEL, CLIENT_TO_SERVER_CIPHER_LABEL);
    let server_to_client = keys(SERVER_TO_CLIENT_LABEL, SERVER_TO_CLIENT_CIPHER_LABEL);
    let (send_keys, recv_keys) = match side {
        Side::Client => (client_to_server, server_to_client),
        Side::Server => (server_to_client, client_to_server),
    };
    link.send = match send_keys {
        (mac, Some(cipher)) => SendMac::encrypted(mac, cipher),
        (mac, None) => SendMac::new(mac),
    };
    link.recv = match recv_keys {
        (mac, Some(cipher)) => RecvMac::encrypted(mac, cipher),
        (mac, None) => RecvMac::new(mac),
    };

    // Identities: the client's first; the server answers with its own only when it accepts
    // the client's (else with an Error naming what is wrong), so the client always learns
    // the server's verdict before it treats the link as up.
    let identity = Message::Identity(Identity {
        model_fingerprint: config.model_fingerprint,
        node_name: config.node_name.to_string(),
        shards: config.shards.clone(),
        exact: config.exact,
    });
    if side == Side::Client {
        link.send(&identity, "sending the identity").await?;
    }
    let peer_identity = match link.receive("waiting for the peer's identity").await? {
        (_, Message::Identity(identity)) => identity,
        (_, other) => {
            let reason = format!("expected Identity, got {}", other.kind());
            link.refuse(ErrorCode::Other, &reason).await;
            return Err(ClusterError::FrameInvalid(reason));
        }
    };
    link.peer = peer_identity.node_name.clone();
    if let Err((code, error, to_peer)) = check_identity(&peer_identity, config) {
        link.refuse(code, &to_peer).await;
        return Err(error);
    }
    let shards = match peer_identity.shards.check(config.shape.n_experts) {
        Ok(()) => peer_identity.shards.clone(),
        Err(error) => {
            link.refuse(ErrorCode::Other, &error.to_string()).await;
            return Err(error);
        }
    };
    if side == Side::Server {
        link.send(&identity, "sending the identity").await?;
    }
    let name = NodeName::new(&peer_identity.node_name).map_err(ClusterError::FrameInvalid)?;
    Ok((
        PeerInfo {
            name,
            protocol_version: peer_hello.protocol_version,
            model_fingerprint: peer_identity.model_fingerprint,
            shards,
        },
        SessionMac {
            send: link.send,
            recv: link.recv,
        },
    ))
}

/// The hello: protocol version first (a different version may mean a different everything),
/// then the link options both sides must share.
fn check_hello(peer: &Hello, config: &HandshakeConfig) -> Result<(), (ErrorCode, ClusterError)> {
    if peer.protocol_version != PROTOCOL_VERSION {
        return Err((
            ErrorCode::ProtocolMismatch,
            ClusterError::ProtocolMismatch {
                peer: UNAUTHENTICATED_PEER.into(),
                ours: PROTOCOL_VERSION,
                theirs: peer.protocol_version,
            },
        ));
    }
    if peer.encrypt != config.encrypt {
        let on_off = |on: bool| if on { "on" } else { "off" };
        return Err((
            ErrorCode::Other,
            ClusterError::PeerRefused {
                peer: UNAUTHENTICATED_PEER.into(),
                reason: format!(
                    "wire encryption differs: ours {}, theirs {} (give every node of a cluster the same --wire-encrypt)",
                    on_off(config.encrypt),
                    on_off(peer.encrypt)
                ),
            },
        ));
    }
    Ok(())
}

/// The authenticated identity: both sides must run the same model. On a mismatch: the code
/// and error for this side, and the words for the peer (naming both nodes, so that they read
/// right from either end).
fn check_identity(
    peer: &Identity,
    config: &HandshakeConfig,
) -> Result<(), (ErrorCode, ClusterError, String)> {
    if peer.model_fingerprint != config.model_fingerprint {
        let (ours, theirs) = (
            hex_prefix(&config.model_fingerprint),
            hex_prefix(&peer.model_fingerprint),
        );
        let to_peer = format!(
            "model fingerprint mismatch: node {:?} runs {ours}…, node {:?} runs {theirs}…",
            config.node_name.as_str(),
            peer.node_name
        );
        return Err((
            ErrorCode::FingerprintMismatch,
            ClusterError::FingerprintMismatch {
                peer: peer.node_name.clone(),
                ours,
                theirs,
            },
            to_peer,
        ));
    }
    if peer.exact != config.exact {
        let mode = |exact: bool| if exact { "exact" } else { "fast" };
        let reason = format!(
            "numeric modes differ: node {:?} computes {}, node {:?} {} (start the router and every expert node with the same --exact or --fast)",
            config.node_name.as_str(),
            mode(config.exact),
            peer.node_name,
            mode(peer.exact)
        );
        return Err((
            ErrorCode::Other,
            ClusterError::PeerRefused {
                peer: peer.node_name.clone(),
                reason: reason.clone(),
            },
            reason,
        ));
    }
    Ok(())
}

/// A first frame that does not read as a hello of this protocol is most likely a node of
/// another release: say so.
fn not_our_hello(error: ClusterError) -> ClusterError {
    match error {
        ClusterError::FrameInvalid(detail) => ClusterError::FrameInvalid(format!(
            "the peer's first frame is not a protocol-{PROTOCOL_VERSION} hello (a node of another moe-node release?): {detail}"
        )),
        other => other,
    }
}

fn hex_prefix(bytes: &[u8; 32]) -> String {
    bytes
        .iter()
        .take(FINGERPRINT_HEX_SHOWN / 2)
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn fresh_nonce() -> Result<[u8; 32], ClusterError> {
    let mut nonce = [0u8; 32];
    getrandom::fill(&mut nonce).map_err(|e| {
        ClusterError::WireIo(std::io::Error::other(format!(
            "no OS randomness for a nonce: {e}"
        )))
    })?;
    Ok(nonce)
}

#[cfg(test)]
mod tests;
