//! `moe-node bench`: llama-bench-style throughput, so numbers sit beside llama.cpp's
//! (`pp512`, `tg128`, `tg32 @ d4096`): prompt processing of `-p` tokens in one sequence, then
//! generation of `-n` tokens one at a time, each repeated `-r` times, as a markdown table.
//! With `-d 0,4096` each test also runs after that many context tokens are already in the
//! cache (prefilled once per depth, untimed, and copied for every repetition), as
//! llama-bench's `-d`. Before each test, as llama-bench, one untimed warm-up run (32 prompt
//! tokens, or one generated token; `--no-warmup` skips it): the first run of a process pays
//! for faults and first allocations that the repetitions after it do not. Token ids are a fixed pseudo-random sequence over the non-special
//! vocabulary. Every measured run goes through the generation engine (greedy, past end
//! tokens), so the numbers include what `run` and `serve` pay per step. The backend column
//! names the numeric mode and the KV cache type; lines after the table give the cache's bytes
//! per token and, for a single process, the weight bytes each decoded token reads, the GB/s
//! each `tg` test achieved and their ratio to the read bandwidth it measures (`bandwidth.rs`).

use std::sync::Arc;
use std::time::Instant;

use anyhow::bail;
use moe_engine::engine::PREFILL_TOKENS_PER_STEP_DEFAULT;
use moe_engine::{Engine, EngineConfig, Request};
use moe_model::forward::{ExpertBackend, KvCache, NoObserver, SeqInput, TokenKind};
use moe_model::model::Model;
use moe_model::tokenizer::Tokenizer;

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
    /// Verify steps (`vf`k): one forward over k tokens taken as generated tokens (a decode
    /// step carrying k − 1 drafts, all logits), comma-separated; reported as k over the
    /// call's time, so the cost of a verify step is k / (t/s).
    #[arg(
        short = 'v',
        long = "n-verify",
        value_delimiter = ',',
        default_value = "0"
    )]
    n_verify: Vec<usize>,
    /// Repetitions.
    #[arg(short = 'r', long, default_value_t = 3)]
    repetitions: usize,
    /// No untimed warm-up run before each test (llama-bench's `--no-warmup`).
    #[arg(long)]
    no_warmup: bool,
    /// Context depths: tokens already in the cache before each test (comma-separated).
    #[arg(
        short = 'd',
        long = "n-depth",
        value_delimiter = ',',
        default_value = "0"
    )]
    depths: Vec<usize>,
}

/// Prompt tokens of the untimed warm-up run before a `pp` test (llama-bench warms up with at
/// most 32 prompt tokens, and with one generated token before a `tg` test, as here).
const WARMUP_PROMPT_TOKENS: usize = 32;

/// One result row.
struct Row {
    test: String,
    samples: Vec<f64>,
}

/// Runs `tokens` (whose first `at_depth.len()` are in `at_depth`) through the engine, greedy,
/// past end tokens, generating `max_tokens`; returns how many it generated.
fn run_engine(
    model: &Model,
    tok: &Arc<Tokenizer>,
    experts: &mut dyn ExpertBackend,
    at_depth: &KvCache,
    tokens: Vec<u32>,
    max_tokens: usize,
) -> anyhow::Result<usize> {
    let ctx = at_depth.capacity();
    let mut engine = Engine::new(model, tok.clone(), EngineConfig::new(ctx));
    let request = Request {
        ignore_eos: true,
        cache_prompt: false,
        ..Request::new(tokens, max_tokens)
    };
    engine
        .admit_with_cache(request, at_depth.clone(), ())
        .map_err(|(_, e)| e)?;
    loop {
        if let Some(end) = engine.step(model, experts).pop() {
            return Ok(end.result?.usage.completion_tokens);
        }
        if engine.is_empty() {
            bail!("the benchmark sequence was dropped");
        }
    }
}

