//! `GgufFile`: a GGUF v3 file (or a `-0000N-of-0000M` split set) mapped read-only.
//!
//! The header is parsed once, eagerly, with every count, length, offset and shape checked
//! against the bytes that are actually there and against the named limits below before
//! anything is allocated. Tensor data is never copied: a [`TensorView`] borrows the mapping.
//! Pages are only read when a kernel touches them, so a process that uses a slice of the
//! experts keeps only that slice resident.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use moe_kernels::GgmlType;
use sha2::{Digest, Sha256};

use super::{Value, ValueType, GGUF_DEFAULT_ALIGNMENT, GGUF_MAGIC, GGUF_VERSION};
use crate::ModelError;

/// Longest metadata key or tensor name, in bytes.
pub const GGUF_NAME_BYTES_MAX: u64 = 1024;
/// Longest metadata string value, in bytes.
pub const GGUF_STRING_BYTES_MAX: u64 = 256 << 20;
/// Most tensors in one file.
pub const GGUF_TENSORS_MAX: u64 = 1 << 20;
/// Most metadata entries in one file.
pub const GGUF_KV_MAX: u64 = 1 << 20;
/// Most elements of one metadata array (vocabularies have ~10^5 tokens and merges).
pub const GGUF_ARRAY_ELEMS_MAX: u64 = 1 << 24;
/// Most dimensions of a tensor (ggml's GGML_MAX_DIMS).
pub const GGUF_DIMS_MAX: u32 = 4;
/// Most shards in a split set.
pub const GGUF_SPLITS_MAX: usize = 1024;

/// Bytes backing one shard: a read-only map of a whole file, owned bytes (tests, fuzzing),
/// or maps of selected byte ranges only ([`GgufFile::open_mapped`]).
enum Backing {
    Mapped(memmap2::Mmap),
    Owned(Vec<u8>),
    Regions(Vec<Region>),
}

/// A mapped range of a file: file bytes `[start, start + len)` are `map[delta..delta + len]`.
struct Region {
    start: usize,
    len: usize,
    delta: usize,
    map: memmap2::Mmap,
}

impl Backing {
    /// File bytes `[offset, offset + len)`, if mapped.
    fn range(&self, offset: usize, len: usize) -> Option<&[u8]> {
        let end = offset.checked_add(len)?;
        match self {
            Self::Mapped(m) => m.get(offset..end),
            Self::Owned(v) => v.get(offset..end),
            Self::Regions(regions) => {
                let i = regions
                    .partition_point(|r| r.start <= offset)
                    .checked_sub(1)?;
                let r = &regions[i];
                if end > r.start + r.len {
                    return None;
                }
                r.map
                    .get(r.delta + offset - r.start..r.delta + end - r.start)
            }
        }
    }

    /// Drops this process's pages of file bytes `[offset, offset + len)` (the whole pages
    /// inside the range; best effort: a failed `madvise` leaves them mapped). The bytes stay
    /// readable: a later read faults them back in from the file (the mapping is read-only
    /// and private, so nothing written is lost).
    fn release(&self, offset: usize, len: usize) {
        let (map, at) = match self {
            Self::Mapped(m) => (m, offset),
            Self::Owned(_) => return,
            Self::Regions(regions) => {
                let Some(i) = regions
                    .partition_point(|r| r.start <= offset)
                    .checked_sub(1)
                else {
                    return;
                };
                let r = &regions[i];
                (&r.map, r.delta + offset - r.start)
            }
        };
        let start = at.div_ceil(PAGE_BYTES) * PAGE_BYTES;
        let end = (at + len).min(map.len()) / PAGE_BYTES * PAGE_BYTES;
        if end > start {
            // SAFETY: MADV_DONTNEED on a read-only private file mapping only drops page-table
            // entries; every byte reads the same afterwards (refaulted from the unmodified
            // file), so the slices borrowed from the map stay valid.
            let _ = unsafe {
                map.unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, start, end - start)
            };
        }
    }

    /// Bytes mapped or held.
    fn mapped_bytes(&self) -> usize {
        match self {
            Self::Mapped(m) => m.len(),
            Self::Owned(v) => v.len(),
            Self::Regions(regions) => regions.iter().map(|r| r.len).sum(),
        }
    }
}

