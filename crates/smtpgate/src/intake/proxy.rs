//! The inline proxy as a sink (`mode = "proxy"`): the upstream transaction a session opened at
//! RCPT time, and the end of data that sends the message's one copy there. The client gets the
//! upstream's answer; nothing is spooled. The RCPT side (routing each recipient, opening and
//! extending the upstream transaction) belongs to the session (`session/proxy.rs`).

use std::net::SocketAddr;

use smtpgate_proto::Reply;

use super::copies::Copy;
use super::sink::Sink;
use super::{Disposition, Dropped, Filtered, Taken};
use crate::context::Context;
use crate::envelope::{Address, Envelope, Recipient, Sender, SessionInfo};
use crate::filter::BoxFuture;
use crate::route::Group;
use crate::upstream::client::Client;
use crate::upstream::pool::Lease;

/// Where a transaction goes: every recipient of one transaction must share it, since the
/// message is sent once, as one copy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteKey {
    pub pool: Option<String>,
    /// The recipients' domain, for MX delivery (`pool` is `None`).
    pub domain: String,
    add_headers: Vec<(String, String)>,
    remove_headers: Vec<String>,
    pub srs_sender: Option<Address>,
    filters: Vec<String>,
}

impl RouteKey {
    /// `None` when the group goes by MX to several domains: that is several upstreams.
    pub fn of(group: &Group) -> Option<RouteKey> {
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

    pub fn describe(&self) -> String {
        match &self.pool {
            Some(pool) => format!("pool {pool}"),
            None => format!("MX of {}", self.domain),
        }
    }

    /// The one group the message's copy goes to, with `recipients`.
    fn group(&self, recipients: Vec<Recipient>) -> Group {
        Group {
            pool: self.pool.clone(),
            recipients,
            add_headers: self.add_headers.clone(),
            remove_headers: self.remove_headers.clone(),
            srs_sender: self.srs_sender.clone(),
            filters: self.filters.clone(),
            stream: None,
            route: None,
        }
    }
}

/// The connection to the upstream: lent by a pool, or opened to an MX for this session.
pub enum Link {
    Pool(Lease),
    Mx(Box<Client>),
}

impl Link {
    pub fn client(&mut self) -> &mut Client {
        match self {
            Link::Pool(lease) => lease.client(),
            Link::Mx(client) => client,
        }
    }

    pub async fn finish(self, usable: bool, delivered: bool, per_connection: usize) {
        match self {
            Link::Pool(lease) => lease.finish(usable, delivered, per_connection).await,
            Link::Mx(client) if usable => client.quit().await,
            Link::Mx(_) => {}
        }
    }
}

/// The upstream side of a proxied transaction.
pub struct Upstream {
    pub route: RouteKey,
    pub link: Link,
    /// Each recipient the client got a `250` for, with the addresses it went upstream as (none when
    /// routing discarded it).
    pub accepted: Vec<(Address, Vec<Recipient>)>,
    /// A transaction is open upstream: it needs RSET before the connection is reused.
    pub open: bool,
    /// The upstream accepted the message.
    pub delivered: bool,
}

impl Upstream {
    /// A transaction just opened upstream.
    pub fn opened(route: RouteKey, link: Link) -> Upstream {
        Upstream {
            route,
            link,
            accepted: Vec::new(),
            open: true,
            delivered: false,
        }
    }

    pub fn recipients(&self) -> Vec<Recipient> {
        self.accepted.iter().flat_map(|(_, r)| r.iter().cloned()).collect()
    }
}

/// The state of proxying in a session.
#[derive(Default)]
pub struct Proxy {
    pub upstream: Option<Upstream>,
    /// The upstream connection broke after it had accepted recipients: the transaction can only fail.
    pub lost: bool,
}

impl Proxy {
    /// The upstream connection failed mid-transaction: recipients it had accepted are lost with it.
    pub async fn broke(&mut self) {
        if let Some(up) = self.upstream.take() {
            self.lost = !up.accepted.is_empty();
            up.link.finish(false, false, 0).await;
        }
    }

    /// Ends the upstream side of a transaction that is over (completed, reset or abandoned): RSET
    /// if it is still open there, then the connection goes back to its pool (or is closed).
    pub async fn release(&mut self, per_connection: usize) {
        self.lost = false;
        let Some(mut up) = self.upstream.take() else {
            return;
        };
        let usable = !up.open || up.link.client().reset().await.is_ok();
        up.link.finish(usable, up.delivered, per_connection).await;
    }
}

/// The proxy at end of data: the session's upstream transaction takes the message.
pub struct ProxySink<'p> {
    proxy: &'p mut Proxy,
    /// The client, for logs.
    peer: SocketAddr,
    /// The envelope as the upstream saw it at MAIL (for starting again when filters removed
    /// recipients).
    upstream_env: Envelope,
    /// The SIZE the client declared.
    size: Option<u64>,
}

