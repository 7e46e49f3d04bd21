//! Traffic shaping per destination: how many connections, how fast, which timeouts and TLS policy.
//!
//! [`rules`] reads the shaping file (reloaded when it changes). The [`Shaper`] keeps the run-time
//! state per [`Key`] (a domain, or an MX rollup shared by every domain whose mail servers match):
//! a connection semaphore, and the next instant a message and a connection may start (GCRA with no
//! burst, so a rate of 60/min sends one message a second, never 60 at once). The state lives
//! across configuration reloads; only the limits change.
//!
//! A delivery worker for an MX hop asks, in order: [`Shaper::shape`] (after the MX lookup, with
//! the [`adaptive`] actions in force applied), [`Shaper::wait_suspension`], a
//! [`Shaper::connection`] permit and [`Shaper::connection_slot`] before it connects, and
//! [`Shaper::message_slot`] before each message; it reports failed replies to
//! [`Shaper::observe`], where the adaptive rules act on them.
//!
//! Connection limits are resizable semaphores ([`Gate`]): when a limit goes down (a reload, an
//! adaptive action) the permits in use beyond it are retired as their connections close, and
//! [`Shaper::over_limit`] tells workers to close one.

pub mod adaptive;
mod gate;
pub mod outbound;
pub mod rules;
pub mod warmup;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use tokio::time::Instant;

use crate::config::QueueConfig;
use crate::route::reload::Reloading;
pub use gate::{Gate, Permit};
pub use rules::{Key, Rate, Rules, Shape};

/// The namespace of adaptive actions in the shared store.
const SHARED_ACTIONS: &str = "throttles";
/// How often a node reads the other nodes' adaptive actions.
const SHARED_POLL: std::time::Duration = std::time::Duration::from_secs(1);
/// A renewed action is written to the shared store at most this often.
const SHARED_RENEW: std::time::Duration = std::time::Duration::from_secs(5);

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
    /// GCRA: the earliest instant the next message (or connection) of a key may start.
    next_message: Mutex<HashMap<Limit, Instant>>,
    next_connection: Mutex<HashMap<Limit, Instant>>,
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

/// The source address a new connection of a stream sends from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pick {
    /// The stream has no source addresses: the system chooses.
    System,
    Address(std::net::IpAddr),
    /// Every address of the stream has sent its warm-up volume for today; the next day begins
    /// at this instant (ms since the epoch).
    Exhausted {
        until: u64,
    },
}

impl Pick {
    pub fn address(self) -> Option<std::net::IpAddr> {
        match self {
            Pick::Address(ip) => Some(ip),
            _ => None,
        }
    }
}

/// One source address of a stream, for listing.
#[derive(Debug, Clone, serde::Serialize)]
pub struct SourceUsage {
    pub stream: String,
    pub address: std::net::IpAddr,
    pub weight: u32,
    /// The day of its warm-up (1 on the first day); absent when it is not warming up.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub warmup_day: Option<i64>,
    /// Today's cap; absent when there is none.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub daily_cap: Option<u64>,
    pub sent_today: u64,
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
    /// The shaping file at `file` (checked now: an error is a configuration error), or `[queue]`'s
    /// limits for everyone. `state` carries the counters over from the previous configuration.
    pub fn new(file: Option<PathBuf>, queue: &QueueConfig, state: Option<Arc<State>>) -> Result<Shaper, String> {
        let rules = match file {
            None => Source::Fixed(Arc::new(Rules::from_queue(queue))),
            Some(path) => {
                let q = queue.clone();
                Source::File(Reloading::new(path, move |p| Rules::load(p, &q))?)
            }
        };
        Ok(Shaper {
            rules,
            state: state.unwrap_or_default(),
            shared: None,
        })
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

    /// `shape` (the file's limits for `key`) lowered by the adaptive action in force on it, and
    /// the instant (ms since the epoch) a suspension lasts until.
    pub fn effective(&self, key: &Limit, mut shape: Shape) -> (Shape, Option<u64>) {
        match self.state.actions.effect(key, adaptive::now_ms()) {
            None => (shape, None),
            Some(effect) => {
                effect.apply(&mut shape);
                (shape, effect.suspended_until)
            }
        }
    }

    /// Waits while deliveries to `key` are suspended (waking early when the action is cancelled
    /// or edited). Returns whether there was anything to wait for.
    pub async fn wait_suspension(&self, key: &Limit) -> bool {
        let mut waited = false;
        loop {
            let changed = self.state.actions.changed.notified();
            let Some(until) = self
                .state
                .actions
                .effect(key, adaptive::now_ms())
                .and_then(|e| e.suspended_until)
            else {
                return waited;
            };
            waited = true;
            let wait = std::time::Duration::from_millis(until.saturating_sub(adaptive::now_ms()));
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = changed => {}
            }
        }
    }

