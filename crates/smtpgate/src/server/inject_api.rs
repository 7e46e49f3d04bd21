//! `POST /api/v1/inject`: mail from applications, as JSON (`intake::inject`). The answer names
//! each recipient's queue id, or why it was refused, once every accepted copy is fsynced.
//! A body that is not a valid request gets `400` with `{"error": "..."}`.

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Extension, State};
use axum::http::StatusCode;
use axum::routing::post;

use super::admin_auth::Peer;
use super::api_json::{JsonAnswer, json_answer, json_error};
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

type Answer = JsonAnswer;

async fn inject(State(queue): State<Queue>, Extension(Peer(peer)): Extension<Peer>, body: Bytes) -> Answer {
    let request: Request = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => return json_error(StatusCode::BAD_REQUEST, format!("not an inject request: {e}")),
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
