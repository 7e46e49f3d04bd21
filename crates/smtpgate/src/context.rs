//! What every part of a running server shares: configuration, spool, metrics, resolver, pools.

use std::sync::Arc;

use hickory_resolver::TokioResolver;

use crate::config::Config;
use crate::deliver::pool::Pools;
use crate::envelope::IdGen;
use crate::metrics::Metrics;
use crate::spool::Spool;

pub struct Context {
    pub config: Arc<Config>,
    pub spool: Arc<Spool>,
    pub metrics: Arc<Metrics>,
    pub resolver: TokioResolver,
    pub client_tls: Arc<rustls::ClientConfig>,
    pub ids: Arc<IdGen>,
    /// Message content held in memory by all sessions (kept across reloads).
    pub memory: Arc<crate::budget::MemoryBudget>,
    /// Routing rules, aliases and Sieve scripts, compiled from `config`.
    pub router: Arc<crate::route::Router>,
    /// Run-time state of the upstream pools: health, circuit breakers, idle connections.
    pub pools: Pools,
    /// Messages set aside by filters.
    pub quarantine: Arc<crate::quarantine::Quarantine>,
    /// Limits per destination (the shaping file) and the counters they act on.
    pub shaper: crate::shaping::Shaper,
    /// Bounce classification, the suppression list, complaints and late bounces.
    pub feedback: Arc<crate::feedback::Feedback>,
    /// The Redis that several nodes share (`[redis]`), connected at start-up.
    pub shared: Option<crate::shared::Shared>,
    /// MTA-STS policies (cache kept across reloads); `None` when `[mta_sts] enabled = false`.
    pub mta_sts: Option<Arc<crate::deliver::mta_sts::MtaSts>>,
    /// DANE lookups (cache kept across reloads while `[dns]` and the SMTP port stay the same);
    /// `None` when `[dane] enabled = false`.
    pub dane: Option<Arc<crate::deliver::dane::Dane>>,
    /// The certificate-verifying client configuration an enforced MTA-STS policy needs.
    pub verified_tls: Arc<rustls::ClientConfig>,
}
