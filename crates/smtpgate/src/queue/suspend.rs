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

use std::path::{Path, PathBuf};
use std::sync::{Mutex, RwLock};

use serde::{Deserialize, Serialize};

use super::{Delivery, Queue, QueuedMessage};
use crate::envelope::{Envelope, Recipient};
use crate::events::{Event, Kind, now_ms};
use crate::route::NextHop;

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
        write_durably(&self.path, &bytes)?;
        *self.list.write().unwrap() = stored.suspensions;
        self.changed.notify_one();
        Ok(Some(out))
    }
}

impl Queue {
    /// The part of `d` that may go out now; the recipients a suspension in force covers are
    /// parked (not attempted, nothing counted) until it ends. `None`: nothing may go out.
    pub(super) fn unsuspended(&self, hop: &NextHop, d: Delivery) -> Option<Delivery> {
        if self.suspensions.is_empty() {
            return Some(d);
        }
        let now = now_ms();
        let env = &d.msg.env;
        let (parked, free): (Vec<u32>, Vec<u32>) = d
            .rcpts
            .iter()
            .partition(|&&i| self.suspensions.covers(env, &env.recipients[i as usize], now));
        if parked.is_empty() {
            return Some(d);
        }
        let free = (!free.is_empty()).then(|| Delivery {
            msg: d.msg.clone(),
            rcpts: free,
            attempts: d.attempts,
            epoch: d.epoch,
        });
        self.parked
            .lock()
            .unwrap()
            .push((hop.clone(), Delivery { rcpts: parked, ..d }));
        free
    }

    /// Pushes every parked delivery again, now: those still covered are parked again, those
    /// held or made stale meanwhile are dropped (a release dispatches them afresh).
    fn unpark(&self) {
        let parked = std::mem::take(&mut *self.parked.lock().unwrap());
        let now = crate::datetime::now_unix();
        for (hop, d) in parked {
            d.msg.due_now(now);
            self.push(hop, d);
        }
    }

    /// Whether a suspension in force covers a pending recipient of `msg` (the list's state).
    pub(super) fn is_suspended(&self, msg: &QueuedMessage) -> bool {
        if self.suspensions.is_empty() {
            return false;
        }
        let now = now_ms();
        msg.pending()
            .into_iter()
            .any(|i| self.suspensions.covers(&msg.env, &msg.env.recipients[i as usize], now))
    }

    /// The suspensions in force, oldest first.
    pub fn suspensions(&self) -> Vec<Suspension> {
        self.suspensions.active(now_ms())
    }

    /// Suspends what `s` names: durably, then nothing it covers is attempted until it is resumed
    /// or lapses. Returns the one it replaced. `by` did it (an admin event says so).
    pub async fn suspend(&self, s: Suspension) -> std::io::Result<Option<Suspension>> {
        let all = self.suspensions.clone();
        let added = s.clone();
        let replaced = tokio::task::spawn_blocking(move || all.set(added))
            .await
            .map_err(std::io::Error::other)??;
        let until = s.until.map_or("until resumed".to_string(), |u| {
            format!("until {}", crate::datetime::rfc3339_ms(u))
        });
        let reason = s.reason.as_deref().map(|r| format!(": {r}")).unwrap_or_default();
        self.suspension_event(&s, format!("suspend {} {until}{reason}", s.key()), &s.by);
        tracing::info!(by = %s.by, suspension = %s.key(), %until, reason = ?s.reason, "admin: delivery suspended");
        self.count_suspensions();
        // A shorter suspension replacing a longer one, or a different one: parked mail may go.
        if replaced.is_some() {
            self.unpark();
        }
        Ok(replaced)
    }

    /// Ends the suspension of `kind` and `value`: durably, then what it parked is attempted at
    /// once. `None`: there was none in force.
    pub async fn resume(&self, kind: Scope, value: &str, by: &str) -> std::io::Result<Option<Suspension>> {
        let all = self.suspensions.clone();
        let value = value.to_string();
        let removed = tokio::task::spawn_blocking(move || all.remove(kind, &value, now_ms()))
            .await
            .map_err(std::io::Error::other)??;
        if let Some(s) = &removed {
            self.suspension_event(s, format!("resume {}", s.key()), by);
            tracing::info!(%by, suspension = %s.key(), "admin: delivery resumed");
            self.count_suspensions();
            self.unpark();
        }
        Ok(removed)
    }

