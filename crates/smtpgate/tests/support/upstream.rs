//! A scriptable upstream SMTP server: its behaviour is chosen per recipient local part.
//!
//! | local part (before any `+tag`) | behaviour |
//! | --- | --- |
//! | `tempfail-rcpt` | `450 4.2.0` to RCPT |
//! | `reject-rcpt` | `550 5.1.1` to RCPT |
//! | `ratelimit-rcpt` | `451 4.7.650` "temporarily rate limited" to RCPT (a provider throttling) |
//! | `busy-rcpt` | `421 4.7.0` "too many connections" to RCPT, then closes the connection |
//! | `tempfail-data` | `451 4.3.0` after end of data |
//! | `reject-data` | `554 5.6.0` after end of data |
//! | `disconnect-data` | closes the connection after end of data, without a reply |
//! | `slow` | from its RCPT on, every reply on the connection comes 2 s late |
//! | `lag` | accepted, the reply to its end of data 0.5 s late (a receiver that takes its time per message) |
//! | anything else | accepted |
//!
//! With [`Upstream::fail_first`]`(n)` a misbehaving recipient misbehaves on its first `n`
//! RCPTs only (counted per address), then is accepted: a retry scenario in one server.
//!
//! It announces PIPELINING, SIZE, 8BITMIME, ENHANCEDSTATUSCODES, DSN and SMTPUTF8, answers
//! pipelined commands in order, ends DATA only at CRLF.CRLF, and records every message it
//! accepts, and whether it came over TLS. Started with [`Upstream::with_starttls`], it also
//! offers STARTTLS with the given certificate (and forgets what was pipelined after it); with
//! [`Upstream::with_starttls_and_auth`] it also offers AUTH PLAIN, takes any credentials and
//! records them ([`Upstream::auth_attempts`]). It runs on its own thread and tokio runtime, so
//! tests stay plain `#[test]`s.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;

use super::wait::wait_until;

const MAX_LINE: usize = 4096;
const MAX_DATA: usize = 64 * 1024 * 1024;
const IDLE_TIMEOUT: Duration = Duration::from_secs(120);
const SLOW_DELAY: Duration = Duration::from_secs(2);
const LAG_DELAY: Duration = Duration::from_millis(500);

/// One RCPT the upstream accepted.
#[derive(Debug, Clone, PartialEq)]
pub struct Recipient {
    /// The address without angle brackets.
    pub address: String,
    /// ESMTP parameters as sent, e.g. `NOTIFY=FAILURE`.
    pub params: Vec<String>,
}

/// One message the upstream accepted.
#[derive(Debug, Clone, PartialEq)]
pub struct UpstreamMessage {
    /// The reverse path without angle brackets; empty for the null sender `<>`.
    pub mail_from: String,
    /// MAIL FROM parameters as sent, e.g. `SIZE=123`, `BODY=8BITMIME`.
    pub mail_params: Vec<String>,
    pub rcpts: Vec<Recipient>,
    /// The message as the client meant it: dot-unstuffed, ending with CRLF.
    pub data: Vec<u8>,
    /// When the end of data arrived.
    pub at: std::time::Instant,
    /// The client's address (the gate's source address).
    pub peer: Option<SocketAddr>,
    /// Whether it came over TLS (after STARTTLS).
    pub tls: bool,
}

impl UpstreamMessage {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.data).into_owned()
    }

    pub fn rcpt_addresses(&self) -> Vec<&str> {
        self.rcpts.iter().map(|r| r.address.as_str()).collect()
    }
}

/// Credentials a client sent with AUTH PLAIN.
#[derive(Debug, Clone, PartialEq)]
pub struct AuthAttempt {
    pub username: String,
    pub password: String,
    /// Whether they came over TLS.
    pub tls: bool,
}

#[derive(Default)]
struct Shared {
    /// AUTH PLAIN is offered, and every attempt recorded here.
    auth: Option<Mutex<Vec<AuthAttempt>>>,
    messages: Mutex<Vec<UpstreamMessage>>,
    rcpt_attempts: Mutex<HashMap<String, usize>>,
    connections: AtomicUsize,
    fail_first: Option<usize>,
    /// STARTTLS is offered with this.
    tls: Option<tokio_rustls::TlsAcceptor>,
    /// STARTTLS handshakes that failed.
    tls_failures: AtomicUsize,
}

