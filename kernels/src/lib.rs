//! # moe-kernels
//!
//! Compute for moe-node that knows nothing about models: ggml's quantized block formats and
//! the CPU matrix kernels that consume them.
//!
//! ```text
//! types.rs     GgmlType: ids, block sizes, bytes per block, row sizes
//! dequant.rs   exact dequantization of every supported block format to f32
//! matmul.rs    QMatrix (a borrowed quantized [rows, cols] matrix) and the threaded
//!              y = x · Wᵀ kernel (the seam where SIMD paths plug in)
//! error.rs     KernelError
//! ```
//!
//! ```
//! use moe_kernels::{GgmlType, QMatrix};
//! let w: Vec<u8> = [1.0f32, 2.0, 3.0, 4.0].iter().flat_map(|v| v.to_le_bytes()).collect();
//! let m = QMatrix::new(GgmlType::F32, 2, 2, &w).unwrap();
//! let mut y = [0.0f32; 2];
//! m.matmul(&[1.0, 1.0], 1, &mut y).unwrap();
//! assert_eq!(y, [3.0, 7.0]);
//! ```

mod dequant;
mod error;
mod matmul;
mod quantize;
mod types;

pub use dequant::{dequantize_row, dequantize_rows};
pub use error::KernelError;
pub use matmul::{
    num_threads, set_num_threads, QMatrix, MATMUL_MIN_ROWS_PER_THREAD, MATMUL_PARALLEL_MIN_MACS,
    MATMUL_THREADS_MAX,
};
pub use quantize::{quantize_row, quantize_rows};
pub use types::GgmlType;
