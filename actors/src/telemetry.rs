//! Prometheus metrics: every metric name, its description, the `/metrics` endpoint, and the
//! typed helpers the rest of the binary calls.
//!
//! This module decides names, units, label sets and histogram buckets; callers only say what
//! happened (`layer_step_done(layer, seconds)`, `PeerMetrics::frame_sent(bytes)`). Without
//! `--metrics-addr` no recorder is installed and every helper is a no-op.
//!
//! Conventions: base units (seconds, bytes, tokens), counters end in `_total`, and label
//! values are bounded: node names (`peer`, `node`), layer numbers (`layer`), and the small
//! enums [`ErrorKind`] and [`Outcome`]. No label ever carries an expert id (a Kimi K2.5
//! cluster has 23k (layer, expert) pairs). Every series also carries the global labels
//! `role` (router, expert, run) and `node_name` (this process's node name).
//!
//! Which process exports what:
//!
//! ```text
//! router / run   moe_requests_*, moe_*_tokens_total, TTFT, inter-token latency, KV cache,
//!                moe_layer_step_seconds, moe_routed_tokens_total, moe_layer_load_imbalance_ratio,
//!                per peer: round trips, steps in flight, up, bytes/frames, errors
//! expert         moe_expert_compute_seconds, moe_expert_tokens_total,
//!                per peer (the routers): up (open connections), bytes/frames, errors
//! ```
//!
//! The HTTP endpoint is deliberately tiny (`GET /metrics`, one response per connection,
//! bounded request size, time and connection count); [`render`] gives the same text to an
//! HTTP server that wants to mount it itself.

use std::io::Write as _;
use std::net::SocketAddr;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::Context;
use metrics::{
    counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram, Counter,
    Gauge, Histogram, Unit,
};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Build and node identity: always 1, labels `version`.
pub const NODE_INFO: &str = "moe_node_info";

/// Generation requests finished, label `outcome` (ok, error).
pub const REQUESTS_TOTAL: &str = "moe_requests_total";
/// Generation requests running now.
pub const REQUESTS_IN_FLIGHT: &str = "moe_requests_in_flight";
/// Prompt tokens of started requests.
pub const PROMPT_TOKENS_TOTAL: &str = "moe_prompt_tokens_total";
/// Prompt tokens whose KV came from the prefix cache instead of being computed.
pub const PROMPT_TOKENS_CACHED_TOTAL: &str = "moe_prompt_tokens_cached_total";
/// Draft tokens proposed for speculative decoding.
pub const DRAFT_TOKENS_TOTAL: &str = "moe_draft_tokens_total";
/// Draft tokens accepted (equal to what plain decoding samples).
pub const DRAFT_ACCEPTED_TOKENS_TOTAL: &str = "moe_draft_accepted_tokens_total";
/// Decode forward calls (a step emits 1 + its accepted draft tokens).
pub const DECODE_STEPS_TOTAL: &str = "moe_decode_steps_total";
/// Tokens generated (sampled).
pub const GENERATED_TOKENS_TOTAL: &str = "moe_generated_tokens_total";
/// From the start of a generation to its first sampled token.
pub const TIME_TO_FIRST_TOKEN_SECONDS: &str = "moe_time_to_first_token_seconds";
/// Between consecutive sampled tokens of one generation.
pub const INTER_TOKEN_LATENCY_SECONDS: &str = "moe_inter_token_latency_seconds";
/// KV cache positions in use, summed over running generations.
pub const KV_CACHE_USED_TOKENS: &str = "moe_kv_cache_used_tokens";
/// KV cache positions reserved, summed over running generations.
pub const KV_CACHE_CAPACITY_TOKENS: &str = "moe_kv_cache_capacity_tokens";
/// KV cache bytes held, summed over running generations.
pub const KV_CACHE_BYTES: &str = "moe_kv_cache_bytes";