/// A running scriptable upstream on 127.0.0.1; stops on drop.
pub struct Upstream {
    addr: SocketAddr,
    shared: Arc<Shared>,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<thread::JoinHandle<()>>,
}

impl Upstream {
    /// An upstream whose special recipients misbehave every time.
    pub fn start() -> Upstream {
        Upstream::start_with(None, None)
    }

    /// An upstream whose special recipients misbehave on their first `n` RCPTs only.
    pub fn fail_first(n: usize) -> Upstream {
        Upstream::start_with(Some(n), None)
    }

    /// An upstream that offers STARTTLS and presents `cert`.
    pub fn with_starttls(cert: &super::ServerCert) -> Upstream {
        let acceptor = tokio_rustls::TlsAcceptor::from(cert.server_config());
        Upstream::start_with(None, Some(acceptor))
    }

    /// An upstream that offers STARTTLS presenting `cert`, and AUTH PLAIN (before and after
    /// STARTTLS: the client decides where its credentials go), accepting any credentials.
    pub fn with_starttls_and_auth(cert: &super::ServerCert) -> Upstream {
        let acceptor = tokio_rustls::TlsAcceptor::from(cert.server_config());
        Upstream::start_shared(Shared {
            tls: Some(acceptor),
            auth: Some(Mutex::new(Vec::new())),
            ..Shared::default()
        })
    }

    fn start_with(fail_first: Option<usize>, tls: Option<tokio_rustls::TlsAcceptor>) -> Upstream {
        Upstream::start_shared(Shared {
            fail_first,
            tls,
            ..Shared::default()
        })
    }

