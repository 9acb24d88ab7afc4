//! `RemoteExperts`: the forward pass's [`ExpertBackend`] over a placement.
//!
//! `begin` plans the step (each routed pair to its least-loaded live owner) and sends ONE
//! request per remote node holding each needed token's hidden state once; `finish` computes
//! the experts of `local` nodes in-process, then collects the replies. A node that fails or
//! does not answer within `STEP_TIMEOUT_MS` has its share re-planned onto live replicas;
//! without one the step fails with an error naming the node. Partial sums are added in
//! node-index order, so the result does not depend on which reply arrives first.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use moe_cluster::dispatch::{plan_routes, NodeWork};
use moe_cluster::placement::{NodeAddr, NodeIndex, NodeName, Placement};
use moe_cluster::wire::{
    decode_hidden, ClusterSecret, ExpertRequest, ExpertRoute, HandshakeConfig, ModelShape,
    ShardSummary, WireDtype, EXPERTS_PER_TOKEN_MAX, FRAME_BYTES_MAX, TOKENS_PER_FRAME_MAX,
};
use moe_model::forward::{ComputeHandle, ExpertBackend, ExpertCompute, Route, Routing};
use moe_model::model::Model;
use moe_model::{LayerExperts, ModelError};
use ractor::{Actor, ActorRef};

mod replace;

use super::link_io::LinkShared;
use super::peer_link::{PeerLinkActor, PeerLinkMsg};
use crate::telemetry;

/// Longest wait for one node's reply to one step.
pub const STEP_TIMEOUT_MS: u64 = 30_000;
/// How long [`RemoteExperts::connect`] waits for every link to come up.
pub const CLUSTER_READY_TIMEOUT_MS: u64 = 15_000;

struct Link {
    actor: ActorRef<PeerLinkMsg>,
    shared: Arc<LinkShared>,
}

struct InFlight {
    work: NodeWork,
    rx: std::sync::mpsc::Receiver<Result<moe_cluster::wire::ExpertReply, String>>,
}

struct PendingStep {
    started: Instant,
    h: Vec<f32>,
    local: Vec<NodeWork>,
    remote: Vec<InFlight>,
}

/// Reports which of a router's links are down (for health checks on other threads).
#[derive(Clone)]
pub struct LinkHealth {
    links: Vec<Arc<LinkShared>>,
}

impl std::fmt::Debug for LinkHealth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LinkHealth")
            .field("links", &self.links.len())
            .finish()
    }
}

impl LinkHealth {
    /// `name (last error)` of every remote node whose link is not up; empty when all are.
    pub fn down(&self) -> Vec<String> {
        self.links
            .iter()
            .filter(|l| !l.up.load(Ordering::SeqCst))
            .map(|l| {
                format!(
                    "{} ({})",
                    l.name,
                    l.last_error.lock().unwrap_or_else(|e| e.into_inner())
                )
            })
            .collect()
    }
}

/// Routed experts computed by the nodes of a placement.
pub struct RemoteExperts {
    placement: Placement,
    links: Vec<Option<Link>>,
    dtype: WireDtype,
    step: u64,
    pending: Option<PendingStep>,
    rt: Arc<tokio::runtime::Runtime>,
    /// New placements from the SIGHUP watcher, applied at the next step boundary.
    reload: Option<std::sync::mpsc::Receiver<Placement>>,
    /// Counter of live re-placements (the wire's `Reassign::epoch`).
    epoch: u64,
    /// Where the router's own (`local`) share of the experts is computed.
    compute: ComputeHandle,
}

