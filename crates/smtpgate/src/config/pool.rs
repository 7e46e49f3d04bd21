//! `[[pool]]`: upstream servers, how load is spread over them, how their health is watched.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use super::issues::{Checks as _, Issues};
use super::text::Text;
use super::values::parse_server_addr;
use super::{ServerAddr, TlsPolicy};

#[derive(Debug, Default, Deserialize)]
pub struct RawPool {
    pub name: Option<String>,
    pub servers: Option<Vec<RawServer>>,
    pub tls: Option<String>,
    pub tls_verify: Option<bool>,
    pub ca_file: Option<String>,
    pub auth_unverified: Option<bool>,
    pub balance: Option<String>,
    pub max_connections: Option<i64>,
    pub auth: Option<RawUpstreamAuth>,
    pub source_address: Option<Text>,
    pub fallback: Option<String>,
    pub health_check: Option<RawHealth>,
    pub circuit_breaker: Option<RawBreaker>,
}

/// `"host:port"` or `{ address = "host:port", weight = 3, max_connections = 5 }`.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum RawServer {
    Plain(Text),
    Detailed {
        address: Text,
        weight: Option<i64>,
        max_connections: Option<i64>,
    },
}

#[derive(Debug, Deserialize)]
pub struct RawUpstreamAuth {
    pub username: String,
    pub password: Option<String>,
    pub password_file: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
pub struct RawHealth {
    pub enabled: Option<bool>,
    pub interval: Option<Text>,
    pub timeout: Option<Text>,
}

#[derive(Debug, Default, Deserialize)]
pub struct RawBreaker {
    pub failures: Option<i64>,
    pub cooldown: Option<Text>,
}

/// How deliveries are spread over a pool's servers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Balance {
    /// The first healthy server in the listed order; the others are backups (the default).
    Ordered,
    RoundRobin,
    /// In proportion to each server's `weight`.
    Weighted,
    /// The healthy server with the fewest open connections.
    LeastConnections,
}

/// One server of a pool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolServer {
    pub addr: ServerAddr,
    pub weight: u32,
    /// Most connections smtpgate opens to this server at once.
    pub max_connections: usize,
}

/// Credentials smtpgate uses to AUTH to a pool's servers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamAuth {
    pub username: String,
    pub password: String,
}

/// Active health checks: connect, EHLO, QUIT every `interval`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HealthCheck {
    pub interval: Duration,
    pub timeout: Duration,
}

/// Passive health: after `failures` consecutive failures a server is skipped for `cooldown`, then
/// one probe decides whether it comes back (half-open).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CircuitBreaker {
    pub failures: u32,
    pub cooldown: Duration,
}

/// One `[[pool]]`: a named set of upstream servers to relay through.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolConfig {
    pub name: String,
    /// At least one.
    pub servers: Vec<PoolServer>,
    pub tls: TlsPolicy,
    /// With `tls = "required"`: the certificate must chain to the trust anchors and name the server
    /// (`tls_verify`, true by default). False accepts any certificate.
    pub tls_verify: bool,
    /// The pool's own trust anchors (PEM), instead of the public web PKI.
    pub ca_file: Option<PathBuf>,
    /// Credentials may go over a TLS session whose certificate did not verify. False by default,
    /// except with `tls_verify = false`, which accepts any certificate for everything.
    pub auth_unverified: bool,
    pub balance: Balance,
    pub auth: Option<UpstreamAuth>,
    /// Local address outgoing connections are bound to.
    pub source_address: Option<IpAddr>,
    /// Pool to use when every server of this one is down.
    pub fallback: Option<String>,
    /// `None` when `health_check = { enabled = false }`.
    pub health: Option<HealthCheck>,
    pub breaker: CircuitBreaker,
}

