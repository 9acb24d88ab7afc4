//! The data path of the router's link to one expert node: blocking I/O on the connection's
//! socket, shared by the engine thread, the link's watcher thread and its actor, with no
//! task hand-off on a step's way.
//!
//! The engine thread seals and writes each step's request itself ([`LinkShared::dispatch`])
//! and, while it waits for the replies, reads the connection itself ([`LinkShared::wait`]):
//! it polls the socket for up to `REPLY_SPIN` before it sleeps in `read`, so a reply is read
//! by the thread that needs it, usually without a wake-up. Whenever the engine is not
//! waiting and has sent no step for `WATCH_AFTER_IDLE`, the link's watcher thread reads what
//! comes (heartbeat answers, re-placement acks, a reply the engine will find on its channel,
//! the connection's end). Every frame, whoever reads it,
//! goes through one router: replies to their step's channel, the rest to the actor
//! ([`LinkEvent`]).

use std::collections::HashMap;
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TryRecvError};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use moe_cluster::wire::{
    await_readable, Connection, ExpertReply, ExpertRequest, FrameReader, FrameWriter, Message,
    ModelShape, SessionMac, PEER_TIMEOUT,
};
use moe_cluster::ClusterError;

use crate::telemetry::{ErrorKind, LinkEnd, PeerMetrics};

/// How long the engine thread polls for a reply (yielding its core between polls) before it
/// sleeps on the socket: a reply that comes sooner is taken without a thread wake-up, which
/// costs tens of microseconds per MoE layer (measured ~40 µs on a 2-vCPU VM).
pub const REPLY_SPIN: Duration = Duration::from_micros(1_000);
/// The watcher reads the connection only when the engine is not waiting on it and has sent no
/// step for this long (while steps flow, the engine reads every frame).
pub const WATCH_AFTER_IDLE: Duration = Duration::from_millis(100);
/// How long the watcher sleeps or waits for bytes at a time.
pub const WATCH_NAP: Duration = Duration::from_millis(50);
/// Where a step's reply goes.
pub type ReplyTx = SyncSender<Result<ExpertReply, String>>;
/// Where a step's reply comes from.
pub type ReplyRx = Receiver<Result<ExpertReply, String>>;

/// What the link's I/O tells its actor.
pub enum LinkEvent {
    /// A frame on connection `gen` that is not a step's reply.
    Frame(u64, Message),
    /// Connection `gen` ended, for a reason of `kind`.
    Closed(u64, String, ErrorKind),
}

/// One authenticated connection: its socket, and the two sealed halves.
pub struct LinkConn {
    /// Which connection of the link this is.
    pub gen: u64,
    socket: TcpStream,
    reader: Mutex<FrameReader<TcpStream>>,
    writer: Mutex<FrameWriter<TcpStream>>,
    closed: AtomicBool,
}

/// `m`'s guard, also after a panic elsewhere poisoned it (the data stays consistent: every
/// critical section here is a plain read or write).
pub(super) fn locked<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl LinkConn {
    /// Wraps a stream whose handshake gave `mac`.
    pub fn new(
        gen: u64,
        stream: TcpStream,
        mac: SessionMac,
        shape: ModelShape,
    ) -> Result<Self, ClusterError> {
        let socket = stream.try_clone().map_err(ClusterError::WireIo)?;
        let (reader, writer) = Connection::new(stream, mac, shape).split_blocking(PEER_TIMEOUT)?;
        Ok(Self {
            gen,
            socket,
            reader: Mutex::new(reader),
            writer: Mutex::new(writer),
            closed: AtomicBool::new(false),
        })
    }

    /// Seals and writes one message; the frame's length.
    pub fn send(&self, message: &Message) -> Result<usize, ClusterError> {
        locked(&self.writer).write_message_blocking(message)
    }

    /// Ends the connection: a thread blocked reading it wakes with an error.
    pub fn shutdown(&self) {
        self.closed.store(true, Ordering::SeqCst);
        let _ = self.socket.shutdown(std::net::Shutdown::Both);
    }
}

