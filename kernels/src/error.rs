//! The one error type of this crate.

/// Everything a kernel can refuse.
#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    /// A ggml type id this build cannot decode.
    #[error("unsupported ggml tensor type {name} (id {id})")]
    UnsupportedType {
        /// Numeric ggml type id.
        id: u32,
        /// Its ggml name, or "unknown".
        name: &'static str,
    },
    /// A row length that is not a whole number of blocks.
    #[error("row of {elems} elements is not a multiple of the {ty} block size {block}")]
    RowNotBlockAligned {
        /// The type.
        ty: &'static str,
        /// Elements per row.
        elems: usize,
        /// Elements per block.
        block: usize,
    },
    /// A buffer whose length does not match the shape it is used with.
    #[error("{what}: expected {expected} bytes/elements, got {got}")]
    LengthMismatch {
        /// Which buffer.
        what: &'static str,
        /// Expected length.
        expected: usize,
        /// Actual length.
        got: usize,
    },
    /// A NaN or infinity given to a quantizer for a block format.
    #[error("cannot quantize non-finite value at element {index} to {ty}")]
    NonFinite {
        /// The target type.
        ty: &'static str,
        /// Element index within the row.
        index: usize,
    },
    /// A kernel or implementation this build or CPU does not have.
    #[error("unavailable: {what}")]
    Unavailable {
        /// What is missing.
        what: &'static str,
    },
    /// A KV-cache type name that is none of `f32`, `bf16`, `f16`, `q8_0`.
    #[error("unknown KV cache type {name:?} (expected f32, bf16, f16 or q8_0)")]
    UnknownKvType {
        /// The name given.
        name: String,
    },
    /// KV rows appended to a buffer of another type or row shape.
    #[error("KV rows do not match: the cache holds {want}, got {got}")]
    KvRowsMismatch {
        /// What the buffer holds (type and widths).
        want: String,
        /// What was given.
        got: String,
    },
}
