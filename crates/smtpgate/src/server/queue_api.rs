//! The queue on the admin address (under `/api/v1`):
//! `GET /queue?domain=&sender=&recipient=&older_than=1h&state=&limit=&offset=` (JSON list),
//! `GET /queue/{id}` (one message, JSON), `GET /queue/{id}/message` (the message, `message/rfc822`),
//! `POST /queue/{id}/{retry|bounce|delete|hold|release}` for one message and
//! `POST /queue/{retry|bounce|delete|hold|release}` for every message the filters (in the query or
//! a JSON body, `Content-Type: application/json`) take. A bulk action with no filter at all is
//! refused unless it says `all=true`: one mistyped command must not bounce the whole queue.
//!
//! Errors are JSON `{"error": "..."}`: 404 for an unknown id, 400 for a bad filter or action.

use std::collections::HashMap;

use axum::body::Bytes;
use axum::extract::{Extension, Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};

use super::admin_auth::Peer;
use super::api_routes::{Routes, get, post};
use crate::queue::{ActionError, Filter, Queue, Selector, parse_id};

pub fn routes() -> Routes<Queue> {
    Routes::new()
        .route("/queue", get(list))
        .route("/queue/{id}", get(show))
        .route("/queue/{id}/message", get(cat))
        .route("/queue/retry", post(retry_all))
        .route("/queue/bounce", post(bounce_all))
        .route("/queue/delete", post(delete_all))
        .route("/queue/hold", post(hold_all))
        .route("/queue/release", post(release_all))
        .route("/queue/{id}/retry", post(retry_one))
        .route("/queue/{id}/bounce", post(bounce_one))
        .route("/queue/{id}/delete", post(delete_one))
        .route("/queue/{id}/hold", post(hold_one))
        .route("/queue/{id}/release", post(release_one))
}

/// The request of an action: who asked, the query (or why it could not be read), its headers
/// and body.
struct Asked {
    peer: std::net::SocketAddr,
    query: QueryParams,
    headers: HeaderMap,
    body: Bytes,
}

/// What a queue action does.
#[derive(Debug, Clone, Copy)]
enum Action {
    Retry,
    Bounce,
    Delete,
    Hold,
    Release,
}

impl Action {
    fn name(self) -> &'static str {
        match self {
            Action::Retry => "retry",
            Action::Bounce => "bounce",
            Action::Delete => "delete",
            Action::Hold => "hold",
            Action::Release => "release",
        }
    }
}

/// A handler per action, for one message (`POST /queue/{id}/<action>`) and for every message the
/// filters take (`POST /queue/<action>`).
macro_rules! actions {
    ($($action:expr => $one:ident, $all:ident;)*) => {$(
        async fn $one(
            State(queue): State<Queue>,
            Extension(Peer(peer)): Extension<Peer>,
            Path(id): Path<String>,
            query: QueryParams,
            headers: HeaderMap,
            body: Bytes,
        ) -> Response {
            one(&queue, $action, &id, Asked { peer, query, headers, body }).await
        }

        async fn $all(
            State(queue): State<Queue>,
            Extension(Peer(peer)): Extension<Peer>,
            query: QueryParams,
            headers: HeaderMap,
            body: Bytes,
        ) -> Response {
            bulk(&queue, $action, Asked { peer, query, headers, body }).await
        }
    )*};
}

actions! {
    Action::Retry => retry_one, retry_all;
    Action::Bounce => bounce_one, bounce_all;
    Action::Delete => delete_one, delete_all;
    Action::Hold => hold_one, hold_all;
    Action::Release => release_one, release_all;
}

/// Most messages one list answer carries, and how many when the request does not say.
const MAX_LIMIT: usize = 10_000;
const DEFAULT_LIMIT: usize = 1_000;

fn error(status: StatusCode, text: impl std::fmt::Display) -> Response {
    super::api_json::json_error(status, text).into_response()
}

fn json(value: &serde_json::Value) -> Response {
    let body = serde_json::to_string_pretty(value).unwrap_or_default() + "\n";
    (StatusCode::OK, [(header::CONTENT_TYPE, "application/json")], body).into_response()
}

fn not_found(id: &str) -> Response {
    error(StatusCode::NOT_FOUND, format!("no message {id} in the queue"))
}

/// What a request may say, with the filters; anything else is a mistake worth a 400.
const KNOWN: &[&str] = &[
    "domain",
    "sender",
    "recipient",
    "older_than",
    "state",
    "limit",
    "offset",
    "all",
    "reason",
];

