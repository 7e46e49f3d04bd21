//! Steering on the admin address (under `/api/v1`): suspending and resuming delivery, and the
//! configuration (`config_api.rs`, merged here).
//!
//! - `GET /suspend`: the suspensions in force (JSON list: kind, value, since, until, reason, by);
//! - `POST /suspend` with a JSON body naming exactly one of `domain`, `pool`, `route` (a
//!   `[[route]]` rule's name) or `stream`, and optionally `for` (`"2h"`: it lapses by itself
//!   then) and `reason`: suspends it (replacing one of the same kind and value);
//! - `DELETE /suspend/{kind}/{value}`: resumes it; what it parked is attempted at once.
//!
//! Errors are JSON `{"error": "..."}`: 400 for a bad body (none or several of the kinds, an
//! unknown field, a bad duration, a pool, route or stream the configuration does not have),
//! 404 for nothing to resume. Each change is an `admin` event naming who made it.

use std::time::Duration;

use super::api_routes::{Routes, delete, get};
use axum::body::Bytes;
use axum::extract::{Extension, Path, State};
use axum::http::StatusCode;
use serde::Serialize;

use super::admin_auth::Peer;
use super::api_json::{JsonAnswer, json_answer, json_error};
use crate::config::Config;
use crate::datetime::rfc3339_ms;
use crate::queue::{Queue, Scope, Suspension};

pub fn routes() -> Routes<Queue> {
    Routes::new()
        .route("/suspend", get(list).post(suspend))
        .route("/suspend/{kind}/{value}", delete(resume))
}

/// The longest `for`.
const MAX_DURATION: Duration = Duration::from_secs(365 * 24 * 3600);

/// A suspension as listed: times in RFC 3339.
#[derive(Debug, Serialize)]
pub struct View {
    pub kind: Scope,
    pub value: String,
    pub since: String,
    /// `null`: until resumed.
    pub until: Option<String>,
    pub reason: Option<String>,
    pub by: String,
}

impl View {
    pub fn of(s: &Suspension) -> View {
        View {
            kind: s.kind,
            value: s.value.clone(),
            since: rfc3339_ms(s.since),
            until: s.until.map(rfc3339_ms),
            reason: s.reason.clone(),
            by: s.by.clone(),
        }
    }
}

async fn list(State(queue): State<Queue>) -> JsonAnswer {
    let all: Vec<View> = queue.suspensions().iter().map(View::of).collect();
    json_answer(StatusCode::OK, &all)
}

async fn suspend(State(queue): State<Queue>, Extension(Peer(peer)): Extension<Peer>, body: Bytes) -> JsonAnswer {
    let now = crate::events::now_ms();
    let s = match request(&queue.ctx().config, &body, now, &peer.to_string()) {
        Ok(s) => s,
        Err(e) => return json_error(StatusCode::BAD_REQUEST, e),
    };
    match queue.suspend(s.clone()).await {
        Ok(replaced) => {
            let mut view = serde_json::to_value(View::of(&s)).unwrap_or_default();
            view["replaced"] = serde_json::Value::Bool(replaced.is_some());
            json_answer(StatusCode::OK, &view)
        }
        Err(e) => {
            tracing::error!(%peer, error = %e, "admin: cannot write the suspensions");
            json_error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "the suspension could not be recorded",
            )
        }
    }
}

async fn resume(
    State(queue): State<Queue>,
    Extension(Peer(peer)): Extension<Peer>,
    Path((kind, value)): Path<(String, String)>,
) -> JsonAnswer {
    let kind: Scope = match kind.parse() {
        Ok(k) => k,
        Err(e) => return json_error(StatusCode::BAD_REQUEST, e),
    };
    let value = match kind.normalize(&value) {
        Ok(v) => v,
        Err(e) => return json_error(StatusCode::BAD_REQUEST, e),
    };
    match queue.resume(kind, &value, &peer.to_string()).await {
        Ok(Some(s)) => json_answer(StatusCode::OK, &serde_json::json!({ "resumed": View::of(&s) })),
        Ok(None) => json_error(StatusCode::NOT_FOUND, format!("no suspension of {kind} {value}")),
        Err(e) => {
            tracing::error!(%peer, error = %e, "admin: cannot write the suspensions");
            json_error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "the resumption could not be recorded",
            )
        }
    }
}

