//! Inline proxy mode (`mode = "proxy"`): each transaction is forwarded live to its routed upstream.
//! This is the SMTP side, up to RCPT; at end of data the upstream transaction is intake's sink
//! (`intake::proxy::ProxySink`).
//!
//! EHLO, STARTTLS and AUTH stay local, and so do the checks on MAIL. The first recipient picks the
//! upstream (routing on the envelope alone: [`Router::plan_envelope`]) and opens the upstream
//! transaction with MAIL and RCPT pipelined; every RCPT gets the upstream's own answer. The message
//! is received whole, goes through the before-queue filters and its route's header changes and
//! filters, then goes upstream with DATA, and the client gets the upstream's answer to the end of
//! data. Nothing is spooled: a `250` from a proxy listener means the upstream took the message.
//!
//! ```text
//! client ── MAIL ──> local checks, filters ──> 250 (local)
//!        ── RCPT ──> local checks, routing ──> upstream MAIL+RCPT ──> upstream's reply
//!        ── DATA ──> 354 (local), message, filters, header changes ──> upstream DATA ──> its reply
//! ```
//!
//! [`Router::plan_envelope`]: crate::route::Router::plan_envelope

use smtpgate_proto::{Body, ParsedReply, Reply};

use super::{Draft, Flow, Session, Txn};
use crate::config::ListenerMode;
use crate::deliver::{ConnectFailure, Outcome};
use crate::envelope::{Address, Envelope, QueueId, Recipient, Sender};
use crate::intake::proxy::{Link, RouteKey, Upstream};
use crate::upstream::client::ClientError;

impl Session {
    pub(super) fn proxying(&self) -> bool {
        self.listener.config.mode == ListenerMode::Proxy
    }

    /// RCPT in proxy mode, after the local checks: route the recipient, open or extend the upstream
    /// transaction, and answer with the upstream's reply.
    pub(super) async fn proxy_rcpt(&mut self, rcpt: Recipient) -> Flow {
        let Txn::Mail(draft) = &self.txn else {
            return self.error(Reply::bad_sequence("need MAIL before RCPT"));
        };
        if self.proxy.lost {
            return self.respond(Reply::upstream_lost());
        }
        let plan = self.listener.ctx.router.plan_envelope(&self.view(&draft.sender), &rcpt);
        if let Some(r) = plan.reject {
            return self.error(Reply::policy(r.code, r.status, r.text));
        }
        let mut groups = plan.groups.into_iter();
        let (group, more) = (groups.next(), groups.next());
        let group = match (group, more) {
            (None, _) => {
                tracing::info!(client = %self.peer, recipient = %rcpt.address, "recipient discarded by routing");
                return self.proxy_accepted(rcpt, Vec::new(), Reply::recipient_ok());
            }
            (Some(group), None) => group,
            (Some(_), Some(_)) => return self.respond(Reply::not_proxyable()),
        };
        let Some(key) = RouteKey::of(&group) else {
            return self.respond(Reply::not_proxyable());
        };
        if self.proxy.upstream.as_ref().is_some_and(|up| up.route != key) {
            return self.respond(Reply::other_upstream());
        }
        let rcpts: Vec<&Recipient> = group.recipients.iter().collect();
        let replies = match &mut self.proxy.upstream {
            Some(up) => up.link.client().add_recipients(&rcpts).await,
            None => match self.open_upstream(key, &rcpts).await {
                Ok(replies) => Ok(replies),
                Err(reply) => return self.relay(reply),
            },
        };
        let replies = match replies {
            Ok(r) => r,
            Err(e) => return self.upstream_broke(&e).await,
        };
        let taken: Vec<Recipient> = group
            .recipients
            .iter()
            .zip(&replies)
            .filter(|(_, r)| r.is_positive())
            .map(|(rcpt, _)| rcpt.clone())
            .collect();
        let best = replies.iter().find(|r| r.is_positive()).unwrap_or(&replies[0]);
        let reply = Reply::relayed(best);
        if taken.is_empty() {
            tracing::info!(client = %self.peer, recipient = %rcpt.address, reply = %reply, "recipient refused by upstream");
            return self.relay(reply);
        }
        self.proxy_accepted(rcpt, taken, reply)
    }

    /// Records a recipient the client gets `reply` (positive) for.
    fn proxy_accepted(&mut self, rcpt: Recipient, upstream: Vec<Recipient>, reply: Reply) -> Flow {
        if let Some(up) = &mut self.proxy.upstream {
            up.accepted.push((rcpt.address.clone(), upstream));
        }
        if let Txn::Mail(draft) = &mut self.txn {
            draft.recipients.push(rcpt);
        }
        self.respond(reply)
    }

