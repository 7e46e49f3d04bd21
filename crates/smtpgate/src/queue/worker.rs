//! One connection worker: takes deliveries for its hop and sends them.
//!
//! For an MX hop the worker holds one connection and reuses it for message after message. For a
//! pool the server is chosen per message (so weights hold per message): the worker leases a
//! connection from the pool for each delivery and gives it back, idle, for the next one.

use tokio::time::Instant;

use super::{Delivery, Queue, settle};
use crate::deliver::{self, ConnectFailure, Outcome, client::Client};
use crate::route::NextHop;

pub(super) async fn run(queue: Queue, hop: NextHop) {
    match &hop {
        NextHop::Mx(domain) => run_mx(&queue, &hop, domain).await,
        NextHop::Pool(pool) => run_pool(&queue, &hop, pool).await,
    }
    queue.worker_done(&hop);
}

async fn run_mx(queue: &Queue, hop: &NextHop, domain: &str) {
    let mut ctx = queue.ctx();
    let mut conn: Option<Client> = None;
    let mut sent = 0;
    while let Some(d) = queue.next_for(hop).await {
        let started = Instant::now();
        // A reload applies from the next delivery: a new connection under the new configuration.
        let current = queue.ctx();
        if !std::sync::Arc::ptr_eq(&current, &ctx) {
            ctx = current;
            if let Some(c) = conn.take() {
                c.quit().await;
            }
        }
        let per_conn = ctx.config.queue.messages_per_connection;
        if conn.is_none() {
            match deliver::connect_mx(&ctx, domain).await {
                Ok(c) => {
                    conn = Some(c);
                    sent = 0;
                }
                Err(fail) => return unreachable(queue, hop, d, &fail, started),
            }
        }
        let client = conn.as_mut().expect("connected above");
        let (results, keep) = deliver::attempt(&ctx, client, &d).await;
        let remote = Some(client.remote.clone());
        settle::spawn(queue, hop, d, results, remote, started);
        sent += 1;
        if !keep {
            conn = None;
        } else if sent >= per_conn
            && let Some(c) = conn.take()
        {
            c.quit().await;
        }
    }
    if let Some(c) = conn {
        c.quit().await;
    }
}

async fn run_pool(queue: &Queue, hop: &NextHop, pool: &str) {
    while let Some(d) = queue.next_for(hop).await {
        let started = Instant::now();
        // Each delivery leases from the pools of the configuration current now.
        let ctx = queue.ctx();
        let per_conn = ctx.config.queue.messages_per_connection;
        let mut lease = match ctx.pools.lease(&ctx, pool).await {
            Ok(lease) => lease,
            Err(fail) => return unreachable(queue, hop, d, &fail, started),
        };
        let (results, keep) = deliver::attempt(&ctx, lease.client(), &d).await;
        let remote = Some(lease.client().remote.clone());
        let delivered = results.iter().any(|(_, o)| matches!(o, Outcome::Delivered(_)));
        lease.finish(keep, delivered, per_conn).await;
        settle::spawn(queue, hop, d, results, remote, started);
    }
}

/// The hop is unreachable: everything waiting for it shares the outcome.
fn unreachable(queue: &Queue, hop: &NextHop, d: Delivery, fail: &ConnectFailure, started: Instant) {
    let mut all = vec![d];
    all.extend(queue.drain(hop));
    for d in all {
        let results = d.rcpts.iter().map(|&i| (i, fail.outcome.clone())).collect();
        settle::spawn(queue, hop, d, results, None, started);
    }
}