pub(super) fn build_pools(raw: Vec<RawPool>, base_dir: &Path, issues: &mut Issues) -> Vec<PoolConfig> {
    let pools: Vec<PoolConfig> = raw
        .into_iter()
        .enumerate()
        .map(|(index, pool)| build_pool(index, pool, base_dir, issues))
        .collect();
    for (index, pool) in pools.iter().enumerate() {
        if let Some(other) = pools[..index].iter().position(|p| p.name == pool.name) {
            let message = format!("{:?} is already the name of pool[{other}]", pool.name);
            issues.push(format!("pool[{index}].name"), message);
        }
    }
    check_fallbacks(&pools, issues);
    pools
}

fn build_pool(index: usize, raw: RawPool, base_dir: &Path, issues: &mut Issues) -> PoolConfig {
    let key = |field: &str| format!("pool[{index}].{field}");
    let name = raw.name.unwrap_or_default();
    if name.trim().is_empty() {
        issues.push(key("name"), "is required (routes refer to pools by name)");
    }
    let default_max = issues.count(key("max_connections"), raw.max_connections, 1, 10usize);
    let raw_servers = raw.servers.unwrap_or_default();
    if raw_servers.is_empty() {
        issues.push(
            key("servers"),
            "needs at least one server (e.g. [\"mx.example.com:25\"])",
        );
    }
    let servers = raw_servers
        .into_iter()
        .enumerate()
        .filter_map(|(i, s)| build_server(&format!("{}[{i}]", key("servers")), s, default_max, issues))
        .collect();
    let tls = build_tls_policy(key("tls"), raw.tls, issues);
    let cert = build_cert_checks(
        &key,
        tls,
        (raw.tls_verify, raw.ca_file, raw.auth_unverified),
        base_dir,
        issues,
    );
    PoolConfig {
        name,
        servers,
        tls,
        tls_verify: cert.0,
        ca_file: cert.1,
        auth_unverified: cert.2,
        balance: build_balance(key("balance"), raw.balance, issues),
        auth: raw.auth.map(|a| build_auth(&key("auth"), a, base_dir, issues)),
        source_address: raw.source_address.and_then(|t| match t.as_str().parse::<IpAddr>() {
            Ok(ip) => Some(ip),
            Err(_) => {
                issues.push(key("source_address"), format!("{:?} is not an IP address", t.as_str()));
                None
            }
        }),
        fallback: raw.fallback,
        health: build_health(&key("health_check"), raw.health_check.unwrap_or_default(), issues),
        breaker: build_breaker(&key("circuit_breaker"), raw.circuit_breaker.unwrap_or_default(), issues),
    }
}

fn build_server(key: &str, raw: RawServer, default_max: usize, issues: &mut Issues) -> Option<PoolServer> {
    let (address, weight, max) = match raw {
        RawServer::Plain(address) => (address, None, None),
        RawServer::Detailed {
            address,
            weight,
            max_connections,
        } => (address, weight, max_connections),
    };
    let addr = match parse_server_addr(address.as_str()) {
        Ok(addr) => addr,
        Err(message) => {
            issues.push(key, message);
            return None;
        }
    };
    Some(PoolServer {
        addr,
        weight: issues.count(format!("{key}.weight"), weight, 1, 1u32),
        max_connections: issues.count(format!("{key}.max_connections"), max, 1, default_max),
    })
}

pub(super) fn build_tls_policy(key: String, raw: Option<String>, issues: &mut Issues) -> TlsPolicy {
    match raw.as_deref() {
        None | Some("opportunistic") => TlsPolicy::Opportunistic,
        Some("none") => TlsPolicy::None,
        Some("required") => TlsPolicy::Required,
        Some(other) => {
            let message = format!("{other:?} is not one of \"none\", \"opportunistic\", \"required\"");
            issues.push(key, message);
            TlsPolicy::Opportunistic
        }
    }
}

