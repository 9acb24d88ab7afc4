//! The expert role (`moe-node --role expert`): a process that owns some experts of every
//! MoE layer and computes them for authenticated routers.
//!
//! ```text
//! expert_node.rs     `--role expert`: listener, handshake, one connection task set per peer
//! handshake_slots.rs how many unauthenticated connections a node holds, per address, and
//!                    which gives way to a newcomer
//! supervisor.rs      NodeSupervisorActor: owns the shard actor, restarts it when it fails
//! expert_shard.rs    ExpertShardActor: computes the weighted partial sums of a request
//! live_shard.rs      LiveShard: owned experts + their mapped model, swapped by live
//!                    re-placement
//! ```
//!
//! Flow control: a connection reads at most `REQUESTS_IN_FLIGHT_MAX` requests ahead of its
//! worker (a bounded channel), and every outgoing frame goes through a bounded writer queue
//! (`WRITER_QUEUE_FRAMES_MAX`). Ractor mailboxes are unbounded, so no tensor is ever queued
//! in one without such a bound in front of it. Framing, MACs and encryption are
//! `moe_cluster::wire::Connection`'s, shared with the router's peer links.
//!
//! May import: `options`, `telemetry`; never `router`, `cli` or `serve`.

pub mod expert_node;
pub mod expert_shard;
pub mod handshake_slots;
pub mod live_shard;
pub mod supervisor;