/// Page size the mappings are aligned to (and released in).
const PAGE_BYTES: usize = 4096;

/// Maps `[start, start + len)` of `file` (page-aligned underneath).
fn map_region(
    file: &std::fs::File,
    path: &Path,
    start: usize,
    len: usize,
) -> Result<Region, ModelError> {
    let aligned = start / PAGE_BYTES * PAGE_BYTES;
    let delta = start - aligned;
    // SAFETY: as in `GgufFile::open`: a read-only private map of a model file that is not
    // modified while in use.
    let map = unsafe {
        memmap2::MmapOptions::new()
            .offset(aligned as u64)
            .len(delta + len)
            .map(file)
    }
    .map_err(|source| ModelError::Io {
        path: path.display().to_string(),
        source,
    })?;
    Ok(Region {
        start,
        len,
        delta,
        map,
    })
}

/// Where a tensor lives.
#[derive(Debug, Clone)]
pub struct TensorInfo {
    /// Tensor name, e.g. `blk.3.ffn_up_exps.weight`.
    pub name: String,
    /// Element type.
    pub ty: GgmlType,
    /// ggml dims, `ne[0]` fastest-varying; always `GGUF_DIMS_MAX` long, missing dims are 1.
    pub ne: [u64; 4],
    /// Number of dims as stored.
    pub n_dims: u32,
    /// Which shard holds it.
    pub shard: usize,
    /// Absolute byte offset in that shard.
    pub offset: usize,
    /// Byte size.
    pub size: usize,
}

/// A borrowed tensor: its info and its bytes in the mapping.
#[derive(Debug, Clone, Copy)]
pub struct TensorView<'a> {
    /// Where it lives and what shape it has.
    pub info: &'a TensorInfo,
    /// Its bytes (`info.size` long).
    pub data: &'a [u8],
}

impl TensorView<'_> {
    /// Element type.
    pub fn ty(&self) -> GgmlType {
        self.info.ty
    }
    /// ggml dims.
    pub fn ne(&self) -> [u64; 4] {
        self.info.ne
    }
}

/// A parsed GGUF file or split set.
pub struct GgufFile {
    paths: Vec<PathBuf>,
    shards: Vec<Backing>,
    metadata: Vec<(String, Value)>,
    meta_index: HashMap<String, usize>,
    tensors: Vec<TensorInfo>,
    tensor_index: HashMap<String, usize>,
    fingerprint: [u8; 32],
}

impl std::fmt::Debug for GgufFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GgufFile")
            .field("paths", &self.paths)
            .field("metadata", &self.metadata.len())
            .field("tensors", &self.tensors.len())
            .finish()
    }
}

/// One shard's parsed header.
struct Header {
    metadata: Vec<(String, Value)>,
    tensors: Vec<TensorInfo>,
    header_len: usize,
}

