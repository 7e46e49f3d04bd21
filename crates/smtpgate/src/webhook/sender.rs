//! One webhook's sender: a task that reads batches from the outbox's cursor, drops events past
//! `max_age`, POSTs the rest as one JSON array and moves the cursor only after a 2xx. Any other
//! answer, or none, is retried after a back-off ([`super::backoff`]); the batch is read again
//! from the cursor then, so events that aged out while the receiver was down are dropped then.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use serde_json::Value;
use tokio::sync::watch;

use super::backoff::Backoff;
use super::outbox::{Batch, Entry, Outbox};
use super::post::Target;
use super::{DropReason, Stats};

/// What a sender needs.
pub(super) struct Sender {
    pub outbox: Arc<Outbox>,
    pub target: Target,
    pub batch_size: usize,
    pub max_age: Duration,
    pub stats: Arc<Stats>,
}

/// The events still young enough to send at `now` (unix seconds), and how many were not.
pub fn split_expired(entries: Vec<Entry>, now: u64, max_age: Duration) -> (Vec<Value>, u64) {
    let mut expired = 0;
    let mut fresh = Vec::with_capacity(entries.len());
    for entry in entries {
        match now.saturating_sub(entry.published) > max_age.as_secs() {
            true => expired += 1,
            false => fresh.push(entry.event),
        }
    }
    (fresh, expired)
}

/// Unix seconds now.
pub fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl Sender {
    /// Sends until `stop` turns true (or its sender is gone).
    pub async fn run(self, mut stop: watch::Receiver<bool>) {
        let mut backoff = Backoff::default();
        loop {
            if *stop.borrow() {
                return;
            }
            let batch = match self.read().await {
                Ok(batch) => batch,
                Err(e) => {
                    tracing::error!(webhook = %self.target.name, error = %e, "cannot read the webhook outbox");
                    if pause(backoff.wait(), &mut stop).await {
                        return;
                    }
                    continue;
                }
            };
            if batch.end == self.outbox.cursor() {
                tokio::select! {
                    _ = self.outbox.written() => continue,
                    _ = stopped(&mut stop) => return,
                }
            }
            match self.deliver(batch, &mut stop).await {
                Step::Done => backoff.reset(),
                Step::Retry => {
                    if pause(backoff.wait(), &mut stop).await {
                        return;
                    }
                }
                Step::Stop => return,
            }
        }
    }

    /// Sends what is fresh in `batch`, then moves the cursor past all of it.
    async fn deliver(&self, batch: Batch, stop: &mut watch::Receiver<bool>) -> Step {
        let lines = batch.lines();
        let (events, expired) = split_expired(batch.entries, now(), self.max_age);
        let sent = events.len() as u64;
        if !events.is_empty() {
            let body = Bytes::from(serde_json::to_vec(&Value::Array(events)).unwrap_or_default());
            let answer = tokio::select! {
                answer = self.target.post(body, now()) => answer,
                _ = stopped(stop) => return Step::Stop,
            };
            if !self.accepted(answer) {
                return Step::Retry;
            }
        }
        let outbox = self.outbox.clone();
        let end = batch.end;
        match tokio::task::spawn_blocking(move || outbox.commit(end, lines)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                tracing::error!(webhook = %self.target.name, error = %e, "cannot move the webhook outbox's cursor (the batch will be sent again)");
                return Step::Retry;
            }
            Err(_) => return Step::Retry,
        }
        self.stats.sent.add(sent);
        self.stats.dropped(DropReason::MaxAge, expired);
        self.stats.dropped(DropReason::Unreadable, batch.unreadable);
        if expired > 0 {
            tracing::warn!(webhook = %self.target.name, expired, "dropped webhook events older than max_age");
        }
        Step::Done
    }

    /// Whether the receiver took the batch; a failure is counted and logged.
    fn accepted(&self, answer: Result<super::post::Status, String>) -> bool {
        let name = &self.target.name;
        match answer {
            Ok(status) if status.is_success() => return true,
            Ok(status) if status.is_refusal() => tracing::warn!(
                webhook = %name, status = status.0,
                "the webhook receiver refuses the batch (its configuration or the secret?); retrying"
            ),
            Ok(status) => tracing::info!(webhook = %name, status = status.0, "webhook receiver failed; retrying"),
            Err(e) => tracing::info!(webhook = %name, error = %e, "webhook receiver unreachable; retrying"),
        }
        self.stats.failures.inc();
        false
    }

    async fn read(&self) -> std::io::Result<Batch> {
        let outbox = self.outbox.clone();
        let max = self.batch_size;
        tokio::task::spawn_blocking(move || outbox.read_batch(max))
            .await
            .map_err(std::io::Error::other)?
    }
}

/// What the loop does after a batch.
enum Step {
    Done,
    Retry,
    Stop,
}

/// Resolves once `stop` is true or its sender is gone.
async fn stopped(stop: &mut watch::Receiver<bool>) {
    while !*stop.borrow_and_update() {
        if stop.changed().await.is_err() {
            return;
        }
    }
}

/// Waits `wait`; `true` when told to stop meanwhile.
async fn pause(wait: Duration, stop: &mut watch::Receiver<bool>) -> bool {
    tokio::select! {
        _ = tokio::time::sleep(wait) => false,
        _ = stopped(stop) => true,
    }
}
