//! Moving whole frames over byte streams: tokio (`read_frame`, `write_frame`) and blocking
//! std (`read_frame_sync`, `write_frame_sync`; [`Deadline`] bounds a whole frame's reading on
//! a blocking TCP stream; [`await_readable`] polls one for a while before a blocking read)
//! flavours of the same rules.
//!
//! A reader takes the 4-byte length, refuses it when it exceeds the caller's limit (never
//! more than [`FRAME_BYTES_MAX`]) before allocating, then reads exactly that many bytes.
//! The frame comes back whole, length prefix included, ready for `decode_frame`.

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::limits::{FRAME_BYTES_MAX, HANDSHAKE_FRAME_BYTES_MAX};
use crate::ClusterError;

/// Reads one frame of at most `frame_bytes_max` bytes after the prefix (capped at
/// [`FRAME_BYTES_MAX`]).
///
/// A clean end of stream before the frame is [`ClusterError::PeerClosed`]; an end inside it
/// is [`ClusterError::FrameTruncated`].
pub async fn read_frame<R: AsyncRead + Unpin>(
    reader: &mut R,
    frame_bytes_max: usize,
) -> Result<Vec<u8>, ClusterError> {
    let mut prefix = [0u8; 4];
    let mut filled = 0;
    while filled < prefix.len() {
        let dest = prefix.get_mut(filled..).unwrap_or_default();
        match reader.read(dest).await {
            Ok(0) if filled == 0 => return Err(ClusterError::PeerClosed),
            Ok(0) => return Err(ClusterError::FrameTruncated { expected: 4 }),
            Ok(n) => filled += n,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(ClusterError::WireIo(e)),
        }
    }
    let mut frame = allocate(prefix, frame_bytes_max)?;
    let expected = frame.len();
    reader
        .read_exact(frame.get_mut(4..).unwrap_or_default())
        .await
        .map_err(|e| truncated(e, expected))?;
    Ok(frame)
}

/// Writes one frame (as `encode_frame` made it) and flushes.
pub async fn write_frame<W: AsyncWrite + Unpin>(
    writer: &mut W,
    frame: &[u8],
) -> Result<(), ClusterError> {
    writer
        .write_all(frame)
        .await
        .map_err(ClusterError::WireIo)?;
    writer.flush().await.map_err(ClusterError::WireIo)
}

/// [`read_frame`] over a blocking reader.
pub fn read_frame_sync<R: Read>(
    reader: &mut R,
    frame_bytes_max: usize,
) -> Result<Vec<u8>, ClusterError> {
    let mut prefix = [0u8; 4];
    let mut filled = 0;
    while filled < prefix.len() {
        let dest = prefix.get_mut(filled..).unwrap_or_default();
        match reader.read(dest) {
            Ok(0) if filled == 0 => return Err(ClusterError::PeerClosed),
            Ok(0) => return Err(ClusterError::FrameTruncated { expected: 4 }),
            Ok(n) => filled += n,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(ClusterError::WireIo(e)),
        }
    }
    let mut frame = allocate(prefix, frame_bytes_max)?;
    let expected = frame.len();
    reader
        .read_exact(frame.get_mut(4..).unwrap_or_default())
        .map_err(|e| truncated(e, expected))?;
    Ok(frame)
}

/// [`write_frame`] over a blocking writer.
pub fn write_frame_sync<W: Write>(writer: &mut W, frame: &[u8]) -> Result<(), ClusterError> {
    writer.write_all(frame).map_err(ClusterError::WireIo)?;
    writer.flush().map_err(ClusterError::WireIo)
}

/// A blocking TCP stream read against one deadline: each `read` waits at most until
/// `deadline` (a peer that trickles bytes cannot stretch a frame past it), and one that
/// would wait longer fails with `ErrorKind::TimedOut`.
pub struct Deadline<'a> {
    /// The stream (its read timeout is set before each read).
    pub stream: &'a TcpStream,
    /// When reading must be done.
    pub deadline: Instant,
}

impl Read for Deadline<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let left = self.deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(std::io::Error::new(
                ErrorKind::TimedOut,
                "deadline passed before the frame was read",
            ));
        }
        self.stream.set_read_timeout(Some(left))?;
        match (&*self.stream).read(buf) {
            Err(e) if e.kind() == ErrorKind::WouldBlock => Err(std::io::Error::new(
                ErrorKind::TimedOut,
                "deadline passed before the frame was read",
            )),
            other => other,
        }
    }
}

