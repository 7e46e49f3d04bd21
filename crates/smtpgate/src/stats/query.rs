//! Reading the counts back: over a time range, as a series of buckets and as totals, overall
//! and per value of one dimension, with the rates and latency percentiles worked out.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::bucket::{Bucket, Counts, DAY, DAYS_KEPT, HOUR, MINUTE, Store};
use super::dimension::Dimension;

/// The size of the buckets of a series.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Granularity {
    Minute,
    Hour,
    Day,
    /// Minutes up to 6 h, hours up to 14 days, days beyond.
    Auto,
}

impl Granularity {
    pub fn parse(text: &str) -> Option<Granularity> {
        match text {
            "minute" => Some(Granularity::Minute),
            "hour" => Some(Granularity::Hour),
            "day" => Some(Granularity::Day),
            "auto" => Some(Granularity::Auto),
            _ => None,
        }
    }

    /// The bucket size in seconds for a range of `span` seconds.
    fn seconds(self, span: u64) -> u64 {
        match self {
            Granularity::Minute => MINUTE,
            Granularity::Hour => HOUR,
            Granularity::Day => DAY,
            Granularity::Auto if span <= 6 * HOUR => MINUTE,
            Granularity::Auto if span <= 14 * DAY => HOUR,
            Granularity::Auto => DAY,
        }
    }

    fn of_seconds(size: u64) -> Granularity {
        match size {
            MINUTE => Granularity::Minute,
            HOUR => Granularity::Hour,
            _ => Granularity::Day,
        }
    }
}

/// What to read: the range is `since` ago up to `until` ago (0: now).
#[derive(Debug, Clone, PartialEq)]
pub struct Query {
    pub by: Option<Dimension>,
    pub since: Duration,
    pub until: Duration,
    pub bucket: Granularity,
}

impl Default for Query {
    fn default() -> Query {
        Query {
            by: None,
            since: Duration::from_secs(24 * HOUR),
            until: Duration::ZERO,
            bucket: Granularity::Auto,
        }
    }
}

impl Query {
    /// Reads the API's parameters (`by`, `since`, `until`, `bucket`); a message for a wrong
    /// or unknown one.
    pub fn from_params(params: &HashMap<String, String>) -> Result<Query, String> {
        let mut q = Query::default();
        for (key, value) in params {
            match key.as_str() {
                "by" => q.by = Some(Dimension::parse(value).ok_or_else(|| bad_by(value))?),
                "since" => q.since = duration(key, value)?,
                "until" => q.until = duration(key, value)?,
                "bucket" => {
                    q.bucket = Granularity::parse(value)
                        .ok_or_else(|| format!("bucket: {value:?} is not minute, hour, day or auto"))?
                }
                _ => return Err(format!("unknown parameter {key:?} (by, since, until, bucket)")),
            }
        }
        if q.until >= q.since {
            return Err("until must be less long ago than since".into());
        }
        Ok(q)
    }
}

fn bad_by(value: &str) -> String {
    let names: Vec<&str> = Dimension::ALL.iter().map(|d| d.name()).collect();
    format!("by: {value:?} is not one of {}", names.join(", "))
}

/// A duration parameter, no longer than the counts are kept.
fn duration(key: &str, value: &str) -> Result<Duration, String> {
    let d = crate::config::values::parse_duration(value).map_err(|e| format!("{key}: {e}"))?;
    match d.as_secs() <= DAYS_KEPT {
        true => Ok(d),
        false => Err(format!("{key}: counts are kept for 400 days at most")),
    }
}

/// Latency percentiles of deliveries, in ms (`null` with no delivery).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Latency {
    pub p50: Option<u64>,
    pub p90: Option<u64>,
    pub p99: Option<u64>,
}

/// Counts with their rates. Rates are `null` when their denominator is zero.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    pub received: u64,
    pub delivered: u64,
    pub deferred: u64,
    pub bounced: u64,
    pub bounced_by: BTreeMap<String, u64>,
    pub rejected: u64,
    pub quarantined: u64,
    pub complaints: u64,
    /// delivered / (delivered + bounced).
    pub delivery_rate: Option<f64>,
    /// bounced / (delivered + bounced).
    pub bounce_rate: Option<f64>,
    /// deferred / (delivered + bounced + deferred): the share of attempts put off.
    pub deferral_rate: Option<f64>,
    pub latency_ms: Latency,
}

