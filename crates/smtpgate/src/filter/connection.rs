//! `kind = "connection"`: checks on who is connecting: DNS block lists, forward-confirmed
//! reverse DNS, and the name the client gives in EHLO/HELO.
//!
//! ```toml
//! [[filter]]
//! name = "connection"
//! kind = "connection"
//! dnsbl = ["zen.example.test"]     # block lists, asked in the connect hook
//! require_reverse_dns = false      # a PTR record whose name resolves back to the client
//! helo_checks = true               # checked in the MAIL hook
//! hostname = "mx.example.test"     # our name, which a client may not claim; default: the machine's
//! check_loopback = false           # 127.0.0.0/8 and ::1 skip the DNS checks unless true
//! nameservers = ["127.0.0.1:53"]   # default: the system resolver
//! dns_timeout = "5s"               # per DNS question
//! action = "reject"                # or "tempfail"
//! ```
//!
//! A block list is asked for the A record of the client's address reversed under its zone
//! (`2.0.0.127.zen.example.test`; IPv6 in nibble form, RFC 5782). An answer in 127.0.0.0/24
//! means listed: the client gets `554 5.7.1 client listed at <zone>` instead of the greeting,
//! naming the zone and nothing else. Any other answer (Spamhaus answers `127.255.255.x` to say
//! the query itself was refused) is an error, not a listing.
//!
//! A bad HELO (a bare IP address, `localhost`, our own host name, or anything that is neither a
//! domain with a dot nor an address literal) gets `550 5.7.1 bad HELO` at MAIL FROM. Clients
//! that authenticated skip this check: mail user agents send whatever name their machine has.
//!
//! With `action = "tempfail"` the same refusals are `421 4.7.1` at connect, `450 4.7.1` at MAIL.
//!
//! Architecture invariant: a DNS failure (timeout, SERVFAIL) is an `Err`, so the filter's
//! `on_error` decides; it never becomes a permanent rejection. Only NXDOMAIN and NODATA are
//! answers.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use hickory_resolver::TokioResolver;
use hickory_resolver::config::{LookupIpStrategy, NameServerConfig, ResolveHosts, ResolverConfig};
use hickory_resolver::name_server::TokioConnectionProvider;
use hickory_resolver::proto::xfer::Protocol;
use serde::Deserialize;
use smtpgate_proto::Reply;

use super::options::{BuildErrors, options};
use super::{BoxFuture, Filter, FilterError, SessionInfo, Verdict};
use crate::config::values::{is_domain, parse_domain, parse_duration, parse_nameserver};
use crate::envelope::Sender;

const DEFAULT_DNS_TIMEOUT: Duration = Duration::from_secs(5);
/// PTR names tried for forward confirmation; a client with more is not helped by them.
const MAX_PTR_NAMES: usize = 5;

#[derive(Debug, Deserialize)]
struct Options {
    #[serde(default)]
    dnsbl: Vec<String>,
    require_reverse_dns: Option<bool>,
    helo_checks: Option<bool>,
    check_loopback: Option<bool>,
    hostname: Option<String>,
    #[serde(default)]
    nameservers: Vec<String>,
    dns_timeout: Option<String>,
    action: Option<String>,
}

/// What a failed check answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Refusal {
    /// 5xx.
    Reject,
    /// 4xx: the client will try again.
    TempFail,
}

/// Whether loopback clients go through the DNS checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Loopback {
    Exempt,
    Checked,
}

/// The HELO check, with the name a client may not claim.
#[derive(Debug, Clone, PartialEq, Eq)]
enum HeloCheck {
    Off,
    On { ours: String },
}

pub struct Connection {
    zones: Vec<String>,
    reverse_dns: bool,
    helo: HeloCheck,
    loopback: Loopback,
    refusal: Refusal,
    /// Built when a DNS check is configured.
    resolver: Option<TokioResolver>,
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("zones", &self.zones)
            .field("reverse_dns", &self.reverse_dns)
            .field("helo", &self.helo)
            .field("loopback", &self.loopback)
            .field("refusal", &self.refusal)
            .finish_non_exhaustive()
    }
}

