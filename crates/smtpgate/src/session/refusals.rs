//! What a refused or set-aside transaction counts. A refusal at MAIL or RCPT is counted in the
//! analytics (rejected, under the recipient's domain, the sender's domain and the listener) and
//! recorded as a `refused` event with the client, the address and the reply; both are built only
//! on a refusal. A message refused at its end of data, or quarantined whole, is counted with
//! every recipient of its transaction (intake records its event).

use smtpgate_proto::Reply;

use super::{Draft, Flow, Session, Txn};
use crate::envelope::{Address, Recipient, Sender};
use crate::events::{Event, Kind};
use crate::stats::{self, Recipients};

impl Session {
    /// Refuses MAIL from `sender`: counted, recorded, answered as an error.
    pub(super) fn refuse_mail(&mut self, sender: &Sender, reply: Reply) -> Flow {
        self.record_refusal(Some(sender), None, &reply);
        self.error(reply)
    }

    /// Refuses RCPT for `address`: counted, recorded, answered as an error.
    pub(super) fn refuse_rcpt(&mut self, address: &Address, reply: Reply) -> Flow {
        let sender = match &self.txn {
            Txn::Mail(draft) => Some(&draft.sender),
            _ => None,
        };
        self.record_refusal(sender, Some(address), &reply);
        self.error(reply)
    }

    fn record_refusal(&self, sender: Option<&Sender>, address: Option<&Address>, reply: &Reply) {
        let ctx = &self.listener.ctx;
        let listener = self.listener.config.name.as_str();
        ctx.stats.record(&stats::Record {
            sender: sender.map(Sender::as_str),
            listener: Some(listener),
            ..stats::Record::new(
                stats::Kind::Rejected,
                address.map_or(Recipients::None, |a| Recipients::One(a.as_str())),
            )
        });
        ctx.events.emit_with(|| {
            let mut event = Event::new(Kind::Refused { reply: reply.into() }).origin(listener, Some(self.peer.ip()));
            if let Some(sender) = sender {
                event = event.sender(sender);
            }
            if let Some(address) = address {
                event = event.recipients([&Recipient::new(address.clone())]);
            }
            event
        });
    }

    /// Counts a transaction's message refused at its end of data (`Rejected`) or quarantined
    /// whole (`Quarantined`).
    pub(super) fn count_message(&self, kind: stats::Kind, draft: &Draft) {
        self.listener.ctx.stats.record(&stats::Record {
            sender: Some(draft.sender.as_str()),
            listener: Some(&self.listener.config.name),
            ..stats::Record::new(kind, Recipients::Envelope(&draft.recipients))
        });
    }
}
