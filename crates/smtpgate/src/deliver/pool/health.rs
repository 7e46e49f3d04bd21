//! Active health checks (connect, greeting, EHLO, QUIT within the timeout, every interval) and the
//! sweeper that closes idle connections.

use std::sync::{Arc, Weak};
use std::time::Duration;

use tokio::time::{Instant, MissedTickBehavior, timeout};

use super::server::ServerState;
use super::{PoolState, resolve_host};
use crate::config::{HealthCheck, TlsPolicy};
use crate::context::Context;
use crate::deliver::client::{Client, Connect};

/// Checks every server of `pool` every `check.interval`, for as long as the context is in use.
pub(super) async fn run(ctx: Weak<Context>, pool: Arc<PoolState>, check: HealthCheck) {
    let mut ticks = tokio::time::interval(check.interval);
    ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let Some(ctx) = ctx.upgrade() else { return };
        let checks = pool.servers.iter().map(|server| {
            let (ctx, pool, server) = (ctx.clone(), pool.clone(), server.clone());
            tokio::spawn(async move {
                let result = match timeout(check.timeout, probe(&ctx, &pool, &server)).await {
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
async fn probe(ctx: &Context, pool: &PoolState, server: &ServerState) -> Result<(), String> {
    let addrs = resolve_host(ctx, &server.addr.host, server.addr.port).await;
    let mut last = format!("cannot resolve {}", server.addr.host);
    for addr in addrs {
        let c = Connect {
            addr,
            host: &server.addr.host,
            helo: &ctx.config.hostname,
            tls: TlsPolicy::None,
            tls_config: ctx.client_tls.clone(),
            cert_check: crate::tls::CertCheck::NotChecked,
            queue: &ctx.config.queue,
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
/// context is gone (its idle connections close with it).
pub(super) async fn sweep(ctx: Weak<Context>) {
    let mut ticks = tokio::time::interval(Duration::from_millis(500));
    ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let Some(ctx) = ctx.upgrade() else { return };
        let now = Instant::now();
        for pool in &ctx.pools.pools {
            for server in &pool.servers {
                for client in server.sweep(now) {
                    tokio::spawn(super::close(server.clone(), client.into_client()));
                }
            }
        }
    }
}
