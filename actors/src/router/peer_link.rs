//! `PeerLinkActor`: the router's link to one expert node.
//!
//! It connects and authenticates (client side of the handshake), sends heartbeats every
//! `HEARTBEAT_INTERVAL_MS`, declares the peer down when its connection closes or it is
//! silent for `PEER_TIMEOUT_MS`, fails every in-flight step at that moment with an error
//! naming the node, and keeps reconnecting with a capped backoff until the node is back.
//! Steps arrive from the engine thread; replies go back on the step's own channel.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use moe_cluster::wire::{
    client_handshake, Connection, ExpertReply, ExpertRequest, HandshakeConfig, Heartbeat, Message,
    PeerInfo, Reassign, ReassignAck, HEARTBEAT_INTERVAL_MS, PEER_TIMEOUT_MS,
};
use moe_model::LayerExperts;
use ractor::{Actor, ActorProcessingErr, ActorRef};
use tokio::net::TcpStream;
use tokio::sync::mpsc;

use crate::telemetry::{ErrorKind, LinkEnd, PeerMetrics};

/// Frames queued for the link's writer.
pub const LINK_QUEUE_FRAMES_MAX: usize = 8;
/// Longest wait between reconnection attempts.
pub const RECONNECT_BACKOFF_MS_MAX: u64 = 1_000;
/// Time allowed for TCP connect.
pub const CONNECT_TIMEOUT_MS: u64 = 2_000;

/// Where a step's reply goes.
pub type ReplyTx = std::sync::mpsc::SyncSender<Result<ExpertReply, String>>;

/// What the engine thread can see of a link without asking the actor.
#[derive(Debug)]
pub struct LinkShared {
    /// The node's name.
    pub name: String,
    /// Whether the link is connected and authenticated.
    pub up: AtomicBool,
    /// Why it is down, if it is.
    pub last_error: Mutex<String>,
    /// The peer answered but refused the handshake (secret, model or version mismatch):
    /// retrying will not help until an operator fixes it.
    pub refused: AtomicBool,
}

/// Messages of [`PeerLinkActor`].
pub enum PeerLinkMsg {
    /// Send one step's request; the reply (or the failure) goes to the sender.
    Dispatch(Box<ExpertRequest>, ReplyTx),
    /// Periodic: heartbeat, silence check, reconnect.
    Tick,
    /// A connection attempt `gen` succeeded.
    Connected(u64, mpsc::Sender<Message>, tokio::task::AbortHandle),
    /// A connection attempt `gen` failed; `true` when the peer refused the handshake.
    ConnectFailed(u64, String, bool),
    /// A frame on connection `gen`.
    Frame(u64, Message),
    /// Connection `gen` closed, for a reason of `kind`.
    Closed(u64, String, ErrorKind),
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

struct Conn {
    gen: u64,
    tx: mpsc::Sender<Message>,
    reader: tokio::task::AbortHandle,
}

/// State of one link.
pub struct PeerLinkState {
    addr: SocketAddr,
    hs: HandshakeConfig,
    expected: Arc<LayerExperts>,
    shared: Arc<LinkShared>,
    conn: Option<Conn>,
    connecting: bool,
    gen: u64,
    /// Steps awaiting a reply, with when they were handed to the link.
    pending: HashMap<u64, (ReplyTx, Instant)>,
    reassigns: HashMap<u64, std::sync::mpsc::SyncSender<Result<ReassignAck, String>>>,
    metrics: PeerMetrics,
    last_heard: Instant,
    next_attempt: Instant,
    backoff_ms: u64,
    heartbeats: u64,
    last_heartbeat: Instant,
}

/// The router's link to one expert node.
pub struct PeerLinkActor;

impl PeerLinkState {
    fn fail_all(&mut self, reason: &str) {
        for (_, (tx, _)) in self.pending.drain() {
            let _ = tx.send(Err(reason.to_string()));
        }
        for (_, tx) in self.reassigns.drain() {
            let _ = tx.send(Err(reason.to_string()));
        }
        self.metrics.set_in_flight(0);
    }

