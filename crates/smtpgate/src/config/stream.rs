//! `[[stream]]`: named traffic streams (transactional, bulk, ...) that route rules put copies in.
//! Each stream has its own queues and delivery workers, its own shaping counters, and the source
//! addresses it sends from, each with its weight and, for a new address, the day its warm-up
//! started: from then on the stream's `warmup` schedule caps how many messages it sends per day.

use std::net::IpAddr;

use serde::Deserialize;

use super::issues::Issues;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawStream {
    pub name: Option<String>,
    pub source_addresses: Option<Vec<RawSource>>,
    pub warmup: Option<Vec<i64>>,
    pub priority: Option<i64>,
}

/// `"192.0.2.1"` or `{ address = "192.0.2.1", weight = 3, warmup_since = "2026-11-20" }`.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum RawSource {
    Plain(String),
    Weighted {
        address: String,
        weight: Option<i64>,
        warmup_since: Option<String>,
    },
}

/// Messages per day on the 1st, 2nd, ... day of an address's warm-up when the stream sets no
/// `warmup` schedule; after the last day the address has no cap.
pub const DEFAULT_WARMUP: [u64; 14] = [
    50, 100, 500, 1_000, 5_000, 10_000, 20_000, 40_000, 70_000, 100_000, 150_000, 250_000, 400_000, 600_000,
];

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamConfig {
    pub name: String,
    /// Local addresses to send from (empty: the system chooses).
    pub sources: Vec<SourceAddress>,
    /// Messages per day during warm-up, day by day.
    pub warmup: Vec<u64>,
    /// Higher goes first when outbound connections are scarce (`[queue] max_connections`).
    pub priority: i32,
}

/// One source address of a stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceAddress {
    pub address: IpAddr,
    pub weight: u32,
    /// The first day of its warm-up, in days since 1970-01-01 (UTC); `None`: warmed up.
    pub warmup_since: Option<i64>,
}

impl StreamConfig {
    /// How many messages `source` may send on `day` (days since the epoch); `None`: no cap.
    pub fn daily_cap(&self, source: &SourceAddress, day: i64) -> Option<u64> {
        let since = source.warmup_since?;
        if day < since {
            return Some(0);
        }
        let index = usize::try_from(day - since).unwrap_or(usize::MAX);
        self.warmup.get(index).copied()
    }
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
            let (text, weight, since) = match src {
                RawSource::Plain(a) => (a, 1, None),
                RawSource::Weighted {
                    address,
                    weight,
                    warmup_since,
                } => (address, weight.unwrap_or(1), warmup_since),
            };
            let Ok(ip) = text.parse::<IpAddr>() else {
                issues.push(k, format!("{text:?} is not an IP address"));
                continue;
            };
            let warmup_since = match since.map(|d| crate::datetime::parse_date(&d).ok_or(d)) {
                None => None,
                Some(Ok(day)) => Some(day),
                Some(Err(d)) => {
                    issues.push(
                        format!("{k}.warmup_since"),
                        format!("{d:?} is not a date like 2026-11-20"),
                    );
                    continue;
                }
            };
            match u32::try_from(weight) {
                Ok(w) if (1..=1000).contains(&w) => sources.push(SourceAddress {
                    address: ip,
                    weight: w,
                    warmup_since,
                }),
                _ => issues.push(k, format!("weight {weight} is not between 1 and 1000")),
            }
        }
        let warmup = match s.warmup {
            None => DEFAULT_WARMUP.to_vec(),
            Some(days) => {
                let bad = days.iter().any(|&n| n < 1);
                if bad || days.is_empty() {
                    issues.push(key("warmup"), "must list at least one daily volume, each 1 or more");
                }
                days.into_iter().map(|n| n.max(1) as u64).collect()
            }
        };
        let priority = match s.priority.map(i32::try_from) {
            None => 0,
            Some(Ok(p)) if (-100..=100).contains(&p) => p,
            Some(_) => {
                issues.push(key("priority"), "must be between -100 and 100");
                0
            }
        };
        out.push(StreamConfig {
            name,
            sources,
            warmup,
            priority,
        });
    }
    out
}
