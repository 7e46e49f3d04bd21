//! Recording what an attempt achieved: final states to the spool, bounces, retries.

use std::sync::Arc;

use tokio::time::Instant;

use super::message::Last;
use super::{Delivery, Queue, QueuedMessage};
use crate::context::Context;
use crate::datetime::now_unix;
use crate::deliver::Outcome;
use crate::deliver::bounce::{self, Failure};
use crate::envelope::{Address, Envelope, Recipient, Sender};
use crate::events::{Event, Kind};
use crate::reply::{Classified, Command, Upstream};
use crate::route::NextHop;
use crate::spool::RcptState;
use crate::stats;

/// What came of one recipient in one attempt, a failure classified once, where the worker got
/// the outcome: the same classification drives adaptive shaping, feedback, bounces and logs.
#[derive(Debug, Clone)]
pub(super) enum Attempted {
    Delivered(Upstream),
    Deferred(Classified),
    Failed(Classified),
}

impl Attempted {
    /// `outcome`, its failure (if any) classified by the bounce rules in force.
    pub(super) fn classify(ctx: &Context, outcome: Outcome) -> Attempted {
        let classified = |reply: Upstream| Classified {
            class: ctx.feedback.classify(&reply),
            reply,
        };
        match outcome {
            Outcome::Delivered(reply) => Attempted::Delivered(reply),
            Outcome::Transient(reply) => Attempted::Deferred(classified(reply)),
            Outcome::Permanent(reply) => Attempted::Failed(classified(reply)),
        }
    }

    /// The classified failure; `None` for a delivery.
    pub(super) fn failure(&self) -> Option<&Classified> {
        match self {
            Attempted::Deferred(c) | Attempted::Failed(c) => Some(c),
            Attempted::Delivered(_) => None,
        }
    }

    pub(super) fn is_delivered(&self) -> bool {
        matches!(self, Attempted::Delivered(_))
    }
}

/// The server that answered an attempt (none when no connection was made).
#[derive(Debug, Clone, Default)]
pub(super) struct Answered {
    /// `host[addr:port]`.
    pub remote: Option<String>,
    /// Whether the session was under TLS.
    pub tls: Option<bool>,
}

impl Answered {
    /// The server a client is connected to.
    pub(super) fn by(client: &crate::upstream::client::Client) -> Answered {
        Answered {
            remote: Some(client.remote.clone()),
            tls: Some(client.tls.is_some()),
        }
    }
}

pub(super) fn spawn(
    queue: &Queue,
    hop: &NextHop,
    d: Delivery,
    results: Vec<(u32, Attempted)>,
    answered: Answered,
    started: Instant,
) {
    let (queue, hop) = (queue.clone(), hop.clone());
    tokio::spawn(async move { settle(queue, hop, d, results, answered, started).await });
}

