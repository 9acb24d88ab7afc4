//! The expert role (`moe-node --role expert`): a process that owns some experts of every
//! MoE layer and computes them for authenticated routers.
//!
//! ```text
//! expert_node.rs     `--role expert`: listener, handshake, one connection task set per peer
//! handshake_slots.rs how many unauthenticated connections a node holds, per address, and
//!                    which gives way to a newcomer
//! session.rs         one connection's thread: reads frames, computes the weighted partial
//!                    sums of each request, writes the replies
//! live_shard.rs      LiveShard: owned experts + their mapped model, swapped by live
//!                    re-placement
//! ```
//!
//! Flow control: a connection's thread reads the next frame only after answering the last
//! one (the router's requests wait in the socket), and each frame is read and written within
//! `PEER_TIMEOUT_MS`. Computations take turns on the node (one compute pool). Framing, MACs and encryption are
//! `moe_cluster::wire::Connection`'s, shared with the router's peer links.
//!
//! May import: `options`, `telemetry`; never `router`, `cli` or `serve`.

pub mod expert_node;
pub mod handshake_slots;
pub mod live_shard;
pub mod session;
