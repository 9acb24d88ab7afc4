//! # moe-node
//!
//! One binary for every role of an expert-parallel MoE cluster, plus the single-process
//! commands that run and verify models.
//!
//! ```text
//! main.rs          argument parsing (clap) and dispatch
//! cli/run.rs       `run`: stream a completion, print prompt/generation tokens/s
//! cli/logits.rs    `logits`: teacher-forced logits / routing / hidden states (verification API)
//! cli/tokenize.rs  `tokenize`: token ids as a JSON array
//! cli/synth.rs     `synth`: write a random-weight Kimi-K2.5-shaped GGUF
//! cli/common.rs    options shared by model-running commands
//! ```

mod cli;

use clap::{Parser, Subcommand};

/// Expert-parallel runtime for trillion-parameter MoE models (Kimi K2.5, Kimi K2, DeepSeek-V3).
#[derive(Debug, Parser)]
#[command(name = "moe-node", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
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

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run(a) => cli::run::run(a),
        Command::Logits(a) => cli::logits::run(a),
        Command::Tokenize(a) => cli::tokenize::run(a),
        Command::Synth(a) => cli::synth::run(a),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
