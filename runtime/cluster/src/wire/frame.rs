//! Frames: sealing an archive with its length, sequence number and MAC, and opening one
//! with every check of the layout in `wire.rs`, in that order.
//!
//! On an encrypted link (`--wire-encrypt`) the archive bytes are XORed with a ChaCha20
//! keystream under the direction's encryption key, with the frame's sequence number as the
//! nonce (never reused: one key per direction and session, one frame per number), and the MAC
//! covers the ciphertext (encrypt-then-MAC): nothing is decrypted before the MAC holds.

use chacha20::cipher::{KeyIvInit, StreamCipher};
use chacha20::ChaCha20;
use hmac::{Hmac, Mac};
use rkyv::rancor;
use rkyv::util::AlignedVec;
use sha2::Sha256;

use super::limits::{FRAME_BYTES_MAX, HANDSHAKE_FRAME_BYTES_MAX};
use super::message::{check_archived, ArchivedMessage, Message, ModelShape};
use crate::ClusterError;

/// Bytes of the MAC at the end of every frame (HMAC-SHA256).
pub const MAC_BYTES: usize = 32;
/// Bytes of the sequence number before the MAC.
const SEQ_BYTES: usize = 8;
/// Bytes of the length prefix.
const LEN_BYTES: usize = 4;
/// The smallest frame: length prefix, empty archive, sequence number, MAC.
const FRAME_BYTES_MIN: usize = LEN_BYTES + SEQ_BYTES + MAC_BYTES;

type HmacSha256 = Hmac<Sha256>;

/// The sending half of a link's frame protection: this direction's MAC key (and encryption
/// key on an encrypted link) and the next sequence number. Owned by the one task that writes
/// the link.
pub struct SendMac {
    mac: Option<HmacSha256>,
    cipher_key: Option<[u8; 32]>,
    next_seq: u64,
}

/// The receiving half: the peer's direction keys and the sequence number expected next.
/// Owned by the one task that reads the link.
pub struct RecvMac {
    mac: Option<HmacSha256>,
    cipher_key: Option<[u8; 32]>,
    next_seq: u64,
}

/// XORs `bytes` with the ChaCha20 keystream of `key` and sequence number `seq` (the same call
/// encrypts and decrypts).
fn apply_keystream(key: &[u8; 32], seq: u64, bytes: &mut [u8]) {
    let mut nonce = [0u8; 12];
    nonce[..8].copy_from_slice(&seq.to_le_bytes());
    ChaCha20::new(key.into(), &nonce.into()).apply_keystream(bytes);
}

/// Both halves of one end of an authenticated link, as the handshake returns them; split
/// the fields between the writer and the reader task.
pub struct SessionMac {
    /// Seals this end's frames.
    pub send: SendMac,
    /// Opens the peer's frames.
    pub recv: RecvMac,
}

impl SendMac {
    /// Frames sealed with a 32-byte direction key, sequence numbers from 0.
    pub fn new(key: [u8; 32]) -> Self {
        Self {
            mac: Some(keyed(&key)),
            cipher_key: None,
            next_seq: 0,
        }
    }

    /// Frames MAC'd with `mac_key` and encrypted with `cipher_key`, sequence numbers from 0.
    pub fn encrypted(mac_key: [u8; 32], cipher_key: [u8; 32]) -> Self {
        Self {
            cipher_key: Some(cipher_key),
            ..Self::new(mac_key)
        }
    }

    /// The handshake's sealer: sequence numbers from 0, all-zero MAC field.
    pub(crate) fn unkeyed() -> Self {
        Self {
            mac: None,
            cipher_key: None,
            next_seq: 0,
        }
    }

    /// The sequence number the next frame will carry.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }
}

impl RecvMac {
    /// Opens frames sealed with `key`, expecting sequence numbers from 0.
    pub fn new(key: [u8; 32]) -> Self {
        Self {
            mac: Some(keyed(&key)),
            cipher_key: None,
            next_seq: 0,
        }
    }

    /// Frames MAC'd with `mac_key` and encrypted with `cipher_key`, sequence numbers from 0.
    pub fn encrypted(mac_key: [u8; 32], cipher_key: [u8; 32]) -> Self {
        Self {
            cipher_key: Some(cipher_key),
            ..Self::new(mac_key)
        }
    }