impl GgufFile {
    /// Opens `path`; a name like `model-00001-of-00003.gguf` opens the whole split set.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, ModelError> {
        let path = path.as_ref();
        let paths = split_paths(path)?;
        let mut shards = Vec::with_capacity(paths.len());
        for p in &paths {
            let file = std::fs::File::open(p).map_err(|source| ModelError::Io {
                path: p.display().to_string(),
                source,
            })?;
            // SAFETY: the map is read-only and private to this process; model files are not
            // modified while in use (the same contract llama.cpp's mmap loader relies on). A
            // file truncated underneath us could fault, which no safe API can rule out.
            let map = unsafe { memmap2::Mmap::map(&file) }.map_err(|source| ModelError::Io {
                path: p.display().to_string(),
                source,
            })?;
            shards.push(Backing::Mapped(map));
        }
        Self::from_backings(paths, shards)
    }

    /// Opens `path` like [`GgufFile::open`], then keeps mapped only the byte ranges `plan`
    /// returns for each tensor (relative to the tensor's first byte; empty = not mapped).
    /// The rest of the file is neither mapped nor read: an expert node maps its own experts
    /// only, a router none of the experts it does not compute. Accessing an unmapped range
    /// is an error naming the tensor, never a fault.
    pub fn open_mapped(
        path: impl AsRef<Path>,
        plan: &dyn Fn(&TensorInfo) -> Vec<std::ops::Range<usize>>,
    ) -> Result<Self, ModelError> {
        let mut file = Self::open(path)?;
        for (shard, path) in file.paths.clone().iter().enumerate() {
            let handle = std::fs::File::open(path).map_err(|source| ModelError::Io {
                path: path.display().to_string(),
                source,
            })?;
            let mut regions = Vec::new();
            for info in file.tensors.iter().filter(|t| t.shard == shard) {
                for r in plan(info) {
                    let (start, end) = (r.start.min(info.size), r.end.min(info.size));
                    if start < end {
                        regions.push(map_region(&handle, path, info.offset + start, end - start)?);
                    }
                }
            }
            regions.sort_by_key(|r| r.start);
            file.shards[shard] = Backing::Regions(regions);
        }
        Ok(file)
    }

    /// Bytes of the file(s) this process has mapped (or holds).
    pub fn mapped_bytes(&self) -> usize {
        self.shards.iter().map(Backing::mapped_bytes).sum()
    }

    /// File bytes `[offset, offset + len)` of shard `shard`, or an error naming `what` when
    /// that range is not mapped in this process.
    pub fn range(
        &self,
        what: &str,
        shard: usize,
        offset: usize,
        len: usize,
    ) -> Result<&[u8], ModelError> {
        self.shards
            .get(shard)
            .and_then(|b| b.range(offset, len))
            .ok_or_else(|| ModelError::NotMapped {
                what: what.to_string(),
            })
    }

    /// Drops this process's pages of file bytes `[offset, offset + len)` of shard `shard`
    /// (after the model copied them elsewhere, e.g. repacked them): they stop counting in
    /// the resident set and are read back from the file if touched again.
    pub fn release(&self, shard: usize, offset: usize, len: usize) {
        if let Some(b) = self.shards.get(shard) {
            b.release(offset, len);
        }
    }

    /// Parses a single-file GGUF held in memory (tests and fuzzing).
    pub fn from_bytes(bytes: Vec<u8>) -> Result<Self, ModelError> {
        Self::from_backings(vec![PathBuf::from("<memory>")], vec![Backing::Owned(bytes)])
    }

    fn from_backings(paths: Vec<PathBuf>, shards: Vec<Backing>) -> Result<Self, ModelError> {
        let mut metadata = Vec::new();
        let mut tensors = Vec::new();
        let mut hasher = Sha256::new();
        for (i, (shard, path)) in shards.iter().zip(&paths).enumerate() {
            let bytes = match shard {
                Backing::Mapped(m) => &m[..],
                Backing::Owned(v) => &v[..],
                Backing::Regions(_) => {
                    return Err(ModelError::gguf(
                        path,
                        "cannot parse a partially mapped file",
                    ))
                }
            };
            let header = parse_header(bytes, i).map_err(|e| e.in_file(path))?;
            hasher.update(&bytes[..header.header_len]);
            if i == 0 {
                metadata = header.metadata;
            }
            tensors.extend(header.tensors);
        }
        let mut meta_index = HashMap::with_capacity(metadata.len());
        for (i, (k, _)) in metadata.iter().enumerate() {
            if meta_index.insert(k.clone(), i).is_some() {
                return Err(ModelError::gguf(
                    &paths[0],
                    format!("duplicate metadata key {k:?}"),
                ));
            }
        }
        let mut tensor_index = HashMap::with_capacity(tensors.len());
        for (i, t) in tensors.iter().enumerate() {
            if tensor_index.insert(t.name.clone(), i).is_some() {
                return Err(ModelError::gguf(
                    &paths[t.shard],
                    format!("duplicate tensor name {:?}", t.name),
                ));
            }
        }
        let fingerprint = hasher.finalize().into();
        Ok(Self {
            paths,
            shards,
            metadata,
            meta_index,
            tensors,
            tensor_index,
            fingerprint,
        })
    }

    /// The file (first shard) path.
    pub fn path(&self) -> &Path {
        &self.paths[0]
    }

    /// The paths of every shard.
    pub fn paths(&self) -> &[PathBuf] {
        &self.paths
    }

    /// SHA-256 over every shard's header (metadata + tensor table): identifies the model.
    pub fn fingerprint(&self) -> [u8; 32] {
        self.fingerprint
    }

    /// A metadata value.
    pub fn metadata(&self, key: &str) -> Option<&Value> {
        self.meta_index.get(key).map(|&i| &self.metadata[i].1)
    }

    /// Every metadata entry, in file order.
    pub fn metadata_entries(&self) -> &[(String, Value)] {
        &self.metadata
    }

    /// Every tensor, in file order.
    pub fn tensor_infos(&self) -> &[TensorInfo] {
        &self.tensors
    }

    /// A tensor's info, if present.
    pub fn tensor_info(&self, name: &str) -> Option<&TensorInfo> {
        self.tensor_index.get(name).map(|&i| &self.tensors[i])
    }

    /// A tensor by name, or an error naming it.
    pub fn tensor(&self, name: &str) -> Result<TensorView<'_>, ModelError> {
        let info = self
            .tensor_info(name)
            .ok_or_else(|| ModelError::MissingTensor {
                name: name.to_string(),
            })?;
        let data = self.range(&info.name, info.shard, info.offset, info.size)?;
        Ok(TensorView { info, data })
    }
}

