//! The running listeners: bound sockets with their accept loops, started, replaced and stopped
//! as the configuration says (at start-up and on reload).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use super::{Bound, ListenerState, StartError};
use crate::io::{BoxIo, TlsInfo};
use crate::session::Session;
use crate::session::limits;

/// One listener that is accepting connections.
struct Running {
    bound: Bound,
    /// The address as configured (port 0 stays 0), to tell whether a reload moves it.
    configured: SocketAddr,
    /// New connections use the newest state; sessions under way keep the one they started with.
    state: watch::Sender<Arc<ListenerState>>,
    stop: watch::Sender<bool>,
}

#[derive(Default)]
pub(super) struct Listeners {
    running: Vec<Running>,
}

impl Listeners {
    /// What is listening, for start-up messages and tests.
    pub fn bound(&self) -> Vec<Bound> {
        self.running.iter().map(|r| r.bound.clone()).collect()
    }

    /// Makes the running listeners match `states`: new ones are bound, removed ones stop
    /// accepting, moved ones are rebound, unchanged ones get the new state. Every new address is
    /// bound before anything changes: if one cannot be, nothing changes.
    pub async fn apply(&mut self, states: Vec<ListenerState>) -> Result<(), StartError> {
        let mut plan = Vec::with_capacity(states.len());
        for state in states {
            let (name, configured) = (state.config.name.clone(), state.config.address);
            match self
                .running
                .iter()
                .position(|r| r.bound.name == name && r.configured == configured)
            {
                Some(i) => plan.push(Step::Keep(i, Box::new(state))),
                None => plan.push(Step::New(bind(state).await?)),
            }
        }
        let mut old: Vec<Option<Running>> = std::mem::take(&mut self.running).into_iter().map(Some).collect();
        for step in plan {
            match step {
                Step::Keep(i, state) => self.running.push(update(old[i].take().expect("kept once"), *state)),
                Step::New(r) => self.running.push(r),
            }
        }
        for r in old.into_iter().flatten() {
            tracing::info!(listener = %r.bound.name, address = %r.bound.addr, "listener stopped");
            let _ = r.stop.send(true);
        }
        Ok(())
    }
}

/// What a reload does with one configured listener.
enum Step {
    Keep(usize, Box<ListenerState>),
    New(Running),
}

/// Gives a running listener its new state; open connections stay counted against its caps.
fn update(r: Running, mut state: ListenerState) -> Running {
    state.limits = r.state.borrow().limits.clone();
    state.auth_failures = r.state.borrow().auth_failures.clone();
    let c = &state.config;
    state
        .limits
        .set_caps(c.max_connections, c.max_connections_per_ip, c.ipv6_prefix);
    let mut r = r;
    r.bound.tls = tls_mode(&state);
    let _ = r.state.send(Arc::new(state));
    r
}

fn tls_mode(state: &ListenerState) -> &'static str {
    match (&state.tls, state.config.implicit_tls) {
        (None, _) => "none",
        (Some(_), false) => "starttls",
        (Some(_), true) => "implicit",
    }
}

async fn bind(state: ListenerState) -> Result<Running, StartError> {
    let configured = state.config.address;
    let tcp = TcpListener::bind(configured)
        .await
        .map_err(|e| StartError::Bind(configured, e))?;
    let addr = tcp.local_addr().map_err(|e| StartError::Bind(configured, e))?;
    let bound = Bound {
        name: state.config.name.clone(),
        addr,
        tls: tls_mode(&state),
    };
    let (state_tx, state_rx) = watch::channel(Arc::new(state));
    let (stop, stop_rx) = watch::channel(false);
    tokio::spawn(accept_loop(tcp, state_rx, stop_rx));
    Ok(Running {
        bound,
        configured,
        state: state_tx,
        stop,
    })
}

async fn accept_loop(tcp: TcpListener, states: watch::Receiver<Arc<ListenerState>>, mut stop: watch::Receiver<bool>) {
    let mut shutdown = states.borrow().shutdown.clone();
    loop {
        let (stream, peer) = tokio::select! {
            r = tcp.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = shutdown.changed() => return,
            // Stopped by a reload, or no longer managed by anyone.
            r = stop.changed() => if r.is_err() || *stop.borrow() { return } else { continue },
        };
        let state = states.borrow().clone();
        state.ctx.metrics.connections.inc();
        match state.limits.admit(peer.ip().to_canonical()) {
            Some(guard) => {
                tokio::spawn(async move {
                    let _guard = guard;
                    serve_connection(state, stream, peer).await;
                });
            }
            None => {
                state.ctx.metrics.connections_refused.inc();
                tokio::spawn(limits::refuse(stream));
            }
        }
    }
}

async fn serve_connection(state: Arc<ListenerState>, stream: TcpStream, peer: SocketAddr) {
    let _ = stream.set_nodelay(true);
    let _active = state.sessions.enter();
    let metrics = state.ctx.metrics.clone();
    metrics.sessions_active.inc();
    let (io, tls): (BoxIo, Option<TlsInfo>) = match (&state.tls, state.config.implicit_tls) {
        (Some(acceptor), true) => {
            match tokio::time::timeout(state.config.command_timeout, acceptor.accept(stream)).await {
                Ok(Ok(s)) => {
                    let info = TlsInfo::from_conn(s.get_ref().1);
                    (Box::new(s), Some(info))
                }
                _ => {
                    metrics.sessions_active.dec();
                    return;
                }
            }
        }
        _ => (Box::new(stream), None),
    };
    Session::new(state.clone(), io, peer, tls).run().await;
    metrics.sessions_active.dec();
}
