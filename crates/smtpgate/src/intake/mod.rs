//! Intake: what becomes of a received message at its end of data, with no SMTP in it.
//!
//! The session hands [`take`] a [`Draft`] (envelope, message, who sent it, on which listener)
//! and a [`Sink`], and gets a [`Disposition`] back, which it only turns into its reply. In
//! between: the hop count, submission headers, feedback reports, the listener's before-queue
//! filters, routing (or the sink's own route: a proxy routes at RCPT), each copy's header changes
//! and route filters, and the sink: the spool ([`SpoolSink`]) or the inline proxy
//! ([`proxy::ProxySink`]).
//!
//! ```text
//! session ── Draft ──> hops, headers, reports ──> listener filters ──> routing ──> copies ──> sink
//!    <── Disposition: Refused(reply) | Accepted(Spooled | Proxied) | Quarantined | Dropped
//! ```
//!
//! A quarantine release ([`release`]) takes the message from where a filter stopped it through
//! the same steps. Intake sits below the sessions: it names neither `session` nor `server`.

mod copies;
mod filters;
pub mod headers;
pub mod inject;
pub mod proxy;
mod record;
mod release;
mod reports;
mod sink;
#[cfg(test)]
mod tests;

use std::net::SocketAddr;

use smtpgate_proto::Reply;

use crate::config::ListenerConfig;
use crate::context::Context;
use crate::envelope::{Address, Envelope, QueueId, Recipient, SessionInfo};
use crate::message::Headers;
use crate::route::Group;
use crate::spool::Content;
pub use copies::Copy;
pub use filters::listener_filters;
pub use release::{ReleaseError, Released, release};
pub use reports::reason_text;
pub use sink::{Sink, SpoolSink};

/// A message as the session received it.
pub struct Draft {
    /// Sender, recipients and DSN parameters, under the message's queue id; pool, stream and
    /// scan are decided here.
    pub env: Envelope,
    /// The message with the session's `Received:` first; in memory, or with its body in an
    /// incoming file when it is large.
    pub body: Content,
    /// The client: address, HELO name, user it authenticated as, TLS, listener.
    pub origin: SessionInfo,
    /// The client's address and port, for logs.
    pub peer: SocketAddr,
}

/// A message past the listener's before-queue filters.
pub struct Filtered {
    pub id: QueueId,
    pub env: Envelope,
    /// In memory, or with its body in an incoming file (a large message no filter read whole).
    pub body: Content,
    /// Its header section, parsed once (again only after a filter that may have changed it).
    pub headers: Headers,
    /// Tags the filters set, for routing.
    pub tags: Vec<String>,
    /// The listener's after-queue filters.
    pub scan: Vec<String>,
}

impl Filtered {
    /// The message as the filters left it (its 8-bit flag follows the content they left), with
    /// the parsed view of its header section.
    pub fn new(mut env: Envelope, body: Content, headers: Headers, tags: Vec<String>, scan: Vec<String>) -> Filtered {
        env.eight_bit = !body.is_ascii();
        Filtered {
            id: env.id,
            env,
            body,
            headers,
            tags,
            scan,
        }
    }
}

/// What became of a message.
#[derive(Debug)]
pub enum Disposition {
    /// Refused: the reply to the end of data.
    Refused(Reply),
    /// A sink took it.
    Accepted(Taken),
    /// A listener's filter set the whole message aside (or a route's filter the one copy of a
    /// proxied message): the quarantine entry's id.
    Quarantined(String),
    /// Nothing goes on, and the client is told the message was taken.
    Dropped(Dropped),
}

/// What a sink did with the message.
#[derive(Debug)]
pub enum Taken {
    /// Every copy that was not quarantined or discarded is spooled (ids in order; none when
    /// routing left no copy).
    Spooled(Vec<QueueId>),
    /// The upstream's answer to the end of data, for the client.
    Proxied(Reply),
}

/// Why nothing goes on.
#[derive(Debug, PartialEq, Eq)]
pub enum Dropped {
    /// No recipient is left (reports consumed them, suppression or filters removed them).
    NoRecipients,
    /// A filter discarded the message.
    Discarded,
}

/// Takes a message at its end of data. `ctx` is the configuration the message was received
/// under (a session keeps the one it started with across a reload), `listener` the listener's.
pub async fn take(ctx: &Context, listener: &ListenerConfig, draft: Draft, sink: &mut dyn Sink) -> Disposition {
    let mut summary = None;
    let disposition = decide(ctx, listener, draft, sink, &mut summary).await;
    record::fate(ctx, summary, &disposition);
    disposition
}

