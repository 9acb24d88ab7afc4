//! One authenticated connection, for both ends: after the handshake,
//! [`Connection::split_blocking`] gives a [`FrameReader`] (read a frame whole before a
//! deadline, then open it: MAC, sequence, decryption, archive and shape checks) and a
//! [`FrameWriter`] (seal and write) over two handles of one blocking TCP socket. The expert
//! node serves a connection on one thread (read, compute, reply) and the router's engine
//! thread writes its steps and reads their replies itself, so a frame is sealed, written,
//! read and opened by the thread that needs it, with no hand-off to a task; both ends frame,
//! authenticate and count bytes alike.
//!
//! It leaves to its callers: timeouts, what a message means, and what a failure counts as
//! (a read error is the stream's; an open error is the peer's frame).

use std::net::TcpStream;
use std::time::{Duration, Instant};

use super::frame::{decode_frame, encode_frame, RecvMac, SendMac, SessionMac};
use super::io::{read_frame_sync, write_frame_sync, Deadline};
use super::limits::FRAME_BYTES_MAX;
use super::message::{Message, ModelShape};
use crate::ClusterError;

/// A stream whose handshake has succeeded, with the session's keys and the model shape the
/// peer's frames are checked against.
pub struct Connection<S> {
    stream: S,
    mac: SessionMac,
    shape: ModelShape,
}

impl<S> Connection<S> {
    /// Wraps a stream after `client_handshake` / `server_handshake` returned `mac`.
    pub fn new(stream: S, mac: SessionMac, shape: ModelShape) -> Self {
        Self { stream, mac, shape }
    }
}

impl Connection<TcpStream> {
    /// Blocking halves over one TCP stream (two handles of the same socket); each write gives
    /// up after `write_timeout` without progress (a peer that stopped reading).
    pub fn split_blocking(
        self,
        write_timeout: Duration,
    ) -> Result<(FrameReader<TcpStream>, FrameWriter<TcpStream>), ClusterError> {
        self.stream
            .set_nonblocking(false)
            .map_err(ClusterError::WireIo)?;
        self.stream
            .set_write_timeout(Some(write_timeout))
            .map_err(ClusterError::WireIo)?;
        let write = self.stream.try_clone().map_err(ClusterError::WireIo)?;
        Ok((
            FrameReader {
                stream: self.stream,
                mac: self.mac.recv,
                shape: self.shape,
            },
            FrameWriter {
                stream: write,
                mac: self.mac.send,
            },
        ))
    }
}

impl FrameReader<TcpStream> {
    /// The stream, to wait on.
    pub fn stream(&self) -> &TcpStream {
        &self.stream
    }

    /// Reads the next whole frame before `deadline` (its length checked before allocating).
    /// An error here is the stream's: closed, truncated, too slow, or a length over the limit.
    pub fn read_frame_before(&mut self, deadline: Instant) -> Result<Vec<u8>, ClusterError> {
        let mut stream = Deadline {
            stream: &self.stream,
            deadline,
        };
        read_frame_sync(&mut stream, FRAME_BYTES_MAX)
    }
}

impl FrameWriter<TcpStream> {
    /// Seals, writes and flushes one message; the frame's length in bytes.
    pub fn write_message_blocking(&mut self, message: &Message) -> Result<usize, ClusterError> {
        let frame = encode_frame(message, &mut self.mac)?;
        write_frame_sync(&mut self.stream, &frame)?;
        Ok(frame.len())
    }
}

/// The receiving half: frames of at most [`FRAME_BYTES_MAX`] bytes, opened with the peer's
/// direction key.
pub struct FrameReader<R> {
    stream: R,
    mac: RecvMac,
    shape: ModelShape,
}

impl<R> FrameReader<R> {
    /// Checks and decodes a frame [`FrameReader::read_frame_before`] returned. An error here
    /// is the peer's frame: MAC, sequence, archive or limits.
    pub fn open(&mut self, frame: &[u8]) -> Result<Message, ClusterError> {
        decode_frame(frame, &mut self.mac, &self.shape)
    }
}

/// The sending half: frames sealed with this end's direction key.
pub struct FrameWriter<W> {
    stream: W,
    mac: SendMac,
}
