//! Analytics: counts per time bucket (received, delivered, deferred, bounced by category,
//! rejected, quarantined, complaints, delivery latency), in total and per recipient domain, MX
//! rollup, route, pool, stream, listener and sender domain.
//!
//! [`Stats::record`] takes a [`Record`] (`record.rs`: a small struct borrowed from what the
//! caller holds, no JSON) and only touches an in-memory map under a mutex: it never waits for
//! I/O. Buckets are per minute for
//! 48 h, then rolled up into hours kept 30 days, then days kept 400 days (`bucket.rs`); each
//! dimension keeps at most [`DEFAULT_CAP`] values per bucket, the rest under `(other)`.
//!
//! The counts are kept in `<spool>/stats/stats.json`, written every 10 s by a background task
//! (a temporary file, fsynced, renamed over the old one) and at shutdown, and read at start:
//! they survive a restart, and a crash loses at most the last interval's counts.
//!
//! With shared state (`[redis]`), each node also publishes its counts every 10 s (`nodes.rs`), and
//! [`Stats::query_nodes`] sums every live node's.
//!
//! A runtime service: it depends on configuration values, envelope types, the shared state and
//! leaf modules only.

mod bucket;
mod dimension;
mod histogram;
mod nodes;
mod query;
mod record;
mod table;
#[cfg(test)]
mod tests;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

pub use bucket::{Counts, OTHER};
pub use dimension::Dimension;
pub use histogram::Histogram;
pub use query::{Granularity, Latency, Point, Query, Report, Summary, ValueReport};
pub use record::{Kind, Recipients, Record, domain_of, mx_rollup};
pub use table::table;

use bucket::Store;

/// Values kept apart per dimension per bucket; more are counted under [`OTHER`].
pub const DEFAULT_CAP: usize = 1000;
/// The directory under the spool, and the file in it.
const DIR: &str = "stats";
const FILE: &str = "stats.json";

/// The counts of this node, and where they are kept.
pub struct Stats {
    store: Mutex<Store>,
    /// `None`: kept in memory only.
    file: Option<PathBuf>,
    cap: usize,
    /// Counted since the last save.
    dirty: AtomicBool,
    /// One save at a time: the background writer and the one at shutdown share the temp file.
    saving: Mutex<()>,
}

impl Stats {
    /// Counts kept in memory only.
    pub fn in_memory() -> Stats {
        Stats {
            store: Mutex::new(Store::default()),
            file: None,
            cap: DEFAULT_CAP,
            dirty: AtomicBool::new(false),
            saving: Mutex::new(()),
        }
    }

    /// The counts kept under `<spool_dir>/stats/`, read back. A file that cannot be read as
    /// counts is set aside (`stats.json.bad`) with a warning: counting starts again rather
    /// than the gate refusing to start over its analytics.
    pub fn open(spool_dir: &Path) -> std::io::Result<Stats> {
        let dir = spool_dir.join(DIR);
        std::fs::create_dir_all(&dir)?;
        let file = dir.join(FILE);
        let store = match std::fs::read(&file) {
            Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or_else(|e| {
                tracing::warn!(file = %file.display(), error = %e, "stats file unreadable: set aside, counting afresh");
                let _ = std::fs::rename(&file, file.with_extension("json.bad"));
                Store::default()
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Store::default(),
            Err(e) => return Err(e),
        };
        Ok(Stats {
            store: Mutex::new(store),
            file: Some(file),
            ..Stats::in_memory()
        })
    }

    /// At most `cap` values per dimension per bucket.
    pub fn with_cap(mut self, cap: usize) -> Stats {
        self.cap = cap;
        self
    }

    fn store(&self) -> MutexGuard<'_, Store> {
        self.store.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Counts `rec` (at its time, or now).
    pub fn record(&self, rec: &Record<'_>) {
        self.record_at(rec, now_ms());
    }

    /// [`Stats::record`] at a given time (unix ms): tests drive the clock.
    pub fn record_at(&self, rec: &Record<'_>, now_ms: u64) {
        let at = rec.at_ms.unwrap_or(now_ms) / 1000;
        let now = now_ms / 1000;
        let mut store = self.store();
        // Roll up first, so a record is never counted in a tier its bucket has left.
        store.roll_up(now, self.cap);
        store.add(rec, at, now, self.cap);
        self.dirty.store(true, Ordering::Relaxed);
    }

    /// The counts over a range, per bucket and in total, per value of `q.by`.
    pub fn query(&self, q: &Query) -> Report {
        self.query_at(q, now_ms())
    }

    /// [`Stats::query`] at a given time (unix ms).
    pub fn query_at(&self, q: &Query, now_ms: u64) -> Report {
        let mut store = self.store();
        store.roll_up(now_ms / 1000, self.cap);
        query::run(&store, q, now_ms / 1000)
    }

    /// Writes the counts to the stats file if anything was counted since the last save: a
    /// temporary file, fsynced, renamed over the old one, then the directory fsynced, so a
    /// crash leaves the old counts or the new ones. Blocking I/O: not for an async task.
    pub fn save(&self) -> std::io::Result<()> {
        let Some(file) = &self.file else {
            return Ok(());
        };
        let _one = self.saving.lock().unwrap_or_else(PoisonError::into_inner);
        if !self.dirty.swap(false, Ordering::Relaxed) {
            return Ok(());
        }
        let json = serde_json::to_vec(&*self.store()).map_err(std::io::Error::other);
        let written = json.and_then(|json| crate::files::replace_durably(file, &json));
        if written.is_err() {
            // Try again next time.
            self.dirty.store(true, Ordering::Relaxed);
        }
        written
    }

    /// [`Stats::save`], a failure logged.
    pub fn save_logged(&self) {
        if let Err(e) = self.save() {
            tracing::warn!(error = %e, "cannot save the stats file");
        }
    }

    /// Saves every `every` in the background, on the blocking pool, for as long as the process
    /// runs (the server saves once more at shutdown).
    pub fn spawn_writer(self: &Arc<Self>, every: Duration) -> tokio::task::JoinHandle<()> {
        let stats = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let stats = stats.clone();
                let _ = tokio::task::spawn_blocking(move || stats.save_logged()).await;
            }
        })
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}
