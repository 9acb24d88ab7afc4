//! `Model`: a mapped GGUF file with its typed config and every weight located and
//! shape-checked once (no tokenizer: the front-ends that need text build one with
//! `Tokenizer::from_gguf(model.file())`; expert nodes never do). Weights stay in the
//! mapping, except that Fast mode repacks the k-quant matrices at load (`model/packing.rs`);
//! [`Model::mat`], [`Model::expert_mat`] and [`Model::head_mat`] hand out borrowed
//! [`QMatrix`] views (with their packed form where there is one), computed in the model's
//! [`NumericMode`] (Exact unless [`Model::with_mode`] says otherwise): every forward pass
//! over this model uses that one mode. It also carries the element type of its sequences' KV
//! caches ([`KvType`], f32 unless [`Model::with_kv_type`] says otherwise).

mod packing;
mod traffic;
mod weights;

pub use weights::{Attention, DenseFfn, LayerWeights, Mat, MatStack, MoeWeights};

use std::sync::Arc;

use moe_kernels::{KvType, NumericMode, QMatrix};

use crate::config::ModelConfig;
use crate::gguf::{GgufFile, TensorInfo};
use crate::rope::Rope;
use crate::LayerExperts;
use crate::ModelError;

/// A loaded model: file, config and weight locations (the tokenizer is loaded separately).
pub struct Model {
    file: GgufFile,
    /// Hyper-parameters.
    pub cfg: ModelConfig,
    /// `token_embd.weight` as `[vocab, D]`.
    pub tok_embd: Mat,
    /// `output_norm.weight`.
    pub output_norm: Vec<f32>,
    /// `output.weight` as `[vocab, D]` (or the embedding when tied).
    pub output: Mat,
    /// Per-layer weights.
    pub layers: Vec<LayerWeights>,
    /// Rope frequencies.
    pub rope: Rope,
    /// The arithmetic of every matmul over this model's weights.
    mode: NumericMode,
    /// The element type of the KV caches made for this model ([`Model::kv_type`]).
    kv_type: KvType,
    /// Fast mode's repacked matrices (empty in Exact mode).
    packed: packing::Packed,
    /// Where attention, dense FFNs and shared experts run when not on the CPU: an
    /// `Arc<dyn LayerCompute>`, set and read by `forward/layer_compute.rs`
    /// ([`Model::with_layer_compute`]). Typed as `Any` so the model's definition does not
    /// depend on the forward pass built on it.
    pub(crate) layer_device: Option<Arc<dyn std::any::Any + Send + Sync>>,
}

/// Which of a model's matrices the CPU multiplies (Fast mode repacks those for its kernels).
/// The router gates always run on the CPU.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CpuShare {
    /// The routed experts (else another device computes them: an `ExpertCompute`).
    pub routed_experts: bool,
    /// Attention, the dense FFNs, the shared experts and the output head (else a
    /// `LayerCompute` does; where it leaves the head to the CPU, the CPU computes it from
    /// the file's blocks).
    pub layers: bool,
}

impl CpuShare {
    /// Everything on the CPU.
    pub const ALL: Self = Self {
        routed_experts: true,
        layers: true,
    };
}

impl std::fmt::Debug for Model {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Model")
            .field("file", &self.file)
            .field("cfg", &self.cfg)
            .field("mode", &self.mode)
            .field("kv_type", &self.kv_type)
            .finish()
    }
}

/// Which weights a process maps: the rest of the file is neither mapped nor read.
#[derive(Debug, Clone)]
pub enum WeightSet {
    /// Everything (a single process).
    All,
    /// A router: every weight except routed experts, of which only `local[layer]`.
    Router {
        /// Experts computed in-process, per model layer (None or empty: none).
        local: LayerExperts,
    },
    /// An expert node: the experts `owned[layer]`, plus the small 1-D tensors (norms,
    /// router bias) that model validation reads.
    Experts {
        /// Experts this node owns, per model layer.
        owned: LayerExperts,
    },
}

impl WeightSet {
    /// Byte ranges of `info` (relative to its start) that this set maps.
    fn ranges(&self, info: &TensorInfo) -> Vec<std::ops::Range<usize>> {
        let everything: Vec<std::ops::Range<usize>> = std::iter::once(0..info.size).collect();
        let (sets, others) = match self {
            Self::All => return everything,
            Self::Router { local } => (local, everything),
            Self::Experts { owned } => (
                owned,
                if info.n_dims == 1 {
                    everything
                } else {
                    Vec::new()
                },
            ),
        };
        if !info.name.ends_with("_exps.weight") {
            return others;
        }
        let layer = info
            .name
            .strip_prefix("blk.")
            .and_then(|r| r.split('.').next())
            .and_then(|l| l.parse::<usize>().ok());
        let Some(set) = layer.and_then(|l| sets.in_layer(l)) else {
            return Vec::new();
        };
        let per_expert = info.size / (info.ne[2].max(1) as usize);
        set.ranges()
            .map(|r| r.start() * per_expert..(r.end() + 1) * per_expert)
            .collect()
    }
}

impl Model {
    /// Opens a model mapping only the weights in `set` (see [`WeightSet`]).
    pub fn open_with(
        path: impl AsRef<std::path::Path>,
        set: &WeightSet,
    ) -> Result<Self, ModelError> {
        let path = path.as_ref();
        let file = match set {
            WeightSet::All => GgufFile::open(path)?,
            partial => GgufFile::open_mapped(path, &|info| partial.ranges(info))?,
        };
        Self::from_file(file).map_err(|e| match e {
            ModelError::Io { .. } | ModelError::Gguf { .. } => e,
            other => ModelError::gguf(path, other.to_string()),
        })
    }