/// Parameters from the query, and from a JSON object body (strings, numbers and booleans).
type Params = HashMap<String, String>;
/// The query, or why it could not be read (answered as a 400).
type QueryParams = Result<Query<Params>, axum::extract::rejection::QueryRejection>;

fn params(query: Params, headers: &HeaderMap, body: &[u8]) -> Result<Params, (StatusCode, String)> {
    let mut all = query;
    if body.iter().any(|b| !b.is_ascii_whitespace()) {
        if !super::api_json::is_json(headers) {
            return Err((
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "a body must be JSON, sent with Content-Type: application/json".into(),
            ));
        }
        let bad = |e: String| (StatusCode::BAD_REQUEST, e);
        let value: serde_json::Value = serde_json::from_slice(body).map_err(|_| bad("the body is not JSON".into()))?;
        let object = value
            .as_object()
            .ok_or_else(|| bad("the body is not a JSON object".into()))?;
        for (key, value) in object {
            let text = match value {
                serde_json::Value::String(s) => s.clone(),
                serde_json::Value::Bool(_) | serde_json::Value::Number(_) => value.to_string(),
                _ => return Err(bad(format!("{key}: give a string, number or boolean"))),
            };
            all.insert(key.clone(), text);
        }
    }
    if let Some(unknown) = all.keys().find(|k| !KNOWN.contains(&k.as_str())) {
        return Err((StatusCode::BAD_REQUEST, format!("unknown parameter {unknown:?}")));
    }
    Ok(all)
}

/// The parameters of a request from its query and body.
fn read(query: QueryParams, headers: &HeaderMap, body: &[u8]) -> Result<Params, (StatusCode, String)> {
    let query = query.map_err(|_| (StatusCode::BAD_REQUEST, "the query is not well formed".to_string()))?;
    params(query.0, headers, body)
}

/// The filter the parameters describe.
fn filter(p: &Params) -> Result<Filter, String> {
    let text = |k: &str| p.get(k).filter(|v| !v.is_empty()).cloned();
    let older_than = match text("older_than") {
        Some(v) => Some(crate::config::values::parse_duration(&v).map_err(|e| format!("older_than: {e}"))?),
        None => None,
    };
    let state = match text("state") {
        Some(v) => Some(v.parse().map_err(|e| format!("state: {e}"))?),
        None => None,
    };
    Ok(Filter {
        domain: text("domain"),
        sender: text("sender"),
        recipient: text("recipient"),
        older_than,
        state,
    })
}

fn number(p: &Params, key: &str, default: usize) -> Result<usize, String> {
    match p.get(key) {
        None => Ok(default),
        Some(v) => v.parse().map_err(|_| format!("{key}: {v:?} is not a number")),
    }
}

async fn list(State(queue): State<Queue>, query: QueryParams) -> Response {
    let p = match read(query, &HeaderMap::new(), &[]) {
        Ok(p) => p,
        Err((status, e)) => return error(status, e),
    };
    let paged = filter(&p).and_then(|f| {
        let limit = number(&p, "limit", DEFAULT_LIMIT)?.min(MAX_LIMIT);
        Ok((f, limit, number(&p, "offset", 0)?))
    });
    let (f, limit, offset) = match paged {
        Ok(x) => x,
        Err(e) => return error(StatusCode::BAD_REQUEST, e),
    };
    let (total, messages) = queue.list(&f, limit, offset);
    json(&serde_json::json!({ "total": total, "offset": offset, "messages": messages }))
}

async fn show(State(queue): State<Queue>, Path(id): Path<String>) -> Response {
    match parse_id(&id).and_then(|qid| queue.show(qid)) {
        Some(summary) => json(&serde_json::json!(summary)),
        None => not_found(&id),
    }
}

async fn cat(State(queue): State<Queue>, Path(id): Path<String>) -> Response {
    let Some(qid) = parse_id(&id) else {
        return not_found(&id);
    };
    match queue.cat(qid).await {
        Ok(bytes) => (StatusCode::OK, [(header::CONTENT_TYPE, "message/rfc822")], bytes).into_response(),
        Err(e) => failed(&id, &e),
    }
}

