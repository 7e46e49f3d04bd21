//! `GET /api/v1/pools`: every pool and the health of each of its servers (up or down, circuit,
//! open connections, deliveries), from the configuration in use.

use axum::extract::State;
use axum::http::{HeaderName, header};

use super::api_routes::{Routes, get};

use crate::queue::Queue;

pub fn routes() -> Routes<Queue> {
    Routes::new().route("/pools", get(pools))
}

async fn pools(State(queue): State<Queue>) -> ([(HeaderName, &'static str); 1], String) {
    let health = queue.ctx().pools.health();
    let body = serde_json::to_string(&health).unwrap_or_default() + "\n";
    ([(header::CONTENT_TYPE, "application/json")], body)
}