impl RemoteExperts {
    /// Starts one link actor per remote node and waits until all are up.
    pub fn connect(
        model: &Model,
        placement: Placement,
        secret: ClusterSecret,
        name: &str,
        dtype: WireDtype,
        encrypt: bool,
        compute: ComputeHandle,
    ) -> anyhow::Result<Self> {
        if model.cfg.n_embd > moe_cluster::wire::HIDDEN_DIM_MAX {
            bail!(
                "hidden size {} exceeds the wire's HIDDEN_DIM_MAX ({}): this model cannot run with remote experts",
                model.cfg.n_embd,
                moe_cluster::wire::HIDDEN_DIM_MAX
            );
        }
        if dtype.row_bytes(model.cfg.n_embd).is_none() {
            bail!(
                "--wire-dtype {dtype} needs a hidden size that is a multiple of {}; this model's is {}",
                dtype.unit().0,
                model.cfg.n_embd
            );
        }
        let rt = Arc::new(
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()?,
        );
        let shape = ModelShape {
            n_experts: model.cfg.n_experts,
            hidden_dim: model.cfg.n_embd,
        };
        let empty = moe_cluster::placement::ExpertSet::empty(model.cfg.n_experts)?;
        let hs = HandshakeConfig {
            encrypt,
            exact: model.mode() == moe_kernels::NumericMode::Exact,
            ..HandshakeConfig::new(
                NodeName::new(name).map_err(anyhow::Error::msg)?,
                model.file().fingerprint(),
                secret,
                ShardSummary::uniform(&empty),
                shape,
            )
        };
        let mut links = Vec::new();
        for node in placement.nodes() {
            let addr: SocketAddr = match &node.addr {
                NodeAddr::Local => {
                    links.push(None);
                    continue;
                }
                NodeAddr::Socket(a) => *a,
                other => {
                    use std::net::ToSocketAddrs;
                    other
                        .to_string()
                        .to_socket_addrs()
                        .ok()
                        .and_then(|mut a| a.next())
                        .with_context(|| {
                            format!("cannot resolve the address of node {}", node.name.as_str())
                        })?
                }
            };
            let shared = Arc::new(LinkShared::new(node.name.as_str()));
            let idx = NodeIndex(links.len() as u16);
            let expected = expected_shards(&placement, idx);
            let actor = rt
                .block_on(Actor::spawn(
                    None,
                    PeerLinkActor,
                    (addr, hs.clone(), shared.clone(), Arc::new(expected)),
                ))?
                .0;
            links.push(Some(Link { actor, shared }));
        }
        let deadline = Instant::now() + Duration::from_millis(CLUSTER_READY_TIMEOUT_MS);
        loop {
            let down: Vec<String> = links
                .iter()
                .flatten()
                .filter(|l| !l.shared.up.load(Ordering::SeqCst))
                .map(|l| {
                    format!(
                        "{} ({})",
                        l.shared.name,
                        l.shared
                            .last_error
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                    )
                })
                .collect();
            if down.is_empty() {
                break;
            }
            if let Some(l) = links
                .iter()
                .flatten()
                .find(|l| l.shared.refused.load(Ordering::SeqCst))
            {
                bail!(
                    "expert node {} refused this router: {}",
                    l.shared.name,
                    l.shared
                        .last_error
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                );
            }
            if Instant::now() > deadline {
                bail!(
                    "expert nodes not reachable after {CLUSTER_READY_TIMEOUT_MS} ms: {}",
                    down.join("; ")
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(Self {
            placement,
            links,
            dtype,
            step: 0,
            pending: None,
            rt,
            reload: None,
            epoch: 0,
            compute,
        })
    }

    /// A handle that tells, from any thread, which remote nodes are down.
    pub fn link_health(&self) -> LinkHealth {
        LinkHealth {
            links: self
                .links
                .iter()
                .flatten()
                .map(|l| l.shared.clone())
                .collect(),
        }
    }

    /// Whether node `n` can take work now.
    fn is_live(&self, n: NodeIndex) -> bool {
        match self.links.get(n.0 as usize) {
            Some(Some(l)) => l.shared.up.load(Ordering::SeqCst),
            Some(None) => true,
            None => false,
        }
    }

    fn send(
        &mut self,
        layer: usize,
        h: &[f32],
        d: usize,
        work: NodeWork,
    ) -> Result<InFlight, ModelError> {
        self.step += 1;
        let mut req = ExpertRequest::new(self.step, layer as u16, self.dtype, d as u32);
        let mut routes: Vec<ExpertRoute> = Vec::new();
        let mut i = 0;
        for (row_idx, &row) in work.rows.iter().enumerate() {
            routes.clear();
            while i < work.routes.len() && work.routes[i].token as usize == row_idx {
                routes.push(ExpertRoute {
                    expert: work.routes[i].expert as u16,
                    weight: work.routes[i].weight,
                });
                i += 1;
            }
            req.push_token(&h[row as usize * d..(row as usize + 1) * d], &routes)
                .map_err(|e| {
                    ModelError::InvalidInput(format!("request for node {}: {e}", work.node.0))
                })?;
        }
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        let link = self.links[work.node.0 as usize]
            .as_ref()
            .ok_or_else(|| ModelError::InvalidInput("local node has no link".into()))?;
        if let Err(reason) = link.shared.dispatch(req, tx) {
            // The step has its error; the connection is not to be trusted with the next one.
            let _ = link.actor.cast(PeerLinkMsg::Reset(reason));
        }
        Ok(InFlight { work, rx })
    }

    /// Token rows one request frame may carry: under `TOKENS_PER_FRAME_MAX`, and with its
    /// hidden states (plus up to `EXPERTS_PER_TOKEN_MAX` routes each) in half of
    /// `FRAME_BYTES_MAX`, which leaves room for the archive's own overhead.
    fn rows_per_frame(&self, d: usize) -> usize {
        let row_bytes = self.dtype.row_bytes(d).unwrap_or(d * 4) + EXPERTS_PER_TOKEN_MAX * 8 + 4;
        TOKENS_PER_FRAME_MAX
            .min((FRAME_BYTES_MAX / 2) / row_bytes.max(1))
            .max(1)
    }

    fn node_name(&self, n: NodeIndex) -> String {
        self.placement
            .node(n)
            .map(|n| n.name.as_str().to_string())
            .unwrap_or_default()
    }

    /// Counts a step's plan: tokens per node over every node owning experts of `layer`.
    fn record_plan(&self, layer: usize, plan: &[NodeWork]) {
        let tokens: Vec<(&str, usize)> = self
            .placement
            .nodes()
            .iter()
            .enumerate()
            .filter(|(i, _)| {
                self.placement
                    .experts_of(NodeIndex(*i as u16), layer)
                    .is_some_and(|set| !set.is_empty())
            })
            .map(|(i, node)| {
                let rows = plan
                    .iter()
                    .find(|w| w.node.0 as usize == i)
                    .map_or(0, |w| w.rows.len());
                (node.name.as_str(), rows)
            })
            .collect();
        telemetry::dispatch_planned(layer, &tokens);
    }
}

/// Computes a `local` node's share in-process: the partial sums of its rows, compacted.
fn compute_local(
    compute: &dyn ExpertCompute,
    model: &Model,
    layer: usize,
    h: &[f32],
    d: usize,
    work: &NodeWork,
) -> Result<Vec<f32>, ModelError> {
    let started = Instant::now();
    let mut partial = vec![0f32; h.len()];
    compute.apply_routes(model, layer, h, &work.batch_routes(), &mut partial)?;
    telemetry::expert_compute_done(layer, work.rows.len(), started.elapsed().as_secs_f64());
    Ok(work
        .rows
        .iter()
        .flat_map(|&r| partial[r as usize * d..(r as usize + 1) * d].to_vec())
        .collect())
}

/// What `placement` gives node `idx` in every MoE layer (checked on each connect).
fn expected_shards(placement: &Placement, idx: NodeIndex) -> LayerExperts {
    let moe_layers = placement.moe_layers();
    let n_layers = moe_layers.iter().max().map_or(0, |&l| l + 1);
    LayerExperts::new(
        (0..n_layers)
            .map(|l| {
                moe_layers
                    .contains(&l)
                    .then(|| placement.experts_of(idx, l).cloned())
                    .flatten()
            })
            .collect(),
    )
}

impl Drop for RemoteExperts {
    /// Stops the link actors; the runtime they run on is dropped with `self` afterwards.
    fn drop(&mut self) {
        for l in self.links.iter().flatten() {
            l.actor.stop(None);
        }
    }
}

impl ExpertBackend for RemoteExperts {
    fn begin(
        &mut self,
        model: &Model,
        layer: usize,
        h: &[f32],
        routing: &Routing,
    ) -> Result<(), ModelError> {
        // A step boundary: every earlier step has finished on the placement it started with.
        self.apply_reloaded_placement();
        let started = Instant::now();
        let plan = plan_routes(routing.routes(), layer, &self.placement, &|n| {
            self.is_live(n)
        })?;
        self.record_plan(layer, &plan);
        let d = model.cfg.n_embd;
        let (mut local, mut remote) = (Vec::new(), Vec::new());
        for work in plan {
            if self.links[work.node.0 as usize].is_none() {
                local.push(work);
            } else {
                for part in work.split(self.rows_per_frame(d)) {
                    remote.push(self.send(layer, h, d, part)?);
                }
            }
        }
        self.pending = Some(PendingStep {
            started,
            h: h.to_vec(),
            local,
            remote,
        });
        Ok(())
    }

    fn finish(&mut self, model: &Model, layer: usize, out: &mut [f32]) -> Result<(), ModelError> {
        let PendingStep {
            started,
            h,
            local,
            mut remote,
        } = self
            .pending
            .take()
            .ok_or_else(|| ModelError::InvalidInput("finish without begin".into()))?;
        let d = model.cfg.n_embd;
        // One deadline for the whole step, re-sends to replicas included.
        let deadline = started + Duration::from_millis(STEP_TIMEOUT_MS);
        // (node, batch rows, partial sums) from every node that computed part of the step.
        let mut parts: Vec<(NodeIndex, Vec<u32>, Vec<f32>)> = Vec::new();
        for work in local {
            let compact = compute_local(&*self.compute, model, layer, &h, d, &work)?;
            parts.push((work.node, work.rows, compact));
        }
        let mut failed: Vec<NodeIndex> = Vec::new();
        while let Some(inflight) = remote.pop() {
            let node = inflight.work.node;
            let got = match self.links.get(node.0 as usize) {
                Some(Some(link)) => link.shared.wait(&inflight.rx, deadline),
                _ => inflight
                    .rx
                    .recv_timeout(deadline.saturating_duration_since(Instant::now())),
            };
            let result = match got {
                Ok(Ok(reply)) if reply.n_tokens as usize == inflight.work.rows.len() => {
                    let mut partial = Vec::new();
                    decode_hidden(&reply.partials, reply.dtype, &mut partial)
                        .map(|_| partial)
                        .map_err(|e| e.to_string())
                }
                Ok(Ok(reply)) => Err(format!(
                    "reply has {} tokens, request had {}",
                    reply.n_tokens,
                    inflight.work.rows.len()
                )),
                Ok(Err(reason)) => Err(reason),
                Err(_) => {
                    let reason = format!("no reply within {STEP_TIMEOUT_MS} ms");
                    if let Some(Some(l)) = self.links.get(node.0 as usize) {
                        let _ = l.actor.cast(PeerLinkMsg::Reset(reason.clone()));
                    }
                    Err(reason)
                }
            };
            match result {
                Ok(partial) if partial.len() == inflight.work.rows.len() * d => {
                    parts.push((node, inflight.work.rows, partial))
                }
                Ok(_) => {
                    return Err(ModelError::PeerFailed {
                        node: self.node_name(node),
                        reason: "reply of the wrong size".into(),
                    })
                }
                Err(reason) => {
                    // Re-plan this node's share onto the other live owners, if any.
                    failed.push(node);
                    let routes: Vec<Route> = inflight.work.batch_routes();
                    let failed_now = failed.clone();
                    let plan = plan_routes(routes, layer, &self.placement, &|n| {
                        !failed_now.contains(&n) && self.is_live(n)
                    })
                    .map_err(|e| ModelError::PeerFailed {
                        node: self.node_name(node),
                        reason: format!("{reason}; {e}"),
                    })?;
                    eprintln!(
                        "node {} failed a step ({reason}); re-sent to replicas",
                        self.node_name(node)
                    );
                    for work in plan {
                        if self.links[work.node.0 as usize].is_none() {
                            let compact =
                                compute_local(&*self.compute, model, layer, &h, d, &work)?;
                            parts.push((work.node, work.rows, compact));
                        } else {
                            for part in work.split(self.rows_per_frame(d)) {
                                remote.push(self.send(layer, &h, d, part)?);
                            }
                        }
                    }
                }
            }
        }
        parts.sort_by_key(|p| p.0);
        // Partial sums must be finite: a NaN or Inf from one node (a faulty or compromised
        // expert node, corrupt weights) would otherwise poison every later layer of its tokens.
        // Only reads the values; the error names the node(s) and the batch rows concerned.
        let (mut bad_rows, mut bad_nodes, mut first) = (Vec::new(), Vec::new(), None);
        for (node, rows, partial) in &parts {
            if let Some((rs, v)) = moe_model::forward::non_finite_rows(partial, d) {
                first.get_or_insert(v);
                let name = self.node_name(*node);
                if !bad_nodes.contains(&name) {
                    bad_nodes.push(name);
                }
                bad_rows.extend(
                    rs.into_iter()
                        .filter_map(|i| rows.get(i))
                        .map(|&r| r as usize),
                );
            }
        }
        if let Some(value) = first {
            bad_rows.sort_unstable();
            bad_rows.dedup();
            return Err(ModelError::NonFinite {
                what: format!(
                    "the partial sums from expert node {} for MoE layer {layer}",
                    bad_nodes.join(", ")
                ),
                value,
                rows: bad_rows,
            });
        }
        for (_, rows, partial) in parts {
            for (i, &r) in rows.iter().enumerate() {
                for (o, &v) in out[r as usize * d..(r as usize + 1) * d]
                    .iter_mut()
                    .zip(&partial[i * d..(i + 1) * d])
                {
                    *o += v;
                }
            }
        }
        telemetry::layer_step_done(layer, started.elapsed().as_secs_f64());
        Ok(())
    }
}
