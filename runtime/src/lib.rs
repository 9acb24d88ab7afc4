//! # moe-runtime
//!
//! The model side of moe-node, without actors: everything a router or expert process computes
//! or parses, as plain library code.
//!
//! ```text
//! gguf        GGUF v3 reader over mmap (+ multi-file splits) and writer
//! model       Model: the mapped file, config and shape-checked weight locations
//! forward     the forward pass: MLA attention + latent KV cache, router, experts, output
//! npy         float32 .npy read/write (reference fixtures, `logits --out`)
//! sampling    greedy / temperature / top-k / top-p / min-p / repetition penalty, seeded
//! draft       prompt-lookup (n-gram) draft tokens for speculative decoding
//! config      ModelConfig: typed hyper-parameters parsed once from GGUF metadata
//! tokenizer   byte-level BPE (gpt2 model) with the gpt-2 / deepseek-v3 / kimi-k2 pre-tokenizers
//! synth       random-weight models with Kimi K2.5's structure, written as GGUF
//! placement   expert placement files (TOML) parsed into typed, validated structures
//! dispatch    one MoE step split over a placement's live owners
//! wire        the data-plane protocol: frames, limits, handshake, authentication
//! error       RuntimeError, the crate's one error enum
//! ```
pub mod config;
pub mod dispatch;
pub mod draft;
pub mod error;
pub mod forward;
pub mod gguf;
pub mod model;
pub mod npy;
pub mod placement;
pub mod sampling;
pub mod synth;
pub mod tokenizer;
pub mod wire;

pub use error::RuntimeError;
