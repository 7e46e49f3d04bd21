//! Running the listener's `before_queue` filters from the session, and acting on their verdicts.

use smtpgate_proto::Reply;

use super::{Draft, Flow, Session, Txn};
use crate::config::{FilterConfig, Stage};
use crate::envelope::{QueueId, Recipient};
use crate::filter::{Action, SessionInfo, pipeline};
use crate::route::Group;

/// One routed copy, ready to spool.
pub(super) struct Copy {
    pub group: Group,
    pub message: Vec<u8>,
    /// After-queue filters: the listener's, then the route's.
    pub scan: Vec<String>,
}

/// What the filters left of a message that goes on.
pub(super) struct Filtered {
    pub body: Vec<u8>,
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
    pub(super) fn listener_filters(&self, stage: Stage) -> Vec<&FilterConfig> {
        let all = &self.listener.ctx.config.filters;
        self.listener
            .config
            .filters
            .iter()
            .filter_map(|n| all.iter().find(|f| &f.name == n))
            .filter(|f| f.stage == stage)
            .collect()
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
    pub(super) async fn filter_mail(&mut self, sender: &str) -> Option<Reply> {
        let filters = self.listener_filters(Stage::BeforeQueue);
        refusal(pipeline::run_mail(&filters, &self.session_info(), sender).await)
    }

    /// The RCPT hooks.
    pub(super) async fn filter_rcpt(&mut self, rcpt: &str) -> Option<Reply> {
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
        body: Vec<u8>,
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
        let info = self.session_info();
        let rcpts: Vec<String> = draft.recipients.iter().map(|r| r.address.clone()).collect();
        let out = pipeline::run_data(&filters, &info, &draft.sender, rcpts, body, Vec::new()).await;
        let by = out.decided_by.clone().unwrap_or_default();
        match out.action {
            Action::Accept => {
                keep_recipients(draft, &out.recipients);
                Ok(Filtered {
                    body: out.message,
                    tags: out.tags,
                    scan,
                })
            }
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
            Action::Quarantine(reason) => Err(self.quarantine(id, draft, &out.message, &reason, &by)),
        }
    }

    /// Builds each routed copy (header changes) and runs its route's before-queue filters. A
    /// refusal by any of them refuses the whole message; nothing is spooled before all have run.
    pub(super) async fn prepare_copies(
        &mut self,
        id: QueueId,
        draft: &Draft,
        body: &[u8],
        groups: Vec<Group>,
        filtered: &Filtered,
    ) -> Result<Vec<Copy>, Flow> {
        let mut copies = Vec::with_capacity(groups.len());
        let info = self.session_info();
        for group in groups {
            let message = super::headers::apply_changes(body, &group.add_headers, &group.remove_headers);
            let (before, after) = self.route_filters(&group.filters);
            let mut scan = filtered.scan.clone();
            scan.extend(after.into_iter().filter(|n| !filtered.scan.contains(n)));
            if before.is_empty() {
                copies.push(Copy { group, message, scan });
                continue;
            }
            let rcpts: Vec<String> = group.recipients.iter().map(|r| r.address.clone()).collect();
            let out = pipeline::run_data(&before, &info, &draft.sender, rcpts, message, filtered.tags.clone()).await;
            let by = out.decided_by.clone().unwrap_or_default();
            match out.action {
                Action::Accept => copies.push(Copy {
                    group,
                    message: out.message,
                    scan,
                }),
                Action::Reject(r) | Action::TempFail(r) => {
                    self.listener.ctx.metrics.filter_rejected.inc();
                    tracing::info!(queue_id = %id, filter = %by, reply = %r.code, "message refused by a route filter");
                    return Err(self.respond(r));
                }
                Action::Discard => {
                    self.listener.ctx.metrics.filter_discarded.inc();
                    tracing::info!(queue_id = %id, filter = %by, "copy discarded by a route filter");
                }
                Action::Quarantine(reason) => {
                    let mut env = self.envelope(self.listener.ctx.ids.next(), draft, &out.message);
                    env.recipients = group.recipients;
                    if let Err(e) = self.listener.ctx.quarantine.put(&env, &out.message, &reason, &by) {
                        tracing::error!(queue_id = %id, error = %e, "cannot write to the quarantine");
                        return Err(self.respond(Reply::local_error()));
                    }
                    self.listener.ctx.metrics.quarantined.inc();
                }
            }
        }
        Ok(copies)
    }

    /// A route's filters split by stage: (before the queue, after it by name).
    fn route_filters(&self, names: &[String]) -> (Vec<&FilterConfig>, Vec<String>) {
        let all = &self.listener.ctx.config.filters;
        let found: Vec<&FilterConfig> = names.iter().filter_map(|n| all.iter().find(|f| &f.name == n)).collect();
        let after = found
            .iter()
            .filter(|f| f.stage == Stage::AfterQueue)
            .map(|f| f.name.clone())
            .collect();
        (
            found.into_iter().filter(|f| f.stage == Stage::BeforeQueue).collect(),
            after,
        )
    }

    fn quarantine(&mut self, id: QueueId, draft: &Draft, message: &[u8], reason: &str, filter: &str) -> Flow {
        let env = self.envelope(id, draft, message);
        match self.listener.ctx.quarantine.put(&env, message, reason, filter) {
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

/// Applies the filters' recipient changes: removed ones go, added ones join.
fn keep_recipients(draft: &mut Draft, wanted: &[String]) {
    draft
        .recipients
        .retain(|r| wanted.iter().any(|w| w.eq_ignore_ascii_case(&r.address)));
    for w in wanted {
        if !draft.recipients.iter().any(|r| r.address.eq_ignore_ascii_case(w)) {
            draft.recipients.push(Recipient::new(w.clone()));
        }
    }
}
