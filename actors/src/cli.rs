//! Subcommands.

pub mod bench;
pub mod generate;
pub mod logits;
pub mod placement;
pub mod run;
pub mod synth;
pub mod tokenize;
