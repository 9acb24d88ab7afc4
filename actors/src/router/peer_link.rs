//! `PeerLinkActor`: the life of the router's link to one expert node.
//!
//! It connects and authenticates (client side of the handshake), sends heartbeats every
//! `HEARTBEAT_INTERVAL_MS`, declares the peer down when its connection ends or it is silent
//! for `PEER_TIMEOUT_MS` (a node answers heartbeats while it computes), fails every in-flight
//! step at that
//! moment with an error naming the node, and keeps reconnecting with a capped backoff until
//! the node is back. Steps do not cross the actor: `link_io.rs` is their path. The actor
//! gets the frames that are not replies (heartbeat answers, re-placement acks, errors about
//! the connection) and the connection's end as [`LinkEvent`]s.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use moe_cluster::wire::{
    client_handshake, HandshakeConfig, Heartbeat, Message, PeerInfo, Reassign, ReassignAck,
    HEARTBEAT_INTERVAL_MS, PEER_TIMEOUT, PEER_TIMEOUT_MS,
};
use moe_model::LayerExperts;
use ractor::{Actor, ActorProcessingErr, ActorRef};
use tokio::net::TcpStream;

use super::link_io::{locked, LinkConn, LinkEvent, LinkShared};
use crate::telemetry::ErrorKind;

/// Longest wait between reconnection attempts.
pub const RECONNECT_BACKOFF_MS_MAX: u64 = 1_000;
/// Time allowed for TCP connect.
pub const CONNECT_TIMEOUT_MS: u64 = 2_000;

/// Messages of [`PeerLinkActor`].
pub enum PeerLinkMsg {
    /// Periodic: heartbeat, silence check, reconnect.
    Tick,
    /// A connection attempt `gen` succeeded.
    Connected(Arc<LinkConn>),
    /// A connection attempt `gen` failed; `true` when the peer refused the handshake.
    ConnectFailed(u64, String, bool),
    /// What the link's I/O reports.
    Io(LinkEvent),
    /// The engine gave up on this node (step timeout): drop the connection and reconnect.
    Reset(String),
    /// Send one phase of a live re-placement; the node's ack (or the failure) goes back.
    Reassign(
        Reassign,
        std::sync::mpsc::SyncSender<Result<ReassignAck, String>>,
    ),
    /// What the placement now gives this node (checked on every reconnect).
    SetExpected(Arc<LayerExperts>),
}

/// State of one link.
pub struct PeerLinkState {
    addr: SocketAddr,
    hs: HandshakeConfig,
    expected: Arc<LayerExperts>,
    shared: Arc<LinkShared>,
    /// The live connection's `gen`.
    conn: Option<u64>,
    connecting: bool,
    gen: u64,
    reassigns: HashMap<u64, std::sync::mpsc::SyncSender<Result<ReassignAck, String>>>,
    next_attempt: Instant,
    backoff_ms: u64,
    heartbeats: u64,
    last_heartbeat: Instant,
}

/// The router's link to one expert node.
pub struct PeerLinkActor;

impl PeerLinkState {
    fn down(&mut self, reason: String, kind: ErrorKind) {
        if self.conn.take().is_some() {
            eprintln!("link to {} down: {reason}", self.shared.name);
        }
        let metrics = &self.shared.metrics;
        metrics.error(kind);
        metrics.set_up(false);
        self.shared.up.store(false, Ordering::SeqCst);
        *locked(&self.shared.last_error) = reason.clone();
        let reason = format!("node {}: {reason}", self.shared.name);
        self.shared.disconnect(&reason);
        for (_, tx) in self.reassigns.drain() {
            let _ = tx.send(Err(reason.clone()));
        }
    }
}

