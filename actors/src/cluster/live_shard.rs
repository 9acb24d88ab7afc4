//! `LiveShard`: the experts an expert node owns right now, with the model mapped for them,
//! swappable while the node serves (live re-placement).
//!
//! A re-placement has two phases (see `wire::ReassignPhase`): `Prepare` maps the new experts
//! in addition to the current ones, so steps planned with either placement succeed; `Commit`
//! keeps only the new ones. Each phase builds a new [`Model`] mapping exactly the wanted
//! experts and swaps it in; a step already computing keeps its `Arc` of the old one, whose
//! maps are released when the last such step ends.

use std::path::PathBuf;
use std::sync::{Arc, RwLock};

use moe_cluster::placement::ExpertSet;
use moe_cluster::wire::{LayerShards, ReassignPhase, ShardSummary};
use moe_model::model::{Model, WeightSet};

use super::expert_shard::ShardSpec;

/// The model file, and what is owned and mapped now.
pub struct LiveShard {
    path: PathBuf,
    current: RwLock<(Arc<Model>, Arc<ShardSpec>)>,
}

impl LiveShard {
    /// Wraps a loaded model and its shard.
    pub fn new(path: PathBuf, model: Arc<Model>, shard: Arc<ShardSpec>) -> Self {
        Self {
            path,
            current: RwLock::new((model, shard)),
        }
    }

    /// The model and shard to compute the next request with.
    pub fn current(&self) -> (Arc<Model>, Arc<ShardSpec>) {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The owned experts as a hello/reassign summary (one override per MoE layer).
    pub fn summary(&self) -> ShardSummary {
        summary_of(&self.current().1)
    }

    /// Applies one phase of a re-placement; on error nothing changes.
    pub fn reassign(
        &self,
        phase: ReassignPhase,
        new: Vec<Option<ExpertSet>>,
    ) -> Result<String, String> {
        let (old_model, old) = self.current();
        let old_mode = old_model.mode();
        drop(old_model);
        if new.len() != old.owned.len() {
            return Err(format!(
                "reassign lists {} layers, the model has {}",
                new.len(),
                old.owned.len()
            ));
        }
        let owned: Vec<Option<ExpertSet>> = match phase {
            ReassignPhase::Commit => new,
            ReassignPhase::Prepare => old
                .owned
                .iter()
                .zip(new)
                .map(|(o, n)| match (o, n) {
                    (Some(o), Some(n)) => {
                        let mut u = o.clone();
                        u.union_with(&n);
                        Some(u)
                    }
                    (o, n) => n.or_else(|| o.clone()),
                })
                .collect(),
        };
        let model = Model::open_with(
            &self.path,
            &WeightSet::Experts {
                owned: owned.clone(),
            },
        )
        .map_err(|e| e.to_string())?
        // The node keeps the arithmetic it was started with.
        .with_mode(old_mode);
        let mapped = model.file().mapped_bytes();
        let shard = Arc::new(ShardSpec { owned });
        let note = format!(
            "{phase:?}: now owns {}; {mapped} bytes mapped",
            summary_text(&shard)
        );
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = (Arc::new(model), shard);
        Ok(note)
    }
}

fn summary_of(shard: &ShardSpec) -> ShardSummary {
    ShardSummary {
        all_layers: String::new(),
        overrides: shard
            .owned
            .iter()
            .enumerate()
            .filter_map(|(l, s)| {
                s.as_ref().map(|s| LayerShards {
                    layer: l as u16,
                    experts: s.to_string(),
                })
            })
            .collect(),
    }
}

fn summary_text(shard: &ShardSpec) -> String {
    summary_of(shard)
        .overrides
        .iter()
        .map(|o| format!("layer {}: {}", o.layer, o.experts))
        .collect::<Vec<_>>()
        .join("; ")
}
