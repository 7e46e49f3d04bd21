//! One connection worker: takes deliveries for its hop and sends them.
//!
//! For an MX hop the worker holds one connection and reuses it for message after message. For a
//! pool the server is chosen per message (so weights hold per message): the worker leases a
//! connection from the pool for each delivery and gives it back, idle, for the next one.

use std::time::Duration;

use tokio::sync::OwnedSemaphorePermit;
use tokio::time::Instant;

use super::{Delivery, Lane, Queue, settle};
use crate::context::Context;
use crate::deliver::{self, ConnectFailure, Outcome, client::Client};
use crate::route::NextHop;
use crate::shaping::{Limit, Shape};

pub(super) async fn run(queue: Queue, lane: Lane) {
    match &lane.hop {
        NextHop::Mx(domain) => run_mx(&queue, &lane, domain).await,
        NextHop::Pool(pool) => run_pool(&queue, &lane, pool).await,
    }
    queue.worker_done(&lane);
}

/// A connection to one of a domain's mail servers, under the destination's shaping.
struct MxConn {
    client: Client,
    /// The domain's mail servers, to look its shaping up again (the file may have changed).
    hosts: Vec<String>,
    key: Limit,
    shape: Shape,
    /// One of the key's `max_connections`, held while the connection is open.
    _permit: OwnedSemaphorePermit,
    sent: usize,
}

impl MxConn {
    /// Looks up the domain's mail servers, finds its shaping, waits for a connection permit and
    /// the connection rate, and connects.
    async fn open(ctx: &Context, domain: &str, stream: Option<&str>) -> Result<MxConn, ConnectFailure> {
        let targets = deliver::mx_plan(ctx, domain).await?;
        let hosts: Vec<&str> = targets.iter().map(|t| t.host.as_str()).collect();
        let (dest, shape) = ctx.shaper.shape(domain, &hosts);
        let key = Limit::new(stream, dest);
        let permit = ctx.shaper.connection(&key, shape.max_connections).await;
        ctx.shaper.connection_slot(&key, shape.connection_rate).await;
        let source = stream.and_then(|s| ctx.shaper.source(&ctx.config, s));
        let client = deliver::connect_targets(ctx, domain, &targets, &shape, source).await?;
        Ok(MxConn {
            client,
            hosts: targets.into_iter().map(|t| t.host).collect(),
            key,
            shape,
            _permit: permit,
            sent: 0,
        })
    }
}

/// A connection waiting longer than this for its next message slot is closed meanwhile.
const LONG_WAIT: Duration = Duration::from_secs(10);

async fn run_mx(queue: &Queue, lane: &Lane, domain: &str) {
    let (hop, stream) = (&lane.hop, lane.stream.as_deref());
    let mut ctx = queue.ctx();
    let mut conn: Option<MxConn> = None;
    loop {
        let d = match queue.try_next_for(lane) {
            Some(d) => d,
            None => {
                // Idle: give the connection up at once if another worker (another domain of the
                // same MX rollup) is waiting for one.
                if let Some(c) = conn.take_if(|c| ctx.shaper.contended(&c.key)) {
                    c.client.quit().await;
                }
                match queue.next_for(lane).await {
                    Some(d) => d,
                    None => break,
                }
            }
        };
        let started = Instant::now();
        // A reload applies from the next delivery: a new connection under the new configuration.
        let current = queue.ctx();
        if !std::sync::Arc::ptr_eq(&current, &ctx) {
            ctx = current;
            if let Some(c) = conn.take() {
                c.client.quit().await;
            }
        }
        if conn.is_none() {
            match MxConn::open(&ctx, domain, stream).await {
                Ok(c) => conn = Some(c),
                Err(fail) => return unreachable(queue, lane, d, &fail, started),
            }
        }
        let c = conn.as_mut().expect("connected above");
        // The shaping file may have changed since the connection opened: its limits apply now.
        let hosts: Vec<&str> = c.hosts.iter().map(String::as_str).collect();
        c.shape = ctx.shaper.shape(domain, &hosts).1;
        if let Some(at) = ctx.shaper.reserve_message(&c.key, c.shape.message_rate).await {
            if at > Instant::now() + LONG_WAIT {
                let idle = conn.take().expect("connected above");
                idle.client.quit().await;
                tokio::time::sleep_until(at).await;
                match MxConn::open(&ctx, domain, stream).await {
                    Ok(c) => conn = Some(c),
                    Err(fail) => return unreachable(queue, lane, d, &fail, started),
                }
            } else {
                tokio::time::sleep_until(at).await;
            }
        }
        let c = conn.as_mut().expect("connected above");
        let (results, keep) = deliver::attempt(&ctx, &mut c.client, &d).await;
        let remote = Some(c.client.remote.clone());
        settle::spawn(queue, hop, d, results, remote, started);
        c.sent += 1;
        if !keep {
            conn = None;
        } else if c.sent >= c.shape.messages_per_connection
            && let Some(c) = conn.take()
        {
            c.client.quit().await;
        }
    }
    if let Some(c) = conn {
        c.client.quit().await;
    }
}

async fn run_pool(queue: &Queue, lane: &Lane, pool: &str) {
    let hop = &lane.hop;
    while let Some(d) = queue.next_for(lane).await {
        let started = Instant::now();
        // Each delivery leases from the pools of the configuration current now.
        let ctx = queue.ctx();
        let per_conn = ctx.config.queue.messages_per_connection;
        let mut lease = match ctx.pools.lease(&ctx, pool).await {
            Ok(lease) => lease,
            Err(fail) => return unreachable(queue, lane, d, &fail, started),
        };
        let (results, keep) = deliver::attempt(&ctx, lease.client(), &d).await;
        let remote = Some(lease.client().remote.clone());
        let delivered = results.iter().any(|(_, o)| matches!(o, Outcome::Delivered(_)));
        lease.finish(keep, delivered, per_conn).await;
        settle::spawn(queue, hop, d, results, remote, started);
    }
}

/// The hop is unreachable: everything waiting for it shares the outcome.
fn unreachable(queue: &Queue, lane: &Lane, d: Delivery, fail: &ConnectFailure, started: Instant) {
    let mut all = vec![d];
    all.extend(queue.drain(lane));
    for d in all {
        let results = d.rcpts.iter().map(|&i| (i, fail.outcome.clone())).collect();
        settle::spawn(queue, &lane.hop, d, results, None, started);
    }
}
