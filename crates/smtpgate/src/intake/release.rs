//! Releasing a quarantine entry: the message goes on from where a filter stopped it, through the
//! same steps as on its way in, so a released message goes exactly where it would have gone had
//! the filter passed it.

use super::sink::SpoolSink;
use super::{Disposition, Filtered, Taken, keep_recipients, pass};
use crate::context::Context;
use crate::envelope::{Address, Envelope, QueueId, SessionInfo};
use crate::filter::{Action, Handle, names_after, pipeline};
use crate::message::Headers;
use crate::quarantine::{Origin, Resume};
use crate::queue::Queue;
use crate::spool::{Content, SpoolError};

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
        } => resume_held(&ctx, queue, env, message, HeldBy::Listener, origin, tags, filters, scan).await?,
        Resume::Route {
            origin,
            tags,
            filters,
            scan,
        } => resume_held(&ctx, queue, env, message, HeldBy::Route, origin, tags, filters, scan).await?,
    };
    let done = id.to_owned();
    ctx.quarantine
        .blocking(move |q| q.delete(&done))
        .await
        .map_err(ReleaseError::NotFound)?;
    tracing::info!(quarantine_id = %id, outcome = ?released, "released from quarantine");
    Ok(released)
}

/// Which before-queue filter held the message: a listener's (routing comes after its filters) or
/// a route's (the envelope already is the routed copy).
#[derive(Clone, Copy)]
enum HeldBy {
    Listener,
    Route,
}

/// A message a listener's or a route's filter held: the filters after that one run, then it goes
/// on as it would have (`HeldBy`); quarantined again, it resumes after the filter that held it now.
#[allow(clippy::too_many_arguments)]
async fn resume_held(
    ctx: &Context,
    queue: &Queue,
    mut env: Envelope,
    message: Vec<u8>,
    held: HeldBy,
    origin: Origin,
    tags: Vec<String>,
    filters: Vec<String>,
    scan: Vec<String>,
) -> Result<Released, ReleaseError> {
    let info = SessionInfo::from(&origin);
    resolve(ctx, &scan)?;
    let found = resolve(ctx, &filters)?;
    if let HeldBy::Route = held {
        env.scan = scan.clone();
    }
    Ok(match resume_filters(ctx, &info, env, message, tags, &found).await? {
        Resumed::Pass(env, message, tags) => match held {
            HeldBy::Listener => {
                let headers = Headers::parse(&message);
                let msg = Filtered::new(env, Content::memory(message), headers, tags, scan);
                route_released(ctx, queue, &info, msg).await?
            }
            HeldBy::Route => {
                let new_id = env.id;
                queue.accept(env, message).await?;
                Released::Spooled(vec![new_id])
            }
        },
        Resumed::Discard => Released::Discarded,
        Resumed::Quarantine(q) => {
            let (filters, tags) = (names_after(&found, &q.by), q.tags.clone());
            let resume = match held {
                HeldBy::Listener => Resume::Listener {
                    origin,
                    filters,
                    tags,
                    scan,
                },
                HeldBy::Route => Resume::Route {
                    origin,
                    filters,
                    tags,
                    scan,
                },
            };
            Released::Quarantined(requarantine(ctx, q, resume).await?)
        }
    })
}

/// A message a listener's filter held, past its remaining filters: routed, its copies
/// filtered and spooled as on its way in.
async fn route_released(
    ctx: &Context,
    queue: &Queue,
    info: &SessionInfo,
    msg: Filtered,
) -> Result<Released, ReleaseError> {
    let mut sink = SpoolSink::new(queue);
    match pass(ctx, info, msg, &mut sink).await {
        Disposition::Accepted(Taken::Spooled(ids)) => Ok(Released::Spooled(ids)),
        Disposition::Accepted(Taken::Proxied(_)) => Ok(Released::Spooled(Vec::new())),
        Disposition::Quarantined(id) => Ok(Released::Quarantined(id)),
        Disposition::Dropped(_) => Ok(Released::Discarded),
        Disposition::Refused(r) => Err(match sink.failure.take() {
            Some(e) => ReleaseError::Spool(e),
            None => ReleaseError::Refused(r.to_string()),
        }),
    }
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
    let found = ctx.filters.named(names);
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
