//! Listeners, the admin endpoint, start-up and graceful shutdown.

mod admin;
pub mod admin_auth;
mod limits;
mod listeners;
pub mod quarantine_api;
mod reload;
pub mod suppression_api;
pub mod throttle_api;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;

use crate::config::{Config, ListenerConfig};
use crate::context::Context;
use crate::envelope::IdGen;

use crate::metrics::Metrics;
use crate::queue::Queue;
use crate::session::Users;
use crate::spool::Spool;
pub use limits::{AuthFailures, client_key};
use limits::{ConnLimits, Sessions};

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot open spool {0}: {1}")]
    Spool(PathBuf, std::io::Error),
    #[error("cannot listen on {0}: {1}")]
    Bind(SocketAddr, std::io::Error),
    #[error("listener {0}: TLS: {1}")]
    Tls(String, String),
    #[error("listener {0}: users file: {1}")]
    Users(String, String),
    #[error("cannot set up DNS resolver: {0}")]
    Dns(std::io::Error),
    #[error("routing: {0}")]
    Routing(String),
    #[error("{0}")]
    Setup(String),
}

/// What one listener's sessions share.
pub struct ListenerState {
    pub config: ListenerConfig,
    pub ctx: Arc<Context>,
    pub queue: Queue,
    pub tls: Option<TlsAcceptor>,
    pub users: Option<Arc<Users>>,
    pub shutdown: watch::Receiver<bool>,
    limits: ConnLimits,
    /// AUTH failures per client address, kept across reloads like `limits`.
    pub auth_failures: AuthFailures,
    sessions: Arc<Sessions>,
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
        let (ctx, found) = context_shared(config.clone(), shared)?;
        // Suppressions made on other nodes reach this one for as long as it runs.
        let _follower = ctx.feedback.follow_shared();
        // So do adaptive actions.
        let _actions = ctx.shaper.follow_shared();
        let spool_dir = ctx.spool.dir().to_path_buf();
        let queue = Queue::new(ctx.clone());
        let (shutdown, shutdown_rx) = watch::channel(false);
        let sessions = Arc::new(Sessions::default());
        let states = config
            .listeners
            .iter()
            .map(|lc| listener_state(lc, &ctx, &queue, &shutdown_rx, &sessions))
            .collect::<Result<Vec<_>, _>>()?;
        let mut listeners = listeners::Listeners::default();
        listeners.apply(states).await?;
        let (admin, admin_token_file) = match &config.admin {
            Some(a) => {
                let (token, file) = admin_auth::load_or_create(a, &spool_dir).map_err(StartError::Setup)?;
                let guard = admin_auth::Guard::new(token, a);
                let bound = admin::start(a.address, guard, queue.clone(), shutdown_rx.clone()).await?;
                (Some(bound), Some(file))
            }
            None => (None, None),
        };
        let recovered = queue.restore(found).await;
        queue.start_compaction(Duration::from_secs(30));
        tokio::spawn(expire_quarantine(queue.clone()));
        crate::deliver::pool::Pools::start(&ctx);
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
        })
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
        self.queue.ctx().spool.close().await;
    }
}

/// Opens the spool and builds what every part of the server shares.
pub fn context(config: Arc<Config>) -> Result<(Arc<Context>, Vec<crate::spool::Recovered>), StartError> {
    context_shared(config, None)
}

