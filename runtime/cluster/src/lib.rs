//! # moe-cluster
//!
//! The cluster protocol: which node owns which experts, how one MoE step is split over them,
//! and the authenticated wire they talk over. No actors and no threads: the `moe-node`
//! binary drives these types from its router and expert roles.
//!
//! ```text
//! placement   placement files (TOML) and `--shards` lists parsed into a validated Placement
//! dispatch    one MoE step split over a placement's live owners
//! wire        the data-plane protocol: frames, limits, handshake, authentication, encryption
//! error       ClusterError, the crate's one error enum
//! ```
//!
//! May import: `moe-model` (routes, expert sets, the model's shape) and `moe-kernels`.
pub mod dispatch;
pub mod error;
pub mod placement;
pub mod wire;

pub use error::ClusterError;