pub fn build(raw: toml::Table, _base_dir: &Path) -> Result<Arc<dyn Filter>, BuildErrors> {
    let o: Options = options(raw)?;
    let mut errors = BuildErrors::new();
    let zones = zones(&o.dnsbl, &mut errors);
    let refusal = match o.action.as_deref() {
        None | Some("reject") => Refusal::Reject,
        Some("tempfail") => Refusal::TempFail,
        Some(other) => {
            let message = format!("{other:?} is not one of \"reject\", \"tempfail\"");
            errors.push(("action".into(), message));
            Refusal::Reject
        }
    };
    let timeout = dns_timeout(o.dns_timeout.as_deref(), &mut errors);
    let nameservers = nameservers(&o.nameservers, &mut errors);
    if let Some(name) = o.hostname.as_deref().filter(|h| !is_domain(h.trim_end_matches('.'))) {
        errors.push(("hostname".into(), format!("{name:?} is not a host name")));
    }
    let hostname = o.hostname.unwrap_or_else(machine_hostname);
    if !errors.is_empty() {
        return Err(errors);
    }
    let reverse_dns = o.require_reverse_dns.unwrap_or(false);
    let resolver = match zones.is_empty() && !reverse_dns {
        true => None,
        false => Some(resolver(&nameservers, timeout).map_err(|e| vec![("nameservers".into(), e)])?),
    };
    let helo = match o.helo_checks.unwrap_or(true) {
        true => HeloCheck::On {
            ours: hostname.trim_end_matches('.').to_ascii_lowercase(),
        },
        false => HeloCheck::Off,
    };
    let loopback = match o.check_loopback.unwrap_or(false) {
        true => Loopback::Checked,
        false => Loopback::Exempt,
    };
    Ok(Arc::new(Connection {
        zones,
        reverse_dns,
        helo,
        loopback,
        refusal,
        resolver,
    }))
}

fn zones(raw: &[String], errors: &mut BuildErrors) -> Vec<String> {
    let mut out = Vec::new();
    for (i, zone) in raw.iter().enumerate() {
        match parse_domain(zone) {
            Ok(zone) => out.push(zone),
            Err(e) => errors.push((format!("dnsbl[{i}]"), e.to_string())),
        }
    }
    out
}

fn dns_timeout(raw: Option<&str>, errors: &mut BuildErrors) -> Duration {
    match raw.map(parse_duration) {
        None => DEFAULT_DNS_TIMEOUT,
        Some(Ok(t)) if !t.is_zero() => t,
        Some(Ok(_)) => {
            errors.push(("dns_timeout".into(), "must be more than 0".into()));
            DEFAULT_DNS_TIMEOUT
        }
        Some(Err(e)) => {
            errors.push(("dns_timeout".into(), e.to_string()));
            DEFAULT_DNS_TIMEOUT
        }
    }
}

fn nameservers(raw: &[String], errors: &mut BuildErrors) -> Vec<SocketAddr> {
    let mut out = Vec::new();
    for (i, text) in raw.iter().enumerate() {
        match parse_nameserver(text) {
            Ok(addr) => out.push(addr),
            Err(e) => errors.push((format!("nameservers[{i}]"), e.to_string())),
        }
    }
    out
}

fn machine_hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".into())
}

