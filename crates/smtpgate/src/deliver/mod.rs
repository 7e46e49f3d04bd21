//! Delivery: connecting to a next hop and turning SMTP replies into per-recipient outcomes.

pub mod bounce;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use smtpgate_proto::ParsedReply;

use crate::config::TlsPolicy;
use crate::context::Context;
use crate::envelope::{Envelope, Recipient};
use crate::reply::{Command, Upstream};
use crate::route::NextHop;
use crate::shaping::Shape;
use crate::spool::Stored;
use crate::upstream::client::{self, Client, ClientError, Connect};
use crate::upstream::{Unavailable, dane, mta_sts, mx};

/// What became of one recipient in one attempt, with the reply (or the gate's own reason) that
/// says so.
#[derive(Debug, Clone)]
pub enum Outcome {
    Delivered(Upstream),
    Transient(Upstream),
    Permanent(Upstream),
}

impl Outcome {
    /// `server`'s reply to `command`, as what it means for the recipient.
    fn from_reply(r: &ParsedReply, command: Command, server: &str) -> Outcome {
        let reply = Upstream::parsed(r, command, server);
        if r.is_positive() {
            Outcome::Delivered(reply)
        } else if r.is_permanent() {
            Outcome::Permanent(reply)
        } else {
            Outcome::Transient(reply)
        }
    }

    /// The failed reply; `None` for a delivery.
    pub fn failure(&self) -> Option<&Upstream> {
        match self {
            Outcome::Transient(reply) | Outcome::Permanent(reply) => Some(reply),
            Outcome::Delivered(_) => None,
        }
    }

    /// The reply, whatever came of the attempt.
    pub fn reply(&self) -> &Upstream {
        match self {
            Outcome::Delivered(reply) | Outcome::Transient(reply) | Outcome::Permanent(reply) => reply,
        }
    }

    fn from_error(e: &ClientError, server: &str) -> Outcome {
        match e {
            ClientError::Reply { stage, reply } => Outcome::from_reply(reply, Command::of_stage(stage), server),
            ClientError::TlsRequired(_) => {
                Outcome::Transient(Upstream::local("4.7.5", e.to_string(), Command::StartTls))
            }
            _ => Outcome::Transient(Upstream::local("4.4.2", e.to_string(), error_command(e))),
        }
    }
}

/// Where in the dialogue a client error other than a reply or a TLS requirement happened, as far
/// as it tells.
fn error_command(e: &ClientError) -> Command {
    match e {
        ClientError::Connect(..) => Command::Connect,
        ClientError::Timeout("greeting") => Command::Greeting,
        ClientError::Timeout("TLS handshake") => Command::StartTls,
        ClientError::Auth(_) => Command::Auth,
        _ => Command::Unknown,
    }
}

/// Why no connection to a next hop could be had.
#[derive(Debug, Clone)]
pub struct ConnectFailure {
    pub outcome: Outcome,
}

impl From<Unavailable> for ConnectFailure {
    fn from(u: Unavailable) -> Self {
        ConnectFailure::transient(u.status, u.text)
    }
}

impl ConnectFailure {
    /// A temporary failure to connect that the gate found on its own.
    pub(crate) fn transient(status: &str, text: String) -> Self {
        ConnectFailure {
            outcome: Outcome::Transient(Upstream::local(status, text, Command::Connect)),
        }
    }
}

/// Opens a connection to the first mail server of `domain` that answers (MX delivery; pools go
/// through [`Pools::lease`](crate::upstream::pool::Pools::lease)), with the destination's TLS policy and timeouts from the
/// shaping file (its rate and connection limits are the caller's to apply).
pub async fn connect_mx(ctx: &Context, domain: &str) -> Result<Client, ConnectFailure> {
    let targets = mx_plan(ctx, domain).await?;
    let hosts: Vec<&str> = targets.iter().map(|t| t.host.as_str()).collect();
    let (_, shape) = ctx.shaper.shape(domain, &hosts);
    connect_targets(ctx, domain, &targets, &shape, None).await
}

