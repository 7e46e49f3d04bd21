//! The listener's filters at end of data: its `before_queue` filters read the whole message and
//! decide what becomes of it; its `after_queue` filters are named for the queue to run.

use std::net::SocketAddr;

use smtpgate_proto::Reply;

use super::{Disposition, Dropped, Filtered, keep_recipients};
use crate::config::{ListenerConfig, Stage};
use crate::context::Context;
use crate::envelope::{Address, Envelope, QueueId, SessionInfo};
use crate::filter::{Action, Handle, names_after, pipeline};
use crate::message::Headers;
use crate::quarantine::{Origin, Resume};
use crate::spool::Content;

/// The listener's filters of one stage, in configured order.
pub fn listener_filters<'c>(ctx: &'c Context, listener: &ListenerConfig, stage: Stage) -> Vec<&'c Handle> {
    let mut filters = ctx.filters.named(&listener.filters);
    filters.retain(|f| f.stage == stage);
    filters
}

/// Runs the listener's before-queue filters on a complete message. `Err` is what became of a
/// message that goes no further: refused, quarantined or discarded.
pub async fn run(
    ctx: &Context,
    listener: &ListenerConfig,
    origin: &SessionInfo,
    peer: SocketAddr,
    mut env: Envelope,
    body: Content,
    headers: Headers,
) -> Result<Filtered, Disposition> {
    let id = env.id;
    let scan: Vec<String> = listener_filters(ctx, listener, Stage::AfterQueue)
        .iter()
        .map(|f| f.name.clone())
        .collect();
    let filters = listener_filters(ctx, listener, Stage::BeforeQueue);
    if filters.is_empty() {
        return Ok(Filtered::new(env, body, headers, Vec::new(), scan));
    }
    // Filters read the whole message: one copy in memory.
    let body = body.into_memory().await.map_err(|e| {
        tracing::error!(queue_id = %id, error = %e, "cannot read the incoming message for its filters");
        Disposition::Refused(Reply::local_error())
    })?;
    let rcpts: Vec<Address> = env.recipients.iter().map(|r| r.address.clone()).collect();
    let out = pipeline::run_data(&filters, origin, &env.sender, rcpts, body, Vec::new()).await;
    ctx.metrics.filter_unchecked.add(out.unchecked.len() as u64);
    let by = out.decided_by.clone().unwrap_or_default();
    keep_recipients(&mut env.recipients, &out.recipients);
    match out.action {
        Action::Accept => {
            // A filter may have changed the header section: the view is the message's again.
            let headers = Headers::parse(&out.message);
            Ok(Filtered::new(
                env,
                Content::memory(out.message),
                headers,
                out.tags,
                scan,
            ))
        }
        Action::Reject(r) | Action::TempFail(r) => {
            ctx.metrics.filter_rejected.inc();
            tracing::info!(queue_id = %id, client = %peer, filter = %by, reply = %r.code, "message refused by filter");
            Err(Disposition::Refused(r))
        }
        Action::Discard => {
            ctx.metrics.filter_discarded.inc();
            tracing::info!(queue_id = %id, filter = %by, "message discarded by filter");
            Err(Disposition::Dropped(Dropped::Discarded))
        }
        Action::Quarantine(reason) => {
            let resume = Resume::Listener {
                origin: Origin::from(origin),
                tags: out.tags,
                filters: names_after(&filters, &by),
                scan,
            };
            Err(quarantine(ctx, env, out.message, reason, by, resume).await)
        }
    }
}

/// Sets a whole message aside in the quarantine, with where it goes on from when released.
async fn quarantine(
    ctx: &Context,
    mut env: Envelope,
    message: Vec<u8>,
    reason: String,
    filter: String,
    resume: Resume,
) -> Disposition {
    let id: QueueId = env.id;
    env.eight_bit = !message.is_ascii();
    let stored = ctx
        .quarantine
        .store(env, message, reason.clone(), filter.clone(), resume)
        .await;
    match stored {
        Ok(entry) => {
            ctx.metrics.quarantined.inc();
            tracing::info!(queue_id = %id, filter, reason, "message quarantined");
            Disposition::Quarantined(entry)
        }
        Err(e) => {
            tracing::error!(queue_id = %id, error = %e, "cannot write to the quarantine");
            Disposition::Refused(Reply::local_error())
        }
    }
}