    /// The handshake's opener: checks sequence numbers, requires an all-zero MAC field.
    pub(crate) fn unkeyed() -> Self {
        Self {
            mac: None,
            cipher_key: None,
            next_seq: 0,
        }
    }

    /// The sequence number the next frame must carry.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }
}

impl SessionMac {
    /// Two matching ends from one key (the second direction's key is derived from it), for
    /// tests, fuzzing and benchmarks; real links get theirs from the handshake.
    pub fn pair_from_key(key: [u8; 32]) -> (SessionMac, SessionMac) {
        let other = derive_key(&key, b"moe-node test pair: second direction");
        (
            SessionMac {
                send: SendMac::new(key),
                recv: RecvMac::new(other),
            },
            SessionMac {
                send: SendMac::new(other),
                recv: RecvMac::new(key),
            },
        )
    }
}

impl SessionMac {
    /// [`SessionMac::pair_from_key`] with encryption (cipher keys derived from `key`), for
    /// tests and benchmarks.
    pub fn encrypted_pair_from_key(key: [u8; 32]) -> (SessionMac, SessionMac) {
        let other = derive_key(&key, b"moe-node test pair: second direction");
        let (ka, kb) = (
            derive_key(&key, b"moe-node test pair: cipher a"),
            derive_key(&key, b"moe-node test pair: cipher b"),
        );
        (
            SessionMac {
                send: SendMac::encrypted(key, ka),
                recv: RecvMac::encrypted(other, kb),
            },
            SessionMac {
                send: SendMac::encrypted(other, kb),
                recv: RecvMac::encrypted(key, ka),
            },
        )
    }
}

impl std::fmt::Debug for SendMac {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "SendMac {{ keyed: {}, encrypted: {}, next_seq: {} }}",
            self.mac.is_some(),
            self.cipher_key.is_some(),
            self.next_seq
        )
    }
}

impl std::fmt::Debug for RecvMac {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "RecvMac {{ keyed: {}, encrypted: {}, next_seq: {} }}",
            self.mac.is_some(),
            self.cipher_key.is_some(),
            self.next_seq
        )
    }
}

impl std::fmt::Debug for SessionMac {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionMac")
            .field("send", &self.send)
            .field("recv", &self.recv)
            .finish()
    }
}

fn keyed(key: &[u8]) -> HmacSha256 {
    // HMAC takes keys of any length, so this never fails; an empty MAC is never used.
    <HmacSha256 as Mac>::new_from_slice(key)
        .unwrap_or_else(|_| unreachable!("HMAC accepts any key length"))
}

/// HMAC-SHA256(key, label): the KDF of the handshake and of test pairs.
pub(crate) fn derive_key(key: &[u8], label: &[u8]) -> [u8; 32] {
    let mut mac = keyed(key);
    mac.update(label);
    mac.finalize().into_bytes().into()
}

/// Serializes `message` and seals it into one frame (length prefix included).
///
/// Fails only when the frame would exceed [`FRAME_BYTES_MAX`].
pub fn encode_frame(message: &Message, mac: &mut SendMac) -> Result<Vec<u8>, ClusterError> {
    let archive = rkyv::to_bytes::<rancor::Error>(message).map_err(|e| {
        ClusterError::FrameInvalid(format!("cannot archive {}: {e}", message.kind()))
    })?;
    seal_frame(&archive, mac)
}

/// Seals already-archived bytes into a frame: length prefix, `archive`, sequence number, MAC.
///
/// Public so that tests and fuzz targets can build frames around arbitrary archives.
pub fn seal_frame(archive: &[u8], mac: &mut SendMac) -> Result<Vec<u8>, ClusterError> {
    let body_len = archive.len() + SEQ_BYTES + MAC_BYTES;
    if body_len > FRAME_BYTES_MAX {
        return Err(ClusterError::FrameTooLarge {
            bytes: body_len as u64,
            limit_name: "FRAME_BYTES_MAX",
            limit: FRAME_BYTES_MAX,
        });
    }
    let mut frame = Vec::with_capacity(LEN_BYTES + body_len);
    // FRAME_BYTES_MAX < u32::MAX, checked above.
    frame.extend_from_slice(&(body_len as u32).to_le_bytes());
    frame.extend_from_slice(archive);
    if let Some(key) = &mac.cipher_key {
        apply_keystream(key, mac.next_seq, &mut frame[LEN_BYTES..]);
    }
    frame.extend_from_slice(&mac.next_seq.to_le_bytes());
    match &mac.mac {
        Some(keyed) => {
            let mut h = keyed.clone();
            h.update(&frame);
            frame.extend_from_slice(&h.finalize().into_bytes());
        }
        None => frame.extend_from_slice(&[0; MAC_BYTES]),
    }
    mac.next_seq = mac.next_seq.wrapping_add(1);
    Ok(frame)
}

