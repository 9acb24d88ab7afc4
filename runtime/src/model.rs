//! `Model`: a mapped GGUF file with its typed config (the tokenizer is loaded separately, since
//! expert nodes have no use for it) and every weight located and
//! shape-checked once. Weights stay in the mapping; [`Model::mat`] and
//! [`Model::expert_mat`] hand out borrowed [`QMatrix`] views.

mod weights;

pub use weights::{Attention, DenseFfn, ExpertsWeight, LayerWeights, Mat, MoeWeights};

use moe_kernels::QMatrix;

use crate::config::ModelConfig;
use crate::forward::Rope;
use crate::gguf::GgufFile;
use crate::RuntimeError;

/// A loaded model: file, config, tokenizer and weight locations.
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
}

impl std::fmt::Debug for Model {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Model")
            .field("file", &self.file)
            .field("cfg", &self.cfg)
            .finish()
    }
}

impl Model {
    /// Opens and validates a model file (or split set).
    pub fn open(path: impl AsRef<std::path::Path>) -> Result<Self, RuntimeError> {
        let file = GgufFile::open(path.as_ref())?;
        Self::from_file(file).map_err(|e| match e {
            RuntimeError::Io { .. } | RuntimeError::Gguf { .. } => e,
            other => RuntimeError::gguf(path.as_ref(), other.to_string()),
        })
    }

    /// Validates an already parsed file.
    pub fn from_file(file: GgufFile) -> Result<Self, RuntimeError> {
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
        })
    }

    /// The underlying file.
    pub fn file(&self) -> &GgufFile {
        &self.file
    }

    /// A borrowed view of a 2-D weight.
    pub fn mat(&self, m: &Mat) -> QMatrix<'_> {
        m.view(&self.file)
    }

    /// Expert `e` of a stacked expert tensor.
    pub fn expert_mat(&self, w: &ExpertsWeight, e: usize) -> QMatrix<'_> {
        w.expert(&self.file, e)
    }
}
