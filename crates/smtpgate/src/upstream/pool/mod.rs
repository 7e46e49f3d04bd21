//! Upstream pools at run time: which server of a pool carries each delivery, and whether it may.
//!
//! A server is chosen per message by the pool's balance policy ([`balance`]), so weights hold per
//! message even though connections are reused: each server keeps its own idle connections
//! ([`server`]), and a delivery takes one of the chosen server's, or opens one within its
//! `max_connections`. A server that fails to connect is skipped for this delivery and the next one
//! is tried; when no server of the pool is up, its `fallback` pools are tried in order. Passive
//! health (failures and the circuit breaker) comes from real deliveries; active checks ([`health`])
//! connect, EHLO and QUIT every `health_check.interval`.
//!
//! ```text
//! lease(pool) ─ pick server (balance) ─ idle connection? ─ yes ─> Lease ─ attempt ─ finish
//!                    ^                        │ no                                     │
//!                    │ connect failed         └─ slot free? ─ connect ─┘      idle again or closed
//!                    └──────────────────────────────────────┘
//! ```

mod balance;
mod health;
mod server;

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use tokio::time::Instant;

use super::client::{Client, Connect};
use super::{Dialer, Unavailable};
use crate::config::{Config, PoolConfig, TlsPolicy};
use balance::{Balancer, Candidate};
use server::{Avail, ServerState, Take};

/// Every configured pool's run-time state.
pub struct Pools {
    pools: Vec<Arc<PoolState>>,
    dialer: Arc<Dialer>,
}

/// One pool: its config, its servers, the balancer's memory.
pub struct PoolState {
    config: PoolConfig,
    /// How its connections do TLS, built from `config` once.
    tls: crate::tls::UpstreamTls,
    servers: Vec<Arc<ServerState>>,
    balancer: Mutex<Balancer>,
}

/// One pool as the admin API shows it.
#[derive(Debug, serde::Serialize)]
pub struct PoolHealth {
    pub name: String,
    pub fallback: Option<String>,
    pub servers: Vec<ServerHealth>,
}

/// One server of a pool: whether it takes deliveries, and its counters since start.
#[derive(Debug, serde::Serialize)]
pub struct ServerHealth {
    pub server: String,
    pub up: bool,
    pub circuit_open: bool,
    /// Connections open now.
    pub open: usize,
    pub connections: u64,
    /// Deliveries that succeeded and failed.
    pub ok: u64,
    pub failed: u64,
}

/// A connection to one server of a pool, lent out for one delivery. Give it back with
/// [`Lease::finish`]; a lease dropped without it (a proxied session that ended abruptly) closes the
/// connection and frees its slot.
pub struct Lease {
    server: Arc<ServerState>,
    /// `None` once given back.
    client: Option<Box<Client>>,
    sent: usize,
}

impl Pools {
    /// Fails when a pool's `ca_file` cannot be read as trust anchors (the config check read it).
    pub fn new(config: &Config, dialer: Arc<Dialer>) -> Result<Self, String> {
        let pools = config
            .pools
            .iter()
            .map(|p| PoolState::new(p).map(Arc::new))
            .collect::<Result<_, _>>()?;
        Ok(Pools { pools, dialer })
    }

    /// Whether a pool named `name` is configured.
    pub fn contains(&self, name: &str) -> bool {
        self.get(name).is_some()
    }

    fn get(&self, name: &str) -> Option<&Arc<PoolState>> {
        self.pools.iter().find(|p| p.config.name == name)
    }

    /// `name`, then its fallback, then the fallback's fallback... (the config forbids loops).
    fn chain(&self, name: &str) -> Vec<&Arc<PoolState>> {
        let mut chain: Vec<&Arc<PoolState>> = Vec::new();
        let mut next = self.get(name);
        while let Some(pool) = next.filter(|p| !chain.iter().any(|c| Arc::ptr_eq(c, p))) {
            chain.push(pool);
            next = pool.config.fallback.as_deref().and_then(|f| self.get(f));
        }
        chain
    }

    /// How many deliveries to `name` can be under way at once: the most connections any pool of its
    /// fallback chain may open. `None` for an unknown pool.
    pub fn worker_limit(&self, name: &str) -> Option<usize> {
        let chain = self.chain(name);
        chain
            .iter()
            .map(|p| p.config.servers.iter().map(|s| s.max_connections).sum())
            .max()
    }

