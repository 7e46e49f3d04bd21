//! The one mapping from an event (a JSON object, as subscribers get them) to what it counts.
//! When the event model changes, this is the function to adjust.
//!
//! Counts are of recipients: an event naming three recipients counts three (an event naming
//! none counts one), each under its own recipient domain.

use serde_json::Value;

use super::dimension::Dimension;
use crate::address::Address;

/// What an event adds to the counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Received,
    Delivered,
    Deferred,
    Bounced,
    Rejected,
    Quarantined,
}

/// One event, read: when, what, and the dimension values it counts under.
#[derive(Debug, Clone, PartialEq)]
pub struct Observation {
    /// Unix milliseconds.
    pub at_ms: u64,
    /// `None` for events that count nothing but perhaps a complaint.
    pub kind: Option<Kind>,
    pub complaint: bool,
    /// The bounce category, for a bounce.
    pub category: Option<String>,
    pub latency_ms: Option<u64>,
    /// Values that hold for every recipient of the event.
    pub common: Vec<(Dimension, String)>,
    /// Per recipient, its own values (domain, MX rollup).
    pub recipients: Vec<Vec<(Dimension, String)>>,
}

impl Observation {
    /// How many recipients the event stands for (at least one).
    pub fn units(&self) -> u64 {
        self.recipients.len().max(1) as u64
    }
}

/// Reads an event; `None` when it counts nothing at all. `now_ms` stands in for a missing `"at"`.
///
/// `type` maps as: received, refused (as rejected), delivered (with `latency_ms`), deferred,
/// bounced (with `category`), expired (a bounce of category `expired`), quarantined; routed,
/// filtered, suppressed and admin count nothing. `"complaint": true` counts a complaint on any
/// event.
pub fn observe(event: &Value, now_ms: u64) -> Option<Observation> {
    let text = |key: &str| event.get(key).and_then(Value::as_str);
    let kind = match text("type")? {
        "received" => Some(Kind::Received),
        "refused" => Some(Kind::Rejected),
        "delivered" => Some(Kind::Delivered),
        "deferred" => Some(Kind::Deferred),
        "bounced" | "expired" => Some(Kind::Bounced),
        "quarantined" => Some(Kind::Quarantined),
        _ => None,
    };
    let complaint = event.get("complaint").and_then(Value::as_bool).unwrap_or(false);
    if kind.is_none() && !complaint {
        return None;
    }
    let category = match (kind, text("category"), text("type")) {
        (Some(Kind::Bounced), Some(c), _) => Some(c.to_owned()),
        (Some(Kind::Bounced), None, Some("expired")) => Some("expired".to_owned()),
        (Some(Kind::Bounced), None, _) => Some("unknown".to_owned()),
        _ => None,
    };
    let mut common = Vec::new();
    for (dimension, key) in [
        (Dimension::Route, "route"),
        (Dimension::Pool, "pool"),
        (Dimension::Stream, "stream"),
        (Dimension::Listener, "listener"),
    ] {
        if let Some(value) = text(key) {
            common.push((dimension, value.to_owned()));
        }
    }
    if let Some(sender) = text("sender") {
        common.push((Dimension::SenderDomain, domain_of(sender)));
    }
    let mx = text("mx");
    let recipients = recipients_of(event)
        .map(|r| {
            let mut own = vec![(Dimension::Domain, domain_of(r))];
            own.extend(mx.map(|m| (Dimension::Mx, m.to_owned())));
            own
        })
        .collect();
    Some(Observation {
        at_ms: event.get("at").and_then(Value::as_u64).unwrap_or(now_ms),
        kind,
        complaint,
        category,
        latency_ms: event.get("latency_ms").and_then(Value::as_u64),
        common,
        recipients,
    })
}

/// `"recipients"` (an array of addresses) or `"recipient"` (one).
fn recipients_of(event: &Value) -> impl Iterator<Item = &str> {
    let many = event.get("recipients").and_then(Value::as_array).into_iter().flatten();
    let one = event.get("recipient").into_iter();
    many.chain(one).filter_map(Value::as_str)
}

/// The lowercased domain of an address the gate wrote (empty for the null sender).
fn domain_of(address: &str) -> String {
    Address::trusted(address.to_owned()).domain()
}