/// Router: one MoE layer step (dispatch, local experts, every reply), label `layer`.
pub const LAYER_STEP_SECONDS: &str = "moe_layer_step_seconds";
/// Router: tokens (batch rows) sent to a node, labels `node`, `layer`.
pub const ROUTED_TOKENS_TOTAL: &str = "moe_routed_tokens_total";
/// Router: last step's max/mean tokens over the nodes owning experts of a layer, label `layer`
/// (1 = perfectly balanced).
pub const LAYER_LOAD_IMBALANCE_RATIO: &str = "moe_layer_load_imbalance_ratio";
/// Router: steps sent to a peer and not answered yet, label `peer`.
pub const STEPS_IN_FLIGHT: &str = "moe_steps_in_flight";
/// Router: from handing a step to a peer's link to its reply, label `peer`.
pub const DISPATCH_ROUND_TRIP_SECONDS: &str = "moe_dispatch_round_trip_seconds";

/// 1 while the link to a peer is up (router); open connections from a peer (expert).
pub const PEER_UP: &str = "moe_peer_up";
/// Errors on the link with a peer, labels `peer`, `kind` ([`ErrorKind`]).
pub const PEER_ERRORS_TOTAL: &str = "moe_peer_errors_total";
/// Frame bytes written to a peer (length prefix, archive, sequence number, MAC).
pub const PEER_SENT_BYTES_TOTAL: &str = "moe_peer_sent_bytes_total";
/// Frame bytes read from a peer.
pub const PEER_RECEIVED_BYTES_TOTAL: &str = "moe_peer_received_bytes_total";
/// Frames written to a peer.
pub const PEER_SENT_FRAMES_TOTAL: &str = "moe_peer_sent_frames_total";
/// Frames read from a peer.
pub const PEER_RECEIVED_FRAMES_TOTAL: &str = "moe_peer_received_frames_total";

/// Expert node (and a router's `local` node): computing one request's experts, label `layer`.
pub const EXPERT_COMPUTE_SECONDS: &str = "moe_expert_compute_seconds";
/// Expert node: tokens computed, label `layer`.
pub const EXPERT_TOKENS_TOTAL: &str = "moe_expert_tokens_total";

/// Histogram buckets of every `_seconds` histogram: 50 µs to 60 s.
pub const LATENCY_BUCKETS_SECONDS: &[f64] = &[
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];
/// Upkeep (histogram draining) interval of the recorder.
pub const UPKEEP_INTERVAL_MS: u64 = 5_000;
/// Largest scrape request read before answering.
pub const METRICS_REQUEST_BYTES_MAX: usize = 8 * 1024;
/// Time a scraper gets to send its request.
pub const METRICS_REQUEST_TIMEOUT_MS: u64 = 5_000;
/// Concurrent scrape connections served.
pub const METRICS_CONNECTIONS_MAX: usize = 16;

/// Peer label of a connection whose handshake failed before the peer named itself.
pub const UNKNOWN_PEER: &str = "unknown";

/// Why a link with a peer failed (the `kind` label of [`PEER_ERRORS_TOTAL`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// TCP connect failed or timed out.
    Connect,
    /// The handshake failed or was refused (secret, model, version).
    Handshake,
    /// The peer was silent for longer than `PEER_TIMEOUT_MS`.
    Timeout,
    /// The connection closed or broke.
    Closed,
    /// A frame failed its checks (length, MAC, sequence, archive, limits) or was unexpected.
    BadFrame,
    /// The peer answered a step with an error.
    StepRefused,
    /// A step got no reply within `STEP_TIMEOUT_MS`.
    StepTimeout,
    /// A frame could not be written: the connection broke or the peer took nothing for
    /// `PEER_TIMEOUT_MS`.
    SendFailed,
    /// Computing a request failed on this node.
    Compute,
}

impl ErrorKind {
    /// Every kind, for pre-registering zero counters.
    pub const ALL: [ErrorKind; 9] = [
        Self::Connect,
        Self::Handshake,
        Self::Timeout,
        Self::Closed,
        Self::BadFrame,
        Self::StepRefused,
        Self::StepTimeout,
        Self::SendFailed,
        Self::Compute,
    ];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Connect => "connect",
            Self::Handshake => "handshake",
            Self::Timeout => "timeout",
            Self::Closed => "closed",
            Self::BadFrame => "bad_frame",
            Self::StepRefused => "step_refused",
            Self::StepTimeout => "step_timeout",
            Self::SendFailed => "send_failed",
            Self::Compute => "compute",
        }
    }
}

/// How a request ended (the `outcome` label of [`REQUESTS_TOTAL`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Finished normally.
    Ok,
    /// Failed (the error went to the client).
    Error,
}

