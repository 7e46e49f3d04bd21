//! The quarantine on the admin address:
//! `GET /quarantine` (JSON list), `GET /quarantine/{id}` (the message),
//! `DELETE /quarantine/{id}`, `POST /quarantine/{id}/release` (delivered as if it had passed).

use axum::extract::{Extension, Path, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};

use super::admin_auth::Peer;
use super::api_json::{json_done, json_error};
use super::api_routes::{Routes, get, post};
use crate::quarantine::Entry;
use crate::queue::Queue;

pub fn routes() -> Routes<Queue> {
    Routes::new()
        .route("/quarantine", get(list))
        .route("/quarantine/{id}", get(show).delete(delete))
        .route("/quarantine/{id}/release", post(release))
}

/// Not in the quarantine (or not an id it could hold); the file system's words stay in the log.
fn not_found(e: &std::io::Error) -> Response {
    tracing::debug!(error = %e, "admin: no such quarantine entry");
    json_error(StatusCode::NOT_FOUND, "no such message in the quarantine").into_response()
}

fn failed(what: &str, e: &dyn std::fmt::Display) -> Response {
    tracing::error!(error = %e, "admin: the quarantine failed: {what}");
    json_error(
        StatusCode::INTERNAL_SERVER_ERROR,
        format!("the quarantine failed: {what} (see the log)"),
    )
    .into_response()
}

async fn list(State(queue): State<Queue>) -> Response {
    match queue.ctx().quarantine.blocking(|q| q.list()).await {
        Ok(entries) => ([(header::CONTENT_TYPE, "application/json")], entries_json(&entries)).into_response(),
        Err(e) => failed("cannot list", &e),
    }
}

async fn show(State(queue): State<Queue>, Path(id): Path<String>) -> Response {
    let shown = id.clone();
    match queue.ctx().quarantine.blocking(move |q| q.message(&shown)).await {
        Ok(m) => ([(header::CONTENT_TYPE, "message/rfc822")], m).into_response(),
        Err(e) => not_found(&e),
    }
}

async fn delete(
    State(queue): State<Queue>,
    Extension(Peer(peer)): Extension<Peer>,
    Path(id): Path<String>,
) -> Response {
    let deleted = id.clone();
    match queue.ctx().quarantine.blocking(move |q| q.delete(&deleted)).await {
        Ok(()) => {
            tracing::info!(%peer, quarantine_id = %id, "admin: deleted from quarantine");
            json_done(format!("deleted {id}"), serde_json::json!({ "id": id })).into_response()
        }
        Err(e) => not_found(&e),
    }
}

/// Releases an entry: it goes on from where its filter stopped it (`intake::release`).
async fn release(
    State(queue): State<Queue>,
    Extension(Peer(peer)): Extension<Peer>,
    Path(id): Path<String>,
) -> Response {
    use crate::intake::{ReleaseError, Released};
    let released = crate::intake::release(&queue, &id).await;
    match &released {
        Ok(outcome) => {
            tracing::info!(%peer, quarantine_id = %id, outcome = ?outcome, "admin: released from quarantine")
        }
        Err(e) => tracing::warn!(%peer, quarantine_id = %id, error = %e, "admin: release refused"),
    }
    let done = |message: String, outcome: &str, queue_ids: Vec<String>, again: Option<String>| {
        let fields = serde_json::json!({
            "id": id, "outcome": outcome, "queue_ids": queue_ids, "quarantine_id": again,
        });
        json_done(message, fields).into_response()
    };
    match released {
        Ok(Released::Spooled(ids)) if ids.is_empty() => done(
            format!("released {id}: routing and the route filters left no copy to deliver"),
            "spooled",
            Vec::new(),
            None,
        ),
        Ok(Released::Spooled(ids)) => {
            let ids: Vec<String> = ids.iter().map(|i| i.to_string()).collect();
            done(format!("released {id} as {}", ids.join(" ")), "spooled", ids, None)
        }
        Ok(Released::Quarantined(new)) => done(
            format!("released {id}: a later filter quarantined it again as {new}"),
            "quarantined",
            Vec::new(),
            Some(new.to_string()),
        ),
        Ok(Released::Discarded) => done(
            format!("released {id}: a later filter discarded it"),
            "discarded",
            Vec::new(),
            None,
        ),
        Err(ReleaseError::NotFound(e)) => not_found(&e),
        Err(e @ (ReleaseError::MissingFilter(_) | ReleaseError::Refused(_))) => {
            json_error(StatusCode::CONFLICT, e).into_response()
        }
        Err(e) => failed("cannot release", &e),
    }
}

/// The list as JSON: one object per entry.
pub fn entries_json(entries: &[Entry]) -> String {
    let items: Vec<serde_json::Value> = entries
        .iter()
        .map(|e| {
            let rcpts: Vec<&str> = e.envelope.recipients.iter().map(|r| r.address.as_str()).collect();
            serde_json::json!({
                "id": e.id, "reason": e.reason, "filter": e.filter, "quarantined_at": e.quarantined_at,
                "sender": e.envelope.sender.as_str(), "recipients": rcpts, "size": e.size,
            })
        })
        .collect();
    serde_json::Value::Array(items).to_string() + "\n"
}
