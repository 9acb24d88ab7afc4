//! `EngineError`, the one error enum of this crate.

use std::sync::Arc;

use moe_model::ModelError;

/// Why a sequence failed or a request was refused.
#[derive(Debug, Clone, thiserror::Error)]
pub enum EngineError {
    /// The forward step holding the sequence failed (shared by every sequence it failed).
    #[error(transparent)]
    Model(Arc<ModelError>),
    /// A step panicked; every sequence in flight failed with it.
    #[error("the engine panicked ({0})")]
    Panicked(String),
    /// A request the engine cannot take (empty prompt, prompt longer than the context).
    #[error("{0}")]
    InvalidRequest(String),
}