impl Outcome {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::Error => "error",
        }
    }
}

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// `--metrics-addr`, shared by the roles and the model-running commands.
#[derive(Debug, Clone, clap::Args)]
pub struct MetricsArgs {
    /// Serve Prometheus metrics at http://ADDR/metrics (port 0 picks a free port; the bound
    /// address is printed as `metrics on IP:PORT`).
    #[arg(long, value_name = "ADDR")]
    pub metrics_addr: Option<SocketAddr>,
}

impl MetricsArgs {
    /// Installs the exporter when `--metrics-addr` is given and prints `metrics on IP:PORT`.
    pub fn start(&self, role: &str, node_name: &str) -> anyhow::Result<Option<SocketAddr>> {
        let Some(addr) = self.metrics_addr else {
            return Ok(None);
        };
        let bound = install(addr, role, node_name)?;
        let mut out = std::io::stdout().lock();
        writeln!(out, "metrics on {bound}")?;
        out.flush()?;
        Ok(Some(bound))
    }
}

/// Installs the global recorder and serves `/metrics` on `addr` from a thread of its own;
/// returns the bound address.
pub fn install(addr: SocketAddr, role: &str, node_name: &str) -> anyhow::Result<SocketAddr> {
    let listener = std::net::TcpListener::bind(addr)
        .with_context(|| format!("binding the metrics address {addr}"))?;
    let bound = listener.local_addr()?;
    listener.set_nonblocking(true)?;
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), LATENCY_BUCKETS_SECONDS)?
        .add_global_label("role", role)
        .add_global_label("node_name", node_name)
        .install_recorder()
        .context("installing the metrics recorder")?;
    HANDLE
        .set(handle.clone())
        .map_err(|_| anyhow::anyhow!("metrics already installed"))?;
    describe_all();
    gauge!(NODE_INFO, "version" => env!("CARGO_PKG_VERSION")).set(1.0);
    if role != "expert" {
        for outcome in [Outcome::Ok, Outcome::Error] {
            counter!(REQUESTS_TOTAL, "outcome" => outcome.as_str()).absolute(0);
        }
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    std::thread::Builder::new()
        .name("metrics-http".into())
        .spawn(move || {
            rt.block_on(async move {
                let upkeep = handle.clone();
                tokio::spawn(async move {
                    loop {
                        tokio::time::sleep(Duration::from_millis(UPKEEP_INTERVAL_MS)).await;
                        upkeep.run_upkeep();
                    }
                });
                if let Err(e) = serve(listener, handle).await {
                    eprintln!("metrics endpoint stopped: {e:#}");
                }
            })
        })?;
    Ok(bound)
}

/// The current metrics in Prometheus text format, if a recorder is installed (for an HTTP
/// server that serves `/metrics` on its own port).
#[allow(
    dead_code,
    reason = "for the HTTP API to mount /metrics on its own port"
)]
pub fn render() -> Option<String> {
    HANDLE.get().map(PrometheusHandle::render)
}

async fn serve(listener: std::net::TcpListener, handle: PrometheusHandle) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::from_std(listener)?;
    let slots = std::sync::Arc::new(tokio::sync::Semaphore::new(METRICS_CONNECTIONS_MAX));
    loop {
        let (stream, _) = listener.accept().await?;
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            continue;
        };
        let handle = handle.clone();
        tokio::spawn(async move {
            let _ = tokio::time::timeout(
                Duration::from_millis(METRICS_REQUEST_TIMEOUT_MS),
                answer(stream, &handle),
            )
            .await;
            drop(permit);
        });
    }
}

/// Reads one request head and answers it: the metrics for `GET /metrics` (or `/`), 404
/// for other paths, 400 for anything that is not a GET within the size limit.
async fn answer(
    mut stream: tokio::net::TcpStream,
    handle: &PrometheusHandle,
) -> std::io::Result<()> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = stream.read(&mut chunk).await?;
        if n == 0 || buf.len() + n > METRICS_REQUEST_BYTES_MAX {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let head = String::from_utf8_lossy(&buf);
    let mut parts = head.split_whitespace();
    let (status, body) = match (parts.next(), parts.next()) {
        (Some("GET"), Some(path)) => match path.split('?').next() {
            Some("/metrics" | "/") => ("200 OK", handle.render()),
            _ => (
                "404 Not Found",
                "not found; metrics are at /metrics\n".to_string(),
            ),
        },
        _ => ("400 Bad Request", "bad request\n".to_string()),
    };
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(body.as_bytes()).await?;
    stream.shutdown().await
}

