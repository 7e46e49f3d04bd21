//! The path of a received message after the listener's before-queue filters, with no SMTP in it:
//! routing, each copy's header changes and route filters, the quarantine, and the spool.
//!
//! The session calls [`accept`] at the end of data; a quarantine release calls [`release`], which
//! takes the message from where a filter stopped it through the same steps, so a released message
//! goes exactly where it would have gone had the filter passed it.

use smtpgate_proto::Reply;

use crate::config::Stage;
use crate::context::Context;
use crate::envelope::{Address, Envelope, QueueId, Recipient, Sender};
use crate::filter::Handle;
use crate::filter::{Action, SessionInfo, pipeline};
use crate::quarantine::{Origin, Resume};
use crate::queue::Queue;
use crate::route::{Group, MessageView};
use crate::spool::{Content, SpoolError};

/// A message past the listener's before-queue filters.
pub struct Received {
    pub id: QueueId,
    /// Sender, recipients and DSN parameters; pool, stream and scan are decided here.
    pub env: Envelope,
    /// In memory, or with its body in an incoming file (a large message no filter read whole).
    pub body: Content,
    /// Tags the filters set, for routing.
    pub tags: Vec<String>,
    /// The listener's after-queue filters.
    pub scan: Vec<String>,
}

/// One routed copy, ready to spool.
pub struct Copy {
    pub id: QueueId,
    pub group: Group,
    /// The copy's header changes are made; a body in a file is shared by every copy.
    pub message: Content,
    /// After-queue filters: the listener's, then the route's.
    pub scan: Vec<String>,
}

/// What became of a message.
#[derive(Debug)]
pub enum Disposition {
    /// Refused by routing or by a route's filter: the reply to the end of data.
    Refused(Reply),
    /// Every copy that was not quarantined or discarded is spooled (ids in order).
    Accepted { spooled: Vec<QueueId> },
}

/// Routes a message, builds and filters its copies, and spools them. `Ok` means every spooled
/// copy is durable.
/// `ctx` is the configuration the message was received under (a session keeps the one it started
/// with across a reload).
pub async fn accept(
    ctx: &Context,
    queue: &Queue,
    origin: &SessionInfo,
    msg: Received,
) -> Result<Disposition, SpoolError> {
    let Some(plan) = route(ctx, origin, &msg).await else {
        return Ok(Disposition::Refused(Reply::local_error()));
    };
    if let Some(r) = plan.reject {
        ctx.metrics.rejected.inc();
        tracing::info!(queue_id = %msg.id, client = ?origin.client, reply = %r.code, "message refused by routing");
        return Ok(Disposition::Refused(Reply::policy(r.code, r.status, r.text)));
    }
    if !plan.discarded.is_empty() {
        tracing::info!(queue_id = %msg.id, discarded = ?plan.discarded, "recipients discarded by routing");
    }
    let copies = match prepare(ctx, origin, &msg, plan.groups).await {
        Ok(c) => c,
        Err(reply) => return Ok(Disposition::Refused(reply)),
    };
    let mut relayed: Vec<String> = Vec::new();
    for copy in &copies {
        relayed.extend(copy.group.recipients.iter().map(|r| r.address.to_string()));
    }
    relayed.extend(msg.env.recipients.iter().map(|r| r.address.to_string()));
    let spooled = spool(queue, &msg.env, copies).await?;
    if !spooled.is_empty() {
        ctx.feedback.record_sent(&msg.body.head, msg.id, &relayed);
    }
    Ok(Disposition::Accepted { spooled })
}

/// What routing makes of a message. When routing reads files (Sieve scripts, alias and
/// address-list files it reloads), it runs on the blocking pool, off the runtime's threads.
/// `None` if it panicked (logged).
async fn route(ctx: &Context, origin: &SessionInfo, msg: &Received) -> Option<crate::route::Plan> {
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
    let plan = move |router: &crate::route::Router, seen: &[u8], base: MessageView<'static>, rcpts: &[Recipient]| {
        let size = base.size;
        let mut view = base.with_message(seen, limit);
        view.size = size;
        router.plan(&view, rcpts)
    };
    if !ctx.router.reads_files() {
        return Some(plan(&ctx.router, &msg.body.routing_view(), base, &msg.env.recipients));
    }
    let (router, seen, rcpts) = (
        ctx.router.clone(),
        msg.body.routing_view().into_owned(),
        msg.env.recipients.clone(),
    );
    match tokio::task::spawn_blocking(move || plan(&router, &seen, base, &rcpts)).await {
        Ok(p) => Some(p),
        Err(e) => {
            tracing::error!(queue_id = %msg.id, error = %e, "routing failed");
            None
        }
    }
}

