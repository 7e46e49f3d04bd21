//! Routing and copies: which copies a message makes, each copy's header changes, and its route's
//! before-queue filters.

use smtpgate_proto::Reply;

use super::Filtered;
use crate::config::Stage;
use crate::context::Context;
use crate::envelope::{Address, Envelope, QueueId, Recipient, Sender, SessionInfo};
use crate::filter::{Action, Handle, names_after, pipeline};
use crate::message::Headers;
use crate::quarantine::{Origin, Resume};
use crate::route::{Group, MessageView, Plan};
use crate::spool::Content;

/// One routed copy, ready for its sink.
pub struct Copy {
    pub id: QueueId,
    pub group: Group,
    /// The copy's header changes are made; a body in a file is shared by every copy.
    pub message: Content,
    /// After-queue filters: the listener's, then the route's.
    pub scan: Vec<String>,
}

/// What a route's filters made of one copy.
pub enum Fate {
    Kept(Box<Copy>),
    /// Set aside: the quarantine entry's id.
    Quarantined(String),
    Discarded,
}

/// What routing makes of a message. When routing reads files (Sieve scripts, alias and
/// address-list files it reloads), it runs on the blocking pool, off the runtime's threads.
/// `None` if it panicked (logged).
pub async fn route(ctx: &Context, origin: &SessionInfo, msg: &Filtered) -> Option<Plan> {
    let base = MessageView {
        sender: msg.env.sender.clone(),
        client: origin.client,
        user: origin.user.clone(),
        listener: origin.listener.clone(),
        size: msg.body.len(),
        tags: msg.tags.clone(),
        ..Default::default()
    };
    let limit = ctx.config.routing.body_scan_limit;
    let plan =
        move |router: &crate::route::Router,
              headers: &Headers,
              seen: &[u8],
              base: MessageView<'_>,
              rcpts: &[Recipient]| { router.plan(&base.with_parsed(headers, seen, limit), rcpts) };
    if !ctx.router.reads_files() {
        return Some(plan(
            &ctx.router,
            &msg.headers,
            &msg.body.routing_view(),
            base,
            &msg.env.recipients,
        ));
    }
    let (router, headers, seen, rcpts) = (
        ctx.router.clone(),
        msg.headers.clone(),
        msg.body.routing_view().into_owned(),
        msg.env.recipients.clone(),
    );
    match tokio::task::spawn_blocking(move || plan(&router, &headers, &seen, base, &rcpts)).await {
        Ok(p) => Some(p),
        Err(e) => {
            tracing::error!(queue_id = %msg.id, error = %e, "routing failed");
            None
        }
    }
}

/// Builds each routed copy (header changes) and runs its route's before-queue filters. The first
/// copy keeps the message's queue id. A refusal by any filter refuses the whole message (nothing
/// goes to a sink before all have run); a copy a filter quarantines is stored under its copy's id.
pub async fn prepare(
    ctx: &Context,
    origin: &SessionInfo,
    msg: &Filtered,
    groups: Vec<Group>,
) -> Result<Vec<Fate>, Reply> {
    let mut fates = Vec::with_capacity(groups.len());
    for (i, group) in groups.into_iter().enumerate() {
        let id = if i == 0 { msg.id } else { ctx.ids.next() };
        let head = crate::message::apply_header_changes(&msg.body.head, &group.add_headers, &group.remove_headers);
        let message = msg.body.with_head(head);
        let (before, after) = route_filters(ctx, &group.filters);
        let mut scan = msg.scan.clone();
        scan.extend(after.into_iter().filter(|n| !msg.scan.contains(n)));
        let copy = Copy {
            id,
            group,
            message,
            scan,
        };
        fates.push(filter_copy(ctx, origin, msg, copy, &before).await?);
    }
    Ok(fates)
}

