//! Delivery: connecting to a next hop and turning SMTP replies into per-recipient outcomes.

pub mod bounce;
pub mod classify;
pub mod client;
pub mod mta_sts;
pub mod mx;
pub mod pool;

use std::net::{IpAddr, SocketAddr};

use smtpgate_proto::ParsedReply;

use crate::config::TlsPolicy;
use crate::context::Context;
use crate::envelope::Recipient;
use crate::queue::Delivery;
use crate::route::NextHop;
use crate::shaping::Shape;
use client::{Client, ClientError, Connect};

/// What became of one recipient in one attempt.
#[derive(Debug, Clone)]
pub enum Outcome {
    Delivered(String),
    Transient { status: String, diagnostic: String },
    Permanent { status: String, diagnostic: String },
}

impl Outcome {
    fn from_reply(r: &ParsedReply) -> Outcome {
        let class = if r.is_permanent() { "5" } else { "4" };
        let status = r.status.clone().unwrap_or_else(|| format!("{class}.0.0"));
        let diagnostic = r.to_string_line();
        if r.is_positive() {
            Outcome::Delivered(diagnostic)
        } else if r.is_permanent() {
            Outcome::Permanent { status, diagnostic }
        } else {
            Outcome::Transient { status, diagnostic }
        }
    }

    fn from_error(e: &ClientError) -> Outcome {
        match e {
            ClientError::Reply { reply, .. } => Outcome::from_reply(reply),
            ClientError::TlsRequired(_) => Outcome::Transient {
                status: "4.7.5".into(),
                diagnostic: e.to_string(),
            },
            _ => Outcome::Transient {
                status: "4.4.2".into(),
                diagnostic: e.to_string(),
            },
        }
    }
}

/// Why no connection to a next hop could be had.
#[derive(Debug, Clone)]
pub struct ConnectFailure {
    pub outcome: Outcome,
}

impl ConnectFailure {
    pub(crate) fn transient(status: &str, text: String) -> Self {
        ConnectFailure {
            outcome: Outcome::Transient {
                status: status.into(),
                diagnostic: text,
            },
        }
    }
}

/// Opens a connection to the first mail server of `domain` that answers (MX delivery; pools go
/// through [`pool::Pools::lease`]), with the destination's TLS policy and timeouts from the
/// shaping file (its rate and connection limits are the caller's to apply).
pub async fn connect_mx(ctx: &Context, domain: &str) -> Result<Client, ConnectFailure> {
    let targets = mx_targets(ctx, domain).await?;
    let hosts: Vec<&str> = targets.iter().map(|(h, _)| h.as_str()).collect();
    let (_, shape) = ctx.shaper.shape(domain, &hosts);
    let (targets, verified) = apply_mta_sts(ctx, domain, targets).await?;
    connect_targets(ctx, domain, &targets, &shape, None, verified).await
}

/// Applies the domain's MTA-STS policy (RFC 8461) to its MX targets. Under `mode: enforce` only
/// the MX hosts the policy names remain, and the connection must use TLS with a certificate valid
/// for the host (the returned configuration); when no host remains the failure is temporary. A
/// policy that cannot be had counts as none (RFC 8461 3.3); `testing` is logged, not enforced.
pub async fn apply_mta_sts(
    ctx: &Context,
    domain: &str,
    targets: Vec<(String, SocketAddr)>,
) -> Result<(Vec<(String, SocketAddr)>, Option<std::sync::Arc<rustls::ClientConfig>>), ConnectFailure> {
    let Some(sts) = &ctx.mta_sts else {
        return Ok((targets, None));
    };
    let policy = match sts.policy(domain).await {
        Ok(Some(p)) => p,
        Ok(None) => return Ok((targets, None)),
        Err(e) => {
            tracing::warn!(domain, error = %e, "MTA-STS policy unavailable: delivering as if there were none");
            return Ok((targets, None));
        }
    };
    match policy.mode {
        mta_sts::Mode::Enforce => {
            let allowed: Vec<_> = targets.into_iter().filter(|(h, _)| policy.matches(h)).collect();
            if allowed.is_empty() {
                return Err(ConnectFailure::transient(
                    "4.7.5",
                    format!("no MX host of {domain} matches its MTA-STS policy (id {})", policy.id),
                ));
            }
            Ok((allowed, Some(ctx.verified_tls.clone())))
        }
        mta_sts::Mode::Testing => {
            if !targets.iter().any(|(h, _)| policy.matches(h)) {
                tracing::warn!(domain, policy_id = %policy.id, "MTA-STS (testing): no MX host matches the policy");
            }
            Ok((targets, None))
        }
        mta_sts::Mode::None => Ok((targets, None)),
    }
}

