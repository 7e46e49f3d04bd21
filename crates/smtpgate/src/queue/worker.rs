//! One connection worker: takes deliveries for its hop and sends them.
//!
//! For an MX hop the worker holds one connection and reuses it for message after message. For a
//! pool the server is chosen per message (so weights hold per message): the worker leases a
//! connection from the pool for each delivery and gives it back, idle, for the next one.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::settle::{self, Answered, Attempted};
use super::{Delivery, Lane, Queue};
use crate::context::Context;
use crate::deliver::{self, ConnectFailure, Outcome};

use crate::reply::{Classified, Command, Upstream};
use crate::route::NextHop;
use crate::shaping::{Limit, Permit, Pick, Shape};
use crate::upstream::client::Client;

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
    /// The limit it counts against (an `Arc`: the wait for a message slot keeps it while the
    /// connection closes).
    key: Arc<Limit>,
    shape: Shape,
    /// One of the key's `max_connections`, held while the connection is open.
    _permit: Permit,
    sent: usize,
    /// The source address it sends from (counted for warm-up).
    source: Option<std::net::IpAddr>,
    /// One of the node's outbound connections, and the stream priority it was had with.
    _slot: crate::shaping::outbound::Slot,
    priority: i32,
}

impl MxConn {
    /// Looks up the domain's mail servers, finds its shaping, waits out a suspension, waits for
    /// a connection permit and the connection rate, and connects. A refused connection (a reply
    /// such as `421` to the greeting) goes to the adaptive rules. A failure comes classified.
    async fn open(ctx: &Context, domain: &str, stream: Option<&str>) -> Result<MxConn, Attempted> {
        let targets = deliver::mx_plan(ctx, domain)
            .await
            .map_err(|fail| Attempted::classify(ctx, fail.outcome))?;
        let hosts: Vec<&str> = targets.iter().map(|t| t.host.as_str()).collect();
        let (dest, shape) = ctx.shaper.shape(domain, &hosts);
        let source = pick_source(ctx, stream).await;
        let key = Limit::new(stream, dest).with_source(source.filter(|_| shape.per_source));
        let shape = if ctx.shaper.wait_suspension(&key).await {
            // The file may have changed while suspended.
            ctx.shaper.shape(domain, &hosts).1
        } else {
            shape
        };
        let (shape, _) = ctx.shaper.effective(&key, shape);
        let permit = ctx.shaper.connection(&key, shape.max_connections).await;
        let priority = priority(ctx, stream);
        let slot = ctx
            .shaper
            .outbound(ctx.config.queue.max_connections)
            .acquire(priority)
            .await;
        ctx.shaper.connection_slot(&key, shape.connection_rate).await;
        let client = match deliver::connect_targets(ctx, domain, &targets, &shape, source).await {
            Ok(client) => client,
            Err(fail) => {
                let fail = Attempted::classify(ctx, fail.outcome);
                if let Some(failed) = fail.failure() {
                    observe(ctx, &key, domain, &hosts, &[failed]).await;
                }
                return Err(fail);
            }
        };
        Ok(MxConn {
            client,
            hosts: targets.into_iter().map(|t| t.host).collect(),
            key: Arc::new(key),
            shape,
            _permit: permit,
            sent: 0,
            source,
            _slot: slot,
            priority,
        })
    }

    /// Whether a worker of a higher stream priority waits for one of the node's connections.
    fn outranked(&self, ctx: &Context) -> bool {
        ctx.shaper
            .outbound(ctx.config.queue.max_connections)
            .wanted_above(self.priority)
    }

    /// Whether an idle connection should close now: another worker waits for one of the key's
    /// connections (another domain of the same MX rollup), or for one of the node's outbound
    /// connections (any stream, any destination, this one's own included: a worker of the same
    /// lane holding a delivery waits there when the node's cap is reached).
    fn wanted_elsewhere(&self, ctx: &Context) -> bool {
        ctx.shaper.contended(&self.key) || ctx.shaper.outbound(ctx.config.queue.max_connections).wanted()
    }
}

/// The priority of `stream` (0 unless its `[[stream]]` says otherwise).
fn priority(ctx: &Context, stream: Option<&str>) -> i32 {
    let name = stream.unwrap_or("default");
    ctx.config
        .streams
        .iter()
        .find(|s| s.name == name)
        .map_or(0, |s| s.priority)
}

/// How long a worker whose stream's source addresses have all sent their warm-up volume sleeps
/// before it looks again (the day ends, or the counts change).
const WARMUP_RECHECK: Duration = Duration::from_secs(60);

