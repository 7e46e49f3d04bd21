//! The [`Shaper`]'s side of adaptive throttling: applying the actions in force to the limits,
//! holding workers while a destination is suspended, running the rules on failed replies, the
//! administrator's edits and cancels, and sharing actions with the other nodes through Redis.

use super::{Action, Change, Edit, Reply, now_ms};
use crate::reply::Classified;
use crate::shaping::{Limit, Shape, Shaper};

/// The namespace of adaptive actions in the shared store.
const SHARED_ACTIONS: &str = "throttles";
/// How often a node reads the other nodes' adaptive actions.
const SHARED_POLL: std::time::Duration = std::time::Duration::from_secs(1);
/// A renewed action is written to the shared store at most this often.
const SHARED_RENEW: std::time::Duration = std::time::Duration::from_secs(5);

impl Shaper {
    /// `shape` (the file's limits for `key`) lowered by the adaptive action in force on it, and
    /// the instant (ms since the epoch) a suspension lasts until.
    pub fn effective(&self, key: &Limit, mut shape: Shape) -> (Shape, Option<u64>) {
        match self.state.actions.effect(key, now_ms()) {
            None => (shape, None),
            Some(effect) => {
                effect.apply(&mut shape);
                (shape, effect.suspended_until)
            }
        }
    }

    /// Waits while deliveries to `key` are suspended (waking early when the action is cancelled
    /// or edited). Returns whether there was anything to wait for.
    pub async fn wait_suspension(&self, key: &Limit) -> bool {
        let mut waited = false;
        loop {
            let changed = self.state.actions.changed.notified();
            let Some(until) = self.state.actions.effect(key, now_ms()).and_then(|e| e.suspended_until) else {
                return waited;
            };
            waited = true;
            let wait = std::time::Duration::from_millis(until.saturating_sub(now_ms()));
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = changed => {}
            }
        }
    }

    /// Runs the adaptive rules on the failed replies of a delivery to `domain` (mail servers
    /// `hosts`) under `key`: each distinct reply once, every matching rule acting. Each reply
    /// comes classified, with its code typed: a code rule matches only a server's code.
    pub async fn observe(&self, key: &Limit, domain: &str, hosts: &[&str], failures: &[&Classified]) {
        let rules = self.rules();
        if rules.adaptive.is_empty() || failures.is_empty() {
            return;
        }
        let mut seen: Vec<String> = Vec::new();
        let mut touched = Vec::new();
        for failed in failures {
            let text = failed.reply.line();
            if seen.contains(&text) {
                continue;
            }
            let status = failed.reply.dsn_status();
            let reply = Reply {
                domain,
                hosts,
                code: failed.reply.remote_code(),
                status: Some(&status),
                text: &text,
                category: failed.class.category,
            };
            for rule in rules.adaptive.iter().filter(|r| r.matches(&reply)) {
                let (action, change) = self.state.actions.hit(key, rule, &text, now_ms());
                match change {
                    Change::Started => tracing::warn!(
                        key = %action.key,
                        rule = %action.rule,
                        action = %action.describe(),
                        until = %crate::datetime::rfc3339_ms(action.until),
                        recovered = %crate::datetime::rfc3339_ms(action.recovered),
                        reason = %action.reason,
                        "throttle: started"
                    ),
                    Change::Renewed => tracing::debug!(
                        key = %action.key,
                        rule = %action.rule,
                        hits = action.hits,
                        until = %crate::datetime::rfc3339_ms(action.until),
                        "throttle: renewed"
                    ),
                }
                touched.push(action);
            }
            seen.push(text);
        }
        for action in touched {
            self.publish(key, &action, action.hits == 1).await;
        }
    }

    /// Writes the `action` on `key` to the shared store (a renewal at most every few seconds).
    async fn publish(&self, key: &Limit, action: &Action, force: bool) {
        let Some(shared) = &self.shared else { return };
        let now = now_ms();
        if !force && !self.state.actions.due_for_sharing(key, now, SHARED_RENEW) {
            return;
        }
        let ttl = std::time::Duration::from_millis(action.recovered.max(action.until).saturating_sub(now).max(1));
        let json = serde_json::to_string(action).unwrap_or_default();
        match shared.put(SHARED_ACTIONS, &action.key, &json, ttl).await {
            Ok(()) => self.state.actions.shared(key, now),
            Err(e) => tracing::warn!(key = %action.key, error = %e, "throttle: cannot share with the other nodes"),
        }
    }

    /// Ends the action on `key` here and, with Redis, on every node.
    pub async fn cancel(&self, key: &Limit) -> Option<Action> {
        let action = self.state.actions.cancel(key)?;
        tracing::warn!(key = %action.key, rule = %action.rule, "throttle: cancelled by the administrator");
        if let Some(shared) = &self.shared
            && let Err(e) = shared.delete(SHARED_ACTIONS, &action.key).await
        {
            tracing::warn!(key = %action.key, error = %e, "throttle: cannot cancel on the other nodes");
        }
        Some(action)
    }

    /// Changes the action on `key` (or starts one) here and, with Redis, on every node.
    pub async fn edit(&self, key: &Limit, edit: &Edit) -> Action {
        let action = self.state.actions.edit(key, edit, now_ms());
        tracing::warn!(
            key = %action.key,
            action = %action.describe(),
            until = %crate::datetime::rfc3339_ms(action.until),
            recovered = %crate::datetime::rfc3339_ms(action.recovered),
            reason = %action.reason,
            "throttle: set by the administrator"
        );
        self.publish(key, &action, true).await;
        action
    }

    /// With `[redis]`: reads the other nodes' adaptive actions every second, for as long as the
    /// server runs (the state outlives reloads, and so does this task).
    pub fn follow_shared(&self) -> Option<tokio::task::JoinHandle<()>> {
        let shared = self.shared.clone()?;
        let state = self.state.clone();
        Some(tokio::spawn(async move {
            let mut tick = tokio::time::interval(SHARED_POLL);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let read_at = now_ms();
                match shared.all(SHARED_ACTIONS).await {
                    Ok(all) => {
                        let actions = all
                            .into_iter()
                            .filter_map(|(id, json)| match serde_json::from_str::<Action>(&json) {
                                Ok(a) => Some(a),
                                Err(e) => {
                                    tracing::warn!(id, error = %e, "throttle: unreadable shared action skipped");
                                    None
                                }
                            })
                            .collect();
                        state.actions.merge_shared(actions, read_at);
                    }
                    Err(e) => tracing::debug!(error = %e, "throttle: cannot read the shared actions"),
                }
            }
        }))
    }
}