/// Like `upstream::mx::resolver`, with one attempt of `timeout` per question, both address
/// families for forward confirmation, and DNS only (`/etc/hosts` would confirm `localhost`).
fn resolver(nameservers: &[SocketAddr], timeout: Duration) -> Result<TokioResolver, String> {
    let mut builder = if nameservers.is_empty() {
        TokioResolver::builder_tokio().map_err(|e| format!("cannot read the system resolver configuration: {e}"))?
    } else {
        let mut config = ResolverConfig::new();
        for ns in nameservers {
            config.add_name_server(NameServerConfig::new(*ns, Protocol::Udp));
            config.add_name_server(NameServerConfig::new(*ns, Protocol::Tcp));
        }
        TokioResolver::builder_with_config(config, TokioConnectionProvider::default())
    };
    let opts = builder.options_mut();
    opts.timeout = timeout;
    opts.attempts = 1;
    opts.ip_strategy = LookupIpStrategy::Ipv4AndIpv6;
    opts.use_hosts_file = ResolveHosts::Never;
    Ok(builder.build())
}

impl Filter for Connection {
    fn connect<'a>(&'a self, s: &'a SessionInfo) -> BoxFuture<'a, Result<Verdict, FilterError>> {
        Box::pin(async move {
            let (Some(resolver), Some(client)) = (&self.resolver, s.client.map(|ip| ip.to_canonical())) else {
                return Ok(Verdict::accept());
            };
            if client.is_loopback() && self.loopback == Loopback::Exempt {
                return Ok(Verdict::accept());
            }
            if let Some(zone) = listed_at(resolver, &self.zones, client).await? {
                tracing::info!(client = %client, zone = %zone, "connection: client on a block list");
                return Ok(self.refuse(Reply::client_listed(&zone), Reply::client_listed_deferred(&zone)));
            }
            if self.reverse_dns && !reverse_confirmed(resolver, client).await? {
                tracing::info!(client = %client, "connection: no forward-confirmed reverse DNS");
                let (reject, defer) = (
                    Reply::reverse_dns_unconfirmed(),
                    Reply::reverse_dns_unconfirmed_deferred(),
                );
                return Ok(self.refuse(reject, defer));
            }
            Ok(Verdict::accept())
        })
    }

    fn mail<'a>(&'a self, s: &'a SessionInfo, _sender: &'a Sender) -> BoxFuture<'a, Result<Verdict, FilterError>> {
        Box::pin(async move {
            let (HeloCheck::On { ours }, Some(helo), None) = (&self.helo, &s.helo, &s.user) else {
                return Ok(Verdict::accept());
            };
            if helo_is_acceptable(helo, ours) {
                return Ok(Verdict::accept());
            }
            tracing::info!(client = ?s.client, helo = %helo, "connection: bad HELO");
            Ok(self.refuse(Reply::bad_helo(), Reply::bad_helo_deferred()))
        })
    }
}

impl Connection {
    fn refuse(&self, reject: Reply, defer: Reply) -> Verdict {
        match self.refusal {
            Refusal::Reject => Verdict::reject(reject),
            Refusal::TempFail => Verdict::tempfail(defer),
        }
    }
}

/// The first zone (in configured order) that lists `ip`. All are asked at once; when none
/// lists it and one could not answer, that is the error.
async fn listed_at(resolver: &TokioResolver, zones: &[String], ip: IpAddr) -> Result<Option<String>, FilterError> {
    let mut asked = tokio::task::JoinSet::new();
    for (i, zone) in zones.iter().enumerate() {
        let resolver = resolver.clone();
        let name = dnsbl_name(ip, zone);
        asked.spawn(async move { (i, is_listed(&resolver, &name).await) });
    }
    let mut answers = asked.join_all().await;
    answers.sort_by_key(|(i, _)| *i);
    if let Some((i, _)) = answers.iter().find(|(_, a)| matches!(a, Ok(true))) {
        return Ok(Some(zones[*i].clone()));
    }
    match answers.into_iter().find_map(|(i, a)| a.err().map(|e| (i, e))) {
        Some((i, e)) => Err(FilterError(format!("block list {}: {e}", zones[i]))),
        None => Ok(None),
    }
}

