//! # moe-planner
//!
//! Offline expert placement: routing traces are recorded and read by [`trace`], turned into
//! placements by [`plan`] (refined against the network by [`refine`]) and replayed against
//! placements by [`simulate`]; [`replay`] is the one trace walk both share, using the
//! router's own dispatch rule.
//!
//! ```text
//! trace       routing traces: line format, writer (a forward Observer), reader
//! replay      the one trace walk (the router's dispatch rule) plan and simulate share
//! plan        the planner: replicate hot experts, pack by load and node speed
//! refine      network-aware swaps: balance against fan-out (co-activation)
//! simulate    replay a trace against placements with a compute + network model
//! error       PlanError, the crate's one error enum
//! ```
//!
//! May import: `moe-cluster` (placements, dispatch), `moe-model` (routing, observers).
pub mod error;
pub mod plan;
pub mod refine;
pub mod replay;
pub mod simulate;
pub mod trace;

pub use error::PlanError;
