//! `kind = "auth"`: sender authentication of incoming mail: SPF (RFC 7208) for the client's
//! HELO and MAIL FROM, DKIM (RFC 6376, RFC 8463), ARC (RFC 8617) and DMARC (RFC 7489), recorded
//! in an `Authentication-Results:` header (RFC 8601).
//!
//! ```toml
//! [[filter]]
//! name = "auth"
//! kind = "auth"
//! hostname = "mx.example.test"     # the authserv-id; default: the machine's host name
//! nameservers = ["127.0.0.1:53"]   # default: the system resolver
//! dns_timeout = "5s"               # per DNS question
//! dmarc_policy = "report"          # or "enforce"
//! ```
//!
//! With `dmarc_policy = "enforce"`, a message that fails DMARC is rejected (`550 5.7.1`) when the
//! From: domain publishes `p=reject` and quarantined when it publishes `p=quarantine`. A DNS
//! failure (timeout, SERVFAIL) is a `temperror`, never a failure: such a message is accepted
//! with `dmarc=temperror` recorded, so a resolver outage cannot bounce legitimate mail.
//! With `"report"` (the default) the header is the only effect.
//!
//! Architecture invariant: this filter never turns a DNS failure into a permanent rejection.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use mail_auth::dmarc::Policy;
use mail_auth::dmarc::verify::DmarcParameters;
use mail_auth::hickory_resolver::config::{NameServerConfig, ResolverConfig, ResolverOpts};
use mail_auth::spf::verify::SpfParameters;
use mail_auth::{
    AuthenticatedMessage, AuthenticationResults, DkimOutput, DmarcOutput, DmarcResult, MessageAuthenticator, SpfOutput,
    SpfResult,
};
use serde::Deserialize;
use smtpgate_proto::Reply;

use super::options::{BuildErrors, options};
use super::{BoxFuture, Filter, FilterError, MessageInfo, Modification, Verdict};
use crate::config::values::{parse_duration, parse_nameserver};

const DEFAULT_DNS_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, Deserialize)]
struct Options {
    hostname: Option<String>,
    #[serde(default)]
    nameservers: Vec<String>,
    dns_timeout: Option<String>,
    dmarc_policy: Option<String>,
}

/// What a DMARC failure does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DmarcPolicy {
    /// Only record the result.
    Report,
    /// Apply the domain's `p=`: reject or quarantine.
    Enforce,
}

pub struct Auth {
    hostname: String,
    dmarc: DmarcPolicy,
    authenticator: MessageAuthenticator,
}

impl fmt::Debug for Auth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Auth")
            .field("hostname", &self.hostname)
            .field("dmarc", &self.dmarc)
            .finish_non_exhaustive()
    }
}

pub fn build(raw: toml::Table, _base_dir: &Path) -> Result<Arc<dyn Filter>, BuildErrors> {
    let o: Options = options(raw)?;
    let mut errors = BuildErrors::new();
    let dmarc = match o.dmarc_policy.as_deref() {
        None | Some("report") => DmarcPolicy::Report,
        Some("enforce") => DmarcPolicy::Enforce,
        Some(other) => {
            errors.push((
                "dmarc_policy".into(),
                format!("{other:?} is not one of \"enforce\", \"report\""),
            ));
            DmarcPolicy::Report
        }
    };
    let (timeout, nameservers, hostname) = dns_options(
        o.dns_timeout.as_deref(),
        &o.nameservers,
        ("hostname", o.hostname),
        &mut errors,
    );
    if !errors.is_empty() {
        return Err(errors);
    }
    let authenticator = authenticator(&nameservers, timeout).map_err(|e| vec![("nameservers".into(), e)])?;
    Ok(Arc::new(Auth {
        hostname,
        dmarc,
        authenticator,
    }))
}

pub(super) fn machine_hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".into())
}

/// A resolver on the given name servers (UDP, then TCP), or the system's when there are none.
/// mail-auth uses its own hickory version, so this mirrors `upstream::mx::resolver` on its types.
pub(super) fn authenticator(nameservers: &[SocketAddr], timeout: Duration) -> Result<MessageAuthenticator, String> {
    let (config, mut opts) = if nameservers.is_empty() {
        mail_auth::hickory_resolver::system_conf::read_system_conf()
            .map_err(|e| format!("cannot read the system resolver configuration: {e}"))?
    } else {
        let servers = nameservers
            .iter()
            .map(|ns| {
                let mut server = NameServerConfig::udp_and_tcp(ns.ip());
                for conn in &mut server.connections {
                    conn.port = ns.port();
                }
                server
            })
            .collect();
        (ResolverConfig::from_name_servers(servers), ResolverOpts::default())
    };
    opts.timeout = timeout;
    opts.attempts = 1;
    MessageAuthenticator::new(config, opts).map_err(|e| format!("cannot build the DNS resolver: {e}"))
}

