//! Where an accepted message goes: a [`Sink`]. The spool ([`SpoolSink`]) keeps the copies for the
//! queue; the inline proxy (`intake::proxy::ProxySink`) sends its one copy upstream at once.

use smtpgate_proto::Reply;

use super::copies::{Copy, copy_envelope};
use super::{Disposition, Filtered, Taken};
use crate::context::Context;
use crate::envelope::{Envelope, QueueId, SessionInfo};
use crate::filter::BoxFuture;
use crate::queue::Queue;
use crate::route::Group;
use crate::spool::SpoolError;
use crate::stats;

/// Takes the copies of a message that intake accepted. Boxed futures keep it usable as
/// `&mut dyn Sink`, and `Send` as sessions run on the multi-threaded runtime.
pub trait Sink: Send {
    /// The route of the message's one copy when it was fixed before the end of data (a proxy
    /// routes each recipient at RCPT); `Ok(None)`: routing decides now. `Err`: the message goes no
    /// further.
    fn fixed_route<'a>(&'a mut self, msg: &'a Filtered) -> BoxFuture<'a, Result<Option<Group>, Disposition>>;

    /// Takes the copies the route filters kept (none when routing left none). `Err` is the
    /// refusal the client gets.
    fn put<'a>(
        &'a mut self,
        ctx: &'a Context,
        origin: &'a SessionInfo,
        msg: &'a Filtered,
        copies: Vec<Copy>,
    ) -> BoxFuture<'a, Result<Taken, Reply>>;
}

/// The spool: each copy is written durably before the message is answered.
pub struct SpoolSink<'q> {
    queue: &'q Queue,
    /// Why spooling failed, for callers that report more than a reply (a quarantine release).
    pub failure: Option<SpoolError>,
}

impl<'q> SpoolSink<'q> {
    pub fn new(queue: &'q Queue) -> SpoolSink<'q> {
        SpoolSink { queue, failure: None }
    }
}

impl Sink for SpoolSink<'_> {
    fn fixed_route<'a>(&'a mut self, _msg: &'a Filtered) -> BoxFuture<'a, Result<Option<Group>, Disposition>> {
        Box::pin(async { Ok(None) })
    }

    fn put<'a>(
        &'a mut self,
        ctx: &'a Context,
        origin: &'a SessionInfo,
        msg: &'a Filtered,
        copies: Vec<Copy>,
    ) -> BoxFuture<'a, Result<Taken, Reply>> {
        Box::pin(async move {
            let mut relayed: Vec<String> = Vec::new();
            for copy in &copies {
                relayed.extend(copy.group.recipients.iter().map(|r| r.address.to_string()));
            }
            relayed.extend(msg.env.recipients.iter().map(|r| r.address.to_string()));
            let events = super::record::copies(ctx, origin, msg, &copies);
            let spooled = match spool(self.queue, ctx, origin, &msg.env, copies).await {
                Ok(ids) => ids,
                Err(e) => {
                    tracing::error!(queue_id = %msg.id, error = %e, "cannot spool message");
                    self.failure = Some(e);
                    return Err(Reply::local_error());
                }
            };
            for event in events {
                ctx.events.emit(event);
            }
            if !spooled.is_empty() {
                ctx.feedback.record_sent(msg.headers.message_id(), msg.id, &relayed);
            }
            Ok(Taken::Spooled(spooled))
        })
    }
}

/// Spools every copy, each counted as received once spooled; returns their ids.
async fn spool(
    queue: &Queue,
    ctx: &Context,
    origin: &SessionInfo,
    template: &Envelope,
    copies: Vec<Copy>,
) -> Result<Vec<QueueId>, SpoolError> {
    let mut ids = Vec::with_capacity(copies.len());
    for copy in copies {
        let env = copy_envelope(template, &copy);
        queue.accept_content(env, copy.message).await?;
        let group = &copy.group;
        ctx.stats.record(&stats::Record {
            sender: Some(template.sender.as_str()),
            listener: Some(&origin.listener),
            route: group.route.as_deref(),
            pool: group.pool.as_deref(),
            stream: group.stream.as_deref(),
            ..stats::Record::new(stats::Kind::Received, stats::Recipients::Envelope(&group.recipients))
        });
        ids.push(copy.id);
    }
    Ok(ids)
}