    /// A connection for one delivery to pool `name`: a server chosen by the pool's policy, else by
    /// its fallback pools'. Fails (transiently) when no server anywhere in the chain is up.
    pub async fn lease(&self, name: &str) -> Result<Lease, Unavailable> {
        let chain = self.chain(name);
        if chain.is_empty() {
            return Err(Unavailable {
                status: "4.3.5",
                text: format!("pool {name} is not configured"),
            });
        }
        let mut last = None;
        for pool in chain {
            if let Some(lease) = pool.lease(&self.dialer, &mut last).await {
                return Ok(lease);
            }
            tracing::debug!(pool = %pool.config.name, "no server of the pool is available");
        }
        let why = last.map(|e| format!("; last error: {e}")).unwrap_or_default();
        Err(Unavailable {
            status: "4.4.1",
            text: format!("all servers of pool {name} are down{why}"),
        })
    }

    /// Starts the active health checks of every pool that has them, and the idle-connection sweeper.
    /// They end when these pools are dropped (replaced by a reload and no longer used).
    pub fn start(self: &Arc<Self>) {
        for pool in &self.pools {
            if let Some(check) = pool.config.health {
                tokio::spawn(health::run(Arc::downgrade(self), pool.clone(), check));
            }
        }
        tokio::spawn(health::sweep(Arc::downgrade(self)));
    }

    /// Every pool and the health of each of its servers, for the admin API and the dashboard.
    pub fn health(&self) -> Vec<PoolHealth> {
        let now = Instant::now();
        self.pools
            .iter()
            .map(|p| PoolHealth {
                name: p.config.name.clone(),
                fallback: p.config.fallback.clone(),
                servers: p
                    .servers
                    .iter()
                    .map(|s| {
                        let snap = s.snapshot(now);
                        ServerHealth {
                            server: s.addr.to_string(),
                            up: snap.up,
                            circuit_open: snap.circuit_open,
                            open: snap.open,
                            connections: snap.connections,
                            ok: snap.ok,
                            failed: snap.failed,
                        }
                    })
                    .collect(),
            })
            .collect()
    }

    /// The per-server metrics, in the Prometheus text format.
    pub fn render(&self) -> String {
        let now = Instant::now();
        let rows: Vec<(String, server::Snapshot)> = self
            .pools
            .iter()
            .flat_map(|p| {
                p.servers.iter().map(move |s| {
                    let labels = format!(
                        "pool=\"{}\",server=\"{}\"",
                        escape(&p.config.name),
                        escape(&s.addr.to_string())
                    );
                    (labels, s.snapshot(now))
                })
            })
            .collect();
        let mut out = String::new();
        let mut family = |name: &str, kind: &str, help: &str, value: &dyn Fn(&str, &server::Snapshot) -> String| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
            for (labels, s) in &rows {
                out.push_str(&value(labels, s));
            }
        };
        let gauge = |name: &'static str, f: fn(&server::Snapshot) -> u64| {
            move |labels: &str, s: &server::Snapshot| format!("{name}{{{labels}}} {}\n", f(s))
        };
        family(
            "smtpgate_upstream_up",
            "gauge",
            "1 when the upstream server gets traffic (healthy, circuit breaker not open)",
            &gauge("smtpgate_upstream_up", |s| u64::from(s.up)),
        );
        family(
            "smtpgate_upstream_circuit_open",
            "gauge",
            "1 while the server's circuit breaker is open or half-open",
            &gauge("smtpgate_upstream_circuit_open", |s| u64::from(s.circuit_open)),
        );
        family(
            "smtpgate_upstream_connections",
            "gauge",
            "connections open to the server now, idle ones included",
            &gauge("smtpgate_upstream_connections", |s| s.open as u64),
        );
        family(
            "smtpgate_upstream_connections_opened_total",
            "counter",
            "connections opened to the server",
            &gauge("smtpgate_upstream_connections_opened_total", |s| s.connections),
        );
        family(
            "smtpgate_upstream_deliveries_total",
            "counter",
            "deliveries over the server: ok when a recipient was accepted",
            &|labels, s| {
                let name = "smtpgate_upstream_deliveries_total";
                format!(
                    "{name}{{{labels},result=\"ok\"}} {}\n{name}{{{labels},result=\"failed\"}} {}\n",
                    s.ok, s.failed
                )
            },
        );
        out
    }
}

impl PoolState {
    fn new(config: &PoolConfig) -> Result<Self, String> {
        let servers = config
            .servers
            .iter()
            .map(|s| Arc::new(ServerState::new(s, config.breaker)))
            .collect();
        let verify_in_handshake = config.tls == TlsPolicy::Required && config.tls_verify;
        let tls = crate::tls::UpstreamTls::new(verify_in_handshake, config.ca_file.as_deref())
            .map_err(|e| format!("pool {}: {e}", config.name))?;
        if config.tls == TlsPolicy::Required && !config.tls_verify {
            tracing::warn!(
                pool = %config.name, auth_unverified = config.auth_unverified,
                "tls_verify = false: the pool's servers are not authenticated, any certificate is accepted"
            );
        }
        Ok(PoolState {
            config: config.clone(),
            tls,
            servers,
            balancer: Mutex::new(Balancer::new(config.balance, config.servers.len())),
        })
    }

