//! Counts across nodes: with shared state, each node publishes its counts (what its stats file
//! holds) under its node name every 10 s, each kept 60 s (`P:state:stats`, one field per node, see
//! `shared.rs`), and a query over every node sums the live ones with this node's current counts.
//! A node stopped for longer than a minute drops out of the sums.

use std::sync::Arc;
use std::time::Duration;

use super::bucket::Store;
use super::{Query, Report, Stats, now_ms, query};
use crate::shared::{Shared, SharedError};

/// The shared-state namespace of the nodes' counts.
const NAMESPACE: &str = "stats";
/// How long a node's published counts are kept unless published again.
const KEPT: Duration = Duration::from_secs(60);

impl Stats {
    /// Publishes this node's counts as `node` every `every` (first at once), for as long as the
    /// process runs; a failure is logged and tried again at the next tick.
    pub fn spawn_publisher(
        self: &Arc<Self>,
        shared: Shared,
        node: String,
        every: Duration,
    ) -> tokio::task::JoinHandle<()> {
        let stats = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let snapshot = stats.clone();
                let json = match tokio::task::spawn_blocking(move || snapshot.snapshot()).await {
                    Ok(Ok(json)) => json,
                    Ok(Err(e)) => {
                        tracing::warn!(error = %e, "cannot serialise the stats for the other nodes");
                        continue;
                    }
                    Err(_) => continue,
                };
                if let Err(e) = shared.put(NAMESPACE, &node, &json, KEPT).await {
                    tracing::warn!(error = %e, "cannot publish the stats to the shared state");
                }
            }
        })
    }

    /// This node's counts as JSON, rolled up to now. Blocking for a large store: not for an
    /// async task.
    fn snapshot(&self) -> Result<String, serde_json::Error> {
        let mut store = self.store();
        store.roll_up(now_ms() / 1000, self.cap);
        serde_json::to_string(&*store)
    }

    /// The counts over a range summed over every node publishing to `shared`: the other nodes'
    /// as they last published them, this node's (`node`) as they are now. A node's counts that
    /// cannot be read are left out with a warning.
    pub async fn query_nodes(&self, shared: &Shared, node: &str, q: &Query) -> Result<Report, SharedError> {
        let published = shared.all(NAMESPACE).await?;
        let now = now_ms() / 1000;
        let mut sum = {
            let mut store = self.store();
            store.roll_up(now, self.cap);
            store.clone()
        };
        let mut nodes = vec![node.to_owned()];
        for (name, json) in published {
            if name == node {
                continue;
            }
            match serde_json::from_str::<Store>(&json) {
                Ok(mut theirs) => {
                    theirs.roll_up(now, self.cap);
                    sum.merge(&theirs, self.cap);
                    nodes.push(name);
                }
                Err(e) => tracing::warn!(node = %name, error = %e, "a node's published stats are unreadable: left out"),
            }
        }
        nodes.sort();
        Ok(Report {
            nodes,
            ..query::run(&sum, q, now)
        })
    }
}