/// What becomes of the message, step by step; `summary` is what its fate's event says of it
/// (taken from the one parse of its header section, when events are recorded).
async fn decide(
    ctx: &Context,
    listener: &ListenerConfig,
    draft: Draft,
    sink: &mut dyn Sink,
    summary: &mut Option<record::Summary>,
) -> Disposition {
    let Draft {
        mut env,
        mut body,
        origin,
        peer,
    } = draft;
    let id = env.id;
    // The one parse of the header section: routing and the record of sent mail read this view,
    // and it is read again only when a filter may have rewritten the message.
    let mut parsed = Headers::parse(&body.head);
    *summary = record::Summary::of(ctx, &env, parsed.message_id(), &origin);
    let hops = parsed.count("received");
    if hops > listener.max_hops {
        ctx.metrics.rejected.inc();
        tracing::warn!(queue_id = %id, client = %peer, hops, "message refused: too many hops (mail loop)");
        return Disposition::Refused(Reply::too_many_hops());
    }
    if listener.submission || origin.user.is_some() {
        headers::add_submission_headers(&mut body.head, &mut parsed, id, &ctx.config.hostname);
    }
    reports::take_reports(ctx, id, peer, &mut env, &body.routing_view());
    if env.recipients.is_empty() {
        return Disposition::Dropped(Dropped::NoRecipients);
    }
    let msg = match filters::run(ctx, listener, &origin, peer, env, body, parsed).await {
        Ok(msg) => msg,
        Err(disposition) => return disposition,
    };
    if msg.env.recipients.is_empty() {
        return Disposition::Dropped(Dropped::NoRecipients);
    }
    let (sender, rcpts, size) = (msg.env.sender.clone(), msg.env.recipients.len(), msg.body.len());
    let disposition = pass(ctx, &origin, msg, sink).await;
    if let Disposition::Accepted(Taken::Spooled(ids)) = &disposition {
        ctx.metrics.received.inc();
        tracing::info!(
            queue_id = %id, client = %peer, sender = %sender, recipients = rcpts, size, copies = ids.len(),
            tls = origin.tls, user = origin.user.as_deref().unwrap_or("-"), "message accepted"
        );
    }
    disposition
}

/// A message past the listener's filters: its route (the sink's, or routing's now), its copies
/// and their route filters, then the sink.
async fn pass(ctx: &Context, origin: &SessionInfo, msg: Filtered, sink: &mut dyn Sink) -> Disposition {
    let fixed = match sink.fixed_route(&msg).await {
        Ok(fixed) => fixed,
        Err(disposition) => return disposition,
    };
    let is_fixed = fixed.is_some();
    let groups = match fixed {
        Some(group) => vec![group],
        None => match routed(ctx, origin, &msg).await {
            Ok(groups) => groups,
            Err(disposition) => return disposition,
        },
    };
    let fates = match copies::prepare(ctx, origin, &msg, groups).await {
        Ok(fates) => fates,
        Err(reply) => return Disposition::Refused(reply),
    };
    let (kept, aside) = sort_fates(fates);
    // A fixed route has one copy: when its filters took it, that is the message's fate. What
    // routing decided is taken as a whole, even when it leaves nothing to spool.
    if is_fixed && kept.is_empty() {
        return aside.unwrap_or(Disposition::Dropped(Dropped::Discarded));
    }
    match sink.put(ctx, origin, &msg, kept).await {
        Ok(taken) => Disposition::Accepted(taken),
        Err(reply) => Disposition::Refused(reply),
    }
}

/// The groups routing makes of a message; `Err` when it refuses it.
async fn routed(ctx: &Context, origin: &SessionInfo, msg: &Filtered) -> Result<Vec<Group>, Disposition> {
    let Some(plan) = copies::route(ctx, origin, msg).await else {
        return Err(Disposition::Refused(Reply::local_error()));
    };
    if let Some(r) = plan.reject {
        ctx.metrics.rejected.inc();
        tracing::info!(queue_id = %msg.id, client = ?origin.client, reply = %r.code, "message refused by routing");
        return Err(Disposition::Refused(Reply::policy(r.code, r.status, r.text)));
    }
    if !plan.discarded.is_empty() {
        tracing::info!(queue_id = %msg.id, discarded = ?plan.discarded, "recipients discarded by routing");
    }
    Ok(plan.groups)
}

/// The copies that go on, and what became of the first one set aside (quarantined or discarded).
fn sort_fates(fates: Vec<copies::Fate>) -> (Vec<Copy>, Option<Disposition>) {
    let mut kept = Vec::with_capacity(fates.len());
    let mut aside = None;
    for fate in fates {
        match fate {
            copies::Fate::Kept(copy) => kept.push(*copy),
            copies::Fate::Quarantined(entry) => {
                aside.get_or_insert(Disposition::Quarantined(entry));
            }
            copies::Fate::Discarded => {
                aside.get_or_insert(Disposition::Dropped(Dropped::Discarded));
            }
        }
    }
    (kept, aside)
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
