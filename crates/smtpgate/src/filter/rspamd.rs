//! `kind = "rspamd"`: asks rspamd's `/checkv2` and follows the action it chose.
//!
//! ```toml
//! [[filter]]
//! name = "rspamd"
//! kind = "rspamd"
//! url = "http://127.0.0.1:11333"   # the normal worker (or a proxy); http only
//! greylist = "accept"              # or "tempfail": what rspamd's "greylist" action does
//! ```
//!
//! The message is POSTed with the envelope as rspamd's request headers (`IP`, `Helo`, `From`,
//! one `Rcpt` per recipient, `User` when authenticated). rspamd's `action`:
//!
//! | action                          | verdict                                             |
//! |---------------------------------|-----------------------------------------------------|
//! | `reject`                        | reject, `550 5.7.1`                                 |
//! | `soft reject`                   | tempfail, `451 4.7.1`                               |
//! | `greylist`                      | accept, or tempfail with `greylist = "tempfail"`    |
//! | `add header`, `rewrite subject` | accept with `X-Spam: Yes` (and rspamd's subject)    |
//! | `discard`, `quarantine`         | discard, quarantine                                 |
//! | `no action`                     | accept                                              |
//!
//! Every scanned message that is accepted gets `X-Spamd-Result` (score, required score and the
//! symbols that fired). rspamd unreachable, a non-200 status, or an answer that cannot be read
//! → `Err`, so the filter's `on_error` decides.
//!
//! The request is one HTTP/1.1 POST per connection (`Connection: close`) with hyper's client,
//! which does the framing (Content-Length, chunked, close-delimited answers); the answer's head
//! may be at most 16 KiB and its body [`MAX_RESPONSE`]. The pipeline's filter timeout bounds the
//! whole exchange: the connection is driven inside the filter's future, so nothing outlives it.

use std::fmt::Write as _;
use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper::body::{Body, Incoming};
use hyper::header::{HeaderName, HeaderValue};
use hyper::{Method, Request, StatusCode, Uri};
use hyper_util::rt::TokioIo;
use serde::Deserialize;
use smtpgate_proto::Reply;
use tokio::net::TcpStream;

use super::options::{BuildErrors, options};
use super::{Action, BoxFuture, Filter, FilterError, MessageInfo, Modification, Verdict};

/// A larger answer body than this is not rspamd's.
const MAX_RESPONSE: usize = 4 * 1024 * 1024;
/// hyper's read buffer, which bounds the answer's status line and header block.
const MAX_HEAD: usize = 16 * 1024;
/// `X-Spamd-Result` lists at most this many symbols (the highest scores).
const MAX_SYMBOLS: usize = 30;

#[derive(Debug, Deserialize)]
struct Options {
    url: Option<String>,
    greylist: Option<String>,
}

/// Where rspamd listens: `http://host:port[/prefix]`, checked at load.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Endpoint {
    /// `host:port`, for the connection and the `Host` header.
    authority: String,
    /// The path of `/checkv2`, after any prefix in the URL.
    path: Uri,
}

#[derive(Debug)]
pub struct Rspamd {
    endpoint: Endpoint,
    greylist_tempfails: bool,
}

pub fn build(raw: toml::Table, _base_dir: &Path) -> Result<Arc<dyn Filter>, BuildErrors> {
    let o: Options = options(raw)?;
    let mut errors = BuildErrors::new();
    let endpoint = match parse_url(o.url.as_deref().unwrap_or("http://127.0.0.1:11333")) {
        Ok(e) => Some(e),
        Err(e) => {
            errors.push(("url".into(), e));
            None
        }
    };
    let greylist_tempfails = match o.greylist.as_deref() {
        None | Some("accept") => false,
        Some("tempfail") => true,
        Some(other) => {
            errors.push((
                "greylist".into(),
                format!("{other:?} is not one of \"accept\", \"tempfail\""),
            ));
            false
        }
    };
    match endpoint {
        Some(endpoint) if errors.is_empty() => Ok(Arc::new(Rspamd {
            endpoint,
            greylist_tempfails,
        })),
        _ => Err(errors),
    }
}