/// Builds each routed copy (header changes) and runs its route's before-queue filters. The first
/// copy keeps the message's queue id. A refusal by any filter refuses the whole message (nothing
/// is spooled before all have run); a copy a filter quarantines is stored under its copy's id.
pub async fn prepare(
    ctx: &Context,
    origin: &SessionInfo,
    msg: &Received,
    groups: Vec<Group>,
) -> Result<Vec<Copy>, Reply> {
    let mut copies = Vec::with_capacity(groups.len());
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
        if let Some(copy) = filter_copy(ctx, origin, msg, copy, &before).await? {
            copies.push(copy);
        }
    }
    Ok(copies)
}

/// Runs a copy's before-queue route filters (`filters`). `Ok(None)`: quarantined or discarded.
async fn filter_copy(
    ctx: &Context,
    origin: &SessionInfo,
    msg: &Received,
    mut copy: Copy,
    filters: &[&Handle],
) -> Result<Option<Copy>, Reply> {
    if filters.is_empty() {
        return Ok(Some(copy));
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
            Ok(Some(copy))
        }
        Action::Reject(r) | Action::TempFail(r) => {
            ctx.metrics.filter_rejected.inc();
            tracing::info!(queue_id = %copy.id, filter = %by, reply = %r.code, "message refused by a route filter");
            Err(r)
        }
        Action::Discard => {
            ctx.metrics.filter_discarded.inc();
            tracing::info!(queue_id = %copy.id, filter = %by, "copy discarded by a route filter");
            Ok(None)
        }
        Action::Quarantine(reason) => {
            copy.message = Content::memory(out.message);
            let env = copy_envelope(&msg.env, &copy);
            let resume = Resume::Route {
                origin: Origin::from(origin),
                tags: out.tags,
                filters: names_after(filters, &by),
                scan: copy.scan,
            };
            let stored = ctx
                .quarantine
                .store(
                    env,
                    std::mem::take(&mut copy.message.head),
                    reason.clone(),
                    by.clone(),
                    resume,
                )
                .await;
            if let Err(e) = stored {
                tracing::error!(queue_id = %copy.id, error = %e, "cannot write to the quarantine");
                return Err(Reply::local_error());
            }
            ctx.metrics.quarantined.inc();
            tracing::info!(queue_id = %copy.id, filter = %by, reason, "message quarantined");
            Ok(None)
        }
    }
}

/// A route's filters split by stage: (before the queue, after it by name).
fn route_filters<'c>(ctx: &'c Context, names: &[String]) -> (Vec<&'c Handle>, Vec<String>) {
    let found = find_filters(ctx, names);
    let after = found
        .iter()
        .filter(|f| f.stage == Stage::AfterQueue)
        .map(|f| f.name.clone())
        .collect();
    let before = found.into_iter().filter(|f| f.stage == Stage::BeforeQueue).collect();
    (before, after)
}

fn find_filters<'c>(ctx: &'c Context, names: &[String]) -> Vec<&'c Handle> {
    ctx.filters.named(names)
}

pub use crate::filter::names_after;

/// The envelope of one copy: its id, recipients, pool, stream, scan and (SRS) sender.
fn copy_envelope(template: &Envelope, copy: &Copy) -> Envelope {
    let mut env = template.clone();
    env.id = copy.id;
    env.eight_bit = !copy.message.is_ascii();
    env.recipients = copy.group.recipients.clone();
    env.pool = copy.group.pool.clone();
    env.stream = copy.group.stream.clone();
    env.scan = copy.scan.clone();
    if let Some(sender) = &copy.group.srs_sender {
        env.sender = Sender::Mailbox(sender.clone());
    }
    env
}