/// How the connection to one mail server must be secured.
#[derive(Clone)]
pub enum TargetTls {
    /// As the shaping file says for the destination (STARTTLS when offered, by default); any
    /// certificate is accepted (RFC 7435).
    Opportunistic,
    /// An enforced MTA-STS policy: STARTTLS with a certificate valid for the host name.
    MtaSts(Arc<rustls::ClientConfig>),
    /// DANE: STARTTLS with a certificate that matches one of the host's TLSA records.
    Dane(Arc<rustls::ClientConfig>),
    /// DANE with secure TLSA records none of which is usable: STARTTLS is mandatory, but the
    /// certificate is not checked (RFC 7672 2.2).
    DaneUnauthenticated,
}

impl TargetTls {
    /// The policy's name, for logs.
    pub fn name(&self) -> &'static str {
        match self {
            TargetTls::Opportunistic => "opportunistic",
            TargetTls::MtaSts(_) => "mta-sts",
            TargetTls::Dane(_) => "dane",
            TargetTls::DaneUnauthenticated => "dane-unauthenticated",
        }
    }

    fn is_dane(&self) -> bool {
        matches!(self, TargetTls::Dane(_) | TargetTls::DaneUnauthenticated)
    }
}

/// One mail server to try: its host name, one of its addresses, and how to secure the connection.
#[derive(Clone)]
pub struct Target {
    pub host: String,
    pub addr: SocketAddr,
    pub tls: TargetTls,
}

/// A domain's mail servers in the order to try them, each with the TLS its DANE records
/// ([`apply_dane`]) or MTA-STS policy ([`apply_mta_sts`]) requires.
pub async fn mx_plan(ctx: &Context, domain: &str) -> Result<Vec<Target>, ConnectFailure> {
    let found = mx_targets(ctx, domain).await?;
    let targets = apply_dane(ctx, domain, found).await?;
    apply_mta_sts(ctx, domain, targets).await
}

/// Applies DANE (RFC 7672) to a domain's mail servers: a host with secure TLSA records must be
/// reached over STARTTLS with a certificate they match (or, with none usable, over STARTTLS); a
/// host whose TLSA lookup failed after a secure MX lookup is left out, and when no host remains
/// the failure is temporary (4.7.5). Hosts without DANE are opportunistic here.
pub async fn apply_dane(
    ctx: &Context,
    domain: &str,
    found: Vec<(String, SocketAddr)>,
) -> Result<Vec<Target>, ConnectFailure> {
    let opportunistic = |(host, addr)| Target {
        host,
        addr,
        tls: TargetTls::Opportunistic,
    };
    let Some(dane) = &ctx.dane else {
        return Ok(found.into_iter().map(opportunistic).collect());
    };
    let mut hosts: Vec<String> = Vec::new();
    for (h, _) in &found {
        if !hosts.contains(h) {
            hosts.push(h.clone());
        }
    }
    let policies = dane.hosts(domain, &hosts).await.map_err(|e| {
        tracing::warn!(domain, error = %e, "DANE: cannot tell whether the MX records are secure");
        ConnectFailure::transient("4.7.5", format!("DANE: {e}"))
    })?;
    let mut targets = Vec::with_capacity(found.len());
    let mut unavailable = Vec::new();
    for (host, addr) in found {
        let i = hosts.iter().position(|h| *h == host).unwrap_or_default();
        let tls = match policies.get(i).unwrap_or(&dane::HostDane::NoDane) {
            dane::HostDane::NoDane => TargetTls::Opportunistic,
            dane::HostDane::Authenticated(records) => TargetTls::Dane(dane::client_config(records.clone())),
            dane::HostDane::Mandatory => TargetTls::DaneUnauthenticated,
            dane::HostDane::Unavailable(why) => {
                tracing::warn!(domain, host, reason = %why, "DANE: TLSA lookup failed: host not used");
                unavailable.push(format!("{host}: {why}"));
                continue;
            }
        };
        targets.push(Target { host, addr, tls });
    }
    if targets.is_empty() && !unavailable.is_empty() {
        unavailable.dedup();
        let why = unavailable.join("; ");
        return Err(ConnectFailure::transient(
            "4.7.5",
            format!("no MX host of {domain} can be used under DANE: {why}"),
        ));
    }
    Ok(targets)
}

