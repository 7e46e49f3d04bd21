//! The message history on the admin address: `GET /api/v1/messages?q=QUEUE_ID|MESSAGE_ID|ADDRESS
//! &since=2h&limit=100&order=asc|desc` (the story of one message, or every message to or from an
//! address) and `GET /api/v1/events?since=&type=&limit=` (the newest events). JSON lists of
//! events; a bad query gets `400` with `{"error": ...}`.

use std::collections::HashMap;

use axum::extract::{Query as Params, State};
use axum::http::StatusCode;

use super::api_routes::{Routes, get};

use crate::events::{Event, Order, Query};
use crate::queue::Queue;

/// The most events one answer holds.
const MAX_LIMIT: usize = 10_000;
const DEFAULT_LIMIT: usize = 1000;

pub fn routes() -> Routes<Queue> {
    Routes::new()
        .route("/messages", get(messages))
        .route("/events", get(events))
}

type Answer = super::api_json::JsonAnswer;
/// The query, or why it could not be read (answered as a 400).
type QueryParams = Result<Params<HashMap<String, String>>, axum::extract::rejection::QueryRejection>;

fn answer(status: StatusCode, body: String) -> Answer {
    (status, [(axum::http::header::CONTENT_TYPE, "application/json")], body)
}

fn bad(message: impl std::fmt::Display) -> Answer {
    super::api_json::json_error(StatusCode::BAD_REQUEST, message)
}

fn found(result: Result<Result<Vec<Event>, crate::events::StoreError>, tokio::task::JoinError>) -> Answer {
    match result {
        Ok(Ok(events)) => answer(
            StatusCode::OK,
            serde_json::to_string(&events).unwrap_or_default() + "\n",
        ),
        Ok(Err(e)) => {
            tracing::error!(error = %e, "admin: the event store failed");
            super::api_json::json_error(StatusCode::INTERNAL_SERVER_ERROR, "the event store failed")
        }
        Err(_) => super::api_json::json_error(StatusCode::INTERNAL_SERVER_ERROR, "query failed"),
    }
}

/// `since` (a duration back from now, `2h`) as unix ms; 0 without it.
fn since(params: &HashMap<String, String>) -> Result<u64, String> {
    let Some(text) = params.get("since") else { return Ok(0) };
    let back = crate::config::values::parse_duration(text).map_err(|e| format!("since: {e}"))?;
    Ok(crate::events::now_ms().saturating_sub(back.as_millis() as u64))
}

fn limit(params: &HashMap<String, String>) -> Result<usize, String> {
    match params.get("limit") {
        None => Ok(DEFAULT_LIMIT),
        Some(text) => match text.parse::<usize>() {
            Ok(n) if (1..=MAX_LIMIT).contains(&n) => Ok(n),
            _ => Err(format!("limit: {text:?} is not a number from 1 to {MAX_LIMIT}")),
        },
    }
}

/// The query of `/api/v1/messages`, checked.
fn message_query(params: &HashMap<String, String>) -> Result<Query, String> {
    let q = params.get("q").map(|q| q.trim()).unwrap_or_default();
    if q.is_empty() || q.len() > 998 {
        return Err("q: give a queue id, a Message-ID or an address".into());
    }
    let order = match params.get("order").map(String::as_str) {
        None | Some("desc") => Order::NewestFirst,
        Some("asc") => Order::Chronological,
        Some(other) => return Err(format!("order: {other:?} is not \"asc\" or \"desc\"")),
    };
    Ok(Query {
        q: q.to_owned(),
        since_ms: since(params)?,
        limit: limit(params)?,
        order,
    })
}

async fn messages(State(queue): State<Queue>, params: QueryParams) -> Answer {
    let Ok(Params(params)) = params else {
        return bad("the query is not well formed");
    };
    let query = match message_query(&params) {
        Ok(q) => q,
        Err(e) => return bad(e),
    };
    let events = queue.ctx().events.clone();
    found(tokio::task::spawn_blocking(move || events.query(&query)).await)
}

async fn events(State(queue): State<Queue>, params: QueryParams) -> Answer {
    let Ok(Params(params)) = params else {
        return bad("the query is not well formed");
    };
    let (since, limit) = match (since(&params), limit(&params)) {
        (Ok(s), Ok(l)) => (s, l),
        (Err(e), _) | (_, Err(e)) => return bad(e),
    };
    let kind = params.get("type").cloned();
    let events = queue.ctx().events.clone();
    found(tokio::task::spawn_blocking(move || events.recent(since, kind.as_deref(), limit)).await)
}
