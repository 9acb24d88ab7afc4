//! `moe-node bench`: llama-bench-style throughput, so numbers sit beside llama.cpp's
//! (`pp512`, `tg128`, `tg32 @ d4096`): prompt processing of `-p` tokens in one sequence, then
//! generation of `-n` tokens one at a time, each repeated `-r` times, as a markdown table.
//! With `-d 0,4096` each test also runs after that many context tokens are already in the
//! cache (prefilled once per depth, untimed, and copied for every repetition), as
//! llama-bench's `-d`. Token ids are a fixed pseudo-random sequence over the non-special
//! vocabulary.

use std::time::Instant;

use anyhow::bail;
use moe_model::forward::{KvCache, NoObserver, SeqInput};
use moe_model::sampling::argmax;

use super::generate::PREFILL_CHUNK_TOKENS;
use super::run::expert_backend;
use crate::options::ModelArgs;
use crate::options::RouterArgs;

/// Arguments of `bench`.
#[derive(Debug, clap::Args)]
pub struct BenchArgs {
    #[command(flatten)]
    model: ModelArgs,
    #[command(flatten)]
    cluster: RouterArgs,
    /// Prompt tokens (pp), comma-separated for several tests (0 = none).
    #[arg(
        short = 'p',
        long = "n-prompt",
        value_delimiter = ',',
        default_value = "512"
    )]
    n_prompt: Vec<usize>,
    /// Generated tokens (tg), comma-separated for several tests (0 = none).
    #[arg(
        short = 'n',
        long = "n-gen",
        value_delimiter = ',',
        default_value = "128"
    )]
    n_gen: Vec<usize>,
    /// Repetitions.
    #[arg(short = 'r', long, default_value_t = 3)]
    repetitions: usize,
    /// Context depths: tokens already in the cache before each test (comma-separated).
    #[arg(
        short = 'd',
        long = "n-depth",
        value_delimiter = ',',
        default_value = "0"
    )]
    depths: Vec<usize>,
}

/// One result row.
struct Row {
    test: String,
    samples: Vec<f64>,
}

/// Runs the benchmark and prints the table.
pub fn run(a: BenchArgs) -> anyhow::Result<()> {
    let n_prompts: Vec<usize> = a.n_prompt.iter().copied().filter(|&p| p > 0).collect();
    let n_gens: Vec<usize> = a.n_gen.iter().copied().filter(|&n| n > 0).collect();
    if a.repetitions == 0 || (n_prompts.is_empty() && n_gens.is_empty()) {
        bail!("nothing to measure: give -r >= 1 and -p or -n > 0");
    }
    let model = a
        .model
        .load_for(Some(&a.cluster), moe_kernels::NumericMode::Fast)?;
    let mut experts = expert_backend(&model, &a.cluster)?;
    let vocab = model.cfg.vocab as u64;
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    let mut next_id = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        // Stay clear of the specials kept at the end of the vocabularies synth writes.
        (state % (vocab * 3 / 4)) as u32
    };
    let max_of = |v: &[usize]| v.iter().copied().max().unwrap_or(0);
    let prompt: Vec<u32> = (0..max_of(&n_prompts)).map(|_| next_id()).collect();
    let max_depth = max_of(&a.depths);
    let ctx = max_depth + max_of(&n_prompts) + max_of(&n_gens) + 1;
    // Context tokens for the depths: the same generator, continued.
    let context: Vec<u32> = (0..max_depth).map(|_| next_id()).collect();
    let mut rows = Vec::new();
    for &depth in &a.depths {
        let mut at_depth = KvCache::new(&model.cfg, ctx);
        for chunk in context[..depth].chunks(PREFILL_CHUNK_TOKENS) {
            model.forward(
                &mut [SeqInput {
                    cache: &mut at_depth,
                    tokens: chunk,
                    all_logits: false,
                }],
                experts.as_mut(),
                &mut NoObserver,
            )?;
        }
        let suffix = if depth > 0 {
            format!(" @ d{depth}")
        } else {
            String::new()
        };
        for &p in &n_prompts {
            let mut samples = Vec::new();
            for _ in 0..a.repetitions {
                let mut cache = at_depth.clone();
                let t = Instant::now();
                for chunk in prompt[..p].chunks(PREFILL_CHUNK_TOKENS) {
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
                samples.push(p as f64 / t.elapsed().as_secs_f64());
            }
            rows.push(Row {
                test: format!("pp{p}{suffix}"),
                samples,
            });
        }
        for &g in &n_gens {
            let mut samples = Vec::new();
            for _ in 0..a.repetitions {
                let mut cache = at_depth.clone();
                let mut next = prompt.first().copied().unwrap_or(0);
                let t = Instant::now();
                for _ in 0..g {
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
                samples.push(g as f64 / t.elapsed().as_secs_f64());
            }
            rows.push(Row {
                test: format!("tg{g}{suffix}"),
                samples,
            });
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
    for Row { test, samples: v } in rows {
        if v.is_empty() {
            continue;
        }
        let mean = v.iter().sum::<f64>() / v.len() as f64;
        let sd = (v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / v.len() as f64).sqrt();
        println!("| {name} | {backend} | {test} | {mean:.2} ± {sd:.2} |");
    }
    Ok(())
}
