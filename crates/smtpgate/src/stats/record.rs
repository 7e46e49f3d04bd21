//! What one thing to count carries: a small struct borrowed from what the caller has at hand,
//! so counting builds no JSON and copies no strings on the hot path (a dimension value is
//! allocated only the first time a bucket sees it, a domain only when it must be lowercased).
//!
//! Counts are of recipients: a record naming three recipients counts three (one naming none
//! counts one), each under its own recipient domain.

use std::borrow::Cow;
use std::net::{IpAddr, SocketAddr};

use super::dimension::Dimension;
use crate::envelope::Recipient;

/// What a record adds to the counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Spooled.
    Received,
    Delivered,
    Deferred,
    /// Failed for good (an expiry is a bounce of category `expired`).
    Bounced,
    /// Refused in session (at MAIL or RCPT) or at the end of data.
    Rejected,
    Quarantined,
    /// A feedback report (ARF) about mail to the recipients.
    Complaint,
}

/// The recipients a record is about, as the caller holds them.
#[derive(Debug, Clone, Copy)]
pub enum Recipients<'a> {
    /// None known (a refusal at MAIL): counts one, under no domain.
    None,
    One(&'a str),
    Envelope(&'a [Recipient]),
    Addresses(&'a [String]),
}

impl<'a> Recipients<'a> {
    /// How many recipients are named.
    pub fn len(&self) -> usize {
        match self {
            Recipients::None => 0,
            Recipients::One(_) => 1,
            Recipients::Envelope(r) => r.len(),
            Recipients::Addresses(a) => a.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Calls `f` with each recipient's domain, lowercased.
    pub fn each_domain(&self, mut f: impl FnMut(Cow<'a, str>)) {
        match *self {
            Recipients::None => {}
            Recipients::One(a) => f(domain_of(a)),
            Recipients::Envelope(rs) => rs.iter().for_each(|r| f(domain_of(r.address.as_str()))),
            Recipients::Addresses(a) => a.iter().for_each(|a| f(domain_of(a))),
        }
    }
}

/// One thing to count: its kind, its recipients, and the dimension values it counts under
/// (`None`: not known, not counted under that dimension).
#[derive(Debug, Clone, Copy)]
pub struct Record<'a> {
    pub kind: Kind,
    /// Unix milliseconds; `None`: now.
    pub at_ms: Option<u64>,
    pub recipients: Recipients<'a>,
    /// The envelope sender's address (`""` for the null sender, counted under the empty domain).
    pub sender: Option<&'a str>,
    pub listener: Option<&'a str>,
    /// The `[[route]]` rule that decided where the copy goes.
    pub route: Option<&'a str>,
    pub pool: Option<&'a str>,
    pub stream: Option<&'a str>,
    /// The server that answered (`host[addr:port]`, as the delivery names it, or a host name):
    /// counted under its MX rollup ([`mx_rollup`]).
    pub server: Option<&'a str>,
    /// The bounce category, for a bounce (`unknown` when missing).
    pub category: Option<&'a str>,
    /// How long the delivery took, for a delivery.
    pub latency_ms: Option<u64>,
}

impl<'a> Record<'a> {
    /// A record of `kind` about `recipients`, with no dimension value yet.
    pub fn new(kind: Kind, recipients: Recipients<'a>) -> Record<'a> {
        Record {
            kind,
            at_ms: None,
            recipients,
            sender: None,
            listener: None,
            route: None,
            pool: None,
            stream: None,
            server: None,
            category: None,
            latency_ms: None,
        }
    }

    /// How many recipients the record stands for (at least one).
    pub fn units(&self) -> u64 {
        self.recipients.len().max(1) as u64
    }

    /// The values that hold for every recipient of the record.
    pub fn common(&self) -> [(Dimension, Option<Cow<'a, str>>); 6] {
        let borrowed = |v: Option<&'a str>| v.map(Cow::Borrowed);
        [
            (Dimension::Listener, borrowed(self.listener)),
            (Dimension::Route, borrowed(self.route)),
            (Dimension::Pool, borrowed(self.pool)),
            (Dimension::Stream, borrowed(self.stream)),
            (Dimension::Mx, self.server.map(mx_rollup)),
            (Dimension::SenderDomain, self.sender.map(domain_of)),
        ]
    }
}

/// The lowercased domain of an address (empty for the null sender or a bare `postmaster`).
pub fn domain_of(address: &str) -> Cow<'_, str> {
    lowercase(address.rsplit_once('@').map_or("", |(_, d)| d))
}

/// The MX rollup of a server: its host name (`mx1.mail.example.com[192.0.2.1:25]` →
/// `mx1.mail.example.com`) cut to its last two labels (`example.com`), the registered domain in
/// most cases (not under two-label public suffixes such as `co.uk`); a server known only by its
/// address is counted under the address.
pub fn mx_rollup(server: &str) -> Cow<'_, str> {
    let (host, addr) = match server.split_once('[') {
        Some((host, rest)) => (host, rest.trim_end_matches(']')),
        None => (server, ""),
    };
    let host = host.trim_end_matches('.');
    if host.is_empty() {
        return match addr.parse::<SocketAddr>() {
            Ok(a) => Cow::Owned(a.ip().to_string()),
            Err(_) => Cow::Borrowed(addr),
        };
    }
    if host.parse::<IpAddr>().is_ok() {
        return Cow::Borrowed(host);
    }
    let cut = host.rmatch_indices('.').nth(1).map_or(host, |(i, _)| &host[i + 1..]);
    lowercase(cut)
}

/// `text` lowercased, borrowed when it already is.
fn lowercase(text: &str) -> Cow<'_, str> {
    if text.bytes().any(|b| b.is_ascii_uppercase()) {
        Cow::Owned(text.to_ascii_lowercase())
    } else {
        Cow::Borrowed(text)
    }
}
