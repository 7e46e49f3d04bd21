//! The envelope of a queued message and its compact binary encoding for the spool.
//!
//! The encoding is length-prefixed and versioned by the spool record kind; it is written once when a
//! message is accepted and read back at start-up recovery.

use std::fmt;

pub use crate::address::{Address, AddressError, Sender};

/// A queue id: the seconds of acceptance in the high half, a per-process counter in the low half.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct QueueId(pub u64);

impl fmt::Display for QueueId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016X}", self.0)
    }
}

/// What the sender asked for with DSN `NOTIFY=` (RFC 3461).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Notify {
    pub never: bool,
    pub success: bool,
    pub failure: bool,
    pub delay: bool,
}

impl Notify {
    fn to_bits(self) -> u8 {
        (self.never as u8) | (self.success as u8) << 1 | (self.failure as u8) << 2 | (self.delay as u8) << 3
    }
    fn from_bits(b: u8) -> Self {
        Notify {
            never: b & 1 != 0,
            success: b & 2 != 0,
            failure: b & 4 != 0,
            delay: b & 8 != 0,
        }
    }
    /// The `NOTIFY=` parameter value.
    pub fn param(&self) -> String {
        if self.never {
            return "NEVER".into();
        }
        let mut v = Vec::new();
        if self.success {
            v.push("SUCCESS");
        }
        if self.failure {
            v.push("FAILURE");
        }
        if self.delay {
            v.push("DELAY");
        }
        v.join(",")
    }
}

/// One envelope recipient with its DSN parameters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recipient {
    /// `local@domain`, or a bare `postmaster`.
    pub address: Address,
    pub notify: Option<Notify>,
    /// The raw `ORCPT=` value (`rfc822;xtext`).
    pub orcpt: Option<String>,
}

impl Recipient {
    pub fn new(address: Address) -> Self {
        Recipient {
            address,
            notify: None,
            orcpt: None,
        }
    }

    /// A recipient without DSN parameters, from its text (see [`Address::parse`]).
    pub fn parse(address: &str) -> Result<Self, AddressError> {
        Address::parse(address).map(Recipient::new)
    }

    /// The recipient's domain, lowercased (empty for a bare `postmaster`).
    pub fn domain(&self) -> String {
        self.address.domain()
    }

    /// Whether the sender wants a failure report for this recipient.
    pub fn wants_failure_report(&self) -> bool {
        self.notify.is_none_or(|n| n.failure)
    }
}

/// `RET=` of a DSN request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ret {
    Full,
    Hdrs,
}

/// The envelope of one message: what MAIL and RCPT said, and how it came in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope {
    pub id: QueueId,
    pub sender: Sender,
    pub recipients: Vec<Recipient>,
    /// Unix seconds at acceptance.
    pub received_at: u64,
    pub eight_bit: bool,
    pub smtputf8: bool,
    pub ret: Option<Ret>,
    /// The raw `ENVID=` xtext.
    pub envid: Option<String>,
    /// The pool the routing rules chose; `None` means delivery by MX lookup.
    pub pool: Option<String>,
    /// After-queue filters still to run before delivery (by name).
    pub scan: Vec<String>,
    /// The `[[stream]]` the routing rules put this copy in; `None` is the default stream.
    pub stream: Option<String>,
    /// The `[[route]]` rule that sent this copy on (for the analytics); `None`: no rule decided.
    pub route: Option<String>,
}

impl Envelope {
    pub fn is_null_sender(&self) -> bool {
        self.sender.is_null()
    }

    /// Appends the binary encoding.
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.id.0.to_le_bytes());
        put_str(out, self.sender.as_str());
        out.extend_from_slice(&self.received_at.to_le_bytes());
        let ret = match self.ret {
            None => 0u8,
            Some(Ret::Full) => 1,
            Some(Ret::Hdrs) => 2,
        };
        out.extend_from_slice(&[self.eight_bit as u8, self.smtputf8 as u8, ret]);
        put_opt(out, self.envid.as_deref());
        put_opt(out, self.pool.as_deref());
        out.extend_from_slice(&(self.scan.len() as u32).to_le_bytes());
        for s in &self.scan {
            put_str(out, s);
        }
        out.extend_from_slice(&(self.recipients.len() as u32).to_le_bytes());
        for r in &self.recipients {
            put_str(out, &r.address);
            out.push(r.notify.map_or(0xff, Notify::to_bits));
            put_opt(out, r.orcpt.as_deref());
        }
        // Fields added later go after the recipients: a record written before they existed
        // simply ends here, and decodes with their defaults.
        put_opt(out, self.stream.as_deref());
        put_opt(out, self.route.as_deref());
    }

    /// Decodes what [`Envelope::encode`] wrote; `None` if it is malformed.
    pub fn decode(input: &[u8]) -> Option<(Envelope, usize)> {
        let mut r = Reader { buf: input, pos: 0 };
        let id = QueueId(r.u64()?);
        let sender = Sender::from_stored(r.string()?);
        let received_at = r.u64()?;
        let flags = r.take(3)?;
        let (eight_bit, smtputf8) = (flags[0] != 0, flags[1] != 0);
        let ret = match flags[2] {
            1 => Some(Ret::Full),
            2 => Some(Ret::Hdrs),
            _ => None,
        };
        let envid = r.opt()?;
        let pool = r.opt()?;
        let n = r.u32()? as usize;
        let mut scan = Vec::with_capacity(n.min(64));
        for _ in 0..n {
            scan.push(r.string()?);
        }
        let n = r.u32()? as usize;
        let mut recipients = Vec::with_capacity(n.min(10_000));
        for _ in 0..n {
            let address = Address::trusted(r.string()?);
            let bits = r.take(1)?[0];
            let notify = (bits != 0xff).then(|| Notify::from_bits(bits));
            let orcpt = r.opt()?;
            recipients.push(Recipient { address, notify, orcpt });
        }
        let stream = if r.pos < r.buf.len() { r.opt()? } else { None };
        let route = if r.pos < r.buf.len() { r.opt()? } else { None };
        let env = Envelope {
            stream,
            route,
            id,
            sender,
            recipients,
            received_at,
            eight_bit,
            smtputf8,
            ret,
            envid,
            pool,
            scan,
        };
        Some((env, r.pos))
    }
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u32).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

