//! # moe-engine
//!
//! Generation over a model: the scheduler, sequences, sampling and stop rules, speculative
//! decoding. `run`, `bench`, the stdin router and `serve` are front-ends over it.
//!
//! ```text
//! draft       prompt-lookup (n-gram) draft tokens for speculative decoding
//! ```
//!
//! May import: `moe-model`.
pub mod draft;
