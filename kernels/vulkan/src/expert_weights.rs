//! The node's routed-expert weights on the device: for every MoE layer, its `ffn_gate_exps`,
//! `ffn_up_exps` and `ffn_down_exps` as raw GGUF blocks, uploaded once, only the experts this
//! process mapped (an expert node's own; every expert in a single process).
//!
//! One expert stack is split into chunks of whole experts, consecutive in the file, each its
//! own buffer no larger than the device's `maxStorageBufferRange` (and [`CHUNK_BYTES_MAX`]):
//! a shader binds one chunk and addresses it with u32 byte offsets. Everything that does not
//! fit (a type without a shader, one expert larger than a binding, too many rows for one
//! dispatch, device memory) is refused here with the tensor's name, before any compute.
//!
//! [`HostMemory::Import`] (the default): on a unified-memory device
//! ([`Device::unified_memory`]) that imports host memory (`VK_EXT_external_memory_host`), a
//! chunk is a read-only map of its span of the model file (widened to the import alignment),
//! which the device reads in place: on a unified-memory machine the weights then exist once, in the page cache, instead of once there and once
//! more in a device copy (a node holding 94 GB of Kimi K2.5's experts has no room for two).
//! These maps are this module's own (the model's maps are not tied to the device's
//! lifetime), over the same file pages. A chunk whose span cannot be imported (no extension,
//! the span past the file's end or a binding's range, a refused import) is copied, and
//! [`ExpertWeights::imported_bytes`] says how much was not. A copy on a discrete GPU (or
//! with [`HostMemory::Stage`]) goes through a mapped staging buffer into device memory the
//! host does not map, the GPU's own (its host-visible device-local memory may be a 256 MiB
//! BAR window); on a unified-memory device into mapped memory allocated on it.

use std::path::Path;
use std::sync::Arc;

use moe_kernels::{GgmlType, QMatrix};
use moe_model::model::{MatStack, Model};
use moe_model::ModelError;

use crate::commands::Commands;
use crate::device::{Buffer, BufferKind, Device};
use crate::kernels::{supported_type_names, supported_types, MATVEC_CHUNK_VALUES};
use crate::VulkanError;

/// Largest buffer one expert chunk gets, in bytes (1 GiB; the device limit may be lower).
pub const CHUNK_BYTES_MAX: u64 = 1 << 30;

/// How expert weights get into device-visible memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostMemory {
    /// Import maps of the model file on a unified-memory device that can; else as `Copy`.
    Import,
    /// Copy: on a unified-memory device into mapped memory allocated on it; on a discrete
    /// GPU as `Stage`.
    Copy,
    /// Copy through a staging buffer into device memory the host does not map (a discrete
    /// GPU's own memory; on a unified-memory device only to check that path).
    Stage,
}

/// Bytes of the mapped buffer that staged uploads go through (64 MiB), and at most a quarter
/// of the chunk limit (so that the tests' small chunks take several fills too).
const STAGING_BYTES: usize = 64 << 20;

/// Where one expert's matrix lives: chunk index and byte offset in it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Slot {
    /// Index into [`ExpertStack::chunks`].
    pub chunk: u32,
    /// Byte offset of the expert's first row in that chunk.
    pub offset: u32,
}

/// One stacked expert tensor of one layer on the device.
#[derive(Debug)]
pub struct ExpertStack {
    /// GGUF tensor name.
    pub name: String,
    /// Block type.
    pub ty: GgmlType,
    /// Output features of one expert.
    pub rows: usize,
    /// Input features.
    pub cols: usize,
    /// Bytes of one row.
    pub row_bytes: usize,
    /// Bytes of one expert (in the file and on the device).
    pub expert_bytes: usize,
    /// The buffers, each a run of whole experts.
    pub chunks: Vec<Buffer>,
    /// Per expert id: where it is, if uploaded.
    pub slots: Vec<Option<Slot>>,
}

/// The gate, up and down stacks of one MoE layer.
#[derive(Debug)]
pub struct LayerStacks {
    /// `ffn_gate_exps`.
    pub gate: ExpertStack,
    /// `ffn_up_exps`.
    pub up: ExpertStack,
    /// `ffn_down_exps`.
    pub down: ExpertStack,
}

