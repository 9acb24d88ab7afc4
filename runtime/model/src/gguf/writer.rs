//! `GgufWriter`: writes a GGUF v3 file without ever holding its tensor data in memory.
//!
//! Writing is two-phase, because the header holds every tensor's offset:
//! 1. [`GgufWriter`] collects metadata and tensor *declarations* (name, ggml type, `ne`),
//!    validating each one as ggml's reader would (unique names and keys, at most
//!    [`GGUF_WRITE_DIMS_MAX`] dims, names shorter than ggml's 64-byte limit, rows of whole
//!    blocks, non-nested homogeneous arrays, `general.alignment` a power-of-two u32).
//! 2. [`GgufWriter::create`] writes the header and returns a [`GgufDataWriter`], to which the
//!    caller streams each tensor's bytes in declaration order, in pieces of any size; the writer
//!    pads every tensor to the alignment. [`GgufDataWriter::finish`] checks that every tensor
//!    got exactly its bytes.
//!
//! The file is written as `<path>.partial` through a `BufWriter` and renamed to `<path>` only by
//! `finish`, so an interrupted run never leaves a file that looks complete.
//!
//! This module decides layout only; what the bytes of a tensor are (quantization, values) is
//! the caller's business (see `crate::synth`).
//!
//! ```
//! use moe_kernels::GgmlType;
//! use moe_model::gguf::{GgufWriter, Value};
//! let dir = std::env::temp_dir().join(format!("gguf-writer-doc-{}", std::process::id()));
//! std::fs::create_dir_all(&dir).unwrap();
//! let path = dir.join("x.gguf");
//! let mut w = GgufWriter::new();
//! w.add_metadata("general.architecture", Value::String("demo".into())).unwrap();
//! w.add_tensor("t.weight", GgmlType::F32, &[2, 1]).unwrap();
//! let mut data = w.create(&path).unwrap();
//! data.write_tensor_data(&1.0f32.to_le_bytes()).unwrap();
//! data.write_tensor_data(&2.0f32.to_le_bytes()).unwrap();
//! let bytes = data.finish().unwrap();
//! assert_eq!(bytes, std::fs::metadata(&path).unwrap().len());
//! # std::fs::remove_dir_all(&dir).unwrap();
//! ```

use std::collections::HashSet;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use moe_kernels::GgmlType;

use super::{
    Value, ValueType, GGUF_DEFAULT_ALIGNMENT, GGUF_MAGIC, GGUF_NAME_BYTES_MAX,
    GGUF_STRING_BYTES_MAX, GGUF_VERSION,
};
use crate::ModelError;

/// Longest tensor name the writer accepts, in bytes: ggml keeps names in `char[GGML_MAX_NAME]`
/// (64) with a terminating NUL, and llama.cpp refuses longer ones.
pub const GGUF_WRITE_NAME_BYTES_MAX: usize = 63;
/// Most dimensions of a declared tensor (ggml's `GGML_MAX_DIMS`).
pub const GGUF_WRITE_DIMS_MAX: usize = 4;
/// Size of the `BufWriter` between the caller and the file, in bytes.
const WRITE_BUFFER_BYTES: usize = 8 << 20;
/// Largest alignment accepted, in bytes (ggml has no limit; anything beyond this is a mistake).
const ALIGNMENT_BYTES_MAX: u64 = 1 << 20;
/// Zeros used for padding; no padding is ever longer than the alignment.
const PADDING_CHUNK_BYTES: usize = 4096;

/// One declared tensor: what the header says about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorDecl {
    /// Tensor name, e.g. `blk.1.ffn_up_exps.weight`.
    pub name: String,
    /// Element type.
    pub ty: GgmlType,
    /// ggml dims, `ne[0]` fastest-varying (1 to [`GGUF_WRITE_DIMS_MAX`] entries).
    pub ne: Vec<u64>,
    /// Its data size in bytes.
    pub nbytes: u64,
    /// Its offset from the start of the data section, in bytes.
    pub offset: u64,
}

