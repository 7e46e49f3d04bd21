//! Suspensions: delivery paused by an operator for one recipient domain, pool, route (the
//! `[[route]]` rule's name) or stream, until resumed or, with a duration, until it lapses.
//!
//! This is the one place suspensions live: what they are ([`Suspension`], [`Scope`]), which
//! recipient of which copy they cover ([`Suspension::covers`]), and their file. The queue asks
//! [`Suspensions::covers`] before a delivery goes on a ready list and again when a worker takes
//! it: what is covered is parked (no connection, no attempt counted, no retry used) and pushed
//! again on a resume or a lapse (`queue/mod.rs`). The admin API (`server/steer_api.rs`) and
//! `smtpgate suspend`/`resume` change them through the queue.
//!
//! Durable: every change is written to `<spool>/suspended.json` (temporary file, fsync, rename,
//! fsync of the directory) before it takes effect, and the file is read at start, so a
//! suspension survives a crash. A file that cannot be read stops the start: delivering what an
//! operator suspended would be worse than not starting.
//!
//! `parking.rs` is the queue's side: what a suspension holds back, pushed again when it ends,
//! and the timer of lapses.

use std::path::{Path, PathBuf};
use std::sync::{Mutex, RwLock};

mod parking;

use serde::{Deserialize, Serialize};

use crate::envelope::{Envelope, Recipient};

/// The file under the spool directory.
pub const FILE: &str = "suspended.json";

/// The longest value or reason accepted, in bytes.
pub const MAX_TEXT: usize = 255;

/// What a suspension names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    /// A recipient domain (lower-cased, exact: not its subdomains).
    Domain,
    /// A `[[pool]]`: every copy routed to it.
    Pool,
    /// A `[[route]]` rule, by name: every copy it routed.
    Route,
    /// A `[[stream]]` (`default` is the stream of copies no rule put in one).
    Stream,
}

impl Scope {
    pub const ALL: [Scope; 4] = [Scope::Domain, Scope::Pool, Scope::Route, Scope::Stream];

    pub fn name(self) -> &'static str {
        match self {
            Scope::Domain => "domain",
            Scope::Pool => "pool",
            Scope::Route => "route",
            Scope::Stream => "stream",
        }
    }

    /// `value` as this scope compares it, or why it cannot name anything.
    pub fn normalize(self, value: &str) -> Result<String, String> {
        let value = value.trim();
        let what = self.name();
        if value.is_empty() {
            return Err(format!("{what}: empty"));
        }
        if value.len() > MAX_TEXT {
            return Err(format!("{what}: longer than {MAX_TEXT} bytes"));
        }
        if value.chars().any(|c| c.is_control() || c.is_whitespace() || c == '/') {
            return Err(format!("{what}: {value:?} has a space, a control character or a '/'"));
        }
        match self {
            Scope::Domain => {
                let domain = value.trim_end_matches('.').to_ascii_lowercase();
                if domain.is_empty() || domain.contains('@') || domain.split('.').any(str::is_empty) {
                    return Err(format!("domain: {value:?} is not a domain"));
                }
                Ok(domain)
            }
            _ => Ok(value.to_string()),
        }
    }
}

impl std::fmt::Display for Scope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Scope {
    type Err = String;

    fn from_str(text: &str) -> Result<Scope, String> {
        Scope::ALL
            .into_iter()
            .find(|s| s.name() == text)
            .ok_or_else(|| format!("unknown kind {text:?} (use domain, pool, route or stream)"))
    }
}

/// One suspension: what it names, since when, until when (`None`: until resumed), why, by whom.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Suspension {
    pub kind: Scope,
    /// Normalized by [`Scope::normalize`].
    pub value: String,
    /// Unix milliseconds.
    pub since: u64,
    /// Unix milliseconds; `None`: until resumed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub until: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Who set it (the admin client's address).
    #[serde(default)]
    pub by: String,
}

impl Suspension {
    /// Whether it is in force at `now_ms` (one with a duration lapses at `until`).
    pub fn active(&self, now_ms: u64) -> bool {
        self.until.is_none_or(|until| now_ms < until)
    }

    /// Whether it covers `rcpt` of the copy `env` (whether or not it is in force).
    pub fn covers(&self, env: &Envelope, rcpt: &Recipient) -> bool {
        let value = self.value.as_str();
        match self.kind {
            Scope::Domain => rcpt.domain().trim_end_matches('.') == value,
            Scope::Pool => env.pool.as_deref() == Some(value),
            Scope::Route => env.route.as_deref() == Some(value),
            Scope::Stream => env.stream.as_deref().unwrap_or("default") == value,
        }
    }

    /// `kind:value`, for logs and events.
    pub fn key(&self) -> String {
        format!("{}:{}", self.kind, self.value)
    }
}