/// Runs a copy's before-queue route filters (`filters`).
async fn filter_copy(
    ctx: &Context,
    origin: &SessionInfo,
    msg: &Filtered,
    mut copy: Copy,
    filters: &[&Handle],
) -> Result<Fate, Reply> {
    if filters.is_empty() {
        return Ok(Fate::Kept(Box::new(copy)));
    }
    let rcpts: Vec<Address> = copy.group.recipients.iter().map(|r| r.address.clone()).collect();
    let srs = copy.group.srs_sender.clone().map(Sender::Mailbox);
    let sender = srs.as_ref().unwrap_or(&msg.env.sender);
    // Filters read the whole message: one in memory.
    let message = std::mem::replace(&mut copy.message, Content::memory(Vec::new()));
    let message = message.into_memory().await.map_err(|e| {
        tracing::error!(queue_id = %copy.id, error = %e, "cannot read the incoming message for its route filters");
        Reply::local_error()
    })?;
    let out = pipeline::run_data(filters, origin, sender, rcpts, message, msg.tags.clone()).await;
    ctx.metrics.filter_unchecked.add(out.unchecked.len() as u64);
    let by = out.decided_by.clone().unwrap_or_default();
    match out.action {
        Action::Accept => {
            copy.message = Content::memory(out.message);
            Ok(Fate::Kept(Box::new(copy)))
        }
        Action::Reject(r) | Action::TempFail(r) => {
            ctx.metrics.filter_rejected.inc();
            tracing::info!(queue_id = %copy.id, filter = %by, reply = %r.code, "message refused by a route filter");
            Err(r)
        }
        Action::Discard => {
            ctx.metrics.filter_discarded.inc();
            tracing::info!(queue_id = %copy.id, filter = %by, "copy discarded by a route filter");
            Ok(Fate::Discarded)
        }
        Action::Quarantine(reason) => {
            copy.message = Content::memory(out.message);
            let resume = Resume::Route {
                origin: Origin::from(origin),
                tags: out.tags,
                filters: names_after(filters, &by),
                scan: copy.scan.clone(),
            };
            quarantine_copy(ctx, &msg.env, copy, reason, by, resume).await
        }
    }
}

/// Stores a copy a route's filter quarantined, under the copy's id and envelope.
async fn quarantine_copy(
    ctx: &Context,
    template: &Envelope,
    mut copy: Copy,
    reason: String,
    by: String,
    resume: Resume,
) -> Result<Fate, Reply> {
    let env = copy_envelope(template, &copy);
    let message = std::mem::take(&mut copy.message.head);
    match ctx
        .quarantine
        .store(env, message, reason.clone(), by.clone(), resume)
        .await
    {
        Ok(entry) => {
            ctx.metrics.quarantined.inc();
            tracing::info!(queue_id = %copy.id, filter = %by, reason, "message quarantined");
            Ok(Fate::Quarantined(entry))
        }
        Err(e) => {
            tracing::error!(queue_id = %copy.id, error = %e, "cannot write to the quarantine");
            Err(Reply::local_error())
        }
    }
}

/// A route's filters split by stage: (before the queue, after it by name).
fn route_filters<'c>(ctx: &'c Context, names: &[String]) -> (Vec<&'c Handle>, Vec<String>) {
    let found = ctx.filters.named(names);
    let after = found
        .iter()
        .filter(|f| f.stage == Stage::AfterQueue)
        .map(|f| f.name.clone())
        .collect();
    let before = found.into_iter().filter(|f| f.stage == Stage::BeforeQueue).collect();
    (before, after)
}

/// The envelope of one copy: its id, recipients, pool, stream, route, scan and (SRS) sender.
pub fn copy_envelope(template: &Envelope, copy: &Copy) -> Envelope {
    let mut env = template.clone();
    env.id = copy.id;
    env.eight_bit = !copy.message.is_ascii();
    env.recipients = copy.group.recipients.clone();
    env.pool = copy.group.pool.clone();
    env.stream = copy.group.stream.clone();
    env.route = copy.group.route.clone();
    env.scan = copy.scan.clone();
    if let Some(sender) = &copy.group.srs_sender {
        env.sender = Sender::Mailbox(sender.clone());
    }
    env
}
