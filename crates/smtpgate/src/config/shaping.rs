//! The shaping file: limits per destination, keyed by recipient domain, by MX host pattern (every
//! domain whose mail servers match shares one limit: "MX rollup"), and a default.
//!
//! ```toml
//! [default]
//! max_connections = 10
//! max_message_rate = "100/min"
//!
//! [domain."example.com"]
//! max_message_rate = "20000/h"
//! messages_per_connection = 50
//!
//! [mx."*.mail.protection.outlook.com"]
//! max_connections = 5
//! max_message_rate = "600/min"
//! connection_rate = "30/min"
//! tls = "required"
//! per_source = true                # each source address gets these limits of its own
//! ```
//!
//! A domain's own entry wins over an MX rollup; an MX rollup applies when any of the domain's mail
//! servers matches its pattern (`*.` matches any subdomain, otherwise the host name exactly); the
//! default applies to every other domain, each domain on its own. Keys left out of an entry come
//! from `[default]`, and keys left out there from `[queue]`.

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use serde::Deserialize;

use super::adaptive;
use super::{ConfigError, ConfigIssue, Issues, QueueConfig, TlsPolicy};

pub use super::values::Rate;

/// How mail to one destination is sent: the limits in force.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shape {
    pub max_connections: usize,
    pub messages_per_connection: usize,
    pub message_rate: Option<Rate>,
    pub connection_rate: Option<Rate>,
    pub connect_timeout: Duration,
    pub command_timeout: Duration,
    pub data_timeout: Duration,
    pub tls: TlsPolicy,
    /// Count the limits for each source address apart (receivers often limit per sending IP).
    pub per_source: bool,
}

impl Shape {
    /// The limits `[queue]` sets when no shaping file says otherwise.
    pub fn from_queue(q: &QueueConfig) -> Shape {
        Shape {
            max_connections: q.connections_per_destination,
            messages_per_connection: q.messages_per_connection,
            message_rate: None,
            connection_rate: None,
            connect_timeout: q.connect_timeout,
            command_timeout: q.command_timeout,
            data_timeout: q.data_timeout,
            tls: TlsPolicy::Opportunistic,
            per_source: false,
        }
    }
}

/// One table of the file, every key optional.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawShape {
    max_connections: Option<i64>,
    messages_per_connection: Option<i64>,
    max_message_rate: Option<String>,
    connection_rate: Option<String>,
    connect_timeout: Option<String>,
    command_timeout: Option<String>,
    data_timeout: Option<String>,
    tls: Option<String>,
    per_source: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    default: Option<RawShape>,
    #[serde(default)]
    domain: HashMap<String, RawShape>,
    #[serde(default)]
    mx: HashMap<String, RawShape>,
    #[serde(default)]
    adaptive: Vec<adaptive::RawRule>,
}

/// Whose limit a delivery counts against.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Key {
    /// A domain on its own (its entry, or the default).
    Domain(String),
    /// Every domain whose mail servers match the pattern.
    Mx(String),
}

impl std::fmt::Display for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Key::Domain(d) => write!(f, "domain:{d}"),
            Key::Mx(p) => write!(f, "mx:{p}"),
        }
    }
}

/// The parsed shaping file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rules {
    default: Shape,
    domains: HashMap<String, Shape>,
    /// Patterns in the order they sort, so the first match is the same on every load.
    mx: Vec<(String, Shape)>,
    /// `[[adaptive]]`: rules on remote replies, in file order (every matching rule acts).
    pub adaptive: Vec<adaptive::Rule>,
}

impl Rules {
    /// No shaping file: `[queue]`'s limits for every domain.
    pub fn from_queue(q: &QueueConfig) -> Rules {
        Rules {
            default: Shape::from_queue(q),
            domains: HashMap::new(),
            mx: Vec::new(),
            adaptive: Vec::new(),
        }
    }

