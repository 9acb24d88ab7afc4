//! The placement simulator: replays a routing trace against a placement and predicts what a
//! cluster would do with it, step by step.
//!
//! Every MoE layer of every step is split over the placement's owners by
//! [`moe_cluster::dispatch::plan_step`] itself (every node live), so replicas share load exactly
//! as the router shares it. From the split it counts, per node and layer, the (token,
//! expert) pairs computed and the token rows sent, and the bytes on the wire. The predicted
//! time of one MoE layer of one step is
//!
//! ```text
//! t_layer = max_n (pairs_n × pair_us / speed_n)                      compute, nodes in parallel
//!         + [any remote node] × 2 × latency                           request out, reply back
//!         + Σ_remote n (request_n + reply_n)                           the router's link, shared,
//!           × (8 / link bandwidth + router_us_per_kib / 1024)        and the router's CPU
//! request_n = FRAME_OVERHEAD_BYTES + rows_n × (hidden × wire_bytes + TOKEN_WIRE_BYTES)
//!             + pairs_n × ROUTE_WIRE_BYTES
//! reply_n   = FRAME_OVERHEAD_BYTES + rows_n × hidden × wire_bytes
//! ```
//!
//! and a step's time is the sum over its MoE layers (attention, dense layers and the output
//! head are the same for every placement and left out). Nodes at address `local` send
//! nothing. The constants are [`CostModel`]'s, printed with every report.
//!
//! The planner's network-aware refinement ([`crate::refine`]) minimizes the same terms.
//!
//! It leaves to others: reading the trace ([`crate::trace`]) and planning ([`crate::plan`]).

use crate::replay::replay;
use crate::trace::Trace;
use crate::PlanError;
use moe_cluster::placement::{NodeAddr, Placement};

/// Bytes of a frame besides its payload (length prefix, MAC, header fields), approximately.
pub const FRAME_OVERHEAD_BYTES: u64 = 64;
/// Bytes per token row of a request besides its hidden state (its route offset).
pub const TOKEN_WIRE_BYTES: u64 = 4;
/// Bytes per (token, expert) route in a request (expert id and weight).
pub const ROUTE_WIRE_BYTES: u64 = 8;
/// Default router link bandwidth, Gbit/s (the mini-PC cluster's Ethernet).
pub const DEFAULT_LINK_GBIT: f64 = 5.0;
/// Default one-way link latency, milliseconds.
pub const DEFAULT_LATENCY_MS: f64 = 0.2;
/// Default memory bandwidth of a speed-1.0 node, GB/s: computing one expert for one token
/// reads its weights once, so the default pair cost is `expert_bytes / this`.
pub const DEFAULT_MEM_GBPS: f64 = 50.0;
/// Default router CPU time per KiB on the wire (archiving, MAC, copies; both directions),
/// microseconds: `wire_seal_cost` measured 73 µs for a 28 KiB frame sealed and opened on a
/// 2-core Xeon.
pub const DEFAULT_ROUTER_US_PER_KIB: f64 = 2.5;

/// The constants of the step-time model.
#[derive(Debug, Clone, PartialEq)]
pub struct CostModel {
    /// Compute time of one (token, expert) pair on a speed-1.0 node, microseconds.
    pub pair_us: f64,
    /// The router's link bandwidth, Gbit/s.
    pub link_gbit: f64,
    /// One-way latency, milliseconds.
    pub latency_ms: f64,
    /// Bytes per hidden-state element on the wire (4 for f32, 2 for bf16).
    pub wire_bytes: u64,
    /// Router CPU time per KiB it sends or receives, microseconds (serial with the link).
    pub router_us_per_kib: f64,
}

impl CostModel {
    /// The defaults for a trace's model: pair cost from its per-expert bytes at
    /// [`DEFAULT_MEM_GBPS`], [`DEFAULT_LINK_GBIT`], [`DEFAULT_LATENCY_MS`], f32 on the wire.
    pub fn for_expert_bytes(expert_bytes: u64, mem_gbps: f64) -> Self {
        Self {
            pair_us: expert_bytes as f64 / (mem_gbps * 1e9) * 1e6,
            link_gbit: DEFAULT_LINK_GBIT,
            latency_ms: DEFAULT_LATENCY_MS,
            wire_bytes: 4,
            router_us_per_kib: DEFAULT_ROUTER_US_PER_KIB,
        }
    }

    /// Time one token row costs a remote node's link and the router, microseconds: the
    /// request's hidden state and offset plus the reply's partial sum.
    pub fn row_us(&self, hidden: usize) -> f64 {
        let bytes = (2 * hidden as u64 * self.wire_bytes + TOKEN_WIRE_BYTES) as f64;
        bytes * self.us_per_byte()
    }

    /// Link plus router time per byte, microseconds.
    fn us_per_byte(&self) -> f64 {
        1.0 / (self.link_gbit * 125.0) + self.router_us_per_kib / 1024.0
    }

