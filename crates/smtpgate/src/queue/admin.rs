//! Queue tools for an operator: list and look at queued messages, and retry, bounce, delete, hold
//! or release them, one by id or all those a filter selects.
//!
//! Every action that finishes a message (bounce, delete) or holds it writes its spool records
//! before it returns, so what the operator was told survives a crash. A hold is a spool record of
//! its own (`spool::record`, kind hold); a held message is never delivered until released.

use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;

use super::message::Last;
use super::settle;
use super::{Queue, QueuedMessage};
use crate::datetime::now_unix;
use crate::deliver::bounce::Failure;
use crate::envelope::QueueId;
use crate::reply::{Command, Upstream};
use crate::spool::{RcptState, SpoolError};

/// Where a message stands, as an operator filters and reads it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    /// Not tried yet (or not since the last start).
    Queued,
    /// Tried and waiting for a retry.
    Deferred,
    /// Held by an operator.
    Held,
    /// Not held, but a suspension in force covers a pending recipient (`suspend.rs`).
    Suspended,
}

impl std::str::FromStr for State {
    type Err = String;

    fn from_str(text: &str) -> Result<State, String> {
        match text {
            "queued" => Ok(State::Queued),
            "deferred" => Ok(State::Deferred),
            "held" => Ok(State::Held),
            "suspended" => Ok(State::Suspended),
            _ => Err(format!(
                "unknown state {text:?} (use queued, deferred, held or suspended)"
            )),
        }
    }
}

/// Which messages a list or a bulk action takes; every condition given must hold.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    /// A pending recipient's domain (case-insensitive).
    pub domain: Option<String>,
    /// The envelope sender (case-insensitive).
    pub sender: Option<String>,
    /// A pending recipient (case-insensitive).
    pub recipient: Option<String>,
    /// Queued at least this long.
    pub older_than: Option<Duration>,
    pub state: Option<State>,
}

impl Filter {
    /// True when no condition is set: the filter takes every message.
    pub fn is_empty(&self) -> bool {
        self.domain.is_none()
            && self.sender.is_none()
            && self.recipient.is_none()
            && self.older_than.is_none()
            && self.state.is_none()
    }

    fn matches(&self, queue: &Queue, msg: &QueuedMessage, now: u64) -> bool {
        let env = &msg.env;
        let pending: Vec<&crate::envelope::Address> = msg
            .pending()
            .into_iter()
            .map(|i| &env.recipients[i as usize].address)
            .collect();
        let same = |a: &str, b: &str| a.eq_ignore_ascii_case(b);
        self.domain
            .as_deref()
            .is_none_or(|d| pending.iter().any(|a| same(a.domain_part(), d)))
            && self.sender.as_deref().is_none_or(|s| same(env.sender.as_str(), s))
            && self
                .recipient
                .as_deref()
                .is_none_or(|r| pending.iter().any(|a| same(a.as_str(), r)))
            && self
                .older_than
                .is_none_or(|d| now.saturating_sub(env.received_at) >= d.as_secs())
            && self.state.is_none_or(|s| state(queue, msg) == s)
    }
}

/// One message or every message a filter takes.
#[derive(Debug, Clone)]
pub enum Selector {
    Id(QueueId),
    Filter(Filter),
}

/// A queue id as listed (16 hex digits; case does not matter).
pub fn parse_id(text: &str) -> Option<QueueId> {
    if text.is_empty() || text.len() > 16 {
        return None;
    }
    u64::from_str_radix(text, 16).ok().map(QueueId)
}

/// The last reply a message got, as an operator reads it.
#[derive(Debug, Clone, Serialize)]
pub struct LastReply {
    /// `delivered`, `deferred` or `failed`.
    pub result: &'static str,
    pub code: Option<u16>,
    pub status: Option<String>,
    pub text: String,
    /// The server that gave it; none for the gate's own finding (no connection, DNS, ...).
    pub server: Option<String>,
    /// The bounce classification's category of a failure.
    pub category: Option<String>,
}

impl LastReply {
    fn new(last: Last) -> LastReply {
        LastReply {
            result: last.result,
            code: last.reply.code,
            status: last.reply.status.as_ref().map(|s| s.to_string()),
            text: last.reply.text,
            server: last.server,
            category: last.category.map(|c| c.to_string()),
        }
    }

