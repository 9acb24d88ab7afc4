//! One authenticated connection, served on one thread with blocking I/O: read a frame
//! (whole within `PEER_TIMEOUT_MS`), open it, and for a request compute its experts and write
//! the reply on the same thread. A step crosses no hand-off on the node: the socket wakes the
//! thread that computes and answers. Heartbeats are answered as they are read, and while a
//! long step computes (`KEEPER_TOKENS_MIN` tokens or more) by a keeper thread beside it,
//! which keeps any other frame for after the step.
//!
//! Every request is checked against the shard before any compute: an expert this node does
//! not own, a layer that is not a MoE layer or a hidden size that does not match is an error
//! reply, never a wrong answer. A panic while computing fails that request only (its error
//! reply names it); the connection and the node go on.

use std::collections::VecDeque;
use std::net::TcpStream;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use moe_cluster::wire::{
    await_readable, decode_hidden, encode_hidden, ErrorMessage, ExpertReply, ExpertRequest,
    FrameReader, FrameWriter, Heartbeat, Message, Reassign, ReassignAck, PEER_TIMEOUT,
    PEER_TIMEOUT_MS,
};
use moe_cluster::ClusterError;
use moe_model::forward::{ExpertCompute, Route};
use moe_model::model::Model;
use moe_model::LayerExperts;

use super::live_shard::LiveShard;
use crate::telemetry::{self, ErrorKind, PeerMetrics};

/// What every connection of a node shares.
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

/// Requests of at least this many tokens are computed with a keeper thread beside them that
/// answers heartbeats (a long prompt's step may compute for seconds; the router judges the
/// link by its silence). Shorter steps take milliseconds at most.
pub const KEEPER_TOKENS_MIN: usize = 32;
/// How long the keeper waits for bytes at a time before it looks whether the step is done.
pub const KEEPER_POLL: Duration = Duration::from_millis(1);
/// Frames the keeper holds for after the step at most (a router sends one step at a time,
/// in at most a few frames); past it, it reads nothing more until the step is done.
pub const KEEPER_FRAMES_MAX: usize = 16;

/// Serves one connection until the peer closes it, goes silent, or sends a bad frame (the
/// error says which, naming `peer`).
pub fn serve(
    mut reader: FrameReader<TcpStream>,
    mut writer: FrameWriter<TcpStream>,
    node: &NodeWork,
    peer: &str,
    metrics: &PeerMetrics,
) -> anyhow::Result<()> {
    // Frames the keeper read while a long step computed (a big step comes in several
    // request frames), in arrival order.
    let mut queued: VecDeque<Message> = VecDeque::new();
    loop {
        let message = match queued.pop_front() {
            Some(m) => m,
            None => {
                // An error here shows in the read that follows.
                let _ = await_readable(reader.stream(), NEXT_FRAME_SPIN);
                next_message(&mut reader, peer, metrics)?
            }
        };
        let answer = match message {
            Message::ExpertRequest(req) => {
                let _turn = node.turn.lock().unwrap_or_else(|e| e.into_inner());
                if (req.n_tokens as usize) < KEEPER_TOKENS_MIN {
                    step(&node.live, &req, metrics)
                } else {
                    let stop = AtomicBool::new(false);
                    let (answer, kept) = std::thread::scope(|s| {
                        let keeper =
                            s.spawn(|| keep_alive(&mut reader, &mut writer, &stop, peer, metrics));
                        let answer = step(&node.live, &req, metrics);
                        stop.store(true, Ordering::SeqCst);
                        let kept = keeper
                            .join()
                            .unwrap_or_else(|_| Err(anyhow::anyhow!("the keeper thread panicked")));
                        (answer, kept)
                    });
                    queued.extend(kept?);
                    answer
                }
            }
            Message::Reassign(r) => {
                let _turn = node.turn.lock().unwrap_or_else(|e| e.into_inner());
                Message::ReassignAck(reassign(node, &r))
            }
            Message::Heartbeat(hb) => Message::Heartbeat(Heartbeat {
                counter: hb.counter,
            }),
            Message::Error(e) => {
                metrics.error(ErrorKind::StepRefused);
                bail!("peer {peer} sent an error: {}", e.message)
            }
            other => {
                metrics.error(ErrorKind::BadFrame);
                bail!("unexpected {} frame from {peer}", other.kind())
            }
        };
        send(&mut writer, &answer, peer, metrics)?;
    }
}