    /// Checks the constants are usable.
    pub fn check(&self) -> Result<(), PlanError> {
        let ok = self.pair_us.is_finite()
            && self.pair_us >= 0.0
            && self.link_gbit.is_finite()
            && self.link_gbit > 0.0
            && self.latency_ms.is_finite()
            && self.latency_ms >= 0.0
            && self.router_us_per_kib.is_finite()
            && self.router_us_per_kib >= 0.0
            && (1..=8).contains(&self.wire_bytes);
        if ok {
            Ok(())
        } else {
            Err(PlanError::InvalidInput(format!(
                "cost model {self:?}: times must be >= 0, bandwidth > 0, wire bytes 1 to 8"
            )))
        }
    }
}

/// What replaying a trace against one placement gives.
#[derive(Debug, Clone, PartialEq)]
pub struct SimReport {
    /// Model layer index per MoE layer.
    pub layers: Vec<usize>,
    /// `[MoE layer][node]` pairs computed over the trace.
    pub layer_node_pairs: Vec<Vec<u64>>,
    /// Per node, pairs computed over the trace.
    pub node_pairs: Vec<u64>,
    /// Per node, token rows it was sent over the trace (a token once per layer per node).
    pub node_rows: Vec<u64>,
    /// Bytes on the wire, both directions, over the trace.
    pub wire_bytes: u64,
    /// Steps replayed.
    pub steps: u64,
    /// Tokens over all steps.
    pub tokens: u64,
    /// Predicted compute time over the trace, seconds.
    pub compute_s: f64,
    /// Predicted network time over the trace, seconds.
    pub network_s: f64,
    /// Node speeds used, in node order.
    pub speeds: Vec<f64>,
}

impl SimReport {
    /// Predicted MoE time over the whole trace, seconds.
    pub fn predicted_s(&self) -> f64 {
        self.compute_s + self.network_s
    }

    /// Predicted mean step time, milliseconds.
    pub fn mean_step_ms(&self) -> f64 {
        self.predicted_s() * 1e3 / self.steps.max(1) as f64
    }

    /// `(max, mean)` over nodes of pairs in MoE layer `slot`.
    pub fn layer_max_mean(&self, slot: usize) -> (u64, f64) {
        let pairs = &self.layer_node_pairs[slot];
        let max = pairs.iter().copied().max().unwrap_or(0);
        let mean = pairs.iter().sum::<u64>() as f64 / pairs.len().max(1) as f64;
        (max, mean)
    }

    /// Per MoE layer, mean(pairs / speed) / max(pairs / speed) over nodes (1 = balanced).
    pub fn balance(&self) -> Vec<f64> {
        self.layer_node_pairs
            .iter()
            .map(|pairs| {
                let load: Vec<f64> = pairs.iter().map(|&p| p as f64).collect();
                balance_factor(&load, &self.speeds)
            })
            .collect()
    }
}

/// Replays `trace` against `placement` (which must be for the trace's model) with node
/// `speeds` in node order.
pub fn simulate(
    trace: &Trace,
    placement: &Placement,
    speeds: &[f64],
    model: &CostModel,
) -> Result<SimReport, PlanError> {
    model.check()?;
    let h = &trace.header;
    let n = placement.nodes().len();
    if speeds.len() != n || speeds.iter().any(|s| !(s.is_finite() && *s > 0.0)) {
        return Err(PlanError::InvalidInput(format!(
            "{} node speeds for {n} nodes (each must be positive)",
            speeds.len()
        )));
    }
    let remote: Vec<bool> = placement
        .nodes()
        .iter()
        .map(|node| node.addr != NodeAddr::Local)
        .collect();
    let mut r = SimReport {
        layers: h.moe_layers.clone(),
        layer_node_pairs: vec![vec![0; n]; h.moe_layers.len()],
        node_pairs: vec![0; n],
        node_rows: vec![0; n],
        wire_bytes: 0,
        steps: trace.steps().count() as u64,
        tokens: trace.n_tokens(),
        compute_s: 0.0,
        network_s: 0.0,
        speeds: speeds.to_vec(),
    };
    let row_bytes = h.hidden as u64 * model.wire_bytes;
    replay(trace, placement, |slot, _, work| {
        let mut compute_us = 0f64;
        let mut layer_bytes = 0u64;
        let mut any_remote = false;
        for w in work {
            let i = usize::from(w.node.0);
            let (pairs, rows) = (w.routes.len() as u64, w.rows.len() as u64);
            r.layer_node_pairs[slot][i] += pairs;
            r.node_pairs[i] += pairs;
            r.node_rows[i] += rows;
            compute_us = compute_us.max(pairs as f64 * model.pair_us / speeds[i]);
            if remote[i] {
                any_remote = true;
                let request = FRAME_OVERHEAD_BYTES
                    + rows * (row_bytes + TOKEN_WIRE_BYTES)
                    + pairs * ROUTE_WIRE_BYTES;
                let reply = FRAME_OVERHEAD_BYTES + rows * row_bytes;
                layer_bytes += request + reply;
            }
        }
        r.wire_bytes += layer_bytes;
        r.compute_s += compute_us * 1e-6;
        if any_remote {
            r.network_s +=
                2.0 * model.latency_ms * 1e-3 + layer_bytes as f64 * model.us_per_byte() * 1e-6;
        }
    })?;
    Ok(r)
}

