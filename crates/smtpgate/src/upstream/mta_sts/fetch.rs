//! Fetching a policy file: one HTTPS GET over tokio-rustls, HTTP/1.1 with `Connection: close`
//! (RFC 8461 3.3). No redirects, no caching, status 200 and `text/plain` only, 64 KiB at most.
//!
//! The response is read into a buffer and [`parse_response`] (no I/O) says after every read
//! whether it is complete, so the framing rules (Content-Length, chunked, close-delimited) are
//! table-tested without sockets.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hickory_resolver::TokioResolver;
use rustls_pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

/// The whole fetch (address lookup, connection, TLS, request and response) must fit in this.
pub const FETCH_TIMEOUT: Duration = Duration::from_secs(10);
/// The largest policy body accepted (RFC 8461 3.3 suggests 64 KiB).
pub const MAX_BODY: usize = 64 * 1024;
/// The largest status line and header block accepted.
const MAX_HEAD: usize = 16 * 1024;
/// The most raw bytes read, chunked framing included.
const MAX_RAW: usize = MAX_HEAD + 2 * MAX_BODY;
/// The well-known path of the policy file (RFC 8461 3.2).
const PATH: &str = "/.well-known/mta-sts.txt";

/// Where and how to fetch policies.
pub(super) struct Fetcher {
    pub resolver: TokioResolver,
    pub tls: Arc<rustls::ClientConfig>,
    pub port: u16,
}

impl Fetcher {
    /// The text of `https://mta-sts.<domain>/.well-known/mta-sts.txt`.
    pub async fn fetch(&self, domain: &str) -> Result<String, String> {
        let host = format!("mta-sts.{domain}");
        tokio::time::timeout(FETCH_TIMEOUT, self.fetch_from(&host))
            .await
            .unwrap_or_else(|_| Err(format!("no answer within {FETCH_TIMEOUT:?}")))
            .map_err(|e| format!("https://{host}{PATH}: {e}"))
    }

    async fn fetch_from(&self, host: &str) -> Result<String, String> {
        let name = ServerName::try_from(host.to_string()).map_err(|e| format!("bad host name: {e}"))?;
        let addrs = self.addresses(host).await?;
        let tcp = connect_any(&addrs).await?;
        let connector = TlsConnector::from(self.tls.clone());
        let mut tls = connector.connect(name, tcp).await.map_err(|e| format!("TLS: {e}"))?;
        let request = format!(
            "GET {PATH} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: smtpgate\r\nAccept: text/plain\r\nConnection: close\r\n\r\n"
        );
        tls.write_all(request.as_bytes())
            .await
            .map_err(|e| format!("sending the request: {e}"))?;
        tls.flush().await.map_err(|e| format!("sending the request: {e}"))?;
        let body = read_response(&mut tls).await?;
        String::from_utf8(body).map_err(|_| "the policy is not UTF-8".to_string())
    }

    async fn addresses(&self, host: &str) -> Result<Vec<SocketAddr>, String> {
        let ips = self
            .resolver
            .lookup_ip(format!("{host}.").as_str())
            .await
            .map_err(|e| format!("address lookup: {e}"))?;
        Ok(ips.iter().map(|ip| SocketAddr::new(ip, self.port)).collect())
    }
}

/// Connects to the first address that accepts.
async fn connect_any(addrs: &[SocketAddr]) -> Result<TcpStream, String> {
    let mut last = String::from("no address");
    for addr in addrs {
        match TcpStream::connect(addr).await {
            Ok(s) => return Ok(s),
            Err(e) => last = format!("connecting to {addr}: {e}"),
        }
    }
    Err(last)
}

/// Reads until [`parse_response`] has a complete answer; returns the policy body.
async fn read_response<S: tokio::io::AsyncRead + Unpin>(stream: &mut S) -> Result<Vec<u8>, String> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        let n = match stream.read(&mut chunk).await {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                return Err("connection closed before the response was complete".into());
            }
            Err(e) => return Err(format!("reading the response: {e}")),
        };
        buf.extend_from_slice(&chunk[..n]);
        if let Some(body) = parse_response(&buf, n == 0)? {
            return Ok(body);
        }
        if n == 0 {
            return Err("connection closed before the response was complete".into());
        }
        if buf.len() > MAX_RAW {
            return Err("response too long".into());
        }
    }
}

/// The policy body of a complete response in `buf`, `None` while more is needed, or why the
/// response is refused. `eof`: the server closed the connection cleanly after `buf`.
pub(super) fn parse_response(buf: &[u8], eof: bool) -> Result<Option<Vec<u8>>, String> {
    let Some((head, body_start)) = split_head(buf) else {
        return match () {
            _ if buf.len() > MAX_HEAD => Err("response headers too long".into()),
            _ if eof => Err("connection closed in the response headers".into()),
            _ => Ok(None),
        };
    };
    let framing = check_head(head)?;
    let rest = &buf[body_start..];
    match framing {
        Framing::Length(n) if rest.len() >= n => Ok(Some(rest[..n].to_vec())),
        Framing::Length(_) if eof => Err("connection closed before the end of the body".into()),
        Framing::Length(_) => Ok(None),
        Framing::Chunked => dechunk(rest, eof),
        Framing::Close if rest.len() > MAX_BODY => Err(format!("policy larger than {MAX_BODY} bytes")),
        Framing::Close if eof => Ok(Some(rest.to_vec())),
        Framing::Close => Ok(None),
    }
}

/// How the end of the body is known.
#[derive(Debug, PartialEq, Eq)]
enum Framing {
    Length(usize),
    Chunked,
    Close,
}