fn describe_all() {
    describe_gauge!(NODE_INFO, "Always 1; labels carry the moe-node version.");
    describe_counter!(REQUESTS_TOTAL, "Generation requests finished, by outcome.");
    describe_gauge!(REQUESTS_IN_FLIGHT, "Generation requests running now.");
    describe_counter!(PROMPT_TOKENS_TOTAL, "Prompt tokens of started requests.");
    describe_counter!(
        PROMPT_TOKENS_CACHED_TOTAL,
        "Prompt tokens reused from the prefix cache (not computed)."
    );
    describe_counter!(
        DRAFT_TOKENS_TOTAL,
        "Draft tokens proposed (speculative decoding)."
    );
    describe_counter!(
        DRAFT_ACCEPTED_TOKENS_TOTAL,
        "Draft tokens accepted (speculative decoding)."
    );
    describe_counter!(
        DECODE_STEPS_TOTAL,
        "Decode forward calls; generated tokens over this is tokens per step."
    );
    describe_counter!(GENERATED_TOKENS_TOTAL, "Tokens generated.");
    describe_histogram!(
        TIME_TO_FIRST_TOKEN_SECONDS,
        Unit::Seconds,
        "From the start of a generation to its first token."
    );
    describe_histogram!(
        INTER_TOKEN_LATENCY_SECONDS,
        Unit::Seconds,
        "Between consecutive tokens of a generation."
    );
    describe_gauge!(
        KV_CACHE_USED_TOKENS,
        "KV cache positions in use over running generations."
    );
    describe_gauge!(
        KV_CACHE_CAPACITY_TOKENS,
        "KV cache positions reserved over running generations."
    );
    describe_gauge!(
        KV_CACHE_BYTES,
        Unit::Bytes,
        "KV cache bytes held over running generations."
    );
    describe_histogram!(
        LAYER_STEP_SECONDS,
        Unit::Seconds,
        "One MoE layer step on the router: dispatch, local experts, all replies."
    );
    describe_counter!(
        ROUTED_TOKENS_TOTAL,
        "Tokens sent to each node, per MoE layer."
    );
    describe_gauge!(
        LAYER_LOAD_IMBALANCE_RATIO,
        "Last step's max/mean tokens over the nodes owning experts of the layer."
    );
    describe_gauge!(
        STEPS_IN_FLIGHT,
        "Steps sent to a peer and not answered yet."
    );
    describe_histogram!(
        DISPATCH_ROUND_TRIP_SECONDS,
        Unit::Seconds,
        "From handing a step to a peer link to its reply."
    );
    describe_gauge!(
        PEER_UP,
        "Router: 1 while the link to the peer is up. Expert: open connections from the peer."
    );
    describe_counter!(
        PEER_ERRORS_TOTAL,
        "Errors on the link with a peer, by kind."
    );
    describe_counter!(
        PEER_SENT_BYTES_TOTAL,
        Unit::Bytes,
        "Frame bytes written to a peer."
    );
    describe_counter!(
        PEER_RECEIVED_BYTES_TOTAL,
        Unit::Bytes,
        "Frame bytes read from a peer."
    );
    describe_counter!(PEER_SENT_FRAMES_TOTAL, "Frames written to a peer.");
    describe_counter!(PEER_RECEIVED_FRAMES_TOTAL, "Frames read from a peer.");
    describe_histogram!(
        EXPERT_COMPUTE_SECONDS,
        Unit::Seconds,
        "Computing one request's routed experts on this node."
    );
    describe_counter!(
        EXPERT_TOKENS_TOTAL,
        "Tokens whose routed experts this node computed."
    );
}

/// Which end of a link a [`PeerMetrics`] describes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkEnd {
    /// The router's link to an expert node: also steps in flight and round trips.
    Router,
    /// An expert node's connection from a router.
    Expert,
}