/// A source address for a new connection of `stream`, waiting while every one of them has sent
/// its warm-up volume for today.
async fn pick_source(ctx: &Context, stream: Option<&str>) -> Option<std::net::IpAddr> {
    let stream = stream.unwrap_or("default");
    let mut warned = false;
    loop {
        match ctx.shaper.source(&ctx.config, stream) {
            Pick::System => return None,
            Pick::Address(ip) => return Some(ip),
            Pick::Exhausted { until } => {
                if !warned {
                    tracing::warn!(
                        stream,
                        until = %crate::datetime::rfc3339_ms(until),
                        "warm-up: every source address of the stream has sent today's volume; its mail waits"
                    );
                    warned = true;
                }
                let left = Duration::from_millis(until.saturating_sub(crate::shaping::adaptive::now_ms()));
                tokio::time::sleep(left.min(WARMUP_RECHECK)).await;
            }
        }
    }
}

/// Messages a connection carries before it gives its place to a worker waiting for the same
/// limit (another domain of an MX rollup), so that one domain's backlog does not hold the
/// rollup's connections until it drains.
const FAIR_SHARE: usize = 10;

/// A connection waiting longer than this for its next message slot (or, with a shared rate, for
/// this node's turn to reserve one) is closed meanwhile.
const LONG_WAIT: Duration = Duration::from_secs(10);

/// Closes the connection in `conn`, if any, and opens a new one.
async fn reopen(ctx: &Context, domain: &str, stream: Option<&str>, conn: &mut Option<MxConn>) -> Result<(), Attempted> {
    if let Some(c) = conn.take() {
        c.client.quit().await;
    }
    *conn = Some(MxConn::open(ctx, domain, stream).await?);
    Ok(())
}

/// Makes `conn` ready to carry the next message under the limits in force now: connected, its
/// limits those of the current shaping file and adaptive actions (a suspension closes it and
/// waits in [`MxConn::open`]), its source address within today's warm-up volume (else another
/// address, or the next day), and the message's slot come (a long wait is spent disconnected).
async fn ready<'a>(
    ctx: &Context,
    domain: &str,
    stream: Option<&str>,
    conn: &'a mut Option<MxConn>,
) -> Result<&'a mut MxConn, Attempted> {
    if conn.is_none() {
        reopen(ctx, domain, stream, conn).await?;
    }
    let c = conn.as_mut().expect("connected above");
    let hosts: Vec<&str> = c.hosts.iter().map(String::as_str).collect();
    let (shape, suspended) = ctx.shaper.effective(&c.key, ctx.shaper.shape(domain, &hosts).1);
    c.shape = shape;
    if suspended.is_some() {
        reopen(ctx, domain, stream, conn).await?;
    }
    // Each message takes one of its source address's warm-up volume for today.
    let stream_name = stream.unwrap_or("default");
    while let Some(ip) = conn.as_ref().and_then(|c| c.source)
        && !ctx.shaper.take_source(&ctx.config, stream_name, ip)
    {
        reopen(ctx, domain, stream, conn).await?;
    }
    let c = conn.as_mut().expect("connected above");
    let (key, rate) = (c.key.clone(), c.shape.message_rate);
    let reserving = ctx.shaper.reserve_message(&key, rate);
    tokio::pin!(reserving);
    let reserved = tokio::select! {
        reserved = &mut reserving => reserved,
        () = tokio::time::sleep(LONG_WAIT) => {
            // This node's other workers are ahead in the shared line for the limit.
            if let Some(idle) = conn.take() {
                idle.client.quit().await;
            }
            reserving.await
        }
    };
    if let Some(slot) = reserved {
        if conn.is_none() || slot.at > Instant::now() + LONG_WAIT {
            if let Some(idle) = conn.take() {
                idle.client.quit().await;
            }
            slot.wait().await;
            reopen(ctx, domain, stream, conn).await?;
        } else {
            slot.wait().await;
        }
    }
    Ok(conn.as_mut().expect("connected above"))
}