/// The file's content.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Stored {
    version: u32,
    suspensions: Vec<Suspension>,
}

/// The suspensions of one spool, in memory and in their file. One process owns a spool.
#[derive(Debug)]
pub struct Suspensions {
    path: PathBuf,
    list: RwLock<Vec<Suspension>>,
    /// Serializes changes, so the file and memory change in the same order.
    write: Mutex<()>,
    /// Told of every change (the lapse task waits on it).
    pub changed: tokio::sync::Notify,
}

impl Suspensions {
    /// Reads `<dir>/suspended.json` (none: no suspension).
    pub fn open(dir: &Path) -> Result<Suspensions, String> {
        let path = dir.join(FILE);
        let list = match std::fs::read(&path) {
            Ok(bytes) => {
                let stored: Stored = serde_json::from_slice(&bytes).map_err(|e| {
                    format!(
                        "{} is damaged ({e}); fix it or remove it (it lists the suspended deliveries)",
                        path.display()
                    )
                })?;
                stored.suspensions
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
        };
        Ok(Suspensions {
            path,
            list: RwLock::new(list),
            write: Mutex::new(()),
            changed: tokio::sync::Notify::new(),
        })
    }

    /// Whether there is none at all (in force or lapsed): the queue's fast path.
    pub fn is_empty(&self) -> bool {
        self.list.read().unwrap().is_empty()
    }

    /// Those in force at `now_ms`, oldest first.
    pub fn active(&self, now_ms: u64) -> Vec<Suspension> {
        let mut all: Vec<Suspension> = self
            .list
            .read()
            .unwrap()
            .iter()
            .filter(|s| s.active(now_ms))
            .cloned()
            .collect();
        all.sort_by_key(|s| (s.since, s.key()));
        all
    }

    /// Whether one in force at `now_ms` covers `rcpt` of `env`.
    pub fn covers(&self, env: &Envelope, rcpt: &Recipient, now_ms: u64) -> bool {
        self.list
            .read()
            .unwrap()
            .iter()
            .any(|s| s.active(now_ms) && s.covers(env, rcpt))
    }

    /// When the next one with a duration lapses.
    pub fn next_lapse(&self) -> Option<u64> {
        self.list.read().unwrap().iter().filter_map(|s| s.until).min()
    }

    /// Adds `s`, replacing one of the same kind and value; written before it applies. Returns
    /// the one it replaced, if that was still in force.
    pub fn set(&self, s: Suspension) -> std::io::Result<Option<Suspension>> {
        let now = s.since;
        self.change(|list| {
            let old = take(list, s.kind, &s.value);
            list.push(s);
            Some(old.filter(|o| o.active(now)))
        })
        .map(Option::flatten)
    }

    /// Removes the one of `kind` and `value` in force at `now_ms`; written before it applies.
    pub fn remove(&self, kind: Scope, value: &str, now_ms: u64) -> std::io::Result<Option<Suspension>> {
        self.change(|list| {
            let found = list
                .iter()
                .any(|s| s.kind == kind && s.value == value && s.active(now_ms));
            found.then(|| take(list, kind, value)).flatten()
        })
    }

    /// Removes those lapsed at `now_ms`; returns them.
    pub fn prune(&self, now_ms: u64) -> std::io::Result<Vec<Suspension>> {
        if self.list.read().unwrap().iter().all(|s| s.active(now_ms)) {
            return Ok(Vec::new());
        }
        self.change(|list| {
            let (kept, lapsed) = list.drain(..).partition(|s| s.active(now_ms));
            *list = kept;
            Some(lapsed)
        })
        .map(Option::unwrap_or_default)
    }

    /// Applies `edit` to a copy of the list; if it returns something, writes the copy to the
    /// file, then puts it in place and tells the waiters.
    fn change<T>(&self, edit: impl FnOnce(&mut Vec<Suspension>) -> Option<T>) -> std::io::Result<Option<T>> {
        let _one_at_a_time = self.write.lock().unwrap();
        let mut list = self.list.read().unwrap().clone();
        let Some(out) = edit(&mut list) else {
            return Ok(None);
        };
        let stored = Stored {
            version: 1,
            suspensions: list,
        };
        let bytes = serde_json::to_vec_pretty(&stored).map_err(std::io::Error::other)?;
        crate::files::replace_durably(&self.path, &bytes)?;
        *self.list.write().unwrap() = stored.suspensions;
        self.changed.notify_one();
        Ok(Some(out))
    }
}

/// Takes the suspension of `kind` and `value` out of `list`.
fn take(list: &mut Vec<Suspension>, kind: Scope, value: &str) -> Option<Suspension> {
    let at = list.iter().position(|s| s.kind == kind && s.value == value)?;
    Some(list.remove(at))
}

#[cfg(test)]
mod tests;
