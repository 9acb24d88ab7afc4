//! The node's routed-expert weights on the device: for every MoE layer, its `ffn_gate_exps`,
//! `ffn_up_exps` and `ffn_down_exps` as raw GGUF blocks, uploaded once, only the experts this
//! process mapped (an expert node's own; every expert in a single process).
//!
//! One expert stack is split into chunks of whole experts, each its own buffer no larger than
//! the device's `maxStorageBufferRange` (and [`CHUNK_BYTES_MAX`]): a shader binds one chunk
//! and addresses it with u32 byte offsets. Everything that does not fit (a type without a
//! shader, one expert larger than a binding, too many rows for one dispatch, device memory)
//! is refused here with the tensor's name, before any compute.

use std::sync::Arc;

use moe_kernels::GgmlType;
use moe_model::model::{MatStack, Model};
use moe_model::ModelError;

use crate::device::{Buffer, Device};
use crate::kernels::{supported_type_names, supported_types, MATVEC_CHUNK_VALUES};
use crate::VulkanError;

/// Largest buffer one expert chunk gets, in bytes (1 GiB; the device limit may be lower).
pub const CHUNK_BYTES_MAX: u64 = 1 << 30;

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
    /// Bytes uploaded in all.
    pub bytes: u64,
}

impl ExpertWeights {
    /// Uploads every mapped expert of `model`; chunks hold at most `chunk_bytes_max` bytes
    /// (also capped by the device's binding limit).
    pub fn upload(
        device: &Arc<Device>,
        model: &Model,
        chunk_bytes_max: u64,
    ) -> Result<Self, ModelError> {
        let chunk_max = chunk_bytes_max.min(device.max_binding_bytes());
        let mut bytes = 0u64;
        let mut layers = Vec::with_capacity(model.layers.len());
        for lw in &model.layers {
            let Some(moe) = &lw.moe else {
                layers.push(None);
                continue;
            };
            let mut stack = |s: &MatStack| -> Result<ExpertStack, ModelError> {
                let st = upload_stack(device, model, s, chunk_max)?;
                bytes += st.chunks.iter().map(|c| c.len as u64).sum::<u64>();
                Ok(st)
            };
            layers.push(Some(LayerStacks {
                gate: stack(&moe.gate_exps)?,
                up: stack(&moe.up_exps)?,
                down: stack(&moe.down_exps)?,
            }));
        }
        Ok(Self { layers, bytes })
    }
}

fn upload_stack(
    device: &Arc<Device>,
    model: &Model,
    stack: &MatStack,
    chunk_max: u64,
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
    if !supported_types().any(|t| t == ty) {
        return Err(VulkanError::UnsupportedType {
            tensor: stack.name.clone(),
            ty: ty.name(),
            supported: supported_type_names(),
        }
        .into());
    }
    if cols % MATVEC_CHUNK_VALUES != 0 {
        return Err(limit(format!(
            "{cols} columns are not a multiple of {MATVEC_CHUNK_VALUES}, which the matvec shader reads at a time"
        ))
        .into());
    }
    if rows as u64 > device.max_groups[0] as u64 {
        return Err(limit(format!(
            "{rows} rows exceed maxComputeWorkGroupCount[0] = {}",
            device.max_groups[0]
        ))
        .into());
    }
    let expert_bytes = stack.expert_bytes();
    if expert_bytes as u64 > chunk_max {
        return Err(limit(format!(
            "one expert is {expert_bytes} bytes, more than one shader binding may address ({chunk_max} bytes: maxStorageBufferRange or the chunk limit)"
        ))
        .into());
    }
    // Whole experts per chunk, greedily.
    let per_chunk = (chunk_max / expert_bytes.max(1) as u64).max(1) as usize;
    let mut slots = vec![None; n];
    let mut chunks = Vec::new();
    for (ci, group) in mapped.chunks(per_chunk).enumerate() {
        let mut buf = Buffer::new(
            device,
            group.len() * expert_bytes,
            &format!("{} (chunk {ci})", stack.name),
        )?;
        for (i, (e, q)) in group.iter().enumerate() {
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
            buf.write(i * expert_bytes, q.data());
            slots[*e] = Some(Slot {
                chunk: ci as u32,
                offset: (i * expert_bytes) as u32,
            });
        }
        chunks.push(buf);
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
