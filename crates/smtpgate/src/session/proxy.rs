//! Inline proxy mode (`mode = "proxy"`): each transaction is forwarded live to its routed upstream.
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

use super::filters::Filtered;
use super::{Draft, Flow, Session, Txn};
use crate::config::ListenerMode;
use crate::deliver::{ConnectFailure, Outcome};
use crate::envelope::{Address, Envelope, QueueId, Recipient, Sender};
use crate::intake;
use crate::route::Group;
use crate::spool::Content;
use crate::upstream::client::{Client, ClientError};
use crate::upstream::pool::Lease;

/// Where a transaction goes: every recipient of one transaction must share it, since the
/// message is sent once, as one copy.
#[derive(Debug, Clone, PartialEq, Eq)]
struct RouteKey {
    pool: Option<String>,
    /// The recipients' domain, for MX delivery (`pool` is `None`).
    domain: String,
    add_headers: Vec<(String, String)>,
    remove_headers: Vec<String>,
    srs_sender: Option<Address>,
    filters: Vec<String>,
}

impl RouteKey {
    /// `None` when the group goes by MX to several domains: that is several upstreams.
    fn of(group: &Group) -> Option<RouteKey> {
        let domain = match group.pool {
            Some(_) => String::new(),
            None => {
                let first = group.recipients.first()?.domain();
                if group.recipients.iter().any(|r| r.domain() != first) {
                    return None;
                }
                first
            }
        };
        Some(RouteKey {
            pool: group.pool.clone(),
            domain,
            add_headers: group.add_headers.clone(),
            remove_headers: group.remove_headers.clone(),
            srs_sender: group.srs_sender.clone(),
            filters: group.filters.clone(),
        })
    }

    fn describe(&self) -> String {
        match &self.pool {
            Some(pool) => format!("pool {pool}"),
            None => format!("MX of {}", self.domain),
        }
    }
}

/// The connection to the upstream: lent by a pool, or opened to an MX for this session.
enum Link {
    Pool(Lease),
    Mx(Box<Client>),
}

impl Link {
    fn client(&mut self) -> &mut Client {
        match self {
            Link::Pool(lease) => lease.client(),
            Link::Mx(client) => client,
        }
    }

    async fn finish(self, usable: bool, delivered: bool, per_connection: usize) {
        match self {
            Link::Pool(lease) => lease.finish(usable, delivered, per_connection).await,
            Link::Mx(client) if usable => client.quit().await,
            Link::Mx(_) => {}
        }
    }
}

/// The upstream side of a proxied transaction.
pub(super) struct Upstream {
    route: RouteKey,
    link: Link,
    /// Each recipient the client got a `250` for, with the addresses it went upstream as (none when
    /// routing discarded it).
    accepted: Vec<(Address, Vec<Recipient>)>,
    /// A transaction is open upstream: it needs RSET before the connection is reused.
    open: bool,
    /// The upstream accepted the message.
    delivered: bool,
}

impl Upstream {
    fn recipients(&self) -> Vec<Recipient> {
        self.accepted.iter().flat_map(|(_, r)| r.iter().cloned()).collect()
    }
}

