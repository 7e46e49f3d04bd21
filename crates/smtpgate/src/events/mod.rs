//! The message history: what happened to each message, as typed [`Event`]s.
//!
//! Intake, the queue and the admin API call [`Events::emit`]; it never blocks them: events go
//! through a bounded channel to one writer thread (`writer.rs`), and when that is full an event is
//! dropped and counted (`smtpgate_events_dropped_total`). The writer batches them into an
//! embedded store (`store.rs`, redb, `<spool>/events.redb` or `[events] dir`), indexed by queue
//! id, Message-ID and address, pruned by age (`retention`) and size (`max_size`); appends them to
//! a JSON-lines file (`log.rs`, `[events] log_file`, rotated); and hands them to further
//! [`EventSink`]s given at start (webhooks). [`Events::query`] answers `smtpgate trace` and
//! `GET /api/v1/messages` from the store with range scans of the indexes.
//!
//! One event is one JSON object with these fields (absent when empty; stable names):
//!
//! | field | meaning |
//! |---|---|
//! | `id` | unique, time-ordered (32 hex digits: ms, counter, node random); receivers deduplicate by it |
//! | `at` | unix milliseconds |
//! | `node` | `[events] node` (default the hostname) |
//! | `type` | `received`, `refused`, `filtered`, `delivered`, `deferred`, `bounced`, `expired`, `quarantined`, `suppressed`, `admin` |
//! | `queue_id`, `message_id` | the copy's queue id; the Message-ID without `<>` |
//! | `sender`, `recipients` | the envelope (`""` is the null sender) |
//! | `route`, `pool`, `stream` | where the copy goes: the routing decision, on `received` and every later event (`pool` absent: MX delivery) |
//! | `listener`, `client` | where and from whom it came in |
//! | `size` | `received`: the message's size in bytes |
//! | `reply` | `refused`, `deferred`, `bounced`, `delivered`, `expired`: `{code, status, text}` |
//! | `server`, `tls`, `latency_ms` | `delivered`, `deferred`, `bounced`: the server that answered, whether over TLS, the attempt's time |
//! | `category` | `bounced`, `deferred`: the bounce category |
//! | `filter`, `verdict` | `filtered`: which filter and what it decided |
//! | `entry` | `quarantined`: the quarantine entry |
//! | `action`, `by` | `admin`: what was done and by whom (the client's address) |
//!
//! A new kind of event: a variant of [`Kind`] (with its fields), a row above, a place in
//! [`Kind::continues_story`] when it follows a copy's `received` event, and its `emit` where it
//! happens. Events sit among the runtime services: they name config, envelope, reply
//! and metrics, and nothing of intake, queue, session or server.

mod id;
mod log;
mod store;
#[cfg(test)]
mod tests;
mod writer;

use std::path::{Path, PathBuf};
use std::sync::mpsc::{SyncSender, TrySendError};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

use crate::config::EventsConfig;
use crate::envelope::{QueueId, Recipient, Sender};
use crate::metrics::Metrics;
use crate::reply::Upstream;
pub use id::{IdGen, now_ms};
pub use store::{Order, Query, Store, StoreError};

/// Events the writer may be behind by before new ones are dropped.
const CHANNEL: usize = 64 * 1024;

/// One thing that happened to a message (or to the gate, for `admin`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    #[serde(default)]
    pub id: String,
    #[serde(default)]
    pub at: u64,
    #[serde(default)]
    pub node: String,
    #[serde(flatten)]
    pub kind: Kind,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sender: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub recipients: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub route: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pool: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub listener: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client: Option<String>,
}

/// What happened, with what only that kind carries. Serialized as `"type"`, in snake_case.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Kind {
    /// Spooled (one event per copy), with the routing decision: the copy's `route`, `pool` and
    /// `stream`.
    Received {
        size: u64,
    },
    /// Refused at the end of data (or in session): the client's reply.
    Refused {
        reply: Reply,
    },
    /// A filter's verdict that ended the message's way (discarded).
    Filtered {
        filter: String,
        verdict: String,
    },
    Delivered {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        server: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        tls: Option<bool>,
        reply: Reply,
        latency_ms: u64,
    },
    Deferred {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        server: Option<String>,
        reply: Reply,
        category: String,
        latency_ms: u64,
    },
    Bounced {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        server: Option<String>,
        category: String,
        reply: Reply,
        latency_ms: u64,
    },
    /// Too old in the queue: bounced with the last error.
    Expired {
        reply: Reply,
    },
    Quarantined {
        entry: String,
    },
    /// Recipients dropped because they are on the suppression list.
    Suppressed {
        reason: String,
    },
    Admin {
        action: String,
        by: String,
    },
}

