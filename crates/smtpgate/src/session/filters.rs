//! Running the listener's `before_queue` filters from the session, and acting on their verdicts.

use smtpgate_proto::Reply;

use super::{Draft, Flow, Session, Txn};
use crate::config::Stage;
use crate::envelope::{Address, QueueId, Sender};
use crate::filter::Handle;
use crate::filter::{Action, SessionInfo, pipeline};
use crate::intake;
use crate::quarantine::{Origin, Resume};
use crate::spool::Content;

/// What the filters left of a message that goes on.
pub(super) struct Filtered {
    pub body: Content,
    pub tags: Vec<String>,
    /// `after_queue` filters to run before delivery.
    pub scan: Vec<String>,
}

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
        let mut filters = self.listener.ctx.filters.named(&self.listener.config.filters);
        filters.retain(|f| f.stage == stage);
        filters
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

    /// Runs the before-queue filters on a complete message. `Err(flow)` means the message was
    /// answered (refused, quarantined or dropped) and the transaction is over.
    pub(super) async fn filter_message(
        &mut self,
        id: QueueId,
        draft: &mut Draft,
        body: Content,
    ) -> Result<Filtered, Flow> {
        let scan: Vec<String> = self
            .listener_filters(Stage::AfterQueue)
            .iter()
            .map(|f| f.name.clone())
            .collect();
        let filters = self.listener_filters(Stage::BeforeQueue);
        if filters.is_empty() {
            return Ok(Filtered {
                body,
                tags: Vec::new(),
                scan,
            });
        }
        // Filters read the whole message: one copy in memory.
        let body = match body.into_memory().await {
            Ok(b) => b,
            Err(e) => {
                tracing::error!(queue_id = %id, error = %e, "cannot read the incoming message for its filters");
                return Err(self.respond(Reply::local_error()));
            }
        };
        let info = self.session_info();
        let rcpts: Vec<Address> = draft.recipients.iter().map(|r| r.address.clone()).collect();
        let out = pipeline::run_data(&filters, &info, &draft.sender, rcpts, body, Vec::new()).await;
        self.listener
            .ctx
            .metrics
            .filter_unchecked
            .add(out.unchecked.len() as u64);
        let by = out.decided_by.clone().unwrap_or_default();
        intake::keep_recipients(&mut draft.recipients, &out.recipients);
        match out.action {
            Action::Accept => Ok(Filtered {
                body: Content::memory(out.message),
                tags: out.tags,
                scan,
            }),
            Action::Reject(r) | Action::TempFail(r) => {
                self.listener.ctx.metrics.filter_rejected.inc();
                tracing::info!(queue_id = %id, client = %self.peer, filter = %by, reply = %r.code, "message refused by filter");
                Err(self.respond(r))
            }
            Action::Discard => {
                self.listener.ctx.metrics.filter_discarded.inc();
                tracing::info!(queue_id = %id, filter = %by, "message discarded by filter");
                Err(self.respond(Reply::queued(&id.to_string())))
            }
            Action::Quarantine(reason) => {
                let resume = Resume::Listener {
                    origin: Origin::from(&info),
                    tags: out.tags,
                    filters: intake::names_after(&filters, &by),
                    scan,
                };
                Err(self.quarantine(id, draft, out.message, &reason, &by, resume).await)
            }
        }
    }

    async fn quarantine(
        &mut self,
        id: QueueId,
        draft: &Draft,
        message: Vec<u8>,
        reason: &str,
        filter: &str,
        resume: Resume,
    ) -> Flow {
        let env = self.envelope(id, draft, message.is_ascii());
        let quarantine = self.listener.ctx.quarantine.clone();
        let stored = quarantine
            .store(env, message, reason.to_owned(), filter.to_owned(), resume)
            .await;
        match stored {
            Ok(_) => {
                self.listener.ctx.metrics.quarantined.inc();
                tracing::info!(queue_id = %id, filter, reason, "message quarantined");
                self.respond(Reply::queued(&id.to_string()))
            }
            Err(e) => {
                tracing::error!(queue_id = %id, error = %e, "cannot write to the quarantine");
                self.respond(Reply::local_error())
            }
        }
    }
}

/// A hook's refusal as a reply; quarantine and discard only make sense for a whole message.
fn refusal(action: Action) -> Option<Reply> {
    match action {
        Action::Reject(r) | Action::TempFail(r) => Some(r),
        _ => None,
    }
}
