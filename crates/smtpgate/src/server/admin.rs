//! The admin address: `/healthz`, `/metrics` (Prometheus text format) at the root; under
//! `/api/v1`: `/shaping` (the limits per destination in use, JSON), `/sources` (source addresses
//! and their warm-up), the adaptive actions (`/throttles`), the quarantine, the suppression list
//! and the queue (`/queue`). Every request passes [`admin_auth::check`] first (the `Host` and the token).

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::State;
use axum::http::{Method, StatusCode, Uri};
use tokio::sync::watch;

use super::StartError;
use super::admin_auth::{self, Conn, Guard};
use super::api_json::{JsonAnswer, json_error};
use super::api_routes::{Routes, get};
use crate::context::Context;
use crate::queue::Queue;

pub async fn start(
    addr: SocketAddr,
    guard: Arc<Guard>,
    queue: Queue,
    mut shutdown: watch::Receiver<bool>,
    reloads: super::config_api::Reloads,
) -> Result<SocketAddr, StartError> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| StartError::Bind(addr, e))?;
    let bound = listener.local_addr().map_err(|e| StartError::Bind(addr, e))?;
    if !addr.ip().is_loopback() {
        tracing::warn!(
            address = %bound,
            "admin: the admin address is not a loopback address and has no TLS: its token and \
             everything it shows cross the network in clear (bind it to 127.0.0.1, or put a TLS \
             proxy in front)"
        );
    }
    let app = routes()
        .into_router()
        .merge(super::ui::routes())
        .fallback(no_route)
        .method_not_allowed_fallback(wrong_method)
        .layer(axum::Extension(reloads))
        .layer(axum::middleware::from_fn_with_state(guard, admin_auth::check))
        .layer(axum::middleware::map_response(super::api_json::json_errors))
        .with_state(queue);
    let app = app.into_make_service_with_connect_info::<Conn>();
    tokio::spawn(async move {
        let stop = async move {
            let _ = shutdown.changed().await;
        };
        if let Err(e) = axum::serve(listener, app).with_graceful_shutdown(stop).await {
            tracing::error!(error = %e, "admin server failed");
        }
    });
    Ok(bound)
}

/// Every operation of the admin address (the dashboard's files aside), as the registry knows
/// them: scrapers expect `/healthz` and `/metrics` at the root; everything else is under
/// `/api/v1`. `openapi.json` documents each of them (`openapi.rs`'s tests hold the two equal).
pub(super) fn routes() -> Routes<Queue> {
    Routes::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/metrics", get(metrics))
        .nest("/api/v1", api())
}

/// Every endpoint under `/api/v1`: the one place to add an admin endpoint (a `*_api` module's
/// `routes()` merged here). All of them are behind the guard the caller layers on.
fn api() -> Routes<Queue> {
    Routes::new()
        .route("/openapi.json", get(super::openapi::document))
        .route("/shaping", get(shaping))
        .route("/sources", get(sources))
        .merge(super::quarantine_api::routes())
        .merge(super::suppression_api::routes())
        .merge(super::throttle_api::routes())
        .merge(super::queue_api::routes())
        .merge(super::events_api::routes())
        .merge(super::inject_api::routes())
        .merge(super::stats_api::routes())
        .merge(super::pools_api::routes())
        .merge(super::steer_api::routes())
        .merge(super::config_api::routes())
}

/// A path nothing is served at.
async fn no_route(uri: Uri) -> JsonAnswer {
    let message = format!(
        "no endpoint {} (the API is described at /api/v1/openapi.json)",
        uri.path()
    );
    json_error(StatusCode::NOT_FOUND, message)
}

/// A path served, but not with this method (axum adds the `Allow` header).
async fn wrong_method(method: Method, uri: Uri) -> JsonAnswer {
    json_error(
        StatusCode::METHOD_NOT_ALLOWED,
        format!("{method} is not allowed on {} (see the Allow header)", uri.path()),
    )
}

/// Renders from the current context, so a reload shows the new pools.
async fn metrics(State(queue): State<Queue>) -> ([(axum::http::header::HeaderName, &'static str); 1], String) {
    (
        [(axum::http::header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        render(&queue.ctx()),
    )
}

/// Every destination key with connections so far: its limits and its open connections.
async fn shaping(State(queue): State<Queue>) -> ([(axum::http::header::HeaderName, &'static str); 1], String) {
    let usage = queue.ctx().shaper.usage();
    let body = serde_json::to_string_pretty(&usage).unwrap_or_default() + "\n";
    ([(axum::http::header::CONTENT_TYPE, "application/json")], body)
}

/// Every source address of every stream: its weight, warm-up day, today's cap and use.
async fn sources(State(queue): State<Queue>) -> ([(axum::http::header::HeaderName, &'static str); 1], String) {
    let ctx = queue.ctx();
    let body = serde_json::to_string_pretty(&ctx.shaper.sources(&ctx.config)).unwrap_or_default() + "\n";
    ([(axum::http::header::CONTENT_TYPE, "application/json")], body)
}

fn render(ctx: &Context) -> String {
    let (records, fsyncs) = ctx.spool.stats();
    let mut out = ctx.metrics.render();
    out.push_str(&format!(
        "# HELP smtpgate_spool_records_total records written to the spool log\n\
         # TYPE smtpgate_spool_records_total counter\nsmtpgate_spool_records_total {records}\n\
         # HELP smtpgate_spool_fsyncs_total fsyncs of the spool log; records share them (group commit)\n\
         # TYPE smtpgate_spool_fsyncs_total counter\nsmtpgate_spool_fsyncs_total {fsyncs}\n\
         # HELP smtpgate_message_memory_bytes message content sessions hold in memory ([spool] memory_budget)\n\
         # TYPE smtpgate_message_memory_bytes gauge\nsmtpgate_message_memory_bytes {}\n",
        ctx.memory.used()
    ));
    out.push_str(&ctx.pools.render());
    out.push_str(&ctx.feedback.render());
    out.push_str(&ctx.webhooks.render());
    out
}
