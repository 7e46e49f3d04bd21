//! MTA-STS (RFC 8461): finding, fetching and caching a destination domain's policy, and the TLS
//! configuration that delivering under an enforced policy needs.
//!
//! [`MtaSts::policy`] follows RFC 8461 3 and 5.1:
//!
//! 1. look up the `_mta-sts.<domain>` TXT record; exactly one `v=STSv1` record announces a policy
//!    and its `id` ([`parse_txt`]);
//! 2. a cached policy with that id, still within its `max_age`, is used as it is;
//! 3. otherwise `https://mta-sts.<domain>/.well-known/mta-sts.txt` is fetched (certificate checked
//!    against the trust roots, no redirects, `text/plain`, 64 KiB at most, 10 s in all) and parsed
//!    ([`Policy::parse`]);
//! 4. when that fails, a cached policy still within its `max_age` stays in force.
//!
//! A cached policy is also fetched again once half of its `max_age` has passed, so a policy in
//! use does not lapse because its host was briefly unreachable at the moment it expired (RFC 8461
//! 5.1 asks senders to refresh policies before they expire). A failed fetch for a given TXT id is
//! not tried again for [`RETRY_AFTER_FAILURE`], so a broken policy host costs one timeout per
//! minute, not one per message.
//!
//! What the answer means for delivery (RFC 8461 4 and 5) is the caller's: with [`Mode::Enforce`]
//! only an MX that [`Policy::matches`] may be used, over STARTTLS with a certificate that
//! [`verifying_client_config`] accepts for the MX host name. An error, like `Ok(None)`, means
//! delivery goes on as though the domain had no policy (RFC 8461 3.3); it is worth logging.
//!
//! ```no_run
//! # async fn example(resolver: hickory_resolver::TokioResolver) {
//! use smtpgate::upstream::mta_sts::{Mode, MtaSts, webpki_roots};
//! let sts = MtaSts::new(resolver, webpki_roots(), 443);
//! if let Ok(Some(policy)) = sts.policy("example.com").await {
//!     let allowed = policy.mode != Mode::Enforce || policy.matches("mx1.example.com");
//! }
//! # }
//! ```

mod fetch;
mod policy;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use hickory_resolver::TokioResolver;

pub use fetch::{FETCH_TIMEOUT, MAX_BODY};
pub use policy::{MAX_AGE_LIMIT, Mode, Policy, parse_txt};

/// After a failed fetch for a domain and TXT id, the same fetch is not tried again for this long.
pub const RETRY_AFTER_FAILURE: Duration = Duration::from_secs(60);

/// Policy discovery, fetching and the policy cache, shared by every delivery.
pub struct MtaSts {
    resolver: TokioResolver,
    fetcher: fetch::Fetcher,
    cache: Mutex<Cache>,
}

impl MtaSts {
    /// `roots`: the trust anchors for the policy host's certificate (production: webpki roots;
    /// tests: a test CA). `https_port`: 443 in production; tests use another port. `resolver`
    /// resolves `_mta-sts.<domain>` TXT and `mta-sts.<domain>` A/AAAA.
    pub fn new(resolver: TokioResolver, roots: Arc<rustls::RootCertStore>, https_port: u16) -> MtaSts {
        let mut tls = (*verifying_client_config(roots)).clone();
        tls.alpn_protocols = vec![b"http/1.1".to_vec()];
        MtaSts {
            fetcher: fetch::Fetcher {
                resolver: resolver.clone(),
                tls: Arc::new(tls),
                port: https_port,
            },
            resolver,
            cache: Mutex::new(Cache::default()),
        }
    }

    /// The policy in force for `domain`: from the cache while it is fresh and the TXT id is
    /// unchanged; otherwise fetched again.
    ///
    /// `Ok(None)`: the domain has no MTA-STS (no TXT record and nothing cached). A fetch failure
    /// while a cached policy is still within max_age keeps the cached one (RFC 8461 5.1). Errors
    /// only when there is a TXT record but no usable policy; RFC 8461 3.3 then has the sender
    /// deliver as though the domain had no policy.
    ///
    /// A failed TXT lookup (a DNS timeout, SERVFAIL) counts as no record: the cached policy, if
    /// fresh, else `Ok(None)`. Address literals and names that are not letter-digit-hyphen domain
    /// names have no policy.
    pub async fn policy(&self, domain: &str) -> Result<Option<Policy>, String> {
        let Some(domain) = policy_domain(domain) else {
            return Ok(None);
        };
        let txt_id = self.txt_id(&domain).await;
        // The lock is released here, before any await: `plan` returns owned values.
        let plan = self.cache().plan(&domain, txt_id.as_deref(), Instant::now());
        match plan {
            Plan::Use(policy) => Ok(Some(policy)),
            Plan::NoPolicy => Ok(None),
            Plan::Failed(error) => Err(error),
            Plan::Fetch(id) => {
                let fetched = self.fetch(&domain, &id).await;
                self.cache().record(&domain, &id, fetched, Instant::now(), unix_now())
            }
        }
    }

    /// Cached policies, for listing (domain, policy, fetched unix time).
    ///
    /// Only policies still within their `max_age`, sorted by domain.
    pub fn cached(&self) -> Vec<(String, Policy, u64)> {
        let now = Instant::now();
        let cache = self.cache();
        let mut out: Vec<_> = (cache.policies.iter())
            .filter(|(_, e)| e.is_fresh(now))
            .map(|(d, e)| (d.clone(), e.policy.clone(), e.fetched_unix))
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }

    /// The id of the domain's one `v=STSv1` TXT record, if it has one.
    async fn txt_id(&self, domain: &str) -> Option<String> {
        let name = format!("_mta-sts.{domain}.");
        match self.resolver.txt_lookup(name.as_str()).await {
            Ok(lookup) => {
                let records: Vec<String> = (lookup.iter())
                    .map(|txt| txt.txt_data().iter().map(|s| String::from_utf8_lossy(s)).collect())
                    .collect();
                parse_txt(&records)
            }
            Err(e) if e.is_no_records_found() => None,
            Err(e) => {
                tracing::debug!(domain, error = %e, "MTA-STS TXT lookup failed");
                None
            }
        }
    }

    /// Fetches and parses the domain's policy.
    async fn fetch(&self, domain: &str, id: &str) -> Result<Policy, String> {
        let text = self.fetcher.fetch(domain).await?;
        let policy = Policy::parse(&text, id).map_err(|e| format!("MTA-STS policy of {domain}: {e}"))?;
        tracing::info!(domain, id, mode = ?policy.mode, mx = ?policy.mx, "MTA-STS policy fetched");
        Ok(policy)
    }

    fn cache(&self) -> MutexGuard<'_, Cache> {
        self.cache.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The client configuration for delivering to an MX under an enforced policy (RFC 8461 4.2): the
/// certificate must chain to one of `roots` and be valid for the MX host name, which
/// [`crate::upstream::client`] gives as the TLS server name.
pub fn verifying_client_config(roots: Arc<rustls::RootCertStore>) -> Arc<rustls::ClientConfig> {
    let config = rustls::ClientConfig::builder_with_provider(crate::tls::provider())
        .with_safe_default_protocol_versions()
        .expect("default protocol versions are supported")
        .with_root_certificates(roots)
        .with_no_client_auth();
    Arc::new(config)
}

pub use crate::tls::webpki_roots;

/// `domain` in lower case without a trailing dot, or None when it cannot have a policy.
fn policy_domain(domain: &str) -> Option<String> {
    let domain = domain.strip_suffix('.').unwrap_or(domain).to_ascii_lowercase();
    policy::is_domain(&domain).then_some(domain)
}

fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// What [`MtaSts::policy`] does after the TXT lookup.
#[derive(Debug, PartialEq, Eq)]
enum Plan {
    /// Answer with this (cached) policy.
    Use(Policy),
    /// The domain has no policy.
    NoPolicy,
    /// Fetch the policy announced with this TXT id.
    Fetch(String),
    /// A fetch for this id failed a moment ago, and nothing fresh is cached.
    Failed(String),
}

/// Policies by domain, and the last failed fetch by domain.
#[derive(Default)]
struct Cache {
    policies: HashMap<String, Entry>,
    failures: HashMap<String, Failure>,
}

struct Entry {
    policy: Policy,
    fetched_unix: u64,
    fetched_at: Instant,
}

impl Entry {
    fn age(&self, now: Instant) -> Duration {
        now.saturating_duration_since(self.fetched_at)
    }

    fn is_fresh(&self, now: Instant) -> bool {
        self.age(now) < self.policy.max_age
    }

    /// Past half its lifetime: time to fetch it again, keeping it if that fails.
    fn refresh_due(&self, now: Instant) -> bool {
        self.age(now) >= self.policy.max_age / 2
    }
}

struct Failure {
    id: String,
    at: Instant,
    error: String,
}

impl Cache {
    /// What to do for `domain`, whose TXT record announces `txt_id` (None: no usable record).
    fn plan(&mut self, domain: &str, txt_id: Option<&str>, now: Instant) -> Plan {
        if self.policies.get(domain).is_some_and(|e| !e.is_fresh(now)) {
            self.policies.remove(domain);
        }
        let fresh = self.policies.get(domain);
        let cached = || fresh.map(|e| e.policy.clone());
        let Some(id) = txt_id else {
            return cached().map_or(Plan::NoPolicy, Plan::Use);
        };
        if let Some(e) = fresh
            && e.policy.id == id
            && !e.refresh_due(now)
        {
            return Plan::Use(e.policy.clone());
        }
        if let Some(f) = self.failures.get(domain)
            && f.id == id
            && now.saturating_duration_since(f.at) < RETRY_AFTER_FAILURE
        {
            return cached().map_or_else(|| Plan::Failed(f.error.clone()), Plan::Use);
        }
        Plan::Fetch(id.to_string())
    }

    /// Records the outcome of fetching `domain`'s policy for TXT id `id`; returns the answer.
    fn record(
        &mut self,
        domain: &str,
        id: &str,
        fetched: Result<Policy, String>,
        now: Instant,
        unix: u64,
    ) -> Result<Option<Policy>, String> {
        match fetched {
            Ok(policy) => {
                self.failures.remove(domain);
                let entry = Entry {
                    policy: policy.clone(),
                    fetched_unix: unix,
                    fetched_at: now,
                };
                self.policies.insert(domain.to_string(), entry);
                Ok(Some(policy))
            }
            Err(error) => {
                let failure = Failure {
                    id: id.to_string(),
                    at: now,
                    error: error.clone(),
                };
                self.failures.insert(domain.to_string(), failure);
                match self.policies.get(domain).filter(|e| e.is_fresh(now)) {
                    Some(e) => {
                        tracing::warn!(domain, error, kept = %e.policy.id, "MTA-STS policy fetch failed; cached policy kept");
                        Ok(Some(e.policy.clone()))
                    }
                    None => {
                        tracing::warn!(domain, error, "MTA-STS policy fetch failed");
                        Err(error)
                    }
                }
            }
        }
    }
}