async fn run_mx(queue: &Queue, lane: &Lane, domain: &str) {
    let (hop, stream) = (&lane.hop, lane.stream.as_deref());
    let mut ctx = queue.ctx();
    let mut conn: Option<MxConn> = None;
    loop {
        let d = match queue.try_next_for(lane) {
            Some(d) => d,
            None => {
                // Idle: give the connection up at once if any other worker is waiting for one.
                if let Some(c) = conn.take_if(|c| c.wanted_elsewhere(&ctx)) {
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
        if let Some(fail) = gone(
            &ctx,
            &d,
            "stream",
            stream.filter(|s| !ctx.config.streams.iter().any(|c| c.name == *s)),
        ) {
            return unreachable(queue, lane, d, &fail, started);
        }
        let c = match ready(&ctx, domain, stream, &mut conn).await {
            Ok(c) => c,
            Err(fail) => return unreachable(queue, lane, d, &fail, started),
        };
        let (outcomes, keep) = deliver::attempt(&mut c.client, &d.msg.env, &d.rcpts, d.msg.stored(&ctx.spool)).await;
        let results = classify(&ctx, outcomes);
        let failures: Vec<&Classified> = results.iter().filter_map(|(_, a)| a.failure()).collect();
        if !failures.is_empty() {
            let hosts: Vec<&str> = c.hosts.iter().map(String::as_str).collect();
            observe(&ctx, &c.key, domain, &hosts, &failures).await;
        }
        drop(failures);
        settle::spawn(queue, hop, d, results, Answered::by(&c.client), started);
        c.sent += 1;
        // A limit lowered (by an adaptive action or a reload) closes connections beyond it, a
        // worker of a higher priority waiting for a connection takes this one's place, and so,
        // after a fair share, does a worker of another domain of the same MX rollup.
        let over = ctx.shaper.over_limit(&c.key, c.shape.max_connections)
            || c.outranked(&ctx)
            || (c.sent >= FAIR_SHARE && ctx.shaper.contended(&c.key));
        if !keep {
            conn = None;
        } else if (over || c.sent >= c.shape.messages_per_connection)
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
        if let Some(fail) = gone(&ctx, &d, "pool", Some(pool).filter(|p| !ctx.pools.contains(p))) {
            return unreachable(queue, lane, d, &fail, started);
        }
        let per_conn = ctx.config.queue.messages_per_connection;
        let mut lease = match ctx.pools.lease(pool).await {
            Ok(lease) => lease,
            Err(unavailable) => {
                let fail = Attempted::classify(&ctx, ConnectFailure::from(unavailable).outcome);
                return unreachable(queue, lane, d, &fail, started);
            }
        };
        let (outcomes, keep) = deliver::attempt(lease.client(), &d.msg.env, &d.rcpts, d.msg.stored(&ctx.spool)).await;
        let results = classify(&ctx, outcomes);
        let answered = Answered::by(lease.client());
        let delivered = results.iter().any(|(_, a)| a.is_delivered());
        lease.finish(keep, delivered, per_conn).await;
        settle::spawn(queue, hop, d, results, answered, started);
    }
}

/// A message whose pool or stream (`missing`, of kind `what`) a reload removed is held: deferred
/// on the queue's schedule (bounced at `max_age`) until the name is configured again, counted and
/// reported, and never sent another way (another pool, or without its stream's source addresses).
fn gone(ctx: &Context, d: &Delivery, what: &str, missing: Option<&str>) -> Option<Attempted> {
    let name = missing?;
    tracing::error!(
        queue_id = %d.msg.env.id, %what, name,
        "delivery: the message's {what} is no longer configured; holding the message until it is"
    );
    ctx.metrics.delivery_held.inc();
    let text = format!("{what} {name} is no longer configured");
    let held = Outcome::Transient(Upstream::local("4.3.5", text, Command::Outside));
    Some(Attempted::classify(ctx, held))
}

/// Each recipient's outcome of an attempt, its failure classified: once, here, for everything
/// after (adaptive shaping, settling, feedback, bounces, logs).
fn classify(ctx: &Context, outcomes: Vec<(u32, deliver::Outcome)>) -> Vec<(u32, Attempted)> {
    outcomes
        .into_iter()
        .map(|(i, o)| (i, Attempted::classify(ctx, o)))
        .collect()
}

/// Runs the adaptive rules on a delivery's failed replies.
async fn observe(ctx: &Context, key: &Limit, domain: &str, hosts: &[&str], failures: &[&Classified]) {
    ctx.shaper.observe(key, domain, hosts, failures).await;
}

/// The hop is unreachable: everything waiting for it shares the (classified) outcome.
fn unreachable(queue: &Queue, lane: &Lane, d: Delivery, fail: &Attempted, started: Instant) {
    let mut all = vec![d];
    all.extend(queue.drain(lane));
    for d in all {
        let results = d.rcpts.iter().map(|&i| (i, fail.clone())).collect();
        settle::spawn(queue, &lane.hop, d, results, Answered::default(), started);
    }
}
