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
//! The HTTP client is a minimal HTTP/1.1 one (one request per connection, `Connection: close`):
//! rspamd is on loopback or a trusted network and speaks plain HTTP, so a full client and its
//! dependencies would buy nothing.

use std::fmt::Write as _;
use std::path::Path;
use std::sync::Arc;

use serde::Deserialize;
use smtpgate_proto::Reply;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::options::{BuildErrors, options};
use super::{Action, BoxFuture, Filter, FilterError, MessageInfo, Modification, Verdict};

/// A larger answer than this is not rspamd's.
const MAX_RESPONSE: u64 = 4 * 1024 * 1024;
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
    path: String,
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
    Ok(Endpoint { authority, path })
}

impl Filter for Rspamd {
    fn data<'a>(&'a self, m: &'a MessageInfo<'a>) -> BoxFuture<'a, Result<Verdict, FilterError>> {
        Box::pin(async move {
            let request = request(&self.endpoint, m);
            let body = post(&self.endpoint.authority, &request)
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

/// The whole HTTP request: `POST {path}`, the envelope as headers, the message as the body.
fn request(endpoint: &Endpoint, m: &MessageInfo<'_>) -> Vec<u8> {
    let mut head = format!("POST {} HTTP/1.1\r\nHost: {}\r\n", endpoint.path, endpoint.authority);
    let mut header = |name: &str, value: &str| {
        // Envelope values come from the client: never let one end the header early.
        if !value.is_empty() && !value.chars().any(|c| c.is_control()) {
            let _ = write!(head, "{name}: {value}\r\n");
        }
    };
    if let Some(ip) = m.session.client {
        header("IP", &ip.to_string());
    }
    header("Helo", m.session.helo.as_deref().unwrap_or(""));
    header("From", if m.sender.is_empty() { "<>" } else { m.sender });
    for r in m.recipients {
        header("Rcpt", r);
    }
    header("User", m.session.user.as_deref().unwrap_or(""));
    let _ = write!(head, "Content-Length: {}\r\nConnection: close\r\n\r\n", m.message.len());
    let mut out = head.into_bytes();
    out.extend_from_slice(m.message);
    out
}

/// Sends one request on a new connection and returns the body of a `200` response.
async fn post(authority: &str, request: &[u8]) -> Result<Vec<u8>, String> {
    let mut stream = TcpStream::connect(authority).await.map_err(|e| e.to_string())?;
    stream.write_all(request).await.map_err(|e| format!("sending: {e}"))?;
    let mut response = Vec::new();
    let mut limited = (&mut stream).take(MAX_RESPONSE + 1);
    limited
        .read_to_end(&mut response)
        .await
        .map_err(|e| format!("reading: {e}"))?;
    if response.len() as u64 > MAX_RESPONSE {
        return Err("response too large".into());
    }
    parse_response(&response)
}

/// Status line, headers, body (by Content-Length, chunked, or up to the end). Only 200 is OK.
fn parse_response(response: &[u8]) -> Result<Vec<u8>, String> {
    let end = find(response, b"\r\n\r\n").ok_or("incomplete HTTP response")?;
    let head = std::str::from_utf8(&response[..end]).map_err(|_| "HTTP header is not text")?;
    let body = &response[end + 4..];
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or("");
    let status = status_line
        .strip_prefix("HTTP/1.")
        .and_then(|s| s.get(2..5))
        .and_then(|s| s.parse::<u16>().ok())
        .ok_or_else(|| format!("bad status line {status_line:?}"))?;
    if status != 200 {
        return Err(format!("HTTP status {status_line:?}"));
    }
    let mut chunked = false;
    let mut length = None;
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("transfer-encoding") {
            chunked = value.to_ascii_lowercase().contains("chunked");
        } else if name.eq_ignore_ascii_case("content-length") {
            length = Some(value.parse::<usize>().map_err(|_| "bad Content-Length")?);
        }
    }
    match (chunked, length) {
        (true, _) => dechunk(body),
        (false, Some(n)) if body.len() >= n => Ok(body[..n].to_vec()),
        (false, Some(_)) => Err("response body shorter than its Content-Length".into()),
        (false, None) => Ok(body.to_vec()),
    }
}

/// Decodes a chunked body: `<hex size>[;ext]\r\n<data>\r\n` ... `0\r\n\r\n`.
fn dechunk(mut body: &[u8]) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    loop {
        let line_end = find(body, b"\r\n").ok_or("truncated chunked body")?;
        let size_text = std::str::from_utf8(&body[..line_end]).map_err(|_| "bad chunk size")?;
        let size_text = size_text.split(';').next().unwrap_or("").trim();
        let size = usize::from_str_radix(size_text, 16).map_err(|_| format!("bad chunk size {size_text:?}"))?;
        body = &body[line_end + 2..];
        if size == 0 {
            return Ok(out);
        }
        if body.len() < size + 2 {
            return Err("truncated chunked body".into());
        }
        out.extend_from_slice(&body[..size]);
        body = &body[size + 2..];
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::super::SessionInfo;
    use super::*;

    #[test]
    fn urls() {
        let e = parse_url("http://127.0.0.1:11333").unwrap();
        assert_eq!((e.authority.as_str(), e.path.as_str()), ("127.0.0.1:11333", "/checkv2"));
        let e = parse_url("http://rspamd.internal/scan/").unwrap();
        assert_eq!(
            (e.authority.as_str(), e.path.as_str()),
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

    #[test]
    fn responses() {
        let plain = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}";
        assert_eq!(parse_response(plain).unwrap(), b"{}");
        let chunked =
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\n{\"a\r\n5;x=y\r\n\":1}\n\r\n0\r\n\r\n";
        assert_eq!(parse_response(chunked).unwrap(), b"{\"a\":1}\n");
        let to_end = b"HTTP/1.0 200 OK\r\n\r\n{}";
        assert_eq!(parse_response(to_end).unwrap(), b"{}");
        assert!(parse_response(b"HTTP/1.1 500 Internal Server Error\r\n\r\n").is_err());
        assert!(parse_response(b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\n{}").is_err());
        assert!(parse_response(b"HTTP/1.1 200 OK\r\nContent-Length: 2").is_err());
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

    #[test]
    fn request_carries_the_envelope() {
        let s = session();
        let rcpts = vec![
            "a@example.org".to_string(),
            "b@example.org".to_string(),
            "x\r\nEvil: 1".to_string(),
        ];
        let m = MessageInfo {
            session: &s,
            sender: "",
            recipients: &rcpts,
            message: b"Subject: hi\r\n\r\nbody\r\n",
            tags: &[],
        };
        let endpoint = parse_url("http://127.0.0.1:11333").unwrap();
        let text = String::from_utf8(request(&endpoint, &m)).unwrap();
        assert_eq!(
            text,
            "POST /checkv2 HTTP/1.1\r\nHost: 127.0.0.1:11333\r\nIP: 192.0.2.7\r\nHelo: client.example\r\n\
             From: <>\r\nRcpt: a@example.org\r\nRcpt: b@example.org\r\nContent-Length: 21\r\n\
             Connection: close\r\n\r\nSubject: hi\r\n\r\nbody\r\n"
        );
    }

    fn verdict(json: &str, greylist_tempfails: bool) -> Result<Verdict, FilterError> {
        let filter = Rspamd {
            endpoint: parse_url("http://127.0.0.1:1").unwrap(),
            greylist_tempfails,
        };
        let s = session();
        let m = MessageInfo {
            session: &s,
            sender: "a@b",
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
