//! The JSON answers of the admin API, one form for every endpoint (a leaf below the `*_api`
//! modules and `admin.rs`).

use axum::body::Body;
use axum::http::{HeaderName, HeaderValue, StatusCode, header};
use axum::response::Response;

/// An answer of the API: its status and a JSON body.
pub(super) type JsonAnswer = (StatusCode, [(HeaderName, &'static str); 1], String);

/// `body` as JSON with `status`.
pub(super) fn json_answer(status: StatusCode, body: &impl serde::Serialize) -> JsonAnswer {
    let text = serde_json::to_string(body).unwrap_or_default() + "\n";
    (status, [(header::CONTENT_TYPE, "application/json")], text)
}

/// `body` as indented JSON with `200`, for answers the CLI prints as they come.
pub(super) fn json_pretty(body: &impl serde::Serialize) -> JsonAnswer {
    let text = serde_json::to_string_pretty(body).unwrap_or_default() + "\n";
    (StatusCode::OK, [(header::CONTENT_TYPE, "application/json")], text)
}

/// The one form of an API error: `{"error": message}` with `status`, no internal detail.
pub(super) fn json_error(status: StatusCode, message: impl std::fmt::Display) -> JsonAnswer {
    json_answer(status, &serde_json::json!({ "error": message.to_string() }))
}

/// The last word on every answer of the admin address: an error that is not JSON yet (one of
/// axum's own rejections: a path or query that cannot be read, a body too large) becomes
/// `{"error": ...}` with a message for its status, so no answer carries an internal detail.
pub(super) async fn json_errors(response: Response) -> Response {
    let status = response.status();
    let json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if !(status.is_client_error() || status.is_server_error()) || json {
        return response;
    }
    let message = match status {
        StatusCode::BAD_REQUEST => "the request is not well formed (its path, query or body)",
        StatusCode::NOT_FOUND => "not found",
        StatusCode::METHOD_NOT_ALLOWED => "this method is not allowed here (see the Allow header)",
        StatusCode::PAYLOAD_TOO_LARGE => "the request body is too large",
        StatusCode::UNSUPPORTED_MEDIA_TYPE => "the body must be JSON, sent with Content-Type: application/json",
        StatusCode::UNPROCESSABLE_ENTITY => "the body is not a valid request",
        _ if status.is_server_error() => "the server failed (see its log)",
        _ => status.canonical_reason().unwrap_or("the request was refused"),
    };
    let (mut parts, _) = response.into_parts();
    let body = serde_json::json!({ "error": message }).to_string() + "\n";
    parts
        .headers
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    parts.headers.remove(header::CONTENT_LENGTH);
    Response::from_parts(parts, Body::from(body))
}

/// A JSON answer with `status` whose body is `{"message": message}` and the other `fields`: what
/// an action did, in words (the CLI prints `message`) and as values.
pub(super) fn json_done(message: impl std::fmt::Display, fields: serde_json::Value) -> JsonAnswer {
    let mut body = fields;
    if let Some(object) = body.as_object_mut() {
        object.insert("message".into(), message.to_string().into());
    }
    json_answer(StatusCode::OK, &body)
}

/// Whether the request says its body is JSON (`Content-Type: application/json`, any parameters).
pub(super) fn is_json(headers: &axum::http::HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("application/json"))
}

/// What is wrong with a JSON body, in serde's words but without its position in the text
/// (`at line 1 column 7`), which says nothing to the client and is an internal detail.
pub(super) fn serde_message(e: &serde_json::Error) -> String {
    let text = e.to_string();
    let cut = match text.rfind(" at line ") {
        Some(at) if text[at..].contains(" column ") => &text[..at],
        _ => &text,
    };
    match e.classify() {
        serde_json::error::Category::Syntax | serde_json::error::Category::Eof => "the body is not valid JSON".into(),
        serde_json::error::Category::Io => "the body could not be read".into(),
        serde_json::error::Category::Data => cut.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serde_messages_have_no_position() {
        #[derive(Debug, serde::Deserialize)]
        #[serde(deny_unknown_fields)]
        #[allow(dead_code)]
        struct R {
            to: Vec<String>,
        }
        let data = serde_json::from_str::<R>(r#"{"to": 5}"#).unwrap_err();
        let message = serde_message(&data);
        assert!(
            message.contains("invalid type") && !message.contains("line"),
            "{message}"
        );
        let unknown = serde_json::from_str::<R>(r#"{"to": [], "x": 1}"#).unwrap_err();
        assert!(serde_message(&unknown).starts_with("unknown field `x`"));
        let syntax = serde_json::from_str::<R>("{nope").unwrap_err();
        assert_eq!(serde_message(&syntax), "the body is not valid JSON");
    }

    #[test]
    fn json_content_type() {
        let mut headers = axum::http::HeaderMap::new();
        assert!(!is_json(&headers));
        headers.insert(header::CONTENT_TYPE, "Application/JSON; charset=utf-8".parse().unwrap());
        assert!(is_json(&headers));
        headers.insert(header::CONTENT_TYPE, "text/plain".parse().unwrap());
        assert!(!is_json(&headers));
    }
}
