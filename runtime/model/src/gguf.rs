//! GGUF v3: the container llama.cpp's converter and quantizer write.
//!
//! ```text
//! value.rs    metadata value types (Value, ValueType)
//! reader.rs   GgufFile: mmap, header, metadata, tensor table, every count/offset checked
//! writer.rs   GgufWriter: writes a GGUF v3 file (used by `synth` and tests)
//! ```
//! Layout (all little-endian): magic "GGUF", u32 version = 3, u64 tensor_count, u64 kv_count,
//! kv pairs, tensor infos, padding to the alignment (`general.alignment`, default 32), tensor data.

mod reader;
mod value;
mod writer;

pub use reader::{
    GgufFile, TensorInfo, TensorView, GGUF_ARRAY_ELEMS_MAX, GGUF_DIMS_MAX, GGUF_KV_MAX,
    GGUF_NAME_BYTES_MAX, GGUF_SPLITS_MAX, GGUF_STRING_BYTES_MAX, GGUF_TENSORS_MAX,
};
pub use value::{Value, ValueType};
pub use writer::{
    tensor_nbytes, GgufDataWriter, GgufWriter, TensorDecl, GGUF_WRITE_DIMS_MAX,
    GGUF_WRITE_NAME_BYTES_MAX,
};

/// The four magic bytes at the start of every GGUF file.
pub const GGUF_MAGIC: [u8; 4] = *b"GGUF";
/// The only container version this crate reads and writes.
pub const GGUF_VERSION: u32 = 3;
/// Data alignment when `general.alignment` is absent.
pub const GGUF_DEFAULT_ALIGNMENT: u64 = 32;