/// The header block (status line included, without the blank line) and where the body starts.
/// Lines end with CRLF or, leniently, LF.
fn split_head(buf: &[u8]) -> Option<(&[u8], usize)> {
    let mut start = 0;
    while let Some(pos) = buf[start..].iter().position(|&b| b == b'\n') {
        let line = &buf[start..start + pos];
        if line.is_empty() || line == b"\r" {
            return Some((&buf[..start], start + pos + 1));
        }
        start += pos + 1;
    }
    None
}

/// Checks the status line and headers: 200, `text/plain`, a framing we know.
fn check_head(head: &[u8]) -> Result<Framing, String> {
    let head = std::str::from_utf8(head).map_err(|_| "response headers are not UTF-8")?;
    let mut lines = head.lines();
    let status = status_code(lines.next().unwrap_or(""))?;
    match status {
        200 => {}
        300..=399 => {
            return Err(format!(
                "HTTP status {status}: redirects are not followed (RFC 8461 3.3)"
            ));
        }
        _ => return Err(format!("HTTP status {status}")),
    }
    let (mut content_type, mut length, mut chunked) = (None, None, false);
    for line in lines {
        let (name, value) = line.split_once(':').ok_or("malformed response header")?;
        let value = value.trim();
        if name.eq_ignore_ascii_case("content-type") {
            content_type = Some(value);
        } else if name.eq_ignore_ascii_case("content-length") {
            let digits = !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit());
            let n: usize = value.parse().ok().filter(|_| digits).ok_or("bad Content-Length")?;
            if length.is_some_and(|l| l != n) {
                return Err("conflicting Content-Length headers".into());
            }
            length = Some(n);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            let last = value.rsplit(',').next().unwrap_or("").trim();
            if !last.eq_ignore_ascii_case("chunked") {
                return Err(format!("unsupported Transfer-Encoding {value:?}"));
            }
            chunked = true;
        }
    }
    check_content_type(content_type)?;
    match (chunked, length) {
        (true, _) => Ok(Framing::Chunked),
        (false, Some(n)) if n > MAX_BODY => Err(format!("policy larger than {MAX_BODY} bytes")),
        (false, Some(n)) => Ok(Framing::Length(n)),
        (false, None) => Ok(Framing::Close),
    }
}

/// `HTTP/1.x NNN reason` → NNN.
fn status_code(line: &str) -> Result<u16, String> {
    let bad = || format!("bad status line {:?}", line.chars().take(64).collect::<String>());
    let rest = line.strip_prefix("HTTP/1.").ok_or_else(bad)?;
    let framed = rest.as_bytes().get(1) == Some(&b' ') && matches!(rest.as_bytes().get(5), None | Some(b' '));
    let code = rest.get(2..5).filter(|_| framed);
    let code = code.filter(|c| c.bytes().all(|b| b.is_ascii_digit())).ok_or_else(bad)?;
    code.parse().map_err(|_| bad())
}

/// RFC 8461 3.3: the media type must be `text/plain` (parameters such as `charset` allowed).
fn check_content_type(value: Option<&str>) -> Result<(), String> {
    let value = value.ok_or("no Content-Type (text/plain required)")?;
    let media = value.split(';').next().unwrap_or("").trim();
    if media.eq_ignore_ascii_case("text/plain") {
        Ok(())
    } else {
        Err(format!(
            "Content-Type {:?}, not text/plain",
            value.chars().take(64).collect::<String>()
        ))
    }
}

/// Decodes a chunked body (RFC 9112 7.1): `None` while incomplete.
fn dechunk(mut rest: &[u8], eof: bool) -> Result<Option<Vec<u8>>, String> {
    let mut body = Vec::new();
    let incomplete = || {
        if eof {
            Err("connection closed before the end of the chunked body".to_string())
        } else {
            Ok(None)
        }
    };
    loop {
        let Some(nl) = rest.iter().position(|&b| b == b'\n') else {
            return incomplete();
        };
        let size = chunk_size(&rest[..nl])?;
        rest = &rest[nl + 1..];
        if size == 0 {
            return match trailers_end(rest) {
                true => Ok(Some(body)),
                false => incomplete(),
            };
        }
        if body.len().saturating_add(size) > MAX_BODY {
            return Err(format!("policy larger than {MAX_BODY} bytes"));
        }
        let Some(data) = rest.get(..size) else {
            return incomplete();
        };
        body.extend_from_slice(data);
        rest = &rest[size..];
        match rest {
            [b'\r', b'\n', more @ ..] | [b'\n', more @ ..] => rest = more,
            [] | [b'\r'] => return incomplete(),
            _ => return Err("malformed chunked body".into()),
        }
    }
}

/// A chunk-size line (without its LF): hex digits, optional `;extensions`, optional CR.
fn chunk_size(line: &[u8]) -> Result<usize, String> {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let end = line.iter().position(|&b| b == b';').unwrap_or(line.len());
    let hex = std::str::from_utf8(&line[..end])
        .map_err(|_| "malformed chunk size")?
        .trim();
    if hex.is_empty() || hex.len() > 8 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err("malformed chunk size".into());
    }
    usize::from_str_radix(hex, 16).map_err(|_| "malformed chunk size".into())
}

/// Whether the trailer section after the last chunk is complete (it ends with an empty line).
fn trailers_end(rest: &[u8]) -> bool {
    let mut start = 0;
    while let Some(pos) = rest[start..].iter().position(|&b| b == b'\n') {
        let line = &rest[start..start + pos];
        if line.is_empty() || line == b"\r" {
            return true;
        }
        start += pos + 1;
    }
    false
}