/// Bytes of a tensor of type `ty` and dims `ne`, or an error if the shape is not whole blocks
/// (`ne[0]` a multiple of the block size), has a zero dim, or overflows u64.
pub fn tensor_nbytes(ty: GgmlType, ne: &[u64]) -> Result<u64, ModelError> {
    let bad = |reason: String| ModelError::GgufWrite {
        item: format!("{} {:?}", ty.name(), ne),
        reason,
    };
    let Some(&ne0) = ne.first() else {
        return Err(bad("a tensor needs at least one dim".into()));
    };
    if ne.contains(&0) {
        return Err(bad("every dim must be at least 1".into()));
    }
    let block = ty.block_elems() as u64;
    if ne0 % block != 0 {
        return Err(bad(format!(
            "ne[0] = {ne0} is not a multiple of the {} block size {block}",
            ty.name()
        )));
    }
    ne[1..]
        .iter()
        .try_fold(ne0 / block, |acc, &d| acc.checked_mul(d))
        .and_then(|blocks| blocks.checked_mul(ty.block_bytes() as u64))
        .ok_or_else(|| bad("tensor size overflows u64".into()))
}

/// Collects metadata and tensor declarations, then writes the header (see the module docs).
#[derive(Debug, Clone)]
pub struct GgufWriter {
    metadata: Vec<(String, Value)>,
    keys: HashSet<String>,
    tensors: Vec<TensorDecl>,
    names: HashSet<String>,
    alignment: u64,
    data_bytes: u64,
}

impl Default for GgufWriter {
    fn default() -> Self {
        Self::new()
    }
}

impl GgufWriter {
    /// An empty file: no metadata, no tensors, alignment [`GGUF_DEFAULT_ALIGNMENT`].
    pub fn new() -> Self {
        Self {
            metadata: Vec::new(),
            keys: HashSet::new(),
            tensors: Vec::new(),
            names: HashSet::new(),
            alignment: GGUF_DEFAULT_ALIGNMENT,
            data_bytes: 0,
        }
    }

    /// Adds a metadata entry, written in insertion order. Refuses duplicate or empty keys,
    /// over-long keys or strings, nested or mixed-type arrays; `general.alignment` must be a
    /// non-zero power-of-two `U32` and, when given, must come before any tensor is declared.
    pub fn add_metadata(&mut self, key: &str, value: Value) -> Result<(), ModelError> {
        let bad = |reason: String| ModelError::GgufWrite {
            item: key.to_string(),
            reason,
        };
        if key.is_empty() || key.len() as u64 > GGUF_NAME_BYTES_MAX {
            return Err(bad(format!(
                "keys must be 1 to {GGUF_NAME_BYTES_MAX} bytes long"
            )));
        }
        if self.keys.contains(key) {
            return Err(bad("duplicate metadata key".into()));
        }
        check_value(&value).map_err(bad)?;
        if key == "general.alignment" {
            let alignment = match value {
                Value::U32(a) if a.is_power_of_two() && u64::from(a) <= ALIGNMENT_BYTES_MAX => {
                    u64::from(a)
                }
                _ => {
                    return Err(bad(format!(
                        "must be a power-of-two U32 of at most {ALIGNMENT_BYTES_MAX}, got {value:?}"
                    )))
                }
            };
            if !self.tensors.is_empty() {
                return Err(bad("must be set before any tensor is declared".into()));
            }
            self.alignment = alignment;
        }
        self.keys.insert(key.to_string());
        self.metadata.push((key.to_string(), value));
        Ok(())
    }

    /// Declares the next tensor; its data must later be streamed in declaration order.
    pub fn add_tensor(&mut self, name: &str, ty: GgmlType, ne: &[u64]) -> Result<(), ModelError> {
        let bad = |reason: String| ModelError::GgufWrite {
            item: name.to_string(),
            reason,
        };
        if name.is_empty() || name.len() > GGUF_WRITE_NAME_BYTES_MAX {
            return Err(bad(format!(
                "tensor names must be 1 to {GGUF_WRITE_NAME_BYTES_MAX} bytes long"
            )));
        }
        if self.names.contains(name) {
            return Err(bad("duplicate tensor name".into()));
        }
        if ne.is_empty() || ne.len() > GGUF_WRITE_DIMS_MAX {
            return Err(bad(format!(
                "{} dims; 1 to {GGUF_WRITE_DIMS_MAX} are allowed",
                ne.len()
            )));
        }
        let nbytes = tensor_nbytes(ty, ne).map_err(|e| match e {
            ModelError::GgufWrite { reason, .. } => bad(reason),
            other => other,
        })?;
        let offset = self.data_bytes;
        self.data_bytes = nbytes
            .checked_next_multiple_of(self.alignment)
            .and_then(|padded| offset.checked_add(padded))
            .ok_or_else(|| bad("data section size overflows u64".into()))?;
        self.names.insert(name.to_string());
        self.tensors.push(TensorDecl {
            name: name.to_string(),
            ty,
            ne: ne.to_vec(),
            nbytes,
            offset,
        });
        Ok(())
    }

