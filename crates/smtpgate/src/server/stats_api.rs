//! Analytics on the admin address: `GET /api/v1/stats?by=...&since=24h&until=0s&bucket=...`,
//! the counts over a range per bucket and in total, per value of `by` (domain, mx, route, pool,
//! stream, listener, sender_domain), with delivery, bounce and deferral rates and latency
//! percentiles (JSON, as `stats::Report`). A wrong parameter gets `400` and `{"error": "..."}`.

use std::collections::HashMap;

use axum::Router;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::http::header::{CONTENT_TYPE, HeaderName};
use axum::routing::get;

use crate::queue::Queue;

pub fn routes() -> Router<Queue> {
    Router::new().route("/stats", get(stats))
}

type Answer = (StatusCode, [(HeaderName, &'static str); 1], String);

async fn stats(State(queue): State<Queue>, Query(params): Query<HashMap<String, String>>) -> Answer {
    let json = [(CONTENT_TYPE, "application/json")];
    let query = match crate::stats::Query::from_params(&params) {
        Ok(q) => q,
        Err(error) => return super::api_json::json_error(StatusCode::BAD_REQUEST, error),
    };
    let report = queue.ctx().stats.query(&query);
    let body = serde_json::to_string_pretty(&report).unwrap_or_default() + "\n";
    (StatusCode::OK, json, body)
}