    /// One line: code, status and text.
    pub fn line(&self) -> String {
        let parts = [
            self.code.map(|c| c.to_string()),
            self.status.clone(),
            Some(self.text.clone()),
        ];
        parts.into_iter().flatten().collect::<Vec<_>>().join(" ")
    }
}

/// A recipient and its state.
#[derive(Debug, Clone, Serialize)]
pub struct RecipientView {
    pub address: String,
    /// `pending`, `delivered` or `failed`.
    pub state: &'static str,
}

/// What `queue list` and `queue show` tell of a message.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    pub id: String,
    pub state: State,
    pub sender: String,
    pub received_at: u64,
    pub age_secs: u64,
    pub size: u64,
    pub recipients: Vec<RecipientView>,
    pub pending: usize,
    pub attempts: u32,
    pub last_attempt: Option<u64>,
    pub next_attempt: Option<u64>,
    pub last_reply: Option<LastReply>,
    pub stream: Option<String>,
    pub pool: Option<String>,
}

fn state(queue: &Queue, msg: &QueuedMessage) -> State {
    if msg.is_held() {
        State::Held
    } else if queue.is_suspended(msg) {
        State::Suspended
    } else if msg.progress().last_attempt.is_some() {
        State::Deferred
    } else {
        State::Queued
    }
}

fn summary(queue: &Queue, msg: &QueuedMessage, now: u64) -> Summary {
    let progress = msg.progress();
    let states = msg.states();
    let recipients = msg
        .env
        .recipients
        .iter()
        .zip(&states)
        .map(|(r, s)| RecipientView {
            address: r.address.as_str().to_string(),
            state: match s {
                RcptState::Pending => "pending",
                RcptState::Delivered => "delivered",
                RcptState::Failed => "failed",
            },
        })
        .collect();
    Summary {
        id: msg.env.id.to_string(),
        state: state(queue, msg),
        sender: msg.env.sender.as_str().to_string(),
        received_at: msg.env.received_at,
        age_secs: now.saturating_sub(msg.env.received_at),
        size: msg.body_ref().total_len(),
        recipients,
        pending: states.iter().filter(|s| !s.is_final()).count(),
        attempts: progress.attempts,
        last_attempt: progress.last_attempt,
        next_attempt: progress.next_attempt,
        last_reply: progress.last.map(LastReply::new),
        stream: msg.env.stream.clone(),
        pool: msg.env.pool.clone(),
    }
}

/// Why an action could not be done.
#[derive(Debug, thiserror::Error)]
pub enum ActionError {
    #[error("no such message in the queue")]
    NotFound,
    #[error("the spool could not record the change")]
    Spool(#[from] SpoolError),
    #[error("the bounce could not be queued")]
    Bounce,
}

impl Queue {
    /// Messages still queued (not finished), oldest first (ties by id), so paging is stable.
    fn by_age(&self) -> Vec<Arc<QueuedMessage>> {
        let mut all: Vec<Arc<QueuedMessage>> = self.messages.lock().unwrap().values().cloned().collect();
        all.sort_by_key(|m| (m.env.received_at, m.env.id));
        all.retain(|m| !m.pending().is_empty());
        all
    }

    /// The messages `filter` takes, oldest first: how many in all, and `limit` of them from
    /// `offset` on.
    pub fn list(&self, filter: &Filter, limit: usize, offset: usize) -> (usize, Vec<Summary>) {
        let now = now_unix();
        let taken: Vec<Arc<QueuedMessage>> = self
            .by_age()
            .into_iter()
            .filter(|m| filter.matches(self, m, now))
            .collect();
        let page = taken
            .iter()
            .skip(offset)
            .take(limit)
            .map(|m| summary(self, m, now))
            .collect();
        (taken.len(), page)
    }

    fn find(&self, id: QueueId) -> Option<Arc<QueuedMessage>> {
        self.messages
            .lock()
            .unwrap()
            .get(&id)
            .cloned()
            .filter(|m| !m.pending().is_empty())
    }

    pub fn show(&self, id: QueueId) -> Option<Summary> {
        self.find(id).map(|m| summary(self, &m, now_unix()))
    }

    /// The message as stored: its header section (as spooled, with any changes an after-queue
    /// filter made) and its body.
    pub async fn cat(&self, id: QueueId) -> Result<Vec<u8>, ActionError> {
        let msg = self.find(id).ok_or(ActionError::NotFound)?;
        msg.whole(&self.ctx().spool)
            .await
            .map_err(|e| ActionError::Spool(SpoolError::Io(e)))
    }

