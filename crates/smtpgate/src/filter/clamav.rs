//! `kind = "clamav"`: scans the message with clamd over its `INSTREAM` command.
//!
//! ```toml
//! [[filter]]
//! name = "clamav"
//! kind = "clamav"
//! address = "127.0.0.1:3310"      # or: socket = "/run/clamav/clamd.ctl"
//! action = "reject"               # or "quarantine"
//! max_size = "25MB"               # clamd's StreamMaxLength
//! ```
//!
//! Clean → accept with `X-Virus-Scanned: clamav`. Infected → the `action`, naming the virus
//! (the reject reply names it too). clamd down, or answering `ERROR` → `Err`, so the filter's
//! `on_error` decides.
//!
//! A message larger than `max_size` is not sent: clamd would refuse it with
//! `INSTREAM size limit exceeded`. `on_oversize` decides: `"accept"` (the default) passes it
//! unscanned but never silently: an `X-Smtpgate-Unchecked: <filter>; larger than max_size`
//! header, a log line and `smtpgate_filter_unchecked_total`; `"tempfail"` answers `451 4.7.1`;
//! `"reject"` answers `552 5.3.4`. Set `max_size` to clamd's StreamMaxLength.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Deserialize;
use smtpgate_proto::Reply;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpStream, UnixStream};

use super::options::{BuildErrors, options};
use super::{BoxFuture, Filter, FilterError, MessageInfo, Modification, Verdict};
use crate::config::values::parse_size;

/// clamd's default StreamMaxLength.
const DEFAULT_MAX_SIZE: u64 = 25 * 1024 * 1024;
/// Bytes per INSTREAM chunk (clamd's own clients use 8 KiB to 1 MiB).
const CHUNK: usize = 64 * 1024;
/// A longer answer than this is not clamd's.
const MAX_ANSWER: usize = 4096;

#[derive(Debug, Deserialize)]
struct Options {
    address: Option<String>,
    socket: Option<PathBuf>,
    action: Option<String>,
    max_size: Option<String>,
    on_oversize: Option<String>,
}

/// What to do with a message larger than `max_size`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum OnOversize {
    Accept,
    TempFail,
    Reject,
}

/// Where clamd listens.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Endpoint {
    /// `host:port`, resolved at each connection.
    Tcp(String),
    Unix(PathBuf),
}

/// What to do with an infected message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum OnVirus {
    Reject,
    Quarantine,
}

#[derive(Debug)]
pub struct ClamAv {
    endpoint: Endpoint,
    on_virus: OnVirus,
    max_size: u64,
    on_oversize: OnOversize,
}

/// clamd's answer to one scan.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Answer {
    Clean,
    Found(String),
}

pub fn build(raw: toml::Table, base_dir: &Path) -> Result<Arc<dyn Filter>, BuildErrors> {
    let o: Options = options(raw)?;
    let mut errors = BuildErrors::new();
    let endpoint = endpoint(o.address, o.socket, base_dir, &mut errors);
    let on_virus = match o.action.as_deref() {
        None | Some("reject") => OnVirus::Reject,
        Some("quarantine") => OnVirus::Quarantine,
        Some(other) => {
            let message = format!("{other:?} is not one of \"reject\", \"quarantine\"");
            errors.push(("action".into(), message));
            OnVirus::Reject
        }
    };
    let max_size = match o.max_size.as_deref().map(parse_size) {
        None => DEFAULT_MAX_SIZE,
        Some(Ok(n)) => n,
        Some(Err(e)) => {
            errors.push(("max_size".into(), e.to_string()));
            DEFAULT_MAX_SIZE
        }
    };
    let on_oversize = match o.on_oversize.as_deref() {
        None | Some("accept") => OnOversize::Accept,
        Some("tempfail") => OnOversize::TempFail,
        Some("reject") => OnOversize::Reject,
        Some(other) => {
            let message = format!("{other:?} is not one of \"accept\", \"tempfail\", \"reject\"");
            errors.push(("on_oversize".into(), message));
            OnOversize::Accept
        }
    };
    if !errors.is_empty() {
        return Err(errors);
    }
    Ok(Arc::new(ClamAv {
        endpoint,
        on_virus,
        max_size,
        on_oversize,
    }))
}