    /// The data alignment in bytes.
    pub fn alignment(&self) -> u64 {
        self.alignment
    }

    /// The declared tensors, in file order, with their sizes and offsets.
    pub fn tensors(&self) -> &[TensorDecl] {
        &self.tensors
    }

    /// The metadata entries, in file order.
    pub fn metadata(&self) -> &[(String, Value)] {
        &self.metadata
    }

    /// The header: magic, version, counts, metadata, tensor infos and the padding up to the
    /// data section.
    pub fn header_bytes(&self) -> Vec<u8> {
        let mut h = Vec::new();
        h.extend_from_slice(&GGUF_MAGIC);
        h.extend_from_slice(&GGUF_VERSION.to_le_bytes());
        h.extend_from_slice(&(self.tensors.len() as u64).to_le_bytes());
        h.extend_from_slice(&(self.metadata.len() as u64).to_le_bytes());
        for (key, value) in &self.metadata {
            put_string(&mut h, key);
            h.extend_from_slice(&value.value_type().id().to_le_bytes());
            put_value(&mut h, value);
        }
        for t in &self.tensors {
            put_string(&mut h, &t.name);
            h.extend_from_slice(&(t.ne.len() as u32).to_le_bytes());
            for d in &t.ne {
                h.extend_from_slice(&d.to_le_bytes());
            }
            h.extend_from_slice(&t.ty.id().to_le_bytes());
            h.extend_from_slice(&t.offset.to_le_bytes());
        }
        // ggml pads the header to the alignment whether or not there are tensors.
        let padded = (h.len() as u64).next_multiple_of(self.alignment);
        h.resize(padded as usize, 0);
        h
    }

    /// Total file size this writer will produce, in bytes.
    pub fn file_bytes(&self) -> u64 {
        self.header_bytes().len() as u64 + self.data_bytes
    }

    /// Creates `<path>.partial`, writes the header, and returns the writer for tensor data.
    pub fn create(self, path: &Path) -> Result<GgufDataWriter, ModelError> {
        let partial = partial_path(path);
        let io = |source| ModelError::Io {
            path: partial.display().to_string(),
            source,
        };
        let file = File::create(&partial).map_err(io)?;
        let mut out = BufWriter::with_capacity(WRITE_BUFFER_BYTES, file);
        let header = self.header_bytes();
        out.write_all(&header).map_err(io)?;
        Ok(GgufDataWriter {
            out,
            path: path.to_path_buf(),
            partial,
            tensors: self.tensors,
            alignment: self.alignment,
            current: 0,
            written: 0,
            position: header.len() as u64,
        })
    }
}

/// Streams tensor data after the header; returned by [`GgufWriter::create`].
#[derive(Debug)]
pub struct GgufDataWriter {
    out: BufWriter<File>,
    path: PathBuf,
    partial: PathBuf,
    tensors: Vec<TensorDecl>,
    alignment: u64,
    current: usize,
    written: u64,
    position: u64,
}

impl GgufDataWriter {
    /// The tensor whose bytes come next (None once all are complete).
    pub fn current_tensor(&self) -> Option<&TensorDecl> {
        self.tensors.get(self.current)
    }

    /// Bytes of the current tensor still expected.
    pub fn remaining_in_tensor(&self) -> u64 {
        self.current_tensor().map_or(0, |t| t.nbytes - self.written)
    }

