//! RCPT TO: relay control and recipient limits.
//!
//! Architecture invariant: a recipient outside `local_domains` is accepted only from a relay network
//! or an authenticated client, whatever its form (address literals, `%` and `!` routing, source
//! routes): smtpgate is never an open relay.

use smtpgate_proto::{Domain, ForwardPath, Mailbox, RcptParams, Reply};

use super::{Flow, Session, Txn};
use crate::config::SuppressAction;
use crate::envelope::{Address, Notify, Recipient};
use crate::intake::reason_text;

impl Session {
    pub(super) async fn rcpt(&mut self, to: ForwardPath, params: RcptParams) -> Flow {
        let max = self.listener.config.max_recipients;
        let Txn::Mail(draft) = &self.txn else {
            return self.error(Reply::bad_sequence("need MAIL before RCPT"));
        };
        if draft.recipients.len() >= max {
            return self.respond(Reply::too_many_recipients());
        }
        let smtputf8 = draft.params.smtputf8;
        let address = match &to {
            ForwardPath::Postmaster => self.postmaster(),
            ForwardPath::Path(mb) => {
                if mb.is_utf8() && !smtputf8 {
                    return self.error(Reply::need_smtputf8());
                }
                if let Err(r) = self.relay_check(mb) {
                    tracing::info!(client = %self.peer, recipient = %mb, reply = %r.code, "recipient refused");
                    return self.refuse_rcpt(&Address::from(mb), r);
                }
                Address::from(mb)
            }
        };
        if let Some(r) = self.suppression_refusal(&address) {
            return self.refuse_rcpt(&address, r);
        }
        if let Some(r) = self.routing_refusal(&address).filter(|_| !self.proxying()) {
            return self.refuse_rcpt(&address, r);
        }
        if let Some(r) = self.filter_rcpt(&address).await {
            return self.refuse_rcpt(&address, r);
        }
        let notify = params.notify.map(|n| Notify {
            never: n.never,
            success: n.success,
            failure: n.failure,
            delay: n.delay,
        });
        let rcpt = Recipient {
            address,
            notify,
            orcpt: params.orcpt,
        };
        if self.proxying() {
            return self.proxy_rcpt(rcpt).await;
        }
        if let Txn::Mail(draft) = &mut self.txn {
            draft.recipients.push(rcpt);
        }
        self.respond(Reply::recipient_ok())
    }

    /// A suppressed address is refused here when `[suppression] action = "reject"`.
    fn suppression_refusal(&self, address: &str) -> Option<Reply> {
        let ctx = &self.listener.ctx;
        if ctx.config.suppression.action != SuppressAction::Reject {
            return None;
        }
        let entry = ctx.feedback.suppression.contains(address)?;
        let why = reason_text(entry.reason);
        tracing::info!(client = %self.peer, recipient = %address, reason = why, "suppressed recipient refused");
        Some(Reply::suppressed(why))
    }

    /// The bare `<postmaster>` (RFC 5321 4.5.1) as `postmaster@` the first local domain, or this
    /// host's name: both were checked as domain names when the configuration was loaded.
    fn postmaster(&self) -> Address {
        let domain = self.listener.config.local_domains.first().cloned();
        Address::trusted(format!("postmaster@{}", domain.unwrap_or_else(|| self.hostname())))
    }

    fn relay_check(&self, mb: &Mailbox) -> Result<(), Reply> {
        if self.may_relay() {
            return Ok(());
        }
        let name = match &mb.domain {
            Domain::Literal(_) => return Err(Reply::relay_denied()),
            Domain::Name(name) => name.trim_end_matches('.').to_ascii_lowercase(),
        };
        if !self.listener.config.local_domains.contains(&name) {
            return Err(Reply::relay_denied());
        }
        // `user%other@local` and `other!user@local` ask a later hop to relay: never for outsiders.
        if mb.local.contains(['%', '!', '@']) {
            return Err(Reply::bad_recipient_address(
                "routing in the local part is not accepted",
            ));
        }
        Ok(())
    }

    /// A routing rule that refuses this recipient on the envelope alone answers at RCPT time.
    fn routing_refusal(&self, address: &str) -> Option<Reply> {
        let Txn::Mail(draft) = &self.txn else { return None };
        let view = self.view(&draft.sender);
        let r = self.listener.ctx.router.check_rcpt(&view, address)?;
        Some(Reply::policy(r.code, r.status, r.text))
    }
}
