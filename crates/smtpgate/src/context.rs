//! What every part of a running server shares: configuration, spool, metrics, resolver, pools;
//! and the one place that builds it, at start ([`Context::start`]) and at each reload
//! ([`Context::successor`]). What lives for the whole process (the spool, metrics, queue ids, the
//! quarantine, the suppression list, counters, caches) is carried from one context to the next;
//! what a configuration decides (routing, pools, shaping and bounce rules) is built anew.

use std::path::PathBuf;
use std::sync::Arc;

use hickory_resolver::TokioResolver;

use crate::config::Config;
use crate::envelope::IdGen;
use crate::metrics::Metrics;
use crate::spool::Spool;
use crate::upstream::Dialer;
use crate::upstream::pool::Pools;

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
    pub pools: Arc<Pools>,
    /// Messages set aside by filters.
    pub quarantine: Arc<crate::quarantine::Quarantine>,
    /// Limits per destination (the shaping file) and the counters they act on.
    pub shaper: crate::shaping::Shaper,
    /// Bounce classification, the suppression list, complaints and late bounces.
    pub feedback: Arc<crate::feedback::Feedback>,
    /// The Redis that several nodes share (`[redis]`), connected at start-up.
    pub shared: Option<crate::shared::Shared>,
    /// MTA-STS policies (cache kept across reloads); `None` when `[mta_sts] enabled = false`.
    pub mta_sts: Option<Arc<crate::upstream::mta_sts::MtaSts>>,
    /// DANE lookups (cache kept across reloads while `[dns]` and the SMTP port stay the same);
    /// `None` when `[dane] enabled = false`.
    pub dane: Option<Arc<crate::upstream::dane::Dane>>,
    /// The certificate-verifying client configuration an enforced MTA-STS policy needs.
    pub verified_tls: Arc<rustls::ClientConfig>,
    /// The `[[filter]]`s, built; listeners, routes and spooled messages name them.
    pub filters: Arc<crate::filter::Filters>,
    /// The `[[webhook]]`s: each with its durable outbox; a reload keeps an unchanged one's
    /// sender. Senders run from `Webhooks::start`, once this context is the server's.
    pub webhooks: Arc<crate::webhook::Webhooks>,
    /// The message history: every event goes through here (kept across reloads; `[events]`
    /// changes take effect at the next start).
    pub events: crate::events::Events,
    /// Where the event writer hands events for the webhooks (kept across reloads).
    relay: WebhookRelay,
    /// Analytics: counts per time bucket, kept under `<spool>/stats/` (kept across reloads).
    pub stats: Arc<crate::stats::Stats>,
}

/// Why a context could not be built.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("cannot open spool {0}: {1}")]
    Spool(PathBuf, std::io::Error),
    #[error("cannot set up DNS resolver: {0}")]
    Dns(std::io::Error),
    #[error("routing: {0}")]
    Routing(String),
    /// A filter's options are wrong (each mistake under its key).
    #[error("{0}")]
    Config(#[from] crate::config::ConfigError),
    #[error("{0}")]
    Setup(String),
}

/// What one context hands to the next: everything that lives as long as the process.
struct Kept {
    spool: Arc<Spool>,
    metrics: Arc<Metrics>,
    ids: Arc<IdGen>,
    memory: Arc<crate::budget::MemoryBudget>,
    quarantine: Arc<crate::quarantine::Quarantine>,
    client_tls: Arc<rustls::ClientConfig>,
    shared: Option<crate::shared::Shared>,
    mta_sts: Option<Arc<crate::upstream::mta_sts::MtaSts>>,
    verified_tls: Arc<rustls::ClientConfig>,
    suppression: Arc<crate::suppress::SuppressionList>,
    sent: Arc<crate::sent::SentLog>,
    shaping: Option<Arc<crate::shaping::State>>,
    feedback: Option<Arc<crate::feedback::State>>,
    /// The DANE cache, reused while it serves the new configuration.
    dane: Option<Arc<crate::upstream::dane::Dane>>,
    /// The previous configuration's webhooks (their outboxes stay open for the process).
    webhooks: Arc<crate::webhook::Webhooks>,
    /// Where the event writer hands events for the webhooks.
    relay: WebhookRelay,
    events: crate::events::Events,
    stats: Arc<crate::stats::Stats>,
}