    /// Appends `bytes` to the current tensor. A piece may not run past the end of the current
    /// tensor; when a tensor is complete it is padded and the next one becomes current.
    pub fn write_tensor_data(&mut self, bytes: &[u8]) -> Result<(), ModelError> {
        let Some(t) = self.tensors.get(self.current) else {
            return Err(ModelError::GgufWriteData {
                tensor: String::new(),
                expected: 0,
                got: bytes.len() as u64,
            });
        };
        let remaining = t.nbytes - self.written;
        if bytes.len() as u64 > remaining {
            return Err(ModelError::GgufWriteData {
                tensor: t.name.clone(),
                expected: remaining,
                got: bytes.len() as u64,
            });
        }
        let nbytes = t.nbytes;
        self.put(bytes)?;
        self.written += bytes.len() as u64;
        if self.written == nbytes {
            let pad = nbytes.next_multiple_of(self.alignment) - nbytes;
            self.put_zeros(pad)?;
            self.current += 1;
            self.written = 0;
        }
        Ok(())
    }

    /// Checks every declared tensor is complete, flushes, renames `<path>.partial` to `<path>`
    /// and returns the file size in bytes.
    pub fn finish(self) -> Result<u64, ModelError> {
        if let Some(t) = self.tensors.get(self.current) {
            return Err(ModelError::GgufWriteData {
                tensor: t.name.clone(),
                expected: t.nbytes - self.written,
                got: 0,
            });
        }
        let partial = self.partial.display().to_string();
        let file = self.out.into_inner().map_err(|e| ModelError::Io {
            path: partial.clone(),
            source: e.into_error(),
        })?;
        file.sync_all().map_err(|source| ModelError::Io {
            path: partial.clone(),
            source,
        })?;
        drop(file);
        std::fs::rename(&self.partial, &self.path).map_err(|source| ModelError::Io {
            path: self.path.display().to_string(),
            source,
        })?;
        Ok(self.position)
    }

    /// Gives up: closes and deletes `<path>.partial` (best effort; errors are ignored because
    /// the caller is already reporting a failure).
    pub fn abandon(self) {
        let partial = self.partial.clone();
        drop(self);
        let _ = std::fs::remove_file(partial);
    }

    fn put(&mut self, bytes: &[u8]) -> Result<(), ModelError> {
        self.out.write_all(bytes).map_err(|source| ModelError::Io {
            path: self.partial.display().to_string(),
            source,
        })?;
        self.position += bytes.len() as u64;
        Ok(())
    }

    fn put_zeros(&mut self, mut n: u64) -> Result<(), ModelError> {
        let zeros = [0u8; PADDING_CHUNK_BYTES];
        while n > 0 {
            let k = n.min(PADDING_CHUNK_BYTES as u64) as usize;
            self.put(&zeros[..k])?;
            n -= k as u64;
        }
        Ok(())
    }
}

/// `<path>.partial`.
fn partial_path(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_os_string();
    name.push(".partial");
    PathBuf::from(name)
}

/// Checks what ggml's reader would refuse: nested arrays, mixed element types, strings longer
/// than the reader's limit.
fn check_value(value: &Value) -> Result<(), String> {
    match value {
        Value::String(s) if s.len() as u64 > GGUF_STRING_BYTES_MAX => Err(format!(
            "string of {} bytes exceeds {GGUF_STRING_BYTES_MAX}",
            s.len()
        )),
        Value::Array(ValueType::Array, _) => Err("nested arrays are not allowed".into()),
        Value::Array(elem, items) => {
            if let Some((i, v)) = items
                .iter()
                .enumerate()
                .find(|(_, v)| v.value_type() != *elem)
            {
                return Err(format!(
                    "array of {elem:?} has element {i} of type {:?}",
                    v.value_type()
                ));
            }
            items.iter().try_for_each(check_value)
        }
        _ => Ok(()),
    }
}

fn put_string(h: &mut Vec<u8>, s: &str) {
    h.extend_from_slice(&(s.len() as u64).to_le_bytes());
    h.extend_from_slice(s.as_bytes());
}

