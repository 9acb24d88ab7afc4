//! # moe-model
//!
//! One Kimi K2.5 / DeepSeek-V3 model on the CPU, as plain library code: the file, its
//! weights, the forward pass, and text in and out. Everything a router, an expert node or a
//! single process computes lives here; how they talk to each other does not (`moe-cluster`).
//!
//! ```text
//! gguf        GGUF v3 reader over mmap (+ multi-file splits) and writer
//! config      ModelConfig: typed hyper-parameters parsed once from GGUF metadata
//! expert_set  ExpertSet (one MoE layer's experts, "0-95,200" text form), LayerExperts (one
//!             set per model layer: what a process owns or maps)
//! model       Model: the mapped file, config and shape-checked weight locations
//! rope        Rope: YaRN-scaled rotary tables, built once per model
//! forward     the forward pass: MLA attention + latent KV cache, prefix cache, router,
//!             experts behind the ExpertBackend seam, output
//! tokenizer   byte-level BPE (gpt2 model) with the gpt-2 / deepseek-v3 / kimi-k2 pre-tokenizers
//! sampling    greedy / temperature / top-k / top-p / min-p / repetition penalty, seeded
//! error       ModelError, the crate's one error enum
//! ```
//!
//! May import: `moe-kernels` only (of this workspace).
pub mod config;
pub mod error;
pub mod expert_set;
pub mod forward;
pub mod gguf;
pub mod model;
pub mod rope;
pub mod sampling;
pub mod tokenizer;

pub use error::ModelError;
pub use expert_set::{ExpertSet, LayerExperts, EXPERTS_PER_LAYER_MAX};