/// mean(load / speed) / max(load / speed); 1 when nothing is loaded.
pub fn balance_factor(node_load: &[f64], speeds: &[f64]) -> f64 {
    let norm: Vec<f64> = node_load.iter().zip(speeds).map(|(l, s)| l / s).collect();
    let max = norm.iter().copied().fold(0.0, f64::max);
    if max <= 0.0 || norm.is_empty() {
        return 1.0;
    }
    norm.iter().sum::<f64>() / norm.len() as f64 / max
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trace::{TraceHeader, TraceRecord};

    #[test]
    fn a_hand_checked_tiny_trace() {
        // 4 experts, k = 2, one MoE layer (1), hidden 10; node a owns 0-1, b owns 1-3 (1 is
        // a replica). Step 0: tokens (0,1), (0,2); step 1: token (1,3).
        let trace = Trace {
            header: TraceHeader {
                n_experts: 4,
                k: 2,
                hidden: 10,
                expert_bytes: 0,
                moe_layers: vec![1],
            },
            records: vec![
                TraceRecord {
                    step: 0,
                    layer: 1,
                    experts: vec![0, 1, 0, 2],
                },
                TraceRecord {
                    step: 1,
                    layer: 1,
                    experts: vec![1, 3],
                },
            ],
        };
        let text = "[[node]]\nname = \"a\"\naddr = \"local\"\nshards = \"0-1\"\n\
                    [[node]]\nname = \"b\"\naddr = \"127.0.0.1:1\"\nshards = \"1-3\"\n";
        let placement = Placement::parse(text, &[1], 4).unwrap();
        let model = CostModel {
            pair_us: 100.0,
            link_gbit: 8e-6,
            latency_ms: 1.0,
            wire_bytes: 4,
            router_us_per_kib: 0.0,
        };
        let r = simulate(&trace, &placement, &[1.0, 0.5], &model).unwrap();
        // Step 0: a gets (t0,e0), (t1,e0) first (single owner), b gets (t1,e2); then the
        // replicated (t0,e1) goes to the less-loaded b (1 < 2). a: 2 pairs, 2 rows;
        // b: 2 pairs, 2 rows. Step 1: b gets (t0,e3); (t0,e1) goes to a (0 < 1).
        assert_eq!(r.node_pairs, vec![3, 3]);
        assert_eq!(r.node_rows, vec![3, 3]);
        assert_eq!(r.layer_node_pairs, vec![vec![3, 3]]);
        assert_eq!((r.steps, r.tokens), (2, 3));
        // Bytes, b only (a is local): step 0 request 64 + 2 × (40 + 4) + 2 × 8 = 168, reply
        // 64 + 80 = 144; step 1 request 64 + 44 + 8 = 116, reply 104. Total 532.
        assert_eq!(r.wire_bytes, 168 + 144 + 116 + 104);
        // Compute: step 0 max(2 × 100 / 1, 2 × 100 / 0.5) = 400 µs; step 1 max(100, 200) =
        // 200 µs. Network: link 8e-6 Gbit/s = 1000 B/s; step 0 2 ms + 312 ms, step 1 2 ms +
        // 220 ms.
        assert!((r.compute_s - 600e-6).abs() < 1e-12, "{}", r.compute_s);
        assert!(
            (r.network_s - (0.004 + 0.532)).abs() < 1e-9,
            "{}",
            r.network_s
        );
        assert!((r.mean_step_ms() - (0.6 + 536.0) / 2.0).abs() < 1e-6);
        assert_eq!(r.layer_max_mean(0), (3, 3.0));
        // Node b is half as fast: normalized loads 3 and 6, balance 4.5 / 6.
        assert!((r.balance()[0] - 0.75).abs() < 1e-12);
    }

    #[test]
    fn mismatched_placements_and_speeds_are_refused() {
        let trace = Trace {
            header: TraceHeader {
                n_experts: 4,
                k: 2,
                hidden: 10,
                expert_bytes: 0,
                moe_layers: vec![1],
            },
            records: vec![],
        };
        let p = Placement::parse(
            "[[node]]\nname = \"a\"\naddr = \"local\"\nshards = \"0-7\"\n",
            &[1],
            8,
        )
        .unwrap();
        let m = CostModel::for_expert_bytes(1000, DEFAULT_MEM_GBPS);
        assert!(simulate(&trace, &p, &[1.0], &m).is_err());
        let p = Placement::parse(
            "[[node]]\nname = \"a\"\naddr = \"local\"\nshards = \"0-3\"\n",
            &[1],
            4,
        )
        .unwrap();
        assert!(simulate(&trace, &p, &[1.0, 1.0], &m).is_err());
        assert!(simulate(&trace, &p, &[1.0], &m).is_ok());
    }
}