/// [`context`] with the Redis the nodes share.
pub fn context_shared(
    config: Arc<Config>,
    shared: Option<crate::shared::Shared>,
) -> Result<(Arc<Context>, Vec<crate::spool::Recovered>), StartError> {
    let spool_dir = std::path::absolute(&config.spool.dir).unwrap_or(config.spool.dir.clone());
    let (spool, found) =
        Spool::open(&spool_dir, config.spool.segment_size).map_err(|e| StartError::Spool(spool_dir.clone(), e))?;
    let roots = crate::tls::trust_roots(config.mta_sts.ca_file.as_deref()).map_err(StartError::Setup)?;
    let mta_sts = config.mta_sts.enabled.then(|| {
        let resolver = crate::deliver::mx::resolver(&config.dns.nameservers).map_err(StartError::Dns);
        resolver.map(|r| {
            Arc::new(crate::deliver::mta_sts::MtaSts::new(
                r,
                roots.clone(),
                config.mta_sts.https_port,
            ))
        })
    });
    let mta_sts = mta_sts.transpose()?;
    let dane = crate::deliver::dane::Dane::for_config(&config).map_err(StartError::Dns)?;
    let metrics = Metrics::default();
    metrics.spool_damaged.add(spool.damaged());
    let ctx = Arc::new(Context {
        config: config.clone(),
        spool: Arc::new(spool),
        metrics: Arc::new(metrics),
        resolver: crate::deliver::mx::resolver(&config.dns.nameservers).map_err(StartError::Dns)?,
        client_tls: crate::tls::client_config(),
        ids: Arc::new(IdGen::default()),
        memory: crate::budget::MemoryBudget::new(config.spool.memory_budget),
        pools: crate::deliver::pool::Pools::new(&config).map_err(StartError::Setup)?,
        router: Arc::new(crate::route::Router::new(config.clone()).map_err(StartError::Routing)?),
        quarantine: Arc::new(
            crate::quarantine::Quarantine::open(&spool_dir).map_err(|e| StartError::Spool(spool_dir.clone(), e))?,
        ),
        shaper: crate::shaping::Shaper::new(config.shaping_file.clone(), &config.queue, None)
            .map_err(|e| StartError::Setup(format!("shaping: {e}")))?
            .with_shared(shared.clone())
            .with_warmup_file(spool_dir.join("warmup.json")),
        feedback: Arc::new(
            crate::feedback::Feedback::new(
                config.bounce_rules.clone(),
                crate::feedback::Feedback::open_suppression(&spool_dir)
                    .map_err(|e| StartError::Spool(spool_dir.clone(), e))?,
                crate::sent::SentLog::open(&spool_dir, config.suppression.reports_remember, shared.clone())
                    .map_err(|e| StartError::Spool(spool_dir.clone(), e))?,
                &config.suppression,
                None,
            )
            .map_err(|e| StartError::Setup(format!("bounces: {e}")))?
            .with_shared(shared.clone()),
        ),
        shared,
        mta_sts,
        dane,
        verified_tls: crate::deliver::mta_sts::verifying_client_config(roots),
    });
    Ok((ctx, found))
}

impl ListenerState {
    /// A listener's shared state outside a running server (for driving sessions directly).
    pub fn standalone(
        lc: &ListenerConfig,
        ctx: &Arc<Context>,
        queue: &Queue,
        shutdown: &watch::Receiver<bool>,
    ) -> Result<ListenerState, StartError> {
        listener_state(lc, ctx, queue, shutdown, &Arc::default())
    }
}

fn listener_state(
    lc: &ListenerConfig,
    ctx: &Arc<Context>,
    queue: &Queue,
    shutdown: &watch::Receiver<bool>,
    sessions: &Arc<Sessions>,
) -> Result<ListenerState, StartError> {
    let tls = match &lc.tls {
        Some(files) => Some(TlsAcceptor::from(
            crate::tls::server_config(&files.cert, &files.key).map_err(|e| StartError::Tls(lc.name.clone(), e))?,
        )),
        None => None,
    };
    let users = match &lc.auth {
        Some(a) => Some(Arc::new(
            Users::load(&a.users_file).map_err(|e| StartError::Users(lc.name.clone(), e))?,
        )),
        None => None,
    };
    Ok(ListenerState {
        config: lc.clone(),
        ctx: ctx.clone(),
        queue: queue.clone(),
        tls,
        users,
        shutdown: shutdown.clone(),
        limits: ConnLimits::new(lc.max_connections, lc.max_connections_per_ip, lc.ipv6_prefix),
        auth_failures: AuthFailures::default(),
        sessions: sessions.clone(),
    })
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