/// Runs the benchmark and prints the table.
pub fn run(a: BenchArgs) -> anyhow::Result<()> {
    let n_prompts: Vec<usize> = a.n_prompt.iter().copied().filter(|&p| p > 0).collect();
    let n_gens: Vec<usize> = a.n_gen.iter().copied().filter(|&n| n > 0).collect();
    let n_verify: Vec<usize> = a.n_verify.iter().copied().filter(|&k| k > 0).collect();
    if a.repetitions == 0 || (n_prompts.is_empty() && n_gens.is_empty() && n_verify.is_empty()) {
        bail!("nothing to measure: give -r >= 1 and -p, -n or -v > 0");
    }
    let model = a
        .model
        .load_for(Some(&a.cluster), moe_kernels::NumericMode::Fast)?;
    let mut experts = expert_backend(&model, &a.cluster, &a.model)?;
    let tok = Arc::new(Tokenizer::from_gguf(model.file())?);
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
    let new_tokens = max_of(&n_prompts).max(max_of(&n_verify));
    let prompt: Vec<u32> = (0..new_tokens).map(|_| next_id()).collect();
    let max_depth = max_of(&a.depths);
    let ctx = max_depth + new_tokens + max_of(&n_gens) + 1;
    // Context tokens for the depths: the same generator, continued.
    let context: Vec<u32> = (0..max_depth).map(|_| next_id()).collect();
    let mut rows = Vec::new();
    // Per tg test, the Vulkan submissions per generated token (with `--backend vulkan`).
    let mut round_trips = Vec::new();
    for &depth in &a.depths {
        let mut at_depth = KvCache::for_model(&model, ctx);
        // The context at depth, computed once and cloned into every measured run.
        for chunk in context[..depth].chunks(PREFILL_TOKENS_PER_STEP_DEFAULT) {
            model.forward(
                &mut [SeqInput {
                    cache: &mut at_depth,
                    tokens: chunk,
                    all_logits: false,
                    kind: TokenKind::Prompt { len: depth },
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
            if !a.no_warmup {
                let mut tokens = context[..depth].to_vec();
                tokens.extend_from_slice(&prompt[..p.min(WARMUP_PROMPT_TOKENS)]);
                run_engine(&model, &tok, experts.as_mut(), &at_depth, tokens, 0)?;
            }
            let mut samples = Vec::new();
            for _ in 0..a.repetitions {
                let mut tokens = context[..depth].to_vec();
                tokens.extend_from_slice(&prompt[..p]);
                let t = Instant::now();
                run_engine(&model, &tok, experts.as_mut(), &at_depth, tokens, 0)?;
                samples.push(p as f64 / t.elapsed().as_secs_f64());
            }
            rows.push(Row {
                test: format!("pp{p}{suffix}"),
                samples,
            });
        }
        for &k in &n_verify {
            let mut samples = Vec::new();
            for _ in 0..a.repetitions {
                let mut cache = at_depth.clone();
                let t = Instant::now();
                model.forward(
                    &mut [SeqInput {
                        cache: &mut cache,
                        tokens: &prompt[..k],
                        all_logits: true,
                        kind: TokenKind::Generated,
                    }],
                    experts.as_mut(),
                    &mut NoObserver,
                )?;
                samples.push(k as f64 / t.elapsed().as_secs_f64());
            }
            rows.push(Row {
                test: format!("vf{k}{suffix}"),
                samples,
            });
        }
        for &g in &n_gens {
            if !a.no_warmup {
                let mut tokens = context[..depth].to_vec();
                tokens.push(prompt.first().copied().unwrap_or(0));
                run_engine(&model, &tok, experts.as_mut(), &at_depth, tokens, 1)?;
            }
            let mut samples = Vec::new();
            let submitted = a.model.compute.device_submissions();
            for _ in 0..a.repetitions {
                // The first prompt token continues the context; each generated token is one
                // forward call, as in llama-bench's tg.
                let mut tokens = context[..depth].to_vec();
                tokens.push(prompt.first().copied().unwrap_or(0));
                let t = Instant::now();
                let generated = run_engine(&model, &tok, experts.as_mut(), &at_depth, tokens, g)?;
                if generated != g {
                    bail!("tg{g}: the engine generated {generated} tokens");
                }
                samples.push(g as f64 / t.elapsed().as_secs_f64());
            }
            if let (Some(before), Some(after)) = (submitted, a.model.compute.device_submissions()) {
                let per_token = (after - before) as f64 / (g * a.repetitions) as f64;
                round_trips.push((format!("tg{g}{suffix}"), per_token));
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
        "{} ({}, kv {})",
        if a.cluster.placement.is_some() {
            "moe-node cluster"
        } else {
            "moe-node"
        },
        model.mode().name(),
        model.kv_type()
    );
    let mut decode = Vec::new();
    for Row { test, samples: v } in rows {
        if v.is_empty() {
            continue;
        }
        let mean = v.iter().sum::<f64>() / v.len() as f64;
        let sd = (v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / v.len() as f64).sqrt();
        println!("| {name} | {backend} | {test} | {mean:.2} ± {sd:.2} |");
        if test.starts_with("tg") {
            decode.push((test, mean));
        }
    }
    if a.cluster.placement.is_none() && !decode.is_empty() {
        print_weight_traffic(&model, &decode);
    }
    for (test, per_token) in &round_trips {
        println!(
            "\n{test}: {per_token:.1} Vulkan submissions (host round trips) per decoded token"
        );
    }
    let per_layer = KvCache::for_model(&model, 0).bytes_per_position_per_layer();
    println!(
        "\nKV cache ({}): {per_layer} bytes per token per layer, {} bytes per token over {} \
         layers",
        model.kv_type(),
        per_layer * model.cfg.n_layers,
        model.cfg.n_layers
    );
    Ok(())
}

/// Decode's weight traffic beside the machine's measured read bandwidth: how close to
/// memory-bound each `tg` test ran (single process only; a router reads no remote expert).
fn print_weight_traffic(model: &Model, decode: &[(String, f64)]) {
    let bytes = model.decode_weight_bytes() as f64;
    let threads = moe_kernels::num_threads();
    let bw = super::bandwidth::read_bandwidth_gbs(threads);
    println!();
    println!(
        "weights read per decoded token: {:.1} MB; memory read bandwidth measured with {threads} thread(s): {bw:.1} GB/s",
        bytes / 1e6
    );
    println!();
    println!("| test | t/s | weight GB/s | of measured bandwidth |");
    println!("|---|---:|---:|---:|");
    for (test, tps) in decode {
        let gbs = bytes * tps / 1e9;
        println!("| {test} | {tps:.2} | {gbs:.2} | {:.2} |", gbs / bw);
    }
}
