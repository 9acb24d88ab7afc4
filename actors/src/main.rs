//! # moe-node
//!
//! One binary for every role of an expert-parallel MoE cluster, plus the single-process
//! commands that run and verify models.
//!
//! ```text
//! main.rs          argument parsing (clap) and dispatch
//! cli/             subcommands: run, logits, tokenize, synth (+ shared options, generation)
//! cluster/         roles and actors: expert node, router, peer links, remote experts
//! ```
//!
//! `moe-node --role expert --model F --shards 0-95 --secret-file S` serves experts;
//! `moe-node --role router --model F --placement P --secret-file S` routes to them; every
//! model-running subcommand takes `--placement P --secret-file S` to do the same.

mod cli;
mod cluster;

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};

/// Expert-parallel runtime for trillion-parameter MoE models (Kimi K2.5, Kimi K2, DeepSeek-V3).
#[derive(Debug, Parser)]
#[command(name = "moe-node", version, about, args_conflicts_with_subcommands = true)]
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
    #[command(flatten)]
    router: cluster::args::RouterArgs,
    #[command(flatten)]
    expert: cluster::expert_node::ExpertArgs,
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
    /// Generate text from a prompt, streaming it, and report tokens/s.
    Run(cli::run::RunArgs),
    /// Teacher-forced float32 logits [T, vocab] as .npy (the verification interface).
    Logits(cli::logits::LogitsArgs),
    /// Print the token ids of a text as one JSON array.
    Tokenize(cli::tokenize::TokenizeArgs),
    /// Write a random-weight model with Kimi K2.5's structure as GGUF.
    Synth(cli::synth::SynthArgs),
}

fn dispatch(cli: Cli) -> anyhow::Result<()> {
    if let Some(role) = cli.role {
        let model = cli.model.context("--role needs --model")?;
        return match role {
            Role::Expert => cluster::expert_node::run(model, cli.threads, cli.router.placement, cli.router.secret_file, cli.expert),
            Role::Router => {
                let args = cli::common::ModelArgs { model: Some(model), threads: cli.threads, ctx_size: cli.ctx_size };
                cluster::router::run(&args, &cli.router)
            }
        };
    }
    match cli.command.context("give a subcommand (run, logits, tokenize, synth) or --role; see --help")? {
        Command::Run(a) => cli::run::run(a),
        Command::Logits(a) => cli::logits::run(a),
        Command::Tokenize(a) => cli::tokenize::run(a),
        Command::Synth(a) => cli::synth::run(a),
    }
}

fn main() -> std::process::ExitCode {
    match dispatch(Cli::parse()) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