    /// The messages a selector takes; an unknown id is an error.
    fn select(&self, selector: &Selector) -> Result<Vec<Arc<QueuedMessage>>, ActionError> {
        match selector {
            Selector::Id(id) => self.find(*id).map(|m| vec![m]).ok_or(ActionError::NotFound),
            Selector::Filter(f) => {
                let now = now_unix();
                Ok(self.by_age().into_iter().filter(|m| f.matches(self, m, now)).collect())
            }
        }
    }

    /// Cuts the wait for the next retry short: the selected messages are tried now. A held
    /// message is not (it waits for its release).
    pub fn retry(&self, selector: &Selector) -> Result<usize, ActionError> {
        let mut n = 0;
        for msg in self.select(selector)?.into_iter().filter(|m| !m.is_held()) {
            msg.due_now(now_unix());
            msg.wake.notify_waiters();
            n += 1;
        }
        Ok(n)
    }

    /// Holds the selected messages: durably (a spool record), then no delivery of theirs goes
    /// out until they are released. Returns how many were not held before.
    pub async fn hold(&self, selector: &Selector) -> Result<usize, ActionError> {
        let mut n = 0;
        for msg in self.select(selector)? {
            let finished = msg.spool_lock.lock().await;
            if *finished || msg.is_held() {
                continue;
            }
            self.ctx().spool.hold(msg.env.id, true).await?;
            msg.set_held(true);
            self.ctx().metrics.queue_held.inc();
            n += 1;
        }
        Ok(n)
    }

    /// Releases the selected held messages: durably, then their pending recipients are
    /// dispatched at once.
    pub async fn release(&self, selector: &Selector) -> Result<usize, ActionError> {
        let mut n = 0;
        for msg in self.select(selector)? {
            {
                let finished = msg.spool_lock.lock().await;
                if *finished || !msg.is_held() {
                    continue;
                }
                self.ctx().spool.hold(msg.env.id, false).await?;
                msg.set_held(false);
            }
            self.ctx().metrics.queue_held.dec();
            msg.due_now(now_unix());
            // A message still waiting for its after-queue scan is dispatched when the scan passes.
            if msg.env.scan.is_empty() {
                self.dispatch(msg);
            }
            n += 1;
        }
        Ok(n)
    }

    /// Returns the selected messages to their senders: a DSN naming `reason` for every pending
    /// recipient, then the recipients are recorded failed (all spooled before this returns).
    pub async fn bounce(&self, selector: &Selector, reason: Option<&str>) -> Result<usize, ActionError> {
        let text = match reason {
            Some(r) if !r.trim().is_empty() => format!("returned by the administrator: {}", r.trim()),
            _ => "returned by the administrator".to_string(),
        };
        let mut n = 0;
        for msg in self.select(selector)? {
            let pending = msg.pending();
            let failures: Vec<Failure> = pending
                .iter()
                .map(|&i| Failure {
                    recipient: msg.env.recipients[i as usize].clone(),
                    reply: Upstream::local("5.0.0", text.clone(), Command::Outside),
                    remote: None,
                })
                .collect();
            msg.new_epoch();
            if !settle::bounce_for(self, &msg, &failures).await {
                // Nothing changed: the message goes on as before.
                self.redispatch(&msg);
                return Err(ActionError::Bounce);
            }
            self.ctx().metrics.bounced.add(failures.len() as u64);
            self.fail_all(&msg, &pending).await;
            n += 1;
        }
        Ok(n)
    }

    /// Deletes the selected messages without a DSN: their pending recipients are recorded failed.
    pub async fn delete(&self, selector: &Selector) -> Result<usize, ActionError> {
        let mut n = 0;
        for msg in self.select(selector)? {
            msg.new_epoch();
            let pending = msg.pending();
            self.fail_all(&msg, &pending).await;
            n += 1;
        }
        Ok(n)
    }

    /// Records `pending` failed: a status record, or the done record that finishes the message.
    async fn fail_all(&self, msg: &Arc<QueuedMessage>, pending: &[u32]) {
        let updates: Vec<(u32, RcptState)> = pending.iter().map(|&i| (i, RcptState::Failed)).collect();
        settle::record(self, msg, &updates).await;
    }

    /// Dispatches a message again after an action that made its deliveries stale did not happen.
    fn redispatch(&self, msg: &Arc<QueuedMessage>) {
        if msg.env.scan.is_empty() {
            self.dispatch(msg.clone());
        }
    }
}

#[cfg(test)]
mod tests;