/// `http://host[:port][/prefix]` → an endpoint whose path is `{prefix}/checkv2`.
fn parse_url(url: &str) -> Result<Endpoint, String> {
    let error = || format!("{url:?} is not an http URL (use e.g. http://127.0.0.1:11333)");
    let rest = url.strip_prefix("http://").ok_or_else(error)?;
    let (authority, prefix) = rest.split_once('/').map_or((rest, ""), |(a, p)| (a, p));
    if authority.is_empty() || authority.contains('@') || authority.bytes().any(|b| b <= b' ') {
        return Err(error());
    }
    let has_port = authority.rsplit_once(':').is_some_and(|(_, p)| !p.contains(']'));
    let authority = match has_port {
        true if authority
            .rsplit_once(':')
            .is_some_and(|(_, p)| p.parse::<u16>().is_ok()) =>
        {
            authority.to_string()
        }
        true => return Err(error()),
        false => format!("{authority}:80"),
    };
    let prefix = prefix.trim_end_matches('/');
    let path = if prefix.is_empty() {
        "/checkv2".to_string()
    } else {
        format!("/{prefix}/checkv2")
    };
    let path = path.parse().map_err(|_| error())?;
    Ok(Endpoint { authority, path })
}

impl Filter for Rspamd {
    fn data<'a>(&'a self, m: &'a MessageInfo<'a>) -> BoxFuture<'a, Result<Verdict, FilterError>> {
        Box::pin(async move {
            let request = request(&self.endpoint, m);
            let body = post(&self.endpoint.authority, request)
                .await
                .map_err(|e| FilterError(format!("rspamd at {}: {e}", self.endpoint.authority)))?;
            let answer: CheckResult = serde_json::from_slice(&body)
                .map_err(|e| FilterError(format!("rspamd at {}: unreadable answer: {e}", self.endpoint.authority)))?;
            self.verdict(answer, m)
        })
    }
}

/// The part of rspamd's `/checkv2` answer smtpgate uses.
#[derive(Debug, Deserialize)]
struct CheckResult {
    /// Followed even when `is_skipped` is true: rspamd sets that with a pre-result (GTUBE, a
    /// settings rule), whose action still stands.
    action: Option<String>,
    #[serde(default)]
    score: f64,
    #[serde(default)]
    required_score: f64,
    /// The new subject, with the "rewrite subject" action.
    subject: Option<String>,
    #[serde(default)]
    symbols: std::collections::HashMap<String, Symbol>,
}

#[derive(Debug, Deserialize)]
struct Symbol {
    #[serde(default)]
    score: f64,
}

impl Rspamd {
    fn verdict(&self, answer: CheckResult, m: &MessageInfo<'_>) -> Result<Verdict, FilterError> {
        let action = answer.action.as_deref().unwrap_or("no action");
        tracing::info!(action, score = answer.score, sender = %m.sender, "rspamd");
        let verdict = match action {
            "reject" => Verdict::reject(Reply::spam_rejected()),
            "soft reject" => Verdict::tempfail(Reply::spam_deferred()),
            "greylist" if self.greylist_tempfails => Verdict::tempfail(Reply::greylisted()),
            "discard" => Verdict {
                action: Action::Discard,
                modifications: Vec::new(),
            },
            "quarantine" => Verdict::quarantine(format!("rspamd score {:.2}", answer.score)),
            "add header" | "rewrite subject" => spam_headers(&answer),
            "no action" | "greylist" => Verdict::accept(),
            other => return Err(FilterError(format!("rspamd: unknown action {other:?}"))),
        };
        if verdict.action != Action::Accept {
            return Ok(verdict);
        }
        Ok(verdict.with(Modification::AddHeader("X-Spamd-Result".into(), result_header(&answer))))
    }
}

/// `X-Spam: Yes`, and rspamd's rewritten subject when it gave one.
fn spam_headers(answer: &CheckResult) -> Verdict {
    let mut v = Verdict::accept().with(Modification::AddHeader("X-Spam".into(), "Yes".into()));
    if let Some(subject) = answer.subject.as_deref().filter(|s| !s.chars().any(|c| c.is_control())) {
        v = v
            .with(Modification::RemoveHeader("Subject".into()))
            .with(Modification::AddHeader("Subject".into(), subject.to_string()));
    }
    v
}