/// What the engine thread, the watcher and the actor share of a link.
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
    /// The link's metrics.
    pub metrics: PeerMetrics,
    /// Set while up; cleared (before `pending` is failed) when the link goes down.
    conn: Mutex<Option<Arc<LinkConn>>>,
    /// Steps awaiting a reply, with when they were written.
    pending: Mutex<HashMap<u64, (ReplyTx, Instant)>>,
    /// When the live connection last delivered a frame.
    heard: Mutex<Instant>,
    /// When the last step was written.
    last_dispatch: Mutex<Instant>,
    /// The engine thread is in [`LinkShared::wait`], reading the connection itself.
    engine_reads: AtomicBool,
    /// The actor's inbox for everything but replies.
    events: OnceLock<Box<dyn Fn(LinkEvent) + Send + Sync>>,
}

impl std::fmt::Debug for LinkShared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LinkShared")
            .field("name", &self.name)
            .field("up", &self.up)
            .finish()
    }
}

impl LinkShared {
    /// A link to node `name`, not connected yet.
    pub fn new(name: &str) -> Self {
        let metrics = PeerMetrics::new(name, LinkEnd::Router);
        metrics.set_up(false);
        metrics.set_in_flight(0);
        let now = Instant::now();
        Self {
            name: name.to_string(),
            up: false.into(),
            last_error: Mutex::new("not connected yet".into()),
            refused: false.into(),
            metrics,
            conn: Mutex::new(None),
            pending: Mutex::new(HashMap::new()),
            heard: Mutex::new(now),
            last_dispatch: Mutex::new(now),
            engine_reads: AtomicBool::new(false),
            events: OnceLock::new(),
        }
    }

    /// Where the link's I/O reports frames that are not replies and the connection's end
    /// (set once, by the actor).
    pub fn set_events(&self, sink: Box<dyn Fn(LinkEvent) + Send + Sync>) {
        let _ = self.events.set(sink);
    }

    fn event(&self, e: LinkEvent) {
        if let Some(sink) = self.events.get() {
            sink(e);
        }
    }

    /// Makes `conn` the live connection and starts its watcher.
    pub fn connected(self: &Arc<Self>, conn: Arc<LinkConn>) -> std::io::Result<()> {
        *locked(&self.heard) = Instant::now();
        *locked(&self.conn) = Some(conn.clone());
        let link = self.clone();
        std::thread::Builder::new()
            .name(format!("moe-link-{}", self.name))
            .spawn(move || link.watch(&conn))
            .map(|_| ())
    }

    /// Ends the live connection (if any) and fails every step in flight with `reason`.
    pub fn disconnect(&self, reason: &str) {
        if let Some(conn) = locked(&self.conn).take() {
            conn.shutdown();
        }
        // No new step joins `pending` once the connection is gone.
        for (_, (tx, _)) in locked(&self.pending).drain() {
            let _ = tx.send(Err(reason.to_string()));
        }
        self.metrics.set_in_flight(0);
    }

    /// The live connection, while the link is up.
    pub fn conn(&self) -> Option<Arc<LinkConn>> {
        locked(&self.conn).clone()
    }