async fn settle(
    queue: Queue,
    hop: NextHop,
    d: Delivery,
    results: Vec<(u32, Attempted)>,
    answered: Answered,
    started: Instant,
) {
    let remote = &answered.remote;
    let ctx = queue.ctx();
    let msg = d.msg.clone();
    let expired = now_unix() >= msg.env.received_at + ctx.config.queue.max_age.as_secs();
    let latency_ms = started.elapsed().as_millis() as u64;
    let mut updates = Vec::new();
    let mut failures = Vec::new();
    let mut retry = Vec::new();
    let shown = shown(&results, remote);
    for (idx, attempted) in results {
        let rcpt = &msg.env.recipients[idx as usize];
        log_attempt(&ctx, &msg, rcpt, &hop, &attempted, &answered, latency_ms);
        match attempted {
            Attempted::Delivered(_) => updates.push((idx, RcptState::Delivered)),
            Attempted::Failed(failed) => {
                failures.push(failure(rcpt, failed.reply, remote));
                updates.push((idx, RcptState::Failed));
            }
            Attempted::Deferred(deferred) if expired => {
                let last = deferred.reply.line();
                let text = format!("message expired in queue; last error: {last}");
                let expired = Upstream::local("4.4.7", text, Command::Outside);
                let reply = (&expired).into();
                ctx.stats.record(&stats::Record {
                    category: Some("expired"),
                    ..counted(stats::Kind::Bounced, &msg.env, rcpt)
                });
                ctx.events
                    .emit_with(|| about(Event::new(Kind::Expired { reply }), &msg.env, rcpt));
                failures.push(failure(rcpt, expired, remote));
                updates.push((idx, RcptState::Failed));
            }
            Attempted::Deferred(_) => retry.push(idx),
        }
    }
    let delivered = updates.iter().filter(|u| u.1 == RcptState::Delivered).count() as u64;
    if delivered > 0 {
        ctx.metrics.delivered.inc();
        ctx.metrics.recipients_delivered.add(delivered);
    }
    ctx.metrics.bounced.add(failures.len() as u64);
    if !failures.is_empty() && !bounce_for(&queue, &msg, &failures).await {
        // The bounce could not be spooled: the failed recipients stay pending (a crash now means
        // they are tried again, and bounced then) until a later try spools it.
        let failed: Vec<(u32, RcptState)> = updates.iter().filter(|u| u.1 == RcptState::Failed).copied().collect();
        updates.retain(|u| u.1 != RcptState::Failed);
        tokio::spawn(retry_bounce(queue.clone(), msg.clone(), failures, failed));
    }
    let retries = &ctx.config.queue.retry;
    let delay = retries[(d.attempts as usize).min(retries.len() - 1)];
    let now = now_unix();
    let next = (!retry.is_empty()).then(|| now + delay.as_secs());
    msg.attempted(shown, now, next);
    record(&queue, &msg, &updates).await;
    if !retry.is_empty() {
        msg.drop_cache();
        ctx.metrics.deferred.inc();
        queue.retry_later(
            hop,
            Delivery {
                msg,
                rcpts: retry,
                attempts: d.attempts + 1,
                epoch: d.epoch,
            },
            delay,
        );
    }
}

/// The outcome an operator is shown for an attempt: its first failure, else its delivery.
fn shown(results: &[(u32, Attempted)], remote: &Option<String>) -> Option<Last> {
    let first = results.iter().find(|(_, a)| !a.is_delivered()).or(results.first())?;
    let (result, reply, category) = match &first.1 {
        Attempted::Delivered(r) => ("delivered", r, None),
        Attempted::Deferred(c) => ("deferred", &c.reply, Some(c.class.category)),
        Attempted::Failed(c) => ("failed", &c.reply, Some(c.class.category)),
    };
    Some(Last {
        result,
        reply: reply.clone(),
        category,
        server: remote.clone(),
    })
}

fn failure(rcpt: &Recipient, reply: Upstream, remote: &Option<String>) -> Failure {
    Failure {
        recipient: rcpt.clone(),
        reply,
        remote: remote.clone(),
    }
}

/// Logs an attempt; a failure, as the worker classified it, is counted first (and a hard bounce
/// suppresses the address).
fn log_attempt(
    ctx: &Context,
    msg: &QueuedMessage,
    rcpt: &Recipient,
    hop: &NextHop,
    a: &Attempted,
    answered: &Answered,
    ms: u64,
) {
    let remote = answered.remote.as_deref();
    let (result, kind, reply, class) = match a {
        Attempted::Delivered(r) => ("delivered", stats::Kind::Delivered, r, None),
        Attempted::Deferred(c) => {
            ctx.feedback.failure(&rcpt.address, false, c);
            ("deferred", stats::Kind::Deferred, &c.reply, Some(&c.class))
        }
        Attempted::Failed(c) => {
            ctx.feedback.failure(&rcpt.address, true, c);
            ("failed", stats::Kind::Bounced, &c.reply, Some(&c.class))
        }
    };
    let reply = reply.line();
    let (category, rule) = class.map_or(("-".to_string(), "-"), |c| (c.category.to_string(), c.rule.as_str()));
    ctx.stats.record(&stats::Record {
        server: remote,
        category: class.map(|_| category.as_str()),
        latency_ms: Some(ms),
        ..counted(kind, &msg.env, rcpt)
    });
    tracing::info!(
        queue_id = %msg.env.id, recipient = %rcpt.address, next_hop = %hop, server = remote.unwrap_or("-"),
        result, reply = reply.as_str(), category, rule, latency_ms = ms, "delivery attempt"
    );
    ctx.events.emit_with(|| attempt_event(&msg.env, rcpt, a, answered, ms));
}

