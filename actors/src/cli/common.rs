//! Options shared by the commands that load a model.

use std::path::PathBuf;

use anyhow::Context;
use moe_runtime::model::Model;

/// Where the model is and how to compute it.
#[derive(Debug, clap::Args)]
pub struct ModelArgs {
    /// GGUF file (for a split set, the `-00001-of-0000N.gguf` shard).
    #[arg(long, short = 'm')]
    pub model: PathBuf,
    /// Compute threads (0 = all cores).
    #[arg(long, short = 't', default_value_t = 0)]
    pub threads: usize,
    /// Largest context (positions) per sequence.
    #[arg(long, default_value_t = 4096)]
    pub ctx_size: usize,
}

impl ModelArgs {
    /// Opens the model and applies the thread setting.
    pub fn load(&self) -> anyhow::Result<Model> {
        moe_kernels::set_num_threads(self.threads);
        Model::open(&self.model).with_context(|| format!("loading {}", self.model.display()))
    }
}