    /// Seals and writes one step's request on the calling thread; its reply, or why there is
    /// none, goes to `tx`. `Err` when the write itself failed (the step has its error
    /// already): the caller resets the link.
    pub fn dispatch(&self, req: ExpertRequest, tx: ReplyTx) -> Result<(), String> {
        let step = req.step_id;
        let conn = {
            let conn = locked(&self.conn);
            let Some(c) = conn.as_ref() else {
                let why = locked(&self.last_error).clone();
                let _ = tx.send(Err(format!("node {} is down: {why}", self.name)));
                return Ok(());
            };
            let mut pending = locked(&self.pending);
            pending.insert(step, (tx, Instant::now()));
            self.metrics.set_in_flight(pending.len());
            c.clone()
        };
        *locked(&self.last_dispatch) = Instant::now();
        match conn.send(&Message::ExpertRequest(req)) {
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

    /// Waits until `deadline` for the reply on `rx`, reading the connection meanwhile (unless
    /// the watcher is reading it, which routes the reply to `rx` alike).
    pub fn wait(
        &self,
        rx: &ReplyRx,
        deadline: Instant,
    ) -> Result<Result<ExpertReply, String>, RecvTimeoutError> {
        self.engine_reads.store(true, Ordering::SeqCst);
        let result = self.wait_reading(rx, deadline);
        self.engine_reads.store(false, Ordering::SeqCst);
        result
    }

    fn wait_reading(
        &self,
        rx: &ReplyRx,
        deadline: Instant,
    ) -> Result<Result<ExpertReply, String>, RecvTimeoutError> {
        loop {
            match rx.try_recv() {
                Ok(v) => return Ok(v),
                Err(TryRecvError::Disconnected) => return Err(RecvTimeoutError::Disconnected),
                Err(TryRecvError::Empty) => {}
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(RecvTimeoutError::Timeout);
            }
            let Some(conn) = self.conn() else {
                // Down: the failure is delivered (or about to be).
                return rx.recv_timeout(deadline - now);
            };
            let Ok(mut reader) = conn.reader.try_lock() else {
                std::thread::yield_now();
                continue;
            };
            // The watcher may have routed it just before the lock was free.
            if let Ok(v) = rx.try_recv() {
                return Ok(v);
            }
            let _ = await_readable(&conn.socket, REPLY_SPIN);
            let frame = reader.read_frame_before(deadline);
            let opened = frame.as_ref().map(|f| (f.len(), reader.open(f)));
            drop(reader);
            match opened {
                Ok((len, message)) => self.route(&conn, len, message),
                Err(e) => {
                    self.lost(&conn, format!("connection lost: {e}"), ErrorKind::Closed);
                    return rx.recv_timeout(deadline.saturating_duration_since(Instant::now()));
                }
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

    /// Where a frame read from `conn` goes.
    fn route(&self, conn: &LinkConn, len: usize, message: Result<Message, ClusterError>) {
        self.metrics.frame_received(len);
        *locked(&self.heard) = Instant::now();
        match message {
            Ok(Message::ExpertReply(reply)) => self.deliver(reply.step_id, Ok(reply)),
            Ok(Message::Error(e)) if e.step_id != 0 => {
                self.metrics.error(ErrorKind::StepRefused);
                let reason = format!("node {} refused the step: {}", self.name, e.message);
                self.deliver(e.step_id, Err(reason));
            }
            Ok(other) => self.event(LinkEvent::Frame(conn.gen, other)),
            Err(e) => self.lost(conn, format!("bad frame: {e}"), ErrorKind::BadFrame),
        }
    }

    /// `conn` cannot be read any more: it is shut and the actor told (once).
    fn lost(&self, conn: &LinkConn, reason: String, kind: ErrorKind) {
        if !conn.closed.swap(true, Ordering::SeqCst) {
            let _ = conn.socket.shutdown(std::net::Shutdown::Both);
            self.event(LinkEvent::Closed(conn.gen, reason, kind));
        }
    }

    /// How long the link has been silent (a node answers heartbeats while it computes).
    pub fn silence(&self) -> Duration {
        locked(&self.heard).elapsed()
    }

    /// The watcher of `conn`: reads it while the engine does not, until it ends.
    fn watch(&self, conn: &LinkConn) {
        while !conn.closed.load(Ordering::SeqCst) {
            let busy = self.engine_reads.load(Ordering::SeqCst)
                || locked(&self.last_dispatch).elapsed() < WATCH_AFTER_IDLE;
            if busy {
                std::thread::sleep(WATCH_NAP);
                continue;
            }
            // Bytes (or the end) within a nap? A blocking peek with a timeout.
            let readable = conn.socket.set_read_timeout(Some(WATCH_NAP)).is_ok()
                && conn.socket.peek(&mut [0u8; 1]).is_ok();
            if !readable {
                continue;
            }
            let mut reader = locked(&conn.reader);
            // The engine may have read them meanwhile.
            if !await_readable(&conn.socket, Duration::ZERO).unwrap_or(true) {
                continue;
            }
            let frame = reader.read_frame_before(Instant::now() + PEER_TIMEOUT);
            let opened = frame.as_ref().map(|f| (f.len(), reader.open(f)));
            drop(reader);
            match opened {
                Ok((len, message)) => self.route(conn, len, message),
                Err(e) => self.lost(conn, format!("connection lost: {e}"), ErrorKind::Closed),
            }
        }
    }
}