/// What one recipient of a queued message counts under in the analytics.
fn counted<'a>(kind: stats::Kind, env: &'a Envelope, rcpt: &'a Recipient) -> stats::Record<'a> {
    stats::Record {
        sender: Some(env.sender.as_str()),
        route: env.route.as_deref(),
        pool: env.pool.as_deref(),
        stream: env.stream.as_deref(),
        ..stats::Record::new(kind, stats::Recipients::One(rcpt.address.as_str()))
    }
}

/// The event of one recipient's attempt: delivered, deferred or bounced, with the typed reply.
fn attempt_event(env: &Envelope, rcpt: &Recipient, a: &Attempted, answered: &Answered, ms: u64) -> Event {
    let server = answered.remote.clone();
    let kind = match a {
        Attempted::Delivered(r) => Kind::Delivered {
            server,
            tls: answered.tls,
            reply: r.into(),
            latency_ms: ms,
        },
        Attempted::Deferred(c) => Kind::Deferred {
            server,
            reply: (&c.reply).into(),
            category: c.class.category.to_string(),
            latency_ms: ms,
        },
        Attempted::Failed(c) => Kind::Bounced {
            server,
            category: c.class.category.to_string(),
            reply: (&c.reply).into(),
            latency_ms: ms,
        },
    };
    about(Event::new(kind), env, rcpt)
}

/// An event about one recipient of a queued message.
fn about(event: Event, env: &Envelope, rcpt: &Recipient) -> Event {
    event.queue(env.id).sender(&env.sender).recipients([rcpt]).path(
        env.route.as_deref(),
        env.pool.as_deref(),
        env.stream.as_deref(),
    )
}

/// Writes final states; when the message is finished, removes it from the spool.
pub(super) async fn record(queue: &Queue, msg: &Arc<QueuedMessage>, updates: &[(u32, RcptState)]) {
    let ctx = &queue.ctx();
    if updates.is_empty() {
        return;
    }
    if msg.settle(updates) {
        // The message is finished: one `done` record stands for every recipient's state.
        finish(ctx, msg).await;
        queue.forget(msg.env.id);
    } else {
        // Serialised with compaction, which copies the states into a new record.
        let _moving = msg.spool_lock.lock().await;
        if let Err(e) = ctx.spool.update(msg.env.id, updates).await {
            tracing::error!(queue_id = %msg.env.id, error = %e, "cannot record delivery state");
        }
    }
}

/// Marks a message whose recipients are all final as done in the spool.
pub(super) async fn finish(ctx: &Context, msg: &QueuedMessage) {
    let mut finished = msg.spool_lock.lock().await;
    if let Err(e) = ctx.spool.done(msg.env.id, &msg.body_ref()).await {
        tracing::error!(queue_id = %msg.env.id, error = %e, "cannot mark message done");
    }
    *finished = true;
}

/// Spools a DSN for `failures` to the sender; never for the null sender.
/// Tries again to spool a bounce that could not be spooled, with growing pauses (the queue's
/// retry schedule), until it is; then records the failed recipients as final.
pub(super) async fn retry_bounce(
    queue: Queue,
    msg: Arc<QueuedMessage>,
    failures: Vec<Failure>,
    failed: Vec<(u32, RcptState)>,
) {
    let mut attempt = 0usize;
    loop {
        let delay = {
            let retries = &queue.ctx().config.queue.retry;
            retries[attempt.min(retries.len() - 1)]
        };
        tokio::time::sleep(delay).await;
        attempt += 1;
        if bounce_for(&queue, &msg, &failures).await {
            record(&queue, &msg, &failed).await;
            return;
        }
        tracing::warn!(queue_id = %msg.env.id, attempt, "bounce still not spooled; trying again later");
    }
}