fn put_opt(out: &mut Vec<u8>, s: Option<&str>) {
    match s {
        None => out.push(0),
        Some(s) => {
            out.push(1);
            put_str(out, s);
        }
    }
}

/// A bounds-checked cursor over encoded bytes.
pub(crate) struct Reader<'a> {
    pub buf: &'a [u8],
    pub pos: usize,
}

impl<'a> Reader<'a> {
    pub fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let end = self.pos.checked_add(n)?;
        let s = self.buf.get(self.pos..end)?;
        self.pos = end;
        Some(s)
    }
    pub fn u32(&mut self) -> Option<u32> {
        Some(u32::from_le_bytes(self.take(4)?.try_into().ok()?))
    }
    pub fn u64(&mut self) -> Option<u64> {
        Some(u64::from_le_bytes(self.take(8)?.try_into().ok()?))
    }
    fn string(&mut self) -> Option<String> {
        let n = self.u32()? as usize;
        String::from_utf8(self.take(n)?.to_vec()).ok()
    }
    fn opt(&mut self) -> Option<Option<String>> {
        match self.take(1)?[0] {
            0 => Some(None),
            1 => Some(Some(self.string()?)),
            _ => None,
        }
    }
}

/// Makes queue ids unique within a process and, through the clock and a random start, across restarts.
pub struct IdGen {
    counter: std::sync::atomic::AtomicU64,
}

impl Default for IdGen {
    fn default() -> Self {
        use std::hash::{BuildHasher, RandomState};
        let seed = RandomState::new().hash_one(std::process::id());
        IdGen {
            counter: std::sync::atomic::AtomicU64::new(seed),
        }
    }
}

impl IdGen {
    pub fn next(&self) -> QueueId {
        let n = self.counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed) & 0xffff_ffff;
        QueueId(crate::datetime::now_unix() << 32 | n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelope_round_trips_and_rejects_truncation() {
        let env = Envelope {
            id: QueueId(0x1234),
            sender: Sender::parse("a@example.test").unwrap(),
            recipients: vec![
                Recipient::new(Address::parse("b@example.test").unwrap()),
                Recipient {
                    address: Address::parse("c@example.test").unwrap(),
                    notify: Some(Notify {
                        failure: true,
                        delay: true,
                        ..Default::default()
                    }),
                    orcpt: Some("rfc822;c@example.test".into()),
                },
            ],
            received_at: 1_700_000_000,
            eight_bit: true,
            smtputf8: false,
            ret: Some(Ret::Hdrs),
            envid: Some("abc".into()),
            pool: Some("up".into()),
            scan: vec!["clamav".into()],
            stream: Some("bulk".into()),
            route: Some("partners".into()),
        };
        let mut buf = Vec::new();
        env.encode(&mut buf);
        let (back, used) = Envelope::decode(&buf).unwrap();
        assert_eq!(back, env);
        assert_eq!(used, buf.len());
        // A record written before `stream` existed ends right after the recipients.
        let mut old = Vec::new();
        Envelope {
            stream: None,
            route: None,
            ..env.clone()
        }
        .encode(&mut old);
        old.truncate(old.len() - 2);
        let (back, used) = Envelope::decode(&old).unwrap();
        assert_eq!((back.stream, back.route, used), (None, None, old.len()));
        // One written before `route` existed ends right after the stream.
        let mut no_route = Vec::new();
        Envelope {
            route: None,
            ..env.clone()
        }
        .encode(&mut no_route);
        no_route.pop();
        let (back, used) = Envelope::decode(&no_route).unwrap();
        assert_eq!(
            (back.stream, back.route, used),
            (env.stream.clone(), None, no_route.len())
        );
        for cut in (0..buf.len()).filter(|&c| c != old.len() && c != no_route.len()) {
            assert!(Envelope::decode(&buf[..cut]).is_none(), "cut at {cut}");
        }
    }
}

/// What the session knew of a message's client: what filter hooks see, and what a quarantined
/// message keeps for its release.
#[derive(Debug, Clone, Default)]
pub struct SessionInfo {
    pub client: Option<std::net::IpAddr>,
    pub helo: Option<String>,
    pub user: Option<String>,
    pub listener: String,
    pub tls: bool,
}
