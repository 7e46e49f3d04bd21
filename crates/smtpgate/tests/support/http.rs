//! One HTTP/1.1 exchange over a plain `TcpStream`, with any method, headers and body: what a test
//! of the admin API needs beyond [`super::http_get`]. Nothing is added on its own but `Host`,
//! `Content-Length` (with a body) and `Connection: close`, so a test chooses every other header
//! (the token among them).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// An answer: its status, header fields (names lower-cased) and body.
#[derive(Debug, Clone)]
pub struct HttpAnswer {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl HttpAnswer {
    /// The first field named `name` (any case).
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers.iter().find(|(n, _)| *n == name).map(|(_, v)| v.as_str())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body as JSON, or why it is not.
    pub fn json(&self) -> Result<serde_json::Value, String> {
        serde_json::from_slice(&self.body).map_err(|e| format!("not JSON ({e}): {:?}", self.text()))
    }
}

/// Sends `method path` to `addr` with `headers` and `body`; the answer. Connecting and reading
/// have deadlines (5 s, 30 s).
pub fn http(addr: SocketAddr, method: &str, path: &str, headers: &[(&str, &str)], body: Option<&[u8]>) -> HttpAnswer {
    let mut stream =
        TcpStream::connect_timeout(&addr, Duration::from_secs(5)).unwrap_or_else(|e| panic!("connect to {addr}: {e}"));
    stream.set_read_timeout(Some(Duration::from_secs(30))).expect("timeout");
    let mut request = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    if let Some(body) = body {
        request.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    request.push_str("\r\n");
    let mut bytes = request.into_bytes();
    bytes.extend_from_slice(body.unwrap_or_default());
    stream.write_all(&bytes).expect("send request");
    let mut response = Vec::new();
    stream.read_to_end(&mut response).expect("read response");
    parse(&response).unwrap_or_else(|e| panic!("{method} {path}: {e}: {:?}", String::from_utf8_lossy(&response)))
}

fn parse(response: &[u8]) -> Result<HttpAnswer, String> {
    let end = response
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or("no end of the header section")?;
    let head = std::str::from_utf8(&response[..end]).map_err(|_| "a header section that is not UTF-8")?;
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .ok_or("no status")?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let raw = &response[end + 4..];
    let chunked = headers
        .iter()
        .any(|(n, v)| n == "transfer-encoding" && v.to_ascii_lowercase().contains("chunked"));
    let body = if chunked { dechunk(raw)? } else { raw.to_vec() };
    Ok(HttpAnswer { status, headers, body })
}

fn dechunk(mut raw: &[u8]) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    loop {
        let line_end = raw
            .windows(2)
            .position(|w| w == b"\r\n")
            .ok_or("a chunk without its size")?;
        let size = std::str::from_utf8(&raw[..line_end]).map_err(|_| "a chunk size that is not text")?;
        let size = usize::from_str_radix(size.split(';').next().unwrap_or("").trim(), 16)
            .map_err(|_| format!("a bad chunk size {size:?}"))?;
        if size == 0 {
            return Ok(out);
        }
        let data = raw.get(line_end + 2..line_end + 2 + size).ok_or("a short chunk")?;
        out.extend_from_slice(data);
        raw = raw.get(line_end + 4 + size..).ok_or("a chunk without its end")?;
    }
}
