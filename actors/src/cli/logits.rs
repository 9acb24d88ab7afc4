//! `moe-node logits`: teacher-forced logits, routing and hidden states for a token list. This
//! is the project's verification interface (same formats as the reference fixtures); keep it
//! stable.

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::{bail, Context};
use moe_devdata::npy;
use moe_model::forward::{KvCache, Observer, Routing, SeqInput, TokenKind};

use super::run::expert_backend;
use crate::options::ModelArgs;
use crate::options::RouterArgs;

/// Arguments of `logits`.
#[derive(Debug, clap::Args)]
pub struct LogitsArgs {
    #[command(flatten)]
    model: ModelArgs,
    #[command(flatten)]
    cluster: RouterArgs,
    /// Comma-separated token ids, e.g. `1,2,3`.
    #[arg(long, value_delimiter = ',', required = true)]
    tokens: Vec<u32>,
    /// Output .npy, float32 [T, vocab].
    #[arg(long)]
    out: PathBuf,
    /// Also write the routing of every MoE layer as JSON (fixtures' manifest format).
    #[arg(long)]
    routing: Option<PathBuf>,
    /// Also write hidden states as .npy, float32 [n_layers + 1, T, hidden].
    #[arg(long)]
    hidden: Option<PathBuf>,
}

#[derive(Default)]
struct Capture {
    routing: BTreeMap<usize, Routing>,
    hidden: Vec<f32>,
    want_hidden: bool,
}

impl Observer for Capture {
    fn hidden(&mut self, _index: usize, rows: &[f32]) {
        if self.want_hidden {
            self.hidden.extend_from_slice(rows);
        }
    }
    fn routing(&mut self, layer: usize, routing: &Routing) {
        self.routing.insert(layer, routing.clone());
    }
}

/// Runs the teacher-forced pass and writes the requested files.
pub fn run(a: LogitsArgs) -> anyhow::Result<()> {
    let model = a
        .model
        .load_for(Some(&a.cluster), moe_kernels::NumericMode::Exact)?;
    let t = a.tokens.len();
    if t == 0 {
        bail!("--tokens is empty");
    }
    let mut experts = expert_backend(&model, &a.cluster, &a.model)?;
    let mut cache = KvCache::for_model(&model, t.max(a.model.ctx_size));
    let mut cap = Capture {
        want_hidden: a.hidden.is_some(),
        ..Default::default()
    };
    let logits = model
        .forward(
            &mut [SeqInput {
                cache: &mut cache,
                tokens: &a.tokens,
                all_logits: true,
                kind: TokenKind::Prompt { len: t },
            }],
            experts.as_mut(),
            &mut cap,
        )?
        .remove(0);
    npy::write_f32(&a.out, &[t, model.cfg.vocab], &logits)?;
    if let Some(path) = &a.routing {
        let json: serde_json::Map<String, serde_json::Value> = cap
            .routing
            .iter()
            .map(|(layer, r)| {
                let experts: Vec<&[u32]> = (0..t).map(|i| r.token(i).0).collect();
                let weights: Vec<&[f32]> = (0..t).map(|i| r.token(i).1).collect();
                (
                    layer.to_string(),
                    serde_json::json!({ "experts": experts, "weights": weights }),
                )
            })
            .collect();
        std::fs::write(path, serde_json::to_string(&json)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    if let Some(path) = &a.hidden {
        npy::write_f32(
            path,
            &[model.cfg.n_layers + 1, t, model.cfg.n_embd],
            &cap.hidden,
        )?;
    }
    Ok(())
}