/// The state of proxying in a session.
#[derive(Default)]
pub(super) struct Proxy {
    upstream: Option<Upstream>,
    /// The upstream connection broke after it had accepted recipients: the transaction can only fail.
    lost: bool,
}

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
                self.proxy.upstream = Some(Upstream {
                    route,
                    link,
                    accepted: Vec::new(),
                    open: true,
                    delivered: false,
                });
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
        if let Some(up) = self.proxy.upstream.take() {
            self.proxy.lost = !up.accepted.is_empty();
            up.link.finish(false, false, 0).await;
        }
        self.respond(Reply::upstream_lost())
    }

    /// The envelope as the upstream sees it (at RCPT time: no body yet).
    fn upstream_envelope(&self, draft: &Draft, srs_sender: Option<Address>) -> Envelope {
        let mut env = self.envelope(QueueId(0), draft, true);
        env.eight_bit = matches!(draft.params.body, Some(Body::EightBitMime));
        if let Some(sender) = srs_sender {
            env.sender = Sender::Mailbox(sender);
        }
        env
    }

    /// The end of a proxied message, after the listener's before-queue filters: the route's header
    /// changes and filters, then DATA upstream; the client gets the upstream's answer.
    pub(super) async fn proxy_message(
        &mut self,
        id: QueueId,
        draft: &Draft,
        body: Vec<u8>,
        filtered: Filtered,
    ) -> Flow {
        let Some(mut up) = self.proxy.upstream.take() else {
            if self.proxy.lost {
                return self.respond(Reply::upstream_lost());
            }
            tracing::info!(queue_id = %id, client = %self.peer, "every recipient was discarded by routing");
            return self.respond(Reply::queued(&id.to_string()));
        };
        if let Err(flow) = self.apply_recipient_changes(&mut up, draft).await {
            return flow;
        }
        let rcpts = up.recipients();
        if rcpts.is_empty() {
            self.proxy.upstream = Some(up);
            tracing::info!(queue_id = %id, "every forwarded recipient was removed by filters");
            return self.respond(Reply::queued(&id.to_string()));
        }
        let group = Group {
            pool: up.route.pool.clone(),
            recipients: rcpts,
            add_headers: up.route.add_headers.clone(),
            remove_headers: up.route.remove_headers.clone(),
            srs_sender: up.route.srs_sender.clone(),
            filters: up.route.filters.clone(),
            stream: None,
        };
        let received = intake::Received {
            id,
            env: self.envelope(id, draft, body.is_ascii()),
            body: Content::memory(body),
            tags: filtered.tags,
            scan: filtered.scan,
        };
        let ctx = self.listener.ctx.clone();
        let copies = intake::prepare(&ctx, &self.session_info(), &received, vec![group]).await;
        let message = match copies.map(|c| c.into_iter().next()) {
            // The listener's message is in memory (`complete` reads it whole for a proxy).
            Ok(Some(copy)) => match copy.message.into_memory().await {
                Ok(m) => m,
                Err(e) => {
                    tracing::error!(queue_id = %id, error = %e, "cannot read the incoming message");
                    self.proxy.upstream = Some(up);
                    return self.respond(Reply::local_error());
                }
            },
            Ok(None) => {
                // Discarded or quarantined by the route's filters.
                self.proxy.upstream = Some(up);
                return self.respond(Reply::queued(&id.to_string()));
            }
            Err(reply) => {
                self.proxy.upstream = Some(up);
                return self.respond(reply);
            }
        };
        let sent = up.link.client().send_data(&message).await;
        let reply = match sent {
            Ok(reply) => reply,
            Err(e) => {
                tracing::warn!(queue_id = %id, error = %e, "upstream connection lost at end of data");
                up.link.finish(false, false, 0).await;
                return self.respond(Reply::upstream_lost());
            }
        };
        let metrics = &self.listener.ctx.metrics;
        up.delivered = reply.is_positive();
        up.open = !up.delivered;
        if up.delivered {
            let relayed: Vec<String> = up.recipients().iter().map(|r| r.address.to_string()).collect();
            self.listener.ctx.feedback.record_sent(&message, id, &relayed);
            metrics.proxied.inc();
        } else {
            metrics.proxy_refused.inc();
        }
        tracing::info!(
            queue_id = %id, client = %self.peer, sender = %draft.sender, recipients = draft.recipients.len(),
            size = message.len(), upstream = %up.link.client().remote, reply = %reply.to_string_line(), "message proxied"
        );
        self.proxy.upstream = Some(up);
        self.respond(Reply::relayed(&reply))
    }

    /// Filters may have removed recipients the upstream already accepted: start the upstream
    /// transaction again with those that remain. Recipients a filter added are not forwarded
    /// (they were never routed; logged).
    async fn apply_recipient_changes(&mut self, up: &mut Upstream, draft: &Draft) -> Result<(), Flow> {
        let wanted = |addr: &str| draft.recipients.iter().any(|r| r.address.eq_ignore_ascii_case(addr));
        for added in draft
            .recipients
            .iter()
            .filter(|r| !up.accepted.iter().any(|(a, _)| a.eq_ignore_ascii_case(&r.address)))
        {
            tracing::warn!(recipient = %added.address, "a recipient added by a filter is not forwarded in proxy mode");
        }
        if up.accepted.iter().all(|(a, _)| wanted(a)) {
            return Ok(());
        }
        up.accepted.retain(|(a, _)| wanted(a));
        let rcpts = up.recipients();
        let env = self.upstream_envelope(draft, up.route.srs_sender.clone());
        let client = up.link.client();
        let restarted = async {
            client.reset().await?;
            if rcpts.is_empty() {
                return Ok(None);
            }
            let refs: Vec<&Recipient> = rcpts.iter().collect();
            client.begin(&env, draft.params.size, &refs).await.map(Some)
        }
        .await;
        match restarted {
            Ok(None) => {
                up.open = false;
                Ok(())
            }
            Ok(Some((mail, replies))) if mail.is_positive() && replies.iter().all(|r| r.is_positive()) => Ok(()),
            Ok(Some((mail, replies))) => {
                let refusal = replies.iter().find(|r| !r.is_positive()).unwrap_or(&mail);
                tracing::info!(reply = %refusal.to_string_line(), "upstream refused the transaction after filters changed its recipients");
                Err(self.respond(Reply::relayed(refusal)))
            }
            Err(e) => Err(self.upstream_broke(&e).await),
        }
    }

    /// Ends the upstream side of a transaction that is over (completed, reset or abandoned): RSET
    /// if it is still open there, then the connection goes back to its pool (or is closed).
    pub(super) async fn proxy_release(&mut self) {
        self.proxy.lost = false;
        let Some(mut up) = self.proxy.upstream.take() else {
            return;
        };
        let usable = !up.open || up.link.client().reset().await.is_ok();
        let per_connection = self.listener.ctx.config.queue.messages_per_connection;
        up.link.finish(usable, up.delivered, per_connection).await;
    }

    /// Whether an upstream transaction is left over after a command that ended the transaction.
    pub(super) fn proxy_pending(&self) -> bool {
        matches!(self.txn, Txn::Idle) && (self.proxy.upstream.is_some() || self.proxy.lost)
    }
}
