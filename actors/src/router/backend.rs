//! The routed-expert backend a model-running command computes with: every expert in-process
//! without `--placement`, else the placement's nodes over peer links; `--record-routing`
//! wraps either.

use moe_cluster::wire::WireDtype;
use moe_kernels::NumericMode;
use moe_model::forward::{ComputeHandle, ExpertBackend, LocalExperts};
use moe_model::model::Model;

use super::record::with_recording;
use super::remote_experts::{LinkHealth, RemoteExperts};
use crate::options::RouterArgs;

impl RouterArgs {
    /// The routed-expert backend: every expert in-process without a placement; else the
    /// placement's nodes (with SIGHUP re-placement, and `--record-routing` in both cases).
    /// The link health handle is there when experts are remote. In-process experts (all of
    /// them, or a placement's `local` share) are computed on `compute`.
    pub fn backend(
        &self,
        model: &Model,
        compute: ComputeHandle,
    ) -> anyhow::Result<(Box<dyn ExpertBackend>, Option<LinkHealth>)> {
        let (backend, health): (Box<dyn ExpertBackend>, _) = match self.load(&model.cfg)? {
            None => (Box::new(LocalExperts::on(compute)), None),
            Some((placement, secret)) => {
                let mut remote = RemoteExperts::connect(
                    model,
                    placement,
                    secret,
                    &self.node_name,
                    self.wire_dtype.unwrap_or(match model.mode() {
                        NumericMode::Exact => WireDtype::F32,
                        NumericMode::Fast => WireDtype::Bf16,
                    }),
                    self.wire_encrypt,
                    compute,
                )?;
                if let Some(path) = &self.placement {
                    // Live re-placement: `kill -HUP` re-reads the placement file.
                    remote.watch_placement(
                        path.clone(),
                        model.cfg.moe_layers(),
                        model.cfg.n_experts,
                    )?;
                }
                let health = remote.link_health();
                (Box::new(remote), Some(health))
            }
        };
        let backend = with_recording(backend, model, self.record_routing.as_deref())?;
        Ok((backend, health))
    }
}
