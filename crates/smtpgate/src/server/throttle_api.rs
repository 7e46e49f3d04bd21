//! The adaptive actions on the admin address:
//!
//! - `GET /throttles`: every action in force (JSON), with why, since and until when;
//! - `GET /throttles/{key}`: one of them (`key` is `<stream>/domain:<name>` or
//!   `<stream>/mx:<pattern>`, as listed);
//! - `PUT /throttles/{key}?...`: changes the action, or starts one by hand. Parameters:
//!   `duration` (full strength for this long from now; needed to start one), `suspend`
//!   (`true`/`false`), `rate_factor`, `connection_factor`, `recover`, `reason`;
//! - `DELETE /throttles/{key}`: cancels it (normal limits at once).
//!
//! With Redis, each change applies on every node.

use std::collections::HashMap;
use std::time::Duration;

use axum::extract::{Extension, Path, Query, State};
use axum::http::StatusCode;
use serde::Serialize;

use super::admin_auth::Peer;
use super::api_json::{JsonAnswer, json_done, json_error, json_pretty};
use super::api_routes::{Routes, get};
use crate::datetime::rfc3339_ms;
use crate::queue::Queue;
use crate::shaping::Limit;
use crate::shaping::adaptive::{Action, Edit, now_ms};

pub fn routes() -> Routes<Queue> {
    Routes::new()
        .route("/throttles", get(list))
        .route("/throttles/{*key}", get(show).put(edit).delete(cancel))
}

type Answer = JsonAnswer;

/// The longest `duration` or `recover` an administrator can set.
const MAX_DURATION: Duration = Duration::from_secs(30 * 24 * 3600);
/// The longest `reason`, in bytes.
const MAX_REASON: usize = 200;

/// An action as listed: times in RFC 3339, and its effect now.
#[derive(Debug, Serialize)]
pub struct View {
    pub key: String,
    pub stream: String,
    pub destination: String,
    /// What it does at full strength, in words.
    pub action: String,
    pub rule: String,
    pub reason: String,
    pub by: String,
    pub hits: u64,
    pub since: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub suspended_until: Option<String>,
    /// Full strength until then.
    pub until: String,
    /// Normal limits from then on.
    pub recovered: String,
    /// The factors in force now (they rise during recovery).
    pub rate_factor_now: f64,
    pub connection_factor_now: f64,
}

impl View {
    fn of(a: &Action, now: u64) -> View {
        let effect = a.effect(now);
        View {
            key: a.key.clone(),
            stream: a.stream.clone(),
            destination: a.destination.clone(),
            action: a.describe(),
            rule: a.rule.clone(),
            reason: a.reason.clone(),
            by: a.by.clone(),
            hits: a.hits,
            since: rfc3339_ms(a.since),
            suspended_until: a.suspended_until.map(rfc3339_ms),
            until: rfc3339_ms(a.until),
            recovered: rfc3339_ms(a.recovered.max(a.until)),
            rate_factor_now: effect.map_or(1.0, |e| e.rate_factor),
            connection_factor_now: effect.map_or(1.0, |e| e.connection_factor),
        }
    }
}

fn json<T: Serialize>(value: &T) -> Answer {
    json_pretty(value)
}

async fn list(State(queue): State<Queue>) -> Answer {
    let now = now_ms();
    let all: Vec<View> = queue
        .ctx()
        .shaper
        .state()
        .actions
        .list(now)
        .iter()
        .map(|a| View::of(a, now))
        .collect();
    json(&all)
}

/// The key as given, checked and in its canonical form.
fn key_of(raw: &str) -> Result<Limit, Answer> {
    Limit::parse(raw.trim_start_matches('/')).map_err(|e| json_error(StatusCode::BAD_REQUEST, e))
}

async fn show(State(queue): State<Queue>, Path(key): Path<String>) -> Answer {
    let limit = match key_of(&key) {
        Ok(l) => l,
        Err(answer) => return answer,
    };
    let now = now_ms();
    let state = queue.ctx().shaper.state();
    match state.actions.get(&limit).filter(|a| a.effect(now).is_some()) {
        Some(a) => json(&View::of(&a, now)),
        None => json_error(StatusCode::NOT_FOUND, format!("no adaptive action on {limit}")),
    }
}

