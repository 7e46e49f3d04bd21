//! One server of a pool at run time: health, circuit breaker, connection slots, idle connections.
//!
//! The breaker is closed while the server works; `failures` consecutive failures open it for
//! `cooldown`; after that exactly one connection (the probe) is let through, and its result closes
//! or re-opens it. Active health checks set `healthy` on their own; a server gets traffic only when
//! it is healthy and its breaker lets it.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

use crate::config::{CircuitBreaker, PoolServer, ServerAddr};
use crate::upstream::client::Client;

/// How long a connection may sit idle before it is closed (the queue workers' idle time).
pub const IDLE: Duration = Duration::from_secs(2);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Breaker {
    Closed,
    Open {
        until: Instant,
    },
    /// The cooldown is over and one connection is trying the server.
    Probing,
}

/// Whether a server may be chosen now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Avail {
    Up,
    /// The breaker's cooldown is over: the next connection is the probe.
    Probe,
    Down,
}

/// What [`ServerState::take`] found.
pub enum Take {
    /// An idle connection, and how many messages it has carried.
    Idle(Box<Client>, usize),
    /// A slot for a new connection (the caller connects and reports with [`ServerState::connected`]).
    Open,
    /// Every slot is in use: wait for [`ServerState::released`].
    Full,
    /// The server went down since it was chosen.
    Down,
}

/// A connection waiting for its next delivery.
pub struct Idle {
    client: Box<Client>,
    since: Instant,
    sent: usize,
}

struct Inner {
    healthy: bool,
    failures: u32,
    breaker: Breaker,
    /// Connections open now, idle ones included; at most `max`.
    open: usize,
    /// Connections carrying a delivery now.
    busy: usize,
    idle: Vec<Idle>,
}

/// Counters and gauges of one server, for `/metrics`.
pub struct Snapshot {
    pub up: bool,
    pub circuit_open: bool,
    pub open: usize,
    pub connections: u64,
    pub ok: u64,
    pub failed: u64,
}

pub struct ServerState {
    pub addr: ServerAddr,
    pub weight: u32,
    max: usize,
    breaker: CircuitBreaker,
    inner: Mutex<Inner>,
    released: Notify,
    connections: AtomicU64,
    ok: AtomicU64,
    failed: AtomicU64,
}

impl ServerState {
    pub fn new(config: &PoolServer, breaker: CircuitBreaker) -> Self {
        ServerState {
            addr: config.addr.clone(),
            weight: config.weight,
            max: config.max_connections,
            breaker,
            inner: Mutex::new(Inner {
                healthy: true,
                failures: 0,
                breaker: Breaker::Closed,
                open: 0,
                busy: 0,
                idle: Vec::new(),
            }),
            released: Notify::new(),
            connections: AtomicU64::new(0),
            ok: AtomicU64::new(0),
            failed: AtomicU64::new(0),
        }
    }

    pub fn avail(&self, now: Instant) -> Avail {
        avail(&self.inner.lock().unwrap(), now)
    }

    pub fn busy(&self) -> usize {
        self.inner.lock().unwrap().busy
    }

    /// Claims a connection: an idle one, or a slot for a new one. A probe always opens a new one.
    /// Idle connections past [`IDLE`] are handed back in `stale`; they keep their slot until the
    /// caller has closed them and said so with [`closed`](Self::closed).
    pub fn take(&self, now: Instant, stale: &mut Vec<Idle>) -> Take {
        let mut inner = self.inner.lock().unwrap();
        let state = avail(&inner, now);
        if state == Avail::Down {
            return Take::Down;
        }
        while let Some(idle) = inner.idle.pop() {
            if now.duration_since(idle.since) < IDLE && state == Avail::Up {
                inner.busy += 1;
                return Take::Idle(idle.client, idle.sent);
            }
            stale.push(idle);
        }
        if inner.open >= self.max {
            return Take::Full;
        }
        if state == Avail::Probe {
            inner.breaker = Breaker::Probing;
            tracing::info!(server = %self.addr, "circuit breaker half-open: probing the server");
        }
        inner.open += 1;
        inner.busy += 1;
        Take::Open
    }

    /// Waits until a connection is given back (or a while has passed).
    pub async fn released(&self) {
        let _ = tokio::time::timeout(Duration::from_millis(500), self.released.notified()).await;
    }

    /// The outcome of opening the connection [`take`](Self::take) made room for.
    pub fn connected(&self, result: Result<(), &str>) {
        match result {
            Ok(()) => {
                self.connections.fetch_add(1, Relaxed);
                self.succeeded();
            }
            Err(why) => {
                {
                    let mut inner = self.inner.lock().unwrap();
                    inner.open -= 1;
                    inner.busy -= 1;
                }
                self.released.notify_one();
                self.failed(why);
            }
        }
    }

    /// Gives a connection back after a delivery: kept idle when `client` is `Some`; otherwise it has
    /// been closed and its slot is free.
    pub fn release(&self, client: Option<(Box<Client>, usize)>) {
        {
            let mut inner = self.inner.lock().unwrap();
            inner.busy -= 1;
            match client {
                Some((client, sent)) => inner.idle.push(Idle {
                    client,
                    since: Instant::now(),
                    sent,
                }),
                None => inner.open -= 1,
            }
        }
        self.released.notify_one();
    }

    /// A connection taken out by [`take`](Self::take) or [`sweep`](Self::sweep) is closed: its slot is free.
    pub fn closed(&self) {
        self.inner.lock().unwrap().open -= 1;
        self.released.notify_one();
    }

    /// Counts one delivery over this server.
    pub fn delivery(&self, ok: bool) {
        let counter = if ok { &self.ok } else { &self.failed };
        counter.fetch_add(1, Relaxed);
    }

