//! Subcommands, and the stdin front-end of `--role router` without `--http`
//! (`stdin_router`: generation requests as JSON lines on stdin).

pub mod bandwidth;
pub mod bench;
pub mod devices;
pub mod generate;
pub mod logits;
pub mod placement;
pub mod run;
pub mod stdin_router;
pub mod synth;
pub mod tokenize;
