//! Active health checks (connect, greeting, EHLO, QUIT within the timeout, every interval) and the
//! sweeper that closes idle connections.

use std::sync::{Arc, Weak};
use std::time::Duration;

use tokio::time::{Instant, MissedTickBehavior, timeout};

use super::server::ServerState;
use super::{PoolState, Pools};
use crate::config::{HealthCheck, TlsPolicy};
use crate::upstream::Dialer;
use crate::upstream::client::{Client, Connect};

/// Checks every server of `pool` every `check.interval`, for as long as its pools are in use.
pub(super) async fn run(pools: Weak<Pools>, pool: Arc<PoolState>, check: HealthCheck) {
    let mut ticks = tokio::time::interval(check.interval);
    ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let Some(pools) = pools.upgrade() else { return };
        let checks = pool.servers.iter().map(|server| {
            let (dialer, pool, server) = (pools.dialer.clone(), pool.clone(), server.clone());
            tokio::spawn(async move {
                let result = match timeout(check.timeout, probe(&dialer, &pool, &server)).await {
                    Ok(r) => r,
                    Err(_) => Err(format!("no answer within {:?}", check.timeout)),
                };
                match result {
                    Ok(()) => server.set_healthy(true, ""),
                    Err(why) => server.set_healthy(false, &why),
                }
            })
        });
        for check in checks.collect::<Vec<_>>() {
            let _ = check.await;
        }
    }
}

/// Connect, greeting, EHLO, QUIT. No TLS and no AUTH: the check is about the server answering.
async fn probe(dialer: &Dialer, pool: &PoolState, server: &ServerState) -> Result<(), String> {
    let addrs = dialer.resolve_host(&server.addr.host, server.addr.port).await;
    let mut last = format!("cannot resolve {}", server.addr.host);
    for addr in addrs {
        let c = Connect {
            addr,
            host: &server.addr.host,
            helo: &dialer.hostname,
            tls: TlsPolicy::None,
            tls_config: dialer.client_tls.clone(),
            cert_check: crate::tls::CertCheck::NotChecked,
            queue: &dialer.queue,
            auth: None,
            auth_unverified: false,
            source: pool.config.source_address,
        };
        match Client::connect(c).await {
            Ok(client) => {
                client.quit().await;
                return Ok(());
            }
            Err(e) => last = e.to_string(),
        }
    }
    Err(last)
}

/// Closes idle connections that have waited too long, or whose server went down. Ends once the
/// pools are gone (their idle connections close with them).
pub(super) async fn sweep(pools: Weak<Pools>) {
    let mut ticks = tokio::time::interval(Duration::from_millis(500));
    ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let Some(pools) = pools.upgrade() else { return };
        let now = Instant::now();
        for pool in &pools.pools {
            for server in &pool.servers {
                for client in server.sweep(now) {
                    tokio::spawn(super::close(server.clone(), client.into_client()));
                }
            }
        }
    }
}
