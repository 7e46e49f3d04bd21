//! One SMTP session, from the greeting to QUIT: one file per verb.
//!
//! A session owns its connection and the transaction in progress; the phase of a transaction is an
//! enum whose variants carry only what is valid in that phase. Every reply comes from the catalogue
//! in `smtpgate_proto::Reply`.

mod auth;
mod conn;
mod data;
mod ehlo;
mod filters;
pub mod limits;
mod listener;
mod mail;
mod proxy;
mod rcpt;
mod refusals;
mod starttls;

use std::net::SocketAddr;
use std::sync::Arc;

use smtpgate_proto::{BdatReceiver, Command, LineFramer, Reply, parse_command};
use tokio::io::AsyncReadExt;

use crate::envelope::{QueueId, Recipient, Sender};
use crate::io::{BoxIo, TlsInfo};
pub use auth::{Users, hash_password};
use conn::{Conn, Line, ReadError};
pub use limits::{AuthFailures, ConnLimits, Sessions};
pub use listener::{ListenerError, ListenerState};

/// RFC 5321 4.5.3.1.4: a command line is at most 512 octets with its CRLF.
const MAX_LINE: usize = 512;

/// What the client said in EHLO or HELO.
struct Helo {
    name: String,
    extended: bool,
}

/// The transaction being built by MAIL and RCPT.
struct Draft {
    sender: Sender,
    params: smtpgate_proto::MailParams,
    recipients: Vec<Recipient>,
}

/// A BDAT transaction in progress.
struct Chunking {
    draft: Draft,
    id: QueueId,
    receiver: BdatReceiver,
    incoming: crate::spool::Incoming,
    /// The message's share of the node's memory budget.
    held: crate::budget::Held,
}

/// The phase of the mail transaction.
enum Txn {
    Idle,
    Mail(Draft),
    Chunking(Box<Chunking>),
}

/// Whether the session goes on.
#[derive(Debug, PartialEq, Eq)]
enum Flow {
    Continue,
    Close,
}

pub struct Session {
    listener: Arc<ListenerState>,
    conn: Conn,
    peer: SocketAddr,
    framer: LineFramer,
    helo: Option<Helo>,
    tls: Option<TlsInfo>,
    user: Option<String>,
    txn: Txn,
    errors: u32,
    auth_failures: u32,
    /// The upstream side of the transaction, on a proxy listener.
    proxy: crate::intake::proxy::Proxy,
}

impl Session {
    pub fn new(listener: Arc<ListenerState>, io: BoxIo, peer: SocketAddr, tls: Option<TlsInfo>) -> Self {
        let peer = SocketAddr::new(peer.ip().to_canonical(), peer.port());
        let conn = Conn::new(io, listener.shutdown.clone(), listener.config.write_timeout);
        Session {
            listener,
            conn,
            peer,
            framer: LineFramer::new(MAX_LINE),
            helo: None,
            tls,
            user: None,
            txn: Txn::Idle,
            errors: 0,
            auth_failures: 0,
            proxy: crate::intake::proxy::Proxy::default(),
        }
    }

    /// Runs the session to its end.
    pub async fn run(mut self) {
        if self.greet().await == Flow::Continue {
            self.command_loop().await;
        }
        let _ = self.conn.flush().await;
        self.proxy_release().await;
        let _ = tokio::io::AsyncWriteExt::shutdown(&mut self.conn.io).await;
    }

    async fn greet(&mut self) -> Flow {
        let delay = self.listener.config.greeting_delay;
        if !delay.is_zero() {
            // A client that talks before the greeting is not speaking SMTP (RFC 5321 3.1).
            let mut probe = [0u8; 1];
            match tokio::time::timeout(delay, self.conn.io.read(&mut probe)).await {
                Err(_) => {}
                Ok(Ok(0)) | Ok(Err(_)) => return Flow::Close,
                Ok(Ok(_)) => {
                    tracing::info!(client = %self.peer, "client talked before the greeting");
                    self.conn.reply(&Reply::pregreet());
                    return Flow::Close;
                }
            }
        }
        if let Some(r) = self.filter_connect().await {
            tracing::info!(client = %self.peer, reply = %r.code, "connection refused by filter");
            self.conn.reply(&r);
            return Flow::Close;
        }
        self.conn.reply(&Reply::greeting(&self.hostname()));
        Flow::Continue
    }

