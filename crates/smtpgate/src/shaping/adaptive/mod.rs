//! Adaptive throttling: rules on the replies of remote servers that suspend a destination or lower
//! its limits for a while, then let it recover gradually.
//!
//! The rules live in the shaping file, next to the limits they act on (and reload with it):
//!
//! ```toml
//! [[adaptive]]
//! name = "yahoo-ts"                # how actions and log lines name the rule
//! mx = "*.yahoodns.net"           # optional: only for domains whose mail servers match
//! code = "421"                     # optional: reply code, or its first digits ("4", "42")
//! status = "4.7.0"                 # optional: enhanced status code, or its start ("4.7.")
//! text = "\\[TS0[1-3]\\]"          # optional: a case-insensitive regex on the whole reply
//! category = "rate_limited"        # optional: the bounce category the reply was given
//! action = "suspend"               # "suspend" or "throttle"
//! duration = "30m"                 # held at full strength until this long after the last match
//! rate_factor = 0.5                # throttle: the message rate times this (0 < f <= 1)
//! connection_factor = 0.5          # throttle: max_connections times this (rounded up, at least 1)
//! recover = "1h"                   # after `duration`: back to normal linearly over this long
//! ```
//!
//! Every condition given must hold. A rule that matches a reply of a delivery to a destination
//! puts an [`Action`] on the destination's [`Limit`] (its stream and domain or MX rollup): a new
//! one, or the one in force renewed (its full strength extended, the stronger factors kept). An
//! action passes through three phases:
//!
//! 1. until `until`: suspended (no connection is opened) or throttled at its factors;
//! 2. from `until` to `recovered`: the factors rise linearly back to 1 (a suspension that has
//!    factors below 1 resumes at them);
//! 3. from `recovered` on it is gone.
//!
//! Times are wall-clock milliseconds since the epoch, so that actions can be listed, edited and
//! shared with other nodes (through Redis) with their meaning intact.

use std::collections::HashMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::Limit;

mod shaper;
#[cfg(test)]
use crate::config::adaptive::status_starts_with;
pub use crate::config::adaptive::{Reply, Rule};

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX / 4)
}

/// Milliseconds since the epoch, now.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(ms)
        .unwrap_or(0)
}

/// An adaptive action in force on one destination of one stream. Times are milliseconds since
/// the epoch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Action {
    /// `<stream>/<destination>`: what the action is known by.
    pub key: String,
    pub stream: String,
    /// `domain:<name>` or `mx:<pattern>` (with ` from <address>` when counted per source).
    pub destination: String,
    /// The rule that set it (or `"admin"`).
    pub rule: String,
    /// The reply that triggered it most recently (or the administrator's note).
    pub reason: String,
    /// No connection before this instant.
    pub suspended_until: Option<u64>,
    pub rate_factor: f64,
    pub connection_factor: f64,
    pub since: u64,
    /// Full strength until this instant.
    pub until: u64,
    /// Back to normal limits at this instant, when the action ends.
    pub recovered: u64,
    /// How many replies have set or renewed it.
    pub hits: u64,
    /// The last change (the newest copy wins between nodes).
    pub updated: u64,
    /// `"rule"` or `"admin"`.
    pub by: String,
}

/// What an action does to its destination's limits at one instant.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Effect {
    /// No connection before this instant (ms since the epoch).
    pub suspended_until: Option<u64>,
    pub rate_factor: f64,
    pub connection_factor: f64,
}

impl Effect {
    /// The limits of `shape` under this effect.
    pub fn apply(&self, shape: &mut super::Shape) {
        if self.rate_factor < 1.0 {
            shape.message_rate = shape.message_rate.map(|r| r.scaled(self.rate_factor));
            shape.connection_rate = shape.connection_rate.map(|r| r.scaled(self.rate_factor));
        }
        if self.connection_factor < 1.0 {
            let scaled = (shape.max_connections as f64 * self.connection_factor).ceil() as usize;
            shape.max_connections = scaled.clamp(1, shape.max_connections);
        }
    }
}

impl Action {
    /// Its effect at `now`, or `None` once it has ended.
    pub fn effect(&self, now: u64) -> Option<Effect> {
        if now >= self.recovered && now >= self.until && self.suspended_until.is_none_or(|s| now >= s) {
            return None;
        }
        let progress = if now < self.until || self.recovered <= self.until {
            0.0
        } else {
            (now - self.until) as f64 / (self.recovered - self.until) as f64
        };
        let rise = |f: f64| (f + (1.0 - f) * progress).min(1.0);
        Some(Effect {
            suspended_until: self.suspended_until.filter(|&s| now < s),
            rate_factor: rise(self.rate_factor),
            connection_factor: rise(self.connection_factor),
        })
    }

