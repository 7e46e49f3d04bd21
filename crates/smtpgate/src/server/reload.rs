//! Live reload (SIGHUP, `smtpgate reload`): the new configuration is checked whole and built
//! before anything changes; on any error the running configuration stays.
//!
//! Architecture invariant: sessions and deliveries already under way finish with the
//! configuration they started with; only new connections and new delivery attempts see the new one.

use std::sync::Arc;

use super::{Server, listener_state};
use crate::config::Config;
use crate::context::Context;
use crate::deliver::pool::Pools;
use crate::route::Router;

impl Server {
    /// Switches to `config`. Returns what went wrong if it cannot be used; the old one then stays.
    pub async fn reload(&mut self, config: Config) -> Result<(), String> {
        let config = Arc::new(config);
        let ctx = successor(&self.ctx, config.clone())?;
        let shutdown = self.shutdown.subscribe();
        let states = config
            .listeners
            .iter()
            .map(|lc| listener_state(lc, &ctx, &self.queue, &shutdown, &self.sessions))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| e.to_string())?;
        // Listeners first: if one cannot be bound, nothing has changed yet.
        self.listeners.apply(states).await.map_err(|e| e.to_string())?;
        self.queue.set_context(ctx.clone());
        Pools::start(&ctx);
        self.ctx = ctx;
        self.grace = config.shutdown_timeout;
        tracing::info!(
            listeners = config.listeners.len(),
            routes = config.routes.len(),
            "configuration reloaded"
        );
        Ok(())
    }
}

/// The context for a new configuration: the same spool, metrics and queue ids, new routing,
/// resolver and pools.
fn successor(old: &Context, config: Arc<Config>) -> Result<Arc<Context>, String> {
    if config.spool.dir != old.config.spool.dir {
        tracing::warn!("spool.dir changed: this takes effect at the next restart");
    }
    let router = Router::new(config.clone()).map_err(|e| format!("routing: {e}"))?;
    let resolver = crate::deliver::mx::resolver(&config.dns.nameservers).map_err(|e| format!("DNS: {e}"))?;
    if config.redis != old.config.redis {
        tracing::warn!("[redis] changed: this takes effect at the next restart");
    }
    let shaper = crate::shaping::Shaper::new(config.shaping_file.clone(), &config.queue, Some(old.shaper.state()))
        .map_err(|e| format!("shaping: {e}"))?
        .with_shared(old.shared.clone());
    let feedback = crate::feedback::Feedback::new(
        config.bounce_rules.clone(),
        old.feedback.suppression.clone(),
        old.feedback.sent.clone(),
        &config.suppression,
        Some(old.feedback.state()),
    )
    .map_err(|e| format!("bounces: {e}"))?
    .with_shared(old.shared.clone());
    if config.mta_sts != old.config.mta_sts {
        tracing::warn!("[mta_sts] changed: this takes effect at the next restart");
    }
    let dane = match old.dane.as_ref().filter(|d| d.serves(&config)) {
        Some(same) if config.dane.enabled => Some(same.clone()),
        _ => crate::deliver::dane::Dane::for_config(&config).map_err(|e| format!("DNS: {e}"))?,
    };
    Ok(Arc::new(Context {
        dane,
        mta_sts: old.mta_sts.clone(),
        verified_tls: old.verified_tls.clone(),
        shared: old.shared.clone(),
        feedback: Arc::new(feedback),
        shaper,
        pools: Pools::new(&config)?,
        config,
        spool: old.spool.clone(),
        metrics: old.metrics.clone(),
        resolver,
        client_tls: old.client_tls.clone(),
        ids: old.ids.clone(),
        memory: old.memory.clone(),
        router: Arc::new(router),
        quarantine: old.quarantine.clone(),
    }))
}
