//! Source addresses and IP warm-up: which address a stream's next connection sends from (by
//! weight, among those under their daily cap), and how many messages each address has sent
//! today (UTC) against the cap its stream's warm-up schedule gives it.
//!
//! The counts are this node's (source addresses belong to one machine) and are kept in
//! `<spool>/warmup.json`, written (to a temporary file, then renamed) at most every
//! [`SAVE_EVERY`] and at shutdown, so that a restart does not start the day afresh: after a crash
//! at most that much sending can be forgotten.

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How often the counts are written to disk while messages are being sent.
pub const SAVE_EVERY: Duration = Duration::from_secs(5);

const DAY_MS: u64 = 86_400_000;

/// Today in days since the epoch (UTC), from milliseconds since the epoch.
pub fn day_of(ms: u64) -> i64 {
    (ms / DAY_MS) as i64
}

/// The instant (ms since the epoch) the day after `day` begins.
pub fn next_day_ms(day: i64) -> u64 {
    (day as u64 + 1) * DAY_MS
}

/// Messages sent per source address on its last day of sending.
#[derive(Default)]
pub struct Counts {
    sent: Mutex<HashMap<IpAddr, (i64, u64)>>,
    file: Mutex<Option<(PathBuf, Instant)>>,
}

impl Counts {
    /// Counts kept in `file`, read now if it exists (an unreadable file is logged and ignored).
    pub fn persisted(file: PathBuf) -> Counts {
        let sent = match std::fs::read_to_string(&file) {
            Ok(text) => match serde_json::from_str::<HashMap<IpAddr, (i64, u64)>>(&text) {
                Ok(sent) => sent,
                Err(e) => {
                    tracing::warn!(file = %file.display(), error = %e, "warm-up counts unreadable: starting from zero");
                    HashMap::new()
                }
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => HashMap::new(),
            Err(e) => {
                tracing::warn!(file = %file.display(), error = %e, "warm-up counts unreadable: starting from zero");
                HashMap::new()
            }
        };
        Counts {
            sent: Mutex::new(sent),
            file: Mutex::new(Some((file, Instant::now()))),
        }
    }

    /// How many messages `ip` has sent on `day`.
    pub fn sent(&self, ip: IpAddr, day: i64) -> u64 {
        match self.sent.lock().unwrap().get(&ip) {
            Some(&(d, n)) if d == day => n,
            _ => 0,
        }
    }

    /// Counts one message sent from `ip` on `day`; writes the file when it is due.
    pub fn count(&self, ip: IpAddr, day: i64) {
        self.take(ip, day, None);
    }

    /// Counts one message from `ip` on `day` if that keeps it within `cap` (`None`: no cap);
    /// whether it did. Checking and counting are one step, so concurrent senders never pass the cap.
    pub fn take(&self, ip: IpAddr, day: i64, cap: Option<u64>) -> bool {
        {
            let mut sent = self.sent.lock().unwrap();
            let entry = sent.entry(ip).or_insert((day, 0));
            if entry.0 != day {
                *entry = (day, 0);
            }
            if cap.is_some_and(|cap| entry.1 >= cap) {
                return false;
            }
            entry.1 += 1;
        }
        let due = self
            .file
            .lock()
            .unwrap()
            .as_ref()
            .is_some_and(|(_, saved)| saved.elapsed() >= SAVE_EVERY);
        if due {
            self.save_in_background();
        }
        true
    }

    /// Writes the counts to their file now (nothing without one), on this thread.
    pub fn save(&self) {
        if let Some((path, json)) = self.snapshot() {
            write_durably(&path, json.as_bytes());
        }
    }

    /// As [`Self::save`], on a blocking thread when called on the async runtime: the write and
    /// its fsyncs never run on the runtime's worker threads.
    fn save_in_background(&self) {
        let Some((path, json)) = self.snapshot() else { return };
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => drop(runtime.spawn_blocking(move || write_durably(&path, json.as_bytes()))),
            Err(_) => write_durably(&path, json.as_bytes()),
        }
    }

    /// The file and what to write to it, marked as saved now.
    fn snapshot(&self) -> Option<(std::path::PathBuf, String)> {
        let mut file = self.file.lock().unwrap();
        let (path, saved) = file.as_mut()?;
        let json = serde_json::to_string(&*self.sent.lock().unwrap()).unwrap_or_default();
        *saved = Instant::now();
        Some((path.clone(), json))
    }
}

/// Replaces `path` with `data` (see [`crate::files::replace_durably`]), saying so when it cannot.
fn write_durably(path: &std::path::Path, data: &[u8]) {
    // One writer at a time: a save in the background and one at shutdown never share the
    // temporary file.
    static WRITING: Mutex<()> = Mutex::new(());
    let _one = WRITING.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    if let Err(e) = crate::files::replace_durably(path, data) {
        tracing::warn!(file = %path.display(), error = %e, "cannot save the warm-up counts");
    }
}

/// The source address a new connection of a stream sends from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pick {
    /// The stream has no source addresses: the system chooses.
    System,
    Address(std::net::IpAddr),
    /// Every address of the stream has sent its warm-up volume for today; the next day begins
    /// at this instant (ms since the epoch).
    Exhausted {
        until: u64,
    },
}

impl Pick {
    pub fn address(self) -> Option<std::net::IpAddr> {
        match self {
            Pick::Address(ip) => Some(ip),
            _ => None,
        }
    }
}

