//! DANE for SMTP (RFC 7672): TLSA records, published with DNSSEC, that say an MX host must be
//! reached over STARTTLS with a certificate they name.
//!
//! smtpgate does not validate DNSSEC itself. Like Postfix with `smtp_dns_support_level = dnssec`,
//! it trusts the AD bit of the name servers in `[dns]` (or the system's): they must be a
//! validating resolver the gate can trust, on loopback or a path as safe. Without one the AD bit
//! is never set, every answer counts as insecure, and DANE never applies.
//!
//! [`Dane::hosts`] follows RFC 7672 2.2:
//!
//! 1. the domain's MX RRset (or, with no MX, the denial that makes the domain its own mail server)
//!    must be secure, otherwise no host of the domain uses DANE;
//! 2. a host whose address records are insecure does not use DANE;
//! 3. the TLSA RRset at `_<port>._tcp.<host>`: secure with usable records ([`Tlsa::is_usable`]):
//!    authenticated TLS ([`HostDane::Authenticated`]); secure with none usable: TLS without
//!    authentication, but TLS ([`HostDane::Mandatory`]); a secure denial or an insecure answer:
//!    no DANE; a failed lookup: the host cannot be used now ([`HostDane::Unavailable`]), since it
//!    may have TLSA records an attacker is hiding.
//!
//! Answers are cached for their TTL, an hour at most; failures are not.
//!
//! ```no_run
//! # async fn example() -> std::io::Result<()> {
//! use smtpgate::upstream::dane::{Dane, HostDane, SecureDns};
//! let dane = Dane::new(SecureDns::new(&["127.0.0.1:53".parse().unwrap()])?, 25);
//! let hosts = vec!["mx1.example.com".to_string()];
//! if let Ok(found) = dane.hosts("example.com", &hosts).await
//!     && let HostDane::Authenticated(records) = &found[0]
//! {
//!     let tls = smtpgate::upstream::dane::client_config(records.clone());
//! }
//! # Ok(())
//! # }
//! ```

mod dns;
#[cfg(test)]
mod tests;
mod tlsa;
mod verify;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use hickory_resolver::proto::rr::{RData, RecordType};

use crate::config::Config;

pub use dns::{Answer, QUERY_TIMEOUT, SecureDns};
pub use tlsa::{DANE_EE, DANE_TA, MATCH_FULL, MATCH_SHA256, MATCH_SHA512, SELECTOR_CERT, SELECTOR_SPKI, Tlsa, spki};
pub use verify::{DaneVerifier, client_config};

/// Answers are kept no longer than this, whatever their TTL.
pub const MAX_CACHE_TTL: Duration = Duration::from_secs(3600);

/// What DANE asks of one MX host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostDane {
    /// DANE does not apply: the MX, the address or the TLSA answer is insecure, or there are no
    /// TLSA records. The host is used as without DANE.
    NoDane,
    /// Secure, usable TLSA records: STARTTLS, with a certificate one of them matches.
    Authenticated(Vec<Tlsa>),
    /// Secure TLSA records, none of them usable: STARTTLS is still mandatory, the certificate is
    /// not checked (RFC 7672 2.2, last paragraphs).
    Mandatory,
    /// The host's TLSA or address lookup failed after a secure MX lookup: it must not be used
    /// until the lookup succeeds (the reason).
    Unavailable(String),
}

/// DANE lookups and their cache, shared by every MX delivery.
pub struct Dane {
    dns: SecureDns,
    port: u16,
    /// `[dns] nameservers` as configured (empty: the system's), to tell whether a reload changed them.
    nameservers: Vec<SocketAddr>,
    cache: Mutex<HashMap<(String, RecordType), (Answer, Instant)>>,
}

impl Dane {
    /// `port`: the port MX hosts are reached on (`[queue] smtp_port`, 25), which names the TLSA
    /// records (`_25._tcp.<host>`).
    pub fn new(dns: SecureDns, port: u16) -> Dane {
        Dane {
            dns,
            port,
            nameservers: Vec::new(),
            cache: Mutex::new(HashMap::new()),
        }
    }

