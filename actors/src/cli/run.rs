//! `moe-node run`: prompt in, streamed text out, then prompt and generation speed.

use std::io::Write;
use std::time::Instant;

use anyhow::bail;
use moe_runtime::forward::{KvCache, LocalExperts, NoObserver, SeqInput};
use moe_runtime::sampling::{Sampler, SamplingParams};
use moe_runtime::tokenizer::{StreamDecoder, Tokenizer};

use super::common::ModelArgs;

/// Arguments of `run`.
#[derive(Debug, clap::Args)]
pub struct RunArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Prompt text (special tokens in it are parsed as special).
    #[arg(long, short = 'p')]
    prompt: String,
    /// Tokens to generate.
    #[arg(short = 'n', long = "n-predict", default_value_t = 64)]
    n_predict: usize,
    /// Sampling temperature (0 = greedy).
    #[arg(long, default_value_t = 0.0)]
    temp: f32,
    /// Top-k (0 = off).
    #[arg(long, default_value_t = 0)]
    top_k: usize,
    /// Top-p (1 = off).
    #[arg(long, default_value_t = 1.0)]
    top_p: f32,
    /// Min-p (0 = off).
    #[arg(long, default_value_t = 0.0)]
    min_p: f32,
    /// Repetition penalty (1 = off).
    #[arg(long, default_value_t = 1.0)]
    repeat_penalty: f32,
    /// Sampling seed.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Keep generating past the end-of-sequence token.
    #[arg(long)]
    ignore_eos: bool,
}

/// Generates and streams to stdout; statistics go to stderr.
pub fn run(a: RunArgs) -> anyhow::Result<()> {
    let params = SamplingParams {
        temperature: a.temp,
        top_k: a.top_k,
        top_p: a.top_p,
        min_p: a.min_p,
        repeat_penalty: a.repeat_penalty,
        seed: a.seed,
        ..Default::default()
    };
    params.validate()?;
    let model = a.model.load()?;
    let tok = Tokenizer::from_gguf(model.file())?;
    let mut prompt = Vec::new();
    if tok.add_bos() {
        prompt.extend(tok.bos());
    }
    prompt.extend(tok.encode(&a.prompt, true));
    if prompt.is_empty() {
        bail!("the prompt is empty");
    }
    let mut cache = KvCache::new(&model.cfg, a.model.ctx_size);
    let mut experts = LocalExperts::default();
    let mut sampler = Sampler::new(params);
    let mut history = prompt.clone();
    let mut out = std::io::stdout().lock();
    write!(out, "{}", a.prompt)?;
    out.flush()?;

    let t0 = Instant::now();
    let mut logits = model
        .forward(&mut [SeqInput { cache: &mut cache, tokens: &prompt, all_logits: false }], &mut experts, &mut NoObserver)?
        .remove(0);
    let prompt_s = t0.elapsed().as_secs_f64();

    let mut stream = StreamDecoder::new(&tok);
    let t1 = Instant::now();
    let mut generated = 0;
    for _ in 0..a.n_predict {
        let next = sampler.sample(&logits, &history);
        if !a.ignore_eos && Some(next) == tok.eos() {
            break;
        }
        generated += 1;
        history.push(next);
        write!(out, "{}", stream.push(next))?;
        out.flush()?;
        if generated == a.n_predict || cache.len() >= cache.capacity() {
            break;
        }
        logits = model
            .forward(&mut [SeqInput { cache: &mut cache, tokens: &[next], all_logits: false }], &mut experts, &mut NoObserver)?
            .remove(0);
    }
    writeln!(out, "{}", stream.flush())?;
    let gen_s = t1.elapsed().as_secs_f64();
    eprintln!(
        "prompt: {} tokens in {:.3} s ({:.2} tokens/s) | generation: {} tokens in {:.3} s ({:.2} tokens/s)",
        prompt.len(),
        prompt_s,
        prompt.len() as f64 / prompt_s.max(1e-9),
        generated,
        gen_s,
        generated as f64 / gen_s.max(1e-9)
    );
    Ok(())
}