/// Every MoE layer's experts on the device (None for dense layers).
#[derive(Debug)]
pub struct ExpertWeights {
    /// Per model layer.
    pub layers: Vec<Option<LayerStacks>>,
    /// Bytes of the experts on the device in all (imported or copied; not counting the
    /// padding of imported spans or of copies to whole words).
    pub bytes: u64,
    /// Of `bytes`, those imported from file maps rather than copied.
    pub imported_bytes: u64,
    /// The file maps imported chunks read; dropped after `layers` (declaration order), so
    /// no buffer outlives the memory it views.
    _maps: Vec<memmap2::Mmap>,
}

impl ExpertWeights {
    /// Uploads every mapped expert of `model`; chunks hold at most `chunk_bytes_max` bytes
    /// (also capped by the device's binding limit).
    pub fn upload(
        device: &Arc<Device>,
        model: &Model,
        chunk_bytes_max: u64,
        host: HostMemory,
    ) -> Result<Self, ModelError> {
        let chunk_max = chunk_bytes_max.min(device.max_binding_bytes());
        let mut bytes = 0u64;
        let mut imported_bytes = 0u64;
        let mut maps = Vec::new();
        let mut layers = Vec::with_capacity(model.layers.len());
        for lw in &model.layers {
            let Some(moe) = &lw.moe else {
                layers.push(None);
                continue;
            };
            let mut stack = |s: &MatStack| -> Result<ExpertStack, ModelError> {
                let st = upload_stack(device, model, s, chunk_max, host, &mut maps)?;
                // The experts' own bytes (an imported chunk's buffer also spans the alignment
                // padding around them).
                for slot in st.slots.iter().flatten() {
                    bytes += st.expert_bytes as u64;
                    if st.chunks[slot.chunk as usize].kind() == BufferKind::Imported {
                        imported_bytes += st.expert_bytes as u64;
                    }
                }
                Ok(st)
            };
            layers.push(Some(LayerStacks {
                gate: stack(&moe.gate_exps)?,
                up: stack(&moe.up_exps)?,
                down: stack(&moe.down_exps)?,
            }));
        }
        Ok(Self {
            layers,
            bytes,
            imported_bytes,
            _maps: maps,
        })
    }
}

fn upload_stack(
    device: &Arc<Device>,
    model: &Model,
    stack: &MatStack,
    chunk_max: u64,
    host: HostMemory,
    maps: &mut Vec<memmap2::Mmap>,
) -> Result<ExpertStack, ModelError> {
    let n = model.cfg.n_experts;
    let limit = |what: String| VulkanError::DeviceLimit {
        tensor: stack.name.clone(),
        what,
    };
    // The experts this process mapped, with their bytes.
    let mut mapped = Vec::new();
    for e in 0..n {
        match model.expert_mat(stack, e) {
            Ok(q) => mapped.push((e, q)),
            Err(ModelError::NotMapped { .. }) => {}
            Err(other) => return Err(other),
        }
    }
    let Some((_, first)) = mapped.first() else {
        return Ok(ExpertStack {
            name: stack.name.clone(),
            ty: GgmlType::F32,
            rows: 0,
            cols: 0,
            row_bytes: 0,
            expert_bytes: stack.expert_bytes(),
            chunks: Vec::new(),
            slots: vec![None; n],
        });
    };
    let (ty, rows, cols, row_bytes) = (first.ty(), first.rows(), first.cols(), first.row_bytes());
    matvec_fits(device, &stack.name, ty, rows, cols)?;
    let expert_bytes = stack.expert_bytes();
    if expert_bytes as u64 > chunk_max {
        return Err(limit(format!(
            "one expert is {expert_bytes} bytes, more than one shader binding may address ({chunk_max} bytes: maxStorageBufferRange or the chunk limit)"
        ))
        .into());
    }
    for (e, q) in &mapped {
        if q.ty() != ty || q.data().len() != expert_bytes {
            return Err(limit(format!(
                "expert {e} has type {} and {} bytes, expert {} {} and {expert_bytes}",
                q.ty().name(),
                q.data().len(),
                mapped[0].0,
                ty.name()
            ))
            .into());
        }
    }
    // Whole experts per chunk, consecutive ids (so consecutive in the file), greedily; an
    // imported chunk's span also holds up to one alignment unit of padding at each end.
    let padding = match (host, import_alignment(device)) {
        (HostMemory::Import, Some(align)) => 2 * align,
        _ => 0,
    };
    let per_chunk =
        (chunk_max.saturating_sub(padding) / expert_bytes.max(1) as u64).max(1) as usize;
    let path = model.file().paths().get(stack.shard()).map(|p| p.as_path());
    let mut slots = vec![None; n];
    let mut chunks = Vec::new();
    for run in mapped.chunk_by(|a, b| b.0 == a.0 + 1) {
        for group in run.chunks(per_chunk) {
            let ci = chunks.len();
            let what = format!("{} (chunk {ci})", stack.name);
            let imported = match (host, path) {
                (HostMemory::Import, Some(path)) => {
                    import_span(device, path, stack, group, chunk_max, &what, maps)
                }
                _ => None,
            };
            let staged = host == HostMemory::Stage || !device.unified_memory();
            let (buf, base) = match imported {
                Some(done) => done,
                None if staged => {
                    let staging = STAGING_BYTES.min(chunk_max as usize / 4);
                    (stage_group(device, group, expert_bytes, staging, &what)?, 0)
                }
                None => (copy_group(device, group, expert_bytes, &what)?, 0),
            };
            for (i, (e, _)) in group.iter().enumerate() {
                slots[*e] = Some(Slot {
                    chunk: ci as u32,
                    offset: (base + i * expert_bytes) as u32,
                });
            }
            chunks.push(buf);
        }
    }
    Ok(ExpertStack {
        name: stack.name.clone(),
        ty,
        rows,
        cols,
        row_bytes,
        expert_bytes,
        chunks,
        slots,
    })
}