    /// Starts the task that ends suspensions when their duration is over and sends what they
    /// parked.
    pub fn start_suspensions(&self) {
        let queue = self.clone();
        tokio::spawn(async move {
            loop {
                let all = queue.suspensions.clone();
                let wait = match all.next_lapse() {
                    Some(at) => std::time::Duration::from_millis(at.saturating_sub(now_ms())),
                    None => std::time::Duration::from_secs(3600),
                };
                tokio::select! {
                    () = tokio::time::sleep(wait) => {}
                    // A change: look at the next lapse again.
                    () = all.changed.notified() => continue,
                }
                let lapsed = match tokio::task::spawn_blocking(move || all.prune(now_ms())).await {
                    Ok(Ok(lapsed)) => lapsed,
                    Ok(Err(e)) => {
                        tracing::error!(error = %e, "cannot write the suspensions; trying again in a minute");
                        tokio::time::sleep(std::time::Duration::from_secs(60)).await;
                        continue;
                    }
                    Err(_) => continue,
                };
                for s in &lapsed {
                    queue.suspension_event(s, format!("resume {} (lapsed)", s.key()), "smtpgate");
                    tracing::info!(suspension = %s.key(), "delivery resumed: the suspension lapsed");
                }
                queue.count_suspensions();
                // Even with nothing pruned (another change did it), parked mail may go now.
                queue.unpark();
            }
        });
    }

    fn count_suspensions(&self) {
        let n = self.suspensions.active(now_ms()).len();
        self.ctx().metrics.suspensions_active.set(n as i64);
    }

    fn suspension_event(&self, s: &Suspension, action: String, by: &str) {
        let named = |kind| (s.kind == kind).then_some(s.value.as_str());
        let (route, pool, stream) = (named(Scope::Route), named(Scope::Pool), named(Scope::Stream));
        let by = by.to_string();
        self.ctx()
            .events
            .emit_with(|| Event::new(Kind::Admin { action, by }).path(route, pool, stream));
    }
}

/// Takes the suspension of `kind` and `value` out of `list`.
fn take(list: &mut Vec<Suspension>, kind: Scope, value: &str) -> Option<Suspension> {
    let at = list.iter().position(|s| s.kind == kind && s.value == value)?;
    Some(list.remove(at))
}