    /// Runs the adaptive rules on the failed replies of a delivery to `domain` (mail servers
    /// `hosts`) under `key`: each distinct reply once, every matching rule acting. `classify`
    /// gives a reply's bounce category.
    pub async fn observe(
        &self,
        key: &Limit,
        domain: &str,
        hosts: &[&str],
        failures: &[(Option<&str>, &str)],
        classify: impl Fn(Option<&str>, &str) -> crate::deliver::classify::Category,
    ) {
        let rules = self.rules();
        if rules.adaptive.is_empty() || failures.is_empty() {
            return;
        }
        let mut seen: Vec<&str> = Vec::new();
        let mut touched = Vec::new();
        for &(status, text) in failures {
            if seen.contains(&text) {
                continue;
            }
            seen.push(text);
            let reply = adaptive::Reply {
                domain,
                hosts,
                code: crate::feedback::reply_code(text),
                status,
                text,
                category: classify(status, text),
            };
            for rule in rules.adaptive.iter().filter(|r| r.matches(&reply)) {
                let (action, change) = self.state.actions.hit(key, rule, text, adaptive::now_ms());
                match change {
                    adaptive::Change::Started => tracing::warn!(
                        key = %action.key,
                        rule = %action.rule,
                        action = %action.describe(),
                        until = %crate::datetime::rfc3339_ms(action.until),
                        recovered = %crate::datetime::rfc3339_ms(action.recovered),
                        reason = %action.reason,
                        "throttle: started"
                    ),
                    adaptive::Change::Renewed => tracing::debug!(
                        key = %action.key,
                        rule = %action.rule,
                        hits = action.hits,
                        until = %crate::datetime::rfc3339_ms(action.until),
                        "throttle: renewed"
                    ),
                }
                touched.push(action);
            }
        }
        for action in touched {
            self.publish(&action, matches!(action.hits, 1)).await;
        }
    }

    /// Writes `action` to the shared store (a renewal at most every few seconds).
    pub async fn publish(&self, action: &adaptive::Action, force: bool) {
        let Some(shared) = &self.shared else { return };
        let now = adaptive::now_ms();
        if !force && !self.state.actions.due_for_sharing(&action.key, now, SHARED_RENEW) {
            return;
        }
        let ttl = std::time::Duration::from_millis(action.recovered.max(action.until).saturating_sub(now).max(1));
        let json = serde_json::to_string(action).unwrap_or_default();
        match shared.put(SHARED_ACTIONS, &action.key, &json, ttl).await {
            Ok(()) => self.state.actions.shared(&action.key, now),
            Err(e) => tracing::warn!(key = %action.key, error = %e, "throttle: cannot share with the other nodes"),
        }
    }

    /// Ends the action on `key` here and, with Redis, on every node.
    pub async fn cancel(&self, key: &str) -> Option<adaptive::Action> {
        let action = self.state.actions.cancel(key)?;
        tracing::warn!(key, rule = %action.rule, "throttle: cancelled by the administrator");
        if let Some(shared) = &self.shared
            && let Err(e) = shared.delete(SHARED_ACTIONS, key).await
        {
            tracing::warn!(key, error = %e, "throttle: cannot cancel on the other nodes");
        }
        Some(action)
    }