    /// A refusal relayed from upstream counts as a client error when it is permanent (as a local
    /// refusal would), so a session cannot probe addresses without limit.
    fn relay(&mut self, reply: Reply) -> Flow {
        if reply.is_permanent() {
            self.error(reply)
        } else {
            self.respond(reply)
        }
    }

    /// Connects to the route's upstream and sends MAIL and the first recipients. `Err` is the
    /// reply for the client when that failed.
    async fn open_upstream(&mut self, route: RouteKey, rcpts: &[&Recipient]) -> Result<Vec<ParsedReply>, Reply> {
        let Txn::Mail(draft) = &self.txn else {
            return Err(Reply::bad_sequence("need MAIL before RCPT"));
        };
        let env = self.upstream_envelope(draft, route.srs_sender.clone());
        let size = draft.params.size;
        let ctx = self.listener.ctx.clone();
        // Proxied sessions share the pool's connection caps with the queue: wait for a free
        // connection no longer than a connection may take to open.
        let connecting = async {
            match &route.pool {
                Some(pool) => ctx
                    .pools
                    .lease(pool)
                    .await
                    .map(Link::Pool)
                    .map_err(ConnectFailure::from),
                None => crate::deliver::connect_mx(&ctx, &route.domain)
                    .await
                    .map(|c| Link::Mx(Box::new(c))),
            }
        };
        let wait = ctx.config.queue.connect_timeout;
        let connected = tokio::time::timeout(wait, connecting).await.unwrap_or_else(|_| {
            Err(ConnectFailure::transient(
                "4.4.1",
                format!("no upstream connection free within {wait:?}"),
            ))
        });
        let mut link = match connected {
            Ok(link) => link,
            Err(ConnectFailure { outcome }) => {
                tracing::warn!(client = %self.peer, upstream = %route.describe(), outcome = ?outcome, "no upstream for a proxied transaction");
                return Err(match outcome {
                    Outcome::Permanent(reply) => Reply::undeliverable(reply.dsn_status().into_owned(), reply.text),
                    _ => Reply::upstream_unavailable(),
                });
            }
        };
        let per_connection = ctx.config.queue.messages_per_connection;
        if !link.client().can_take(&env) {
            link.finish(true, false, per_connection).await;
            return Err(Reply::upstream_lacks_smtputf8());
        }
        match link.client().begin(&env, size, rcpts).await {
            Ok((mail, replies)) if mail.is_positive() => {
                tracing::debug!(client = %self.peer, upstream = %link.client().remote, "proxied transaction opened");
                self.proxy.upstream = Some(Upstream::opened(route, link));
                Ok(replies)
            }
            Ok((mail, _)) => {
                tracing::info!(client = %self.peer, reply = %mail.to_string_line(), "sender refused by upstream");
                link.finish(true, false, per_connection).await;
                Err(Reply::relayed(&mail))
            }
            Err(e) => {
                tracing::warn!(client = %self.peer, error = %e, "upstream failed at the start of a proxied transaction");
                link.finish(false, false, per_connection).await;
                Err(Reply::upstream_unavailable())
            }
        }
    }

    /// The upstream connection failed mid-transaction: recipients it had accepted are lost with it.
    async fn upstream_broke(&mut self, e: &ClientError) -> Flow {
        tracing::warn!(client = %self.peer, error = %e, "upstream connection lost during a proxied transaction");
        self.proxy.broke().await;
        self.respond(Reply::upstream_lost())
    }

    /// The envelope as the upstream sees it (at RCPT time: no body yet).
    pub(super) fn upstream_envelope(&self, draft: &Draft, srs_sender: Option<Address>) -> Envelope {
        let mut env = self.envelope(QueueId(0), draft, true);
        env.eight_bit = matches!(draft.params.body, Some(Body::EightBitMime));
        if let Some(sender) = srs_sender {
            env.sender = Sender::Mailbox(sender);
        }
        env
    }

    /// Ends the upstream side of a transaction that is over (completed, reset or abandoned): RSET
    /// if it is still open there, then the connection goes back to its pool (or is closed).
    pub(super) async fn proxy_release(&mut self) {
        let per_connection = self.listener.ctx.config.queue.messages_per_connection;
        self.proxy.release(per_connection).await;
    }

    /// Whether an upstream transaction is left over after a command that ended the transaction.
    pub(super) fn proxy_pending(&self) -> bool {
        matches!(self.txn, Txn::Idle) && (self.proxy.upstream.is_some() || self.proxy.lost)
    }
}
