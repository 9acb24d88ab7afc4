//! # moe-devdata
//!
//! Data for developing and testing moe-node, never linked by a router or expert role:
//!
//! ```text
//! synth       random-weight models with Kimi K2.5's structure, written as GGUF
//! npy         float32 .npy read/write (reference fixtures, `logits --out`)
//! fixtures    the reference fixtures' folders and manifests (../shared/fixtures)
//! error       DevDataError, the crate's one error enum
//! ```
//!
//! May import: `moe-model`, `moe-kernels`.
pub mod error;
pub mod fixtures;
pub mod npy;
pub mod synth;

pub use error::DevDataError;
