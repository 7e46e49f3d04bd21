//! The daemon's configuration: read a TOML file, check all of it, hand out typed values.
//!
//! Loading happens in two stages. [`raw::RawConfig`] mirrors the file (serde,
//! `deny_unknown_fields`, human values kept as text); [`Config::from_raw`] then checks every
//! value, collects *every* mistake with the key it belongs to, and produces a [`Config`] made
//! of typed values (`u64` bytes, [`Duration`]s, [`SocketAddr`]s, [`IpNet`]s). Nothing
//! downstream ever parses `"50MB"` again.
//!
//! ```no_run
//! # use std::path::Path;
//! # use smtpgate::config::Config;
//! match Config::load(Path::new("/etc/smtpgate/smtpgate.toml")) {
//!     Ok(config) => println!("{} listener(s)", config.listeners.len()),
//!     // One line per mistake, e.g.
//!     // listener[0].max_message_size: "50XB" is not a size (use e.g. 50MB)
//!     // route[0].pool: no pool named "upstrem"
//!     Err(error) => eprintln!("{error}"),
//! }
//! ```
//!
//! Relative paths in the file (spool dir, TLS files, users file) are relative to the folder
//! the file is in. Config is passed explicitly; there is no global.

pub mod adaptive;
mod check;
pub mod filter;
mod issues;
mod locate;
pub mod mask;
pub mod pool;
pub mod raw;
pub mod route;
pub mod shaping;
pub mod stream;
#[cfg(test)]
mod tests;
mod text;
pub mod values;
pub mod webhook;
pub use values::read_token;

/// The mistakes of every file the configuration reads are collected in one place, below config.
pub use crate::issues::{ConfigError, ConfigIssue, Issues, ValueError};

pub use filter::{FilterConfig, OnError, Stage};
pub use pool::{Balance, CircuitBreaker, HealthCheck, PoolConfig, PoolServer, UpstreamAuth};
pub use route::{Pattern, RouteAction, RouteConfig, RoutingConfig, SrsConfig, When};

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnet::IpNet;

/// The whole, checked configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// Our name in the greeting, EHLO and Received headers. Key `hostname`; defaults to the
    /// machine's hostname, or `localhost`.
    pub hostname: String,
    pub spool: SpoolConfig,
    /// The admin HTTP endpoint; `None` when `[admin] enabled = false`.
    pub admin: Option<AdminConfig>,
    /// At least one: without `[[listener]]` there is one named `default` on 127.0.0.1:2525.
    pub listeners: Vec<ListenerConfig>,
    pub pools: Vec<PoolConfig>,
    pub routes: Vec<RouteConfig>,
    pub queue: QueueConfig,
    pub dns: DnsConfig,
    pub routing: RoutingConfig,
    /// `[[filter]]` blocks, built; listeners and routes refer to them by name.
    pub filters: Vec<FilterConfig>,
    /// `[quarantine] max_age`: entries older than this are deleted (default 30 days).
    pub quarantine_max_age: Duration,
    /// `[shaping] file`: limits per destination (checked at load, reloaded when it changes).
    pub shaping_file: Option<crate::reloading::Loaded<shaping::Rules>>,
    /// `[[stream]]`s; route rules name them.
    pub streams: Vec<stream::StreamConfig>,
    pub suppression: SuppressionConfig,
    /// `[redis]`: the Redis that several nodes share their throttles and suppressions through.
    pub redis: Option<RedisConfig>,
    pub mta_sts: MtaStsConfig,
    pub dane: DaneConfig,
    /// `[events]`: the message history and the event stream.
    pub events: EventsConfig,
    /// `[bounces] rules`: the administrator's bounce classification rules, before the built-in ones.
    pub bounce_rules: Option<crate::reloading::Loaded<crate::reply::Classifier>>,
    /// How long a graceful shutdown waits for open sessions to finish their transaction. Deliveries
    /// in flight are not waited for: their state is on disk and they are retried after a restart.
    /// Key `shutdown_timeout`.
    pub shutdown_timeout: Duration,
    /// `[[webhook]]`s: where events are POSTed (the `webhook` module).
    pub webhooks: Vec<webhook::WebhookConfig>,
    /// The file it was read from (`None`: the built-in configuration) and its text, which the
    /// admin API shows with its secrets masked (`mask.rs`).
    pub source: mask::Source,
}