/// Spools a bounce for `failures` to the message's sender (none for the null sender or for
/// recipients that asked for none). `false` when it could not be spooled: the caller keeps the
/// failed recipients pending and tries again.
pub(super) async fn bounce_for(queue: &Queue, msg: &QueuedMessage, failures: &[Failure]) -> bool {
    let ctx = &queue.ctx();
    let env = &msg.env;
    let Some(sender) = env.sender.address() else {
        tracing::info!(queue_id = %env.id, "not bouncing a message from the null sender");
        return true;
    };
    let wanted: Vec<Failure> = failures
        .iter()
        .filter(|f| f.recipient.wants_failure_report())
        .cloned()
        .collect();
    if wanted.is_empty() {
        return true;
    }
    let body = match msg.inline(&ctx.spool).await {
        Ok(b) => b,
        Err(e) => {
            tracing::error!(queue_id = %env.id, error = %e, "cannot read message for its bounce");
            return false;
        }
    };
    let id = ctx.ids.next();
    // A message too large for memory returns its header section only (as Postfix does past
    // its bounce_size_limit): its record holds just that.
    let text = if msg.body_ref().ext.is_some() {
        let mut headers_only = env.clone();
        headers_only.ret = Some(crate::envelope::Ret::Hdrs);
        bounce::build(&ctx.config.hostname, &headers_only, &body, &wanted, id.0)
    } else {
        bounce::build(&ctx.config.hostname, env, &body, &wanted, id.0)
    };
    let dsn = Envelope {
        id,
        sender: Sender::Null,
        recipients: vec![Recipient::new(sender.clone())],
        received_at: now_unix(),
        eight_bit: !text.is_ascii(),
        smtputf8: env.smtputf8,
        ret: None,
        envid: None,
        pool: bounce_pool(ctx, sender),
        scan: Vec::new(),
        stream: None,
        route: None,
    };
    // The bounce's own story starts here, so its sender finds it by address.
    let received = ctx.events.enabled().then(|| {
        Event::new(Kind::Received {
            size: text.len() as u64,
        })
        .queue(id)
        .sender(&dsn.sender)
        .recipients(&dsn.recipients)
        .path(None, dsn.pool.as_deref(), None)
        .origin("bounce", None)
    });
    let pool = dsn.pool.clone();
    match queue.accept(dsn, text).await {
        Ok(()) => {
            // Counted as received like any copy spooled, under the listener its history names:
            // its delivery or bounce is counted too, so the totals add up.
            ctx.stats.record(&stats::Record {
                sender: Some(""), // the null sender
                listener: Some("bounce"),
                pool: pool.as_deref(),
                ..stats::Record::new(stats::Kind::Received, stats::Recipients::One(sender.as_str()))
            });
            if let Some(event) = received {
                ctx.events.emit(event);
            }
            ctx.metrics.dsn_sent.inc();
            tracing::info!(queue_id = %env.id, dsn_id = %id, recipients = wanted.len(), "bounce queued");
            true
        }
        Err(e) => {
            tracing::error!(queue_id = %env.id, error = %e, "cannot spool bounce; trying again later");
            false
        }
    }
}

/// Bounces are routed like any message from the null sender to the original sender.
fn bounce_pool(ctx: &Context, sender: &Address) -> Option<String> {
    let view = crate::route::MessageView {
        listener: "bounce".into(),
        ..Default::default()
    };
    let plan = ctx.router.plan(&view, &[Recipient::new(sender.clone())]);
    plan.groups.into_iter().next().and_then(|g| g.pool)
}
