//! What one listener's sessions share: its configuration, TLS acceptor, users, limits, and the
//! running server's context and queue.

use std::sync::Arc;

use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;

use super::Users;
use super::limits::{AuthFailures, ConnLimits, Sessions};
use crate::config::ListenerConfig;
use crate::context::Context;
use crate::queue::Queue;

/// Why a listener's state could not be built.
#[derive(Debug, thiserror::Error)]
pub enum ListenerError {
    #[error("listener {0}: TLS: {1}")]
    Tls(String, String),
    #[error("listener {0}: users file: {1}")]
    Users(String, String),
}

/// What one listener's sessions share.
pub struct ListenerState {
    pub config: ListenerConfig,
    pub ctx: Arc<Context>,
    pub queue: Queue,
    pub tls: Option<TlsAcceptor>,
    pub users: Option<Arc<Users>>,
    pub shutdown: watch::Receiver<bool>,
    pub limits: ConnLimits,
    /// AUTH failures per client address, kept across reloads like `limits`.
    pub auth_failures: AuthFailures,
    pub sessions: Arc<Sessions>,
}

impl ListenerState {
    /// A listener's shared state outside a running server (for driving sessions directly).
    pub fn standalone(
        lc: &ListenerConfig,
        ctx: &Arc<Context>,
        queue: &Queue,
        shutdown: &watch::Receiver<bool>,
    ) -> Result<ListenerState, ListenerError> {
        ListenerState::new(lc, ctx, queue, shutdown, &Arc::default())
    }

    /// A listener's shared state: its TLS acceptor and users file loaded, its limits new.
    pub fn new(
        lc: &ListenerConfig,
        ctx: &Arc<Context>,
        queue: &Queue,
        shutdown: &watch::Receiver<bool>,
        sessions: &Arc<Sessions>,
    ) -> Result<ListenerState, ListenerError> {
        let tls = match &lc.tls {
            Some(files) => Some(TlsAcceptor::from(
                crate::tls::server_config(&files.cert, &files.key)
                    .map_err(|e| ListenerError::Tls(lc.name.clone(), e))?,
            )),
            None => None,
        };
        let users = match &lc.auth {
            Some(a) => Some(Arc::new(
                Users::load(&a.users_file).map_err(|e| ListenerError::Users(lc.name.clone(), e))?,
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
}