/// Exactly one of `address` and `socket`; a relative socket path is relative to the config.
fn endpoint(address: Option<String>, socket: Option<PathBuf>, base: &Path, errors: &mut BuildErrors) -> Endpoint {
    match (address, socket) {
        (Some(_), Some(_)) => {
            errors.push(("socket".into(), "give either address or socket, not both".into()));
            Endpoint::Unix(PathBuf::new())
        }
        (None, Some(path)) => Endpoint::Unix(base.join(path)),
        (Some(a), None) => {
            if !is_host_port(&a) {
                errors.push((
                    "address".into(),
                    format!("{a:?} is not host:port (use e.g. 127.0.0.1:3310)"),
                ));
            }
            Endpoint::Tcp(a)
        }
        (None, None) => {
            errors.push(("address".into(), "is required (or socket)".into()));
            Endpoint::Unix(PathBuf::new())
        }
    }
}

fn is_host_port(text: &str) -> bool {
    match text.rsplit_once(':') {
        Some((host, port)) => !host.is_empty() && port.parse::<u16>().is_ok(),
        None => false,
    }
}

impl Filter for ClamAv {
    fn data<'a>(&'a self, m: &'a MessageInfo<'a>) -> BoxFuture<'a, Result<Verdict, FilterError>> {
        Box::pin(async move {
            if m.message.len() as u64 > self.max_size {
                tracing::warn!(
                    size = m.message.len(),
                    max_size = self.max_size,
                    on_oversize = ?self.on_oversize,
                    "clamav: message larger than max_size, not scanned"
                );
                return Ok(match self.on_oversize {
                    OnOversize::Accept => Verdict::accept().with(Modification::Unchecked(format!(
                        "larger than max_size ({} bytes), not scanned",
                        self.max_size
                    ))),
                    OnOversize::TempFail => Verdict::tempfail(Reply::policy_unavailable()),
                    OnOversize::Reject => Verdict::reject(Reply::message_too_big()),
                });
            }
            let answer = self.scan(m.message).await?;
            Ok(self.verdict(answer, m))
        })
    }
}

impl ClamAv {
    async fn scan(&self, message: &[u8]) -> Result<Answer, FilterError> {
        let io = |e: std::io::Error| FilterError(format!("clamd at {}: {e}", self.endpoint));
        match &self.endpoint {
            Endpoint::Tcp(addr) => instream(TcpStream::connect(addr.as_str()).await.map_err(io)?, message).await,
            Endpoint::Unix(path) => instream(UnixStream::connect(path).await.map_err(io)?, message).await,
        }
        .map_err(|e| FilterError(format!("clamd at {}: {}", self.endpoint, e.0)))
    }

    fn verdict(&self, answer: Answer, m: &MessageInfo<'_>) -> Verdict {
        let name = match answer {
            Answer::Clean => {
                return Verdict::accept().with(Modification::AddHeader("X-Virus-Scanned".into(), "clamav".into()));
            }
            Answer::Found(name) => name,
        };
        tracing::warn!(virus = %name, sender = %m.sender, action = ?self.on_virus, "clamav: virus found");
        match self.on_virus {
            OnVirus::Reject => Verdict::reject(Reply::virus_found(&name)),
            OnVirus::Quarantine => Verdict::quarantine(format!("virus {name} found by clamav")),
        }
    }
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Endpoint::Tcp(a) => f.write_str(a),
            Endpoint::Unix(p) => write!(f, "{}", p.display()),
        }
    }
}

/// One `zINSTREAM` exchange: the command, the message in length-prefixed chunks, a zero-length
/// chunk, then clamd's NUL-terminated answer.
async fn instream<S: AsyncRead + AsyncWrite + Unpin>(mut stream: S, message: &[u8]) -> Result<Answer, FilterError> {
    let sent = send_instream(&mut stream, message).await;
    // clamd may answer (e.g. "size limit exceeded") and close before reading everything: its
    // answer says more than the write error.
    let answer = read_answer(&mut stream).await;
    match (sent, answer) {
        (_, Ok(text)) if !text.is_empty() => parse_answer(&text),
        (Err(e), _) => Err(FilterError(format!("sending: {e}"))),
        (Ok(()), Err(e)) => Err(FilterError(format!("reading the answer: {e}"))),
        (Ok(()), Ok(_)) => Err(FilterError("closed without an answer".into())),
    }
}

async fn send_instream<S: AsyncWrite + Unpin>(stream: &mut S, message: &[u8]) -> std::io::Result<()> {
    stream.write_all(b"zINSTREAM\0").await?;
    for chunk in message.chunks(CHUNK) {
        stream.write_all(&(chunk.len() as u32).to_be_bytes()).await?;
        stream.write_all(chunk).await?;
    }
    stream.write_all(&0u32.to_be_bytes()).await?;
    stream.flush().await
}

