//! Who may use the admin address.
//!
//! A web page the host's browser opens can reach loopback (a form POST) and, through DNS
//! rebinding, read what it answers. So every request must name an allowed `Host` (the address
//! it came to, `localhost`, or one of `admin.hosts`), and every endpoint but `/healthz` and
//! `/metrics` needs `Authorization: Bearer <token>`, compared in constant time. A browser never
//! adds that header on its own (there are no cookies), so no cross-site request can act.
//!
//! The token is read from `admin.token_file`; without one, smtpgate keeps a random token in
//! `<spool>/admin.token` (created at first start, mode 0600). The command-line client finds the
//! same file from the configuration ([`token_path`]).

use std::io::Write as _;
use std::net::{IpAddr, SocketAddr};
use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use axum::extract::connect_info::Connected;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::serve::IncomingStream;

use crate::config::AdminConfig;

/// The generated token's file name under the spool directory.
pub const TOKEN_FILE: &str = "admin.token";
/// Bytes of randomness in a generated token (written as hex).
const TOKEN_BYTES: usize = 32;
/// Paths anyone who can reach the address may read (health checks and scrapers).
/// And the API's description, which holds no data (see SECURITY.md).
pub(super) const OPEN_PATHS: [&str; 3] = ["/healthz", "/metrics", "/api/v1/openapi.json"];

/// The token file for `admin`: `admin.token_file`, or `<spool>/admin.token`.
pub fn token_path(admin: &AdminConfig, spool: &Path) -> PathBuf {
    admin.token_file.clone().unwrap_or_else(|| spool.join(TOKEN_FILE))
}

pub use crate::config::read_token;

/// The token for `admin`, and the file it is in: read from `admin.token_file`, or from
/// `<spool>/admin.token`, which is created with a new random token if it does not exist.
pub fn load_or_create(admin: &AdminConfig, spool: &Path) -> Result<(String, PathBuf), String> {
    let path = token_path(admin, spool);
    if admin.token_file.is_none() && !path.exists() {
        create(&path)?;
        tracing::info!(file = %path.display(), "admin: generated a new admin token");
    }
    let token = read_token(&path)?;
    if let Ok(meta) = std::fs::metadata(&path)
        && meta.permissions().mode() & 0o077 != 0
    {
        tracing::warn!(
            file = %path.display(),
            "admin: the token file can be read by other users; make it mode 0600"
        );
    }
    Ok((token, path))
}

/// Writes a new random token to `path`, atomically: a private temp file, written and synced,
/// renamed into place, then the directory synced.
fn create(path: &Path) -> Result<(), String> {
    let fail = |e: std::io::Error| format!("cannot create {}: {e}", path.display());
    let mut bytes = [0u8; TOKEN_BYTES];
    getrandom::fill(&mut bytes).map_err(|e| format!("no random token: {e}"))?;
    let token: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    let temp = path.with_extension(format!("token.{}.tmp", std::process::id()));
    let _ = std::fs::remove_file(&temp);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&temp)
        .map_err(fail)?;
    file.write_all(format!("{token}\n").as_bytes()).map_err(fail)?;
    file.sync_all().map_err(fail)?;
    std::fs::rename(&temp, path).map_err(fail)?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir).and_then(|d| d.sync_all()).map_err(fail)?;
    }
    Ok(())
}

/// The addresses of one admin connection: the client's and the one it connected to.
#[derive(Debug, Clone, Copy)]
pub struct Conn {
    pub peer: SocketAddr,
    pub local: Option<SocketAddr>,
}

impl Connected<IncomingStream<'_, tokio::net::TcpListener>> for Conn {
    fn connect_info(stream: IncomingStream<'_, tokio::net::TcpListener>) -> Self {
        Conn {
            peer: *stream.remote_addr(),
            local: stream.io().local_addr().ok(),
        }
    }
}

/// The client of an admin request, for the handlers' `admin:` log lines.
#[derive(Debug, Clone, Copy)]
pub struct Peer(pub SocketAddr);

/// What the admin address checks on every request.
pub struct Guard {
    token: String,
    hosts: Vec<String>,
}

impl Guard {
    pub fn new(token: String, admin: &AdminConfig) -> Arc<Guard> {
        Arc::new(Guard {
            token,
            hosts: admin.hosts.clone(),
        })
    }

    /// Whether `host` (a `Host` header's value) names the admin address: the IP address the
    /// request came to, `localhost`, or one of `admin.hosts`. Any port is accepted.
    fn host_allowed(&self, host: &str, local: Option<SocketAddr>) -> bool {
        let name = strip_port(host).trim_end_matches('.').to_ascii_lowercase();
        if name == "localhost" || self.hosts.contains(&name) {
            return true;
        }
        let literal = name.trim_start_matches('[').trim_end_matches(']');
        match (literal.parse::<IpAddr>(), local) {
            (Ok(ip), Some(local)) => ip == local.ip(),
            _ => false,
        }
    }

