//! The quarantine on the admin address:
//! `GET /quarantine` (JSON list), `GET /quarantine/{id}` (the message),
//! `DELETE /quarantine/{id}`, `POST /quarantine/{id}/release` (delivered as if it had passed).

use axum::Router;
use axum::extract::{Extension, Path, State};
use axum::http::StatusCode;
use axum::routing::{get, post};

use super::admin_auth::Peer;
use crate::quarantine::Entry;
use crate::queue::Queue;

pub fn routes() -> Router<Queue> {
    Router::new()
        .route("/quarantine", get(list))
        .route("/quarantine/{id}", get(show).delete(delete))
        .route("/quarantine/{id}/release", post(release))
}

type Answer = (StatusCode, String);

fn not_found(e: std::io::Error) -> Answer {
    (StatusCode::NOT_FOUND, format!("{e}\n"))
}

async fn list(State(queue): State<Queue>) -> Answer {
    match queue.ctx().quarantine.blocking(|q| q.list()).await {
        Ok(entries) => (StatusCode::OK, entries_json(&entries)),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")),
    }
}

async fn show(State(queue): State<Queue>, Path(id): Path<String>) -> Answer {
    let shown = id.clone();
    match queue.ctx().quarantine.blocking(move |q| q.message(&shown)).await {
        Ok(m) => (StatusCode::OK, String::from_utf8_lossy(&m).into_owned()),
        Err(e) => not_found(e),
    }
}

async fn delete(State(queue): State<Queue>, Extension(Peer(peer)): Extension<Peer>, Path(id): Path<String>) -> Answer {
    let deleted = id.clone();
    match queue.ctx().quarantine.blocking(move |q| q.delete(&deleted)).await {
        Ok(()) => {
            tracing::info!(%peer, quarantine_id = %id, "admin: deleted from quarantine");
            (StatusCode::OK, format!("deleted {id}\n"))
        }
        Err(e) => not_found(e),
    }
}

/// Releases an entry: it goes on from where its filter stopped it (`intake::release`).
async fn release(State(queue): State<Queue>, Extension(Peer(peer)): Extension<Peer>, Path(id): Path<String>) -> Answer {
    use crate::intake::{ReleaseError, Released};
    let released = crate::intake::release(&queue, &id).await;
    match &released {
        Ok(outcome) => {
            tracing::info!(%peer, quarantine_id = %id, outcome = ?outcome, "admin: released from quarantine")
        }
        Err(e) => tracing::warn!(%peer, quarantine_id = %id, error = %e, "admin: release refused"),
    }
    match released {
        Ok(Released::Spooled(ids)) if ids.is_empty() => (
            StatusCode::OK,
            format!("released {id}: routing and the route filters left no copy to deliver\n"),
        ),
        Ok(Released::Spooled(ids)) => {
            let ids: Vec<String> = ids.iter().map(|i| i.to_string()).collect();
            (StatusCode::OK, format!("released {id} as {}\n", ids.join(" ")))
        }
        Ok(Released::Quarantined(new)) => (
            StatusCode::OK,
            format!("released {id}: a later filter quarantined it again as {new}\n"),
        ),
        Ok(Released::Discarded) => (StatusCode::OK, format!("released {id}: a later filter discarded it\n")),
        Err(ReleaseError::NotFound(e)) => not_found(e),
        Err(e @ (ReleaseError::MissingFilter(_) | ReleaseError::Refused(_))) => {
            (StatusCode::CONFLICT, format!("{e}\n"))
        }
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")),
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