/// Counters and gauges of one link with one peer, registered once (with zero error counters
/// for every [`ErrorKind`], so dashboards see the series before the first error).
#[derive(Clone)]
pub struct PeerMetrics {
    peer: String,
    sent_bytes: Counter,
    sent_frames: Counter,
    received_bytes: Counter,
    received_frames: Counter,
    up: Gauge,
    /// Router end only.
    dispatch: Option<(Gauge, Histogram)>,
}

impl PeerMetrics {
    /// The metrics of the link with `peer`, seen from `end`.
    pub fn new(peer: &str, end: LinkEnd) -> Self {
        for kind in ErrorKind::ALL {
            counter!(PEER_ERRORS_TOTAL, "peer" => peer.to_string(), "kind" => kind.as_str())
                .absolute(0);
        }
        let p = || peer.to_string();
        let dispatch = (end == LinkEnd::Router).then(|| {
            (
                gauge!(STEPS_IN_FLIGHT, "peer" => p()),
                histogram!(DISPATCH_ROUND_TRIP_SECONDS, "peer" => p()),
            )
        });
        Self {
            peer: p(),
            sent_bytes: counter!(PEER_SENT_BYTES_TOTAL, "peer" => p()),
            sent_frames: counter!(PEER_SENT_FRAMES_TOTAL, "peer" => p()),
            received_bytes: counter!(PEER_RECEIVED_BYTES_TOTAL, "peer" => p()),
            received_frames: counter!(PEER_RECEIVED_FRAMES_TOTAL, "peer" => p()),
            up: gauge!(PEER_UP, "peer" => p()),
            dispatch,
        }
    }

    /// One frame of `bytes` (whole frame) written.
    pub fn frame_sent(&self, bytes: usize) {
        self.sent_frames.increment(1);
        self.sent_bytes.increment(bytes as u64);
    }

    /// One frame of `bytes` read.
    pub fn frame_received(&self, bytes: usize) {
        self.received_frames.increment(1);
        self.received_bytes.increment(bytes as u64);
    }

    /// Router: the link is up (`true`) or down.
    pub fn set_up(&self, up: bool) {
        self.up.set(if up { 1.0 } else { 0.0 });
    }

    /// Expert: a connection from the peer opened (+1) or closed (-1).
    pub fn connection_opened(&self) {
        self.up.increment(1.0);
    }

    /// See [`Self::connection_opened`].
    pub fn connection_closed(&self) {
        self.up.decrement(1.0);
    }

    /// Router: steps awaiting a reply now.
    pub fn set_in_flight(&self, steps: usize) {
        if let Some((in_flight, _)) = &self.dispatch {
            in_flight.set(steps as f64);
        }
    }

    /// Router: a step's reply came `seconds` after it was handed to the link.
    pub fn round_trip(&self, seconds: f64) {
        if let Some((_, round_trip)) = &self.dispatch {
            round_trip.record(seconds);
        }
    }

    /// One error of `kind`.
    pub fn error(&self, kind: ErrorKind) {
        peer_error(&self.peer, kind);
    }
}

/// One error of `kind` on the link with `peer` (for failures before a [`PeerMetrics`] exists).
pub fn peer_error(peer: &str, kind: ErrorKind) {
    counter!(PEER_ERRORS_TOTAL, "peer" => peer.to_string(), "kind" => kind.as_str()).increment(1);
}

/// Registers the zero error counters of [`UNKNOWN_PEER`] (an expert node does this at start).
pub fn register_unknown_peer() {
    for kind in ErrorKind::ALL {
        counter!(PEER_ERRORS_TOTAL, "peer" => UNKNOWN_PEER, "kind" => kind.as_str()).absolute(0);
    }
}

/// Router: one MoE layer step took `seconds`.
pub fn layer_step_done(layer: usize, seconds: f64) {
    histogram!(LAYER_STEP_SECONDS, "layer" => layer.to_string()).record(seconds);
}

/// Router: a step's dispatch plan for `layer`, as tokens per node over every node that owns
/// experts of the layer (zeros included). Counts the routed tokens and sets the layer's
/// load imbalance (max/mean; 1 when no node got any token).
pub fn dispatch_planned(layer: usize, tokens_per_node: &[(&str, usize)]) {
    let layer_label = layer.to_string();
    for &(node, tokens) in tokens_per_node {
        counter!(ROUTED_TOKENS_TOTAL, "node" => node.to_string(), "layer" => layer_label.clone())
            .increment(tokens as u64);
    }
    gauge!(LAYER_LOAD_IMBALANCE_RATIO, "layer" => layer_label)
        .set(load_imbalance(tokens_per_node.iter().map(|t| t.1)));
}

