//! `PlanError`, the one error enum of this crate.

/// Everything reading traces, planning and simulating can refuse.
#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    /// A model-level error (GGUF, expert lists, an expert backend, ...).
    #[error(transparent)]
    Model(#[from] moe_model::ModelError),
    /// A placement error.
    #[error(transparent)]
    Cluster(#[from] moe_cluster::ClusterError),
    /// I/O on a named path.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// A bad argument from a caller (token id out of range, context full, ...).
    #[error("{0}")]
    InvalidInput(String),
    /// A routing trace that is malformed or exceeds a limit (line 0 = the stream as a whole).
    #[error("routing trace line {line}: {message}")]
    TraceFormat {
        /// 1-based line number.
        line: usize,
        /// What is wrong: the record, the value, and what was expected (or which limit).
        message: String,
    },
    /// A placement plan that cannot be made (capacities, node list, replicas).
    #[error("placement plan: {0}")]
    Plan(String),
}