/// `default: False [1.20 / 15.00];` then the symbols, highest score first, one per folded line.
fn result_header(answer: &CheckResult) -> String {
    let is_spam = if answer.score >= answer.required_score {
        "True"
    } else {
        "False"
    };
    let mut value = format!(
        "default: {is_spam} [{:.2} / {:.2}]",
        answer.score, answer.required_score
    );
    let mut symbols: Vec<(&String, f64)> = answer.symbols.iter().map(|(n, s)| (n, s.score)).collect();
    symbols.sort_by(|a, b| b.1.total_cmp(&a.1).then_with(|| a.0.cmp(b.0)));
    for (name, score) in symbols.into_iter().take(MAX_SYMBOLS) {
        if name.bytes().all(|b| b.is_ascii_graphic()) {
            let _ = write!(value, ";\r\n\t{name}({score:.2})");
        }
    }
    value
}

/// The request: `POST {path}`, the envelope as headers, the message as the body.
fn request(endpoint: &Endpoint, m: &MessageInfo<'_>) -> Request<Full<Bytes>> {
    let mut request = Request::new(Full::new(Bytes::copy_from_slice(m.message)));
    *request.method_mut() = Method::POST;
    *request.uri_mut() = endpoint.path.clone();
    let headers = request.headers_mut();
    let mut header = |name: &'static str, value: &str| {
        // Envelope values come from the client: none may carry a line break or other control.
        if !value.is_empty()
            && !value.chars().any(|c| c.is_control())
            && let Ok(value) = HeaderValue::from_bytes(value.as_bytes())
        {
            headers.append(HeaderName::from_static(name), value);
        }
    };
    header("host", &endpoint.authority);
    if let Some(ip) = m.session.client {
        header("ip", &ip.to_string());
    }
    header("helo", m.session.helo.as_deref().unwrap_or(""));
    header("from", if m.sender.is_null() { "<>" } else { m.sender.as_str() });
    for r in m.recipients {
        header("rcpt", r);
    }
    header("user", m.session.user.as_deref().unwrap_or(""));
    header("connection", "close");
    request
}

/// Sends one request on a new connection and returns the body of a `200` answer.
async fn post(authority: &str, request: Request<Full<Bytes>>) -> Result<Bytes, String> {
    let tcp = TcpStream::connect(authority)
        .await
        .map_err(|e| format!("connecting: {e}"))?;
    let (mut sender, conn) = hyper::client::conn::http1::Builder::new()
        .max_buf_size(MAX_HEAD)
        .handshake::<_, Full<Bytes>>(TokioIo::new(tcp))
        .await
        .map_err(|e| format!("HTTP: {e}"))?;
    let exchange = async {
        let response = sender.send_request(request).await.map_err(|e| format!("HTTP: {e}"))?;
        if response.status() != StatusCode::OK {
            return Err(format!("HTTP status {}", response.status()));
        }
        read_body(response.into_body()).await
    };
    crate::io::alongside(conn, exchange).await
}

