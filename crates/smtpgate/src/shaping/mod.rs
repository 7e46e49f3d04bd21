//! Traffic shaping per destination: how many connections, how fast, which timeouts and TLS policy.
//!
//! [`rules`] reads the shaping file (reloaded when it changes). The [`Shaper`] keeps the run-time
//! state per [`Key`] (a domain, or an MX rollup shared by every domain whose mail servers match):
//! a connection semaphore, and the next instant a message and a connection may start ([`crate::rate`]'s
//! GCRA with no burst, reserving slots in order of asking, so a rate of 60/min sends one message a
//! second, never 60 at once). The state lives
//! across configuration reloads; only the limits change.
//!
//! A delivery worker for an MX hop asks, in order: [`Shaper::shape`] (after the MX lookup, with
//! the [`adaptive`] actions in force applied), [`Shaper::wait_suspension`], a
//! [`Shaper::connection`] permit and [`Shaper::connection_slot`] before it connects, and
//! [`Shaper::message_slot`] before each message; it reports failed replies to
//! [`Shaper::observe`], where the adaptive rules act on them.
//!
//! With Redis, a rate is one GCRA for every node (see [`crate::shared`]). Each node keeps one
//! place in that shared line per limit ([`Line`]): its workers waiting for the limit queue here
//! first, and only the first of them holds a reservation in Redis, until its slot comes. So nodes
//! with mail waiting take turns, slot by slot, whatever number of workers each has waiting, and
//! a node alone still uses the whole rate (its next worker reserves the slot after the one that
//! just came).
//!
//! Connection limits are resizable semaphores ([`Gate`]): when a limit goes down (a reload, an
//! adaptive action) the permits in use beyond it are retired as their connections close, and
//! [`Shaper::over_limit`] tells workers to close one.

pub mod adaptive;
mod gate;
pub mod outbound;
pub use crate::config::shaping as rules;
pub mod warmup;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use crate::config::QueueConfig;
use crate::rate::{Gcra, Limiter, Mode};
use crate::reloading::{Loaded, Reloading};
pub use gate::{Gate, Permit};
pub use rules::{Key, Rate, Rules, Shape};
pub use warmup::{Pick, SourceUsage};

/// The shaping rules in force and the counters they act on.
pub struct Shaper {
    rules: Source,
    state: Arc<State>,
    /// With `[redis]`: rates are counted for all nodes together there.
    shared: Option<crate::shared::Shared>,
}

enum Source {
    Fixed(Arc<Rules>),
    File(Reloading<Rules>),
}

/// What survives a configuration reload.
#[derive(Default)]
pub struct State {
    /// GCRA: the earliest instant the next message (or connection) of a key may start (idle keys
    /// forgotten).
    next_message: Limiter<Limit>,
    next_connection: Limiter<Limit>,
    /// With Redis: this node's line of workers waiting for a shared message (or connection)
    /// slot of a key.
    message_lines: Mutex<HashMap<Limit, Line>>,
    connection_lines: Mutex<HashMap<Limit, Line>>,
    /// Per key: its connection limit.
    connections: Mutex<HashMap<Limit, Arc<Gate>>>,
    /// Per key: workers waiting for a connection permit.
    waiting: Mutex<HashMap<Limit, usize>>,
    /// Per stream: the smooth weighted round robin's current weights of its source addresses.
    sources: Mutex<HashMap<String, Vec<i64>>>,
    /// The key each domain's last lookup found (to size its workers before the next lookup).
    domain_keys: Mutex<HashMap<String, Key>>,
    /// The adaptive actions in force.
    pub actions: adaptive::Actions,
    /// Messages sent per source address today (IP warm-up).
    warmup: std::sync::OnceLock<warmup::Counts>,
    /// The node's cap on outbound MX connections, by stream priority.
    outbound: std::sync::OnceLock<Arc<outbound::Outbound>>,
}

/// What one set of counters is for: a destination (domain or MX rollup) within one stream, and
/// for a destination whose shaping says `per_source = true`, one source address. Each stream
/// counts against its own limits, so bulk mail never uses up transactional mail's.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Limit {
    pub stream: Option<String>,
    pub dest: Key,
    pub source: Option<std::net::IpAddr>,
}

