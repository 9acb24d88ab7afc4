//! `moe-node bench`: llama-bench-style throughput, so numbers sit beside llama.cpp's
//! (`pp512`, `tg128`): prompt processing of `-p` tokens in one sequence, then generation of
//! `-n` tokens one at a time, each repeated `-r` times from an empty cache, as a markdown
//! table. Token ids are a fixed pseudo-random sequence over the non-special vocabulary.

use std::time::Instant;

use anyhow::bail;
use moe_runtime::forward::{KvCache, NoObserver, SeqInput};
use moe_runtime::sampling::argmax;

use super::common::ModelArgs;
use super::generate::PREFILL_CHUNK_TOKENS;
use super::run::expert_backend;
use crate::cluster::args::RouterArgs;

/// Arguments of `bench`.
#[derive(Debug, clap::Args)]
pub struct BenchArgs {
    #[command(flatten)]
    model: ModelArgs,
    #[command(flatten)]
    cluster: RouterArgs,
    /// Prompt tokens (pp).
    #[arg(short = 'p', long = "n-prompt", default_value_t = 512)]
    n_prompt: usize,
    /// Generated tokens (tg).
    #[arg(short = 'n', long = "n-gen", default_value_t = 128)]
    n_gen: usize,
    /// Repetitions.
    #[arg(short = 'r', long, default_value_t = 3)]
    repetitions: usize,
}

/// Runs the benchmark and prints the table.
pub fn run(a: BenchArgs) -> anyhow::Result<()> {
    if a.repetitions == 0 || (a.n_prompt == 0 && a.n_gen == 0) {
        bail!("nothing to measure: give -r >= 1 and -p or -n > 0");
    }
    let model = a
        .model
        .load_for(Some(&a.cluster), moe_kernels::NumericMode::Fast)?;
    let mut experts = expert_backend(&model, &a.cluster)?;
    let vocab = model.cfg.vocab as u64;
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    let prompt: Vec<u32> = (0..a.n_prompt)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            // Stay clear of the specials kept at the end of the vocabularies synth writes.
            (state % (vocab * 3 / 4)) as u32
        })
        .collect();
    let ctx = a.n_prompt + a.n_gen + 1;
    let (mut pp, mut tg) = (Vec::new(), Vec::new());
    for _ in 0..a.repetitions {
        if a.n_prompt > 0 {
            let mut cache = KvCache::new(&model.cfg, ctx);
            let t = Instant::now();
            for chunk in prompt.chunks(PREFILL_CHUNK_TOKENS) {
                model.forward(
                    &mut [SeqInput {
                        cache: &mut cache,
                        tokens: chunk,
                        all_logits: false,
                    }],
                    experts.as_mut(),
                    &mut NoObserver,
                )?;
            }
            pp.push(a.n_prompt as f64 / t.elapsed().as_secs_f64());
        }
        if a.n_gen > 0 {
            let mut cache = KvCache::new(&model.cfg, ctx);
            let mut next = prompt.first().copied().unwrap_or(0);
            let t = Instant::now();
            for _ in 0..a.n_gen {
                let logits = model.forward(
                    &mut [SeqInput {
                        cache: &mut cache,
                        tokens: &[next],
                        all_logits: false,
                    }],
                    experts.as_mut(),
                    &mut NoObserver,
                )?;
                next = argmax(&logits[0]);
            }
            tg.push(a.n_gen as f64 / t.elapsed().as_secs_f64());
        }
    }
    let name = a
        .model
        .model
        .as_ref()
        .map(|p| p.display().to_string())
        .unwrap_or_else(|| "default tiny".into());
    println!("| model | backend | test | t/s |");
    println!("|---|---|---|---:|");
    let backend = format!(
        "{} ({})",
        if a.cluster.placement.is_some() {
            "moe-node cluster"
        } else {
            "moe-node"
        },
        model.mode().name()
    );
    for (test, v) in [
        (format!("pp{}", a.n_prompt), &pp),
        (format!("tg{}", a.n_gen), &tg),
    ] {
        if v.is_empty() {
            continue;
        }
        let mean = v.iter().sum::<f64>() / v.len() as f64;
        let sd = (v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / v.len() as f64).sqrt();
        println!("| {name} | {backend} | {test} | {mean:.2} ± {sd:.2} |");
    }
    Ok(())
}
