//! The on-disk record format of the spool log.
//!
//! Every record is `magic(4) kind(1) len(4) crc32(4) header_crc32(4) payload(len)`. The first CRC
//! covers kind, len and payload, so a torn or corrupted record is detected and never taken for a
//! message. The header CRC covers the 13 bytes before it, so a length that was damaged on disk is
//! told apart from a record that was cut short: recovery trusts a length only when its header
//! checks out (see `recover.rs`).
//!
//! Records are only ever found by reading a segment from its start, one header's length after
//! another: nothing looks for a record start inside a payload, so a message body that carries
//! record-shaped bytes stays a body.
//!
//! Segments written before the header CRC existed (`SGR1`, a 13-byte header) are still read.

use super::Ext;
use crate::envelope::{Envelope, QueueId, Reader};

pub const MAGIC: &[u8; 4] = b"SGR2";
pub const HEADER_LEN: usize = 17;
/// The first format: no header CRC.
pub const LEGACY_MAGIC: &[u8; 4] = b"SGR1";
const LEGACY_HEADER_LEN: usize = 13;

/// The final or pending state of one recipient.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RcptState {
    Pending = 0,
    Delivered = 1,
    Failed = 2,
}

impl RcptState {
    fn from_u8(b: u8) -> Option<Self> {
        match b {
            0 => Some(RcptState::Pending),
            1 => Some(RcptState::Delivered),
            2 => Some(RcptState::Failed),
            _ => None,
        }
    }

    pub fn is_final(self) -> bool {
        self != RcptState::Pending
    }
}

/// A decoded record.
#[derive(Debug)]
// Short-lived, like `Decoded`: made and taken apart once per record while a segment is read.
#[allow(clippy::large_enum_variant)]
pub enum Record<'a> {
    /// A message: envelope, recipient states, and the body (at `body_offset` within the record).
    /// A large message's record holds its header section only, and `ext` says where its body is.
    Message {
        env: Envelope,
        states: Vec<RcptState>,
        body: &'a [u8],
        body_offset: usize,
        ext: Option<Ext>,
    },
    /// Recipients reached a final state.
    Status {
        id: QueueId,
        updates: Vec<(u32, RcptState)>,
    },
    /// Every recipient is final: the message is gone.
    Done { id: QueueId },
    /// An operator held (`held`) or released the message: a held message is never delivered,
    /// and the flag must outlive a restart.
    Hold { id: QueueId, held: bool },
}

const KIND_MESSAGE: u8 = 1;
const KIND_STATUS: u8 = 2;
const KIND_DONE: u8 = 3;
/// A message whose body is in a file of its own under `bodies/`.
const KIND_MESSAGE_EXT: u8 = 4;
/// An operator's hold or release of a message.
const KIND_HOLD: u8 = 5;

fn frame(kind: u8, payload_len: usize, out: &mut Vec<u8>) -> usize {
    let start = out.len();
    out.extend_from_slice(MAGIC);
    out.push(kind);
    out.extend_from_slice(&(payload_len as u32).to_le_bytes());
    out.extend_from_slice(&[0; 8]);
    start
}

fn seal(out: &mut [u8], start: usize) {
    let mut h = crc32fast::Hasher::new();
    h.update(&out[start + 4..start + 9]);
    h.update(&out[start + HEADER_LEN..]);
    let crc = h.finalize().to_le_bytes();
    out[start + 9..start + 13].copy_from_slice(&crc);
    let hcrc = crc32fast::hash(&out[start..start + 13]).to_le_bytes();
    out[start + 13..start + 17].copy_from_slice(&hcrc);
}

/// Encodes a message record; returns where the body starts relative to the record's start.
/// With `ext`, `body` is the header section and the rest of the message is in its own file.
pub fn encode_message(
    env: &Envelope,
    states: &[RcptState],
    body: &[u8],
    ext: Option<&Ext>,
    out: &mut Vec<u8>,
) -> usize {
    let mut meta = Vec::with_capacity(128);
    env.encode(&mut meta);
    let ext_len = if ext.is_some() { 24 } else { 0 };
    let payload_len = 4 + meta.len() + states.len() + ext_len + body.len();
    let kind = if ext.is_some() { KIND_MESSAGE_EXT } else { KIND_MESSAGE };
    let start = frame(kind, payload_len, out);
    out.extend_from_slice(&(meta.len() as u32).to_le_bytes());
    out.extend_from_slice(&meta);
    out.extend(states.iter().map(|s| *s as u8));
    if let Some(ext) = ext {
        out.extend_from_slice(&ext.file.to_le_bytes());
        out.extend_from_slice(&ext.offset.to_le_bytes());
        out.extend_from_slice(&ext.len.to_le_bytes());
    }
    let body_offset = out.len() - start;
    out.extend_from_slice(body);
    seal(out, start);
    body_offset
}

