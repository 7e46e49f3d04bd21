//! Live reload (SIGHUP, `smtpgate reload`): the new configuration is checked whole and built
//! before anything changes; on any error the running configuration stays.
//!
//! Architecture invariant: sessions and deliveries already under way finish with the
//! configuration they started with; only new connections and new delivery attempts see the new one.

use std::sync::Arc;

use super::Server;
use crate::config::Config;
use crate::session::ListenerState;

impl Server {
    /// Switches to `config`. Returns what went wrong if it cannot be used; the old one then stays.
    pub async fn reload(&mut self, config: Config) -> Result<(), String> {
        let config = Arc::new(config);
        let ctx = self.ctx.successor(config.clone()).map_err(|e| e.to_string())?;
        let shutdown = self.shutdown.subscribe();
        let states = config
            .listeners
            .iter()
            .map(|lc| ListenerState::new(lc, &ctx, &self.queue, &shutdown, &self.sessions))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| e.to_string())?;
        // Listeners first: if one cannot be bound, nothing has changed yet.
        self.listeners.apply(states).await.map_err(|e| e.to_string())?;
        self.queue.set_context(ctx.clone());
        ctx.pools.start();
        ctx.webhooks.start();
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