impl Kind {
    /// Whether an event of this kind goes on the story a `received` event of the same queue id
    /// opened (a delivery attempt, an expiry, an admin action): the store finds it through the
    /// queue id alone, and indexes only the opening event by address and Message-ID.
    pub fn continues_story(&self) -> bool {
        matches!(
            self,
            Kind::Delivered { .. }
                | Kind::Deferred { .. }
                | Kind::Bounced { .. }
                | Kind::Expired { .. }
                | Kind::Admin { .. }
        )
    }

    /// The `"type"` it is serialized with.
    pub fn name(&self) -> &'static str {
        match self {
            Kind::Received { .. } => "received",
            Kind::Refused { .. } => "refused",
            Kind::Filtered { .. } => "filtered",
            Kind::Delivered { .. } => "delivered",
            Kind::Deferred { .. } => "deferred",
            Kind::Bounced { .. } => "bounced",
            Kind::Expired { .. } => "expired",
            Kind::Quarantined { .. } => "quarantined",
            Kind::Suppressed { .. } => "suppressed",
            Kind::Admin { .. } => "admin",
        }
    }
}

/// A reply as events show it: typed, never a line to parse again.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reply {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
    pub text: String,
}

impl From<&Upstream> for Reply {
    fn from(r: &Upstream) -> Reply {
        Reply {
            code: r.code,
            status: r.status.as_ref().map(|s| s.to_string()),
            text: r.text.clone(),
        }
    }
}

impl From<&smtpgate_proto::Reply> for Reply {
    fn from(r: &smtpgate_proto::Reply) -> Reply {
        Reply {
            code: Some(r.code),
            status: Some(r.status.to_string()).filter(|s| !s.is_empty()),
            text: r.text.to_string(),
        }
    }
}

impl Event {
    /// An event of `kind` with nothing else yet; `emit` stamps its id, time and node.
    pub fn new(kind: Kind) -> Event {
        Event {
            id: String::new(),
            at: 0,
            node: String::new(),
            kind,
            queue_id: None,
            message_id: None,
            sender: None,
            recipients: Vec::new(),
            route: None,
            pool: None,
            stream: None,
            listener: None,
            client: None,
        }
    }

    pub fn queue(mut self, id: QueueId) -> Event {
        self.queue_id = Some(id.to_string());
        self
    }

    /// The Message-ID, without its angle brackets.
    pub fn message_id(mut self, id: Option<&str>) -> Event {
        self.message_id = id.map(normal_message_id).filter(|m| !m.is_empty());
        self
    }

    pub fn sender(mut self, sender: &Sender) -> Event {
        self.sender = Some(sender.as_str().to_owned());
        self
    }

    pub fn recipients<'a>(mut self, rcpts: impl IntoIterator<Item = &'a Recipient>) -> Event {
        self.recipients = rcpts.into_iter().map(|r| r.address.to_string()).collect();
        self
    }

    /// Route, pool and stream of a copy.
    pub fn path(mut self, route: Option<&str>, pool: Option<&str>, stream: Option<&str>) -> Event {
        self.route = route.map(str::to_owned);
        self.pool = pool.map(str::to_owned);
        self.stream = stream.map(str::to_owned);
        self
    }

    pub fn origin(mut self, listener: &str, client: Option<std::net::IpAddr>) -> Event {
        self.listener = Some(listener.to_owned());
        self.client = client.map(|c| c.to_string());
        self
    }
}

/// A Message-ID as it is indexed: trimmed, without `<>`.
pub fn normal_message_id(id: &str) -> String {
    id.trim().trim_start_matches('<').trim_end_matches('>').to_owned()
}

/// Someone else who wants every event (webhooks): called on the writer thread, in order, with
/// the event's JSON line. It must not block for long; a slow sink queues on its own.
pub trait EventSink: Send + Sync {
    fn publish(&self, json: &str);
}

/// What the writer thread is sent.
enum Msg {
    Event(Recorded),
    /// Commit what came before durably, then answer.
    Flush(SyncSender<()>),
}