/// `[spool]`: where accepted messages are kept until delivered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpoolConfig {
    /// Key `dir`, default `smtpgate-data` beside the config file.
    pub dir: PathBuf,
    /// Refuse new messages (4xx) when the disk has less free space than this, in bytes.
    pub min_free_space: u64,
    /// Size of one spool segment file, in bytes.
    pub segment_size: u64,
    /// Message content all sessions together may hold in memory (`memory_budget`, default
    /// 1 GiB); over it, new transactions get `452 4.3.1`.
    pub memory_budget: u64,
    /// A message larger than this (`spill_size`, default 1 MiB) goes to a file under the spool as
    /// it arrives, and only its header section stays in memory.
    pub spill_size: u64,
}

/// `[admin]`: the HTTP endpoint for health, metrics and queue inspection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminConfig {
    pub address: SocketAddr,
    /// Key `token_file`: the file holding the bearer token every endpoint but `/healthz` and
    /// `/metrics` requires. `None`: smtpgate keeps a generated one in `<spool>/admin.token`.
    pub token_file: Option<PathBuf>,
    /// Key `hosts`: names, besides the admin address itself and `localhost`, that a request's
    /// `Host` may carry (lower-cased, without a port).
    pub hosts: Vec<String>,
}

/// What a listener does with a lone CR or LF in message data (`bare_line_endings`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BareLineEndings {
    /// Refuse the message (`"reject"`).
    Reject,
    /// Turn them into CRLF (`"normalize"`, the default).
    Normalize,
}

/// `[mta_sts]`: MTA-STS (RFC 8461) for MX delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MtaStsConfig {
    /// Look policies up and enforce them (default `true`).
    pub enabled: bool,
    /// Where policy hosts are reached (443; tests use another).
    pub https_port: u16,
    /// Extra trust anchors (PEM) for policy hosts and MX certificates: a private CA.
    pub ca_file: Option<PathBuf>,
}

/// `[events]`: what happened to each message, kept in a store under the spool and, optionally,
/// appended to a JSON-lines file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventsConfig {
    /// Record events (default `true`).
    pub enabled: bool,
    /// Where the store (`events.redb`) is kept; default the spool directory.
    pub dir: Option<PathBuf>,
    /// The name events carry, so several nodes' events can be told apart (default the hostname).
    pub node: String,
    /// Events older than this are pruned (default 7 days).
    pub retention: Duration,
    /// Over this size the oldest events are pruned first (default 1 GB).
    pub max_size: u64,
    /// `log_file`: one JSON object per event and line, appended; `None`: no file.
    pub log_file: Option<PathBuf>,
    /// The file is rotated (renamed to `.1`, ...) when it grows past this (default 100 MB).
    pub log_max_size: u64,
    /// Rotated files kept (default 5).
    pub log_keep: u32,
}

/// `[dane]`: DANE (RFC 7672) for MX delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DaneConfig {
    /// Look TLSA records up and enforce them (default `true`). It needs a validating resolver in
    /// `[dns]` that the gate trusts; without one no answer is secure and nothing changes.
    pub enabled: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedisConfig {
    /// `redis://host:port/db` or `redis+unix:///path/redis.sock`.
    pub url: String,
    /// Every key smtpgate writes starts with this (default `smtpgate`); nodes that share limits
    /// use the same one.
    pub prefix: String,
}

/// `[suppression]`: what happens to mail for a suppressed address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SuppressionConfig {
    pub action: SuppressAction,
    /// Complaint reports (ARF) sent here are read, and the recipients they name suppressed; the
    /// report itself is not delivered. Lower-cased.
    pub complaints_address: Option<String>,
    /// How long what smtpgate relayed (Message-ID → recipients) is remembered, so a bounce or
    /// complaint can be matched to it (`reports_remember`, default 30 days). A report that
    /// matches nothing smtpgate sent changes nothing.
    pub reports_remember: std::time::Duration,
    /// Reports read per client address per minute (`reports_per_minute`, default 30); more are
    /// delivered or dropped as usual but not acted on.
    pub reports_per_minute: u32,
    /// Recipients of one report acted on (`report_max_recipients`, default 50).
    pub report_max_recipients: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SuppressAction {
    /// `550 5.1.1` at RCPT (`"reject"`, the default).
    Reject,
    /// Accepted, then dropped and logged (`"drop"`).
    Drop,
}

/// What a listener does with the mail it accepts (`mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListenerMode {
    /// Spool it, answer `250`, deliver it from the queue (`"queue"`, the default).
    Queue,
    /// Forward each transaction live to its routed upstream, relaying the upstream's answers to
    /// each recipient and to the end of data; nothing is spooled (`"proxy"`).
    Proxy,
}