    /// The DANE lookups `config` asks for: `None` when `[dane] enabled = false`.
    pub fn for_config(config: &Config) -> std::io::Result<Option<Arc<Dane>>> {
        if !config.dane.enabled {
            return Ok(None);
        }
        let dns = SecureDns::new(&config.dns.nameservers)?;
        let mut dane = Dane::new(dns, config.queue.smtp_port);
        dane.nameservers = config.dns.nameservers.clone();
        Ok(Some(Arc::new(dane)))
    }

    /// Whether these lookups (and their cache) still serve `config`: the same name servers and
    /// SMTP port.
    pub fn serves(&self, config: &Config) -> bool {
        self.nameservers == config.dns.nameservers && self.port == config.queue.smtp_port
    }

    /// What DANE asks of each of `hosts`, the mail servers of `domain` (its MX hosts, or the
    /// domain itself when it has no MX), in the same order. An error when the domain's MX
    /// lookup fails: whether DANE applies cannot be known.
    pub async fn hosts(&self, domain: &str, hosts: &[String]) -> Result<Vec<HostDane>, String> {
        let none = || hosts.iter().map(|_| HostDane::NoDane).collect();
        if domain.starts_with('[') {
            return Ok(none());
        }
        if !self.lookup(domain, RecordType::MX).await?.secure {
            return Ok(none());
        }
        let mut out = Vec::with_capacity(hosts.len());
        for host in hosts {
            out.push(self.host(host).await);
        }
        Ok(out)
    }

    /// What DANE asks of one host of a domain whose MX RRset is secure.
    async fn host(&self, host: &str) -> HostDane {
        match self.lookup(host, RecordType::A).await {
            Ok(a) if a.secure => {}
            Ok(_) => return HostDane::NoDane,
            Err(e) => return HostDane::Unavailable(e),
        }
        let name = format!("_{}._tcp.{host}", self.port);
        let answer = match self.lookup(&name, RecordType::TLSA).await {
            Ok(a) => a,
            Err(e) => return HostDane::Unavailable(e),
        };
        if !answer.secure || answer.records.is_empty() {
            return HostDane::NoDane;
        }
        let usable: Vec<Tlsa> = (answer.records.iter())
            .filter_map(tlsa)
            .filter(Tlsa::is_usable)
            .collect();
        if usable.is_empty() {
            HostDane::Mandatory
        } else {
            HostDane::Authenticated(usable)
        }
    }

    /// The answer to `name` `rtype`, from the cache while its TTL lasts.
    async fn lookup(&self, name: &str, rtype: RecordType) -> Result<Answer, String> {
        let key = (name.trim_end_matches('.').to_ascii_lowercase(), rtype);
        let now = Instant::now();
        if let Some((answer, expires)) = self.cache().get(&key)
            && *expires > now
        {
            return Ok(answer.clone());
        }
        let answer = self.dns.query(&key.0, rtype).await?;
        let ttl = Duration::from_secs(answer.ttl.into()).min(MAX_CACHE_TTL);
        let mut cache = self.cache();
        cache.retain(|_, (_, expires)| *expires > now);
        cache.insert(key, (answer.clone(), now + ttl));
        Ok(answer)
    }

    fn cache(&self) -> MutexGuard<'_, HashMap<(String, RecordType), (Answer, Instant)>> {
        self.cache.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A TLSA record's fields, when `rdata` is one.
fn tlsa(rdata: &RData) -> Option<Tlsa> {
    match rdata {
        RData::TLSA(t) => Some(Tlsa {
            usage: t.cert_usage().into(),
            selector: t.selector().into(),
            matching: t.matching().into(),
            data: t.cert_data().to_vec(),
        }),
        _ => None,
    }
}
