//! Any request to a gate's admin address: method, path, an optional body, the token (the one the
//! harness read at start-up unless given) → status and body.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// One HTTP/1.1 request over a plain TcpStream, `Connection: close`; a body goes as
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
        format!("Authorization: Bearer {token}\r\n")
    };
    let body = body.unwrap_or("");
    let kind = if body.trim_start().starts_with(['{', '[']) && !body.trim_start().starts_with("[[") {
        "application/json"
    } else {
        "application/toml"
    };
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
        .unwrap_or_else(|e| panic!("connect to admin {addr}: {e}"));
    stream.set_read_timeout(Some(Duration::from_secs(70))).expect("timeout");
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\n{auth}Content-Type: {kind}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).expect("send request");
    let mut response = Vec::new();
    stream.read_to_end(&mut response).expect("read response");
    let response = String::from_utf8_lossy(&response).into_owned();
    let (head, body) = response
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("malformed HTTP response: {response:?}"));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status in {head:?}"));
    assert!(
        !head.to_ascii_lowercase().contains("transfer-encoding: chunked"),
        "a chunked answer: {head}"
    );
    (status, body.to_string())
}

/// [`admin_http`] with the harness's token, the body parsed as JSON (panics if it is not).
pub fn admin_json(addr: SocketAddr, method: &str, path: &str, body: Option<&str>) -> (u16, serde_json::Value) {
    let (status, text) = admin_http(addr, method, path, body, None);
    let value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{method} {path}: not JSON ({e}): {text}"));
    (status, value)
}
