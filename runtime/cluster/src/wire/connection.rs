//! One authenticated connection, for both ends: after the handshake, [`Connection::split`]
//! gives a [`FrameReader`] (read a frame within its limit, then open it: MAC, sequence,
//! decryption, archive and shape checks) and a [`FrameWriter`] (seal and write). Each end
//! shares its writer between the threads that answer ([`SharedWriter`], written through
//! [`write_shared`] within a deadline), so a frame is sealed and written by the thread that
//! made it, with no hand-off to a writer task. The expert node and the router's peer link use
//! the same two halves, so both ends frame, authenticate and count bytes alike. An expert
//! node serves each connection on one thread with blocking I/O
//! ([`Connection::split_blocking`]: read, compute, reply, with no task hand-off).
//!
//! It leaves to its callers: timeouts, what a message means, and what a failure counts as
//! (a read error is the stream's; an open error is the peer's frame).

use std::net::TcpStream;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncWrite, ReadHalf, WriteHalf};

use super::frame::{decode_frame, encode_frame, RecvMac, SendMac, SessionMac};
use super::io::{read_frame, read_frame_sync, write_frame, write_frame_sync, Deadline};
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

impl<S: AsyncRead + AsyncWrite> Connection<S> {
    /// The reading and the writing half, to be driven by separate tasks.
    pub fn split(self) -> (FrameReader<ReadHalf<S>>, FrameWriter<WriteHalf<S>>) {
        let (rd, wr) = tokio::io::split(self.stream);
        (
            FrameReader {
                stream: rd,
                mac: self.mac.recv,
                shape: self.shape,
            },
            FrameWriter {
                stream: wr,
                mac: self.mac.send,
            },
        )
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

    /// [`FrameReader::read_frame`] on a blocking stream, whole before `deadline`.
    pub fn read_frame_before(&mut self, deadline: Instant) -> Result<Vec<u8>, ClusterError> {
        let mut stream = Deadline {
            stream: &self.stream,
            deadline,
        };
        read_frame_sync(&mut stream, FRAME_BYTES_MAX)
    }
}

impl FrameWriter<TcpStream> {
    /// [`FrameWriter::write_message`] on a blocking stream.
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
    /// Checks and decodes a frame [`FrameReader::read_frame`] returned. An error here is the
    /// peer's frame: MAC, sequence, archive or limits.
    pub fn open(&mut self, frame: &[u8]) -> Result<Message, ClusterError> {
        decode_frame(frame, &mut self.mac, &self.shape)
    }
}

impl<R: AsyncRead + Unpin> FrameReader<R> {
    /// Reads the next whole frame (length checked before allocating). An error here is the
    /// stream's: closed, truncated, or a length over the limit.
    pub async fn read_frame(&mut self) -> Result<Vec<u8>, ClusterError> {
        read_frame(&mut self.stream, FRAME_BYTES_MAX).await
    }
}

/// The sending half: frames sealed with this end's direction key.
pub struct FrameWriter<W> {
    stream: W,
    mac: SendMac,
}

impl<W: AsyncWrite + Unpin> FrameWriter<W> {
    /// Seals, writes and flushes one message; returns the frame's length in bytes.
    pub async fn write_message(&mut self, message: &Message) -> Result<usize, ClusterError> {
        let frame = encode_frame(message, &mut self.mac)?;
        write_frame(&mut self.stream, &frame).await?;
        Ok(frame.len())
    }
}

/// A connection's writer, shared by the tasks and threads that send on it.
pub type SharedWriter<W> = Arc<tokio::sync::Mutex<FrameWriter<W>>>;

/// Seals and writes `message` through a shared writer (waiting for its turn), failing when
/// the whole takes longer than `within` (a peer that stopped reading); the frame's length.
pub async fn write_shared<W: AsyncWrite + Unpin>(
    writer: &tokio::sync::Mutex<FrameWriter<W>>,
    message: &Message,
    within: Duration,
) -> Result<usize, ClusterError> {
    let write = async { writer.lock().await.write_message(message).await };
    tokio::time::timeout(within, write)
        .await
        .unwrap_or_else(|_| {
            Err(ClusterError::WireIo(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("the peer took no frame for {} ms", within.as_millis()),
            )))
        })
}