/// One block list question: listed, not listed, or no answer.
async fn is_listed(resolver: &TokioResolver, name: &str) -> Result<bool, String> {
    let answer = match resolver.ipv4_lookup(name).await {
        Ok(answer) => answer,
        Err(e) if is_negative(&e) => return Ok(false),
        Err(e) => return Err(e.to_string()),
    };
    let addrs: Vec<Ipv4Addr> = answer.iter().map(|a| a.0).collect();
    if addrs.iter().any(|a| a.octets()[..3] == [127, 0, 0]) {
        return Ok(true);
    }
    match addrs.first() {
        Some(other) => Err(format!(
            "unexpected answer {other} for {name} (an error code of the list?)"
        )),
        None => Ok(false),
    }
}

/// `d.c.b.a.<zone>.` for IPv4, the 32 nibbles in reverse for IPv6 (RFC 5782 2.1, 2.4).
fn dnsbl_name(ip: IpAddr, zone: &str) -> String {
    let reversed = match ip {
        IpAddr::V4(v4) => {
            let [a, b, c, d] = v4.octets();
            format!("{d}.{c}.{b}.{a}")
        }
        IpAddr::V6(v6) => nibbles(v6),
    };
    format!("{reversed}.{zone}.")
}

fn nibbles(ip: Ipv6Addr) -> String {
    let digits: Vec<String> = ip
        .octets()
        .iter()
        .rev()
        .flat_map(|b| [b & 0x0f, b >> 4])
        .map(|n| format!("{n:x}"))
        .collect();
    digits.join(".")
}

/// Whether some PTR name of `ip` resolves back to it (FCrDNS).
async fn reverse_confirmed(resolver: &TokioResolver, ip: IpAddr) -> Result<bool, FilterError> {
    let names: Vec<String> = match resolver.reverse_lookup(ip).await {
        Ok(ptrs) => ptrs.iter().take(MAX_PTR_NAMES).map(|p| p.0.to_ascii()).collect(),
        Err(e) if is_negative(&e) => return Ok(false),
        Err(e) => return Err(FilterError(format!("reverse DNS of {ip}: {e}"))),
    };
    let mut failure = None;
    for name in names {
        match resolver.lookup_ip(name.as_str()).await {
            Ok(addrs) if addrs.iter().any(|a| a.to_canonical() == ip) => return Ok(true),
            Ok(_) => {}
            Err(e) if is_negative(&e) => {}
            Err(e) => failure = Some(format!("addresses of {name}: {e}")),
        }
    }
    match failure {
        Some(e) => Err(FilterError(e)),
        None => Ok(false),
    }
}

/// NXDOMAIN or NODATA: an answer. Timeouts, SERVFAIL and REFUSED are failures.
fn is_negative(e: &hickory_resolver::ResolveError) -> bool {
    use hickory_resolver::proto::ProtoErrorKind;
    use hickory_resolver::proto::op::ResponseCode;
    e.proto().is_some_and(|p| {
        matches!(
            p.kind(),
            ProtoErrorKind::NoRecordsFound {
                response_code: ResponseCode::NoError | ResponseCode::NXDomain,
                ..
            }
        )
    })
}