impl Actor for PeerLinkActor {
    type Msg = PeerLinkMsg;
    type State = PeerLinkState;
    type Arguments = (
        SocketAddr,
        HandshakeConfig,
        Arc<LinkShared>,
        Arc<LayerExperts>,
    );

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        (addr, hs, shared, expected): Self::Arguments,
    ) -> Result<Self::State, ActorProcessingErr> {
        myself.send_interval(Duration::from_millis(HEARTBEAT_INTERVAL_MS / 4), || {
            PeerLinkMsg::Tick
        });
        let _ = myself.cast(PeerLinkMsg::Tick);
        let events = myself.clone();
        shared.set_events(Box::new(move |e| {
            let _ = events.cast(PeerLinkMsg::Io(e));
        }));
        let now = Instant::now();
        Ok(PeerLinkState {
            addr,
            hs,
            expected,
            shared,
            conn: None,
            connecting: false,
            gen: 0,
            reassigns: HashMap::new(),
            next_attempt: now,
            backoff_ms: 50,
            heartbeats: 0,
            last_heartbeat: now,
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        msg: Self::Msg,
        st: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            PeerLinkMsg::Tick => {
                let now = Instant::now();
                if st.conn.is_some() {
                    if st.shared.silence() > PEER_TIMEOUT {
                        st.down(
                            format!("silent for more than {PEER_TIMEOUT_MS} ms"),
                            ErrorKind::Timeout,
                        );
                    } else if now.duration_since(st.last_heartbeat)
                        >= Duration::from_millis(HEARTBEAT_INTERVAL_MS)
                    {
                        st.heartbeats += 1;
                        st.last_heartbeat = now;
                        let heartbeat = Message::Heartbeat(Heartbeat {
                            counter: st.heartbeats,
                        });
                        if let Some(conn) = st.shared.conn() {
                            // Off the actor: a step's frame may hold the writer for a while.
                            let shared = st.shared.clone();
                            tokio::task::spawn_blocking(move || {
                                if let Ok(bytes) = conn.send(&heartbeat) {
                                    shared.metrics.frame_sent(bytes);
                                }
                            });
                        }
                    }
                } else if !st.connecting && now >= st.next_attempt {
                    st.connecting = true;
                    st.gen += 1;
                    tokio::spawn(connect(
                        myself.clone(),
                        st.gen,
                        st.addr,
                        st.hs.clone(),
                        st.expected.clone(),
                    ));
                }
            }
            PeerLinkMsg::Connected(conn) => {
                st.connecting = false;
                if conn.gen != st.gen {
                    conn.shutdown();
                    return Ok(());
                }
                let gen = conn.gen;
                if let Err(e) = st.shared.connected(conn) {
                    st.conn = Some(gen);
                    st.down(format!("cannot start its watcher: {e}"), ErrorKind::Connect);
                    return Ok(());
                }
                st.conn = Some(gen);
                st.backoff_ms = 50;
                st.shared.up.store(true, Ordering::SeqCst);
                st.shared.refused.store(false, Ordering::SeqCst);
                st.shared.metrics.set_up(true);
                eprintln!("link to {} up ({})", st.shared.name, st.addr);
            }
            PeerLinkMsg::ConnectFailed(gen, reason, refused) => {
                if gen == st.gen {
                    st.shared.metrics.error(if refused {
                        ErrorKind::Handshake
                    } else {
                        ErrorKind::Connect
                    });
                    st.shared.refused.store(refused, Ordering::SeqCst);
                    st.connecting = false;
                    let changed = *locked(&st.shared.last_error) != reason;
                    if changed {
                        eprintln!(
                            "cannot connect to {} at {}: {reason}",
                            st.shared.name, st.addr
                        );
                    }
                    *locked(&st.shared.last_error) = reason;
                    st.next_attempt = Instant::now() + Duration::from_millis(st.backoff_ms);
                    st.backoff_ms = (st.backoff_ms * 2).min(RECONNECT_BACKOFF_MS_MAX);
                }
            }
            PeerLinkMsg::Io(LinkEvent::Frame(gen, frame)) => {
                if st.conn != Some(gen) {
                    return Ok(());
                }
                match frame {
                    Message::Heartbeat(_) => {}
                    Message::ReassignAck(ack) => {
                        if let Some(tx) = st.reassigns.remove(&ack.epoch) {
                            let _ = tx.send(Ok(ack));
                        }
                    }
                    Message::Error(e) => {
                        // An error about the connection (step 0; those naming a step went to
                        // it): the connection is dropped and every step in flight fails with
                        // the node's words.
                        st.shared.metrics.error(ErrorKind::StepRefused);
                        st.down(format!("refused: {}", e.message), ErrorKind::StepRefused);
                        st.next_attempt = Instant::now();
                    }
                    other => st.down(
                        format!("unexpected {} frame", other.kind()),
                        ErrorKind::BadFrame,
                    ),
                }
            }
            PeerLinkMsg::Io(LinkEvent::Closed(gen, reason, kind)) => {
                if st.conn == Some(gen) {
                    st.down(reason, kind);
                    st.next_attempt = Instant::now();
                }
            }
            PeerLinkMsg::Reset(reason) => {
                st.down(reason, ErrorKind::StepTimeout);
                st.next_attempt = Instant::now();
            }
            PeerLinkMsg::Reassign(r, tx) => match st.shared.conn() {
                None => {
                    let _ = tx.send(Err(format!("node {} is down", st.shared.name)));
                }
                Some(conn) => {
                    let epoch = r.epoch;
                    let sent = tokio::task::spawn_blocking(move || {
                        conn.send(&Message::Reassign(r)).map_err(|e| e.to_string())
                    })
                    .await
                    .unwrap_or_else(|e| Err(e.to_string()));
                    match sent {
                        Ok(bytes) => {
                            st.shared.metrics.frame_sent(bytes);
                            st.reassigns.insert(epoch, tx);
                        }
                        Err(e) => {
                            st.shared.metrics.error(ErrorKind::SendFailed);
                            let _ = tx.send(Err(format!(
                                "node {}: sending the re-placement failed: {e}",
                                st.shared.name
                            )));
                        }
                    }
                }
            },
            PeerLinkMsg::SetExpected(expected) => st.expected = expected,
        }
        Ok(())
    }
}