/// A value's payload (without its type tag; arrays carry their element tag and count).
fn put_value(h: &mut Vec<u8>, v: &Value) {
    match v {
        Value::U8(x) => h.push(*x),
        Value::I8(x) => h.extend_from_slice(&x.to_le_bytes()),
        Value::U16(x) => h.extend_from_slice(&x.to_le_bytes()),
        Value::I16(x) => h.extend_from_slice(&x.to_le_bytes()),
        Value::U32(x) => h.extend_from_slice(&x.to_le_bytes()),
        Value::I32(x) => h.extend_from_slice(&x.to_le_bytes()),
        Value::F32(x) => h.extend_from_slice(&x.to_le_bytes()),
        Value::Bool(x) => h.push(u8::from(*x)),
        Value::String(s) => put_string(h, s),
        Value::Array(elem, items) => {
            h.extend_from_slice(&elem.id().to_le_bytes());
            h.extend_from_slice(&(items.len() as u64).to_le_bytes());
            for item in items {
                put_value(h, item);
            }
        }
        Value::U64(x) => h.extend_from_slice(&x.to_le_bytes()),
        Value::I64(x) => h.extend_from_slice(&x.to_le_bytes()),
        Value::F64(x) => h.extend_from_slice(&x.to_le_bytes()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_bad_declarations() {
        let mut w = GgufWriter::new();
        w.add_tensor("a", GgmlType::F32, &[4]).unwrap();
        assert!(
            w.add_tensor("a", GgmlType::F32, &[4]).is_err(),
            "duplicate name"
        );
        let long = "x".repeat(GGUF_WRITE_NAME_BYTES_MAX + 1);
        assert!(
            w.add_tensor(&long, GgmlType::F32, &[4]).is_err(),
            "name too long"
        );
        let longest = "x".repeat(GGUF_WRITE_NAME_BYTES_MAX);
        assert!(w.add_tensor(&longest, GgmlType::F32, &[4]).is_ok());
        assert!(
            w.add_tensor("b", GgmlType::Q8_0, &[48, 2]).is_err(),
            "not whole blocks"
        );
        assert!(
            w.add_tensor("c", GgmlType::F32, &[1, 1, 1, 1, 1]).is_err(),
            "5 dims"
        );
        assert!(w.add_tensor("d", GgmlType::F32, &[]).is_err(), "0 dims");
        assert!(
            w.add_tensor("e", GgmlType::F32, &[4, 0]).is_err(),
            "zero dim"
        );
        assert!(
            w.add_tensor("f", GgmlType::F32, &[u64::MAX, 2]).is_err(),
            "overflow"
        );
        assert!(
            w.add_metadata("general.alignment", Value::U32(64)).is_err(),
            "after tensors"
        );
    }

    #[test]
    fn refuses_bad_metadata() {
        let mut w = GgufWriter::new();
        w.add_metadata("k", Value::U8(1)).unwrap();
        assert!(w.add_metadata("k", Value::U8(1)).is_err(), "duplicate key");
        assert!(w.add_metadata("", Value::U8(1)).is_err(), "empty key");
        let nested = Value::Array(ValueType::Array, vec![]);
        assert!(w.add_metadata("n", nested).is_err());
        let mixed = Value::Array(ValueType::U8, vec![Value::U8(1), Value::I8(1)]);
        assert!(w.add_metadata("m", mixed).is_err());
        assert!(
            w.add_metadata("general.alignment", Value::U64(64)).is_err(),
            "must be u32"
        );
        assert!(
            w.add_metadata("general.alignment", Value::U32(48)).is_err(),
            "power of two"
        );
        assert!(w.add_metadata("general.alignment", Value::U32(0)).is_err());
        w.add_metadata("general.alignment", Value::U32(64)).unwrap();
        assert_eq!(w.alignment(), 64);
    }

    #[test]
    fn offsets_are_aligned_and_dense() {
        let mut w = GgufWriter::new();
        w.add_tensor("a", GgmlType::F32, &[3]).unwrap();
        w.add_tensor("b", GgmlType::Q8_0, &[32, 3]).unwrap();
        w.add_tensor("c", GgmlType::BF16, &[2]).unwrap();
        let t = w.tensors();
        assert_eq!((t[0].offset, t[0].nbytes), (0, 12));
        assert_eq!((t[1].offset, t[1].nbytes), (32, 102));
        assert_eq!((t[2].offset, t[2].nbytes), (160, 4));
        assert_eq!(w.header_bytes().len() % 32, 0);
    }
}
