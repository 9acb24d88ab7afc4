//! Trace replay: every MoE layer of every step of a routing trace split over a placement by
//! the router's own dispatch rule ([`moe_cluster::dispatch::plan_step`], every node live). The one
//! walk the planner's balance and the simulator's predictions are both built on, so they
//! count the same work by the same rules.

use crate::trace::{Trace, TraceRecord};
use crate::PlanError;
use moe_cluster::dispatch::{plan_step, NodeWork};
use moe_cluster::placement::{NodeIndex, Placement};

/// Calls `visit(slot, record, work)` for every record of `trace` in order, `slot` being the
/// record's MoE layer index in the trace header and `work` each node's share of it. A record
/// for a layer that is not a MoE layer of the header is an error (the trace and the
/// placement disagree about the model), never skipped.
pub fn replay(
    trace: &Trace,
    placement: &Placement,
    mut visit: impl FnMut(usize, &TraceRecord, &[NodeWork]),
) -> Result<(), PlanError> {
    let h = &trace.header;
    if placement.moe_layers() != h.moe_layers.as_slice() || placement.n_experts() != h.n_experts {
        return Err(PlanError::InvalidInput(format!(
            "the placement is for MoE layers {:?} with {} experts, the trace for {:?} with {}",
            placement.moe_layers(),
            placement.n_experts(),
            h.moe_layers,
            h.n_experts
        )));
    }
    for record in &trace.records {
        let slot = h.slot(record.layer).ok_or_else(|| {
            PlanError::InvalidInput(format!("trace layer {} is not a MoE layer", record.layer))
        })?;
        let work = plan_step(
            &trace.routing_of(record),
            record.layer,
            placement,
            &|_: NodeIndex| true,
        )?;
        visit(slot, record, &work);
    }
    Ok(())
}
