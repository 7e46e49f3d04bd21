//! `POST /api/v1/inject`: mail from applications, as JSON (`intake::inject`). The answer names
//! each recipient's queue id, or why it was refused, once every accepted copy is fsynced.
//! A body that is not a valid request gets `400` with `{"error": "..."}`.

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Extension, State};
use axum::http::{HeaderName, StatusCode, header};
use axum::routing::post;

use super::admin_auth::Peer;
use crate::intake::inject::{self, Request};
use crate::queue::Queue;

/// The largest request: a message of the largest size a listener takes, base64 attachments
/// (4/3) and the JSON around them.
const MAX_REQUEST: usize = 256 << 20;

pub fn routes() -> Router<Queue> {
    Router::new()
        .route("/inject", post(inject))
        .layer(DefaultBodyLimit::max(MAX_REQUEST))
}

type Answer = (StatusCode, [(HeaderName, &'static str); 1], String);

/// `body` as JSON with `status`.
fn json(status: StatusCode, body: &impl serde::Serialize) -> Answer {
    let text = serde_json::to_string(body).unwrap_or_default() + "\n";
    (status, [(header::CONTENT_TYPE, "application/json")], text)
}

/// `{"error": message}` with `status`.
fn error(status: StatusCode, message: impl std::fmt::Display) -> Answer {
    json(status, &serde_json::json!({ "error": message.to_string() }))
}

async fn inject(State(queue): State<Queue>, Extension(Peer(peer)): Extension<Peer>, body: Bytes) -> Answer {
    let request: Request = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => return error(StatusCode::BAD_REQUEST, format!("not an inject request: {e}")),
    };
    let recipients = request.recipients.len();
    match inject::inject(&queue, request, peer).await {
        Ok(answer) => {
            tracing::info!(
                %peer, recipients, accepted = answer.accepted.len(), refused = answer.refused.len(),
                "admin: messages injected"
            );
            json(StatusCode::OK, &answer)
        }
        Err(e) => error(StatusCode::BAD_REQUEST, e),
    }
}