/// An event as the writer takes it: its JSON line and the values it is indexed under, in one
/// buffer made on the emitting thread. The event's own fields are freed where they were made,
/// and the buffer goes back to the emitting threads once stored (`Buffers`): nothing made on
/// one thread is freed on another, which is what slows the allocator of a busy gate.
pub struct Recorded {
    /// Unix ms and sequence: where the event is stored.
    pub(crate) at: u64,
    pub(crate) seq: u64,
    json_len: usize,
    /// The JSON line, then each index value as `NUL tag value`: `Q` the queue id (upper case),
    /// `M` the Message-ID, `A` an address (lower case); values holding a NUL are not indexed.
    buf: Vec<u8>,
}

impl Recorded {
    /// The event's JSON line and index values, in `buf` (emptied first). Only an event that
    /// opens a story is indexed by address and Message-ID: later ones are found through their
    /// queue id.
    pub fn of(event: &Event, buf: Vec<u8>) -> Recorded {
        let mut buf = buf;
        buf.clear();
        // Writing to memory cannot fail, nor can serializing these plain fields.
        let _ = serde_json::to_writer(&mut buf, event);
        let json_len = buf.len();
        index_values(event, &mut buf);
        Recorded {
            at: event.at,
            seq: id::seq_of(&event.id),
            json_len,
            buf,
        }
    }

    /// The JSON line (UTF-8, as serde_json writes it).
    pub fn json(&self) -> &str {
        std::str::from_utf8(&self.buf[..self.json_len]).unwrap_or_default()
    }

    /// The JSON line's bytes.
    pub(crate) fn json_bytes(&self) -> &[u8] {
        &self.buf[..self.json_len]
    }

    /// The index values: `(tag, value)`.
    pub(crate) fn index(&self) -> impl Iterator<Item = (u8, &str)> + Clone {
        index_parts(&self.buf[self.json_len..])
    }
}

/// Up to how many recipients an event's addresses are indexed once each.
const DEDUPLICATED: usize = 32;

/// Appends `event`'s index values to `buf` (see [`Recorded`]).
pub(crate) fn index_values(event: &Event, buf: &mut Vec<u8>) {
    let mut value = |tag: u8, v: &str, case: fn(&u8) -> u8| {
        if v.is_empty() || v.contains('\0') {
            return;
        }
        buf.push(0);
        buf.push(tag);
        buf.extend(v.as_bytes().iter().map(case));
    };
    if let Some(q) = &event.queue_id {
        value(b'Q', q, u8::to_ascii_uppercase);
        if event.kind.continues_story() {
            return;
        }
    }
    if let Some(m) = &event.message_id {
        value(b'M', m, |b| *b);
    }
    let addresses = event.sender.iter().chain(&event.recipients);
    // Each address once, in any case; past a few dozen the comparisons would cost more than the
    // index entries they save (an entry written twice is the same key, stored once).
    let few = event.recipients.len() < DEDUPLICATED;
    for (n, a) in addresses.clone().enumerate() {
        if !few || !addresses.clone().take(n).any(|b| b.eq_ignore_ascii_case(a)) {
            value(b'A', a, u8::to_ascii_lowercase);
        }
    }
}

/// The `(tag, value)` pairs of index values written by [`index_values`].
pub(crate) fn index_parts(values: &[u8]) -> impl Iterator<Item = (u8, &str)> + Clone {
    values.split(|b| *b == 0).skip(1).filter_map(|part| {
        let (tag, value) = part.split_first()?;
        Some((*tag, std::str::from_utf8(value).ok()?))
    })
}

/// Event buffers on their way back from the writer to the emitting threads: in a steady flow
/// each is made once and used again.
#[derive(Clone, Default)]
pub(crate) struct Buffers(Arc<Mutex<Vec<Vec<u8>>>>);

/// Buffers kept for use again at most (what a second of a busy gate's events takes).
const BUFFERS_KEPT: usize = 4096;
/// The size a buffer is made with (an event's JSON line is a few hundred bytes).
const BUFFER_SIZE: usize = 1024;

impl Buffers {
    fn take(&self) -> Vec<u8> {
        let kept = self.0.lock().unwrap_or_else(|e| e.into_inner()).pop();
        kept.unwrap_or_else(|| Vec::with_capacity(BUFFER_SIZE))
    }

