//! Options shared by the commands that load a model.

use std::path::PathBuf;

use anyhow::Context;
use moe_cluster::placement::{ExpertSet, NodeAddr, NodeIndex};
use moe_kernels::NumericMode;
use moe_model::config::ModelConfig;
use moe_model::gguf::GgufFile;
use moe_model::model::{Model, WeightSet};

use crate::cluster::args::{load_placement, RouterArgs};

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
    /// Exact arithmetic: f32 activations over exactly dequantized weights (the verification
    /// reference; the default of `logits`).
    #[arg(long, conflicts_with = "fast")]
    pub exact: bool,
    /// Fast arithmetic: activations rounded to int8 per block, integer dot products, as
    /// llama.cpp computes (the default of run, bench, serve and the roles).
    #[arg(long)]
    pub fast: bool,
}

impl ModelArgs {
    /// The numeric mode `--exact` / `--fast` select, else `default` (the command's).
    pub fn mode(&self, default: NumericMode) -> NumericMode {
        match (self.exact, self.fast) {
            (true, _) => NumericMode::Exact,
            (_, true) => NumericMode::Fast,
            _ => default,
        }
    }

    /// Opens the model for a router using `cluster`'s placement, if any: routed experts of
    /// remote nodes are not mapped at all, only those of `local` nodes. It computes in
    /// [`ModelArgs::mode`] with the command's `default`.
    pub fn load_for(
        &self,
        cluster: Option<&RouterArgs>,
        default: NumericMode,
    ) -> anyhow::Result<Model> {
        moe_kernels::set_num_threads(self.threads);
        let path = match &self.model {
            Some(p) => p.clone(),
            None => default_model()?,
        };
        let set = match cluster.and_then(|c| c.placement.as_ref()) {
            None => WeightSet::All,
            Some(placement) => {
                let header =
                    GgufFile::open(&path).with_context(|| format!("opening {}", path.display()))?;
                let cfg = ModelConfig::from_gguf(&header)?;
                let p = load_placement(placement, &cfg)?;
                let local = (0..cfg.n_layers)
                    .map(|l| {
                        let mut set = ExpertSet::empty(cfg.n_experts).ok()?;
                        for (i, node) in p.nodes().iter().enumerate() {
                            if node.addr == NodeAddr::Local {
                                set.union_with(p.experts_of(NodeIndex(i as u16), l)?);
                            }
                        }
                        Some(set)
                    })
                    .collect();
                WeightSet::Router { local }
            }
        };
        Ok(Model::open_with(&path, &set)
            .with_context(|| format!("loading {}", path.display()))?
            .with_mode(self.mode(default)))
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
        let s = moe_devdata::synth::synthesize(&moe_devdata::synth::SynthOptions::default(), &tmp)?;
        std::fs::rename(&tmp, &path).with_context(|| format!("renaming to {}", path.display()))?;
        eprintln!(
            "no --model given: synthesized the default tiny model at {} ({} bytes)",
            path.display(),
            s.file_bytes
        );
    }
    Ok(path)
}
