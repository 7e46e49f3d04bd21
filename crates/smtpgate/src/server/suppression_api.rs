//! The suppression list on the admin address: `GET /suppression` (JSON list),
//! `PUT /suppression/{address}` (added as a manual entry), `DELETE /suppression/{address}`.

use axum::Router;
use axum::extract::{Extension, Path, State};
use axum::http::StatusCode;
use axum::routing::get;

use super::admin_auth::Peer;
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

/// The longest address an administrator can add: a path is at most 256 octets with its angle
/// brackets (RFC 5321 4.5.3.1.3).
const MAX_ADDRESS: usize = 254;

async fn add(
    State(queue): State<Queue>,
    Extension(Peer(peer)): Extension<Peer>,
    Path(address): Path<String>,
) -> Answer {
    if address.len() > MAX_ADDRESS {
        return (
            StatusCode::BAD_REQUEST,
            format!(
                "an address is at most {MAX_ADDRESS} octets; this one has {}\n",
                address.len()
            ),
        );
    }
    match queue.ctx().feedback.add(&address, Reason::Manual, "admin") {
        Ok(new) => {
            tracing::info!(%peer, address, new, "admin: address suppressed by the administrator");
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

async fn remove(
    State(queue): State<Queue>,
    Extension(Peer(peer)): Extension<Peer>,
    Path(address): Path<String>,
) -> Answer {
    match queue.ctx().feedback.remove(&address) {
        Ok(true) => {
            tracing::info!(
                %peer,
                address,
                "admin: address removed from the suppression list by the administrator"
            );
            (StatusCode::OK, format!("{address} removed\n"))
        }
        Ok(false) => (StatusCode::NOT_FOUND, format!("{address} is not suppressed\n")),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")),
    }
}