/// Spools every copy; returns their ids.
async fn spool(queue: &Queue, template: &Envelope, copies: Vec<Copy>) -> Result<Vec<QueueId>, SpoolError> {
    let mut ids = Vec::with_capacity(copies.len());
    for copy in copies {
        let env = copy_envelope(template, &copy);
        queue.accept_content(env, copy.message).await?;
        ids.push(copy.id);
    }
    Ok(ids)
}

/// What a release did.
#[derive(Debug)]
pub enum Released {
    /// Sent on: these copies are spooled (none when routing or the route filters left no copy).
    Spooled(Vec<QueueId>),
    /// A filter after the one that held it quarantined it again: the new entry's id.
    Quarantined(String),
    /// A filter after the one that held it discarded it.
    Discarded,
}

/// Why a release did not happen; the entry stays in the quarantine.
#[derive(Debug, thiserror::Error)]
pub enum ReleaseError {
    #[error("{0}")]
    NotFound(std::io::Error),
    #[error("filter {0:?} of this message's path no longer exists; the message stays in the quarantine")]
    MissingFilter(String),
    #[error("refused on release: {0}; the message stays in the quarantine")]
    Refused(String),
    #[error("cannot spool: {0}")]
    Spool(#[from] SpoolError),
    #[error("cannot write to the quarantine: {0}")]
    Quarantine(std::io::Error),
}

/// Releases a quarantine entry: the filters after the one that held it run, then routing (when a
/// listener's filter held it), and the copies are spooled under new queue ids. The entry is
/// removed once that is done; a refusal or an error leaves it in place.
pub async fn release(queue: &Queue, id: &str) -> Result<Released, ReleaseError> {
    let ctx = queue.ctx();
    let read = id.to_owned();
    let (entry, message) = ctx
        .quarantine
        .blocking(move |q| Ok((q.entry(&read)?, q.message(&read)?)))
        .await
        .map_err(ReleaseError::NotFound)?;
    let mut env = entry.envelope;
    env.id = ctx.ids.next();
    let resume = entry.resume.unwrap_or_else(|| legacy_resume(&env));
    let released = match resume {
        Resume::Scan => {
            resolve(&ctx, &env.scan)?;
            let new_id = env.id;
            queue.accept(env, message).await?;
            Released::Spooled(vec![new_id])
        }
        Resume::Listener {
            origin,
            tags,
            filters,
            scan,
        } => {
            let info = SessionInfo::from(&origin);
            resolve(&ctx, &scan)?;
            let found = resolve(&ctx, &filters)?;
            match resume_filters(&ctx, &info, env, message, tags, &found).await? {
                Resumed::Pass(env, message, tags) => {
                    let received = Received {
                        id: env.id,
                        env,
                        body: Content::memory(message),
                        tags,
                        scan,
                    };
                    match accept(&ctx, queue, &info, received).await? {
                        Disposition::Refused(r) => return Err(ReleaseError::Refused(r.to_string())),
                        Disposition::Accepted { spooled } => Released::Spooled(spooled),
                    }
                }
                Resumed::Discard => Released::Discarded,
                Resumed::Quarantine(q) => {
                    let resume = Resume::Listener {
                        origin,
                        filters: names_after(&found, &q.by),
                        tags: q.tags.clone(),
                        scan,
                    };
                    Released::Quarantined(requarantine(&ctx, q, resume).await?)
                }
            }
        }
        Resume::Route {
            origin,
            tags,
            filters,
            scan,
        } => {
            let info = SessionInfo::from(&origin);
            resolve(&ctx, &scan)?;
            let found = resolve(&ctx, &filters)?;
            env.scan = scan.clone();
            match resume_filters(&ctx, &info, env, message, tags, &found).await? {
                Resumed::Pass(env, message, _) => {
                    let new_id = env.id;
                    queue.accept(env, message).await?;
                    Released::Spooled(vec![new_id])
                }
                Resumed::Discard => Released::Discarded,
                Resumed::Quarantine(q) => {
                    let resume = Resume::Route {
                        origin,
                        filters: names_after(&found, &q.by),
                        tags: q.tags.clone(),
                        scan,
                    };
                    Released::Quarantined(requarantine(&ctx, q, resume).await?)
                }
            }
        }
    };
    let done = id.to_owned();
    ctx.quarantine
        .blocking(move |q| q.delete(&done))
        .await
        .map_err(ReleaseError::NotFound)?;
    tracing::info!(quarantine_id = %id, outcome = ?released, "released from quarantine");
    Ok(released)
}

/// An entry written before smtpgate kept its place on the path: one that already has a route
/// (a route's or an after-queue filter held it) is spooled as it is; one without is routed.
fn legacy_resume(env: &Envelope) -> Resume {
    if env.pool.is_some() || env.stream.is_some() {
        return Resume::Scan;
    }
    Resume::Listener {
        origin: Origin::default(),
        tags: Vec::new(),
        filters: Vec::new(),
        scan: Vec::new(),
    }
}

/// The named filters, or the first name that no longer exists.
fn resolve<'c>(ctx: &'c Context, names: &[String]) -> Result<Vec<&'c Handle>, ReleaseError> {
    let found = find_filters(ctx, names);
    if let Some(missing) = names.iter().find(|n| !found.iter().any(|f| &f.name == *n)) {
        return Err(ReleaseError::MissingFilter(missing.clone()));
    }
    Ok(found)
}