async fn cancel(State(queue): State<Queue>, Extension(Peer(peer)): Extension<Peer>, Path(key): Path<String>) -> Answer {
    let limit = match key_of(&key) {
        Ok(l) => l,
        Err(answer) => return answer,
    };
    match queue.ctx().shaper.cancel(&limit).await {
        Some(_) => {
            tracing::info!(%peer, key = %limit, "admin: adaptive action cancelled");
            json_done(
                format!("{limit}: action cancelled, normal limits apply"),
                serde_json::json!({ "key": limit.to_string() }),
            )
        }
        None => json_error(StatusCode::NOT_FOUND, format!("no adaptive action on {limit}")),
    }
}

async fn edit(
    State(queue): State<Queue>,
    Extension(Peer(peer)): Extension<Peer>,
    Path(key): Path<String>,
    params: Result<Query<HashMap<String, String>>, axum::extract::rejection::QueryRejection>,
) -> Answer {
    let Ok(Query(params)) = params else {
        return json_error(StatusCode::BAD_REQUEST, "the query is not well formed");
    };
    let limit = match key_of(&key) {
        Ok(l) => l,
        Err(answer) => return answer,
    };
    let edit = match parse_edit(&params) {
        Ok(e) => e,
        Err(e) => return json_error(StatusCode::BAD_REQUEST, e),
    };
    let ctx = queue.ctx();
    let now = now_ms();
    let exists = ctx
        .shaper
        .state()
        .actions
        .get(&limit)
        .is_some_and(|a| a.effect(now).is_some());
    if !exists && edit.duration.is_none() {
        return json_error(
            StatusCode::BAD_REQUEST,
            format!("no adaptive action on {limit}: starting one needs a duration"),
        );
    }
    if !exists && edit.suspend != Some(true) && edit.rate_factor.is_none() && edit.connection_factor.is_none() {
        return json_error(
            StatusCode::BAD_REQUEST,
            "a new action needs suspend=true, rate_factor or connection_factor",
        );
    }
    let action = ctx.shaper.edit(&limit, &edit).await;
    tracing::info!(
        %peer,
        key = %limit,
        started = !exists,
        action = %action.describe(),
        until = %rfc3339_ms(action.until),
        recovered = %rfc3339_ms(action.recovered.max(action.until)),
        "admin: adaptive action set"
    );
    json(&View::of(&action, now_ms()))
}

/// Reads the query parameters of a change; unknown ones are an error.
fn parse_edit(params: &HashMap<String, String>) -> Result<Edit, String> {
    let mut edit = Edit::default();
    for (name, value) in params {
        let duration = || match crate::config::values::parse_duration(value) {
            Ok(d) if d > MAX_DURATION => Err(format!("{name}: {value:?} is longer than the most allowed, 30 days")),
            Ok(d) => Ok(d),
            Err(e) => Err(format!("{name}: {e}")),
        };
        let factor = || {
            value
                .parse::<f64>()
                .map_err(|_| format!("{name}: {value:?} is not a number"))
        };
        match name.as_str() {
            "duration" => edit.duration = Some(duration()?),
            "recover" => edit.recover = Some(duration()?),
            "suspend" => {
                edit.suspend = Some(match value.as_str() {
                    "true" | "yes" | "1" => true,
                    "false" | "no" | "0" => false,
                    _ => return Err(format!("suspend: {value:?} is not true or false")),
                })
            }
            "rate_factor" => edit.rate_factor = Some(factor()?),
            "connection_factor" => edit.connection_factor = Some(factor()?),
            "reason" if value.len() > MAX_REASON => {
                return Err(format!(
                    "reason: at most {MAX_REASON} bytes; this one has {}",
                    value.len()
                ));
            }
            "reason" => edit.reason = Some(value.clone()),
            other => {
                return Err(format!(
                    "unknown parameter {other:?} (duration, suspend, rate_factor, connection_factor, recover, reason)"
                ));
            }
        }
    }
    edit.check()?;
    Ok(edit)
}