impl Context {
    /// The first context: opens and recovers the spool (returning what it found), and everything
    /// else that lives as long as the process.
    pub fn start(
        config: Arc<Config>,
        shared: Option<crate::shared::Shared>,
    ) -> Result<(Arc<Context>, Vec<crate::spool::Recovered>), BuildError> {
        let spool_dir = std::path::absolute(&config.spool.dir).unwrap_or(config.spool.dir.clone());
        let at_spool = |e| BuildError::Spool(spool_dir.clone(), e);
        let (spool, found) = Spool::open(&spool_dir, config.spool.segment_size).map_err(at_spool)?;
        let roots = crate::tls::trust_roots(config.mta_sts.ca_file.as_deref()).map_err(BuildError::Setup)?;
        let mta_sts = match config.mta_sts.enabled {
            true => Some(Arc::new(crate::upstream::mta_sts::MtaSts::new(
                crate::upstream::mx::resolver(&config.dns.nameservers).map_err(BuildError::Dns)?,
                roots.clone(),
                config.mta_sts.https_port,
            ))),
            false => None,
        };
        let metrics = Metrics::default();
        metrics.spool_damaged.add(spool.damaged());
        let metrics = Arc::new(metrics);
        // The webhooks are the events' further sink, through a relay that each configuration's
        // webhooks replace (the event writer lives as long as the process).
        let relay = WebhookRelay::default();
        let sinks: Vec<Box<dyn crate::events::EventSink>> = vec![Box::new(relay.clone())];
        let events =
            crate::events::Events::open(&config.events, &spool_dir, config.queue.max_age, metrics.clone(), sinks)
                .map_err(|e| BuildError::Setup(e.to_string()))?;
        let kept = Kept {
            spool: Arc::new(spool),
            metrics,
            ids: Arc::new(IdGen::default()),
            memory: crate::budget::MemoryBudget::new(config.spool.memory_budget),
            quarantine: Arc::new(crate::quarantine::Quarantine::open(&spool_dir).map_err(at_spool)?),
            client_tls: crate::tls::client_config(),
            mta_sts,
            verified_tls: crate::upstream::mta_sts::verifying_client_config(roots),
            suppression: crate::feedback::Feedback::open_suppression(&spool_dir).map_err(at_spool)?,
            sent: crate::sent::SentLog::open(&spool_dir, config.suppression.reports_remember, shared.clone())
                .map_err(at_spool)?,
            shared,
            shaping: None,
            feedback: None,
            dane: None,
            webhooks: Arc::new(crate::webhook::Webhooks::open(&spool_dir, &[]).map_err(BuildError::Setup)?),
            relay,
            events,
            stats: Arc::new(crate::stats::Stats::open(&spool_dir).map_err(at_spool)?),
        };
        Ok((Context::build(config, kept)?, found))
    }

    /// The context for a new configuration: the same spool, metrics, queue ids and counters;
    /// new routing, resolver, pools, shaping and bounce rules. Settings only a restart can
    /// change are logged and keep their old values.
    pub fn successor(&self, config: Arc<Config>) -> Result<Arc<Context>, BuildError> {
        if config.spool.dir != self.config.spool.dir {
            tracing::warn!("spool.dir changed: this takes effect at the next restart");
        }
        if config.redis != self.config.redis {
            tracing::warn!("[redis] changed: this takes effect at the next restart");
        }
        if config.events != self.config.events {
            tracing::warn!("[events] changed: this takes effect at the next restart");
        }
        if config.mta_sts != self.config.mta_sts {
            tracing::warn!("[mta_sts] changed: this takes effect at the next restart");
        }
        let kept = Kept {
            spool: self.spool.clone(),
            metrics: self.metrics.clone(),
            ids: self.ids.clone(),
            memory: self.memory.clone(),
            quarantine: self.quarantine.clone(),
            client_tls: self.client_tls.clone(),
            shared: self.shared.clone(),
            mta_sts: self.mta_sts.clone(),
            verified_tls: self.verified_tls.clone(),
            suppression: self.feedback.suppression.clone(),
            sent: self.feedback.sent.clone(),
            shaping: Some(self.shaper.state()),
            feedback: Some(self.feedback.state()),
            dane: self.dane.clone(),
            webhooks: self.webhooks.clone(),
            relay: self.relay.clone(),
            events: self.events.clone(),
            stats: self.stats.clone(),
        };
        Context::build(config, kept)
    }