/// The suspension a `POST /suspend` body asks for, checked against `config`.
pub fn request(config: &Config, body: &[u8], now_ms: u64, by: &str) -> Result<Suspension, String> {
    let value: serde_json::Value = serde_json::from_slice(body).map_err(|_| "the body is not JSON".to_string())?;
    let object = value.as_object().ok_or("the body is not a JSON object")?;
    let text = |key: &str, v: &serde_json::Value| {
        v.as_str()
            .map(str::to_string)
            .ok_or_else(|| format!("{key}: give a string"))
    };
    let (mut named, mut duration, mut reason) = (Vec::new(), None, None);
    for (key, v) in object {
        match key.as_str() {
            "for" => {
                let d = crate::config::values::parse_duration(&text(key, v)?).map_err(|e| format!("for: {e}"))?;
                if d.is_zero() || d > MAX_DURATION {
                    return Err("for: give a duration from 1s to 365d".into());
                }
                duration = Some(d);
            }
            "reason" => {
                let r = text(key, v)?;
                if r.len() > crate::queue::suspend::MAX_TEXT || r.chars().any(char::is_control) {
                    return Err(format!(
                        "reason: one line of at most {} bytes",
                        crate::queue::suspend::MAX_TEXT
                    ));
                }
                reason = Some(r.trim().to_string()).filter(|r| !r.is_empty());
            }
            other => match other.parse::<Scope>() {
                Ok(kind) => named.push((kind, text(key, v)?)),
                Err(_) => {
                    return Err(format!(
                        "unknown field {other:?} (give one of domain, pool, route, stream; and for, reason)"
                    ));
                }
            },
        }
    }
    let (kind, raw) = match named.as_slice() {
        [one] => one.clone(),
        [] => return Err("name what to suspend: one of domain, pool, route or stream".into()),
        _ => return Err("name only one of domain, pool, route or stream".into()),
    };
    let value = kind.normalize(&raw)?;
    let known = match kind {
        Scope::Domain => true,
        Scope::Pool => config.pools.iter().any(|p| p.name == value),
        Scope::Route => config.routes.iter().any(|r| r.name == value),
        Scope::Stream => value == "default" || config.streams.iter().any(|s| s.name == value),
    };
    if !known {
        return Err(format!("no {kind} named {value:?} in the configuration"));
    }
    Ok(Suspension {
        kind,
        value,
        since: now_ms,
        until: duration.map(|d| now_ms + d.as_millis() as u64),
        reason,
        by: by.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> Config {
        let toml = r#"
            [[pool]]
            name = "relay"
            servers = ["127.0.0.1:2525"]
            [[route]]
            name = "to-relay"
            pool = "relay"
            [[stream]]
            name = "bulk"
        "#;
        Config::from_toml_str(toml, std::path::Path::new("/")).unwrap()
    }

    fn ask(body: &str) -> Result<Suspension, String> {
        request(&config(), body.as_bytes(), 1_000, "127.0.0.1:9")
    }

    #[test]
    fn a_body_names_exactly_one_known_thing() {
        let s = ask(r#"{"domain":"Example.COM","for":"2h","reason":"their MX is down"}"#).unwrap();
        assert_eq!((s.kind, s.value.as_str()), (Scope::Domain, "example.com"));
        assert_eq!(s.until, Some(1_000 + 2 * 3600 * 1000));
        assert_eq!(s.reason.as_deref(), Some("their MX is down"));
        assert_eq!(s.by, "127.0.0.1:9");
        assert_eq!(ask(r#"{"pool":"relay"}"#).unwrap().until, None);
        assert_eq!(ask(r#"{"route":"to-relay"}"#).unwrap().kind, Scope::Route);
        assert_eq!(ask(r#"{"stream":"bulk"}"#).unwrap().kind, Scope::Stream);
        assert_eq!(ask(r#"{"stream":"default"}"#).unwrap().value, "default");
        for (body, says) in [
            ("{}", "name what to suspend"),
            (r#"{"domain":"a.test","pool":"relay"}"#, "only one"),
            (r#"{"domain":"a.test","host":"x"}"#, "unknown field \"host\""),
            (r#"{"domain":"a.test","for":"soon"}"#, "for:"),
            (r#"{"domain":"a.test","for":"0s"}"#, "for:"),
            (r#"{"pool":"nope"}"#, "no pool named \"nope\""),
            (r#"{"route":"nope"}"#, "no route named"),
            (r#"{"stream":"nope"}"#, "no stream named"),
            (r#"{"domain":7}"#, "domain: give a string"),
            ("[1]", "not a JSON object"),
            ("nope", "not JSON"),
        ] {
            let error = ask(body).unwrap_err();
            assert!(error.contains(says), "{body}: {error}");
        }
    }
}
