//! One connection worker: takes deliveries for its hop and sends them over one reused connection.

use tokio::time::Instant;

use super::{Queue, settle};
use crate::deliver::{self, client::Client};
use crate::route::NextHop;

pub(super) async fn run(queue: Queue, hop: NextHop) {
    let ctx = queue.ctx.clone();
    let per_conn = ctx.config.queue.messages_per_connection;
    let mut conn: Option<Client> = None;
    let mut sent = 0;
    while let Some(d) = queue.next_for(&hop).await {
        let started = Instant::now();
        if conn.is_none() {
            match deliver::connect(&ctx, &hop).await {
                Ok(c) => {
                    conn = Some(c);
                    sent = 0;
                }
                Err(fail) => {
                    // The hop is unreachable: everything waiting for it shares the outcome.
                    let mut all = vec![d];
                    all.extend(queue.drain(&hop));
                    for d in all {
                        let results = d.rcpts.iter().map(|&i| (i, fail.outcome.clone())).collect();
                        settle::spawn(&queue, &hop, d, results, None, started);
                    }
                    break;
                }
            }
        }
        let client = conn.as_mut().expect("connected above");
        let (results, keep) = deliver::attempt(&ctx, client, &d).await;
        let remote = Some(client.remote.clone());
        settle::spawn(&queue, &hop, d, results, remote, started);
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
    queue.worker_done(&hop);
}
