//! The expert-parallel cluster: processes, actors and links.
//!
//! ```text
//! args.rs            --role/--shards/--placement/--secret-file options, secret loading
//! expert_node.rs     `--role expert`: listener, handshake, one connection task set per peer
//! handshake_slots.rs how many unauthenticated connections a node holds, per address, and
//!                    which gives way to a newcomer
//! expert_shard.rs    ExpertShardActor: computes the weighted partial sums of a request
//! live_shard.rs     LiveShard: owned experts + their mapped model, swapped by live re-placement
//! supervisor.rs      NodeSupervisorActor: owns the shard actor, restarts it when it fails
//! peer_link.rs       PeerLinkActor (router side): one per remote node; connect, handshake,
//!                    heartbeats, reconnect, in-flight steps and their failure
//! remote_experts.rs  RemoteExperts: the forward pass's ExpertBackend over the links
//! router.rs          `--role router` without `--http`: generation requests as JSON lines on stdin
//! ```
//!
//! Flow control: the router's engine has at most one step in flight per link (it waits for
//! every reply before the next layer), an expert connection reads at most
//! `REQUESTS_IN_FLIGHT_MAX` requests ahead of its worker (a bounded channel), and every
//! outgoing frame goes through a bounded writer queue. Ractor mailboxes are unbounded, so no
//! tensor is ever queued in one without such a bound in front of it.

pub mod args;
pub mod expert_node;
pub mod expert_shard;
pub mod handshake_slots;
pub mod live_shard;
pub mod peer_link;
pub mod remote_experts;
pub mod router;
pub mod supervisor;