    /// Changes the action on `key` (or starts one) here and, with Redis, on every node.
    pub async fn edit(&self, key: &Limit, edit: &adaptive::Edit) -> adaptive::Action {
        let action = self.state.actions.edit(key, edit, adaptive::now_ms());
        tracing::warn!(
            key = %action.key,
            action = %action.describe(),
            until = %crate::datetime::rfc3339_ms(action.until),
            recovered = %crate::datetime::rfc3339_ms(action.recovered),
            reason = %action.reason,
            "throttle: set by the administrator"
        );
        self.publish(&action, true).await;
        action
    }

    /// With `[redis]`: reads the other nodes' adaptive actions every second, for as long as the
    /// server runs (the state outlives reloads, and so does this task).
    pub fn follow_shared(&self) -> Option<tokio::task::JoinHandle<()>> {
        let shared = self.shared.clone()?;
        let state = self.state.clone();
        Some(tokio::spawn(async move {
            let mut tick = tokio::time::interval(SHARED_POLL);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let read_at = adaptive::now_ms();
                match shared.all(SHARED_ACTIONS).await {
                    Ok(all) => {
                        let actions = all
                            .into_iter()
                            .filter_map(|(id, json)| match serde_json::from_str::<adaptive::Action>(&json) {
                                Ok(a) => Some(a),
                                Err(e) => {
                                    tracing::warn!(id, error = %e, "throttle: unreadable shared action skipped");
                                    None
                                }
                            })
                            .collect();
                        state.actions.merge_shared(actions, read_at);
                    }
                    Err(e) => tracing::debug!(error = %e, "throttle: cannot read the shared actions"),
                }
            }
        }))
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

    fn gate(&self, key: &Limit, max: usize) -> Arc<Gate> {
        let mut all = self.state.connections.lock().unwrap();
        let gate = all.entry(key.clone()).or_insert_with(|| Arc::new(Gate::new(max)));
        gate.resize(max);
        gate.clone()
    }

    /// Whether the key has more connections open than its limit allows now (it went down): a
    /// worker should close its connection.
    pub fn over_limit(&self, key: &Limit, max: usize) -> bool {
        self.gate(key, max).over_limit()
    }

    /// Waits until the key may open another connection under `rate`.
    pub async fn connection_slot(&self, key: &Limit, rate: Option<Rate>) {
        if let Some(rate) = rate {
            let at = self.reserve(&self.state.next_connection, "conn", key, rate).await;
            tokio::time::sleep_until(at).await;
        }
    }

    /// Waits until the key may send another message under `rate`.
    pub async fn message_slot(&self, key: &Limit, rate: Option<Rate>) {
        if let Some(at) = self.reserve_message(key, rate).await {
            tokio::time::sleep_until(at).await;
        }
    }

    /// Takes the key's next message slot under `rate` and says when it comes (`None`: no limit).
    /// The caller waits until then; a worker facing a long wait closes its connection first.
    pub async fn reserve_message(&self, key: &Limit, rate: Option<Rate>) -> Option<Instant> {
        let rate = rate?;
        Some(self.reserve(&self.state.next_message, "msg", key, rate).await)
    }