/// Reads and opens the next frame, whole within `PEER_TIMEOUT` (errors name `peer` and are
/// counted by kind).
fn next_message(
    reader: &mut FrameReader<TcpStream>,
    peer: &str,
    metrics: &PeerMetrics,
) -> anyhow::Result<Message> {
    let frame = match reader.read_frame_before(Instant::now() + PEER_TIMEOUT) {
        Ok(f) => f,
        Err(ClusterError::WireIo(e)) if e.kind() == std::io::ErrorKind::TimedOut => {
            metrics.error(ErrorKind::Timeout);
            bail!("peer {peer} silent for {PEER_TIMEOUT_MS} ms (or slower with a frame)")
        }
        Err(e) => {
            metrics.error(if matches!(e, ClusterError::FrameTooLarge { .. }) {
                ErrorKind::BadFrame
            } else {
                ErrorKind::Closed
            });
            return Err(e).with_context(|| format!("reading from {peer}"));
        }
    };
    metrics.frame_received(frame.len());
    reader.open(&frame).map_err(|e| {
        metrics.error(ErrorKind::BadFrame);
        anyhow::Error::new(e).context(format!("bad frame from {peer}"))
    })
}

/// Seals and writes one frame to `peer`.
fn send(
    writer: &mut FrameWriter<TcpStream>,
    message: &Message,
    peer: &str,
    metrics: &PeerMetrics,
) -> anyhow::Result<()> {
    match writer.write_message_blocking(message) {
        Ok(bytes) => {
            metrics.frame_sent(bytes);
            Ok(())
        }
        Err(e) => {
            metrics.error(ErrorKind::SendFailed);
            Err(e).with_context(|| format!("writing to {peer}"))
        }
    }
}

/// While a long step computes: answers heartbeats at once and keeps every other frame, in
/// order, for after the step; returns them once `stop` is set.
fn keep_alive(
    reader: &mut FrameReader<TcpStream>,
    writer: &mut FrameWriter<TcpStream>,
    stop: &AtomicBool,
    peer: &str,
    metrics: &PeerMetrics,
) -> anyhow::Result<Vec<Message>> {
    let mut kept = Vec::new();
    while !stop.load(Ordering::SeqCst) {
        if kept.len() >= KEEPER_FRAMES_MAX {
            std::thread::sleep(KEEPER_POLL);
            continue;
        }
        // Bytes (or the end) within a poll? A blocking peek with a short timeout; other
        // errors show in the read that follows.
        reader
            .stream()
            .set_read_timeout(Some(KEEPER_POLL))
            .context("setting a read timeout")?;
        if let Err(e) = reader.stream().peek(&mut [0u8; 1]) {
            if matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ) {
                continue;
            }
        }
        match next_message(reader, peer, metrics)? {
            Message::Heartbeat(hb) => send(
                writer,
                &Message::Heartbeat(Heartbeat {
                    counter: hb.counter,
                }),
                peer,
                metrics,
            )?,
            other => kept.push(other),
        }
    }
    Ok(kept)
}

/// How long a connection's thread polls for the next frame before it sleeps in `read`: a
/// frame that comes sooner is taken without a wake-up of this thread.
pub const NEXT_FRAME_SPIN: Duration = Duration::from_micros(1_000);

/// Computes one request: its reply, or an error frame naming why (a panic included).
fn step(live: &LiveShard, req: &ExpertRequest, metrics: &PeerMetrics) -> Message {
    let started = Instant::now();
    let super::live_shard::Current {
        model,
        shard,
        compute,
    } = live.current();
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
    let dtype = req.dtype.reply();
    encode_hidden(&out, dtype, &mut partials);
    Ok(ExpertReply {
        step_id: req.step_id,
        layer: req.layer,
        dtype,
        n_tokens: req.n_tokens,
        hidden_dim: req.hidden_dim,
        partials,
    })
}
