//! `PeerLinkActor`: the router's link to one expert node.
//!
//! It connects and authenticates (client side of the handshake), sends heartbeats every
//! `HEARTBEAT_INTERVAL_MS`, declares the peer down when its connection closes or it is
//! silent for `PEER_TIMEOUT_MS` with no step in flight (a node answers heartbeats between
//! steps; while one computes, the step's own deadline applies), fails every in-flight step at that moment with an error
//! naming the node, and keeps reconnecting with a capped backoff until the node is back.
//!
//! The data path does not cross the actor: the engine thread seals and writes a step's
//! request itself ([`LinkShared::dispatch`]), and the connection's reader task hands each
//! reply straight to the step's channel. The actor owns the connection's life (connect,
//! heartbeats, silence, down, reconnect) and the control frames (re-placement).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use moe_cluster::wire::{
    client_handshake, write_shared, Connection, ExpertReply, ExpertRequest, HandshakeConfig,
    Heartbeat, Message, PeerInfo, Reassign, ReassignAck, SharedWriter, HEARTBEAT_INTERVAL_MS,
    PEER_TIMEOUT_MS,
};
use moe_model::LayerExperts;
use ractor::{Actor, ActorProcessingErr, ActorRef};
use tokio::io::WriteHalf;
use tokio::net::TcpStream;

use crate::telemetry::{ErrorKind, LinkEnd, PeerMetrics};

/// Longest wait between reconnection attempts.
pub const RECONNECT_BACKOFF_MS_MAX: u64 = 1_000;
/// Time allowed for TCP connect.
pub const CONNECT_TIMEOUT_MS: u64 = 2_000;

/// Where a step's reply goes.
pub type ReplyTx = std::sync::mpsc::SyncSender<Result<ExpertReply, String>>;

type LinkWriter = SharedWriter<WriteHalf<TcpStream>>;

/// What the engine thread, the reader task and the actor share of a link.
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
    /// Set while up; cleared (before `pending` is failed) when the link goes down.
    conn: Mutex<Option<LinkWriter>>,
    /// Steps awaiting a reply, with when they were written.
    pending: Mutex<HashMap<u64, (ReplyTx, Instant)>>,
    /// When the live connection last delivered a frame.
    heard: Mutex<Instant>,
    metrics: PeerMetrics,
}

impl std::fmt::Debug for LinkShared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LinkShared")
            .field("name", &self.name)
            .field("up", &self.up)
            .finish()
    }
}

fn locked<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl LinkShared {
    /// A link to node `name`, not connected yet.
    pub fn new(name: &str) -> Self {
        let metrics = PeerMetrics::new(name, LinkEnd::Router);
        metrics.set_up(false);
        metrics.set_in_flight(0);
        Self {
            name: name.to_string(),
            up: false.into(),
            last_error: Mutex::new("not connected yet".into()),
            refused: false.into(),
            conn: Mutex::new(None),
            pending: Mutex::new(HashMap::new()),
            heard: Mutex::new(Instant::now()),
            metrics,
        }
    }

    /// Seals and writes one step's request on the calling thread (`rt` drives the write);
    /// its reply, or why there is none, goes to `tx`. `Err` when the write itself failed (the
    /// step has its error already): the caller resets the link.
    pub fn dispatch(
        &self,
        rt: &tokio::runtime::Runtime,
        req: ExpertRequest,
        tx: ReplyTx,
    ) -> Result<(), String> {
        let step = req.step_id;
        let writer = {
            let conn = locked(&self.conn);
            let Some(writer) = conn.as_ref() else {
                let why = locked(&self.last_error).clone();
                let _ = tx.send(Err(format!("node {} is down: {why}", self.name)));
                return Ok(());
            };
            let mut pending = locked(&self.pending);
            pending.insert(step, (tx, Instant::now()));
            self.metrics.set_in_flight(pending.len());
            writer.clone()
        };
        let message = Message::ExpertRequest(req);
        match rt.block_on(write_shared(&writer, &message, STEP_WRITE_TIMEOUT)) {
            Ok(bytes) => {
                self.metrics.frame_sent(bytes);
                Ok(())
            }
            Err(e) => {
                self.metrics.error(ErrorKind::SendFailed);
                let reason = format!("node {}: sending the step failed: {e}", self.name);
                self.deliver(step, Err(reason.clone()));
                Err(reason)
            }
        }
    }

    /// Hands a step's reply (or failure) to its waiter, if it still waits.
    fn deliver(&self, step: u64, result: Result<ExpertReply, String>) {
        let mut pending = locked(&self.pending);
        if let Some((tx, sent)) = pending.remove(&step) {
            if result.is_ok() {
                self.metrics.round_trip(sent.elapsed().as_secs_f64());
            }
            self.metrics.set_in_flight(pending.len());
            let _ = tx.send(result);
        }
    }

    /// Fails every step in flight with `reason`.
    fn fail_all(&self, reason: &str) {
        for (_, (tx, _)) in locked(&self.pending).drain() {
            let _ = tx.send(Err(reason.to_string()));
        }
        self.metrics.set_in_flight(0);
    }

    /// How long the link has been silent, when no step waits on it (`None` while one does).
    fn idle_silence(&self) -> Option<Duration> {
        let pending = locked(&self.pending);
        pending.is_empty().then(|| locked(&self.heard).elapsed())
    }

    /// The live connection's writer, while the link is up.
    fn writer(&self) -> Option<LinkWriter> {
        locked(&self.conn).clone()
    }
}

