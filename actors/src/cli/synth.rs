//! `moe-node synth`: a random-weight model with Kimi K2.5's structure, written as GGUF.

use std::path::PathBuf;

use anyhow::{anyhow, Context};
use moe_devdata::synth::{synthesize, SynthOptions, SynthPreset};
use moe_kernels::GgmlType;

/// Arguments of `synth`.
#[derive(Debug, clap::Args)]
pub struct SynthArgs {
    /// Output GGUF path.
    #[arg(long, short = 'o')]
    out: PathBuf,
    /// Dimensions: tiny, kq (256-wide: every 256-block type stored as asked), small or
    /// kimi-k25-full.
    #[arg(long, default_value = "tiny")]
    preset: String,
    /// Storage type of the matrices (F32, F16, BF16, Q8_0, Q4_0, Q4_K, Q2_K, ..., IQ4_XS,
    /// IQ2_XXS, IQ1_S, TQ1_0, ...: any type moe-kernels decodes). IQ and TQ blocks are
    /// stand-ins (random codes at each block's scale), not quantized values.
    #[arg(long = "type", default_value = "BF16")]
    ty: String,
    /// Layer count (the first layer is dense); default: the preset's.
    #[arg(long)]
    layers: Option<usize>,
    /// Seed; equal arguments give byte-identical files.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Router skew (0 = uniform; 0.1 mild, 1.0 severe Zipf-like preference for low expert ids).
    #[arg(long, default_value_t = 0.0)]
    skew: f32,
}

/// Writes the model and prints a one-line summary.
pub fn run(a: SynthArgs) -> anyhow::Result<()> {
    let preset = SynthPreset::from_name(&a.preset).ok_or_else(|| {
        anyhow!(
            "unknown preset {:?} (tiny, kq, small, kimi-k25-full)",
            a.preset
        )
    })?;
    let ty = GgmlType::from_name(&a.ty).ok_or_else(|| anyhow!("unknown tensor type {:?}", a.ty))?;
    let opts = SynthOptions {
        preset,
        ty,
        layers: a.layers,
        seed: a.seed,
        skew: a.skew,
    };
    let s = synthesize(&opts, &a.out).with_context(|| format!("writing {}", a.out.display()))?;
    eprintln!(
        "wrote {}: preset {}, {} layers, {} tensors, {:.3} G params, {:.2} GB, in {:.1} s",
        s.path.display(),
        preset.name(),
        s.shape.layers,
        s.tensors,
        s.params as f64 / 1e9,
        s.file_bytes as f64 / 1e9,
        s.elapsed.as_secs_f64()
    );
    Ok(())
}
