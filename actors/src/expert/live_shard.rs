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

use moe_cluster::wire::{ReassignPhase, ShardSummary};
use moe_model::forward::ComputeHandle;
use moe_model::model::{Model, WeightSet};
use moe_model::LayerExperts;

/// The model file, and what is owned and mapped now.
pub struct LiveShard {
    path: PathBuf,
    current: RwLock<(Arc<Model>, Arc<LayerExperts>)>,
    /// Where the owned experts are computed (fixed for the node's life).
    compute: ComputeHandle,
}

impl LiveShard {
    /// Wraps a loaded model and its shard, computed on `compute`.
    pub fn new(
        path: PathBuf,
        model: Arc<Model>,
        shard: Arc<LayerExperts>,
        compute: ComputeHandle,
    ) -> Self {
        Self {
            path,
            current: RwLock::new((model, shard)),
            compute,
        }
    }

    /// The expert-compute device.
    pub fn compute(&self) -> ComputeHandle {
        self.compute.clone()
    }

    /// The model and shard to compute the next request with.
    pub fn current(&self) -> (Arc<Model>, Arc<LayerExperts>) {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The owned experts as a hello/reassign summary (one override per MoE layer).
    pub fn summary(&self) -> ShardSummary {
        ShardSummary::of(&self.current().1)
    }

    /// Applies one phase of a re-placement; on error nothing changes.
    pub fn reassign(&self, phase: ReassignPhase, new: LayerExperts) -> Result<String, String> {
        if self.compute.name() != "cpu" {
            // The device holds the experts uploaded at start; new ones would not be there.
            return Err(format!(
                "live re-placement is not supported on the {} backend yet: restart the node with the new placement",
                self.compute.name()
            ));
        }
        let (old_model, old) = self.current();
        let old_mode = old_model.mode();
        drop(old_model);
        if new.n_layers() != old.n_layers() {
            return Err(format!(
                "reassign lists {} layers, the model has {}",
                new.n_layers(),
                old.n_layers()
            ));
        }
        let owned = match phase {
            ReassignPhase::Commit => new,
            ReassignPhase::Prepare => old.union(&new),
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
        let shard = Arc::new(owned);
        let note = format!("{phase:?}: now owns {shard}; {mapped} bytes mapped");
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = (Arc::new(model), shard);
        Ok(note)
    }
}
