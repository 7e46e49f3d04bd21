//! Listeners, the admin endpoint, start-up and graceful shutdown.

mod admin;
pub mod admin_auth;
mod api_json;
mod api_routes;
pub mod config_api;
pub mod events_api;
mod inject_api;
mod listeners;
mod openapi;
mod pools_api;
pub mod quarantine_api;
pub mod queue_api;
mod reload;
pub mod stats_api;
pub mod steer_api;
pub mod suppression_api;
pub mod throttle_api;
mod ui;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use crate::config::Config;
use crate::context::Context;

use crate::queue::Queue;
use crate::session::{ListenerState, Sessions};

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Context(#[from] crate::context::BuildError),
    #[error("cannot listen on {0}: {1}")]
    Bind(SocketAddr, std::io::Error),
    #[error(transparent)]
    Listener(#[from] crate::session::ListenerError),
    #[error("{0}")]
    Setup(String),
}

/// A bound listener, as reported at start-up.
#[derive(Debug, Clone)]
pub struct Bound {
    pub name: String,
    pub addr: SocketAddr,
    pub tls: &'static str,
}

/// A running server.
pub struct Server {
    listeners: listeners::Listeners,
    pub admin: Option<SocketAddr>,
    /// The file holding the admin token (`admin.token_file`, or the generated one).
    pub admin_token_file: Option<PathBuf>,
    pub spool_dir: PathBuf,
    pub recovered: usize,
    pub queue: Queue,
    shutdown: watch::Sender<bool>,
    sessions: Arc<Sessions>,
    grace: Duration,
    ctx: Arc<Context>,
    /// Reloads asked for on the admin address, until the main loop takes them.
    reload_requests: Option<tokio::sync::mpsc::Receiver<config_api::ReloadRequest>>,
}

impl Server {
    /// Opens the spool, recovers it, binds every listener and starts serving.
    pub async fn start(config: Config) -> Result<Server, StartError> {
        let config = Arc::new(config);
        let shared = match &config.redis {
            Some(r) => Some(
                crate::shared::Shared::connect(&r.url, &r.prefix)
                    .await
                    .map_err(|e| StartError::Setup(e.to_string()))?,
            ),
            None => None,
        };
        let (ctx, found) = Context::start(config.clone(), shared)?;
        // Suppressions made on other nodes reach this one for as long as it runs.
        let _follower = ctx.feedback.follow_shared();
        // So do adaptive actions.
        let _actions = ctx.shaper.follow_shared();
        let spool_dir = ctx.spool.dir().to_path_buf();
        // The suspensions an operator made are read before anything can be delivered.
        let queue = Queue::open(ctx.clone()).map_err(StartError::Setup)?;
        let (shutdown, shutdown_rx) = watch::channel(false);
        let sessions = Arc::new(Sessions::default());
        let states = config
            .listeners
            .iter()
            .map(|lc| ListenerState::new(lc, &ctx, &queue, &shutdown_rx, &sessions))
            .collect::<Result<Vec<_>, _>>()?;
        let mut listeners = listeners::Listeners::default();
        listeners.apply(states).await?;
        let (reloads, reload_requests) = config_api::Reloads::channel();
        let (admin, admin_token_file) = match &config.admin {
            Some(a) => {
                let (token, file) = admin_auth::load_or_create(a, &spool_dir).map_err(StartError::Setup)?;
                let guard = admin_auth::Guard::new(token, a);
                let bound = admin::start(a.address, guard, queue.clone(), shutdown_rx.clone(), reloads).await?;
                (Some(bound), Some(file))
            }
            None => (None, None),
        };
        let recovered = queue.restore(found).await;
        queue.start_compaction(Duration::from_secs(30));
        queue.start_suspensions();
        tokio::spawn(expire_quarantine(queue.clone()));
        ctx.pools.start();
        ctx.webhooks.start();
        ctx.stats.spawn_writer(Duration::from_secs(10));
        if let Some(shared) = &ctx.shared {
            ctx.stats
                .spawn_publisher(shared.clone(), ctx.config.events.node.clone(), Duration::from_secs(10));
        }
        let grace = config.shutdown_timeout;
        Ok(Server {
            listeners,
            admin,
            admin_token_file,
            spool_dir,
            recovered,
            queue,
            shutdown,
            sessions,
            grace,
            ctx,
            reload_requests: Some(reload_requests),
        })
    }

    /// The reloads asked for on the admin address (`POST /api/v1/config/reload`), for the loop
    /// that handles SIGHUP: it reloads as for the signal and answers each request. Taken once;
    /// until then requests wait (and time out) unanswered.
    pub fn reload_requests(&mut self) -> Option<tokio::sync::mpsc::Receiver<config_api::ReloadRequest>> {
        self.reload_requests.take()
    }

    /// What is listening.
    pub fn listeners(&self) -> Vec<Bound> {
        self.listeners.bound()
    }

    /// Stops accepting, lets sessions finish within the shutdown timeout, closes the spool, and
    /// returns. Everything accepted is already on disk; closing the spool waits until every record
    /// handed to the committer (a session's message past the timeout, a delivery's outcome) is
    /// written and fsynced, so an ordinary stop leaves no torn tail for recovery. Later spool
    /// writes fail: a session past the timeout gets no `250` for them, and a delivery in flight is
    /// retried after a restart.
    pub async fn shutdown(self) {
        let _ = self.shutdown.send(true);
        if !self.sessions.wait_idle(self.grace).await {
            tracing::warn!(
                sessions = self.sessions.count(),
                "shutdown timeout: closing sessions still open"
            );
        }
        self.queue.ctx().shaper.save_warmup();
        self.queue.ctx().stats.save_logged();
        self.queue.ctx().spool.close().await;
        // Events published until now are written and fsynced; unsent ones go after a restart.
        self.queue.ctx().webhooks.close().await;
        // What was recorded so far is on disk before the process ends.
        let events = self.queue.ctx().events.clone();
        let _ = tokio::task::spawn_blocking(move || events.flush()).await;
    }
}

/// Deletes quarantine entries past `[quarantine] max_age`, every ten minutes.
async fn expire_quarantine(queue: Queue) {
    let mut tick = tokio::time::interval(Duration::from_secs(600));
    loop {
        tick.tick().await;
        let ctx = queue.ctx();
        let max_age = ctx.config.quarantine_max_age.as_secs();
        match ctx.quarantine.blocking(move |q| q.expire(max_age)).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(expired = n, "quarantine entries expired"),
            Err(e) => tracing::warn!(error = %e, "cannot expire quarantine entries"),
        }
    }
}
