//! The suppression list on the admin address: `GET /suppression` (JSON list),
//! `PUT /suppression/{address}` (added as a manual entry), `DELETE /suppression/{address}`.

use axum::Router;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::get;

use crate::queue::Queue;
use crate::suppress::Reason;

pub fn routes() -> Router<Queue> {
    Router::new()
        .route("/suppression", get(list))
        .route("/suppression/{address}", get(show).put(add).delete(remove))
}

type Answer = (StatusCode, String);

fn json<T: serde::Serialize>(value: &T) -> String {
    serde_json::to_string_pretty(value).unwrap_or_default() + "\n"
}

async fn list(State(queue): State<Queue>) -> Answer {
    (StatusCode::OK, json(&queue.ctx().feedback.suppression.list()))
}

async fn show(State(queue): State<Queue>, Path(address): Path<String>) -> Answer {
    match queue.ctx().feedback.suppression.contains(&address) {
        Some(entry) => (StatusCode::OK, json(&entry)),
        None => (StatusCode::NOT_FOUND, format!("{address} is not suppressed\n")),
    }
}

async fn add(State(queue): State<Queue>, Path(address): Path<String>) -> Answer {
    match queue.ctx().feedback.add(&address, Reason::Manual, "admin") {
        Ok(new) => {
            tracing::info!(address, "address suppressed by the administrator");
            let what = if new {
                "suppressed"
            } else {
                "already suppressed (entry refreshed)"
            };
            (StatusCode::OK, format!("{address} {what}\n"))
        }
        Err(e) if e.kind() == std::io::ErrorKind::InvalidInput => (StatusCode::BAD_REQUEST, format!("{e}\n")),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")),
    }
}

async fn remove(State(queue): State<Queue>, Path(address): Path<String>) -> Answer {
    match queue.ctx().feedback.remove(&address) {
        Ok(true) => {
            tracing::info!(
                address,
                "address removed from the suppression list by the administrator"
            );
            (StatusCode::OK, format!("{address} removed\n"))
        }
        Ok(false) => (StatusCode::NOT_FOUND, format!("{address} is not suppressed\n")),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")),
    }
}