    /// The action renewed by a new match of the same destination: full strength again from
    /// `fresh` (the stronger of both), the latest reason.
    fn renew(&mut self, fresh: &Action) {
        self.until = self.until.max(fresh.until);
        self.recovered = self.recovered.max(fresh.recovered);
        self.suspended_until = match (self.suspended_until, fresh.suspended_until) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        };
        self.rate_factor = self.rate_factor.min(fresh.rate_factor);
        self.connection_factor = self.connection_factor.min(fresh.connection_factor);
        self.rule = fresh.rule.clone();
        self.reason = fresh.reason.clone();
        self.hits += 1;
        self.updated = fresh.updated;
    }

    /// What it does, in words, for lists and logs.
    pub fn describe(&self) -> String {
        let mut parts = Vec::new();
        if self.suspended_until.is_some() {
            parts.push("suspend".to_string());
        }
        if self.rate_factor < 1.0 {
            parts.push(format!("rate x{}", self.rate_factor));
        }
        if self.connection_factor < 1.0 {
            parts.push(format!("connections x{}", self.connection_factor));
        }
        if parts.is_empty() {
            parts.push("none".into());
        }
        parts.join(", ")
    }
}

/// A change an administrator makes to an action in force (or a new one).
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
pub struct Edit {
    /// Full strength for this long from now.
    pub duration: Option<Duration>,
    /// Suspend (true) or stop suspending (false).
    pub suspend: Option<bool>,
    pub rate_factor: Option<f64>,
    pub connection_factor: Option<f64>,
    /// Recovery after the full-strength period.
    pub recover: Option<Duration>,
    pub reason: Option<String>,
}

impl Edit {
    /// Checks the factors.
    pub fn check(&self) -> Result<(), String> {
        for (name, f) in [
            ("rate_factor", self.rate_factor),
            ("connection_factor", self.connection_factor),
        ] {
            if let Some(f) = f
                && !(f > 0.0 && f <= 1.0)
            {
                return Err(format!("{name}: {f} is not more than 0 and at most 1"));
            }
        }
        Ok(())
    }

    /// Applies the change to `action` at `now`.
    fn apply(&self, action: &mut Action, now: u64) {
        if let Some(d) = self.duration {
            let recover = action.recovered.saturating_sub(action.until);
            action.until = now + ms(d);
            action.recovered = action.until + recover;
        }
        if let Some(r) = self.recover {
            action.recovered = action.until + ms(r);
        }
        match self.suspend {
            Some(true) => action.suspended_until = Some(action.until),
            Some(false) => action.suspended_until = None,
            None => {
                if let Some(s) = &mut action.suspended_until {
                    *s = action.until;
                }
            }
        }
        if let Some(f) = self.rate_factor {
            action.rate_factor = f;
        }
        if let Some(f) = self.connection_factor {
            action.connection_factor = f;
        }
        if let Some(r) = &self.reason {
            action.reason = r.clone();
        }
        action.updated = now;
    }
}

/// How an action changed, for the log and for sharing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    Started,
    Renewed,
}

/// The actions in force, by the limit they act on. Lives across configuration reloads.
#[derive(Default)]
pub struct Actions {
    map: std::sync::Mutex<HashMap<Limit, Entry>>,
    /// Woken when an action is cancelled or edited, so that suspended workers look again.
    pub changed: tokio::sync::Notify,
}

struct Entry {
    action: Action,
    /// When this node last wrote it to (or read it from) the shared store; `None`: never.
    shared_at: Option<u64>,
}

impl Actions {
    /// Records a match of `rule` on `limit`: a new action or the one in force renewed.
    pub fn hit(&self, limit: &Limit, rule: &Rule, reason: &str, now: u64) -> (Action, Change) {
        let fresh = action(rule, limit, reason, now);
        let mut map = self.map.lock().unwrap();
        match map.get_mut(limit) {
            Some(e) if e.action.effect(now).is_some() => {
                e.action.renew(&fresh);
                (e.action.clone(), Change::Renewed)
            }
            _ => {
                map.insert(
                    limit.clone(),
                    Entry {
                        action: fresh.clone(),
                        shared_at: None,
                    },
                );
                (fresh, Change::Started)
            }
        }
    }

    /// The effect on `limit` at `now`; an action found ended is removed (and its end logged).
    pub fn effect(&self, limit: &Limit, now: u64) -> Option<Effect> {
        let mut map = self.map.lock().unwrap();
        if map.is_empty() {
            return None;
        }
        let effect = map.get(limit)?.action.effect(now);
        if effect.is_none()
            && let Some(e) = map.remove(limit)
        {
            log_end(&e.action);
        }
        effect
    }

    /// Every action in force at `now`, sorted by key (ended ones are removed).
    pub fn list(&self, now: u64) -> Vec<Action> {
        let mut map = self.map.lock().unwrap();
        map.retain(|_, e| {
            let live = e.action.effect(now).is_some();
            if !live {
                log_end(&e.action);
            }
            live
        });
        let mut all: Vec<Action> = map.values().map(|e| e.action.clone()).collect();
        all.sort_by(|a, b| a.key.cmp(&b.key));
        all
    }

    pub fn get(&self, limit: &Limit) -> Option<Action> {
        self.map.lock().unwrap().get(limit).map(|e| e.action.clone())
    }

    /// Ends the action on `limit` now; returns it.
    pub fn cancel(&self, limit: &Limit) -> Option<Action> {
        let removed = self.map.lock().unwrap().remove(limit).map(|e| e.action);
        if removed.is_some() {
            self.changed.notify_waiters();
        }
        removed
    }