/// `tls_verify`, `ca_file` and `auth_unverified`, checked against the pool's TLS policy.
fn build_cert_checks(
    key: &dyn Fn(&str) -> String,
    tls: TlsPolicy,
    (verify, ca_file, auth_unverified): (Option<bool>, Option<String>, Option<bool>),
    base_dir: &Path,
    issues: &mut Issues,
) -> (bool, Option<PathBuf>, bool) {
    if verify.is_some() && tls != TlsPolicy::Required {
        let message = "applies to tls = \"required\" only (opportunistic TLS takes any certificate for \
                       encryption; auth_unverified says whether credentials may go over it)";
        issues.push(key("tls_verify"), message);
    }
    if tls == TlsPolicy::None {
        for (name, set) in [
            ("ca_file", ca_file.is_some()),
            ("auth_unverified", auth_unverified.is_some()),
        ] {
            if set {
                issues.push(key(name), "has no effect with tls = \"none\"");
            }
        }
    }
    let tls_verify = tls == TlsPolicy::Required && verify.unwrap_or(true);
    let ca_file = ca_file.map(|f| {
        let path = issues.existing_file(key("ca_file"), base_dir, &f);
        if path.is_file()
            && let Err(e) = crate::tls::pool_roots(Some(&path))
        {
            issues.push(key("ca_file"), e);
        }
        path
    });
    let auth_unverified = auth_unverified.unwrap_or(tls == TlsPolicy::Required && !tls_verify);
    (tls_verify, ca_file, auth_unverified)
}

fn build_balance(key: String, raw: Option<String>, issues: &mut Issues) -> Balance {
    match raw.as_deref() {
        None | Some("ordered") => Balance::Ordered,
        Some("round_robin") => Balance::RoundRobin,
        Some("weighted") => Balance::Weighted,
        Some("least_connections") => Balance::LeastConnections,
        Some(other) => {
            let message =
                format!("{other:?} is not one of \"ordered\", \"round_robin\", \"weighted\", \"least_connections\"");
            issues.push(key, message);
            Balance::Ordered
        }
    }
}

fn build_auth(key: &str, raw: RawUpstreamAuth, base_dir: &Path, issues: &mut Issues) -> UpstreamAuth {
    let password = match (raw.password, raw.password_file) {
        (Some(p), None) => p,
        (None, Some(file)) => {
            let path = issues.existing_file(format!("{key}.password_file"), base_dir, &file);
            std::fs::read_to_string(&path)
                .map(|s| s.trim_end_matches(['\r', '\n']).to_owned())
                .unwrap_or_default()
        }
        _ => {
            issues.push(key, "needs exactly one of `password` and `password_file`");
            String::new()
        }
    };
    UpstreamAuth {
        username: raw.username,
        password,
    }
}

fn build_health(key: &str, raw: RawHealth, issues: &mut Issues) -> Option<HealthCheck> {
    let interval = issues.timeout(format!("{key}.interval"), raw.interval, Duration::from_secs(30));
    let timeout = issues.timeout(format!("{key}.timeout"), raw.timeout, Duration::from_secs(10));
    raw.enabled.unwrap_or(true).then_some(HealthCheck { interval, timeout })
}

fn build_breaker(key: &str, raw: RawBreaker, issues: &mut Issues) -> CircuitBreaker {
    CircuitBreaker {
        failures: issues.count(format!("{key}.failures"), raw.failures, 1, 3u32),
        cooldown: issues.timeout(format!("{key}.cooldown"), raw.cooldown, Duration::from_secs(30)),
    }
}

/// Every `fallback` names another pool, and following them never comes back to where it started.
fn check_fallbacks(pools: &[PoolConfig], issues: &mut Issues) {
    for (index, pool) in pools.iter().enumerate() {
        let Some(first) = &pool.fallback else { continue };
        let key = format!("pool[{index}].fallback");
        let mut seen = vec![pool.name.as_str()];
        let mut next = Some(first.as_str());
        while let Some(name) = next {
            if seen.contains(&name) {
                issues.push(key, format!("fallback chain loops: {} -> {name}", seen.join(" -> ")));
                break;
            }
            let Some(p) = pools.iter().find(|p| p.name == name) else {
                issues.push(key, format!("no pool named {name:?}"));
                break;
            };
            seen.push(name);
            next = p.fallback.as_deref();
        }
    }
}