    /// Reads and checks a shaping file; every mistake names the file and its key
    /// (`domain."example.com".max_connections`, `adaptive[2].action`).
    pub fn load(path: &Path, q: &QueueConfig) -> Result<Rules, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigIssue::new("", e.to_string()).in_file(path))?;
        Rules::parse(&text, q).map_err(|e| e.in_file(path))
    }

    /// Checks a shaping file's text: every mistake, each under its key.
    pub fn parse(text: &str, q: &QueueConfig) -> Result<Rules, ConfigError> {
        let deserializer = toml::Deserializer::parse(text).map_err(|e| super::syntax_issue(text, &e))?;
        let raw = RawFile::deserialize(deserializer).map_err(|e| super::syntax_issue(text, &e))?;
        let mut issues = Issues::default();
        let rules = Rules::check(raw, q, &mut issues);
        issues.finish(rules)
    }

    /// Builds the rules from the file as written, recording every mistake in `issues`.
    fn check(raw: RawFile, q: &QueueConfig, issues: &mut Issues) -> Rules {
        let base = Shape::from_queue(q);
        let default = merge(&base, raw.default.unwrap_or_default(), "default", issues);
        let domains = raw
            .domain
            .into_iter()
            .map(|(d, s)| {
                let key = format!("domain.{d:?}");
                let domain = d.trim_end_matches('.').to_ascii_lowercase();
                (domain, merge(&default, s, &key, issues))
            })
            .collect();
        let mut mx: Vec<(String, Shape)> = raw
            .mx
            .into_iter()
            .map(|(p, s)| {
                let key = format!("mx.{p:?}");
                if p.trim().is_empty() || p.contains(char::is_whitespace) {
                    issues.push(key.clone(), "not a host name or \"*.domain\" pattern");
                }
                (
                    p.trim_end_matches('.').to_ascii_lowercase(),
                    merge(&default, s, &key, issues),
                )
            })
            .collect();
        mx.sort_by(|a, b| a.0.cmp(&b.0));
        let adaptive = raw
            .adaptive
            .into_iter()
            .enumerate()
            .filter_map(|(i, r)| adaptive::Rule::parse(r, i, issues))
            .collect();
        Rules {
            default,
            domains,
            mx,
            adaptive,
        }
    }

    /// The limit a delivery to `domain`, whose mail servers are `mx_hosts`, counts against.
    pub fn lookup(&self, domain: &str, mx_hosts: &[&str]) -> (Key, &Shape) {
        let domain = domain.trim_end_matches('.').to_ascii_lowercase();
        if let Some(shape) = self.domains.get(&domain) {
            return (Key::Domain(domain), shape);
        }
        for (pattern, shape) in &self.mx {
            if mx_hosts.iter().any(|h| host_matches(pattern, h)) {
                return (Key::Mx(pattern.clone()), shape);
            }
        }
        (Key::Domain(domain), &self.default)
    }

    /// The limits known before the MX lookup: the domain's own entry or the default.
    pub fn before_lookup(&self, domain: &str) -> &Shape {
        let domain = domain.trim_end_matches('.').to_ascii_lowercase();
        self.domains.get(&domain).unwrap_or(&self.default)
    }

    /// The shape of a key (for listing); `None` when the key is no longer in the file.
    pub fn shape_of(&self, key: &Key) -> Option<&Shape> {
        match key {
            Key::Domain(d) => Some(self.domains.get(d).unwrap_or(&self.default)),
            Key::Mx(p) => self.mx.iter().find(|(q, _)| q == p).map(|(_, s)| s),
        }
    }
}

pub(super) use super::values::host_matches;

fn merge(base: &Shape, raw: RawShape, key: &str, issues: &mut Issues) -> Shape {
    let mut shape = base.clone();
    let mut count = |field: &str, value: Option<i64>, target: &mut usize| {
        if let Some(v) = value {
            match usize::try_from(v) {
                Ok(n) if (1..=10_000).contains(&n) => *target = n,
                _ => issues.push(format!("{key}.{field}"), format!("{v} is not between 1 and 10000")),
            }
        }
    };
    count("max_connections", raw.max_connections, &mut shape.max_connections);
    count(
        "messages_per_connection",
        raw.messages_per_connection,
        &mut shape.messages_per_connection,
    );
    for (field, value, target) in [
        ("max_message_rate", raw.max_message_rate, &mut shape.message_rate),
        ("connection_rate", raw.connection_rate, &mut shape.connection_rate),
    ] {
        if let Some(text) = value {
            match text.parse() {
                Ok(rate) => *target = Some(rate),
                Err(e) => issues.push(format!("{key}.{field}"), e),
            }
        }
    }
    for (field, value, target) in [
        ("connect_timeout", raw.connect_timeout, &mut shape.connect_timeout),
        ("command_timeout", raw.command_timeout, &mut shape.command_timeout),
        ("data_timeout", raw.data_timeout, &mut shape.data_timeout),
    ] {
        if let Some(text) = value {
            match super::values::parse_duration(&text) {
                Ok(d) if !d.is_zero() => *target = d,
                Ok(_) => issues.push(format!("{key}.{field}"), "must be more than 0s"),
                Err(e) => issues.push(format!("{key}.{field}"), e),
            }
        }
    }
    if let Some(per_source) = raw.per_source {
        shape.per_source = per_source;
    }
    if let Some(tls) = raw.tls {
        match tls.as_str() {
            "none" => shape.tls = TlsPolicy::None,
            "opportunistic" => shape.tls = TlsPolicy::Opportunistic,
            "required" => shape.tls = TlsPolicy::Required,
            other => issues.push(
                format!("{key}.tls"),
                format!("{other:?} is not one of \"none\", \"opportunistic\", \"required\""),
            ),
        }
    }
    shape
}