/// Opens a connection to the first of `targets` (a domain's mail servers, in order) that answers.
pub async fn connect_targets(
    ctx: &Context,
    domain: &str,
    targets: &[(String, SocketAddr)],
    shape: &Shape,
    source: Option<IpAddr>,
    verified: Option<std::sync::Arc<rustls::ClientConfig>>,
) -> Result<Client, ConnectFailure> {
    let mut timeouts = ctx.config.queue.clone();
    timeouts.connect_timeout = shape.connect_timeout;
    timeouts.command_timeout = shape.command_timeout;
    timeouts.data_timeout = shape.data_timeout;
    let mut last = String::from("no server to try");
    for (host, addr) in targets {
        let mut params = connect_params(ctx, host, *addr, shape.tls);
        params.queue = &timeouts;
        params.source = source;
        if let Some(tls) = &verified {
            // An enforced MTA-STS policy: TLS with a verified certificate, or no delivery.
            params.tls = TlsPolicy::Required;
            params.tls_config = tls.clone();
        }
        match Client::connect(params).await {
            Ok(client) => return Ok(client),
            Err(e) => {
                tracing::debug!(hop = %NextHop::Mx(domain.to_string()), server = %addr, error = %e, "connection failed");
                last = e.to_string();
            }
        }
    }
    Err(ConnectFailure::transient("4.4.1", last))
}

/// How to connect to `addr`, without AUTH or a source address.
fn connect_params<'a>(ctx: &'a Context, host: &'a str, addr: SocketAddr, tls: TlsPolicy) -> Connect<'a> {
    Connect {
        addr,
        host,
        helo: &ctx.config.hostname,
        tls,
        tls_config: ctx.client_tls.clone(),
        queue: &ctx.config.queue,
        auth: None,
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
            let diagnostic = e.to_string();
            let status = status.to_string();
            ConnectFailure {
                outcome: if permanent {
                    Outcome::Permanent { status, diagnostic }
                } else {
                    Outcome::Transient { status, diagnostic }
                },
            }
        })?;
    Ok(found
        .into_iter()
        .flat_map(|t| t.addrs.into_iter().map(move |a| (t.host.clone(), a)))
        .collect())
}

async fn resolve_host(ctx: &Context, host: &str, port: u16) -> Vec<SocketAddr> {
    if let Ok(ip) = host.parse::<IpAddr>() {
        return vec![SocketAddr::new(ip, port)];
    }
    match ctx.resolver.lookup_ip(format!("{host}.").as_str()).await {
        Ok(ips) => ips.iter().map(|ip| SocketAddr::new(ip, port)).collect(),
        Err(e) => {
            tracing::warn!(host, error = %e, "cannot resolve upstream server");
            Vec::new()
        }
    }
}

/// Sends one delivery over an open connection. Returns each recipient's outcome and whether the
/// connection can carry another message.
pub async fn attempt(ctx: &Context, client: &mut Client, d: &Delivery) -> (Vec<(u32, Outcome)>, bool) {
    let env = &d.msg.env;
    let all = |o: Outcome| d.rcpts.iter().map(|&i| (i, o.clone())).collect::<Vec<_>>();
    if !client.can_take(env) {
        let diagnostic = "the destination does not support SMTPUTF8".to_string();
        return (
            all(Outcome::Permanent {
                status: "5.6.7".into(),
                diagnostic,
            }),
            true,
        );
    }
    let body = match d.msg.body(&ctx.spool) {
        Ok(b) => b,
        Err(e) => {
            let diagnostic = format!("cannot read message from spool: {e}");
            return (
                all(Outcome::Transient {
                    status: "4.3.0".into(),
                    diagnostic,
                }),
                true,
            );
        }
    };
    let rcpts: Vec<&Recipient> = d.rcpts.iter().map(|&i| &env.recipients[i as usize]).collect();
    match client.deliver(env, &rcpts, &body).await {
        Ok(res) => {
            let outcomes = d.rcpts.iter().zip(res.rcpts).map(|(&i, r)| {
                let o = match (r, &res.data) {
                    (Err(refused), _) => Outcome::from_reply(&refused),
                    (Ok(_), Some(data)) => Outcome::from_reply(data),
                    (Ok(_), None) => Outcome::Transient {
                        status: "4.4.2".into(),
                        diagnostic: "no reply to end of data".into(),
                    },
                };
                (i, o)
            });
            (outcomes.collect(), true)
        }
        Err(e) => {
            let keep = matches!(e, ClientError::Reply { .. });
            (all(Outcome::from_error(&e)), keep)
        }
    }
}