/// Applies the domain's MTA-STS policy (RFC 8461) to its mail servers. Under `mode: enforce` only
/// the MX hosts the policy names remain, and the connection must use TLS with a certificate valid
/// for the host; when no host remains the failure is temporary. A host that DANE already
/// secures keeps DANE, which takes precedence (RFC 8461 2); when every host has DANE the policy is
/// not even looked up. A policy that cannot be had counts as none (RFC 8461 3.3); `testing` is
/// logged, not enforced.
pub async fn apply_mta_sts(ctx: &Context, domain: &str, targets: Vec<Target>) -> Result<Vec<Target>, ConnectFailure> {
    let Some(sts) = &ctx.mta_sts else {
        return Ok(targets);
    };
    if !targets.is_empty() && targets.iter().all(|t| t.tls.is_dane()) {
        return Ok(targets);
    }
    let policy = match sts.policy(domain).await {
        Ok(Some(p)) => p,
        Ok(None) => return Ok(targets),
        Err(e) => {
            tracing::warn!(domain, error = %e, "MTA-STS policy unavailable: delivering as if there were none");
            return Ok(targets);
        }
    };
    match policy.mode {
        mta_sts::Mode::Enforce => {
            let allowed: Vec<_> = (targets.into_iter())
                .filter(|t| t.tls.is_dane() || policy.matches(&t.host))
                .map(|t| match t.tls {
                    TargetTls::Opportunistic => Target {
                        tls: TargetTls::MtaSts(ctx.verified_tls.clone()),
                        ..t
                    },
                    _ => t,
                })
                .collect();
            if allowed.is_empty() {
                return Err(ConnectFailure::transient(
                    "4.7.5",
                    format!("no MX host of {domain} matches its MTA-STS policy (id {})", policy.id),
                ));
            }
            Ok(allowed)
        }
        mta_sts::Mode::Testing => {
            if !targets.iter().any(|t| policy.matches(&t.host)) {
                tracing::warn!(domain, policy_id = %policy.id, "MTA-STS (testing): no MX host matches the policy");
            }
            Ok(targets)
        }
        mta_sts::Mode::None => Ok(targets),
    }
}

/// Opens a connection to the first of `targets` (a domain's mail servers, in order) that answers
/// and meets its TLS requirement. A target whose TLS is required and fails is given up for the
/// next one; when none is left, the failure is temporary (4.7.5 if the last one failed on TLS).
pub async fn connect_targets(
    ctx: &Context,
    domain: &str,
    targets: &[Target],
    shape: &Shape,
    source: Option<IpAddr>,
) -> Result<Client, ConnectFailure> {
    let mut timeouts = ctx.config.queue.clone();
    timeouts.connect_timeout = shape.connect_timeout;
    timeouts.command_timeout = shape.command_timeout;
    timeouts.data_timeout = shape.data_timeout;
    let hop = NextHop::Mx(domain.to_string());
    let (mut last, mut status) = (String::from("no server to try"), "4.4.1");
    for target in targets {
        let mut params = connect_params(ctx, &target.host, target.addr, shape.tls);
        params.queue = &timeouts;
        params.source = source;
        match &target.tls {
            TargetTls::Opportunistic => {}
            // TLS with a checked certificate (or, for DANE without usable records, TLS), or no delivery.
            TargetTls::MtaSts(tls) | TargetTls::Dane(tls) => {
                params.tls = TlsPolicy::Required;
                params.tls_config = tls.clone();
                params.cert_check = crate::tls::CertCheck::InHandshake;
            }
            TargetTls::DaneUnauthenticated => params.tls = TlsPolicy::Required,
        }
        tracing::debug!(%hop, host = %target.host, server = %target.addr, tls = target.tls.name(), "connecting");
        match Client::connect(params).await {
            Ok(client) => return Ok(client),
            Err(e) => {
                if target.tls.is_dane() {
                    tracing::warn!(%hop, host = %target.host, server = %target.addr, error = %e, "DANE: cannot deliver to this host");
                } else {
                    tracing::debug!(%hop, server = %target.addr, error = %e, "connection failed");
                }
                status = if matches!(e, ClientError::TlsRequired(_)) {
                    "4.7.5"
                } else {
                    "4.4.1"
                };
                last = e.to_string();
            }
        }
    }
    Err(ConnectFailure::transient(status, last))
}