/// The body, at most [`MAX_RESPONSE`] bytes: a declared length over it is refused before
/// reading, a chunked or close-delimited body as soon as it passes it.
async fn read_body(body: Incoming) -> Result<Bytes, String> {
    let too_large = || format!("response larger than {MAX_RESPONSE} bytes");
    if body.size_hint().lower() > MAX_RESPONSE as u64 {
        return Err(too_large());
    }
    match Limited::new(body, MAX_RESPONSE).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.is::<LengthLimitError>() => Err(too_large()),
        Err(e) => Err(format!("reading: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::super::SessionInfo;
    use super::*;

    #[test]
    fn urls() {
        let e = parse_url("http://127.0.0.1:11333").unwrap();
        assert_eq!((e.authority.as_str(), e.path.path()), ("127.0.0.1:11333", "/checkv2"));
        let e = parse_url("http://rspamd.internal/scan/").unwrap();
        assert_eq!(
            (e.authority.as_str(), e.path.path()),
            ("rspamd.internal:80", "/scan/checkv2")
        );
        assert_eq!(parse_url("http://[::1]:11333").unwrap().authority, "[::1]:11333");
        assert_eq!(parse_url("http://[::1]").unwrap().authority, "[::1]:80");
        for bad in [
            "https://x:1",
            "127.0.0.1:11333",
            "http://",
            "http://x:port",
            "http://u@x:1",
            "http://x:1/a b",
        ] {
            assert!(parse_url(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn options_are_checked() {
        let raw: toml::Table = "url = \"ftp://x\"\ngreylist = \"maybe\"\nscore = 5".parse().unwrap();
        let errors = build(raw, Path::new("/")).unwrap_err();
        let keys: Vec<&str> = errors.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(keys, ["score"]);
        let raw: toml::Table = "url = \"ftp://x\"\ngreylist = \"maybe\"".parse().unwrap();
        let errors = build(raw, Path::new("/")).unwrap_err();
        let keys: Vec<&str> = errors.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(keys, ["url", "greylist"]);
    }

    /// A one-request HTTP server on a free loopback port: it reads the request (head and
    /// Content-Length body), answers `answer` and closes. Returns its address and, from the
    /// task, the request it read.
    async fn serve_once(answer: Vec<u8>) -> (String, tokio::task::JoinHandle<Vec<u8>>) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let task = tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.unwrap();
            let mut request = Vec::new();
            let mut buf = [0u8; 4096];
            while !request_is_whole(&request) {
                let n = stream.read(&mut buf).await.unwrap();
                assert!(n > 0, "the client closed before its request was whole");
                request.extend_from_slice(&buf[..n]);
            }
            // The client may stop reading an answer it refuses: that is not the server's failure.
            let _ = stream.write_all(&answer).await;
            let _ = stream.shutdown().await;
            request
        });
        (addr, task)
    }

    fn request_is_whole(request: &[u8]) -> bool {
        let Some(end) = request.windows(4).position(|w| w == b"\r\n\r\n") else {
            return false;
        };
        let head = String::from_utf8_lossy(&request[..end]).to_ascii_lowercase();
        let length = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .map_or(0, |v| v.trim().parse::<usize>().unwrap());
        request.len() >= end + 4 + length
    }

    async fn answer(raw: Vec<u8>) -> Result<Bytes, String> {
        let (addr, server) = serve_once(raw).await;
        let mut request = Request::new(Full::new(Bytes::from_static(b"x")));
        *request.method_mut() = Method::POST;
        *request.uri_mut() = Uri::from_static("/checkv2");
        let result = post(&addr, request).await;
        server.await.unwrap();
        result
    }

    /// Each framing hyper must read, and each answer the filter must refuse.
    #[tokio::test]
    async fn responses() {
        let big = "x".repeat(MAX_RESPONSE + 1);
        let ok: &[(&str, &[u8])] = &[
            (
                "Content-Length",
                b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}",
            ),
            (
                "chunked, with a chunk extension",
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\n{\"a\r\n5;x=y\r\n\":1}\n\r\n0\r\n\r\n",
            ),
            ("close-delimited", b"HTTP/1.0 200 OK\r\n\r\n{}"),
        ];
        let bodies: [&[u8]; 3] = [b"{}", b"{\"a\":1}\n", b"{}"];
        for ((what, raw), body) in ok.iter().zip(bodies) {
            assert_eq!(answer(raw.to_vec()).await.as_deref(), Ok(body), "{what}");
        }
        let refused: Vec<(&str, Vec<u8>, &str)> = vec![
            (
                "a status other than 200",
                b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 0\r\n\r\n".to_vec(),
                "HTTP status 500",
            ),
            (
                "a body shorter than its Content-Length",
                b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\n{}".to_vec(),
                "reading",
            ),
            (
                "a head that never ends",
                b"HTTP/1.1 200 OK\r\nContent-Length: 2".to_vec(),
                "HTTP",
            ),
            (
                "a declared length over the limit",
                format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", MAX_RESPONSE + 1).into_bytes(),
                "larger than",
            ),
            (
                "a close-delimited body over the limit",
                format!("HTTP/1.0 200 OK\r\n\r\n{big}").into_bytes(),
                "larger than",
            ),
            (
                "a chunked body over the limit",
                format!(
                    "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n{big}\r\n0\r\n\r\n",
                    big.len()
                )
                .into_bytes(),
                "larger than",
            ),
            (
                "a head over its limit",
                format!(
                    "HTTP/1.1 200 OK\r\nX-Pad: {}\r\nContent-Length: 2\r\n\r\n{{}}",
                    "p".repeat(MAX_HEAD)
                )
                .into_bytes(),
                "HTTP",
            ),
        ];
        for (what, raw, error) in refused {
            let result = answer(raw).await;
            assert!(result.as_ref().is_err_and(|e| e.contains(error)), "{what}: {result:?}");
        }
    }

    fn session() -> SessionInfo {
        SessionInfo {
            client: Some("192.0.2.7".parse().unwrap()),
            helo: Some("client.example".into()),
            user: None,
            listener: "inbound".into(),
            tls: false,
        }
    }

    /// The request on the wire: the path, the envelope as headers (a recipient with a line break
    /// left out, no `User` for an unauthenticated client), the message as the body, unchanged.
    #[tokio::test]
    async fn request_carries_the_envelope() {
        let s = session();
        let rcpts = vec![
            crate::envelope::Address::parse("a@example.org").unwrap(),
            crate::envelope::Address::parse("b@example.org").unwrap(),
            // Not an address the session would take: the request must still carry it safely.
            crate::envelope::Address::trusted("x\r\nEvil: 1".to_string()),
        ];
        let m = MessageInfo {
            session: &s,
            sender: &crate::envelope::Sender::Null,
            recipients: &rcpts,
            message: b"Subject: hi\r\n\r\nbody\r\n",
            tags: &[],
        };
        let (addr, server) = serve_once(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}".to_vec()).await;
        let endpoint = parse_url(&format!("http://{addr}/scan")).unwrap();
        assert_eq!(post(&addr, request(&endpoint, &m)).await.as_deref(), Ok(&b"{}"[..]));
        let text = String::from_utf8(server.await.unwrap()).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        let mut lines: Vec<String> = head.lines().map(str::to_ascii_lowercase).collect();
        assert_eq!(lines.remove(0), "post /scan/checkv2 http/1.1");
        lines.sort();
        let host = format!("host: {addr}");
        assert_eq!(
            lines,
            [
                "connection: close",
                "content-length: 21",
                "from: <>",
                "helo: client.example",
                &host,
                "ip: 192.0.2.7",
                "rcpt: a@example.org",
                "rcpt: b@example.org",
            ]
        );
        assert_eq!(body, "Subject: hi\r\n\r\nbody\r\n");
    }

    fn verdict(json: &str, greylist_tempfails: bool) -> Result<Verdict, FilterError> {
        let filter = Rspamd {
            endpoint: parse_url("http://127.0.0.1:1").unwrap(),
            greylist_tempfails,
        };
        let s = session();
        let m = MessageInfo {
            session: &s,
            sender: &crate::envelope::Sender::parse("a@b").unwrap(),
            recipients: &[],
            message: b"",
            tags: &[],
        };
        filter.verdict(serde_json::from_str(json).unwrap(), &m)
    }

    #[test]
    fn actions() {
        let gtube = r#"{"is_skipped":true,"score":15.0,"required_score":15.0,"action":"reject"}"#;
        assert_eq!(
            verdict(gtube, false).unwrap().action,
            Action::Reject(Reply::spam_rejected())
        );
        let answer = |action: &str| format!(r#"{{"action":"{action}","score":7.5,"required_score":15}}"#);
        assert_eq!(
            verdict(&answer("reject"), false).unwrap().action,
            Action::Reject(Reply::spam_rejected())
        );
        assert_eq!(
            verdict(&answer("soft reject"), false).unwrap().action,
            Action::TempFail(Reply::spam_deferred())
        );
        assert_eq!(verdict(&answer("greylist"), false).unwrap().action, Action::Accept);
        assert_eq!(
            verdict(&answer("greylist"), true).unwrap().action,
            Action::TempFail(Reply::greylisted())
        );
        assert_eq!(verdict(&answer("discard"), false).unwrap().action, Action::Discard);
        assert!(verdict(&answer("explode"), false).is_err());
        let clean = verdict(&answer("no action"), false).unwrap();
        assert_eq!(
            clean.modifications,
            [Modification::AddHeader(
                "X-Spamd-Result".into(),
                "default: False [7.50 / 15.00]".into()
            )]
        );
    }

    #[test]
    fn add_header_and_rewrite_subject() {
        let json = r#"{"action":"rewrite subject","score":16,"required_score":15,"subject":"[SPAM] hi",
            "symbols":{"A":{"name":"A","score":1.5},"B":{"name":"B","score":14.5}}}"#;
        let v = verdict(json, false).unwrap();
        assert_eq!(v.action, Action::Accept);
        assert_eq!(
            v.modifications,
            [
                Modification::AddHeader("X-Spam".into(), "Yes".into()),
                Modification::RemoveHeader("Subject".into()),
                Modification::AddHeader("Subject".into(), "[SPAM] hi".into()),
                Modification::AddHeader(
                    "X-Spamd-Result".into(),
                    "default: True [16.00 / 15.00];\r\n\tB(14.50);\r\n\tA(1.50)".into()
                ),
            ]
        );
    }
}
