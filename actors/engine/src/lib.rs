//! # moe-engine
//!
//! The one generation engine: `run`, `bench`, the stdin router and `serve` are front-ends
//! over it. It batches sequences over one model and expert backend, reuses cached prompt
//! prefixes, drafts and verifies tokens (speculative decoding), samples, and applies the stop
//! rules. It owns no threads, queues or clients: a front-end admits requests, calls
//! [`Engine::step`] and hands out what each sequence produced.
//!
//! ```text
//! constraint  TokenConstraint: a per-sequence mask over the vocabulary (structured output)
//! request     Request, and what comes back: Piece, Finished, FinishReason, Usage, DecodeStats
//! engine      Engine: admission, one batched forward per step, failure isolation
//! sequence    one request's state and its stop rules (EOS/EOT, stop strings, length, context)
//! stop        stop strings over streamed text (never releases half a stop string)
//! draft       prompt-lookup (n-gram) draft tokens for speculative decoding
//! tracker     Tracker: per-sequence progress hooks for the front-end's metrics
//! error       EngineError, the crate's one error enum
//! ```
//!
//! May import: `moe-model`.
pub mod constraint;
pub mod draft;
pub mod engine;
pub mod error;
pub mod request;
mod sequence;
pub mod stop;
pub mod tracker;

pub use constraint::TokenConstraint;
pub use engine::{Delivery, Ended, Engine, EngineConfig};
pub use error::EngineError;
pub use request::{DecodeStats, FinishReason, Finished, Piece, Request, Usage};
pub use tracker::Tracker;