/// A certificate chain and its private key, both PEM files that existed at load time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// SMTP AUTH on a listener.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthConfig {
    /// The users file; it existed at load time.
    pub users_file: PathBuf,
    /// Allow AUTH before TLS. Only honoured for loopback clients.
    pub allow_plaintext: bool,
    /// Failed AUTH attempts from one client address (IPv6: its `ipv6_prefix`), across its
    /// connections, before it is locked out with `454 4.7.0`.
    pub max_failures: u32,
    /// How long a lock-out lasts, and how long a failure is remembered.
    pub lockout: Duration,
}

/// One `[[listener]]`: an address we accept SMTP on, and its rules.
#[derive(Debug, Clone, PartialEq)]
pub struct ListenerConfig {
    /// Default `listener{index}`; unique among listeners.
    pub name: String,
    /// Port 0 means any free port (used by tests).
    pub address: SocketAddr,
    /// Clients in these networks may relay to any domain.
    pub relay_networks: Vec<IpNet>,
    /// Domains anyone may send to; lowercased, without trailing dot.
    pub local_domains: Vec<String>,
    pub tls: Option<TlsFiles>,
    /// TLS from the first byte (port 465 style); requires `tls`.
    pub implicit_tls: bool,
    pub max_message_size: u64,
    pub max_recipients: usize,
    pub max_connections: usize,
    pub max_connections_per_ip: usize,
    /// Disconnect after this many client errors in one session.
    pub max_errors: u32,
    pub command_timeout: Duration,
    pub data_timeout: Duration,
    pub greeting_delay: Duration,
    pub bare_line_endings: BareLineEndings,
    /// What a NUL octet in message content gets: refused (`550 5.6.0`, the default) or dropped.
    pub nul_bytes: smtpgate_proto::Nul,
    /// A message with more `Received:` fields than this is refused (`554 5.4.6`): a mail loop.
    pub max_hops: usize,
    /// Sending replies must finish within this; a client that does not read them is dropped.
    pub write_timeout: Duration,
    /// DATA and BDAT must come in at this many octets a second on average, after the first
    /// `data_timeout`; 0 turns the rate off (then `data_timeout` bounds the whole message).
    pub min_data_rate: u64,
    /// IPv6 clients are counted (connection caps, AUTH failures) by this prefix length.
    pub ipv6_prefix: u8,
    pub auth: Option<AuthConfig>,
    /// Add Message-ID and Date when missing.
    pub submission: bool,
    /// Refuse MAIL with 530 until STARTTLS; requires `tls`.
    pub require_tls: bool,
    /// Names of `[[filter]]`s run on every message of this listener, in order.
    pub filters: Vec<String>,
    pub mode: ListenerMode,
}

/// How we use TLS towards a pool's servers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsPolicy {
    /// Never STARTTLS (`"none"`).
    None,
    /// STARTTLS when offered, plain otherwise (`"opportunistic"`, the default).
    Opportunistic,
    /// Fail (temporarily) unless STARTTLS succeeds (`"required"`).
    Required,
}

/// An upstream server: a host name or IP address (without brackets) and a port.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ServerAddr {
    pub host: String,
    pub port: u16,
}

impl fmt::Display for ServerAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

/// `[queue]`: retries and outbound connections.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueConfig {
    /// Delays between attempts; never empty, the last one repeats.
    pub retry: Vec<Duration>,
    /// Bounce a message still undelivered after this long.
    pub max_age: Duration,
    pub connections_per_destination: usize,
    pub messages_per_connection: usize,
    /// Outbound MX connections of this node in all, handed out by stream priority.
    pub max_connections: usize,
    pub connect_timeout: Duration,
    /// Waiting for a reply to a command (RFC 5321 4.5.3.2).
    pub command_timeout: Duration,
    /// Waiting for the final reply after the end of data.
    pub data_timeout: Duration,
    /// The port MX deliveries connect to (25; Postfix calls this `smtp_tcp_port`).
    pub smtp_port: u16,
}

/// `[dns]`
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DnsConfig {
    /// Empty means the system resolver.
    pub nameservers: Vec<SocketAddr>,
}