/// Polls a blocking TCP stream for up to `spin` (yielding the core between polls) until it
/// has bytes to read or has ended; whether it has. A thread that then reads finds its frame
/// without having slept, which saves the wake-up a sleeping reader costs (tens of
/// microseconds on a VM) when the frame comes within `spin`.
pub fn await_readable(stream: &TcpStream, spin: Duration) -> std::io::Result<bool> {
    let until = Instant::now() + spin;
    stream.set_nonblocking(true)?;
    let mut byte = [0u8; 1];
    let ready = loop {
        match stream.peek(&mut byte) {
            Ok(_) => break Ok(true),
            Err(e) if e.kind() == ErrorKind::WouldBlock => {}
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            // An error is for the read that follows to report.
            Err(_) => break Ok(true),
        }
        if Instant::now() >= until {
            break Ok(false);
        }
        std::thread::yield_now();
    };
    stream.set_nonblocking(false)?;
    ready
}

/// Checks the announced length, then allocates the frame with its prefix in place.
fn allocate(prefix: [u8; 4], frame_bytes_max: usize) -> Result<Vec<u8>, ClusterError> {
    let limit = frame_bytes_max.min(FRAME_BYTES_MAX);
    let body_len = u32::from_le_bytes(prefix) as usize;
    if body_len > limit {
        let limit_name = match limit {
            FRAME_BYTES_MAX => "FRAME_BYTES_MAX",
            HANDSHAKE_FRAME_BYTES_MAX => "HANDSHAKE_FRAME_BYTES_MAX",
            _ => "the reader's frame limit",
        };
        return Err(ClusterError::FrameTooLarge {
            bytes: body_len as u64,
            limit_name,
            limit,
        });
    }
    let mut frame = vec![0u8; 4 + body_len];
    if let Some(head) = frame.get_mut(..4) {
        head.copy_from_slice(&prefix);
    }
    Ok(frame)
}

fn truncated(e: std::io::Error, expected: usize) -> ClusterError {
    if e.kind() == ErrorKind::UnexpectedEof {
        ClusterError::FrameTruncated { expected }
    } else {
        ClusterError::WireIo(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sync_round_trip_and_clean_eof() {
        let frame = [3u8, 0, 0, 0, 7, 8, 9];
        let mut wire = Vec::new();
        write_frame_sync(&mut wire, &frame).unwrap();
        write_frame_sync(&mut wire, &frame).unwrap();
        let mut reader = wire.as_slice();
        assert_eq!(read_frame_sync(&mut reader, 16).unwrap(), frame);
        assert_eq!(read_frame_sync(&mut reader, 16).unwrap(), frame);
        assert!(matches!(
            read_frame_sync(&mut reader, 16),
            Err(ClusterError::PeerClosed)
        ));
    }

    #[test]
    fn sync_truncation() {
        let mut short_prefix: &[u8] = &[3, 0];
        assert!(matches!(
            read_frame_sync(&mut short_prefix, 16),
            Err(ClusterError::FrameTruncated { expected: 4 })
        ));
        let mut short_body: &[u8] = &[3, 0, 0, 0, 1];
        assert!(matches!(
            read_frame_sync(&mut short_body, 16),
            Err(ClusterError::FrameTruncated { expected: 7 })
        ));
    }

    #[test]
    fn oversized_length_is_refused_before_reading_or_allocating() {
        // u32::MAX announced with no body behind it: refused on the prefix alone.
        let mut huge: &[u8] = &[0xff, 0xff, 0xff, 0xff];
        match read_frame_sync(&mut huge, usize::MAX) {
            Err(ClusterError::FrameTooLarge {
                bytes,
                limit_name,
                limit,
            }) => {
                assert_eq!(
                    (bytes, limit_name, limit),
                    (u32::MAX as u64, "FRAME_BYTES_MAX", FRAME_BYTES_MAX)
                );
            }
            other => panic!("{other:?}"),
        }
        let just_over = ((HANDSHAKE_FRAME_BYTES_MAX + 1) as u32).to_le_bytes();
        let mut reader: &[u8] = &just_over;
        assert!(matches!(
            read_frame_sync(&mut reader, HANDSHAKE_FRAME_BYTES_MAX),
            Err(ClusterError::FrameTooLarge {
                limit_name: "HANDSHAKE_FRAME_BYTES_MAX",
                ..
            })
        ));
    }

    #[tokio::test]
    async fn tokio_round_trip_truncation_and_limit() {
        let (mut a, mut b) = tokio::io::duplex(64);
        let frame = vec![5u8, 0, 0, 0, 1, 2, 3, 4, 5];
        write_frame(&mut a, &frame).await.unwrap();
        assert_eq!(read_frame(&mut b, 100).await.unwrap(), frame);

        a.write_all(&[200, 0, 0, 0]).await.unwrap();
        assert!(matches!(
            read_frame(&mut b, 100).await,
            Err(ClusterError::FrameTooLarge { bytes: 200, .. })
        ));

        a.write_all(&[5, 0, 0, 0, 1]).await.unwrap();
        drop(a);
        assert!(matches!(
            read_frame(&mut b, 100).await,
            Err(ClusterError::FrameTruncated { expected: 9 })
        ));
        assert!(matches!(
            read_frame(&mut b, 100).await,
            Err(ClusterError::PeerClosed)
        ));
    }
}
