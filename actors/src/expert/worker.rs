//! A connection's worker: one thread per authenticated connection that takes the
//! connection's requests in arrival order, computes each on the node's experts and writes its
//! reply itself (sealed by the connection's writer, shared with the reader's heartbeat
//! answers). A step crosses one hand-off on the node: reader task -> this thread.
//!
//! Every request is checked against the shard before any compute: an expert this node does
//! not own, a layer that is not a MoE layer or a hidden size that does not match is an error
//! reply, never a wrong answer. A panic while computing fails that request only (its error
//! reply names it); the connection and the node go on.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use moe_cluster::wire::{
    decode_hidden, encode_hidden, write_shared, ErrorMessage, ExpertReply, ExpertRequest, Message,
    Reassign, ReassignAck, SharedWriter, PEER_TIMEOUT_MS,
};
use moe_model::forward::{ExpertCompute, Route};
use moe_model::model::Model;
use moe_model::LayerExperts;
use tokio::io::AsyncWrite;
use tokio::sync::mpsc;

use super::live_shard::LiveShard;
use crate::telemetry::{self, ErrorKind, PeerMetrics};

/// What a connection's worker does next, in arrival order.
pub enum Work {
    /// Compute a step.
    Request(ExpertRequest),
    /// Apply a re-placement phase.
    Reassign(Reassign),
}

/// Longest wait for the peer to take one reply.
const PEER_TIMEOUT: Duration = Duration::from_millis(PEER_TIMEOUT_MS);

/// What every worker of a node shares.
#[derive(Clone)]
pub struct NodeWork {
    /// The owned experts and their model.
    pub live: Arc<LiveShard>,
    /// One computation at a time on the node (its compute threads are one pool): steps of
    /// different routers and re-placements take turns, in the order they ask.
    pub turn: Arc<Mutex<()>>,
    /// `(n_experts, n_layers, MoE layers)`, to parse a re-placement's sets.
    pub shape: (usize, usize, Vec<usize>),
}

/// Starts the worker of one connection; it ends when `work` closes or a reply cannot be
/// written.
pub fn spawn<W: AsyncWrite + Unpin + Send + 'static>(
    node: NodeWork,
    mut work: mpsc::Receiver<Work>,
    writer: SharedWriter<W>,
    metrics: PeerMetrics,
    rt: tokio::runtime::Handle,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new()
        .name("moe-conn-worker".into())
        .spawn(move || {
            while let Some(item) = work.blocking_recv() {
                let reply = {
                    let _turn = node.turn.lock().unwrap_or_else(|e| e.into_inner());
                    match item {
                        Work::Request(req) => step(&node.live, &req, &metrics),
                        Work::Reassign(r) => Message::ReassignAck(reassign(&node, &r)),
                    }
                };
                match rt.block_on(write_shared(&writer, &reply, PEER_TIMEOUT)) {
                    Ok(bytes) => metrics.frame_sent(bytes),
                    Err(e) => {
                        metrics.error(ErrorKind::SendFailed);
                        eprintln!("writing a reply failed: {e}");
                        break;
                    }
                }
            }
        })
}

/// Computes one request: its reply, or an error frame naming why (a panic included).
fn step(live: &LiveShard, req: &ExpertRequest, metrics: &PeerMetrics) -> Message {
    let started = Instant::now();
    let (model, shard) = live.current();
    let compute = live.compute();
    let result = catch_unwind(AssertUnwindSafe(|| {
        compute_reply(&*compute, &model, &shard, req)
    }))
    .unwrap_or_else(|panic| {
        let what = panic
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_default();
        Err(format!("expert compute panicked: {what}"))
    });
    match result {
        Ok(reply) => {
            telemetry::expert_compute_done(
                req.layer as usize,
                req.n_tokens as usize,
                started.elapsed().as_secs_f64(),
            );
            Message::ExpertReply(reply)
        }
        Err(reason) => {
            metrics.error(ErrorKind::Compute);
            Message::Error(ErrorMessage::for_step(req.step_id, &reason))
        }
    }
}

/// Applies one re-placement phase; the ack carries the refusal, if any.
fn reassign(node: &NodeWork, r: &Reassign) -> ReassignAck {
    let (n_experts, n_layers, moe_layers) = &node.shape;
    let result = r
        .shards
        .parse(*n_experts, *n_layers, |l| moe_layers.contains(&l))
        .map_err(|e| e.to_string())
        .and_then(|per_layer| node.live.reassign(r.phase, per_layer));
    match &result {
        Ok(note) => eprintln!("reassigned: {note}"),
        Err(e) => eprintln!("reassign refused: {e}"),
    }
    ReassignAck {
        epoch: r.epoch,
        error: result.err().unwrap_or_default(),
    }
}

/// The weighted partial sums of one request.
pub fn compute_reply(
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