/// Longest wait for a node to take one request frame.
const STEP_WRITE_TIMEOUT: Duration = Duration::from_millis(PEER_TIMEOUT_MS);

/// Messages of [`PeerLinkActor`].
pub enum PeerLinkMsg {
    /// Periodic: heartbeat, silence check, reconnect.
    Tick,
    /// A connection attempt `gen` succeeded.
    Connected(u64, LinkWriter, tokio::task::AbortHandle),
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

/// The actor's view of the live connection.
struct Conn {
    gen: u64,
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
    reassigns: HashMap<u64, std::sync::mpsc::SyncSender<Result<ReassignAck, String>>>,
    next_attempt: Instant,
    backoff_ms: u64,
    heartbeats: u64,
    last_heartbeat: Instant,
}

/// The router's link to one expert node.
pub struct PeerLinkActor;

impl PeerLinkState {
    fn fail_all(&mut self, reason: &str) {
        self.shared.fail_all(reason);
        for (_, tx) in self.reassigns.drain() {
            let _ = tx.send(Err(reason.to_string()));
        }
    }

    fn down(&mut self, reason: String, kind: ErrorKind) {
        if let Some(c) = self.conn.take() {
            c.reader.abort();
            eprintln!("link to {} down: {reason}", self.shared.name);
        }
        // No new step may join `pending` once it is failed below.
        *locked(&self.shared.conn) = None;
        let metrics = &self.shared.metrics;
        metrics.error(kind);
        metrics.set_up(false);
        self.shared.up.store(false, Ordering::SeqCst);
        *locked(&self.shared.last_error) = reason.clone();
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
                    let silent = st.shared.idle_silence();
                    if silent.is_some_and(|s| s > Duration::from_millis(PEER_TIMEOUT_MS)) {
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
                        if let Some(writer) = st.shared.writer() {
                            // Off the actor: a step's frame may hold the writer for a while.
                            let shared = st.shared.clone();
                            tokio::spawn(async move {
                                let within = Duration::from_millis(PEER_TIMEOUT_MS);
                                if let Ok(bytes) = write_shared(&writer, &heartbeat, within).await {
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
                        st.shared.clone(),
                        st.expected.clone(),
                    ));
                }
            }
            PeerLinkMsg::Connected(gen, writer, reader) => {
                st.connecting = false;
                if gen != st.gen {
                    reader.abort();
                    return Ok(());
                }
                st.conn = Some(Conn { gen, reader });
                *locked(&st.shared.conn) = Some(writer);
                *locked(&st.shared.heard) = Instant::now();
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
                match frame {
                    Message::Heartbeat(_) => {}
                    Message::ReassignAck(ack) => {
                        if let Some(tx) = st.reassigns.remove(&ack.epoch) {
                            let _ = tx.send(Ok(ack));
                        }
                    }
                    Message::Error(e) => {
                        // An error about the connection (step 0): every step in flight fails
                        // with its words (the reader delivered those naming a step).
                        st.shared.metrics.error(ErrorKind::StepRefused);
                        let reason =
                            format!("node {} refused the step: {}", st.shared.name, e.message);
                        st.fail_all(&reason);
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
            PeerLinkMsg::Reassign(r, tx) => match st.shared.writer() {
                None => {
                    let _ = tx.send(Err(format!("node {} is down", st.shared.name)));
                }
                Some(writer) => {
                    let within = Duration::from_millis(PEER_TIMEOUT_MS);
                    match write_shared(&writer, &Message::Reassign(r.clone()), within).await {
                        Ok(bytes) => {
                            st.shared.metrics.frame_sent(bytes);
                            st.reassigns.insert(r.epoch, tx);
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
    shared: Arc<LinkShared>,
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
            let reader_link = link.clone();
            let reader = tokio::spawn(async move {
                let metrics = &shared.metrics;
                let (reason, kind) = loop {
                    let frame = match frames.read_frame().await {
                        Ok(f) => f,
                        Err(e) => break (format!("connection lost: {e}"), ErrorKind::Closed),
                    };
                    metrics.frame_received(frame.len());
                    *locked(&shared.heard) = Instant::now();
                    let message = match frames.open(&frame) {
                        Ok(m) => m,
                        Err(e) => break (format!("bad frame: {e}"), ErrorKind::BadFrame),
                    };
                    // Replies go straight to their steps; the rest is the actor's.
                    match message {
                        Message::ExpertReply(reply) => shared.deliver(reply.step_id, Ok(reply)),
                        Message::Error(e) if e.step_id != 0 => {
                            metrics.error(ErrorKind::StepRefused);
                            let reason =
                                format!("node {} refused the step: {}", shared.name, e.message);
                            shared.deliver(e.step_id, Err(reason));
                        }
                        other => {
                            if reader_link.cast(PeerLinkMsg::Frame(gen, other)).is_err() {
                                return;
                            }
                        }
                    }
                };
                let _ = reader_link.cast(PeerLinkMsg::Closed(gen, reason, kind));
            });
            let writer = std::sync::Arc::new(tokio::sync::Mutex::new(writer));
            let _ = link.cast(PeerLinkMsg::Connected(gen, writer, reader.abort_handle()));
        }
    }
}