/// An action's failure as an answer: no internal detail (the log has it).
fn failed(id: &str, e: &ActionError) -> Response {
    match e {
        ActionError::NotFound => not_found(id),
        ActionError::Spool(_) | ActionError::Bounce => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

/// `POST /queue/{id}/<action>`.
async fn one(queue: &Queue, action: Action, id: &str, asked: Asked) -> Response {
    let p = match read(asked.query, &asked.headers, &asked.body) {
        Ok(p) => p,
        Err((status, e)) => return error(status, e),
    };
    let Some(qid) = parse_id(id) else {
        return not_found(id);
    };
    act(queue, &asked.peer, action, &Selector::Id(qid), &p, id).await
}

/// `POST /queue/<action>`: every message the filters take.
async fn bulk(queue: &Queue, action: Action, asked: Asked) -> Response {
    let p = match read(asked.query, &asked.headers, &asked.body) {
        Ok(p) => p,
        Err((status, e)) => return error(status, e),
    };
    let f = match filter(&p) {
        Ok(f) => f,
        Err(e) => return error(StatusCode::BAD_REQUEST, e),
    };
    let all = p.get("all").is_some_and(|v| v == "true");
    if f.is_empty() && !all {
        return error(
            StatusCode::BAD_REQUEST,
            "a bulk action needs a filter (domain, sender, recipient, older_than, state) or all=true",
        );
    }
    act(queue, &asked.peer, action, &Selector::Filter(f), &p, "").await
}

/// Runs `action` on what `selector` takes, logs who did what to how many, and answers the count.
async fn act(
    queue: &Queue,
    peer: &std::net::SocketAddr,
    action: Action,
    selector: &Selector,
    p: &Params,
    id: &str,
) -> Response {
    let done = match action {
        Action::Retry => queue.retry(selector),
        Action::Bounce => queue.bounce(selector, p.get("reason").map(String::as_str)).await,
        Action::Delete => queue.delete(selector).await,
        Action::Hold => queue.hold(selector).await,
        Action::Release => queue.release(selector).await,
    };
    let action = action.name();
    match done {
        Ok(n) => {
            tracing::info!(%peer, action, selector = ?selector, messages = n, "admin: queue action");
            json(&serde_json::json!({ "action": action, "messages": n }))
        }
        Err(e) => {
            tracing::warn!(%peer, action, selector = ?selector, error = %e, "admin: queue action failed");
            failed(id, &e)
        }
    }
}

/// A list answer as readable columns (for `smtpgate queue list`): queue id, age, size, sender,
/// pending recipients, next attempt, last reply.
pub fn table(list: &str) -> Result<String, String> {
    let value: serde_json::Value = serde_json::from_str(list).map_err(|_| "the answer is not JSON".to_string())?;
    let now = crate::datetime::now_unix();
    let mut out = format!(
        "{:<16}  {:>6}  {:>8}  {:<30}  {:>7}  {:>6}  LAST REPLY\n",
        "QUEUE ID", "AGE", "SIZE", "SENDER", "PENDING", "NEXT"
    );
    for m in value["messages"].as_array().into_iter().flatten() {
        let next = match (m["state"].as_str(), m["next_attempt"].as_u64()) {
            (Some("held"), _) => "held".to_string(),
            (Some("suspended"), _) => "susp.".to_string(),
            (_, Some(at)) => span(at.saturating_sub(now)),
            _ => "-".to_string(),
        };
        let last = m["last_reply"].as_object().map_or("-".to_string(), |r| {
            let parts = [&r["code"], &r["status"], &r["text"]];
            let words: Vec<String> = parts
                .iter()
                .filter(|v| !v.is_null())
                .map(|v| v.as_str().map_or(v.to_string(), str::to_string))
                .collect();
            words.join(" ")
        });
        let sender = m["sender"].as_str().filter(|s| !s.is_empty()).unwrap_or("<>");
        out.push_str(&format!(
            "{:<16}  {:>6}  {:>8}  {:<30}  {:>7}  {:>6}  {}\n",
            m["id"].as_str().unwrap_or("?"),
            span(m["age_secs"].as_u64().unwrap_or(0)),
            m["size"].as_u64().unwrap_or(0),
            sender,
            m["pending"].as_u64().unwrap_or(0),
            next,
            last
        ));
    }
    let total = value["total"].as_u64().unwrap_or(0);
    out.push_str(&format!("{total} message(s)\n"));
    Ok(out)
}

/// A duration in its largest units: `45s`, `12m`, `3h20m`, `2d4h`.
fn span(secs: u64) -> String {
    match secs {
        0..60 => format!("{secs}s"),
        60..3600 => format!("{}m", secs / 60),
        3600..86400 => format!("{}h{}m", secs / 3600, secs % 3600 / 60),
        _ => format!("{}d{}h", secs / 86400, secs % 86400 / 3600),
    }
}
