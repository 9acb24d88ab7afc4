//! [`ExpertCompute`]: the device that computes routed experts, the seam a GPU backend plugs
//! into. Every path that computes experts goes through one: the single process
//! ([`super::LocalExperts`]), a router's local share and an expert node each hold a
//! [`ComputeHandle`].
//!
//! [`CpuCompute`] is the first implementation: the experts' weights stay in the mapped file
//! and run through the CPU kernels in the model's numeric mode. A GPU implementation uploads
//! the node's experts once and runs the same contract on the device.

use std::sync::Arc;

use super::ffn_region::apply_routes_cpu;
use super::layer_compute::dense_or_shared_ffn;
use super::moe::{ExpertBackend, Route, Routing};
use crate::model::{DenseFfn, Model};
use crate::ModelError;

/// Computes `Σ weight · Expert_e(h[token])` for the routes of one MoE layer.
///
/// Contract: `h` and `out` are `[t, D]`; every route's output is added into `out[token]`;
/// the result must not depend on how many tokens share the call (batch invariance), and an
/// exact-mode implementation must give the CPU's bits.
pub trait ExpertCompute: Send + Sync + std::fmt::Debug {
    /// A short name for logs and `devices` listings, e.g. `cpu`.
    fn name(&self) -> &str;

    /// Adds every route's weighted expert output of MoE layer `layer` into `out`.
    fn apply_routes(
        &self,
        model: &Model,
        layer: usize,
        h: &[f32],
        routes: &[Route],
        out: &mut [f32],
    ) -> Result<(), ModelError>;

    /// `out = shared(h) + Σ routes` (`out` zero on entry): the shared expert on the model's
    /// layer device if it has one ([`Model::layer_compute`]), else the CPU, then
    /// [`Self::apply_routes`]; an implementation that computes both at once must give
    /// these bits.
    fn apply_routes_with_shared(
        &self,
        model: &Model,
        layer: usize,
        h: &[f32],
        shared: Option<&DenseFfn>,
        routes: &[Route],
        out: &mut [f32],
    ) -> Result<(), ModelError> {
        if let Some(ffn) = shared {
            dense_or_shared_ffn(model, layer, ffn, h, out)?;
        }
        self.apply_routes(model, layer, h, routes, out)
    }
}

/// A shared expert-compute device; the CPU by default.
#[derive(Debug, Clone)]
pub struct ComputeHandle(pub Arc<dyn ExpertCompute>);

impl Default for ComputeHandle {
    fn default() -> Self {
        Self(Arc::new(CpuCompute))
    }
}

impl std::ops::Deref for ComputeHandle {
    type Target = dyn ExpertCompute;
    fn deref(&self) -> &Self::Target {
        self.0.as_ref()
    }
}

/// Routed experts on the CPU, over the mapped weights.
#[derive(Debug, Default, Clone, Copy)]
pub struct CpuCompute;

impl ExpertCompute for CpuCompute {
    fn name(&self) -> &str {
        "cpu"
    }

    fn apply_routes(
        &self,
        model: &Model,
        layer: usize,
        h: &[f32],
        routes: &[Route],
        out: &mut [f32],
    ) -> Result<(), ModelError> {
        apply_routes_cpu(model, layer, h, None, routes, out)
    }

    /// The shared expert in the same parallel region as the routed ones (its jobs beside
    /// theirs, one fork/join per phase instead of two), unless the model computes it on its
    /// layer device.
    fn apply_routes_with_shared(
        &self,
        model: &Model,
        layer: usize,
        h: &[f32],
        shared: Option<&DenseFfn>,
        routes: &[Route],
        out: &mut [f32],
    ) -> Result<(), ModelError> {
        if let (Some(ffn), Some(_)) = (shared, model.layer_compute()) {
            dense_or_shared_ffn(model, layer, ffn, h, out)?;
            return apply_routes_cpu(model, layer, h, None, routes, out);
        }
        apply_routes_cpu(model, layer, h, shared, routes, out)
    }
}

/// Every expert computed in this process, on `compute` (the CPU by default).
#[derive(Debug, Default)]
pub struct LocalExperts {
    compute: ComputeHandle,
    pending: Option<(Vec<f32>, Routing)>,
}

impl LocalExperts {
    /// Every expert computed on `compute`.
    pub fn on(compute: ComputeHandle) -> Self {
        Self {
            compute,
            pending: None,
        }
    }
}

impl LocalExperts {
    /// The input and routing of the last `begin`.
    fn take_pending(&mut self) -> Result<(Vec<f32>, Routing), ModelError> {
        self.pending
            .take()
            .ok_or_else(|| ModelError::InvalidInput("finish without begin".into()))
    }
}

impl ExpertBackend for LocalExperts {
    fn begin(
        &mut self,
        _: &Model,
        _: usize,
        h: &[f32],
        routing: &Routing,
    ) -> Result<(), ModelError> {
        self.pending = Some((h.to_vec(), routing.clone()));
        Ok(())
    }

    fn finish(&mut self, model: &Model, layer: usize, out: &mut [f32]) -> Result<(), ModelError> {
        let (h, routing) = self.take_pending()?;
        self.compute
            .apply_routes(model, layer, &h, &routing.routes(), out)
    }

    fn finish_with_shared(
        &mut self,
        model: &Model,
        layer: usize,
        shared: Option<&DenseFfn>,
        _h: &[f32],
        out: &mut [f32],
    ) -> Result<(), ModelError> {
        let (h, routing) = self.take_pending()?;
        self.compute
            .apply_routes_with_shared(model, layer, &h, shared, &routing.routes(), out)
    }
}