/// The domain of an address (`""` when none).
fn domain_of(address: &str) -> &str {
    address.rsplit_once('@').map_or("", |(_, d)| d)
}

/// Every result the checks produced.
pub(super) struct Results<'x> {
    pub(super) client: Option<IpAddr>,
    pub(super) helo: String,
    pub(super) spf_helo: Option<SpfOutput>,
    pub(super) spf_mail: Option<SpfOutput>,
    pub(super) dkim: Vec<DkimOutput<'x>>,
    pub(super) arc: Option<mail_auth::ArcOutput<'x>>,
    pub(super) dmarc: Option<DmarcOutput>,
    pub(super) header_from: String,
}

/// The checks with a resolver and an authserv-id, shared by `auth` and `arc_seal`.
pub(super) struct Checker<'a> {
    pub(super) hostname: &'a str,
    pub(super) authenticator: &'a MessageAuthenticator,
}

impl Auth {
    fn checker(&self) -> Checker<'_> {
        Checker {
            hostname: &self.hostname,
            authenticator: &self.authenticator,
        }
    }
}

impl Checker<'_> {
    async fn spf(&self, m: &MessageInfo<'_>, ip: IpAddr, helo: &str) -> (Option<SpfOutput>, SpfOutput) {
        let helo_result = if helo.is_empty() {
            None
        } else {
            let params = SpfParameters::verify_ehlo(ip, helo, self.hostname);
            Some(self.authenticator.verify_spf(params).await)
        };
        let mail_result = if m.sender.is_null() {
            // RFC 7208 2.4: for the null sender, the MAIL FROM identity is postmaster@HELO.
            helo_result
                .clone()
                .unwrap_or_else(|| SpfOutput::new(String::new()).with_result(SpfResult::None))
        } else {
            let params = SpfParameters::verify_mail_from(ip, helo, self.hostname, m.sender.as_str());
            self.authenticator.verify_spf(params).await
        };
        (helo_result, mail_result)
    }

    /// SPF (HELO and MAIL FROM), DKIM, ARC (when the message has ARC sets) and DMARC.
    pub(super) async fn check<'x>(
        &self,
        m: &MessageInfo<'_>,
        parsed: Option<&'x AuthenticatedMessage<'x>>,
    ) -> Results<'x> {
        let helo = m.session.helo.clone().unwrap_or_default();
        let (spf_helo, spf_mail) = match m.session.client {
            Some(ip) => {
                let (h, mf) = self.spf(m, ip, &helo).await;
                (h, Some(mf))
            }
            None => (None, None),
        };
        let mut results = Results {
            client: m.session.client,
            helo,
            spf_helo,
            spf_mail,
            dkim: Vec::new(),
            arc: None,
            dmarc: None,
            header_from: String::new(),
        };
        let Some(parsed) = parsed else {
            return results;
        };
        results.header_from = parsed.from.first().cloned().unwrap_or_default();
        results.dkim = self.authenticator.verify_dkim(parsed).await;
        if !parsed.ams_headers.is_empty() {
            results.arc = Some(self.authenticator.verify_arc(parsed).await);
        }
        let no_spf = SpfOutput::new(String::new()).with_result(SpfResult::None);
        let spf = results.spf_mail.as_ref().unwrap_or(&no_spf);
        let mail_from_domain = match domain_of(m.sender.as_str()) {
            "" => results.helo.as_str(),
            d => d,
        };
        let params = DmarcParameters::new(parsed, &results.dkim, mail_from_domain, spf);
        results.dmarc = Some(self.authenticator.verify_dmarc(params).await);
        results
    }
}

impl Auth {
    /// The action for a DMARC result: only a definite failure under `enforce` has an effect.
    fn action(&self, dmarc: Option<&DmarcOutput>) -> Verdict {
        let Some(dmarc) = dmarc.filter(|_| self.dmarc == DmarcPolicy::Enforce) else {
            return Verdict::accept();
        };
        if !matches!(dmarc.result(), DmarcResult::Fail(_)) {
            return Verdict::accept();
        }
        match dmarc.policy() {
            Policy::Reject => Verdict::reject(Reply::dmarc_rejected(dmarc.domain())),
            Policy::Quarantine => Verdict::quarantine(format!("fails the DMARC policy of {}", dmarc.domain())),
            Policy::None | Policy::Unspecified => Verdict::accept(),
        }
    }
}