/// A domain with at least one dot, or an address literal (RFC 5321 4.1.3); not a bare address,
/// not `localhost`, not `ours` (lower case, without the trailing dot).
fn helo_is_acceptable(helo: &str, ours: &str) -> bool {
    if let Some(literal) = helo.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        return match literal.get(..5) {
            Some(tag) if tag.eq_ignore_ascii_case("IPv6:") => literal[5..].parse::<Ipv6Addr>().is_ok(),
            _ => literal.parse::<Ipv4Addr>().is_ok(),
        };
    }
    let name = helo.strip_suffix('.').unwrap_or(helo).to_ascii_lowercase();
    let top_label = name.rsplit('.').next().unwrap_or_default();
    name.parse::<IpAddr>().is_err()
        && name != "localhost"
        && name != "localhost.localdomain"
        && name != ours
        && name.contains('.')
        && is_domain(&name)
        && !top_label.bytes().all(|b| b.is_ascii_digit())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(text: &str) -> toml::Table {
        text.parse().unwrap()
    }

    #[test]
    fn helo_names() {
        let ours = "gate.example.test";
        for good in [
            "client.example.test",
            "Client.Example.Test.",
            "mail-1.example.org",
            "[192.0.2.1]",
            "[IPv6:2001:db8::1]",
            "[ipv6:::1]",
        ] {
            assert!(helo_is_acceptable(good, ours), "{good:?} should pass");
        }
        for bad in [
            "192.0.2.1",
            "2001:db8::1",
            "localhost",
            "LOCALHOST.",
            "localhost.localdomain",
            "gate.example.test",
            "GATE.example.test.",
            "desktop",
            "",
            "[192.0.2.1",
            "[192.0.2.300]",
            "[2001:db8::1]",
            "bad_name.example.test",
            "-x.example.test",
            "a..b",
            "1.2.3.999",
            "host name.example",
        ] {
            assert!(!helo_is_acceptable(bad, ours), "{bad:?} should fail");
        }
    }

    #[test]
    fn block_list_names() {
        let v4 = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 99));
        assert_eq!(dnsbl_name(v4, "zen.example.test"), "99.2.0.192.zen.example.test.");
        let v6: IpAddr = "2001:db8::567:89ab".parse().unwrap();
        assert_eq!(
            dnsbl_name(v6, "zen.test"),
            "b.a.9.8.7.6.5.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2.zen.test."
        );
    }

    #[test]
    fn options_are_checked() {
        let bad = table("dnsbl = [\"zen test\"]\naction = \"drop\"\nnameservers = [\"x\"]\ndns_timeout = \"0s\"");
        let errors = build(bad, Path::new("/")).unwrap_err();
        let keys: Vec<&str> = errors.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(keys, ["dnsbl[0]", "action", "dns_timeout", "nameservers[0]"]);
        let unknown = build(table("dnsbls = []"), Path::new("/")).unwrap_err();
        assert_eq!(unknown[0].0, "dnsbls");
        let ok = table("dnsbl = [\"zen.test.\"]\nnameservers = [\"127.0.0.1:5353\"]\naction = \"tempfail\"");
        assert!(build(ok, Path::new("/")).is_ok());
    }

    fn helo_only(refusal: Refusal) -> Connection {
        Connection {
            zones: Vec::new(),
            reverse_dns: false,
            helo: HeloCheck::On {
                ours: "gate.example.test".into(),
            },
            loopback: Loopback::Exempt,
            refusal,
            resolver: None,
        }
    }

    fn session(helo: &str, user: Option<&str>) -> SessionInfo {
        SessionInfo {
            client: Some(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1))),
            helo: Some(helo.into()),
            user: user.map(str::to_string),
            ..SessionInfo::default()
        }
    }

    #[tokio::test]
    async fn bad_helo_is_refused_at_mail_unless_authenticated() {
        let f = helo_only(Refusal::Reject);
        let refused = f
            .mail(
                &session("localhost", None),
                &crate::envelope::Sender::parse("a@example.test").unwrap(),
            )
            .await
            .unwrap();
        assert_eq!(refused, Verdict::reject(Reply::bad_helo()));
        let authenticated = f
            .mail(
                &session("localhost", Some("alice")),
                &crate::envelope::Sender::parse("a@example.test").unwrap(),
            )
            .await;
        assert_eq!(authenticated, Ok(Verdict::accept()));
        let fine = f
            .mail(&session("client.example.test", None), &crate::envelope::Sender::Null)
            .await;
        assert_eq!(fine, Ok(Verdict::accept()));
        let deferred = helo_only(Refusal::TempFail)
            .mail(&session("10.0.0.1", None), &crate::envelope::Sender::Null)
            .await;
        assert_eq!(deferred, Ok(Verdict::tempfail(Reply::bad_helo_deferred())));
    }
}
