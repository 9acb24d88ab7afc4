//! `ExpertShardActor`: owns nothing but the model handle and this node's expert sets; turns
//! an [`ExpertRequest`] into its [`ExpertReply`].
//!
//! Every request is checked against the shard before any compute: an expert this node does
//! not own, a layer that is not a MoE layer or a hidden size that does not match is an error
//! reply, never a wrong answer.

use std::sync::Arc;

use moe_cluster::wire::{decode_hidden, encode_hidden, ExpertReply, ExpertRequest, ReassignPhase};
use moe_model::forward::{ComputeHandle, ExpertCompute, Route};
use moe_model::model::Model;
use moe_model::LayerExperts;
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};

use super::live_shard::LiveShard;
use crate::telemetry;

/// Messages of [`ExpertShardActor`].
pub enum ExpertShardMsg {
    /// Compute a request; the reply port gets the reply or a reason.
    Compute(
        Box<ExpertRequest>,
        RpcReplyPort<Result<ExpertReply, String>>,
    ),
    /// One phase of a live re-placement: the new sets per model layer.
    Reassign(
        ReassignPhase,
        LayerExperts,
        RpcReplyPort<Result<String, String>>,
    ),
}

/// State: the node's live shard (model + owned experts).
pub struct ExpertShardState {
    live: Arc<LiveShard>,
    /// Where the owned experts are computed.
    compute: ComputeHandle,
}

/// Computes expert requests (one at a time per actor).
pub struct ExpertShardActor;

impl Actor for ExpertShardActor {
    type Msg = ExpertShardMsg;
    type State = ExpertShardState;
    type Arguments = Arc<LiveShard>;

    async fn pre_start(
        &self,
        _: ActorRef<Self::Msg>,
        live: Self::Arguments,
    ) -> Result<Self::State, ActorProcessingErr> {
        Ok(ExpertShardState {
            compute: live.compute(),
            live,
        })
    }

    async fn handle(
        &self,
        _: ActorRef<Self::Msg>,
        msg: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            ExpertShardMsg::Compute(req, port) => {
                let started = std::time::Instant::now();
                let (model, shard) = state.live.current();
                let result =
                    tokio::task::block_in_place(|| compute(&*state.compute, &model, &shard, &req));
                if result.is_ok() {
                    telemetry::expert_compute_done(
                        req.layer as usize,
                        req.n_tokens as usize,
                        started.elapsed().as_secs_f64(),
                    );
                }
                // The connection may be gone; nothing to do then.
                let _ = port.send(result);
            }
            ExpertShardMsg::Reassign(phase, sets, port) => {
                let result = tokio::task::block_in_place(|| state.live.reassign(phase, sets));
                match &result {
                    Ok(note) => eprintln!("reassigned: {note}"),
                    Err(e) => eprintln!("reassign refused: {e}"),
                }
                let _ = port.send(result);
            }
        }
        Ok(())
    }
}

/// The weighted partial sums of one request.
pub fn compute(
    device: &dyn ExpertCompute,
    model: &Model,
    owned: &LayerExperts,
    req: &ExpertRequest,
) -> Result<ExpertReply, String> {
    let layer = req.layer as usize;
    let d = model.cfg.n_embd;
    let owned = owned
        .in_layer(layer)
        .ok_or_else(|| format!("layer {layer} is not a MoE layer of this model"))?;
    if req.hidden_dim as usize != d {
        return Err(format!(
            "hidden_dim {} does not match the model's {d}",
            req.hidden_dim
        ));
    }
    let n = req.n_tokens as usize;
    let mut h = Vec::with_capacity(n * d);
    decode_hidden(&req.hidden, req.dtype, &mut h).map_err(|e| e.to_string())?;
    let mut routes = Vec::with_capacity(req.routes.len());
    for t in 0..n {
        for r in req.routes_of(t) {
            if !owned.contains(r.expert as usize) {
                return Err(format!(
                    "expert {} of layer {layer} is not owned by this node",
                    r.expert
                ));
            }
            routes.push(Route {
                token: t as u32,
                expert: r.expert as u32,
                weight: r.weight,
            });
        }
    }
    let mut out = vec![0f32; n * d];
    device
        .apply_routes(model, layer, &h, &routes, &mut out)
        .map_err(|e| e.to_string())?;
    let mut partials = Vec::new();
    encode_hidden(&out, req.dtype, &mut partials);
    Ok(ExpertReply {
        step_id: req.step_id,
        layer: req.layer,
        dtype: req.dtype,
        n_tokens: req.n_tokens,
        hidden_dim: req.hidden_dim,
        partials,
    })
}
