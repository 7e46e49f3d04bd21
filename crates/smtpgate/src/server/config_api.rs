//! The configuration on the admin address (under `/api/v1`, merged by `steer_api::routes`):
//!
//! - `GET /config`: the running configuration: the file it came from (or `built-in`), its content
//!   as JSON with every secret masked (`config/mask.rs`, the admin token too) and a summary;
//! - `POST /config/check`: the body is a candidate TOML file, checked as `check-config` checks
//!   one (the filters' options too; relative paths from the running file's folder): `200
//!   {"ok": true, "summary": ...}` or `422 {"error": "...", "issues": [...]}`; nothing changes;
//! - `POST /config/reload`: reloads the file the server was started with through the same path as
//!   SIGHUP (a request to the main loop, which answers when it is applied or refused): `200`, or
//!   `422 {"error": why}` with the old configuration still running (`409` for the built-in one).
//!   An `admin` event records each reload asked for here.

use std::path::Path;
use std::time::Duration;

use super::api_routes::{Routes, get, post};
use axum::body::Bytes;
use axum::extract::{Extension, State};
use axum::http::StatusCode;
use serde_json::json;
use tokio::sync::{mpsc, oneshot};

use super::admin_auth::Peer;
use super::api_json::{JsonAnswer, json_answer, json_error};
use crate::config::Config;
use crate::config::mask;
use crate::events::{Event, Kind};
use crate::queue::Queue;

pub fn routes() -> Routes<Queue> {
    Routes::new()
        .route("/config", get(show))
        .route("/config/check", post(check))
        .route("/config/reload", post(reload))
}

/// The largest candidate file accepted.
const MAX_CANDIDATE: usize = 1 << 20;

/// How long a reload request waits for the main loop's answer.
const RELOAD_WAIT: Duration = Duration::from_secs(60);

/// A reload asked for on the admin address, for the loop that also handles SIGHUP.
pub struct ReloadRequest {
    answer: oneshot::Sender<Result<(), ReloadRefused>>,
}

/// Why a reload was not applied.
#[derive(Debug)]
pub enum ReloadRefused {
    /// The server runs the built-in configuration: there is no file to read again.
    BuiltIn,
    /// The file has mistakes, or the new configuration could not be set up.
    Invalid(String),
}

impl ReloadRequest {
    /// Tells the waiting request what came of it.
    pub fn answer(self, outcome: Result<(), ReloadRefused>) {
        let _ = self.answer.send(outcome);
    }
}

/// Where the admin address sends reload requests (the server's main loop receives them).
#[derive(Clone)]
pub struct Reloads(pub(super) mpsc::Sender<ReloadRequest>);

impl Reloads {
    pub(super) fn channel() -> (Reloads, mpsc::Receiver<ReloadRequest>) {
        let (tx, rx) = mpsc::channel(4);
        (Reloads(tx), rx)
    }
}

async fn show(State(queue): State<Queue>) -> JsonAnswer {
    let ctx = queue.ctx();
    let token = ctx.config.admin.as_ref().and_then(|admin| {
        let spool = std::path::absolute(ctx.spool.dir()).ok()?;
        crate::config::read_token(&super::admin_auth::token_path(admin, &spool)).ok()
    });
    let extra: Vec<&str> = token.as_deref().into_iter().collect();
    json_answer(StatusCode::OK, &mask::view(&ctx.config, &extra))
}

async fn check(State(queue): State<Queue>, body: Bytes) -> JsonAnswer {
    if body.len() > MAX_CANDIDATE {
        return json_error(StatusCode::PAYLOAD_TOO_LARGE, "the candidate is larger than 1 MiB");
    }
    let Ok(text) = String::from_utf8(body.to_vec()) else {
        return json_error(StatusCode::BAD_REQUEST, "the candidate is not UTF-8 text");
    };
    let config = queue.ctx().config.clone();
    let base = config
        .source
        .file
        .as_deref()
        .and_then(Path::parent)
        .map_or_else(|| Path::new(".").to_path_buf(), Path::to_path_buf);
    let checked = tokio::task::spawn_blocking(move || {
        Config::check_text(&text, &base, |config, issues| {
            crate::filter::Filters::check(config, issues);
        })
    })
    .await;
    match checked {
        Ok(Ok(candidate)) => json_answer(
            StatusCode::OK,
            &json!({ "ok": true, "summary": mask::summary(&candidate) }),
        ),
        Ok(Err(e)) => {
            let issues: Vec<_> = e
                .errors
                .iter()
                .map(|i| json!({ "key": i.key, "message": i.message, "file": i.file.as_ref().map(|f| f.display().to_string()) }))
                .collect();
            let body = json!({ "ok": false, "error": e.to_string(), "issues": issues });
            json_answer(StatusCode::UNPROCESSABLE_ENTITY, &body)
        }
        Err(_) => json_error(StatusCode::INTERNAL_SERVER_ERROR, "the check failed"),
    }
}

async fn reload(
    State(queue): State<Queue>,
    Extension(Peer(peer)): Extension<Peer>,
    reloads: Option<Extension<Reloads>>,
) -> JsonAnswer {
    let Some(Extension(Reloads(tx))) = reloads else {
        return json_error(StatusCode::SERVICE_UNAVAILABLE, "this server takes no reload requests");
    };
    let (answer, outcome) = oneshot::channel();
    if tx.send(ReloadRequest { answer }).await.is_err() {
        return json_error(StatusCode::SERVICE_UNAVAILABLE, "this server takes no reload requests");
    }
    let outcome = match tokio::time::timeout(RELOAD_WAIT, outcome).await {
        Ok(Ok(outcome)) => outcome,
        _ => return json_error(StatusCode::SERVICE_UNAVAILABLE, "the reload got no answer"),
    };
    // The context after the reload (events are kept across it).
    let ctx = queue.ctx();
    let (action, answer) = match outcome {
        Ok(()) => (
            format!("config reload from {}", ctx.config.source.name()),
            json_answer(
                StatusCode::OK,
                &json!({ "reloaded": true, "file": ctx.config.source.name(), "summary": mask::summary(&ctx.config) }),
            ),
        ),
        Err(ReloadRefused::BuiltIn) => (
            "config reload refused: built-in configuration".to_string(),
            json_error(
                StatusCode::CONFLICT,
                "the server runs the built-in configuration (no --config): there is no file to reload",
            ),
        ),
        Err(ReloadRefused::Invalid(why)) => (
            "config reload refused".to_string(),
            json_error(
                StatusCode::UNPROCESSABLE_ENTITY,
                format!("reload refused; the old configuration stays: {why}"),
            ),
        ),
    };
    tracing::info!(%peer, %action, "admin: config reload");
    let by = peer.to_string();
    ctx.events.emit_with(|| Event::new(Kind::Admin { action, by }));
    answer
}
