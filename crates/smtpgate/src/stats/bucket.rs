//! The counts themselves: per time bucket, totals and per dimension value, in three tiers that
//! age into each other (minutes for 48 h, hours for 30 days, days for 400 days), so memory and
//! the stats file stay bounded whatever the traffic.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::dimension::Dimension;
use super::histogram::Histogram;
use super::record::{Kind, Record};

pub const MINUTE: u64 = 60;
pub const HOUR: u64 = 3600;
pub const DAY: u64 = 86_400;
/// How long each tier keeps its buckets before they roll up into the next (or are dropped).
pub const MINUTES_KEPT: u64 = 48 * HOUR;
pub const HOURS_KEPT: u64 = 30 * DAY;
pub const DAYS_KEPT: u64 = 400 * DAY;
/// The value extra values of a dimension are counted under, past the cap.
pub const OTHER: &str = "(other)";
/// Bounce categories kept apart per counts (the classifier has a few dozen at most).
const MAX_CATEGORIES: usize = 64;

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// What is counted, per bucket and per dimension value. Zeroes are left out of the file.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Counts {
    #[serde(skip_serializing_if = "is_zero")]
    pub received: u64,
    #[serde(skip_serializing_if = "is_zero")]
    pub delivered: u64,
    #[serde(skip_serializing_if = "is_zero")]
    pub deferred: u64,
    #[serde(skip_serializing_if = "is_zero")]
    pub bounced: u64,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub bounced_by: BTreeMap<String, u64>,
    #[serde(skip_serializing_if = "is_zero")]
    pub rejected: u64,
    #[serde(skip_serializing_if = "is_zero")]
    pub quarantined: u64,
    #[serde(skip_serializing_if = "is_zero")]
    pub complaints: u64,
    /// Latencies of deliveries.
    #[serde(skip_serializing_if = "Histogram::is_empty")]
    pub latency: Histogram,
}

impl Counts {
    /// Adds `n` recipients' worth of `rec`.
    fn add(&mut self, rec: &Record<'_>, n: u64) {
        match rec.kind {
            Kind::Received => self.received += n,
            Kind::Delivered => {
                self.delivered += n;
                if let Some(ms) = rec.latency_ms {
                    self.latency.add(ms, n);
                }
            }
            Kind::Deferred => self.deferred += n,
            Kind::Bounced => {
                self.bounced += n;
                add_category(&mut self.bounced_by, rec.category.unwrap_or("unknown"), n);
            }
            Kind::Rejected => self.rejected += n,
            Kind::Quarantined => self.quarantined += n,
            Kind::Complaint => self.complaints += n,
        }
    }

    pub fn merge(&mut self, other: &Counts) {
        self.received += other.received;
        self.delivered += other.delivered;
        self.deferred += other.deferred;
        self.bounced += other.bounced;
        for (category, n) in &other.bounced_by {
            add_category(&mut self.bounced_by, category, *n);
        }
        self.rejected += other.rejected;
        self.quarantined += other.quarantined;
        self.complaints += other.complaints;
        self.latency.merge(&other.latency);
    }
}

fn add_category(map: &mut BTreeMap<String, u64>, category: &str, n: u64) {
    *capped(map, category, MAX_CATEGORIES) += n;
}

/// The entry for `value`, or for [`OTHER`] once `cap` other values are there.
fn capped<'m, T: Default>(map: &'m mut BTreeMap<String, T>, value: &str, cap: usize) -> &'m mut T {
    let named = map.len() - usize::from(map.contains_key(OTHER));
    let key = if map.contains_key(value) || named < cap {
        value
    } else {
        OTHER
    };
    map.entry(key.to_owned()).or_default()
}

/// One time bucket: totals, and counts per value of each dimension.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Bucket {
    pub total: Counts,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub by: BTreeMap<Dimension, BTreeMap<String, Counts>>,
}