impl Filter for Auth {
    fn data<'a>(&'a self, m: &'a MessageInfo<'a>) -> BoxFuture<'a, Result<Verdict, FilterError>> {
        Box::pin(async move {
            let parsed = AuthenticatedMessage::parse(m.message);
            let results = self.checker().check(m, parsed.as_ref()).await;
            let header = self.header_for(&results, m.sender.as_str());
            let mut verdict = self.action(results.dmarc.as_ref());
            tracing::debug!(target: "smtpgate::filter::auth", result = %header.replace("\r\n\t", " "), "authentication");
            // RFC 8601 5: results that claim to be ours but came with the message are forged.
            if let Some(cleaned) = without_results_of(m.message, &self.hostname) {
                tracing::info!(authserv_id = %self.hostname, "removed Authentication-Results fields that claimed this host's authserv-id");
                verdict = verdict.with(Modification::ReplaceMessage(cleaned));
            }
            Ok(verdict.with(Modification::AddHeader("Authentication-Results".into(), header)))
        })
    }
}

impl Auth {
    /// The `Authentication-Results:` value (RFC 8601 2.2): authserv-id, then one resinfo per check.
    fn header_for(&self, r: &Results<'_>, sender: &str) -> String {
        let mut value = results_for(&self.hostname, r, sender).to_string();
        if r.client.is_none() {
            value.push_str(";\r\n\tspf=none");
        }
        if r.dkim.is_empty() {
            value.push_str(";\r\n\tdkim=none");
        }
        if let Some(dmarc) = &r.dmarc {
            // An empty authserv-id: only the `;\r\n\tdmarc=...` resinfo, kept after dkim=none.
            value.push_str(&AuthenticationResults::new("").with_dmarc_result(dmarc).to_string());
        }
        value
    }
}

/// `message` without the `Authentication-Results:` fields whose authserv-id is `authserv_id`
/// (case-insensitive), or `None` when it has none.
pub(super) fn without_results_of(message: &[u8], authserv_id: &str) -> Option<Vec<u8>> {
    let section = crate::message::header_section(message);
    let mut out = Vec::with_capacity(message.len());
    let mut removed = false;
    for field in &section.fields {
        if claims(field.raw, authserv_id) {
            removed = true;
        } else {
            out.extend_from_slice(field.raw);
        }
    }
    out.extend_from_slice(&message[section.end..]);
    removed.then_some(out)
}

/// Whether a whole header field is an `Authentication-Results:` field for `authserv_id`.
fn claims(field: &[u8], authserv_id: &str) -> bool {
    let Some(colon) = field.iter().position(|&b| b == b':') else {
        return false;
    };
    if !field[..colon]
        .trim_ascii()
        .eq_ignore_ascii_case(b"authentication-results")
    {
        return false;
    }
    let value = String::from_utf8_lossy(&field[colon + 1..]);
    let id = value
        .split(';')
        .next()
        .unwrap_or("")
        .split_ascii_whitespace()
        .find(|t| !t.starts_with('('))
        .unwrap_or("");
    id.eq_ignore_ascii_case(authserv_id)
}

/// The SPF, DKIM and ARC resinfos of `r` (DMARC is left to the caller).
pub(super) fn results_for<'h>(hostname: &'h str, r: &Results<'_>, sender: &str) -> AuthenticationResults<'h> {
    let mut ar = AuthenticationResults::new(hostname);
    if let (Some(ip), Some(spf)) = (r.client, &r.spf_helo) {
        ar = ar.with_spf_ehlo_result(spf, ip, &r.helo);
    }
    if let (Some(ip), Some(spf)) = (r.client, &r.spf_mail) {
        ar = ar.with_spf_mailfrom_result(spf, ip, sender, &r.helo);
    }
    ar = ar.with_dkim_results(&r.dkim, &r.header_from);
    if let (Some(ip), Some(arc)) = (r.client, &r.arc) {
        ar = ar.with_arc_result(arc, ip);
    }
    ar
}

/// The resolver and host-name options `auth` and `arc_seal` share: `dns_timeout`, `nameservers`,
/// and the host name under its key. Mistakes are added to `errors`.
pub(super) fn dns_options(
    dns_timeout: Option<&str>,
    nameservers: &[String],
    (host_key, host): (&str, Option<String>),
    errors: &mut BuildErrors,
) -> (Duration, Vec<SocketAddr>, String) {
    let timeout = match dns_timeout.map(parse_duration) {
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
    };
    let mut servers = Vec::new();
    for (i, text) in nameservers.iter().enumerate() {
        match parse_nameserver(text) {
            Ok(addr) => servers.push(addr),
            Err(e) => errors.push((format!("nameservers[{i}]"), e.to_string())),
        }
    }
    let host = host.unwrap_or_else(machine_hostname);
    if host.is_empty() || host.contains(|c: char| c.is_whitespace() || c == ';') {
        errors.push((host_key.into(), format!("{host:?} is not a host name")));
    }
    (timeout, servers, host)
}