    fn down(&mut self, reason: String, kind: ErrorKind) {
        if let Some(c) = self.conn.take() {
            c.reader.abort();
            eprintln!("link to {} down: {reason}", self.shared.name);
        }
        self.metrics.error(kind);
        self.metrics.set_up(false);
        self.shared.up.store(false, Ordering::SeqCst);
        *self
            .shared
            .last_error
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = reason.clone();
        self.fail_all(&format!("node {}: {reason}", self.shared.name));
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
        let now = Instant::now();
        let metrics = PeerMetrics::new(&shared.name, LinkEnd::Router);
        metrics.set_up(false);
        metrics.set_in_flight(0);
        Ok(PeerLinkState {
            addr,
            hs,
            expected,
            shared,
            conn: None,
            connecting: false,
            gen: 0,
            pending: HashMap::new(),
            reassigns: HashMap::new(),
            metrics,
            last_heard: now,
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
            PeerLinkMsg::Dispatch(req, tx) => match &st.conn {
                None => {
                    let why = st
                        .shared
                        .last_error
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .clone();
                    let _ = tx.send(Err(format!("node {} is down: {why}", st.shared.name)));
                }
                Some(c) => {
                    let step = req.step_id;
                    if c.tx.try_send(Message::ExpertRequest(*req)).is_err() {
                        st.metrics.error(ErrorKind::SendQueueFull);
                        let _ = tx.send(Err(format!(
                            "node {}: send queue full or closed",
                            st.shared.name
                        )));
                    } else {
                        st.pending.insert(step, (tx, Instant::now()));
                        st.metrics.set_in_flight(st.pending.len());
                    }
                }
            },
            PeerLinkMsg::Tick => {
                let now = Instant::now();
                if let Some(c) = &st.conn {
                    if now.duration_since(st.last_heard) > Duration::from_millis(PEER_TIMEOUT_MS) {
                        st.down(
                            format!("silent for more than {PEER_TIMEOUT_MS} ms"),
                            ErrorKind::Timeout,
                        );
                    } else if now.duration_since(st.last_heartbeat)
                        >= Duration::from_millis(HEARTBEAT_INTERVAL_MS)
                    {
                        st.heartbeats += 1;
                        st.last_heartbeat = now;
                        let _ = c.tx.try_send(Message::Heartbeat(Heartbeat {
                            counter: st.heartbeats,
                        }));
                    }
                } else if !st.connecting && now >= st.next_attempt {
                    st.connecting = true;
                    st.gen += 1;
                    tokio::spawn(connect(
                        myself.clone(),
                        st.gen,
                        st.addr,
                        st.hs.clone(),
                        st.metrics.clone(),
                        st.expected.clone(),
                    ));
                }
            }
            PeerLinkMsg::Connected(gen, tx, reader) => {
                st.connecting = false;
                if gen != st.gen {
                    reader.abort();
                    return Ok(());
                }
                st.conn = Some(Conn { gen, tx, reader });
                st.last_heard = Instant::now();
                st.backoff_ms = 50;
                st.shared.up.store(true, Ordering::SeqCst);
                st.shared.refused.store(false, Ordering::SeqCst);
                st.metrics.set_up(true);
                eprintln!("link to {} up ({})", st.shared.name, st.addr);
            }
            PeerLinkMsg::ConnectFailed(gen, reason, refused) => {
                if gen == st.gen {
                    st.metrics.error(if refused {
                        ErrorKind::Handshake
                    } else {
                        ErrorKind::Connect
                    });
                    st.shared.refused.store(refused, Ordering::SeqCst);
                    st.connecting = false;
                    let changed = *st
                        .shared
                        .last_error
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        != reason;
                    if changed {
                        eprintln!(
                            "cannot connect to {} at {}: {reason}",
                            st.shared.name, st.addr
                        );
                    }
                    *st.shared
                        .last_error
                        .lock()
                        .unwrap_or_else(|e| e.into_inner()) = reason;
                    st.next_attempt = Instant::now() + Duration::from_millis(st.backoff_ms);
                    st.backoff_ms = (st.backoff_ms * 2).min(RECONNECT_BACKOFF_MS_MAX);
                }
            }
            PeerLinkMsg::Frame(gen, frame) => {
                if st.conn.as_ref().map(|c| c.gen) != Some(gen) {
                    return Ok(());
                }
                st.last_heard = Instant::now();
                match frame {
                    Message::ExpertReply(reply) => {
                        if let Some((tx, sent)) = st.pending.remove(&reply.step_id) {
                            st.metrics.round_trip(sent.elapsed().as_secs_f64());
                            st.metrics.set_in_flight(st.pending.len());
                            let _ = tx.send(Ok(reply));
                        }
                    }
                    Message::Heartbeat(_) => {}
                    Message::ReassignAck(ack) => {
                        if let Some(tx) = st.reassigns.remove(&ack.epoch) {
                            let _ = tx.send(Ok(ack));
                        }
                    }
                    Message::Error(e) => {
                        // The node refused a request: fail that step (or, for an error about
                        // the connection, every step in flight) with its words.
                        st.metrics.error(ErrorKind::StepRefused);
                        let reason =
                            format!("node {} refused the step: {}", st.shared.name, e.message);
                        match st.pending.remove(&e.step_id) {
                            Some((tx, _)) if e.step_id != 0 => {
                                let _ = tx.send(Err(reason));
                                st.metrics.set_in_flight(st.pending.len());
                            }
                            _ => st.fail_all(&reason),
                        }
                    }
                    other => st.down(
                        format!("unexpected {} frame", other.kind()),
                        ErrorKind::BadFrame,
                    ),
                }
            }
            PeerLinkMsg::Closed(gen, reason, kind) => {
                if st.conn.as_ref().map(|c| c.gen) == Some(gen) {
                    st.down(reason, kind);
                    st.next_attempt = Instant::now();
                }
            }
            PeerLinkMsg::Reset(reason) => {
                st.down(reason, ErrorKind::StepTimeout);
                st.next_attempt = Instant::now();
            }
            PeerLinkMsg::Reassign(r, tx) => match &st.conn {
                None => {
                    let _ = tx.send(Err(format!("node {} is down", st.shared.name)));
                }
                Some(c) => {
                    let epoch = r.epoch;
                    if c.tx.try_send(Message::Reassign(r)).is_err() {
                        st.metrics.error(ErrorKind::SendQueueFull);
                        let _ = tx.send(Err(format!(
                            "node {}: send queue full or closed",
                            st.shared.name
                        )));
                    } else {
                        st.reassigns.insert(epoch, tx);
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
    metrics: PeerMetrics,
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
            let (mut frames, writer) = Connection::new(stream, mac, hs.shape).split();
            let (tx, rx) = mpsc::channel(LINK_QUEUE_FRAMES_MAX);
            let sent_metrics = metrics.clone();
            tokio::spawn(writer.write_loop(rx, move |bytes| sent_metrics.frame_sent(bytes)));
            let reader_link = link.clone();
            let reader = tokio::spawn(async move {
                let (reason, kind) = loop {
                    let frame = match frames.read_frame().await {
                        Ok(f) => f,
                        Err(e) => break (format!("connection lost: {e}"), ErrorKind::Closed),
                    };
                    metrics.frame_received(frame.len());
                    match frames.open(&frame) {
                        Ok(m) => {
                            if reader_link.cast(PeerLinkMsg::Frame(gen, m)).is_err() {
                                return;
                            }
                        }
                        Err(e) => break (format!("bad frame: {e}"), ErrorKind::BadFrame),
                    }
                };
                let _ = reader_link.cast(PeerLinkMsg::Closed(gen, reason, kind));
            });
            let _ = link.cast(PeerLinkMsg::Connected(gen, tx, reader.abort_handle()));
        }
    }
}
