//! # moe-node
//!
//! One binary for every role of an expert-parallel MoE cluster, plus the single-process
//! commands that run and verify models.
//!
//! ```text
//! main.rs          argument parsing (clap) and dispatch
//! options.rs       options shared by commands and roles (ModelArgs, RouterArgs, ExpertArgs)
//! cli/             subcommands: run, bench, logits, tokenize, synth, placement, devices,
//!                  generation;
//!                  stdin_router: `--role router` without `--http` (JSON lines on stdin)
//! serve/           `serve` and `--role router --http`: the OpenAI-compatible HTTP API
//! expert/          `--role expert`: listener, connections, their worker threads
//! router/          the router's expert backend: remote experts, peer links, re-placement,
//!                  `--record-routing`
//! telemetry.rs     Prometheus metrics: names, `--metrics-addr` endpoint, typed helpers
//! heap.rs          the allocator's limits for the forward pass's per-layer buffers
//! ```
//!
//! `moe-node --role expert --model F --shards 0-95 --secret-file S` serves experts;
//! `moe-node --role router --model F --placement P --secret-file S` routes to them; every
//! model-running subcommand takes `--placement P --secret-file S` to do the same;
//! `moe-node serve --model F --http ADDR` (or `--role router ... --http ADDR`) serves the
//! OpenAI API.

mod cli;
mod expert;
mod heap;
mod options;
mod router;
mod serve;
mod telemetry;

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};

/// Expert-parallel runtime for trillion-parameter MoE models (Kimi K2.5, Kimi K2, DeepSeek-V3).
#[derive(Debug, Parser)]
#[command(
    name = "moe-node",
    version,
    about,
    args_conflicts_with_subcommands = true
)]
struct Cli {
    /// Run as a cluster node instead of a subcommand.
    #[arg(long, value_enum)]
    role: Option<Role>,
    /// GGUF model (for --role).
    #[arg(long, short = 'm')]
    model: Option<PathBuf>,
    /// Compute threads (0 = all cores).
    #[arg(long, short = 't', default_value_t = 0)]
    threads: usize,
    /// Largest context per sequence (router).
    #[arg(long, default_value_t = 4096)]
    ctx_size: usize,
    /// Exact arithmetic for --role (f32 activations; default: fast, int8 activations as
    /// llama.cpp).
    #[arg(long)]
    exact: bool,
    /// Where this node computes routed experts (`--backend`, `--device`).
    #[command(flatten)]
    compute: options::ComputeArgs,
    /// KV cache element type for --role router: `f32`, `bf16`, `f16` or `q8_0` (default f16,
    /// f32 with --exact, which takes only f32).
    #[arg(long, value_parser = options::parse_kv_type)]
    kv_type: Option<moe_kernels::KvType>,
    #[command(flatten)]
    router: options::RouterArgs,
    #[command(flatten)]
    expert: options::ExpertArgs,
    /// HTTP API options (for --role router; without --http it serves JSON lines on stdin).
    #[command(flatten)]
    serve: serve::ServeOptions,
    #[command(flatten)]
    metrics: telemetry::MetricsArgs,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Role {
    /// Owns experts (`--shards` or `--placement` + `--node`) and computes them for routers.
    Expert,
    /// Owns attention, dense layers, gates, shared experts, sampling; experts are remote.
    Router,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// llama-bench-style throughput table (pp512 / tg128) for comparisons with llama.cpp.
    Bench(cli::bench::BenchArgs),
    /// Generate text from a prompt, streaming it, and report tokens/s.
    Run(cli::run::RunArgs),
    /// Teacher-forced float32 logits [T, vocab] as .npy (the verification interface).
    Logits(cli::logits::LogitsArgs),
    /// Print the token ids of a text as one JSON array.
    Tokenize(cli::tokenize::TokenizeArgs),
    /// Write a random-weight model with Kimi K2.5's structure as GGUF.
    Synth(cli::synth::SynthArgs),
    /// Plan placements from routing traces (`plan`) and replay traces against them (`simulate`).
    Placement(cli::placement::PlacementArgs),
    /// Serve the OpenAI-compatible HTTP API (completions, chat, models, health).
    Serve(serve::ServeArgs),
    /// List the Vulkan devices (`--backend vulkan --device N`) and what they support.
    Devices(cli::devices::DevicesArgs),
}

fn dispatch(cli: Cli) -> anyhow::Result<()> {
    if let Some(role) = cli.role {
        let model = cli.model.context("--role needs --model")?;
        return match role {
            Role::Expert => {
                anyhow::ensure!(
                    cli.kv_type.is_none(),
                    "--kv-type is for --role router: an expert node holds no KV cache"
                );
                cli.metrics.start(
                    "expert",
                    cli.expert
                        .node
                        .as_deref()
                        .unwrap_or(options::DEFAULT_NODE_NAME),
                )?;
                expert::expert_node::run(
                    model,
                    cli.threads,
                    if cli.exact {
                        moe_kernels::NumericMode::Exact
                    } else {
                        moe_kernels::NumericMode::Fast
                    },
                    cli.router.placement,
                    cli.router.secret_file,
                    cli.router.wire_encrypt,
                    cli.expert,
                    cli.compute,
                )
            }
            Role::Router => {
                cli.metrics.start("router", &cli.router.node_name)?;
                let args = options::ModelArgs {
                    model: Some(model),
                    threads: cli.threads,
                    ctx_size: cli.ctx_size,
                    exact: cli.exact,
                    fast: false,
                    compute: cli.compute,
                    kv_type: cli.kv_type,
                };
                if cli.serve.http.is_some() {
                    anyhow::ensure!(
                        cli.router.placement.is_some(),
                        "--role router needs --placement and --secret-file"
                    );
                    serve::run(&args, &cli.router, &cli.serve)
                } else {
                    cli::stdin_router::run(&args, &cli.router)
                }
            }
        };
    }
    match cli.command.context(
        "give a subcommand (run, logits, tokenize, synth, serve, devices) or --role; see --help",
    )? {
        Command::Run(a) => cli::run::run(a),
        Command::Bench(a) => cli::bench::run(a),
        Command::Logits(a) => cli::logits::run(a),
        Command::Tokenize(a) => cli::tokenize::run(a),
        Command::Synth(a) => cli::synth::run(a),
        Command::Placement(a) => cli::placement::run(a),
        Command::Serve(a) => serve::run_command(a),
        Command::Devices(a) => cli::devices::run(a),
    }
}

fn main() -> std::process::ExitCode {
    heap::keep_transient_buffers();
    match dispatch(Cli::parse()) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
