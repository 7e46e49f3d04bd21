//! The queue's side of suspensions: a delivery a suspension covers is parked (no connection, no
//! attempt counted) and pushed again when the suspension ends, by a resume or by its lapse.

use super::{Scope, Suspension};
use crate::events::{Event, Kind, now_ms};
use crate::queue::{Delivery, Queue, QueuedMessage};
use crate::route::NextHop;

impl Queue {
    /// The part of `d` that may go out now; the recipients a suspension in force covers are
    /// parked (not attempted, nothing counted) until it ends. `None`: nothing may go out.
    pub(in crate::queue) fn unsuspended(&self, hop: &NextHop, d: Delivery) -> Option<Delivery> {
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
    pub(in crate::queue) fn is_suspended(&self, msg: &QueuedMessage) -> bool {
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