/// How to connect to `addr`, without AUTH or a source address.
fn connect_params<'a>(ctx: &'a Context, host: &'a str, addr: SocketAddr, tls: TlsPolicy) -> Connect<'a> {
    Connect {
        addr,
        host,
        helo: &ctx.config.hostname,
        tls,
        tls_config: ctx.client_tls.clone(),
        cert_check: crate::tls::CertCheck::NotChecked,
        queue: &ctx.config.queue,
        auth: None,
        auth_unverified: false,
        source: None,
    }
}

/// A domain's mail servers in the order to try them: (host name, address).
pub async fn mx_targets(ctx: &Context, domain: &str) -> Result<Vec<(String, SocketAddr)>, ConnectFailure> {
    let found = mx::targets(&ctx.resolver, domain, ctx.config.queue.smtp_port)
        .await
        .map_err(|e| {
            let (status, permanent) = match &e {
                mx::MxError::NullMx(_) => ("5.1.10", true),
                mx::MxError::NoSuchDomain(_) => ("5.1.2", true),
                _ => ("4.4.3", false),
            };
            ConnectFailure {
                // The reply a proxy listener gives for a permanent one (`Reply::undeliverable`).
                outcome: if permanent {
                    Outcome::Permanent(Upstream::local_reply(550, status, e.to_string(), Command::Outside))
                } else {
                    Outcome::Transient(Upstream::local(status, e.to_string(), Command::Outside))
                },
            }
        })?;
    Ok(found
        .into_iter()
        .flat_map(|t| t.addrs.into_iter().map(move |a| (t.host.clone(), a)))
        .collect())
}

/// Sends one delivery over an open connection. Returns each recipient's outcome and whether the
/// connection can carry another message.
/// `rcpts` are the indices in `env` of the recipients this attempt is for; `body` reads the
/// message from the spool, and is awaited only if the connection can take the message.
pub async fn attempt(
    client: &mut Client,
    env: &Envelope,
    rcpts: &[u32],
    body: impl Future<Output = std::io::Result<Stored>>,
) -> (Vec<(u32, Outcome)>, bool) {
    let all = |o: Outcome| rcpts.iter().map(|&i| (i, o.clone())).collect::<Vec<_>>();
    if !client.can_take(env) {
        // What a proxy listener answers (`Reply::upstream_lacks_smtputf8`).
        let reply = Upstream::local_reply(550, "5.6.7", "the destination does not support SMTPUTF8", Command::Mail);
        return (all(Outcome::Permanent(reply)), true);
    }
    let body = match body.await {
        Ok(b) => b,
        Err(e) => {
            let reply = Upstream::local(
                "4.3.0",
                format!("cannot read message from spool: {e}"),
                Command::Outside,
            );
            return (all(Outcome::Transient(reply)), true);
        }
    };
    let to: Vec<&Recipient> = rcpts.iter().map(|&i| &env.recipients[i as usize]).collect();
    match client.deliver(env, &to, &body).await {
        Ok(res) => {
            let outcomes = rcpts.iter().zip(res.rcpts).map(|(&i, r)| {
                let o = match (r, &res.data) {
                    (Err(refused), _) => Outcome::from_reply(&refused, Command::Rcpt, &client.remote),
                    (Ok(_), Some(data)) => Outcome::from_reply(data, Command::EndOfData, &client.remote),
                    (Ok(_), None) => {
                        Outcome::Transient(Upstream::local("4.4.2", "no reply to end of data", Command::EndOfData))
                    }
                };
                (i, o)
            });
            (outcomes.collect(), true)
        }
        Err(e) => {
            let keep = matches!(&e, ClientError::Reply { reply, .. } if reply.code != client::CLOSING);
            (all(Outcome::from_error(&e, &client.remote)), keep)
        }
    }
}
