//! The JSON answers of the admin API, one form for every endpoint (a leaf below the `*_api`
//! modules and `admin.rs`).

use axum::http::{HeaderName, StatusCode, header};

/// An answer of the API: its status and a JSON body.
pub(super) type JsonAnswer = (StatusCode, [(HeaderName, &'static str); 1], String);

/// `body` as JSON with `status`.
pub(super) fn json_answer(status: StatusCode, body: &impl serde::Serialize) -> JsonAnswer {
    let text = serde_json::to_string(body).unwrap_or_default() + "\n";
    (status, [(header::CONTENT_TYPE, "application/json")], text)
}

/// The one form of an API error: `{"error": message}` with `status`, no internal detail.
pub(super) fn json_error(status: StatusCode, message: impl std::fmt::Display) -> JsonAnswer {
    json_answer(status, &serde_json::json!({ "error": message.to_string() }))
}