/// Replaces `path` with `data` so that a crash leaves the old file or the new one: a temporary
/// file, fsync, rename, fsync of the directory.
fn write_durably(path: &Path, data: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let tmp = path.with_extension("json.tmp");
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(data)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)?;
    match path.parent() {
        Some(dir) => std::fs::File::open(dir)?.sync_all(),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::envelope::{QueueId, Sender};

    fn env(rcpts: &[&str], pool: Option<&str>, route: Option<&str>, stream: Option<&str>) -> Envelope {
        Envelope {
            id: QueueId(1),
            sender: Sender::parse("a@sender.test").unwrap(),
            recipients: rcpts.iter().map(|r| Recipient::parse(r).unwrap()).collect(),
            received_at: 0,
            eight_bit: false,
            smtputf8: false,
            ret: None,
            envid: None,
            pool: pool.map(Into::into),
            scan: Vec::new(),
            stream: stream.map(Into::into),
            route: route.map(Into::into),
        }
    }

    fn suspension(kind: Scope, value: &str, since: u64, until: Option<u64>) -> Suspension {
        Suspension {
            kind,
            value: kind.normalize(value).unwrap(),
            since,
            until,
            reason: Some("test".into()),
            by: "127.0.0.1:1".into(),
        }
    }

    #[test]
    fn each_kind_covers_what_it_names_and_nothing_else() {
        let e = env(
            &["x@Example.COM", "y@other.test"],
            Some("relay"),
            Some("bulk-rule"),
            Some("bulk"),
        );
        let (example, other) = (&e.recipients[0], &e.recipients[1]);
        let domain = suspension(Scope::Domain, "EXAMPLE.com.", 0, None);
        assert_eq!(domain.value, "example.com");
        assert!(domain.covers(&e, example));
        assert!(!domain.covers(&e, other));
        assert!(!suspension(Scope::Domain, "com", 0, None).covers(&e, example));
        assert!(suspension(Scope::Pool, "relay", 0, None).covers(&e, other));
        assert!(!suspension(Scope::Pool, "Relay", 0, None).covers(&e, other));
        assert!(suspension(Scope::Route, "bulk-rule", 0, None).covers(&e, example));
        assert!(!suspension(Scope::Route, "bulk", 0, None).covers(&e, example));
        assert!(suspension(Scope::Stream, "bulk", 0, None).covers(&e, example));
        assert!(!suspension(Scope::Stream, "default", 0, None).covers(&e, example));
        // A copy by MX, with no rule and no stream: only a domain or the default stream.
        let mx = env(&["x@example.com"], None, None, None);
        assert!(suspension(Scope::Stream, "default", 0, None).covers(&mx, &mx.recipients[0]));
        assert!(!suspension(Scope::Pool, "relay", 0, None).covers(&mx, &mx.recipients[0]));
        assert!(!suspension(Scope::Route, "bulk-rule", 0, None).covers(&mx, &mx.recipients[0]));
    }

    #[test]
    fn values_are_checked() {
        assert!(Scope::Domain.normalize("").is_err());
        assert!(Scope::Domain.normalize("a@b.test").is_err());
        assert!(Scope::Domain.normalize("a..b").is_err());
        assert!(Scope::Pool.normalize("a b").is_err());
        assert!(Scope::Route.normalize("a/b").is_err());
        assert!(Scope::Stream.normalize(&"x".repeat(MAX_TEXT + 1)).is_err());
        assert_eq!("route".parse::<Scope>(), Ok(Scope::Route));
        assert!("host".parse::<Scope>().is_err());
    }

    #[test]
    fn one_with_a_duration_lapses_at_its_end() {
        let dir = tempfile::tempdir().unwrap();
        let all = Suspensions::open(dir.path()).unwrap();
        let e = env(&["x@example.com"], None, None, None);
        all.set(suspension(Scope::Domain, "example.com", 1000, Some(5000)))
            .unwrap();
        assert!(all.covers(&e, &e.recipients[0], 4999));
        assert!(!all.covers(&e, &e.recipients[0], 5000));
        assert_eq!(all.next_lapse(), Some(5000));
        assert!(all.prune(4999).unwrap().is_empty());
        assert_eq!(all.prune(5000).unwrap().len(), 1);
        assert!(all.is_empty());
        assert!(all.active(0).is_empty());
        // Gone from the file too.
        assert!(Suspensions::open(dir.path()).unwrap().is_empty());
    }

    #[test]
    fn changes_are_in_the_file_before_they_apply_and_survive_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let all = Suspensions::open(dir.path()).unwrap();
        assert!(all.is_empty());
        let domain = suspension(Scope::Domain, "example.com", 1000, None);
        let pool = suspension(Scope::Pool, "relay", 2000, Some(9_000_000));
        assert_eq!(all.set(domain.clone()).unwrap(), None);
        assert_eq!(all.set(pool.clone()).unwrap(), None);
        let again = Suspensions::open(dir.path()).unwrap();
        assert_eq!(again.active(3000), vec![domain.clone(), pool.clone()]);
        assert!(!dir.path().join("suspended.json.tmp").exists());
        // Setting the same kind and value again replaces it.
        let longer = Suspension {
            until: None,
            ..pool.clone()
        };
        assert_eq!(again.set(longer.clone()).unwrap(), Some(pool));
        assert_eq!(again.active(3000).len(), 2);
        // Removing: only what is there; the file follows.
        assert_eq!(again.remove(Scope::Route, "relay", 3000).unwrap(), None);
        assert_eq!(again.remove(Scope::Domain, "example.com", 3000).unwrap(), Some(domain));
        let third = Suspensions::open(dir.path()).unwrap();
        assert_eq!(third.active(3000), vec![longer]);
    }

    #[test]
    fn a_damaged_file_stops_the_open() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(FILE), b"{\"version\":1,\"suspensions\":[{").unwrap();
        let error = Suspensions::open(dir.path()).unwrap_err();
        assert!(error.contains("suspended.json is damaged"), "{error}");
    }
}