pub fn encode_status(id: QueueId, updates: &[(u32, RcptState)], out: &mut Vec<u8>) {
    let start = frame(KIND_STATUS, 12 + updates.len() * 5, out);
    out.extend_from_slice(&id.0.to_le_bytes());
    out.extend_from_slice(&(updates.len() as u32).to_le_bytes());
    for (idx, st) in updates {
        out.extend_from_slice(&idx.to_le_bytes());
        out.push(*st as u8);
    }
    seal(out, start);
}

pub fn encode_done(id: QueueId, out: &mut Vec<u8>) {
    let start = frame(KIND_DONE, 8, out);
    out.extend_from_slice(&id.0.to_le_bytes());
    seal(out, start);
}

/// Encodes a hold (`held`) or release of message `id`.
pub fn encode_hold(id: QueueId, held: bool, out: &mut Vec<u8>) {
    let start = frame(KIND_HOLD, 9, out);
    out.extend_from_slice(&id.0.to_le_bytes());
    out.push(u8::from(held));
    seal(out, start);
}

/// What [`decode`] found at the front of a buffer (the rest of a segment).
#[derive(Debug)]
// Short-lived: made and taken apart once per record while reading a segment; boxing the envelope
// would only add an allocation per record.
#[allow(clippy::large_enum_variant)]
pub enum Decoded<'a> {
    /// A whole, valid record and the bytes it takes.
    Record(Record<'a>, usize),
    /// The buffer ends inside a record: fewer bytes than a header, or a header that checks out
    /// whose payload runs past the end (a torn write).
    Truncated,
    /// The header is not a valid header (wrong magic, or a header CRC that does not match): its
    /// length cannot be trusted, so where the next record would start is unknown.
    BadHeader,
    /// A valid header whose record (`len` bytes from the front) fails its CRC or does not parse.
    BadRecord { len: usize },
}

/// Decodes one record at the front of `buf`.
pub fn decode(buf: &[u8]) -> Decoded<'_> {
    let header_len = match buf.get(..4) {
        None => return Decoded::Truncated,
        Some(m) if m == MAGIC => HEADER_LEN,
        Some(m) if m == LEGACY_MAGIC => LEGACY_HEADER_LEN,
        Some(_) => return Decoded::BadHeader,
    };
    if buf.len() < header_len {
        return Decoded::Truncated;
    }
    if header_len == HEADER_LEN && crc32fast::hash(&buf[..13]).to_le_bytes() != buf[13..17] {
        return Decoded::BadHeader;
    }
    let len = u32::from_le_bytes(buf[5..9].try_into().unwrap()) as usize;
    let Some(payload) = buf.get(header_len..header_len + len) else {
        return Decoded::Truncated;
    };
    let used = header_len + len;
    let mut h = crc32fast::Hasher::new();
    h.update(&buf[4..9]);
    h.update(payload);
    if h.finalize().to_le_bytes() != buf[9..13] {
        return Decoded::BadRecord { len: used };
    }
    match parse_payload(buf[4], payload, header_len) {
        Some(rec) => Decoded::Record(rec, used),
        None => Decoded::BadRecord { len: used },
    }
}

fn parse_payload(kind: u8, payload: &[u8], header_len: usize) -> Option<Record<'_>> {
    let mut r = Reader { buf: payload, pos: 0 };
    match kind {
        KIND_MESSAGE | KIND_MESSAGE_EXT => {
            let meta_len = r.u32()? as usize;
            let (env, used) = Envelope::decode(r.take(meta_len)?)?;
            if used != meta_len {
                return None;
            }
            let states = r.take(env.recipients.len())?;
            let states = states
                .iter()
                .map(|b| RcptState::from_u8(*b))
                .collect::<Option<Vec<_>>>()?;
            let ext = match kind {
                KIND_MESSAGE_EXT => Some(Ext {
                    file: r.u64()?,
                    offset: r.u64()?,
                    len: r.u64()?,
                }),
                _ => None,
            };
            let body_offset = header_len + r.pos;
            Some(Record::Message {
                env,
                states,
                body: &payload[r.pos..],
                body_offset,
                ext,
            })
        }
        KIND_STATUS => {
            let id = QueueId(r.u64()?);
            let n = r.u32()? as usize;
            let mut updates = Vec::with_capacity(n.min(10_000));
            for _ in 0..n {
                let idx = r.u32()?;
                updates.push((idx, RcptState::from_u8(r.take(1)?[0])?));
            }
            Some(Record::Status { id, updates })
        }
        KIND_DONE => Some(Record::Done { id: QueueId(r.u64()?) }),
        KIND_HOLD => {
            let id = QueueId(r.u64()?);
            let held = match r.take(1)?[0] {
                0 => false,
                1 => true,
                _ => return None,
            };
            Some(Record::Hold { id, held })
        }
        _ => None,
    }
}
