//! After-queue filters: run once a message is safely spooled, before its first delivery attempt.
//! A slow scanner never holds a sender's session open; what it refuses is bounced, what it sets
//! aside goes to the quarantine.
//!
//! The list of filters still to run is part of the spooled envelope, so a crash before the scan
//! finished means the scan runs again after recovery. When the scan passes, the message (with any
//! changes the filters made) is rewritten into the spool with the list empty.

use std::sync::Arc;

use super::settle;
use super::{Queue, QueuedMessage};
use crate::deliver::bounce::Failure;
use crate::envelope::Address;
use crate::filter::{Action, SessionInfo, pipeline};
use crate::quarantine::Resume;
use crate::reply::{Command, Upstream};
use crate::spool::RcptState;

pub(super) async fn run(queue: Queue, msg: Arc<QueuedMessage>) {
    // Bounded concurrency: a burst of messages never starts more scans than this at once.
    let Ok(_scanning) = queue.scans.clone().acquire_owned().await else {
        return;
    };
    let ctx = queue.ctx();
    // A filter a reload removed holds the message: it is never delivered around its scan. It
    // waits (retried on the queue's schedule, bounced at `max_age`) for the filter to return.
    let filters = match ctx.filters.resolve(&msg.env.scan) {
        Ok(filters) => filters,
        Err(missing) => {
            ctx.metrics.scan_held.inc();
            tracing::error!(
                queue_id = %msg.env.id, filter = %missing,
                "scan: the message's after-queue filter is no longer configured; holding the message until it is"
            );
            return retry(queue, msg);
        }
    };
    let body = match msg.whole(&ctx.spool).await {
        Ok(b) => b,
        Err(e) => {
            tracing::error!(queue_id = %msg.env.id, error = %e, "scan: cannot read message; delivering unscanned is not allowed, retrying");
            return retry(queue, msg);
        }
    };
    let pending = msg.pending();
    let rcpts: Vec<Address> = pending
        .iter()
        .map(|&i| msg.env.recipients[i as usize].address.clone())
        .collect();
    let info = SessionInfo {
        listener: "after-queue".into(),
        ..Default::default()
    };
    let out = pipeline::run_data(&filters, &info, &msg.env.sender, rcpts, body, Vec::new()).await;
    ctx.metrics.filter_unchecked.add(out.unchecked.len() as u64);
    let by = out.decided_by.clone().unwrap_or_default();
    match out.action {
        Action::Accept => passed(queue, msg, out.message).await,
        Action::TempFail(_) => retry(queue, msg),
        Action::Reject(reply) => {
            ctx.metrics.filter_rejected.inc();
            let failures: Vec<Failure> = pending
                .iter()
                .map(|&i| Failure {
                    recipient: msg.env.recipients[i as usize].clone(),
                    reply: refused(&reply, &by),
                    remote: None,
                })
                .collect();
            ctx.metrics.bounced.add(failures.len() as u64);
            if settle::bounce_for(&queue, &msg, &failures).await {
                finish(&queue, &msg, &pending).await;
            } else {
                let failed = pending.iter().map(|&i| (i, RcptState::Failed)).collect();
                tokio::spawn(settle::retry_bounce(queue.clone(), msg.clone(), failures, failed));
            }
        }
        Action::Quarantine(reason) => {
            // A release runs the scan's filters after this one.
            let mut env = msg.env.clone();
            env.scan = crate::filter::names_after(&filters, &by);
            let stored = ctx
                .quarantine
                .store(env, out.message, reason.clone(), by.clone(), Resume::Scan)
                .await;
            match stored {
                Ok(_) => {
                    ctx.metrics.quarantined.inc();
                    tracing::info!(queue_id = %msg.env.id, filter = %by, reason, "message quarantined after queue");
                    finish(&queue, &msg, &pending).await;
                }
                Err(e) => {
                    tracing::error!(queue_id = %msg.env.id, error = %e, "cannot write to the quarantine");
                    retry(queue, msg);
                }
            }
        }
        Action::Discard => {
            ctx.metrics.filter_discarded.inc();
            tracing::info!(queue_id = %msg.env.id, filter = %by, "message discarded after queue");
            finish(&queue, &msg, &pending).await;
        }
    }
}

/// A filter's refusal after the queue, as the gate's own reply (its code, status and text, the
/// filter named): the bounce says the gate refused it, not a remote server.
fn refused(reply: &smtpgate_proto::Reply, by: &str) -> Upstream {
    let text = format!("{} (filter {by})", reply.text);
    Upstream::local_reply(reply.code, &reply.status, text, Command::Outside)
}

/// The scan passed: the message is rewritten without its pending scan, then delivered.
async fn passed(queue: Queue, msg: Arc<QueuedMessage>, message: Vec<u8>) {
    let ctx = queue.ctx();
    let mut env = msg.env.clone();
    env.scan.clear();
    let states = msg.states();
    let _moving = msg.spool_lock.lock().await;
    match ctx
        .spool
        .relocate(&env, &states, &message, &msg.body_ref(), msg.is_held())
        .await
    {
        Ok(at) => {
            let scanned = Arc::new(QueuedMessage::new(env, at, Some(states), None));
            scanned.inherit(&msg);
            queue.messages.lock().unwrap().insert(scanned.env.id, scanned.clone());
            queue.dispatch(scanned);
        }
        Err(e) => {
            tracing::error!(queue_id = %msg.env.id, error = %e, "scan: cannot rewrite message");
            drop(_moving);
            retry(queue, msg);
        }
    }
}

/// Every pending recipient is final without delivery (refused, quarantined, discarded).
async fn finish(queue: &Queue, msg: &Arc<QueuedMessage>, pending: &[u32]) {
    let updates: Vec<(u32, RcptState)> = pending.iter().map(|&i| (i, RcptState::Failed)).collect();
    settle::record(queue, msg, &updates).await;
}

/// The scan could not run now: try again after the first retry delay, until the message's
/// `max_age`; then it is bounced as expired, never delivered unscanned.
fn retry(queue: Queue, msg: Arc<QueuedMessage>) {
    let ctx = queue.ctx();
    let age = crate::datetime::now_unix().saturating_sub(msg.env.received_at);
    if age >= ctx.config.queue.max_age.as_secs() {
        tokio::spawn(async move { expire(queue, msg).await });
        return;
    }
    let delay = ctx.config.queue.retry[0];
    tokio::spawn(async move {
        tokio::time::sleep(delay).await;
        run(queue, msg).await;
    });
}

/// A message whose scan never ran within `max_age`: bounced (4.4.7) and finished.
async fn expire(queue: Queue, msg: Arc<QueuedMessage>) {
    let pending = msg.pending();
    tracing::warn!(queue_id = %msg.env.id, "message expired in queue before its after-queue scan could run: bounced");
    let failures: Vec<Failure> = pending
        .iter()
        .map(|&i| Failure {
            recipient: msg.env.recipients[i as usize].clone(),
            reply: Upstream::local(
                "4.4.7",
                "message expired in queue before its after-queue scan could run",
                Command::Outside,
            ),
            remote: None,
        })
        .collect();
    queue.ctx().metrics.bounced.add(failures.len() as u64);
    if settle::bounce_for(&queue, &msg, &failures).await {
        finish(&queue, &msg, &pending).await;
    } else {
        let failed = pending.iter().map(|&i| (i, RcptState::Failed)).collect();
        tokio::spawn(settle::retry_bounce(queue.clone(), msg.clone(), failures, failed));
    }
}
