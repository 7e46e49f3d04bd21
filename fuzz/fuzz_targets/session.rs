//! A whole SMTP session against arbitrary client bytes sent in arbitrary chunks, with a spool in
//! memory (`smtpgate::testing`): no panic, no hang, and everything the server writes is a sequence
//! of well-formed replies (`DDD[ -]text<CR><LF>`, a valid code, printable text, at most 512
//! octets a line, multi-line replies whole).
//!
//! Input: a mode byte (bit 0: the client is outside the relay network; bits 1-3: how many chunk
//! lengths follow), the chunk lengths (a byte each), then the client bytes: the chunks, then the
//! rest as one last chunk. The server runs between chunks, so a cut decides what it sees as
//! pipelined.
#![no_main]
#![forbid(unsafe_code)]

use std::sync::Mutex;

use libfuzzer_sys::fuzz_target;
use smtpgate::testing::{Gate, Peer, check_replies};

/// Sessions a gate serves before it is replaced (its spool and queue only grow).
const SESSIONS_PER_GATE: u32 = 2000;

/// The gate and how many sessions it served. A static, never dropped: a thread-local would be
/// dropped at exit after tokio's own thread-locals, and a gate cannot be dropped without its
/// runtime (`Gate::new` removes the directory it leaves).
static GATE: Mutex<Option<(Gate, u32)>> = Mutex::new(None);

/// `client` in chunks of the given lengths (clipped to what is left), then the rest.
fn chunks<'a>(mut client: &'a [u8], lengths: &[u8]) -> Vec<&'a [u8]> {
    let mut parts = Vec::with_capacity(lengths.len() + 1);
    for &len in lengths {
        let (chunk, rest) = client.split_at(usize::from(len).min(client.len()));
        parts.push(chunk);
        client = rest;
    }
    parts.push(client);
    parts
}

fuzz_target!(|raw: &[u8]| {
    let Some((&mode, rest)) = raw.split_first() else { return };
    let peer = if mode & 1 == 0 { Peer::Inside } else { Peer::Outside };
    let n = usize::from(mode >> 1 & 7).min(rest.len());
    let (lengths, client) = rest.split_at(n);
    let mut slot = GATE.lock().unwrap_or_else(|e| e.into_inner());
    if slot.as_ref().is_none_or(|(_, served)| *served >= SESSIONS_PER_GATE) {
        *slot = None;
        *slot = Some((Gate::new().expect("a gate"), 0));
    }
    let (gate, served) = slot.as_mut().expect("just made");
    *served += 1;
    let out = gate.session(peer, &chunks(client, lengths));
    if let Err(e) = check_replies(&out) {
        panic!("{e}\nthe whole output: {:?}", String::from_utf8_lossy(&out));
    }
});