impl Bucket {
    fn add(&mut self, rec: &Record<'_>, cap: usize) {
        let units = rec.units();
        self.total.add(rec, units);
        for (dimension, value) in rec.common() {
            if let Some(value) = value {
                let values = self.by.entry(dimension).or_default();
                capped(values, &value, cap).add(rec, units);
            }
        }
        rec.recipients.each_domain(|domain| {
            let values = self.by.entry(Dimension::Domain).or_default();
            capped(values, &domain, cap).add(rec, 1);
        });
    }

    fn merge(&mut self, other: &Bucket, cap: usize) {
        self.total.merge(&other.total);
        for (dimension, values) in &other.by {
            let mine = self.by.entry(*dimension).or_default();
            for (value, counts) in values {
                capped(mine, value, cap).merge(counts);
            }
        }
    }
}

/// Every bucket kept, by start time (unix seconds) in each tier.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Store {
    pub minutes: BTreeMap<u64, Bucket>,
    pub hours: BTreeMap<u64, Bucket>,
    pub days: BTreeMap<u64, Bucket>,
}

impl Store {
    /// Counts `rec`, at `at` (unix seconds), in the bucket of that time, in the tier that keeps
    /// buckets of that age (a record older than every tier is dropped).
    pub fn add(&mut self, rec: &Record<'_>, at: u64, now: u64, cap: usize) {
        let age = now.saturating_sub(at);
        let (tier, size) = if age < MINUTES_KEPT {
            (&mut self.minutes, MINUTE)
        } else if age < HOURS_KEPT {
            (&mut self.hours, HOUR)
        } else if age < DAYS_KEPT {
            (&mut self.days, DAY)
        } else {
            return;
        };
        tier.entry(at - at % size).or_default().add(rec, cap);
    }

    /// Adds another node's counts, tier by tier (both rolled up at the same time, so their
    /// tiers hold the same ages).
    pub fn merge(&mut self, other: &Store, cap: usize) {
        for (mine, theirs) in [
            (&mut self.minutes, &other.minutes),
            (&mut self.hours, &other.hours),
            (&mut self.days, &other.days),
        ] {
            for (start, bucket) in theirs {
                mine.entry(*start).or_default().merge(bucket, cap);
            }
        }
    }

    /// Moves minute buckets older than 48 h into their hours, hours older than 30 days into
    /// their days, and drops days older than 400 days.
    pub fn roll_up(&mut self, now: u64, cap: usize) {
        let old = take_before(&mut self.minutes, now.saturating_sub(MINUTES_KEPT));
        merge_into(&mut self.hours, old, HOUR, cap);
        let old = take_before(&mut self.hours, now.saturating_sub(HOURS_KEPT));
        merge_into(&mut self.days, old, DAY, cap);
        take_before(&mut self.days, now.saturating_sub(DAYS_KEPT));
    }

    /// Every bucket with its start and size, coarsest first.
    pub fn buckets(&self) -> impl Iterator<Item = (u64, u64, &Bucket)> {
        tier(&self.days, DAY)
            .chain(tier(&self.hours, HOUR))
            .chain(tier(&self.minutes, MINUTE))
    }
}

/// One tier's buckets with their size.
fn tier(map: &BTreeMap<u64, Bucket>, size: u64) -> impl Iterator<Item = (u64, u64, &Bucket)> {
    map.iter().map(move |(start, b)| (*start, size, b))
}

/// Removes and returns the buckets that start before `cutoff`.
/// Cheap when there is nothing to take (the usual case: it runs at every event).
fn take_before(tier: &mut BTreeMap<u64, Bucket>, cutoff: u64) -> BTreeMap<u64, Bucket> {
    if tier.first_key_value().is_none_or(|(first, _)| *first >= cutoff) {
        return BTreeMap::new();
    }
    let kept = tier.split_off(&cutoff);
    std::mem::replace(tier, kept)
}

fn merge_into(tier: &mut BTreeMap<u64, Bucket>, buckets: BTreeMap<u64, Bucket>, size: u64, cap: usize) {
    for (start, bucket) in buckets {
        tier.entry(start - start % size).or_default().merge(&bucket, cap);
    }
}