    /// What a configuration decides, around what is kept.
    fn build(config: Arc<Config>, kept: Kept) -> Result<Arc<Context>, BuildError> {
        let filters = crate::filter::Filters::build(&config)?;
        let router = crate::route::Router::new(config.clone()).map_err(BuildError::Routing)?;
        let resolver = crate::upstream::mx::resolver(&config.dns.nameservers).map_err(BuildError::Dns)?;
        let dialer = Arc::new(Dialer {
            resolver: resolver.clone(),
            hostname: config.hostname.clone(),
            client_tls: kept.client_tls.clone(),
            queue: config.queue.clone(),
        });
        let pools = Pools::new(&config, dialer).map_err(BuildError::Setup)?;
        let shaper = crate::shaping::Shaper::new(config.shaping_file.clone(), &config.queue, kept.shaping)
            .with_shared(kept.shared.clone())
            .with_warmup_file(kept.spool.dir().join("warmup.json"));
        let feedback = crate::feedback::Feedback::new(
            config.bounce_rules.clone(),
            kept.suppression,
            kept.sent,
            &config.suppression,
            kept.feedback,
        )
        .with_shared(kept.shared.clone());
        let dane = match kept.dane.filter(|d| d.serves(&config)) {
            Some(same) if config.dane.enabled => Some(same),
            _ => crate::upstream::dane::Dane::for_config(&config).map_err(BuildError::Dns)?,
        };
        // Last, so that a mistake above leaves no outbox opened for nothing.
        let webhooks = Arc::new(kept.webhooks.successor(&config.webhooks).map_err(BuildError::Setup)?);
        // Events go to the newest configuration's webhooks: an unchanged webhook is the same one,
        // and a changed one writes to the same outbox as before.
        kept.relay.set(webhooks.clone());
        Ok(Arc::new(Context {
            webhooks,
            relay: kept.relay,
            spool: kept.spool,
            metrics: kept.metrics,
            resolver,
            client_tls: kept.client_tls,
            ids: kept.ids,
            memory: kept.memory,
            router: Arc::new(router),
            pools: Arc::new(pools),
            quarantine: kept.quarantine,
            shaper,
            feedback: Arc::new(feedback),
            shared: kept.shared,
            mta_sts: kept.mta_sts,
            dane,
            verified_tls: kept.verified_tls,
            filters: Arc::new(filters),
            events: kept.events,
            stats: kept.stats,
            config,
        }))
    }
}

/// Hands every recorded event to the webhooks of the configuration built last.
#[derive(Clone, Default)]
struct WebhookRelay(Arc<std::sync::RwLock<Option<Arc<crate::webhook::Webhooks>>>>);

impl WebhookRelay {
    fn set(&self, webhooks: Arc<crate::webhook::Webhooks>) {
        *self.0.write().unwrap_or_else(|e| e.into_inner()) = Some(webhooks);
    }
}

impl crate::events::EventSink for WebhookRelay {
    fn publish(&self, json: &str) {
        let webhooks = self.0.read().unwrap_or_else(|e| e.into_inner()).clone();
        let Some(webhooks) = webhooks.filter(|w| !w.is_empty()) else {
            return;
        };
        match serde_json::from_str::<serde_json::Value>(json) {
            Ok(event) => webhooks.publish(&event),
            Err(e) => tracing::error!(error = %e, "an event could not be read back for the webhooks"),
        }
    }
}