impl Config {
    /// Reads and checks the file at `path`. Relative paths in it are relative to its folder.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        Config::load_checking(path, |_, _| {})
    }

    /// Like [`Config::load`], and `more` checks what the configuration cannot check itself
    /// (the filters' own options) on the configuration as far as it was built, reporting into
    /// the same collector: `check-config` lists every mistake of every file at once.
    pub fn load_checking(path: &Path, more: impl FnOnce(&Config, &mut Issues)) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|error| ConfigIssue::new("", format!("cannot read {}: {error}", path.display())))?;
        let mut config = Config::checked(&text, base_dir_of(path), more).map_err(|error| error.in_file(path))?;
        config.source.file = Some(std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf()));
        Ok(config)
    }

    /// Checks config `text` as `check-config` checks a file (`more` adds the filters' checks);
    /// relative paths in it are relative to `base_dir`. Nothing is started.
    pub fn check_text(
        text: &str,
        base_dir: &Path,
        more: impl FnOnce(&Config, &mut Issues),
    ) -> Result<Config, ConfigError> {
        Config::checked(text, base_dir, more)
    }

    /// Parses and checks config text; relative paths in it are relative to `base_dir`.
    pub fn from_toml_str(text: &str, base_dir: &Path) -> Result<Config, ConfigError> {
        Config::checked(text, base_dir, |_, _| {})
    }

    /// Parses `text`, checks every value, then runs `more`. Unknown keys come first, then the
    /// mistakes in the order of the file's layout, then those `more` found; the half-built
    /// configuration is thrown away if anything was wrong.
    fn checked(text: &str, base_dir: &Path, more: impl FnOnce(&Config, &mut Issues)) -> Result<Config, ConfigError> {
        let mut unknown = Vec::new();
        let deserializer = toml::Deserializer::parse(text).map_err(|error| syntax_issue(text, &error))?;
        let raw: raw::RawConfig = serde_ignored::deserialize(deserializer, |path| {
            unknown.push(unknown_key_issue(text, &path.to_string()))
        })
        .map_err(|error| syntax_issue(text, &error))?;
        // Unknown keys are reported together with every other mistake, not instead of them.
        let mut issues = Issues::from(unknown);
        let mut config = check::build(raw, base_dir, &mut issues);
        config.source.text = text.into();
        more(&config, &mut issues);
        issues.finish(config)
    }

    /// The configuration used when there is no file: the defaults of an empty file, relative
    /// to the current directory. One listener `default` on 127.0.0.1:2525 relaying for
    /// loopback clients, spool `./smtpgate-data`, admin on 127.0.0.1:8025, MX delivery.
    pub fn builtin() -> Config {
        match Config::from_toml_str("", Path::new(".")) {
            Ok(config) => config,
            // Every default is valid, and the tests check that this loads.
            Err(error) => unreachable!("the built-in config is invalid: {error}"),
        }
    }
}

/// The folder relative paths in the file at `path` start from.
fn base_dir_of(path: &Path) -> &Path {
    match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    }
}

/// An unknown key as serde_ignored names it (`listener.0.max_size`), with where it is written.
fn unknown_key_issue(text: &str, full: &str) -> ConfigIssue {
    // serde_ignored writes `?` for the `Option` around a section (`dane.?.ports`).
    let dotted = full.split('.').filter(|s| *s != "?").collect::<Vec<_>>().join(".");
    let segments: Vec<String> = dotted.split('.').map(str::to_owned).collect();
    let name = segments.last().cloned().unwrap_or_default();
    let message = match locate::offset_of(text, &segments) {
        Some(at) => {
            let (line, column) = line_column(text, at);
            format!("line {line}, column {column}: unknown field `{name}`")
        }
        None => format!("unknown field `{name}`"),
    };
    ConfigIssue::new(key_path(&dotted), message)
}

/// `listener.0.max_size` (as serde_ignored writes paths) to `listener[0].max_size`.
fn key_path(dotted: &str) -> String {
    let mut out = String::new();
    for part in dotted.split('.') {
        if part.chars().all(|c| c.is_ascii_digit()) && !out.is_empty() {
            out.push_str(&format!("[{part}]"));
        } else {
            if !out.is_empty() {
                out.push('.');
            }
            out.push_str(part);
        }
    }
    out
}

/// Turns a TOML syntax or serde error into one issue: toml's own message with its line and
/// column, and the key path it points at when one can be found.
pub(super) fn syntax_issue(text: &str, error: &toml::de::Error) -> ConfigIssue {
    let message = error.message().trim().replace('\n', " ");
    let Some(span) = error.span() else {
        return ConfigIssue::new("", message);
    };
    let (line, column) = line_column(text, span.start);
    let key = locate::key_at(text, span.start).unwrap_or_default();
    ConfigIssue::new(key, format!("line {line}, column {column}: {message}"))
}

/// 1-based line and column (in characters) of byte offset `at`.
fn line_column(text: &str, at: usize) -> (usize, usize) {
    let before = text.get(..at).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    (line, before[line_start..].chars().count() + 1)
}
