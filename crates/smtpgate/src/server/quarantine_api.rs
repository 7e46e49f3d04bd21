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
    match queue.ctx().quarantine.list() {
        Ok(entries) => (StatusCode::OK, entries_json(&entries)),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")),
    }
}

async fn show(State(queue): State<Queue>, Path(id): Path<String>) -> Answer {
    match queue.ctx().quarantine.message(&id) {
        Ok(m) => (StatusCode::OK, String::from_utf8_lossy(&m).into_owned()),
        Err(e) => not_found(e),
    }
}

async fn delete(State(queue): State<Queue>, Extension(Peer(peer)): Extension<Peer>, Path(id): Path<String>) -> Answer {
    match queue.ctx().quarantine.delete(&id) {
        Ok(()) => {
            tracing::info!(%peer, quarantine_id = %id, "admin: deleted from quarantine");
            (StatusCode::OK, format!("deleted {id}\n"))
        }
        Err(e) => not_found(e),
    }
}

/// Releases an entry: it is spooled again without its after-queue filters, then removed.
async fn release(State(queue): State<Queue>, Extension(Peer(peer)): Extension<Peer>, Path(id): Path<String>) -> Answer {
    let ctx = queue.ctx();
    let (entry, message) = match ctx
        .quarantine
        .entry(&id)
        .and_then(|e| Ok((e, ctx.quarantine.message(&id)?)))
    {
        Ok(x) => x,
        Err(e) => return not_found(e),
    };
    let mut env = entry.envelope;
    env.scan.clear();
    env.id = ctx.ids.next();
    let new_id = env.id;
    if let Err(e) = queue.accept(env, message).await {
        return (StatusCode::INTERNAL_SERVER_ERROR, format!("cannot spool: {e}\n"));
    }
    let _ = ctx.quarantine.delete(&id);
    tracing::info!(%peer, quarantine_id = %id, queue_id = %new_id, "admin: released from quarantine");
    (StatusCode::OK, format!("released {id} as {new_id}\n"))
}

/// The list as JSON: one object per entry.
pub fn entries_json(entries: &[Entry]) -> String {
    let items: Vec<serde_json::Value> = entries
        .iter()
        .map(|e| {
            let rcpts: Vec<&str> = e.envelope.recipients.iter().map(|r| r.address.as_str()).collect();
            serde_json::json!({
                "id": e.id, "reason": e.reason, "filter": e.filter, "quarantined_at": e.quarantined_at,
                "sender": e.envelope.sender, "recipients": rcpts, "size": e.size,
            })
        })
        .collect();
    serde_json::Value::Array(items).to_string() + "\n"
}