    /// A connection to one of this pool's servers, or `None` when every server is down or failed to
    /// connect just now (the last error goes to `last`).
    async fn lease(&self, dialer: &Dialer, last: &mut Option<String>) -> Option<Lease> {
        let mut tried = vec![false; self.servers.len()];
        while let Some(i) = self.pick(&tried) {
            let server = &self.servers[i];
            match self.take(dialer, server, last).await {
                Some(lease) => return Some(lease),
                None => tried[i] = true,
            }
        }
        None
    }

    /// Chooses among the servers that are up and not yet tried.
    fn pick(&self, tried: &[bool]) -> Option<usize> {
        let now = Instant::now();
        let candidates: Vec<Candidate> = self
            .servers
            .iter()
            .zip(tried)
            .map(|(s, &tried)| Candidate {
                up: !tried && s.avail(now) != Avail::Down,
                weight: s.weight,
                busy: s.busy(),
            })
            .collect();
        self.balancer.lock().unwrap().pick(&candidates)
    }

    /// A connection to `server`: an idle one, or a new one when a slot is free (waiting for one while
    /// all are busy). `None` when the server is down or cannot be connected to.
    async fn take(&self, dialer: &Dialer, server: &Arc<ServerState>, last: &mut Option<String>) -> Option<Lease> {
        loop {
            let mut stale = Vec::new();
            let took = server.take(Instant::now(), &mut stale);
            for client in stale {
                tokio::spawn(close(server.clone(), client.into_client()));
            }
            match took {
                Take::Idle(client, sent) => return Some(Lease::new(server, client, sent)),
                Take::Full => server.released().await,
                Take::Down => return None,
                Take::Open => {
                    return match self.connect(dialer, server).await {
                        Ok(client) => {
                            server.connected(Ok(()));
                            Some(Lease::new(server, Box::new(client), 0))
                        }
                        Err(why) => {
                            tracing::info!(pool = %self.config.name, server = %server.addr, error = %why, "cannot connect to upstream server");
                            server.connected(Err(&why));
                            *last = Some(why);
                            None
                        }
                    };
                }
            }
        }
    }

    /// Opens a connection to one of the server's addresses: greeting, EHLO, STARTTLS, AUTH.
    async fn connect(&self, dialer: &Dialer, server: &ServerState) -> Result<Client, String> {
        let addrs = dialer.resolve_host(&server.addr.host, server.addr.port).await;
        let mut last = format!("cannot resolve {}", server.addr.host);
        for addr in addrs {
            match Client::connect(self.connect_params(dialer, &server.addr.host, addr)).await {
                Ok(client) => return Ok(client),
                Err(e) => last = e.to_string(),
            }
        }
        Err(last)
    }

    fn connect_params<'a>(&'a self, dialer: &'a Dialer, host: &'a str, addr: SocketAddr) -> Connect<'a> {
        Connect {
            addr,
            host,
            helo: &dialer.hostname,
            tls: self.config.tls,
            tls_config: self.tls.config.clone(),
            cert_check: self.tls.check.clone(),
            queue: &dialer.queue,
            auth: self.config.auth.as_ref(),
            auth_unverified: self.config.auth_unverified,
            source: self.config.source_address,
        }
    }
}

impl Lease {
    fn new(server: &Arc<ServerState>, client: Box<Client>, sent: usize) -> Self {
        Lease {
            server: server.clone(),
            client: Some(client),
            sent,
        }
    }

    pub fn client(&mut self) -> &mut Client {
        self.client
            .as_mut()
            .expect("a lease holds its connection until finished")
    }

    /// Gives the connection back after one delivery. `usable`: the server answered and the
    /// connection can carry more (otherwise it counts as a failure of the server and is closed);
    /// `delivered`: a recipient was accepted. After `per_connection` messages the connection quits.
    pub async fn finish(mut self, usable: bool, delivered: bool, per_connection: usize) {
        let Some(client) = self.client.take() else { return };
        let (server, sent) = (self.server.clone(), self.sent);
        server.delivery(delivered);
        if !usable {
            drop(client);
            server.failed("connection lost during a delivery");
            server.release(None);
            return;
        }
        server.succeeded();
        let sent = sent + 1;
        if sent >= per_connection {
            client.quit().await;
            server.release(None);
        } else {
            server.release(Some((client, sent)));
        }
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if self.client.take().is_some() {
            self.server.release(None);
        }
    }
}

/// Says QUIT on a connection taken out of the idle list, then frees its slot.
async fn close(server: Arc<ServerState>, client: Box<Client>) {
    client.quit().await;
    server.closed();
}

/// A Prometheus label value: backslash, double quote and newline escaped.
fn escape(value: &str) -> String {
    value.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}