    fn start_shared(shared: Shared) -> Upstream {
        let listener = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind");
        listener.set_nonblocking(true).expect("nonblocking");
        let addr = listener.local_addr().expect("local_addr");
        let shared = Arc::new(shared);
        let (stop, stopped) = oneshot::channel();
        let server = shared.clone();
        let thread = thread::Builder::new()
            .name(format!("upstream-{}", addr.port()))
            .spawn(move || serve(listener, server, stopped))
            .expect("spawn upstream thread");
        Upstream {
            addr,
            shared,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Every message accepted so far, in order of acceptance.
    pub fn messages(&self) -> Vec<UpstreamMessage> {
        self.shared.messages.lock().unwrap().clone()
    }

    /// Waits until at least `n` messages have been accepted; panics after `within`.
    pub fn wait_for(&self, n: usize, within: Duration) -> Vec<UpstreamMessage> {
        let arrived = wait_until(within, || self.messages().len() >= n);
        let messages = self.messages();
        assert!(
            arrived,
            "upstream accepted {} of {n} messages within {within:?}; RCPT attempts: {:?}",
            messages.len(),
            self.shared.rcpt_attempts.lock().unwrap()
        );
        messages
    }

    /// STARTTLS handshakes that failed so far (a client that refused the certificate, say).
    pub fn tls_failures(&self) -> usize {
        self.shared.tls_failures.load(Ordering::SeqCst)
    }

    /// The credentials clients sent so far (an upstream started with AUTH).
    pub fn auth_attempts(&self) -> Vec<AuthAttempt> {
        let auth = self.shared.auth.as_ref().expect("an upstream started with AUTH");
        auth.lock().unwrap().clone()
    }

    /// TCP connections accepted so far.
    pub fn connection_count(&self) -> usize {
        self.shared.connections.load(Ordering::SeqCst)
    }

    /// How many RCPT commands named `rcpt` (case-insensitive), whatever their answer.
    /// How many accepted messages were addressed to `rcpt` (as given at RCPT TO).
    pub fn delivered_to(&self, rcpt: &str) -> usize {
        self.messages()
            .iter()
            .filter(|m| m.rcpt_addresses().contains(&rcpt))
            .count()
    }

    pub fn attempts_for(&self, rcpt: &str) -> usize {
        let attempts = self.shared.rcpt_attempts.lock().unwrap();
        attempts.get(&rcpt.to_ascii_lowercase()).copied().unwrap_or(0)
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn serve(listener: std::net::TcpListener, shared: Arc<Shared>, stopped: oneshot::Receiver<()>) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    runtime.block_on(async move {
        let listener = TcpListener::from_std(listener).expect("tokio listener");
        tokio::select! {
            _ = stopped => {}
            _ = accept_loop(listener, shared) => {}
        }
    });
    // Dropping the runtime cancels every session still open.
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    while let Ok((stream, _)) = listener.accept().await {
        shared.connections.fetch_add(1, Ordering::SeqCst);
        let shared = shared.clone();
        tokio::spawn(async move {
            if let Err(e) = Session::new(stream, shared).run().await {
                eprintln!("[upstream] session ended: {e}");
            }
        });
    }
}

/// What a recipient asks the upstream to do.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Behaviour {
    Accept,
    TempfailRcpt,
    RejectRcpt,
    RateLimitRcpt,
    BusyRcpt,
    TempfailData,
    RejectData,
    DisconnectData,
    Slow,
    Lag,
}

impl Behaviour {
    fn of(address: &str) -> Behaviour {
        let local = address.rsplit_once('@').map_or(address, |(l, _)| l);
        let local = local.split('+').next().unwrap_or(local);
        match local.to_ascii_lowercase().as_str() {
            "tempfail-rcpt" => Behaviour::TempfailRcpt,
            "reject-rcpt" => Behaviour::RejectRcpt,
            "ratelimit-rcpt" => Behaviour::RateLimitRcpt,
            "busy-rcpt" => Behaviour::BusyRcpt,
            "tempfail-data" => Behaviour::TempfailData,
            "reject-data" => Behaviour::RejectData,
            "disconnect-data" => Behaviour::DisconnectData,
            "slow" => Behaviour::Slow,
            "lag" => Behaviour::Lag,
            _ => Behaviour::Accept,
        }
    }
}

/// What happens after end of data, worst recipient first.
enum DataOutcome {
    Disconnect,
    Reply(&'static str),
    Accept,
}

struct Transaction {
    mail_from: String,
    mail_params: Vec<String>,
    rcpts: Vec<(Recipient, Behaviour)>,
}

impl Transaction {
    fn outcome(&self) -> DataOutcome {
        let has = |b| self.rcpts.iter().any(|(_, rb)| *rb == b);
        if has(Behaviour::DisconnectData) {
            DataOutcome::Disconnect
        } else if has(Behaviour::RejectData) {
            DataOutcome::Reply("554 5.6.0 Message rejected by upstream script")
        } else if has(Behaviour::TempfailData) {
            DataOutcome::Reply("451 4.3.0 Temporary failure by upstream script")
        } else {
            DataOutcome::Accept
        }
    }
}

/// A connection's bytes: TCP, or TLS over it after STARTTLS.
trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}

struct Session {
    input: Input,
    shared: Arc<Shared>,
    transaction: Option<Transaction>,
    slow: bool,
    peer: Option<SocketAddr>,
    tls: bool,
}

impl Session {
    fn new(stream: TcpStream, shared: Arc<Shared>) -> Self {
        let peer = stream.peer_addr().ok();
        Session {
            input: Input::new(Box::new(stream)),
            shared,
            transaction: None,
            slow: false,
            peer,
            tls: false,
        }
    }
}

/// Whether the session goes on after a command.
enum Next {
    Continue,
    Close,
}

impl Session {
    async fn run(mut self) -> std::io::Result<()> {
        self.reply("220 upstream.test ESMTP scriptable upstream").await?;
        while let Some(line) = self.input.line().await? {
            if let Next::Close = self.command(&line).await? {
                break;
            }
        }
        Ok(())
    }

    async fn command(&mut self, line: &str) -> std::io::Result<Next> {
        let (verb, rest) = line.split_once(' ').unwrap_or((line, ""));
        match verb.to_ascii_uppercase().as_str() {
            "EHLO" => self.ehlo().await?,
            "HELO" => self.reply("250 upstream.test").await?,
            "MAIL" => self.mail(rest).await?,
            "RCPT" => return self.rcpt(rest).await,
            "DATA" => return self.data().await,
            "STARTTLS" => return self.starttls().await,
            "AUTH" => self.auth(rest).await?,
            "RSET" => {
                self.transaction = None;
                self.reply("250 2.0.0 Ok").await?
            }
            "NOOP" => self.reply("250 2.0.0 Ok").await?,
            "VRFY" => self.reply("252 2.5.0 Cannot VRFY user").await?,
            "QUIT" => {
                self.reply("221 2.0.0 Bye").await?;
                return Ok(Next::Close);
            }
            _ => self.reply("500 5.5.2 Command not recognized").await?,
        }
        Ok(Next::Continue)
    }

    async fn ehlo(&mut self) -> std::io::Result<()> {
        self.transaction = None;
        let starttls = if self.shared.tls.is_some() && !self.tls {
            "250-STARTTLS\r\n"
        } else {
            ""
        };
        let auth = if self.shared.auth.is_some() {
            "250-AUTH PLAIN\r\n"
        } else {
            ""
        };
        self.reply(&format!(
            "250-upstream.test\r\n250-PIPELINING\r\n250-SIZE 104857600\r\n250-8BITMIME\r\n\
             {starttls}{auth}250-ENHANCEDSTATUSCODES\r\n250-DSN\r\n250 SMTPUTF8"
        ))
        .await
    }

    /// AUTH PLAIN with its initial response (or after a `334`): any credentials are accepted and
    /// recorded.
    async fn auth(&mut self, args: &str) -> std::io::Result<()> {
        if self.shared.auth.is_none() {
            return self.reply("502 5.5.1 AUTH not available").await;
        }
        let (mechanism, initial) = args.split_once(' ').unwrap_or((args, ""));
        if !mechanism.eq_ignore_ascii_case("PLAIN") {
            return self.reply("504 5.5.4 Unrecognized authentication type").await;
        }
        let token = if initial.is_empty() {
            self.reply("334 ").await?;
            self.input.line().await?.unwrap_or_default()
        } else {
            initial.to_string()
        };
        use base64::Engine;
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(token.trim())
            .unwrap_or_default();
        let fields: Vec<String> = decoded
            .split(|&b| b == 0)
            .map(|f| String::from_utf8_lossy(f).into_owned())
            .collect();
        let [_, username, password] = &fields[..] else {
            return self.reply("501 5.5.2 Cannot decode AUTH PLAIN").await;
        };
        let attempts = self.shared.auth.as_ref().expect("checked above");
        attempts.lock().unwrap().push(AuthAttempt {
            username: username.clone(),
            password: password.clone(),
            tls: self.tls,
        });
        self.reply("235 2.7.0 Authentication successful").await
    }

    /// STARTTLS (RFC 3207): the handshake, then a fresh session over TLS; what the client
    /// pipelined after the command is discarded. A failed handshake ends the connection.
    async fn starttls(&mut self) -> std::io::Result<Next> {
        let Some(acceptor) = self.shared.tls.clone().filter(|_| !self.tls) else {
            self.reply("502 5.5.1 STARTTLS not available").await?;
            return Ok(Next::Continue);
        };
        self.reply("220 2.0.0 Ready to start TLS").await?;
        self.input.buf.clear();
        let placeholder = Box::new(tokio::io::join(tokio::io::empty(), tokio::io::sink()));
        let plain = std::mem::replace(&mut self.input.stream, placeholder);
        match acceptor.accept(plain).await {
            Ok(tls) => self.input.stream = Box::new(tls),
            Err(e) => {
                self.shared.tls_failures.fetch_add(1, Ordering::SeqCst);
                eprintln!("[upstream] TLS handshake failed: {e}");
                return Ok(Next::Close);
            }
        }
        self.tls = true;
        self.transaction = None;
        Ok(Next::Continue)
    }

    async fn mail(&mut self, args: &str) -> std::io::Result<()> {
        if self.transaction.is_some() {
            return self.reply("503 5.5.1 Nested MAIL command").await;
        }
        let Some((path, params)) = parse_path(args, "FROM:") else {
            return self.reply("501 5.5.4 Syntax: MAIL FROM:<address>").await;
        };
        self.transaction = Some(Transaction {
            mail_from: path,
            mail_params: params,
            rcpts: Vec::new(),
        });
        self.reply("250 2.1.0 Ok").await
    }

    async fn rcpt(&mut self, args: &str) -> std::io::Result<Next> {
        if self.transaction.is_none() {
            self.reply("503 5.5.1 Need MAIL command").await?;
            return Ok(Next::Continue);
        }
        let Some((address, params)) = parse_path(args, "TO:") else {
            self.reply("501 5.5.4 Syntax: RCPT TO:<address>").await?;
            return Ok(Next::Continue);
        };
        let attempt = self.count_attempt(&address);
        let behaviour = match self.shared.fail_first {
            Some(n) if attempt > n => Behaviour::Accept,
            _ => Behaviour::of(&address),
        };
        match behaviour {
            Behaviour::TempfailRcpt => self.reply("450 4.2.0 Mailbox temporarily unavailable (script)").await?,
            Behaviour::RejectRcpt => self.reply("550 5.1.1 No such user (script)").await?,
            Behaviour::RateLimitRcpt => {
                self.reply(
                    "451 4.7.650 The mail server has been temporarily rate limited due to IP reputation (script)",
                )
                .await?
            }
            Behaviour::BusyRcpt => {
                self.reply("421 4.7.0 Too many connections, try again later (script)")
                    .await?;
                return Ok(Next::Close);
            }
            _ => {
                self.slow |= behaviour == Behaviour::Slow;
                let recipient = Recipient { address, params };
                let transaction = self.transaction.as_mut().expect("checked above");
                transaction.rcpts.push((recipient, behaviour));
                self.reply("250 2.1.5 Ok").await?
            }
        }
        Ok(Next::Continue)
    }

    fn count_attempt(&self, address: &str) -> usize {
        let mut attempts = self.shared.rcpt_attempts.lock().unwrap();
        let count = attempts.entry(address.to_ascii_lowercase()).or_default();
        *count += 1;
        *count
    }

    async fn data(&mut self) -> std::io::Result<Next> {
        let ready = match &self.transaction {
            None => Err("503 5.5.1 Need MAIL command"),
            Some(t) if t.rcpts.is_empty() => Err("554 5.5.1 No valid recipients"),
            Some(_) => Ok(()),
        };
        if let Err(reply) = ready {
            self.reply(reply).await?;
            return Ok(Next::Continue);
        }
        self.reply("354 End data with <CR><LF>.<CR><LF>").await?;
        let Some(raw) = self.input.data().await? else {
            return Ok(Next::Close);
        };
        let transaction = self.transaction.take().expect("checked above");
        if raw.len() > MAX_DATA {
            self.reply("552 5.3.4 Message too big").await?;
            return Ok(Next::Continue);
        }
        match transaction.outcome() {
            DataOutcome::Disconnect => return Ok(Next::Close),
            DataOutcome::Reply(reply) => self.reply(reply).await?,
            DataOutcome::Accept => {
                let lag = transaction.rcpts.iter().any(|(_, b)| *b == Behaviour::Lag);
                let id = self.record(transaction, unstuff(&raw));
                if lag {
                    tokio::time::sleep(LAG_DELAY).await;
                }
                self.reply(&format!("250 2.0.0 Ok: queued as U{id}")).await?
            }
        }
        Ok(Next::Continue)
    }

    fn record(&self, transaction: Transaction, data: Vec<u8>) -> usize {
        let mut messages = self.shared.messages.lock().unwrap();
        messages.push(UpstreamMessage {
            mail_from: transaction.mail_from,
            mail_params: transaction.mail_params,
            rcpts: transaction.rcpts.into_iter().map(|(r, _)| r).collect(),
            data,
            at: std::time::Instant::now(),
            peer: self.peer,
            tls: self.tls,
        });
        messages.len()
    }

    async fn reply(&mut self, text: &str) -> std::io::Result<()> {
        if self.slow {
            tokio::time::sleep(SLOW_DELAY).await;
        }
        self.input.stream.write_all(format!("{text}\r\n").as_bytes()).await?;
        self.input.stream.flush().await
    }
}

/// `FROM:<a@b> SIZE=1` → (`a@b`, [`SIZE=1`]). The keyword is matched case-insensitively;
/// a space after the colon is tolerated.
fn parse_path(args: &str, keyword: &str) -> Option<(String, Vec<String>)> {
    let head = args.get(..keyword.len())?;
    if !head.eq_ignore_ascii_case(keyword) {
        return None;
    }
    let rest = args[keyword.len()..].trim_start();
    let rest = rest.strip_prefix('<')?;
    let (path, params) = rest.split_once('>')?;
    let params = params.split_whitespace().map(str::to_string).collect();
    Some((path.to_string(), params))
}

/// Removes the dot that SMTP's transparency procedure adds to lines starting with a dot.
/// Only CRLF ends a line.
fn unstuff(raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(raw.len());
    let mut line_start = true;
    for (i, &byte) in raw.iter().enumerate() {
        if line_start && byte == b'.' {
            line_start = false;
            continue;
        }
        out.push(byte);
        line_start = byte == b'\n' && i > 0 && raw[i - 1] == b'\r';
    }
    out
}

/// Buffered SMTP input: CRLF-terminated command lines and CRLF.CRLF-terminated data.
struct Input {
    stream: Box<dyn Stream>,
    buf: Vec<u8>,
}

impl Input {
    fn new(stream: Box<dyn Stream>) -> Self {
        Input {
            stream,
            buf: Vec::new(),
        }
    }

    /// Reads more input; false at end of stream.
    async fn fill(&mut self) -> std::io::Result<bool> {
        let mut chunk = [0u8; 16 * 1024];
        let n = tokio::time::timeout(IDLE_TIMEOUT, self.stream.read(&mut chunk))
            .await
            .map_err(|_| std::io::Error::other("client idle too long"))??;
        self.buf.extend_from_slice(&chunk[..n]);
        Ok(n > 0)
    }

    /// The next command line without its CRLF; None at end of stream.
    async fn line(&mut self) -> std::io::Result<Option<String>> {
        loop {
            if let Some(end) = find(&self.buf, b"\r\n", 0) {
                let line: Vec<u8> = self.buf.drain(..end + 2).collect();
                return Ok(Some(String::from_utf8_lossy(&line[..end]).into_owned()));
            }
            if self.buf.len() > MAX_LINE {
                return Err(std::io::Error::other("command line too long"));
            }
            if !self.fill().await? {
                return Ok(None);
            }
        }
    }

    /// The data after 354, still dot-stuffed, through the CRLF that precedes the final
    /// `.CRLF`; None if the stream ends first. Bytes after the terminator stay buffered
    /// for the next pipelined command.
    async fn data(&mut self) -> std::io::Result<Option<Vec<u8>>> {
        let mut searched = 0;
        loop {
            if self.buf.starts_with(b".\r\n") {
                self.buf.drain(..3);
                return Ok(Some(Vec::new()));
            }
            if let Some(at) = find(&self.buf, b"\r\n.\r\n", searched) {
                let mut data: Vec<u8> = self.buf.drain(..at + 5).collect();
                data.truncate(at + 2);
                return Ok(Some(data));
            }
            searched = self.buf.len().saturating_sub(4);
            if self.buf.len() > MAX_DATA + 5 {
                return Err(std::io::Error::other("data too long"));
            }
            if !self.fill().await? {
                return Ok(None);
            }
        }
    }
}

fn find(haystack: &[u8], needle: &[u8], from: usize) -> Option<usize> {
    haystack
        .get(from..)?
        .windows(needle.len())
        .position(|w| w == needle)
        .map(|p| p + from)
}