/// max/mean of `tokens`; 1 for no nodes or no tokens.
pub fn load_imbalance(tokens: impl Iterator<Item = usize> + Clone) -> f64 {
    let n = tokens.clone().count();
    let sum: usize = tokens.clone().sum();
    let max = tokens.max().unwrap_or(0);
    if n == 0 || sum == 0 {
        return 1.0;
    }
    max as f64 / (sum as f64 / n as f64)
}

/// Expert: computed `tokens` tokens' experts of `layer` in `seconds`.
pub fn expert_compute_done(layer: usize, tokens: usize, seconds: f64) {
    let l = layer.to_string();
    histogram!(EXPERT_COMPUTE_SECONDS, "layer" => l.clone()).record(seconds);
    counter!(EXPERT_TOKENS_TOTAL, "layer" => l).increment(tokens as u64);
}

/// One generation's request metrics. Created when it starts; [`Self::token`] per sampled
/// token; [`Self::finish`] when it succeeds. Dropped without `finish`, it counts as an error.
/// KV cache gauges hold the sum over running generations.
pub struct Generation {
    started: Instant,
    last_token: Option<Instant>,
    finished: bool,
    kv: (f64, f64, f64),
}

impl Generation {
    /// A generation with `prompt_tokens` prompt tokens starts now.
    pub fn start(prompt_tokens: usize) -> Self {
        gauge!(REQUESTS_IN_FLIGHT).increment(1.0);
        counter!(PROMPT_TOKENS_TOTAL).increment(prompt_tokens as u64);
        Self {
            started: Instant::now(),
            last_token: None,
            finished: false,
            kv: (0.0, 0.0, 0.0),
        }
    }

    /// A decode step verified `drafted` draft tokens (0 without speculation).
    pub fn decode_step(&mut self, drafted: usize) {
        counter!(DECODE_STEPS_TOTAL).increment(1);
        counter!(DRAFT_TOKENS_TOTAL).increment(drafted as u64);
    }

    /// A draft token was accepted.
    pub fn draft_accepted(&mut self) {
        counter!(DRAFT_ACCEPTED_TOKENS_TOTAL).increment(1);
    }

    /// `tokens` of the prompt came from the prefix cache.
    pub fn prompt_cached(&mut self, tokens: usize) {
        counter!(PROMPT_TOKENS_CACHED_TOTAL).increment(tokens as u64);
    }

    /// One token was sampled.
    pub fn token(&mut self) {
        let now = Instant::now();
        match self.last_token {
            None => histogram!(TIME_TO_FIRST_TOKEN_SECONDS)
                .record(now.duration_since(self.started).as_secs_f64()),
            Some(prev) => histogram!(INTER_TOKEN_LATENCY_SECONDS)
                .record(now.duration_since(prev).as_secs_f64()),
        }
        self.last_token = Some(now);
        counter!(GENERATED_TOKENS_TOTAL).increment(1);
    }

    /// This generation's KV cache now holds `used` of `capacity` positions in `bytes`.
    pub fn kv_cache(&mut self, used: usize, capacity: usize, bytes: usize) {
        let new = (used as f64, capacity as f64, bytes as f64);
        gauge!(KV_CACHE_USED_TOKENS).increment(new.0 - self.kv.0);
        gauge!(KV_CACHE_CAPACITY_TOKENS).increment(new.1 - self.kv.1);
        gauge!(KV_CACHE_BYTES).increment(new.2 - self.kv.2);
        self.kv = new;
    }

    /// The generation succeeded.
    pub fn finish(mut self) {
        self.finished = true;
    }
}