/// Reads up to the NUL (or the end of the stream), at most [`MAX_ANSWER`] bytes.
async fn read_answer<S: AsyncRead + Unpin>(stream: &mut S) -> std::io::Result<String> {
    let mut buf = Vec::new();
    let mut limited = stream.take(MAX_ANSWER as u64);
    let mut byte = [0u8; 256];
    loop {
        let n = limited.read(&mut byte).await?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&byte[..n]);
        if let Some(nul) = buf.iter().position(|&b| b == 0) {
            buf.truncate(nul);
            break;
        }
    }
    Ok(String::from_utf8_lossy(&buf).trim().to_string())
}

/// `stream: OK`, `stream: Eicar-Signature FOUND`, `... ERROR`.
fn parse_answer(text: &str) -> Result<Answer, FilterError> {
    if let Some(error) = text.strip_suffix("ERROR") {
        return Err(FilterError(format!("clamd error: {}", error.trim())));
    }
    let Some(result) = text.strip_prefix("stream:") else {
        return Err(FilterError(format!("unexpected answer {text:?}")));
    };
    let result = result.trim();
    if result == "OK" {
        return Ok(Answer::Clean);
    }
    match result.strip_suffix("FOUND").map(str::trim) {
        Some(name) if !name.is_empty() => Ok(Answer::Found(name.to_string())),
        _ => Err(FilterError(format!("unexpected answer {text:?}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(text: &str) -> toml::Table {
        text.parse().unwrap()
    }

    #[test]
    fn answers() {
        assert_eq!(parse_answer("stream: OK"), Ok(Answer::Clean));
        assert_eq!(
            parse_answer("stream: Eicar-Test-Signature FOUND"),
            Ok(Answer::Found("Eicar-Test-Signature".into()))
        );
        assert!(parse_answer("INSTREAM size limit exceeded. ERROR").is_err());
        assert!(parse_answer("stream: FOUND").is_err());
        assert!(parse_answer("PONG").is_err());
    }

    #[test]
    fn options_are_checked() {
        let errors = build(table("action = \"drop\"\nmax_size = \"1XB\""), Path::new("/")).unwrap_err();
        let keys: Vec<&str> = errors.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(keys, ["address", "action", "max_size"]);
        let both = table("address = \"127.0.0.1:3310\"\nsocket = \"/run/c.ctl\"");
        assert_eq!(build(both, Path::new("/")).unwrap_err()[0].0, "socket");
        assert_eq!(
            build(table("address = \"localhost\""), Path::new("/")).unwrap_err()[0].0,
            "address"
        );
        assert!(build(table("socket = \"clamd.ctl\"\naction = \"quarantine\""), Path::new("/")).is_ok());
    }

    /// A fake clamd on a duplex stream: checks the framing, then answers.
    async fn fake_clamd(mut server: tokio::io::DuplexStream, answer: &'static [u8]) -> Vec<u8> {
        let mut command = [0u8; 10];
        server.read_exact(&mut command).await.unwrap();
        assert_eq!(&command, b"zINSTREAM\0");
        let mut body = Vec::new();
        loop {
            let len = server.read_u32().await.unwrap() as usize;
            if len == 0 {
                break;
            }
            let mut chunk = vec![0; len];
            server.read_exact(&mut chunk).await.unwrap();
            body.extend_from_slice(&chunk);
        }
        server.write_all(answer).await.unwrap();
        body
    }

    #[tokio::test]
    async fn instream_frames_the_message_in_chunks() {
        let message: Vec<u8> = (0..200_000u32).map(|i| i as u8).collect();
        let (client, server) = tokio::io::duplex(4096);
        let clamd = tokio::spawn(fake_clamd(server, b"stream: Test.Sig FOUND\0"));
        let answer = instream(client, &message).await;
        assert_eq!(answer, Ok(Answer::Found("Test.Sig".into())));
        assert_eq!(clamd.await.unwrap(), message);
    }

    #[tokio::test]
    async fn closed_without_answer_is_an_error() {
        let (client, server) = tokio::io::duplex(4096);
        let clamd = tokio::spawn(fake_clamd(server, b""));
        assert!(instream(client, b"x").await.is_err());
        clamd.await.unwrap();
    }
}
