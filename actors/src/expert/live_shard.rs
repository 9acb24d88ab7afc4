//! `LiveShard`: the experts an expert node owns right now, with the model mapped for them,
//! swappable while the node serves (live re-placement).
//!
//! A re-placement has two phases (see `wire::ReassignPhase`): `Prepare` maps the new experts
//! in addition to the current ones, so steps planned with either placement succeed; `Commit`
//! keeps only the new ones. Each phase builds a new [`Model`] mapping exactly the wanted
//! experts and swaps it in; a step already computing keeps its `Arc` of the old one, whose
//! maps are released when the last such step ends. On a device other than the CPU (Vulkan),
//! each phase also puts the new model's experts on the device ([`Rebuild`]) and swaps that
//! compute in with the model, so a step always computes with the device holding its model's
//! experts.

use std::path::PathBuf;
use std::sync::{Arc, RwLock};

use moe_cluster::wire::{ReassignPhase, ShardSummary};
use moe_model::forward::ComputeHandle;
use moe_model::model::{CpuShare, Model, WeightSet};
use moe_model::LayerExperts;

/// Makes the expert compute for a newly mapped model (a Vulkan device with its experts);
/// `None` for the CPU, which computes from whatever the model maps.
pub type Rebuild = Box<dyn Fn(&Model) -> anyhow::Result<ComputeHandle> + Send + Sync>;

/// What a step computes with: the model, its owned experts, the device holding them.
#[derive(Clone)]
pub struct Current {
    /// The model mapping the owned experts.
    pub model: Arc<Model>,
    /// The owned experts.
    pub shard: Arc<LayerExperts>,
    /// Where they are computed.
    pub compute: ComputeHandle,
}

/// The model file, and what is owned, mapped and on the device now.
pub struct LiveShard {
    path: PathBuf,
    current: RwLock<Current>,
    rebuild: Option<Rebuild>,
}

impl LiveShard {
    /// Wraps what a loaded model computes with; `rebuild` makes the compute of a re-placed
    /// model (`None`: keep `current.compute`, the CPU).
    pub fn new(path: PathBuf, current: Current, rebuild: Option<Rebuild>) -> Self {
        Self {
            path,
            current: RwLock::new(current),
            rebuild,
        }
    }

    /// The model, shard and compute to compute the next request with.
    pub fn current(&self) -> Current {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The owned experts as a hello/reassign summary (one override per MoE layer).
    pub fn summary(&self) -> ShardSummary {
        ShardSummary::of(&self.current().shard)
    }

    /// Applies one phase of a re-placement; on error nothing changes.
    pub fn reassign(&self, phase: ReassignPhase, new: LayerExperts) -> Result<String, String> {
        let Current {
            model: old_model,
            shard: old,
            compute: old_compute,
        } = self.current();
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
        // The node keeps the arithmetic it was started with (experts packed for the CPU only
        // where the CPU computes them).
        .with_mode_packing(
            old_mode,
            CpuShare {
                routed_experts: self.rebuild.is_none(),
                layers: true,
            },
        );
        let compute = match &self.rebuild {
            Some(rebuild) => rebuild(&model).map_err(|e| format!("{e:#}"))?,
            None => old_compute,
        };
        let mapped = model.file().mapped_bytes();
        let shard = Arc::new(owned);
        let note = format!(
            "{phase:?}: now owns {shard}; {mapped} bytes mapped; computed on {}",
            compute.name()
        );
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = Current {
            model: Arc::new(model),
            shard,
            compute,
        };
        Ok(note)
    }
}