/// Opens one frame (length prefix included): length, MAC, sequence number, archive check,
/// field checks against the limits and `shape`, then builds the message.
pub fn decode_frame(
    frame: &[u8],
    mac: &mut RecvMac,
    shape: &ModelShape,
) -> Result<Message, ClusterError> {
    decode_frame_limited(frame, mac, shape, FRAME_BYTES_MAX, "FRAME_BYTES_MAX")
}

/// [`decode_frame`] under the handshake's smaller frame limit.
pub(crate) fn decode_handshake_frame(
    frame: &[u8],
    mac: &mut RecvMac,
    shape: &ModelShape,
) -> Result<Message, ClusterError> {
    decode_frame_limited(
        frame,
        mac,
        shape,
        HANDSHAKE_FRAME_BYTES_MAX,
        "HANDSHAKE_FRAME_BYTES_MAX",
    )
}

fn decode_frame_limited(
    frame: &[u8],
    mac: &mut RecvMac,
    shape: &ModelShape,
    limit: usize,
    limit_name: &'static str,
) -> Result<Message, ClusterError> {
    let Some((prefix, body)) = frame.split_first_chunk::<LEN_BYTES>() else {
        return Err(ClusterError::FrameTruncated {
            expected: FRAME_BYTES_MIN,
        });
    };
    let body_len = u32::from_le_bytes(*prefix) as usize;
    if body_len > limit {
        return Err(ClusterError::FrameTooLarge {
            bytes: body_len as u64,
            limit_name,
            limit,
        });
    }
    if body.len() < body_len || body_len < SEQ_BYTES + MAC_BYTES {
        return Err(ClusterError::FrameTruncated {
            expected: LEN_BYTES + body_len.max(SEQ_BYTES + MAC_BYTES),
        });
    }
    if body.len() > body_len {
        return Err(ClusterError::FrameInvalid(format!(
            "{} bytes after the frame's {body_len} announced",
            body.len() - body_len
        )));
    }
    let Some((sealed, tag)) = frame.split_last_chunk::<MAC_BYTES>() else {
        return Err(ClusterError::FrameTruncated {
            expected: FRAME_BYTES_MIN,
        });
    };
    match &mac.mac {
        Some(keyed) => {
            let mut h = keyed.clone();
            h.update(sealed);
            // Constant-time comparison.
            h.verify_slice(tag).map_err(|_| ClusterError::FrameMac)?;
        }
        None if tag.iter().any(|&b| b != 0) => return Err(ClusterError::FrameMac),
        None => {}
    }
    let Some((with_archive, seq)) = sealed.split_last_chunk::<SEQ_BYTES>() else {
        return Err(ClusterError::FrameTruncated {
            expected: FRAME_BYTES_MIN,
        });
    };
    let seq = u64::from_le_bytes(*seq);
    if seq != mac.next_seq {
        return Err(ClusterError::FrameSequence {
            expected: mac.next_seq,
            got: seq,
        });
    }
    mac.next_seq = mac.next_seq.wrapping_add(1);
    let archive = with_archive.get(LEN_BYTES..).unwrap_or_default();
    // The archive sits at offset 4 of the frame; rkyv needs it aligned, so it is copied.
    let mut aligned = AlignedVec::<16>::with_capacity(archive.len());
    aligned.extend_from_slice(archive);
    if let Some(key) = &mac.cipher_key {
        apply_keystream(key, seq, &mut aligned);
    }
    let archived = rkyv::access::<ArchivedMessage, rancor::Error>(&aligned)
        .map_err(|e| ClusterError::FrameInvalid(format!("archive check failed: {e}")))?;
    check_archived(archived, shape)?;
    rkyv::deserialize::<Message, rancor::Error>(archived)
        .map_err(|e| ClusterError::FrameInvalid(format!("cannot build message: {e}")))
}

#[cfg(test)]
mod tests;