    /// A slot from the shared counter when there is one, else (or when it fails) from this node's.
    async fn reserve(&self, local: &Mutex<HashMap<Limit, Instant>>, kind: &str, key: &Limit, rate: Rate) -> Instant {
        if let Some(shared) = &self.shared {
            match shared.reserve(&format!("{kind}:{key}"), rate.interval()).await {
                Ok(wait) => return Instant::now() + wait,
                Err(e) => {
                    tracing::warn!(error = %e, limit = %key, "shared throttle unavailable: counting on this node alone")
                }
            }
        }
        reserve(local, key, rate)
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

    /// Keeps the warm-up counts in `file` (read now), unless the state already has its counts.
    pub fn with_warmup_file(self, file: std::path::PathBuf) -> Shaper {
        let _ = self.state.warmup.get_or_init(|| warmup::Counts::persisted(file));
        self
    }

    fn warmup(&self) -> &warmup::Counts {
        self.state.warmup.get_or_init(warmup::Counts::default)
    }

    /// The source address a new connection of `stream` sends from: its `source_addresses` in
    /// proportion to their weights (smooth weighted round robin), leaving out those that have
    /// sent their warm-up volume for today.
    pub fn source(&self, config: &crate::config::Config, stream: &str) -> Pick {
        let Some(s) = config.streams.iter().find(|s| s.name == stream) else {
            return Pick::System;
        };
        if s.sources.is_empty() {
            return Pick::System;
        }
        let today = warmup::day_of(adaptive::now_ms());
        let counts = self.warmup();
        let open: Vec<bool> = s
            .sources
            .iter()
            .map(|src| {
                s.daily_cap(src, today)
                    .is_none_or(|cap| counts.sent(src.address, today) < cap)
            })
            .collect();
        if !open.contains(&true) {
            return Pick::Exhausted {
                until: warmup::next_day_ms(today),
            };
        }
        let mut all = self.state.sources.lock().unwrap();
        let current = all.entry(stream.to_owned()).or_default();
        current.resize(s.sources.len(), 0);
        let mut total = 0;
        for ((c, src), _) in current.iter_mut().zip(&s.sources).zip(&open).filter(|(_, open)| **open) {
            *c += i64::from(src.weight);
            total += i64::from(src.weight);
        }
        let Some(best) = (0..s.sources.len())
            .filter(|&i| open[i])
            .max_by_key(|&i| (current[i], std::cmp::Reverse(i)))
        else {
            return Pick::System;
        };
        current[best] -= total;
        Pick::Address(s.sources[best].address)
    }

    /// Takes one message of `ip`'s warm-up volume for today in `stream`: `false` when it has
    /// sent all of it (the connection should give way to another address).
    pub fn take_source(&self, config: &crate::config::Config, stream: &str, ip: std::net::IpAddr) -> bool {
        let today = warmup::day_of(adaptive::now_ms());
        let cap = config
            .streams
            .iter()
            .find(|s| s.name == stream)
            .and_then(|s| s.sources.iter().find(|src| src.address == ip).map(|src| (s, src)))
            .and_then(|(s, src)| s.daily_cap(src, today));
        self.warmup().take(ip, today, cap)
    }

    /// Writes the warm-up counts to disk (at shutdown).
    pub fn save_warmup(&self) {
        self.warmup().save();
    }

    /// Every source address of every stream: weight, warm-up day, today's cap and use.
    pub fn sources(&self, config: &crate::config::Config) -> Vec<SourceUsage> {
        let today = warmup::day_of(adaptive::now_ms());
        let counts = self.warmup();
        config
            .streams
            .iter()
            .flat_map(|s| {
                s.sources.iter().map(move |src| SourceUsage {
                    stream: s.name.clone(),
                    address: src.address,
                    weight: src.weight,
                    warmup_day: src
                        .warmup_since
                        .filter(|_| s.daily_cap(src, today).is_some())
                        .map(|since| today - since + 1),
                    daily_cap: s.daily_cap(src, today),
                    sent_today: counts.sent(src.address, today),
                })
            })
            .collect()
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
                    adaptive: effect.map(|_| {
                        self.state
                            .actions
                            .get(&key.to_string())
                            .map(|a| a.describe())
                            .unwrap_or_default()
                    }),
                })
            })
            .collect();
        out.sort_by(|a, b| (&a.stream, &a.key, a.source).cmp(&(&b.stream, &b.key, b.source)));
        out
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

/// GCRA without burst: takes the key's next slot and returns when it comes. Slots are handed out
/// in order of asking, so waiters never starve each other.
fn reserve(next: &Mutex<HashMap<Limit, Instant>>, key: &Limit, rate: Rate) -> Instant {
    let mut next = next.lock().unwrap();
    let now = Instant::now();
    let due = next.get(key).copied().unwrap_or(now).max(now);
    next.insert(key.clone(), due + rate.interval());
    due
}

#[cfg(test)]
mod tests;
