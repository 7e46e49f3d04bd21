//! The suppression list on the admin address: `GET /suppression` (JSON list),
//! `PUT /suppression/{address}` (added as a manual entry), `DELETE /suppression/{address}`.

use axum::extract::{Extension, Path, State};
use axum::http::StatusCode;

use super::admin_auth::Peer;
use super::api_json::{JsonAnswer, json_done, json_error, json_pretty};
use super::api_routes::{Routes, get};
use crate::queue::Queue;
use crate::suppress::Reason;

pub fn routes() -> Routes<Queue> {
    Routes::new()
        .route("/suppression", get(list))
        .route("/suppression/{address}", get(show).put(add).delete(remove))
}

type Answer = JsonAnswer;

async fn list(State(queue): State<Queue>) -> Answer {
    json_pretty(&queue.ctx().feedback.suppression.list())
}

async fn show(State(queue): State<Queue>, Path(address): Path<String>) -> Answer {
    match queue.ctx().feedback.suppression.contains(&address) {
        Some(entry) => json_pretty(&entry),
        None => json_error(StatusCode::NOT_FOUND, format!("{address} is not suppressed")),
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
        return json_error(
            StatusCode::BAD_REQUEST,
            format!(
                "an address is at most {MAX_ADDRESS} octets; this one has {}",
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
            json_done(
                format!("{address} {what}"),
                serde_json::json!({ "address": address, "new": new }),
            )
        }
        Err(e) if e.kind() == std::io::ErrorKind::InvalidInput => json_error(StatusCode::BAD_REQUEST, e),
        Err(e) => {
            tracing::error!(error = %e, "admin: the suppression list could not record a change");
            json_error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "the suppression list could not record the change",
            )
        }
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
            json_done(format!("{address} removed"), serde_json::json!({ "address": address }))
        }
        Ok(false) => json_error(StatusCode::NOT_FOUND, format!("{address} is not suppressed")),
        Err(e) => {
            tracing::error!(error = %e, "admin: the suppression list could not record a change");
            json_error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "the suppression list could not record the change",
            )
        }
    }
}