    /// Keeps the buffers of stored events for use again (up to [`BUFFERS_KEPT`], none much
    /// larger than usual).
    pub(crate) fn give(&self, events: impl Iterator<Item = Recorded>) {
        let mut kept = self.0.lock().unwrap_or_else(|e| e.into_inner());
        for event in events {
            if kept.len() < BUFFERS_KEPT && event.buf.capacity() <= 4 * BUFFER_SIZE {
                kept.push(event.buf);
            }
        }
    }
}

/// The handle in the `Context`: cheap to clone; does nothing when events are disabled.
#[derive(Clone, Default)]
pub struct Events {
    inner: Option<Arc<Inner>>,
}

struct Inner {
    tx: SyncSender<Msg>,
    ids: IdGen,
    node: String,
    metrics: Arc<Metrics>,
    store: Arc<Store>,
    buffers: Buffers,
}

/// Why the event store could not be opened.
#[derive(Debug, thiserror::Error)]
#[error("cannot open the event store {0}: {1}")]
pub struct OpenError(pub PathBuf, pub StoreError);

impl Events {
    /// Opens the store under `[events] dir` (or `spool_dir`) and starts the writer; disabled
    /// events give a handle that records nothing. `story_span` is how long a copy can stay
    /// queued (`queue.max_age`; see [`Store::open`]).
    pub fn open(
        config: &EventsConfig,
        spool_dir: &Path,
        story_span: std::time::Duration,
        metrics: Arc<Metrics>,
        sinks: Vec<Box<dyn EventSink>>,
    ) -> Result<Events, OpenError> {
        if !config.enabled {
            return Ok(Events::default());
        }
        let path = config.dir.as_deref().unwrap_or(spool_dir).join("events.redb");
        let store = Arc::new(Store::open(&path, story_span).map_err(|e| OpenError(path.clone(), e))?);
        let buffers = Buffers::default();
        let tx = writer::start(config, store.clone(), sinks, buffers.clone(), CHANNEL);
        Ok(Events::with(tx, store, buffers, config.node.clone(), metrics))
    }

    fn with(tx: SyncSender<Msg>, store: Arc<Store>, buffers: Buffers, node: String, metrics: Arc<Metrics>) -> Events {
        Events {
            inner: Some(Arc::new(Inner {
                tx,
                buffers,
                ids: IdGen::new(),
                node,
                metrics,
                store,
            })),
        }
    }

    pub fn enabled(&self) -> bool {
        self.inner.is_some()
    }

    /// Records `event` (stamped with its id, time and node) without waiting: dropped and counted
    /// when the writer is behind.
    pub fn emit(&self, event: Event) {
        let Some(inner) = &self.inner else { return };
        let mut event = event;
        let (id, at) = inner.ids.next();
        event.id = id;
        event.at = at;
        event.node.clone_from(&inner.node);
        let recorded = Recorded::of(&event, inner.buffers.take());
        match inner.tx.try_send(Msg::Event(recorded)) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => inner.metrics.events_dropped.inc(),
        }
    }

    /// Builds an event only when events are recorded: what it costs to gather its fields is not
    /// paid otherwise.
    pub fn emit_with(&self, build: impl FnOnce() -> Event) {
        if self.enabled() {
            self.emit(build());
        }
    }

    /// Waits until everything emitted so far is durably stored (at shutdown, and in tests).
    pub fn flush(&self) {
        let Some(inner) = &self.inner else { return };
        let (done, wait) = std::sync::mpsc::sync_channel(1);
        if inner.tx.send(Msg::Flush(done)).is_ok() {
            let _ = wait.recv();
        }
    }

    /// The events `query` asks for; empty when events are disabled.
    pub fn query(&self, query: &Query) -> Result<Vec<Event>, StoreError> {
        match &self.inner {
            Some(inner) => inner.store.query(query),
            None => Ok(Vec::new()),
        }
    }

    /// The newest events since `since_ms`, of kind `kind` when given, at most `limit`.
    pub fn recent(&self, since_ms: u64, kind: Option<&str>, limit: usize) -> Result<Vec<Event>, StoreError> {
        match &self.inner {
            Some(inner) => inner.store.recent(since_ms, kind, limit),
            None => Ok(Vec::new()),
        }
    }
}
