//! MAIL FROM: starts a transaction.

use smtpgate_proto::{Body, MailParams, Reply, ReversePath};

use super::{Draft, Flow, Session, Txn};
use crate::envelope::Sender;

impl Session {
    pub(super) async fn mail(&mut self, from: ReversePath, params: MailParams) -> Flow {
        let Some(helo) = &self.helo else {
            return self.error(Reply::bad_sequence("send EHLO or HELO first"));
        };
        if !matches!(self.txn, Txn::Idle) {
            return self.error(Reply::bad_sequence("nested MAIL command"));
        }
        if self.listener.config.require_tls && self.tls.is_none() {
            return self.refuse_mail(&Sender::from(&from), Reply::tls_required());
        }
        if !helo.extended && (params.size.is_some() || params.body.is_some() || params.smtputf8) {
            return self.error(Reply::unknown_parameter("(ESMTP parameters need EHLO)"));
        }
        if matches!(params.body, Some(Body::BinaryMime)) {
            return self.error(Reply::unknown_parameter("BODY=BINARYMIME"));
        }
        let size = params.size.unwrap_or(0);
        if size > self.listener.config.max_message_size {
            return self.error(Reply::message_too_big());
        }
        if let Some(r) = self.storage_check(size).filter(|_| !self.proxying()) {
            return self.respond(r);
        }
        if self.listener.ctx.memory.exhausted() {
            tracing::warn!(client = %self.peer, held = self.listener.ctx.memory.used(), "memory budget for messages used up: refusing a new transaction");
            return self.respond(Reply::low_memory());
        }
        if from.mailbox().is_some_and(|m| m.is_utf8()) && !params.smtputf8 {
            return self.error(Reply::need_smtputf8());
        }
        let sender = Sender::from(&from);
        if let Some(r) = self.filter_mail(&sender).await {
            return self.refuse_mail(&sender, r);
        }
        self.reply(
            Reply::sender_ok(),
            Txn::Mail(Draft {
                sender,
                params,
                recipients: Vec::new(),
            }),
        )
    }

    /// Refuses a transaction while the spool's disk is short of space (RFC 5321 4.5.3.1.10).
    fn storage_check(&self, size: u64) -> Option<Reply> {
        let ctx = &self.listener.ctx;
        match ctx.spool.free_space() {
            Ok(free) if free >= ctx.config.spool.min_free_space.saturating_add(size) => None,
            Ok(free) => {
                tracing::warn!(free, "spool disk is short of space: refusing mail");
                Some(Reply::low_disk())
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot check spool free space");
                Some(Reply::local_error())
            }
        }
    }
}