/// One source address of a stream, for listing.
#[derive(Debug, Clone, serde::Serialize)]
pub struct SourceUsage {
    pub stream: String,
    pub address: std::net::IpAddr,
    pub weight: u32,
    /// The day of its warm-up (1 on the first day); absent when it is not warming up.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub warmup_day: Option<i64>,
    /// Today's cap; absent when there is none.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub daily_cap: Option<u64>,
    pub sent_today: u64,
}

impl super::Shaper {
    /// Keeps the warm-up counts in `file` (read now), unless the state already has its counts.
    pub fn with_warmup_file(self, file: std::path::PathBuf) -> super::Shaper {
        let _ = self.state.warmup.get_or_init(|| Counts::persisted(file));
        self
    }

    fn warmup(&self) -> &Counts {
        self.state.warmup.get_or_init(Counts::default)
    }

    /// The source address a new connection of `stream` sends from: its `source_addresses` in
    /// proportion to their weights (smooth weighted round robin), leaving out those that have
    /// sent their warm-up volume for today.
    pub fn source(&self, config: &crate::config::Config, stream: &str) -> Pick {
        let Some(s) = config.streams.iter().find(|s| s.name == stream) else {
            return Pick::System;
        };
        if s.sources.is_empty() {
            return Pick::System;
        }
        let today = day_of(super::adaptive::now_ms());
        let counts = self.warmup();
        let open: Vec<bool> = s
            .sources
            .iter()
            .map(|src| {
                s.daily_cap(src, today)
                    .is_none_or(|cap| counts.sent(src.address, today) < cap)
            })
            .collect();
        if !open.contains(&true) {
            return Pick::Exhausted {
                until: next_day_ms(today),
            };
        }
        let mut all = self.state.sources.lock().unwrap();
        let current = all.entry(stream.to_owned()).or_default();
        current.resize(s.sources.len(), 0);
        let mut total = 0;
        for ((c, src), _) in current.iter_mut().zip(&s.sources).zip(&open).filter(|(_, open)| **open) {
            *c += i64::from(src.weight);
            total += i64::from(src.weight);
        }
        let Some(best) = (0..s.sources.len())
            .filter(|&i| open[i])
            .max_by_key(|&i| (current[i], std::cmp::Reverse(i)))
        else {
            return Pick::System;
        };
        current[best] -= total;
        Pick::Address(s.sources[best].address)
    }

    /// Takes one message of `ip`'s warm-up volume for today in `stream`: `false` when it has
    /// sent all of it (the connection should give way to another address).
    pub fn take_source(&self, config: &crate::config::Config, stream: &str, ip: std::net::IpAddr) -> bool {
        let today = day_of(super::adaptive::now_ms());
        let cap = config
            .streams
            .iter()
            .find(|s| s.name == stream)
            .and_then(|s| s.sources.iter().find(|src| src.address == ip).map(|src| (s, src)))
            .and_then(|(s, src)| s.daily_cap(src, today));
        self.warmup().take(ip, today, cap)
    }

    /// Writes the warm-up counts to disk (at shutdown).
    pub fn save_warmup(&self) {
        self.warmup().save();
    }

    /// Every source address of every stream: weight, warm-up day, today's cap and use.
    pub fn sources(&self, config: &crate::config::Config) -> Vec<SourceUsage> {
        let today = day_of(super::adaptive::now_ms());
        let counts = self.warmup();
        config
            .streams
            .iter()
            .flat_map(|s| {
                s.sources.iter().map(move |src| SourceUsage {
                    stream: s.name.clone(),
                    address: src.address,
                    weight: src.weight,
                    warmup_day: src
                        .warmup_since
                        .filter(|_| s.daily_cap(src, today).is_some())
                        .map(|since| today - since + 1),
                    daily_cap: s.daily_cap(src, today),
                    sent_today: counts.sent(src.address, today),
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_are_per_day_and_survive_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("warmup.json");
        let ip: IpAddr = "192.0.2.7".parse().unwrap();
        let counts = Counts::persisted(file.clone());
        counts.count(ip, 20_000);
        counts.count(ip, 20_000);
        assert_eq!(counts.sent(ip, 20_000), 2);
        assert_eq!(counts.sent(ip, 20_001), 0, "a new day starts at zero");
        counts.save();
        let again = Counts::persisted(file.clone());
        assert_eq!(again.sent(ip, 20_000), 2);
        again.count(ip, 20_001);
        assert_eq!(again.sent(ip, 20_001), 1);
        assert_eq!(again.sent(ip, 20_000), 0, "only the last day is kept");
        std::fs::write(&file, "not json").unwrap();
        assert_eq!(Counts::persisted(file).sent(ip, 20_001), 0);
    }

    #[test]
    fn taking_stops_at_the_cap() {
        let counts = Counts::default();
        let ip: IpAddr = "192.0.2.8".parse().unwrap();
        let taken = (0..5).filter(|_| counts.take(ip, 7, Some(3))).count();
        assert_eq!((taken, counts.sent(ip, 7)), (3, 3));
        assert!(counts.take(ip, 8, Some(3)), "a new day");
        assert!(counts.take(ip, 8, None));
    }

    #[test]
    fn days_are_utc_days() {
        assert_eq!(day_of(0), 0);
        assert_eq!(day_of(DAY_MS - 1), 0);
        assert_eq!(day_of(DAY_MS), 1);
        assert_eq!(next_day_ms(0), DAY_MS);
    }
}