impl Drop for Generation {
    fn drop(&mut self) {
        self.kv_cache(0, 0, 0);
        gauge!(REQUESTS_IN_FLIGHT).decrement(1.0);
        let outcome = if self.finished {
            Outcome::Ok
        } else {
            Outcome::Error
        };
        counter!(REQUESTS_TOTAL, "outcome" => outcome.as_str()).increment(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn load_imbalance_is_max_over_mean() {
        assert_eq!(load_imbalance([4usize, 4, 4].into_iter()), 1.0);
        assert_eq!(load_imbalance([6usize, 0, 0].into_iter()), 3.0);
        assert_eq!(load_imbalance([3usize, 1].into_iter()), 1.5);
        assert_eq!(load_imbalance([0usize, 0].into_iter()), 1.0);
        assert_eq!(load_imbalance(std::iter::empty()), 1.0);
    }

    #[test]
    fn names_follow_the_conventions() {
        let counters = [
            REQUESTS_TOTAL,
            PROMPT_TOKENS_TOTAL,
            PROMPT_TOKENS_CACHED_TOTAL,
            DRAFT_TOKENS_TOTAL,
            DRAFT_ACCEPTED_TOKENS_TOTAL,
            DECODE_STEPS_TOTAL,
            GENERATED_TOKENS_TOTAL,
            ROUTED_TOKENS_TOTAL,
            PEER_ERRORS_TOTAL,
            PEER_SENT_BYTES_TOTAL,
            PEER_RECEIVED_BYTES_TOTAL,
            PEER_SENT_FRAMES_TOTAL,
            PEER_RECEIVED_FRAMES_TOTAL,
            EXPERT_TOKENS_TOTAL,
        ];
        for c in counters {
            assert!(c.starts_with("moe_") && c.ends_with("_total"), "{c}");
        }
        let histograms = [
            TIME_TO_FIRST_TOKEN_SECONDS,
            INTER_TOKEN_LATENCY_SECONDS,
            LAYER_STEP_SECONDS,
            DISPATCH_ROUND_TRIP_SECONDS,
            EXPERT_COMPUTE_SECONDS,
        ];
        for h in histograms {
            assert!(h.starts_with("moe_") && h.ends_with("_seconds"), "{h}");
        }
        assert!(LATENCY_BUCKETS_SECONDS.windows(2).all(|w| w[0] < w[1]));
    }

    #[test]
    fn endpoint_serves_every_family_and_refuses_other_paths() {
        let addr = install("127.0.0.1:0".parse().unwrap(), "test", "t1").unwrap();
        let peer = PeerMetrics::new("e1", LinkEnd::Router);
        peer.frame_sent(100);
        peer.round_trip(0.01);
        layer_step_done(1, 0.002);
        dispatch_planned(1, &[("e1", 3), ("e2", 1)]);
        expert_compute_done(1, 4, 0.001);
        let mut g = Generation::start(5);
        g.kv_cache(5, 16, 1024);
        g.token();
        g.token();
        g.finish();
        let get = |path: &str| {
            use std::io::{Read, Write};
            let mut s = std::net::TcpStream::connect(addr).unwrap();
            write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
            let mut out = String::new();
            s.read_to_string(&mut out).unwrap();
            out
        };
        let text = get("/metrics");
        assert!(text.starts_with("HTTP/1.1 200 OK"), "{text}");
        for name in [
            REQUESTS_TOTAL,
            GENERATED_TOKENS_TOTAL,
            PEER_SENT_BYTES_TOTAL,
            ROUTED_TOKENS_TOTAL,
            LAYER_LOAD_IMBALANCE_RATIO,
            EXPERT_TOKENS_TOTAL,
        ] {
            assert!(text.contains(name), "{name} missing from:\n{text}");
        }
        for name in [
            LAYER_STEP_SECONDS,
            DISPATCH_ROUND_TRIP_SECONDS,
            TIME_TO_FIRST_TOKEN_SECONDS,
            INTER_TOKEN_LATENCY_SECONDS,
            EXPERT_COMPUTE_SECONDS,
        ] {
            assert!(
                text.contains(&format!("{name}_bucket{{")),
                "{name} is not a histogram in:\n{text}"
            );
        }
        assert!(
            text.contains(
                "moe_layer_load_imbalance_ratio{role=\"test\",node_name=\"t1\",layer=\"1\"} 1.5"
            ),
            "{text}"
        );
        assert!(text.contains("moe_peer_errors_total{role=\"test\",node_name=\"t1\",peer=\"e1\",kind=\"bad_frame\"} 0"), "{text}");
        assert!(get("/other").starts_with("HTTP/1.1 404"));
    }
}