    async fn command_loop(&mut self) {
        let limit = self.listener.config.command_timeout;
        loop {
            // On shutdown, a transaction in progress may still finish; an idle session gets 421.
            let idle = matches!(self.txn, Txn::Idle);
            let line = match self.conn.read_line(&mut self.framer, limit, idle).await {
                Ok(Line::Command(line)) => line,
                Ok(Line::TooLong) => {
                    if self.error(Reply::line_too_long()) == Flow::Close {
                        return;
                    }
                    continue;
                }
                Err(e) => return self.end_on(e),
            };
            if self.conn.has_buffered() && self.must_wait(&line) {
                tracing::info!(client = %self.peer, line = %String::from_utf8_lossy(&line), "improper pipelining");
                self.conn.reply(&Reply::sync_error());
                return;
            }
            let flow = self.dispatch(&line).await;
            if self.proxy_pending() {
                self.proxy_release().await;
            }
            if flow == Flow::Close {
                return;
            }
        }
    }

    /// Whether the client had to wait for the reply to `line` before sending more (RFC 2920:
    /// EHLO and HELO end a pipelined group; a client that got HELO's reply had no PIPELINING).
    fn must_wait(&self, line: &[u8]) -> bool {
        let verb = line.get(..4).map(|v| v.to_ascii_uppercase());
        let hello = matches!(verb.as_deref(), Some(b"EHLO" | b"HELO"));
        hello || self.helo.as_ref().is_some_and(|h| !h.extended)
    }

    fn end_on(&mut self, e: ReadError) {
        match e {
            ReadError::Timeout => self.conn.reply(&Reply::timeout()),
            ReadError::Shutdown => self.conn.reply(&Reply::shutting_down(&self.hostname())),
            ReadError::WriteTimeout => tracing::info!(client = %self.peer, "client does not read its replies: dropped"),
            ReadError::Eof | ReadError::Io(_) => {}
        }
    }

    async fn dispatch(&mut self, line: &[u8]) -> Flow {
        let cmd = match parse_command(line) {
            Ok(cmd) => cmd,
            Err(e) => return self.error(e.reply()),
        };
        if matches!(self.txn, Txn::Chunking(_))
            && !matches!(
                cmd,
                Command::Bdat { .. } | Command::Rset | Command::Quit | Command::Noop
            )
        {
            self.txn = Txn::Idle;
            return self.error(Reply::bdat_mixed());
        }
        match cmd {
            Command::Ehlo(name) => self.ehlo(name, true).await,
            Command::Helo(name) => self.ehlo(name, false).await,
            Command::Mail { from, params } => self.mail(from, params).await,
            Command::Rcpt { to, params } => self.rcpt(to, params).await,
            Command::Data => self.data().await,
            Command::Bdat { size, last } => self.bdat(size, last).await,
            Command::Rset => self.reply(Reply::reset(), Txn::Idle),
            Command::Noop => self.respond(Reply::ok()),
            Command::Quit => {
                self.conn.reply(&Reply::bye(&self.hostname()));
                Flow::Close
            }
            Command::Vrfy(_) => self.respond(Reply::vrfy()),
            Command::Expn(_) => self.error(Reply::not_implemented()),
            Command::Help(_) => self.respond(Reply::help()),
            Command::StartTls => self.starttls().await,
            Command::Auth { mechanism, initial } => self.auth(mechanism, initial).await,
        }
    }

    fn respond(&mut self, r: Reply) -> Flow {
        self.conn.reply(&r);
        Flow::Continue
    }

    fn reply(&mut self, r: Reply, txn: Txn) -> Flow {
        self.txn = txn;
        self.respond(r)
    }

    /// Sends an error reply and counts it; too many errors end the session.
    fn error(&mut self, r: Reply) -> Flow {
        self.errors += 1;
        if self.errors >= self.listener.config.max_errors {
            tracing::info!(client = %self.peer, errors = self.errors, "too many errors");
            self.conn.reply(&r);
            self.conn.reply(&Reply::too_many_errors());
            return Flow::Close;
        }
        self.respond(r)
    }

    fn hostname(&self) -> String {
        self.listener.ctx.config.hostname.clone()
    }

    /// Whether this client may send to any domain: from a relay network, or authenticated.
    fn may_relay(&self) -> bool {
        self.user.is_some()
            || self
                .listener
                .config
                .relay_networks
                .iter()
                .any(|n| n.contains(&self.peer.ip()))
    }
}

#[cfg(test)]
mod tests;
