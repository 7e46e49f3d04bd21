//! `POST /api/v1/inject`: mail from applications, as JSON (`intake::inject`). The answer names
//! each recipient's queue id, or why it was refused, once every accepted copy is fsynced.
//! A body that is not a valid request gets `400` with `{"error": "..."}`.

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Extension, State};
use axum::http::{HeaderMap, StatusCode};

use super::admin_auth::Peer;
use super::api_json::{JsonAnswer, is_json, json_answer, json_error, serde_message};
use super::api_routes::{Routes, post};
use crate::intake::inject::{self, Request};
use crate::queue::Queue;

/// The largest request: a message of the largest size a listener takes, base64 attachments
/// (4/3) and the JSON around them.
const MAX_REQUEST: usize = 256 << 20;

pub fn routes() -> Routes<Queue> {
    Routes::new().route(
        "/inject",
        post(inject).map(|m| m.layer(DefaultBodyLimit::max(MAX_REQUEST))),
    )
}

type Answer = JsonAnswer;

async fn inject(
    State(queue): State<Queue>,
    Extension(Peer(peer)): Extension<Peer>,
    headers: HeaderMap,
    body: Bytes,
) -> Answer {
    if !is_json(&headers) {
        let message = "the body must be JSON, sent with Content-Type: application/json";
        return json_error(StatusCode::UNSUPPORTED_MEDIA_TYPE, message);
    }
    let request: Request = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => {
            return json_error(
                StatusCode::BAD_REQUEST,
                format!("not an inject request: {}", serde_message(&e)),
            );
        }
    };
    let recipients = request.recipients.len();
    match inject::inject(&queue, request, peer).await {
        Ok(answer) => {
            tracing::info!(
                %peer, recipients, accepted = answer.accepted.len(), refused = answer.refused.len(),
                "admin: messages injected"
            );
            json_answer(StatusCode::OK, &answer)
        }
        Err(e) => json_error(StatusCode::BAD_REQUEST, e),
    }
}