/// All shard paths of a split set (`-00001-of-00003`), or just `path`.
fn split_paths(path: &Path) -> Result<Vec<PathBuf>, ModelError> {
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or_default();
    let Some(stem) = name.strip_suffix(".gguf") else {
        return Ok(vec![path.to_path_buf()]);
    };
    // <base>-NNNNN-of-MMMMM
    let parts: Vec<&str> = stem.rsplitn(4, '-').collect();
    let is_split = parts.len() == 4
        && parts[1] == "of"
        && parts[0].len() == 5
        && parts[2].len() == 5
        && parts[0].bytes().all(|b| b.is_ascii_digit())
        && parts[2].bytes().all(|b| b.is_ascii_digit());
    if !is_split {
        return Ok(vec![path.to_path_buf()]);
    }
    let count: usize = parts[0].parse().unwrap_or(0);
    let index: usize = parts[2].parse().unwrap_or(0);
    if count == 0 || count > GGUF_SPLITS_MAX || index != 1 {
        return Err(ModelError::gguf(
            path,
            format!("split file must be opened by its first shard (-00001-of-NNNNN), with at most {GGUF_SPLITS_MAX} shards"),
        ));
    }
    let dir = path.parent().unwrap_or(Path::new(""));
    Ok((1..=count)
        .map(|i| dir.join(format!("{}-{i:05}-of-{count:05}.gguf", parts[3])))
        .collect())
}

/// A bounds-checked little-endian cursor.
struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: u64, what: &str) -> Result<&'a [u8], String> {
        let remaining = (self.buf.len() - self.pos) as u64;
        if n > remaining {
            return Err(format!(
                "truncated: {what} needs {n} bytes at offset {} but only {remaining} remain",
                self.pos
            ));
        }
        let s = &self.buf[self.pos..self.pos + n as usize];
        self.pos += n as usize;
        Ok(s)
    }
    fn array<const N: usize>(&mut self, what: &str) -> Result<[u8; N], String> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N as u64, what)?);
        Ok(a)
    }
    fn u32(&mut self, what: &str) -> Result<u32, String> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }
    fn u64(&mut self, what: &str) -> Result<u64, String> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }
    fn string(&mut self, max: u64, what: &str) -> Result<String, String> {
        let len = self.u64(what)?;
        if len > max {
            return Err(format!(
                "{what}: string of {len} bytes exceeds the limit of {max} bytes"
            ));
        }
        let bytes = self.take(len, what)?;
        String::from_utf8(bytes.to_vec()).map_err(|_| format!("{what}: string is not valid UTF-8"))
    }
    fn remaining(&self) -> u64 {
        (self.buf.len() - self.pos) as u64
    }
}

