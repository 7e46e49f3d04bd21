//! Any request to a gate's admin address: method, path, an optional body, the token (the one the
//! harness read at start-up unless given) → status and body.

use std::net::SocketAddr;

/// One request through [`super::http::http`]; a body goes as
/// `application/json` unless it starts like TOML (then `application/toml`). `token`: `None` for
/// the token of the gate the harness started at `addr`, `Some("")` for none at all.
pub fn admin_http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: Option<&str>,
    token: Option<&str>,
) -> (u16, String) {
    let token = match token {
        Some(t) => t.to_string(),
        None => super::admin_token(addr).unwrap_or_default(),
    };
    let auth = if token.is_empty() {
        String::new()
    } else {
        format!("Bearer {token}")
    };
    let body = body.unwrap_or("");
    let kind = if body.trim_start().starts_with(['{', '[']) && !body.trim_start().starts_with("[[") {
        "application/json"
    } else {
        "application/toml"
    };
    let mut headers = vec![("Content-Type", kind)];
    if !auth.is_empty() {
        headers.push(("Authorization", auth.as_str()));
    }
    let answer = super::http::http(addr, method, path, &headers, Some(body.as_bytes()));
    (answer.status, answer.text())
}

/// [`admin_http`] with the harness's token, the body parsed as JSON (panics if it is not).
pub fn admin_json(addr: SocketAddr, method: &str, path: &str, body: Option<&str>) -> (u16, serde_json::Value) {
    let (status, text) = admin_http(addr, method, path, body, None);
    let value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{method} {path}: not JSON ({e}): {text}"));
    (status, value)
}