/// A message a filter quarantined again on its release.
struct Held {
    env: Envelope,
    message: Vec<u8>,
    reason: String,
    by: String,
    tags: Vec<String>,
}

/// What the filters left on a released message's path made of it.
enum Resumed {
    Pass(Envelope, Vec<u8>, Vec<String>),
    Discard,
    Quarantine(Held),
}

/// Runs the filters left on a released message's path.
async fn resume_filters(
    ctx: &Context,
    info: &SessionInfo,
    mut env: Envelope,
    message: Vec<u8>,
    tags: Vec<String>,
    filters: &[&Handle],
) -> Result<Resumed, ReleaseError> {
    if filters.is_empty() {
        return Ok(Resumed::Pass(env, message, tags));
    }
    let rcpts: Vec<Address> = env.recipients.iter().map(|r| r.address.clone()).collect();
    let out = pipeline::run_data(filters, info, &env.sender, rcpts, message, tags).await;
    ctx.metrics.filter_unchecked.add(out.unchecked.len() as u64);
    let by = out.decided_by.clone().unwrap_or_default();
    keep_recipients(&mut env.recipients, &out.recipients);
    match out.action {
        Action::Accept => Ok(Resumed::Pass(env, out.message, out.tags)),
        Action::Reject(r) | Action::TempFail(r) => Err(ReleaseError::Refused(format!("filter {by}: {r}"))),
        Action::Discard => {
            ctx.metrics.filter_discarded.inc();
            tracing::info!(queue_id = %env.id, filter = %by, "released message discarded by a filter");
            Ok(Resumed::Discard)
        }
        Action::Quarantine(reason) => Ok(Resumed::Quarantine(Held {
            env,
            message: out.message,
            reason,
            by,
            tags: out.tags,
        })),
    }
}

/// Stores a message a later filter quarantined on release; returns the new entry's id.
async fn requarantine(ctx: &Context, held: Held, resume: Resume) -> Result<String, ReleaseError> {
    let (by, reason) = (held.by.clone(), held.reason.clone());
    let id = ctx
        .quarantine
        .store(held.env, held.message, held.reason, held.by, resume)
        .await
        .map_err(ReleaseError::Quarantine)?;
    ctx.metrics.quarantined.inc();
    tracing::info!(queue_id = %id, filter = %by, reason = %reason, "message quarantined");
    Ok(id)
}

/// Applies the filters' recipient changes: removed ones go, added ones join.
pub fn keep_recipients(recipients: &mut Vec<Recipient>, wanted: &[Address]) {
    recipients.retain(|r| wanted.iter().any(|w| w.eq_ignore_ascii_case(&r.address)));
    for w in wanted {
        if !recipients.iter().any(|r| r.address.eq_ignore_ascii_case(w)) {
            recipients.push(Recipient::new(w.clone()));
        }
    }
}
