//! The data-plane wire protocol: frames, their limits, message validation, the handshake.
//!
//! This module decides the bytes on a router <-> expert-node TCP connection and everything a
//! receiver checks before it acts on them. It leaves to others (the actors crate): sockets
//! and their tasks, queues and credits, heartbeat timers, and matching replies to steps.
//!
//! ```text
//! wire/limits.rs     named limits with units (FRAME_BYTES_MAX, TOKENS_PER_FRAME_MAX, ...)
//! wire/message.rs    Message and its payloads (rkyv), checks of an archived message
//! wire/frame.rs      SendMac/RecvMac/SessionMac, encode_frame, decode_frame, seal_frame
//! wire/io.rs         read_frame/write_frame over tokio and std streams
//! wire/connection.rs Connection: one authenticated TCP stream split into a blocking
//!                    FrameReader and FrameWriter, used by both ends
//! wire/hidden.rs     WireDtype and f32 <-> wire dtype (f32, bf16, q8) conversion of hidden states
//! wire/handshake.rs  client_handshake/server_handshake: versions, fingerprint, mutual auth
//! ```
//!
//! # Frame layout
//!
//! All integers little-endian. `A` is the length of the rkyv archive.
//!
//! ```text
//! offset   size  field
//! 0        4     body_len: u32 = A + 8 + 32, the bytes after this field
//!                (checked against FRAME_BYTES_MAX, HANDSHAKE_FRAME_BYTES_MAX during the
//!                handshake, before anything is allocated)
//! 4        A     archive: rkyv 0.8 archive of one `Message` (rkyv's default format:
//!                little-endian, aligned fields, 32-bit relative pointers, root at the end);
//!                on an encrypted link, XORed with the direction's ChaCha20 keystream
//! 4+A      8     seq: u64, this direction's frame counter: 0, 1, 2, ... per key
//! 12+A     32    mac: HMAC-SHA256(direction key, bytes[0 .. 12+A]); all zero in the
//!                handshake's frames, which are authenticated by the proofs instead
//! ```
//!
//! A receiver checks, in order: the length against the limit in force (before allocating);
//! the MAC (constant-time; nothing of an unauthenticated frame is parsed); the sequence
//! number (stops replay, reordering and dropping); the archive with `rkyv::access`
//! (bytecheck, never the unchecked form); then every count, length, offset and id against
//! the named limits and the receiver's [`ModelShape`]. Only then is a [`Message`] built.
//!
//! # One MoE layer step
//!
//! The router sends each node owning at least one selected expert ONE [`ExpertRequest`]:
//! the hidden state of each token that node needs, once, plus that token's (expert, weight)
//! routes, flattened with `token_offsets`. The node answers with ONE [`ExpertReply`] holding,
//! per token in request order, `sum over its routes of weight * expert(hidden)`.
//!
//! # Handshake (see `handshake.rs`)
//!
//! ```text
//! client -> server  Hello { version, nonce_c, encrypt }
//! server -> client  Hello { version, nonce_s, encrypt }
//!                   each side checks version and encrypt; on mismatch it sends
//!                   Error and closes, and the other side sees the same mismatch
//! client -> server  AuthProof { HMAC(secret, "client proof" | transcript) }
//! server -> client  AuthProof { HMAC(secret, "server proof" | transcript) }   (or Error)
//! client -> server  Identity { fingerprint, name, shards, exact }, the first keyed frame
//! server -> client  Identity { ... } once it accepts the client's (or Error naming why)
//! ```
//! `transcript` is SHA-256 over both hello frames as sent; per-direction frame keys are
//! derived from the secret and the transcript, so both nonces make every session's keys new.
//! Nothing about a node (name, model, shards) crosses the wire before the peer has proven
//! the secret. With `encrypt`, every frame after the proofs has its archive encrypted
//! (ChaCha20, nonce = sequence number) and MAC'd over the ciphertext.
//!
//! # Example
//!
//! ```
//! use moe_cluster::wire::{decode_frame, encode_frame, Heartbeat, Message, ModelShape, SessionMac};
//!
//! // Both ends of one session (the handshake derives these from the cluster secret).
//! let (mut router, mut expert) = SessionMac::pair_from_key([7; 32]);
//! let frame = encode_frame(&Message::Heartbeat(Heartbeat { counter: 1 }), &mut router.send)?;
//! let shape = ModelShape { n_experts: 384, hidden_dim: 7168 };
//! let message = decode_frame(&frame, &mut expert.recv, &shape)?;
//! assert_eq!(message, Message::Heartbeat(Heartbeat { counter: 1 }));
//! // The same frame again is a replay.
//! assert!(decode_frame(&frame, &mut expert.recv, &shape).is_err());
//! # Ok::<(), moe_cluster::ClusterError>(())
//! ```

mod connection;
mod frame;
mod handshake;
mod hidden;
mod io;
mod limits;
mod message;

pub use connection::{Connection, FrameReader, FrameWriter};
pub use frame::{decode_frame, encode_frame, seal_frame, RecvMac, SendMac, SessionMac, MAC_BYTES};
pub use handshake::{
    client_handshake, server_handshake, ClusterSecret, HandshakeConfig, PeerInfo,
    CLUSTER_SECRET_BYTES_MIN,
};
pub use hidden::{decode_hidden, encode_hidden, WireDtype, Q8_BLOCK, Q8_BLOCK_BYTES};
pub use io::{await_readable, read_frame, read_frame_sync, write_frame, write_frame_sync};
pub use limits::*;
pub use message::{
    ArchivedMessage, AuthProof, ErrorCode, ErrorMessage, ExpertReply, ExpertRequest, ExpertRoute,
    Heartbeat, Hello, Identity, LayerShards, Message, ModelShape, Reassign, ReassignAck,
    ReassignPhase, ShardSummary,
};
