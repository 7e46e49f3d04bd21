//! Analytics on the admin address: `GET /api/v1/stats?by=...&since=24h&until=0s&bucket=...`,
//! the counts over a range per bucket and in total, per value of `by` (domain, mx, route, pool,
//! stream, listener, sender_domain), with delivery, bounce and deferral rates and latency
//! percentiles (JSON, as `stats::Report`). `nodes=all` sums the counts of every node sharing the
//! `[redis]` state (`503` when that cannot be read, `400` without `[redis]`). A wrong parameter gets
//! `400` and `{"error": "..."}`.

use std::collections::HashMap;

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::http::header::{CONTENT_TYPE, HeaderName};

use super::api_json::json_error;
use super::api_routes::{Routes, get};
use crate::queue::Queue;

pub fn routes() -> Routes<Queue> {
    Routes::new().route("/stats", get(stats))
}

type Answer = (StatusCode, [(HeaderName, &'static str); 1], String);

async fn stats(
    State(queue): State<Queue>,
    params: Result<Query<HashMap<String, String>>, axum::extract::rejection::QueryRejection>,
) -> Answer {
    let Ok(Query(mut params)) = params else {
        return json_error(StatusCode::BAD_REQUEST, "the query is not well formed");
    };
    let json = [(CONTENT_TYPE, "application/json")];
    let all_nodes = match params.remove("nodes").as_deref() {
        None | Some("local") => false,
        Some("all") => true,
        Some(other) => {
            return json_error(StatusCode::BAD_REQUEST, format!("nodes: {other:?} is not all or local"));
        }
    };
    let query = match crate::stats::Query::from_params(&params) {
        Ok(q) => q,
        Err(error) => return json_error(StatusCode::BAD_REQUEST, error),
    };
    let ctx = queue.ctx();
    let report = match (all_nodes, &ctx.shared) {
        (false, _) => ctx.stats.query(&query),
        (true, None) => {
            return json_error(StatusCode::BAD_REQUEST, "nodes=all needs shared state ([redis])");
        }
        (true, Some(shared)) => match ctx.stats.query_nodes(shared, &ctx.config.events.node, &query).await {
            Ok(report) => report,
            Err(e) => {
                tracing::warn!(error = %e, "stats of every node: cannot read the shared state");
                return json_error(StatusCode::SERVICE_UNAVAILABLE, "the shared state cannot be read");
            }
        },
    };
    let body = serde_json::to_string_pretty(&report).unwrap_or_default() + "\n";
    (StatusCode::OK, json, body)
}
