//! The router side of the cluster: the forward pass's expert backend when experts live on
//! other nodes.
//!
//! ```text
//! backend.rs         RouterArgs::backend: local experts, or remote ones over the placement,
//!                    with `--record-routing` around either
//! record.rs          RecordingExperts: appends every MoE layer's routing to a routing trace
//! remote_experts.rs  RemoteExperts: the forward pass's ExpertBackend over the links
//!   replace.rs       live re-placement (SIGHUP): the two-phase reassign over the links
//! peer_link.rs       PeerLinkActor: one per remote node; connect, handshake, heartbeats,
//!                    silence, reconnect, re-placement frames
//! link_io.rs         LinkShared: a link's data path on blocking I/O; the engine thread
//!                    writes its steps and reads their replies, a watcher reads between steps
//! ```
//!
//! Flow control: the router's engine has at most one step in flight per link (it waits for
//! every reply before the next layer) and writes each request itself, within
//! `PEER_TIMEOUT_MS` (a node that stops reading fails the step and its link is reset), then
//! reads the replies itself. Framing, MACs and encryption are
//! `moe_cluster::wire::Connection`'s, shared with the expert nodes.
//!
//! May import: `options`, `telemetry`; never `expert`, `cli` or `serve`.

pub mod backend;
pub mod link_io;
pub mod peer_link;
pub mod record;
pub mod remote_experts;