impl Limit {
    /// The stream `"default"` is the same as none.
    pub fn new(stream: Option<&str>, dest: Key) -> Limit {
        Limit {
            stream: stream.filter(|s| *s != "default").map(str::to_owned),
            dest,
            source: None,
        }
    }

    /// The same limit counted for one source address.
    pub fn with_source(mut self, source: Option<std::net::IpAddr>) -> Limit {
        self.source = source;
        self
    }

    /// Reads what [`Limit`]'s `Display` writes: `<stream>/domain:<name>` or `<stream>/mx:<pattern>`,
    /// with `@<source address>` after the stream for a limit per source address.
    pub fn parse(text: &str) -> Result<Limit, String> {
        let bad = || {
            format!(
                "{text:?} is not <stream>/domain:<name> or <stream>/mx:<pattern> (<stream>@<address>/... per source)"
            )
        };
        let (stream, dest) = text.split_once('/').ok_or_else(bad)?;
        let dest = match dest.split_once(':') {
            Some(("domain", d)) if !d.is_empty() => Key::Domain(d.trim_end_matches('.').to_ascii_lowercase()),
            Some(("mx", p)) if !p.is_empty() => Key::Mx(p.trim_end_matches('.').to_ascii_lowercase()),
            _ => return Err(bad()),
        };
        let (stream, source) = match stream.split_once('@') {
            Some((stream, ip)) => (stream, Some(ip.parse().map_err(|_| bad())?)),
            None => (stream, None),
        };
        if stream.is_empty() {
            return Err(bad());
        }
        Ok(Limit::new(Some(stream), dest).with_source(source))
    }
}

impl std::fmt::Display for Limit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let stream = self.stream.as_deref().unwrap_or("default");
        match self.source {
            Some(ip) => write!(f, "{stream}@{ip}/{}", self.dest),
            None => write!(f, "{stream}/{}", self.dest),
        }
    }
}

/// One key's limits and use, for listing.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Usage {
    pub stream: String,
    pub key: String,
    /// The source address, for a limit counted per source address.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source: Option<std::net::IpAddr>,
    /// The limits in force: the file's, lowered by an adaptive action when one is.
    pub max_connections: usize,
    pub connections: usize,
    pub max_message_rate: Option<String>,
    pub connection_rate: Option<String>,
    /// The adaptive action in force, in words (`"suspend"`, `"rate x0.5"`...).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub adaptive: Option<String>,
}

impl Shaper {
    /// The shaping file the configuration loaded (reloaded when it changes), or `[queue]`'s
    /// limits for everyone. `state` carries the counters over from the previous configuration.
    pub fn new(file: Option<Loaded<Rules>>, queue: &QueueConfig, state: Option<Arc<State>>) -> Shaper {
        let rules = match file {
            None => Source::Fixed(Arc::new(Rules::from_queue(queue))),
            Some(loaded) => {
                let q = queue.clone();
                Source::File(Reloading::from_loaded(loaded, move |p| Rules::load(p, &q)))
            }
        };
        Shaper {
            rules,
            state: state.unwrap_or_default(),
            shared: None,
        }
    }

    /// Counts message and connection rates in the Redis the nodes share (falling back to this
    /// node's own counters while Redis is unreachable).
    pub fn with_shared(mut self, shared: Option<crate::shared::Shared>) -> Shaper {
        self.shared = shared;
        self
    }

    pub fn state(&self) -> Arc<State> {
        self.state.clone()
    }

    pub fn rules(&self) -> Arc<Rules> {
        match &self.rules {
            Source::Fixed(r) => r.clone(),
            Source::File(r) => r.get(),
        }
    }

    /// The key and limits for a delivery to `domain`, once its mail servers are known.
    pub fn shape(&self, domain: &str, mx_hosts: &[&str]) -> (Key, Shape) {
        let rules = self.rules();
        let (key, shape) = rules.lookup(domain, mx_hosts);
        let mut known = self.state.domain_keys.lock().unwrap();
        if known.get(domain) != Some(&key) {
            known.insert(domain.to_owned(), key.clone());
        }
        (key, shape.clone())
    }