/// Checks that a peer owns at least what the placement gives it (`expected`: an entry for
/// every MoE layer).
fn check_shards(peer: &PeerInfo, n_experts: usize, expected: &LayerExperts) -> Result<(), String> {
    let owned = peer
        .shards
        .parse(n_experts, expected.n_layers(), |l| {
            expected.in_layer(l).is_some()
        })
        .map_err(|e| e.to_string())?;
    for (layer, want) in expected.iter() {
        let Some(has) = owned.in_layer(layer) else {
            continue;
        };
        let missing: Vec<usize> = want.iter().filter(|&e| !has.contains(e)).collect();
        if let Some(first) = missing.first() {
            return Err(format!(
                "node {} does not own what the placement gives it: {} experts of layer {layer} missing (first {first}); it owns {has}",
                peer.name.as_str(),
                missing.len()
            ));
        }
    }
    Ok(())
}

async fn connect(
    link: ActorRef<PeerLinkMsg>,
    gen: u64,
    addr: SocketAddr,
    hs: HandshakeConfig,
    expected: Arc<LayerExperts>,
) {
    let attempt = async {
        let mut stream = tokio::time::timeout(
            Duration::from_millis(CONNECT_TIMEOUT_MS),
            TcpStream::connect(addr),
        )
        .await
        .map_err(|_| {
            (
                format!("connect timed out after {CONNECT_TIMEOUT_MS} ms"),
                false,
            )
        })?
        .map_err(|e| (e.to_string(), false))?;
        let _ = stream.set_nodelay(true);
        let (peer, mac) = client_handshake(&mut stream, &hs)
            .await
            .map_err(|e| (e.to_string(), e.is_refusal()))?;
        check_shards(&peer, hs.shape.n_experts, &expected).map_err(|e| (e, true))?;
        Ok::<_, (String, bool)>((stream, mac))
    };
    match attempt.await {
        Err((reason, refused)) => {
            let _ = link.cast(PeerLinkMsg::ConnectFailed(gen, reason, refused));
        }
        Ok((stream, mac)) => {
            let conn = stream
                .into_std()
                .map_err(moe_cluster::ClusterError::WireIo)
                .and_then(|stream| LinkConn::new(gen, stream, mac, hs.shape));
            let _ = link.cast(match conn {
                Ok(conn) => PeerLinkMsg::Connected(Arc::new(conn)),
                Err(e) => PeerLinkMsg::ConnectFailed(gen, e.to_string(), false),
            });
        }
    }
}
