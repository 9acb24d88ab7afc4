//! `moe-node run`: prompt in, streamed text out, then prompt and generation speed. With
//! `--placement`, the routed experts run on the placement's nodes.

use std::io::Write;
use std::sync::Arc;

use moe_model::forward::ExpertBackend;
use moe_model::sampling::SamplingParams;
use moe_model::tokenizer::Tokenizer;

use super::generate::{generate, GenRequest, SpeculativeArgs};
use crate::options::ModelArgs;
use crate::options::RouterArgs;

/// Sampling options shared by the generating commands.
#[derive(Debug, Clone, clap::Args)]
pub struct SamplingArgs {
    /// Sampling temperature (0 = greedy).
    #[arg(long, default_value_t = 0.0)]
    pub temp: f32,
    /// Top-k (0 = off).
    #[arg(long, default_value_t = 0)]
    pub top_k: usize,
    /// Top-p (1 = off).
    #[arg(long, default_value_t = 1.0)]
    pub top_p: f32,
    /// Min-p (0 = off).
    #[arg(long, default_value_t = 0.0)]
    pub min_p: f32,
    /// Repetition penalty (1 = off).
    #[arg(long, default_value_t = 1.0)]
    pub repeat_penalty: f32,
    /// Sampling seed.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

impl SamplingArgs {
    /// Validated parameters.
    pub fn params(&self) -> anyhow::Result<SamplingParams> {
        let p = SamplingParams {
            temperature: self.temp,
            top_k: self.top_k,
            top_p: self.top_p,
            min_p: self.min_p,
            repeat_penalty: self.repeat_penalty,
            seed: self.seed,
            ..Default::default()
        };
        p.validate()?;
        Ok(p)
    }
}

/// Arguments of `run`.
#[derive(Debug, clap::Args)]
pub struct RunArgs {
    #[command(flatten)]
    model: ModelArgs,
    #[command(flatten)]
    cluster: RouterArgs,
    #[command(flatten)]
    sampling: SamplingArgs,
    #[command(flatten)]
    speculative: SpeculativeArgs,
    #[command(flatten)]
    metrics: crate::telemetry::MetricsArgs,
    /// Prompt text (special tokens in it are parsed as special).
    #[arg(long, short = 'p')]
    prompt: String,
    /// Tokens to generate.
    #[arg(short = 'n', long = "n-predict", default_value_t = 64)]
    n_predict: usize,
    /// Keep generating past the end-of-sequence token.
    #[arg(long)]
    ignore_eos: bool,
}

/// The expert backend a model-running command uses: local (on `--backend`), or the
/// placement's nodes.
pub fn expert_backend(
    model: &moe_model::model::Model,
    cluster: &RouterArgs,
    args: &ModelArgs,
) -> anyhow::Result<Box<dyn ExpertBackend>> {
    Ok(cluster.backend(model, args.compute.handle(model)?)?.0)
}

/// Generates and streams to stdout; statistics go to stderr.
pub fn run(a: RunArgs) -> anyhow::Result<()> {
    let params = a.sampling.params()?;
    let model = a
        .model
        .load_for(Some(&a.cluster), moe_kernels::NumericMode::Fast)?;
    let tok = Arc::new(Tokenizer::from_gguf(model.file())?);
    let mut experts = expert_backend(&model, &a.cluster, &a.model)?;
    let prompt = tok.encode_prompt(&a.prompt);
    let mut out = std::io::stdout().lock();
    write!(out, "{}", a.prompt)?;
    out.flush()?;
    let req = GenRequest {
        prompt: &prompt,
        max_tokens: a.n_predict,
        sampling: params,
        ignore_eos: a.ignore_eos,
        ctx_size: a.model.ctx_size,
        draft_max: a.speculative.draft_max(),
    };
    let stats = generate(&model, &tok, experts.as_mut(), &req, &mut |text| {
        let _ = write!(out, "{text}");
        let _ = out.flush();
    })?;
    writeln!(out)?;
    eprintln!(
        "prompt: {} tokens in {:.3} s ({:.2} tokens/s) | generation: {} tokens in {:.3} s ({:.2} tokens/s){}",
        stats.prompt_tokens,
        stats.prompt_s,
        stats.prompt_tokens as f64 / stats.prompt_s.max(1e-9),
        stats.generated.len(),
        stats.gen_s,
        stats.generated.len() as f64 / stats.gen_s.max(1e-9),
        stats.speculation_summary()
    );
    Ok(())
}