    /// How many connections deliveries to `domain` may use: its key's limit when a lookup found
    /// it before (an MX rollup's), else its own entry's or the default.
    pub fn max_connections(&self, domain: &str) -> usize {
        let rules = self.rules();
        let known = self.state.domain_keys.lock().unwrap().get(domain).cloned();
        known
            .and_then(|key| rules.shape_of(&key).map(|s| s.max_connections))
            .unwrap_or_else(|| rules.before_lookup(domain).max_connections)
    }

    /// Whether a worker is waiting for one of the key's connections: an idle one should close.
    pub fn contended(&self, key: &Limit) -> bool {
        self.state.waiting.lock().unwrap().get(key).is_some_and(|&n| n > 0)
    }

    /// Waits for one of the key's `max` connections to be free; the permit is held as long as the
    /// connection is open. A different `max` than before resizes the limit (a reload, an
    /// adaptive action).
    pub async fn connection(&self, key: &Limit, max: usize) -> Permit {
        let gate = self.gate(key, max);
        if let Some(permit) = gate.try_acquire() {
            return permit;
        }
        let _waiting = Waiting::new(&self.state.waiting, key);
        gate.acquire().await
    }

    /// The key's connection limit, sized `max` (asked per message: no allocation once it exists).
    fn gate(&self, key: &Limit, max: usize) -> Arc<Gate> {
        let mut all = self.state.connections.lock().unwrap();
        let gate = match all.get(key) {
            Some(gate) => gate.clone(),
            None => all
                .entry(key.clone())
                .or_insert_with(|| Arc::new(Gate::new(max)))
                .clone(),
        };
        gate.resize(max);
        gate
    }

    /// Whether the key has more connections open than its limit allows now (it went down): a
    /// worker should close its connection.
    pub fn over_limit(&self, key: &Limit, max: usize) -> bool {
        self.gate(key, max).over_limit()
    }

    /// Waits until the key may open another connection under `rate`.
    pub async fn connection_slot(&self, key: &Limit, rate: Option<Rate>) {
        if let Some(rate) = rate {
            let counters = Counters {
                local: &self.state.next_connection,
                lines: &self.state.connection_lines,
                kind: "conn",
            };
            self.reserve(counters, key, rate).await.wait().await;
        }
    }

    /// Waits until the key may send another message under `rate`.
    pub async fn message_slot(&self, key: &Limit, rate: Option<Rate>) {
        if let Some(slot) = self.reserve_message(key, rate).await {
            slot.wait().await;
        }
    }

    /// Takes the key's next message slot under `rate` (`None`: no limit). With a shared rate this
    /// first waits for this node's turn in the shared line (behind its other workers waiting for
    /// the key). The caller then waits for the slot ([`Reserved::wait`]); a worker facing a long
    /// wait closes its connection first.
    pub async fn reserve_message(&self, key: &Limit, rate: Option<Rate>) -> Option<Reserved> {
        let rate = rate?;
        let counters = Counters {
            local: &self.state.next_message,
            lines: &self.state.message_lines,
            kind: "msg",
        };
        Some(self.reserve(counters, key, rate).await)
    }

    /// A slot from the shared counter when there is one, else (or when it fails) from this node's.
    async fn reserve(&self, counters: Counters<'_>, key: &Limit, rate: Rate) -> Reserved {
        if let Some(shared) = &self.shared {
            let line = line(counters.lines, key);
            let mut turn = line.lock_owned().await;
            if turn.down_until.is_none_or(|until| Instant::now() >= until) {
                match shared
                    .take(&format!("{}:{key}", counters.kind), &gcra(rate), Mode::Reserve)
                    .await
                {
                    Ok(decision) => {
                        turn.down_until = None;
                        return Reserved {
                            at: Instant::now() + decision.delay(),
                            _turn: Some(turn),
                        };
                    }
                    Err(e) => {
                        // The workers behind in line count locally for a while rather than each
                        // waiting for Redis to fail in turn.
                        turn.down_until = Some(Instant::now() + SHARED_RETRY);
                        tracing::warn!(error = %e, limit = %key, "shared throttle unavailable: counting on this node alone")
                    }
                }
            }
        }
        Reserved {
            at: reserve(counters.local, key, rate),
            _turn: None,
        }
    }

    /// The node's cap on outbound MX connections, sized `max` (the current `[queue]
    /// max_connections`).
    pub fn outbound(&self, max: usize) -> Arc<outbound::Outbound> {
        let out = self
            .state
            .outbound
            .get_or_init(|| Arc::new(outbound::Outbound::new(max)));
        out.resize(max);
        out.clone()
    }