    /// Changes the action on `limit`, or starts one by hand (`by` admin) when there is none.
    pub fn edit(&self, limit: &Limit, edit: &Edit, now: u64) -> Action {
        let mut map = self.map.lock().unwrap();
        let entry = map
            .entry(limit.clone())
            .and_modify(|e| {
                if e.action.effect(now).is_none() {
                    e.action = manual(limit, now);
                }
            })
            .or_insert_with(|| Entry {
                action: manual(limit, now),
                shared_at: None,
            });
        edit.apply(&mut entry.action, now);
        entry.shared_at = None;
        let action = entry.action.clone();
        drop(map);
        self.changed.notify_waiters();
        action
    }

    /// Whether the action on `limit` should be written to the shared store now: never written,
    /// or last written more than `every` ago.
    pub fn due_for_sharing(&self, limit: &Limit, now: u64, every: Duration) -> bool {
        let map = self.map.lock().unwrap();
        map.get(limit)
            .is_some_and(|e| e.shared_at.is_none_or(|at| now >= at + ms(every)))
    }

    /// Notes that the action on `limit` was written to the shared store at `now`.
    pub fn shared(&self, limit: &Limit, now: u64) {
        if let Some(e) = self.map.lock().unwrap().get_mut(limit) {
            e.shared_at = Some(now);
        }
    }

    /// Takes in the shared store's actions, read at `read_at`: newer copies replace this node's,
    /// and an action this node had shared before `read_at` that the store no longer has was
    /// cancelled (or ended) elsewhere. Returns the keys whose action was learned or dropped.
    pub fn merge_shared(&self, remote: Vec<Action>, read_at: u64) -> Vec<String> {
        let mut map = self.map.lock().unwrap();
        let mut touched = Vec::new();
        let remote: HashMap<Limit, Action> = remote
            .into_iter()
            .filter_map(|a| match Limit::parse(&a.key) {
                Ok(limit) => Some((limit, a)),
                Err(e) => {
                    tracing::warn!(error = %e, "throttle: shared action with an unreadable key skipped");
                    None
                }
            })
            .collect();
        map.retain(|key, e| {
            let gone = !remote.contains_key(key) && e.shared_at.is_some_and(|at| at < read_at);
            if gone {
                if e.action.effect(read_at).is_some() {
                    tracing::info!(key = %e.action.key, rule = %e.action.rule, "throttle: cancelled on another node");
                } else {
                    log_end(&e.action);
                }
                touched.push(e.action.key.clone());
            }
            !gone
        });
        for (key, action) in remote {
            let newer = map.get(&key).is_none_or(|e| e.action.updated < action.updated);
            if newer && action.effect(read_at).is_some() {
                tracing::info!(
                    key = %action.key,
                    rule = %action.rule,
                    action = %action.describe(),
                    reason = %action.reason,
                    "throttle: learned from another node"
                );
                touched.push(action.key.clone());
                map.insert(
                    key,
                    Entry {
                        action,
                        shared_at: Some(read_at),
                    },
                );
            } else if let Some(e) = map.get_mut(&key) {
                e.shared_at = Some(e.shared_at.unwrap_or(read_at).max(read_at));
            }
        }
        if !touched.is_empty() {
            self.changed.notify_waiters();
        }
        touched
    }
}

/// A blank action started by the administrator on `limit`.
fn manual(limit: &Limit, now: u64) -> Action {
    Action {
        key: limit.to_string(),
        stream: limit.stream.clone().unwrap_or_else(|| "default".into()),
        destination: destination(limit),
        rule: "admin".into(),
        reason: "set by the administrator".into(),
        suspended_until: None,
        rate_factor: 1.0,
        connection_factor: 1.0,
        since: now,
        until: now,
        recovered: now,
        hits: 0,
        updated: now,
        by: "admin".into(),
    }
}

/// The destination as listed: `domain:<name>` or `mx:<pattern>`, with ` from <address>` for a
/// limit per source address.
/// The action `rule` puts on `limit` at `now` (ms), for `reason`.
pub fn action(rule: &Rule, limit: &Limit, reason: &str, now: u64) -> Action {
    let until = now + ms(rule.duration);
    Action {
        key: limit.to_string(),
        stream: limit.stream.clone().unwrap_or_else(|| "default".into()),
        destination: destination(limit),
        rule: rule.name.clone(),
        reason: reason.to_owned(),
        suspended_until: rule.suspend.then_some(until),
        rate_factor: rule.rate_factor,
        connection_factor: rule.connection_factor,
        since: now,
        until,
        recovered: until + ms(rule.recover),
        hits: 1,
        updated: now,
        by: "rule".into(),
    }
}

fn destination(limit: &Limit) -> String {
    match limit.source {
        Some(ip) => format!("{} from {ip}", limit.dest),
        None => limit.dest.to_string(),
    }
}

fn log_end(action: &Action) {
    tracing::info!(key = %action.key, rule = %action.rule, hits = action.hits, "throttle: ended, normal limits again");
}

#[cfg(test)]
mod tests;