    /// Opens and validates a model file (or split set).
    pub fn open(path: impl AsRef<std::path::Path>) -> Result<Self, ModelError> {
        let file = GgufFile::open(path.as_ref())?;
        Self::from_file(file).map_err(|e| match e {
            ModelError::Io { .. } | ModelError::Gguf { .. } => e,
            other => ModelError::gguf(path.as_ref(), other.to_string()),
        })
    }

    /// Validates an already parsed file.
    pub fn from_file(file: GgufFile) -> Result<Self, ModelError> {
        let cfg = ModelConfig::from_gguf(&file)?;
        let w = weights::Loader {
            file: &file,
            cfg: &cfg,
        };
        let tok_embd = w.mat("token_embd.weight", cfg.vocab, cfg.n_embd)?;
        let output_norm = w.vector("output_norm.weight", cfg.n_embd)?;
        let output = match file.tensor_info("output.weight") {
            Some(_) => w.mat("output.weight", cfg.vocab, cfg.n_embd)?,
            None => tok_embd.clone(),
        };
        let layers = (0..cfg.n_layers)
            .map(|l| w.layer(l))
            .collect::<Result<Vec<_>, _>>()?;
        let rope = Rope::new(&cfg);
        Ok(Self {
            file,
            cfg,
            tok_embd,
            output_norm,
            output,
            layers,
            rope,
            mode: NumericMode::Exact,
            kv_type: KvType::F32,
            packed: packing::Packed::default(),
            layer_device: None,
        })
    }

    /// This model computing in `mode` (a model opens in [`NumericMode::Exact`]). Fast mode
    /// repacks the k-quant matrices this process mapped (`model/packing.rs`: the time of a
    /// copy of them, on the rayon pool, and their file pages released); Exact mode drops
    /// any packed copies and reads the file.
    pub fn with_mode(self, mode: NumericMode) -> Self {
        self.with_mode_packing(mode, CpuShare::ALL)
    }

    /// As [`Model::with_mode`], repacking only what the CPU computes (`cpu`): the rest stays
    /// as the file has it (not packed, its pages not released), for a process that computes
    /// it on another device (a Vulkan one reads the file's blocks), where packing it would
    /// only double its memory.
    pub fn with_mode_packing(mut self, mode: NumericMode, cpu: CpuShare) -> Self {
        self.mode = mode;
        self.packed = match mode {
            NumericMode::Fast => packing::Packed::build(&self, cpu),
            NumericMode::Exact => packing::Packed::default(),
        };
        self
    }

    /// Matrices repacked for Fast mode, and their bytes.
    pub fn packed_summary(&self) -> (usize, usize) {
        self.packed.summary()
    }

    /// The arithmetic of this model's matmuls.
    pub fn mode(&self) -> NumericMode {
        self.mode
    }

    /// This model's KV caches storing `kv_type` (a model opens with [`KvType::F32`]).
    ///
    /// Any type works in either mode, but only f32 keeps Exact mode the reference: a narrower
    /// cache rounds every cached latent and rope key, so the front-ends refuse a non-f32 type
    /// with `--exact`.
    pub fn with_kv_type(mut self, kv_type: KvType) -> Self {
        self.kv_type = kv_type;
        self
    }

    /// The element type of the KV caches made for this model
    /// ([`crate::forward::KvCache::for_model`]).
    pub fn kv_type(&self) -> KvType {
        self.kv_type
    }

    /// The underlying file.
    pub fn file(&self) -> &GgufFile {
        &self.file
    }

    /// A borrowed view of a 2-D weight (an error if this process did not map it).
    pub fn mat(&self, m: &Mat) -> Result<QMatrix<'_>, ModelError> {
        self.packed_view(m.view(&self.file)?, m.key())
    }

    /// Expert `e` of a stacked expert tensor (an error if this process did not map it).
    pub fn expert_mat(&self, w: &MatStack, e: usize) -> Result<QMatrix<'_>, ModelError> {
        self.packed_view(w.matrix(&self.file, e, "expert")?, w.key(e))
    }

    /// Head `h` of a per-head attention tensor (`attn_k_b`, `attn_v_b`).
    pub fn head_mat(&self, w: &MatStack, h: usize) -> Result<QMatrix<'_>, ModelError> {
        self.packed_view(w.matrix(&self.file, h, "head")?, w.key(h))
    }

    /// Head `h` of layer `l`'s `attn_k_b` transposed (`[qk_nope, kv_lora_rank]`), made at
    /// load in fast mode for the decompressed prompt attention; `None` in exact mode, or
    /// where this process did not map the layer's attention.
    pub fn k_b_transposed(&self, l: usize, h: usize) -> Option<QMatrix<'_>> {
        let bytes = self.packed.k_b_t(l, h)?;
        let (dn, lkv) = (self.cfg.qk_nope, self.cfg.kv_lora_rank);
        QMatrix::new(packing::K_B_T_TYPE, dn, lkv, bytes)
            .ok()
            .map(|m| m.with_mode(self.mode))
    }

    /// `m` in this model's mode, with its packed form (from `key`) where there is one.
    fn packed_view<'a>(
        &'a self,
        m: QMatrix<'a>,
        key: (usize, usize),
    ) -> Result<QMatrix<'a>, ModelError> {
        let m = m.with_mode(self.mode);
        Ok(match self.packed.get(key) {
            Some(p) => m.with_packed(p)?,
            None => m,
        })
    }
}