/// Whether the matvec shaders take a `rows` x `cols` matrix of `ty` (tensor `name`) on
/// `device`: a type with a shader, whole 32-value chunks per row, and rows within one
/// dispatch's workgroups; else an error naming the tensor and the limit.
pub(crate) fn matvec_fits(
    device: &Device,
    name: &str,
    ty: GgmlType,
    rows: usize,
    cols: usize,
) -> Result<(), VulkanError> {
    let limit = |what: String| VulkanError::DeviceLimit {
        tensor: name.into(),
        what,
    };
    if !supported_types().any(|t| t == ty) {
        return Err(VulkanError::UnsupportedType {
            tensor: name.into(),
            ty: ty.name(),
            supported: supported_type_names(),
        });
    }
    if !cols.is_multiple_of(MATVEC_CHUNK_VALUES) {
        return Err(limit(format!(
            "{cols} columns are not a multiple of {MATVEC_CHUNK_VALUES}, which the matvec shader reads at a time"
        )));
    }
    if rows as u64 > device.max_groups[0] as u64 {
        return Err(limit(format!(
            "{rows} rows exceed maxComputeWorkGroupCount[0] = {}",
            device.max_groups[0]
        )));
    }
    Ok(())
}

/// A device buffer holding `group`'s matrices (each `bytes_each` bytes) back to back, copied
/// as `host` and the device ask: through a staging buffer into memory the host does not map
/// on a discrete GPU or with [`HostMemory::Stage`], else into host-visible memory.
pub(crate) fn to_device(
    device: &Arc<Device>,
    group: &[(usize, QMatrix<'_>)],
    bytes_each: usize,
    host: HostMemory,
    what: &str,
) -> Result<Buffer, VulkanError> {
    if host == HostMemory::Stage || !device.unified_memory() {
        stage_group(device, group, bytes_each, STAGING_BYTES, what)
    } else {
        copy_group(device, group, bytes_each, what)
    }
}

/// A device buffer holding `group`'s experts back to back.
fn copy_group(
    device: &Arc<Device>,
    group: &[(usize, QMatrix<'_>)],
    expert_bytes: usize,
    what: &str,
) -> Result<Buffer, VulkanError> {
    let mut buf = Buffer::new(device, group.len() * expert_bytes, what)?;
    for (i, (_, q)) in group.iter().enumerate() {
        buf.write(i * expert_bytes, q.data());
    }
    Ok(buf)
}

/// A device-only buffer holding `group`'s experts back to back, filled through a mapped
/// staging buffer of about `staging_bytes` (whole experts, one at least; one submission per
/// fill).
fn stage_group(
    device: &Arc<Device>,
    group: &[(usize, QMatrix<'_>)],
    expert_bytes: usize,
    staging_bytes: usize,
    what: &str,
) -> Result<Buffer, VulkanError> {
    let dst = Buffer::device_only(device, group.len() * expert_bytes, what)?;
    let per_fill = (staging_bytes / expert_bytes.max(1)).max(1);
    let mut staging = Buffer::new(device, per_fill.min(group.len()) * expert_bytes, "staging")?;
    let mut commands = Commands::new(device)?;
    for (f, fill) in group.chunks(per_fill).enumerate() {
        for (i, (_, q)) in fill.iter().enumerate() {
            staging.write(i * expert_bytes, q.data());
        }
        let at = (f * per_fill * expert_bytes) as u64;
        commands.copy(&staging, &dst, at, (fill.len() * expert_bytes) as u64)?;
        commands.submit_and_wait()?;
    }
    Ok(dst)
}

/// The alignment of imported spans (page-aligned at least: a map's offset must be), on a
/// unified-memory device that imports host memory; `None` elsewhere (chunks are copied).
fn import_alignment(device: &Device) -> Option<u64> {
    if !device.unified_memory() {
        return None;
    }
    Some(device.host_import_alignment()?.max(PAGE_BYTES))
}

/// `group`'s experts (consecutive ids of `stack`) as an imported read-only map of their
/// span of `path`, widened to the device's import alignment, with the first expert's byte
/// offset in it; `None` where that cannot be done (the caller copies instead).
fn import_span(
    device: &Arc<Device>,
    path: &Path,
    stack: &MatStack,
    group: &[(usize, QMatrix<'_>)],
    chunk_max: u64,
    what: &str,
    maps: &mut Vec<memmap2::Mmap>,
) -> Option<(Buffer, usize)> {
    let (first, last) = (group.first()?.0, group.last()?.0);
    let begin = stack.expert_offset(first);
    let end = stack.expert_offset(last) + stack.expert_bytes();
    let views: Vec<(usize, &[u8])> = group
        .iter()
        .map(|(e, q)| (stack.expert_offset(*e), q.data()))
        .collect();
    import_bytes(device, path, begin..end, &views, chunk_max, what, maps)
}

/// Bytes `span` of `path` as an imported read-only map, widened to the device's import
/// alignment, with `span.start`'s offset in it; `None` where that cannot be done (no import
/// on this device, a span past the file or `limit`, or bytes that are not the model's:
/// `views`, each a file offset and the bytes the model reads there, are sampled). The map is
/// pushed to `maps`, which must outlive the buffer.
pub(crate) fn import_bytes(
    device: &Arc<Device>,
    path: &Path,
    span: std::ops::Range<usize>,
    views: &[(usize, &[u8])],
    limit: u64,
    what: &str,
    maps: &mut Vec<memmap2::Mmap>,
) -> Option<(Buffer, usize)> {
    let align = import_alignment(device)? as usize;
    let start = span.start / align * align;
    let stop = span.end.next_multiple_of(align);
    let file = std::fs::File::open(path).ok()?;
    if stop as u64 > file.metadata().ok()?.len() || (stop - start) as u64 > limit {
        return None;
    }
    // SAFETY: a read-only map of the model file, which (as for the model's own maps) is not
    // modified while in use.
    let map = unsafe {
        memmap2::MmapOptions::new()
            .offset(start as u64)
            .len(stop - start)
            .map(&file)
    }
    .ok()?;
    // The bytes must be the ones the model reads (the same file, not replaced since it was
    // opened): each view's first and last SAMPLE_BYTES compared (a whole comparison would
    // read the file once more at start-up).
    let same = views.iter().all(|&(offset, data)| {
        let at = offset - start;
        let n = data.len().min(SAMPLE_BYTES);
        map.get(at..at + data.len())
            .is_some_and(|m| m[..n] == data[..n] && m[m.len() - n..] == data[data.len() - n..])
    });
    if !same {
        return None;
    }
    // SAFETY: `map` is kept in `maps`, which the caller drops after the buffer.
    let buf = unsafe { Buffer::import(device, map.as_ptr(), map.len(), what) }.ok()?;
    maps.push(map);
    Some((buf, span.start - start))
}

/// The host page size maps are aligned to.
const PAGE_BYTES: u64 = 4096;
/// Bytes at each end of an expert compared between the model's view and an import's map.
const SAMPLE_BYTES: usize = 256;