fn parse_header(buf: &[u8], shard: usize) -> Result<Header, ModelError> {
    parse_header_inner(buf, shard).map_err(ModelError::GgufFormat)
}

fn parse_header_inner(buf: &[u8], shard: usize) -> Result<Header, String> {
    let mut c = Cursor { buf, pos: 0 };
    let magic: [u8; 4] = c.array("magic")?;
    if magic != GGUF_MAGIC {
        return Err(format!(
            "not a GGUF file: magic is {magic:02x?}, expected \"GGUF\""
        ));
    }
    let version = c.u32("version")?;
    if version != GGUF_VERSION {
        return Err(format!(
            "unsupported GGUF version {version}: only version {GGUF_VERSION} is supported"
        ));
    }
    let n_tensors = c.u64("tensor count")?;
    let n_kv = c.u64("metadata count")?;
    if n_tensors > GGUF_TENSORS_MAX {
        return Err(format!(
            "tensor count {n_tensors} exceeds the limit of {GGUF_TENSORS_MAX}"
        ));
    }
    if n_kv > GGUF_KV_MAX {
        return Err(format!(
            "metadata count {n_kv} exceeds the limit of {GGUF_KV_MAX}"
        ));
    }
    // Each kv needs >= 8 (key len) + 4 (type) + 1 bytes; each tensor info >= 8 + 4 + 4 + 8.
    if n_kv
        .saturating_mul(13)
        .saturating_add(n_tensors.saturating_mul(24))
        > c.remaining()
    {
        return Err(format!(
            "truncated: {n_kv} metadata entries and {n_tensors} tensors cannot fit in the {} bytes left",
            c.remaining()
        ));
    }
    let mut metadata = Vec::with_capacity(n_kv as usize);
    for i in 0..n_kv {
        let key = c.string(GGUF_NAME_BYTES_MAX, &format!("metadata key #{i}"))?;
        let ty = c.u32(&format!("type of metadata {key:?}"))?;
        let ty = ValueType::from_id(ty)
            .ok_or_else(|| format!("metadata {key:?} has unknown value type {ty}"))?;
        let value = read_value(&mut c, ty, &key, true)?;
        metadata.push((key, value));
    }
    let alignment = match metadata.iter().find(|(k, _)| k == "general.alignment") {
        None => GGUF_DEFAULT_ALIGNMENT,
        Some((_, Value::U32(a))) if a.is_power_of_two() => *a as u64,
        Some((_, v)) => {
            return Err(format!(
                "general.alignment must be a non-zero power of two u32, got {v:?}"
            ))
        }
    };
    let mut infos = Vec::with_capacity(n_tensors as usize);
    for i in 0..n_tensors {
        let name = c.string(GGUF_NAME_BYTES_MAX, &format!("tensor name #{i}"))?;
        let n_dims = c.u32(&format!("dims of tensor {name:?}"))?;
        if n_dims == 0 || n_dims > GGUF_DIMS_MAX {
            return Err(format!(
                "tensor {name:?} has {n_dims} dims; 1..={GGUF_DIMS_MAX} are allowed"
            ));
        }
        let mut ne = [1u64; 4];
        for d in ne.iter_mut().take(n_dims as usize) {
            *d = c.u64(&format!("shape of tensor {name:?}"))?;
        }
        let ty_id = c.u32(&format!("type of tensor {name:?}"))?;
        let ty = GgmlType::from_id(ty_id).map_err(|e| format!("tensor {name:?}: {e}"))?;
        let offset = c.u64(&format!("offset of tensor {name:?}"))?;
        infos.push((name, n_dims, ne, ty, offset));
    }
    let data_start = (c.pos as u64).div_ceil(alignment) * alignment;
    let header_len = c.pos;
    let data_len = (buf.len() as u64).saturating_sub(data_start);
    if n_tensors > 0 && data_start > buf.len() as u64 {
        return Err(format!("truncated: the tensor data section would start at {data_start}, past the end of the file"));
    }
    let mut tensors = Vec::with_capacity(infos.len());
    for (name, n_dims, ne, ty, offset) in infos {
        let elems = ne.iter().try_fold(1u64, |acc, &d| acc.checked_mul(d));
        let elems = elems.ok_or_else(|| format!("tensor {name:?}: shape {ne:?} overflows"))?;
        if ne[0] % ty.block_elems() as u64 != 0 {
            return Err(format!(
                "tensor {name:?}: row length {} is not a multiple of the {} block size {}",
                ne[0],
                ty.name(),
                ty.block_elems()
            ));
        }
        let size = (elems / ty.block_elems() as u64)
            .checked_mul(ty.block_bytes() as u64)
            .ok_or_else(|| format!("tensor {name:?}: size overflows"))?;
        if offset % alignment != 0 {
            return Err(format!(
                "tensor {name:?}: offset {offset} is not aligned to {alignment}"
            ));
        }
        if offset.checked_add(size).is_none_or(|end| end > data_len) {
            return Err(format!(
                "tensor {name:?} ({} bytes at data offset {offset}) extends past the end of the file (data section is {data_len} bytes): the file is truncated or its tensor table is corrupt",
                size
            ));
        }
        tensors.push(TensorInfo {
            name,
            ty,
            ne,
            n_dims,
            shard,
            offset: (data_start + offset) as usize,
            size: size as usize,
        });
    }
    Ok(Header {
        metadata,
        tensors,
        header_len,
    })
}