    /// Every key in use, with its limits and open connections, sorted by key.
    pub fn usage(&self) -> Vec<Usage> {
        let rules = self.rules();
        let all: Vec<(Limit, Arc<Gate>)> = {
            let all = self.state.connections.lock().unwrap();
            all.iter().map(|(k, g)| (k.clone(), g.clone())).collect()
        };
        let now = adaptive::now_ms();
        let mut out: Vec<Usage> = all
            .into_iter()
            .filter_map(|(key, gate)| {
                let mut shape = rules.shape_of(&key.dest)?.clone();
                let effect = self.state.actions.effect(&key, now);
                if let Some(e) = &effect {
                    e.apply(&mut shape);
                }
                Some(Usage {
                    stream: key.stream.clone().unwrap_or_else(|| "default".into()),
                    key: key.dest.to_string(),
                    source: key.source,
                    max_connections: shape.max_connections,
                    connections: gate.in_use(),
                    max_message_rate: shape.message_rate.map(|r| r.to_string()),
                    connection_rate: shape.connection_rate.map(|r| r.to_string()),
                    adaptive: effect.map(|_| self.state.actions.get(&key).map(|a| a.describe()).unwrap_or_default()),
                })
            })
            .collect();
        out.sort_by(|a, b| (&a.stream, &a.key, a.source).cmp(&(&b.stream, &b.key, b.source)));
        out
    }
}

/// How long after a failed request to the shared counter a node counts a limit on its own before
/// it asks Redis again.
const SHARED_RETRY: Duration = Duration::from_secs(1);

/// This node's line for one shared limit: whoever holds its lock holds the node's one place in the
/// shared GCRA line.
type Line = Arc<tokio::sync::Mutex<LineState>>;

#[derive(Default)]
struct LineState {
    /// Redis failed: until then, the limit is counted on this node alone.
    down_until: Option<Instant>,
}

/// The key's line in `lines`.
fn line(lines: &Mutex<HashMap<Limit, Line>>, key: &Limit) -> Line {
    let mut all = lines.lock().unwrap();
    match all.get(key) {
        Some(line) => line.clone(),
        None => all.entry(key.clone()).or_default().clone(),
    }
}

/// The counters of one kind of slot (messages or connections).
struct Counters<'a> {
    local: &'a Limiter<Limit>,
    lines: &'a Mutex<HashMap<Limit, Line>>,
    /// The shared key's prefix.
    kind: &'static str,
}

/// A slot taken under a rate, and with a shared rate, this node's turn in the shared line for it:
/// the node's next worker asks for the next slot only once this one has come.
#[must_use = "a reserved slot is waited for"]
pub struct Reserved {
    /// When the slot comes.
    pub at: Instant,
    _turn: Option<tokio::sync::OwnedMutexGuard<LineState>>,
}

impl Reserved {
    /// Waits until the slot comes, then gives the node's turn to its next worker.
    pub async fn wait(self) {
        tokio::time::sleep_until(self.at).await;
    }
}

/// Counts a worker as waiting for a key's connection while it lives (also when its wait is
/// cancelled).
struct Waiting<'a> {
    map: &'a Mutex<HashMap<Limit, usize>>,
    key: Limit,
}

impl<'a> Waiting<'a> {
    fn new(map: &'a Mutex<HashMap<Limit, usize>>, key: &Limit) -> Self {
        *map.lock().unwrap().entry(key.clone()).or_default() += 1;
        Waiting { map, key: key.clone() }
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        let mut map = self.map.lock().unwrap();
        if let Some(n) = map.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                map.remove(&self.key);
            }
        }
    }
}

/// Takes the key's next slot and returns when it comes. Slots are handed out in order of asking,
/// so waiters never starve each other.
fn reserve(next: &Limiter<Limit>, key: &Limit, rate: Rate) -> Instant {
    let now = Instant::now();
    now + next.take(key, &gcra(rate), Mode::Reserve, now).delay()
}

/// A shaping rate as a GCRA: no burst.
fn gcra(rate: Rate) -> Gcra {
    Gcra::new(rate.count, rate.per, 1)
}

#[cfg(test)]
mod tests;
