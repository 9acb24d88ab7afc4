//! Subcommands.

pub mod bench;
pub mod common;
pub mod generate;
pub mod logits;
pub mod placement;
pub mod record;
pub mod run;
pub mod synth;
pub mod tokenize;