fn ratio(part: u64, whole: u64) -> Option<f64> {
    (whole > 0).then(|| part as f64 / whole as f64)
}

impl Summary {
    pub fn of(c: &Counts) -> Summary {
        let settled = c.delivered + c.bounced;
        Summary {
            received: c.received,
            delivered: c.delivered,
            deferred: c.deferred,
            bounced: c.bounced,
            bounced_by: c.bounced_by.clone(),
            rejected: c.rejected,
            quarantined: c.quarantined,
            complaints: c.complaints,
            delivery_rate: ratio(c.delivered, settled),
            bounce_rate: ratio(c.bounced, settled),
            deferral_rate: ratio(c.deferred, settled + c.deferred),
            latency_ms: Latency {
                p50: c.latency.percentile(0.50),
                p90: c.latency.percentile(0.90),
                p99: c.latency.percentile(0.99),
            },
        }
    }
}

/// One bucket of a series: its start (unix seconds) and what it counted.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Point {
    pub start: u64,
    #[serde(flatten)]
    pub summary: Summary,
}

/// One value of the dimension asked for: its totals and its series (buckets with counts only).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ValueReport {
    pub value: String,
    #[serde(flatten)]
    pub summary: Summary,
    pub series: Vec<Point>,
}

/// The answer to a [`Query`]. Values are ordered by volume, largest first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    pub by: Option<Dimension>,
    /// The range, unix seconds, `from` included, `to` excluded.
    pub from: u64,
    pub to: u64,
    pub bucket: Granularity,
    pub totals: Summary,
    pub series: Vec<Point>,
    pub values: Vec<ValueReport>,
    /// The nodes whose counts are summed (a query over every node); absent: this node's only.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nodes: Vec<String>,
}

/// Counts gathered per series bucket: totals, and per value when a dimension is asked for.
#[derive(Default)]
struct Gathered {
    totals: BTreeMap<u64, Counts>,
    values: BTreeMap<String, BTreeMap<u64, Counts>>,
}

impl Gathered {
    fn add(&mut self, point: u64, bucket: &Bucket, by: Option<Dimension>) {
        self.totals.entry(point).or_default().merge(&bucket.total);
        let Some(values) = by.and_then(|d| bucket.by.get(&d)) else {
            return;
        };
        for (value, counts) in values {
            let series = self.values.entry(value.clone()).or_default();
            series.entry(point).or_default().merge(counts);
        }
    }
}

/// Runs `q` over `store` at `now` (unix seconds).
pub fn run(store: &Store, q: &Query, now: u64) -> Report {
    let from = now.saturating_sub(q.since.as_secs());
    let to = now.saturating_sub(q.until.as_secs()) + 1;
    let size = q.bucket.seconds(to - from);
    let mut gathered = Gathered::default();
    for (start, width, bucket) in store.buckets() {
        if start + width > from && start < to {
            gathered.add(start - start % size, bucket, q.by);
        }
    }
    let (totals, series) = summarise(&gathered.totals);
    let mut values: Vec<ValueReport> = gathered
        .values
        .iter()
        .map(|(value, points)| {
            let (summary, series) = summarise(points);
            ValueReport {
                value: value.clone(),
                summary,
                series,
            }
        })
        .collect();
    values.sort_by(|a, b| volume(&b.summary).cmp(&volume(&a.summary)).then(a.value.cmp(&b.value)));
    Report {
        by: q.by,
        from,
        to,
        bucket: Granularity::of_seconds(size),
        totals,
        series,
        values,
        nodes: Vec::new(),
    }
}

fn volume(s: &Summary) -> u64 {
    s.received + s.delivered + s.deferred + s.bounced + s.rejected + s.quarantined
}

/// The sum over a series, and the series's points.
fn summarise(points: &BTreeMap<u64, Counts>) -> (Summary, Vec<Point>) {
    let mut all = Counts::default();
    let series = points
        .iter()
        .map(|(start, counts)| {
            all.merge(counts);
            Point {
                start: *start,
                summary: Summary::of(counts),
            }
        })
        .collect();
    (Summary::of(&all), series)
}
