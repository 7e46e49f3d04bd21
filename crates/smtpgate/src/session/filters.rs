//! The listener's `before_queue` filters at SMTP time: connect, EHLO, MAIL and RCPT hooks. At end
//! of data the message is intake's (`intake::take` runs them on the whole message).

use smtpgate_proto::Reply;

use super::{Session, Txn};
use crate::config::Stage;
use crate::envelope::{Address, Sender};
use crate::filter::Handle;
use crate::filter::{Action, SessionInfo, pipeline};
use crate::intake;

impl Session {
    pub(super) fn session_info(&self) -> SessionInfo {
        SessionInfo {
            client: Some(self.peer.ip()),
            helo: self.helo.as_ref().map(|h| h.name.clone()),
            user: self.user.clone(),
            listener: self.listener.config.name.clone(),
            tls: self.tls.is_some(),
        }
    }

    /// The listener's filters of one stage, in configured order.
    pub(super) fn listener_filters(&self, stage: Stage) -> Vec<&Handle> {
        intake::listener_filters(&self.listener.ctx, &self.listener.config, stage)
    }

    /// The connect hooks: a refusal is sent instead of the greeting.
    pub(super) async fn filter_connect(&mut self) -> Option<Reply> {
        let filters = self.listener_filters(Stage::BeforeQueue);
        refusal(pipeline::run_connect(&filters, &self.session_info()).await)
    }

    /// The EHLO/HELO hooks (`helo` is already set in the session info).
    pub(super) async fn filter_ehlo(&mut self) -> Option<Reply> {
        let filters = self.listener_filters(Stage::BeforeQueue);
        refusal(pipeline::run_ehlo(&filters, &self.session_info()).await)
    }

    /// The MAIL hooks (they see the HELO name too).
    pub(super) async fn filter_mail(&mut self, sender: &Sender) -> Option<Reply> {
        let filters = self.listener_filters(Stage::BeforeQueue);
        refusal(pipeline::run_mail(&filters, &self.session_info(), sender).await)
    }

    /// The RCPT hooks.
    pub(super) async fn filter_rcpt(&mut self, rcpt: &Address) -> Option<Reply> {
        let Txn::Mail(draft) = &self.txn else { return None };
        let filters = self.listener_filters(Stage::BeforeQueue);
        refusal(pipeline::run_rcpt(&filters, &self.session_info(), &draft.sender, rcpt).await)
    }
}

/// A hook's refusal as a reply; quarantine and discard only make sense for a whole message.
fn refusal(action: Action) -> Option<Reply> {
    match action {
        Action::Reject(r) | Action::TempFail(r) => Some(r),
        _ => None,
    }
}
