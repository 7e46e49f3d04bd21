//! Intake's events: what became of a message at its end of data (refused, quarantined,
//! discarded), and each spooled copy (received, with its route, pool and stream). Built only
//! when events are recorded.

use super::{Copy, Disposition, Dropped, Filtered};
use crate::context::Context;
use crate::envelope::{Envelope, SessionInfo};
use crate::events::{Event, Kind};

/// What an event of a message's fate says about it, taken before intake consumes the envelope.
pub struct Summary {
    base: Event,
}

impl Summary {
    /// `None` when events are not recorded.
    pub fn of(ctx: &Context, env: &Envelope, message_id: Option<&str>, origin: &SessionInfo) -> Option<Summary> {
        if !ctx.events.enabled() {
            return None;
        }
        let base = Event::new(Kind::Received { size: 0 })
            .queue(env.id)
            .message_id(message_id)
            .sender(&env.sender)
            .recipients(&env.recipients)
            .origin(&origin.listener, origin.client);
        Some(Summary { base })
    }
}

/// Records a message's fate when it was not spooled (a spooled one's copies are recorded by
/// [`copies`]).
pub fn fate(ctx: &Context, summary: Option<Summary>, disposition: &Disposition) {
    let Some(Summary { base }) = summary else { return };
    let kind = match disposition {
        Disposition::Refused(reply) => Kind::Refused { reply: reply.into() },
        Disposition::Quarantined(entry) => Kind::Quarantined { entry: entry.clone() },
        Disposition::Dropped(Dropped::Discarded) => Kind::Filtered {
            filter: String::new(),
            verdict: "discard".into(),
        },
        Disposition::Dropped(Dropped::NoRecipients) | Disposition::Accepted(_) => return,
    };
    ctx.events.emit(Event { kind, ..base });
}

/// The `received` event of each copy about to be spooled, with where routing sent it (none when
/// events are not recorded); emitted once they are.
pub fn copies(ctx: &Context, origin: &SessionInfo, msg: &Filtered, copies: &[Copy]) -> Vec<Event> {
    if !ctx.events.enabled() {
        return Vec::new();
    }
    let mut events = Vec::with_capacity(copies.len());
    for copy in copies {
        let event = Event::new(Kind::Received {
            size: copy.message.len(),
        })
        .queue(copy.id)
        .message_id(msg.headers.message_id())
        .sender(&msg.env.sender)
        .recipients(&copy.group.recipients)
        .origin(&origin.listener, origin.client)
        .path(
            copy.group.route.as_deref(),
            copy.group.pool.as_deref(),
            copy.group.stream.as_deref(),
        );
        events.push(event);
    }
    events
}

/// A suppressed recipient dropped at intake.
pub fn suppressed(
    ctx: &Context,
    id: crate::envelope::QueueId,
    sender: &crate::envelope::Sender,
    rcpt: &crate::envelope::Recipient,
    reason: &str,
) {
    ctx.events.emit_with(|| {
        Event::new(Kind::Suppressed { reason: reason.into() })
            .queue(id)
            .sender(sender)
            .recipients([rcpt])
    });
}