    /// Whether `value` (an `Authorization` header's) is `Bearer <the token>`.
    fn token_matches(&self, value: Option<&HeaderValue>) -> bool {
        let Some(value) = value.and_then(|v| v.to_str().ok()) else {
            return false;
        };
        let Some((scheme, given)) = value.split_once(' ') else {
            return false;
        };
        scheme.eq_ignore_ascii_case("bearer")
            && aws_lc_rs::constant_time::verify_slices_are_equal(given.trim().as_bytes(), self.token.as_bytes()).is_ok()
    }
}

/// `example.test:8025` to `example.test`, `[::1]:8025` to `[::1]`; anything else as it is.
fn strip_port(host: &str) -> &str {
    if host.starts_with('[') {
        return host.find(']').map_or(host, |end| &host[..=end]);
    }
    match host.split_once(':') {
        Some((name, port)) if !port.contains(':') => name,
        _ => host,
    }
}

/// The middleware in front of every route: the `Host` check, then the token (except on the open
/// paths). Refusals and failed changes are logged with the client's address.
pub async fn check(State(guard): State<Arc<Guard>>, mut request: Request, next: Next) -> Response {
    let conn = request.extensions().get::<ConnectInfo<Conn>>().map(|c| c.0);
    let peer = conn.map_or_else(|| "unknown".to_owned(), |c| c.peer.to_string());
    let method = request.method().clone();
    let target = request
        .uri()
        .path_and_query()
        .map_or_else(String::new, |p| p.as_str().to_owned());
    let host = request
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(str::to_owned)
        .or_else(|| request.uri().authority().map(|a| a.as_str().to_owned()));
    let Some(host) = host
        .clone()
        .filter(|h| guard.host_allowed(h, conn.and_then(|c| c.local)))
    else {
        tracing::warn!(%peer, %method, %target, ?host, "admin: refused: Host is not the admin address");
        let text = "the Host header must name the admin address, localhost or one of admin.hosts";
        return super::api_json::json_error(StatusCode::FORBIDDEN, text).into_response();
    };
    let open = OPEN_PATHS.contains(&request.uri().path()) || super::ui::is_open(request.uri().path());
    if !open && !guard.token_matches(request.headers().get(header::AUTHORIZATION)) {
        tracing::warn!(%peer, %method, %target, %host, "admin: refused: no valid bearer token");
        let text = "this needs Authorization: Bearer <token> (the token is in admin.token_file, \
                    or in admin.token under the spool directory)";
        let challenge = [(header::WWW_AUTHENTICATE, "Bearer realm=\"smtpgate admin\"")];
        let refused = super::api_json::json_error(StatusCode::UNAUTHORIZED, text);
        return (challenge, refused).into_response();
    }
    if let Some(c) = conn {
        request.extensions_mut().insert(Peer(c.peer));
    }
    let response = next.run(request).await;
    let status = response.status();
    if method != Method::GET && method != Method::HEAD && !status.is_success() {
        tracing::info!(%peer, %method, %target, status = status.as_u16(), "admin: request refused, nothing changed");
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    fn guard(hosts: &[&str]) -> Guard {
        Guard {
            token: "0123456789abcdef0123".into(),
            hosts: hosts.iter().map(|h| h.to_string()).collect(),
        }
    }

    #[test]
    fn host_must_name_the_admin_address() {
        let g = guard(&["gate.internal"]);
        let local = Some("127.0.0.1:8025".parse().unwrap());
        for ok in [
            "127.0.0.1:8025",
            "127.0.0.1",
            "localhost:8025",
            "LOCALHOST",
            "gate.internal:1",
            "gate.internal.",
        ] {
            assert!(g.host_allowed(ok, local), "{ok}");
        }
        for bad in [
            "evil.example:8025",
            "127.0.0.2:8025",
            "localhost.evil.example",
            "",
            "[::1]:8025",
        ] {
            assert!(!g.host_allowed(bad, local), "{bad}");
        }
        assert!(g.host_allowed("[::1]:8025", Some("[::1]:8025".parse().unwrap())));
    }

    #[test]
    fn token_is_a_bearer_header() {
        let g = guard(&[]);
        let value = |s: &str| HeaderValue::from_str(s).unwrap();
        assert!(g.token_matches(Some(&value("Bearer 0123456789abcdef0123"))));
        assert!(g.token_matches(Some(&value("bearer 0123456789abcdef0123"))));
        assert!(!g.token_matches(Some(&value("Bearer 0123456789abcdef012"))));
        assert!(!g.token_matches(Some(&value("Basic 0123456789abcdef0123"))));
        assert!(!g.token_matches(None));
    }
}