    /// The server answered as it should: the failure streak ends and the breaker closes.
    pub fn succeeded(&self) {
        let mut inner = self.inner.lock().unwrap();
        inner.failures = 0;
        if inner.breaker != Breaker::Closed {
            tracing::info!(server = %self.addr, "circuit breaker closed: the server works again");
            inner.breaker = Breaker::Closed;
        }
    }

    /// A connection failed, timed out, or was refused at greeting, EHLO or AUTH.
    pub fn failed(&self, why: &str) {
        let mut inner = self.inner.lock().unwrap();
        inner.failures = inner.failures.saturating_add(1);
        let until = Instant::now() + self.breaker.cooldown;
        let trip = match inner.breaker {
            Breaker::Probing => true,
            Breaker::Closed => inner.failures >= self.breaker.failures,
            Breaker::Open { .. } => false,
        };
        tracing::debug!(server = %self.addr, failures = inner.failures, error = why, "upstream server failure");
        if trip {
            inner.breaker = Breaker::Open { until };
            tracing::warn!(
                server = %self.addr, failures = inner.failures, cooldown = ?self.breaker.cooldown, error = why,
                "circuit breaker open: skipping the server"
            );
        }
    }

    /// The result of an active health check.
    pub fn set_healthy(&self, healthy: bool, why: &str) {
        let mut inner = self.inner.lock().unwrap();
        if inner.healthy != healthy {
            if healthy {
                tracing::info!(server = %self.addr, "health check passed: the server is up");
            } else {
                tracing::warn!(server = %self.addr, error = why, "health check failed: the server is down");
            }
        }
        inner.healthy = healthy;
    }

    /// Takes out the idle connections that have waited [`IDLE`], or all of them if the server is down.
    /// They keep their slots until [`closed`](Self::closed).
    pub fn sweep(&self, now: Instant) -> Vec<Idle> {
        let mut inner = self.inner.lock().unwrap();
        let down = avail(&inner, now) == Avail::Down;
        let (keep, gone): (Vec<Idle>, Vec<Idle>) = std::mem::take(&mut inner.idle)
            .into_iter()
            .partition(|i| !down && now.duration_since(i.since) < IDLE);
        inner.idle = keep;
        gone
    }

    pub fn snapshot(&self, now: Instant) -> Snapshot {
        let inner = self.inner.lock().unwrap();
        Snapshot {
            up: avail(&inner, now) != Avail::Down,
            circuit_open: inner.breaker != Breaker::Closed,
            open: inner.open,
            connections: self.connections.load(Relaxed),
            ok: self.ok.load(Relaxed),
            failed: self.failed.load(Relaxed),
        }
    }
}

impl Idle {
    pub fn into_client(self) -> Box<Client> {
        self.client
    }
}

fn avail(inner: &Inner, now: Instant) -> Avail {
    if !inner.healthy {
        return Avail::Down;
    }
    match inner.breaker {
        Breaker::Closed => Avail::Up,
        Breaker::Open { until } if now >= until => Avail::Probe,
        Breaker::Open { .. } | Breaker::Probing => Avail::Down,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ServerAddr;

    fn server(failures: u32, max: usize) -> ServerState {
        let config = PoolServer {
            addr: ServerAddr {
                host: "127.0.0.1".into(),
                port: 25,
            },
            weight: 1,
            max_connections: max,
        };
        ServerState::new(
            &config,
            CircuitBreaker {
                failures,
                cooldown: Duration::from_secs(30),
            },
        )
    }

    #[tokio::test(start_paused = true)]
    async fn breaker_opens_after_failures_and_lets_exactly_one_probe_through_after_cooldown() {
        let s = server(3, 10);
        let now = Instant::now;
        for _ in 0..2 {
            s.failed("refused");
        }
        assert_eq!(s.avail(now()), Avail::Up);
        s.failed("refused");
        assert_eq!(s.avail(now()), Avail::Down);
        tokio::time::advance(Duration::from_secs(31)).await;
        assert_eq!(s.avail(now()), Avail::Probe);
        assert!(matches!(s.take(now(), &mut Vec::new()), Take::Open));
        assert!(matches!(s.take(now(), &mut Vec::new()), Take::Down), "only one probe");
        s.connected(Err("refused"));
        assert_eq!(s.avail(now()), Avail::Down, "a failed probe re-opens the breaker");
        tokio::time::advance(Duration::from_secs(31)).await;
        assert!(matches!(s.take(now(), &mut Vec::new()), Take::Open));
        s.connected(Ok(()));
        assert_eq!(s.avail(now()), Avail::Up);
        assert!(!s.snapshot(now()).circuit_open);
    }

    #[tokio::test(start_paused = true)]
    async fn slots_are_capped_at_max_connections() {
        let s = server(3, 2);
        let now = Instant::now();
        assert!(matches!(s.take(now, &mut Vec::new()), Take::Open));
        assert!(matches!(s.take(now, &mut Vec::new()), Take::Open));
        assert!(matches!(s.take(now, &mut Vec::new()), Take::Full));
        s.connected(Err("refused"));
        assert!(matches!(s.take(now, &mut Vec::new()), Take::Open));
        assert_eq!(s.snapshot(now).open, 2);
    }

    #[tokio::test(start_paused = true)]
    async fn an_unhealthy_server_is_down_until_a_check_passes() {
        let s = server(3, 2);
        s.set_healthy(false, "timeout");
        assert_eq!(s.avail(Instant::now()), Avail::Down);
        s.set_healthy(true, "");
        assert_eq!(s.avail(Instant::now()), Avail::Up);
    }
}
