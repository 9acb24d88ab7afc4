//! `moe-node --role router` without `--http`: generation requests as JSON lines on stdin.
//!
//! ```text
//! router.rs          reads requests, generates with the engine, writes JSON lines
//! ```
//!
//! The cluster itself is in `expert` (the expert role) and `router` (remote experts, peer
//! links, re-placement); options in `options`. This module is a front-end like `cli` and
//! `serve`, and only keeps its place until `router.rs` moves beside them.

pub mod router;
