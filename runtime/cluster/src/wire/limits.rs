//! Every bound a receiver enforces, with its unit in its name.
//!
//! The sizes follow Kimi K2.5 (hidden 7168, 384 experts, 8 per token) with headroom; the
//! router chunks a prefill batch so that each request frame stays under [`FRAME_BYTES_MAX`]
//! (2048 tokens x 7168 x 4 bytes of f32 is 58.7 MB).

/// The wire protocol version this build speaks; both sides of a link must be equal.
pub const PROTOCOL_VERSION: u32 = 3;

/// The largest frame after the handshake, length prefix excluded, in bytes.
pub const FRAME_BYTES_MAX: usize = 64 << 20;
/// The largest frame during the handshake, before the peer is authenticated, in bytes.
pub const HANDSHAKE_FRAME_BYTES_MAX: usize = 256 << 10;
/// The most tokens in one request or reply frame.
pub const TOKENS_PER_FRAME_MAX: usize = 2048;
/// The most (expert, weight) routes of one token in one request.
pub const EXPERTS_PER_TOKEN_MAX: usize = 64;
/// The largest hidden dimension, in elements.
pub const HIDDEN_DIM_MAX: usize = 32768;
/// The longest error message in an `Error` frame, in bytes.
pub const ERROR_MESSAGE_BYTES_MAX: usize = 4096;
/// The longest expert-list text in a hello's shard summary, in bytes.
pub const SHARDS_TEXT_BYTES_MAX: usize = 16 << 10;
/// The most per-layer overrides in a hello's shard summary.
pub const SHARD_OVERRIDES_MAX: usize = 256;

/// How long each handshake step may wait for the peer, in milliseconds.
pub const HANDSHAKE_TIMEOUT_MS: u64 = 5_000;
/// How long an expert node waits for an accepted connection's whole hello, in milliseconds:
/// a router sends it at once; a connection that stays silent frees its handshake slot.
pub const HANDSHAKE_HELLO_TIMEOUT_MS: u64 = 1_000;
/// How often an idle link sends a heartbeat, in milliseconds.
pub const HEARTBEAT_INTERVAL_MS: u64 = 1_000;
/// How long a link may receive nothing before its peer is declared dead, in milliseconds.
pub const PEER_TIMEOUT_MS: u64 = 5_000;
/// [`PEER_TIMEOUT_MS`] as a duration (also the longest wait for a peer to take a frame).
pub const PEER_TIMEOUT: std::time::Duration = std::time::Duration::from_millis(PEER_TIMEOUT_MS);
