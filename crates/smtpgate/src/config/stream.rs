//! `[[stream]]`: named traffic streams (transactional, bulk, ...) that route rules put copies in.
//! Each stream has its own queues and delivery workers, its own shaping counters, and the source
//! addresses it sends from.

use std::net::IpAddr;

use serde::Deserialize;

use super::check::Issues;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawStream {
    pub name: Option<String>,
    pub source_addresses: Option<Vec<RawSource>>,
}

/// `"192.0.2.1"` or `{ address = "192.0.2.1", weight = 3 }`.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum RawSource {
    Plain(String),
    Weighted { address: String, weight: Option<i64> },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamConfig {
    pub name: String,
    /// Local addresses to send from, with weights (empty: the system chooses).
    pub sources: Vec<(IpAddr, u32)>,
}

pub(super) fn build_streams(raw: Vec<RawStream>, issues: &mut Issues) -> Vec<StreamConfig> {
    let mut out: Vec<StreamConfig> = Vec::new();
    for (i, s) in raw.into_iter().enumerate() {
        let key = |field: &str| format!("stream[{i}].{field}");
        let name = match s.name {
            Some(n) if !n.trim().is_empty() => n,
            _ => {
                issues.push(key("name"), "is required");
                continue;
            }
        };
        if out.iter().any(|o| o.name == name) {
            issues.push(key("name"), format!("{name:?} is already the name of another stream"));
        }
        let mut sources = Vec::new();
        for (j, src) in s.source_addresses.unwrap_or_default().into_iter().enumerate() {
            let k = format!("stream[{i}].source_addresses[{j}]");
            let (text, weight) = match src {
                RawSource::Plain(a) => (a, 1),
                RawSource::Weighted { address, weight } => (address, weight.unwrap_or(1)),
            };
            let Ok(ip) = text.parse::<IpAddr>() else {
                issues.push(k, format!("{text:?} is not an IP address"));
                continue;
            };
            match u32::try_from(weight) {
                Ok(w) if (1..=1000).contains(&w) => sources.push((ip, w)),
                _ => issues.push(k, format!("weight {weight} is not between 1 and 1000")),
            }
        }
        out.push(StreamConfig { name, sources });
    }
    out
}