fn read_value(
    c: &mut Cursor<'_>,
    ty: ValueType,
    key: &str,
    allow_array: bool,
) -> Result<Value, String> {
    let what = || format!("value of metadata {key:?}");
    Ok(match ty {
        ValueType::U8 => Value::U8(c.array::<1>(&what())?[0]),
        ValueType::I8 => Value::I8(c.array::<1>(&what())?[0] as i8),
        ValueType::U16 => Value::U16(u16::from_le_bytes(c.array(&what())?)),
        ValueType::I16 => Value::I16(i16::from_le_bytes(c.array(&what())?)),
        ValueType::U32 => Value::U32(c.u32(&what())?),
        ValueType::I32 => Value::I32(i32::from_le_bytes(c.array(&what())?)),
        ValueType::F32 => Value::F32(f32::from_le_bytes(c.array(&what())?)),
        ValueType::U64 => Value::U64(c.u64(&what())?),
        ValueType::I64 => Value::I64(i64::from_le_bytes(c.array(&what())?)),
        ValueType::F64 => Value::F64(f64::from_le_bytes(c.array(&what())?)),
        ValueType::Bool => match c.array::<1>(&what())?[0] {
            0 => Value::Bool(false),
            1 => Value::Bool(true),
            b => {
                return Err(format!(
                    "metadata {key:?}: bool byte {b} is neither 0 nor 1"
                ))
            }
        },
        ValueType::String => Value::String(c.string(GGUF_STRING_BYTES_MAX, &what())?),
        ValueType::Array => {
            if !allow_array {
                return Err(format!("metadata {key:?}: nested arrays are not supported"));
            }
            let et = c.u32(&what())?;
            let et = ValueType::from_id(et)
                .ok_or_else(|| format!("metadata {key:?}: unknown array element type {et}"))?;
            if et == ValueType::Array {
                return Err(format!("metadata {key:?}: nested arrays are not supported"));
            }
            let n = c.u64(&what())?;
            // Every element takes at least one byte (8 for a string's length).
            let min = et.scalar_size().unwrap_or(8) as u64;
            if n > GGUF_ARRAY_ELEMS_MAX {
                return Err(format!(
                    "metadata {key:?} declares {n} array elements, over the limit of {GGUF_ARRAY_ELEMS_MAX} (GGUF_ARRAY_ELEMS_MAX)"
                ));
            }
            if n.saturating_mul(min) > c.remaining() {
                return Err(format!("truncated: metadata {key:?} declares {n} array elements, more than the file holds"));
            }
            let mut v = Vec::with_capacity(n as usize);
            for _ in 0..n {
                v.push(read_value(c, et, key, false)?);
            }
            Value::Array(et, v)
        }
    })
}
