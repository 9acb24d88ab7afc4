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
    /// The sequence's token constraint failed (a bug: the sampler took a masked token, or
    /// the grammar engine erred); the output would not match the constraint.
    #[error("the output constraint failed: {0}")]
    Constraint(String),
}
