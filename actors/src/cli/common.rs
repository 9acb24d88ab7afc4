//! Options shared by the commands that load a model.

use std::path::PathBuf;

use anyhow::Context;
use moe_runtime::model::Model;

/// Where the model is and how to compute it.
#[derive(Debug, clap::Args)]
pub struct ModelArgs {
    /// GGUF file (for a split set, the `-00001-of-0000N.gguf` shard). Without it, a tiny
    /// random-weight Kimi-K2.5-shaped model is synthesized once into the temp directory.
    #[arg(long, short = 'm')]
    pub model: Option<PathBuf>,
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
        let path = match &self.model {
            Some(p) => p.clone(),
            None => default_model()?,
        };
        Model::open(&path).with_context(|| format!("loading {}", path.display()))
    }
}

/// The embedded default: `synth --preset tiny` (seed 0, BF16), written once to the temp dir.
pub fn default_model() -> anyhow::Result<PathBuf> {
    let dir = std::env::temp_dir().join("moe-node");
    let path = dir.join("default-tiny-BF16-seed0.gguf");
    if !path.exists() {
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        // Write under a unique name, then rename, so concurrent first runs never see half a file.
        let tmp = dir.join(format!("default-tiny.{}.partial", std::process::id()));
        let s = moe_runtime::synth::synthesize(&moe_runtime::synth::SynthOptions::default(), &tmp)?;
        std::fs::rename(&tmp, &path).with_context(|| format!("renaming to {}", path.display()))?;
        eprintln!("no --model given: synthesized the default tiny model at {} ({} bytes)", path.display(), s.file_bytes);
    }
    Ok(path)
}