impl<'p> ProxySink<'p> {
    pub fn new(proxy: &'p mut Proxy, peer: SocketAddr, upstream_env: Envelope, size: Option<u64>) -> ProxySink<'p> {
        ProxySink {
            proxy,
            peer,
            upstream_env,
            size,
        }
    }

    /// Filters may have removed recipients the upstream already accepted: start the upstream
    /// transaction again with those that remain. Recipients a filter added are not forwarded
    /// (they were never routed; logged). `Err` is the reply for the client; the upstream is then
    /// given up.
    async fn apply_recipient_changes(&mut self, up: &mut Upstream, wanted: &[Recipient]) -> Result<(), Reply> {
        let kept = |addr: &str| wanted.iter().any(|r| r.address.eq_ignore_ascii_case(addr));
        for added in wanted
            .iter()
            .filter(|r| !up.accepted.iter().any(|(a, _)| a.eq_ignore_ascii_case(&r.address)))
        {
            tracing::warn!(recipient = %added.address, "a recipient added by a filter is not forwarded in proxy mode");
        }
        if up.accepted.iter().all(|(a, _)| kept(a)) {
            return Ok(());
        }
        up.accepted.retain(|(a, _)| kept(a));
        let rcpts = up.recipients();
        let mut env = self.upstream_env.clone();
        if let Some(sender) = up.route.srs_sender.clone() {
            env.sender = Sender::Mailbox(sender);
        }
        let (client, size) = (up.link.client(), self.size);
        let restarted = async {
            client.reset().await?;
            if rcpts.is_empty() {
                return Ok(None);
            }
            let refs: Vec<&Recipient> = rcpts.iter().collect();
            client.begin(&env, size, &refs).await.map(Some)
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
                Err(Reply::relayed(refusal))
            }
            Err(e) => {
                tracing::warn!(client = %self.peer, error = %e, "upstream connection lost during a proxied transaction");
                Err(Reply::upstream_lost())
            }
        }
    }

    /// The message's route: the upstream transaction, with the recipients left after filters.
    async fn route(&mut self, msg: &Filtered) -> Result<Option<Group>, Disposition> {
        let Some(mut up) = self.proxy.upstream.take() else {
            if self.proxy.lost {
                return Err(Disposition::Refused(Reply::upstream_lost()));
            }
            tracing::info!(queue_id = %msg.id, client = %self.peer, "every recipient was discarded by routing");
            return Err(Disposition::Dropped(Dropped::NoRecipients));
        };
        // On a refusal the upstream is given up (dropped) with its transaction.
        self.apply_recipient_changes(&mut up, &msg.env.recipients)
            .await
            .map_err(Disposition::Refused)?;
        let rcpts = up.recipients();
        let group = up.route.group(rcpts);
        self.proxy.upstream = Some(up);
        if group.recipients.is_empty() {
            tracing::info!(queue_id = %msg.id, "every forwarded recipient was removed by filters");
            return Err(Disposition::Dropped(Dropped::NoRecipients));
        }
        Ok(Some(group))
    }

    /// Sends the copy upstream with DATA; the upstream's answer is the client's.
    async fn send(&mut self, ctx: &Context, msg: &Filtered, copies: Vec<Copy>) -> Result<Taken, Reply> {
        let Some(copy) = copies.into_iter().next() else {
            tracing::error!(queue_id = %msg.id, "no copy left to send upstream");
            return Err(Reply::local_error());
        };
        let message = copy.message.into_memory().await.map_err(|e| {
            tracing::error!(queue_id = %msg.id, error = %e, "cannot read the incoming message");
            Reply::local_error()
        })?;
        let Some(mut up) = self.proxy.upstream.take() else {
            return Err(Reply::upstream_lost());
        };
        let reply = match up.link.client().send_data(&message).await {
            Ok(reply) => reply,
            Err(e) => {
                tracing::warn!(queue_id = %msg.id, error = %e, "upstream connection lost at end of data");
                up.link.finish(false, false, 0).await;
                return Err(Reply::upstream_lost());
            }
        };
        up.delivered = reply.is_positive();
        up.open = !up.delivered;
        if up.delivered {
            let relayed: Vec<String> = up.recipients().iter().map(|r| r.address.to_string()).collect();
            ctx.feedback.record_sent(msg.headers.message_id(), msg.id, &relayed);
            ctx.metrics.proxied.inc();
        } else {
            ctx.metrics.proxy_refused.inc();
        }
        tracing::info!(
            queue_id = %msg.id, client = %self.peer, sender = %msg.env.sender, recipients = msg.env.recipients.len(),
            size = message.len(), upstream = %up.link.client().remote, reply = %reply.to_string_line(), "message proxied"
        );
        self.proxy.upstream = Some(up);
        Ok(Taken::Proxied(Reply::relayed(&reply)))
    }
}

impl Sink for ProxySink<'_> {
    fn fixed_route<'a>(&'a mut self, msg: &'a Filtered) -> BoxFuture<'a, Result<Option<Group>, Disposition>> {
        Box::pin(self.route(msg))
    }

    fn put<'a>(
        &'a mut self,
        ctx: &'a Context,
        _origin: &'a SessionInfo,
        msg: &'a Filtered,
        copies: Vec<Copy>,
    ) -> BoxFuture<'a, Result<Taken, Reply>> {
        Box::pin(self.send(ctx, msg, copies))
    }
}
