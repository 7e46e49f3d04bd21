//! smtpgate as an SMTP client: one connection to a next hop, reused for several messages.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use bytes::{Buf, BytesMut};
use smtpgate_proto::{Capabilities, DotStuffer, ParsedReply, parse_reply};
use tokio::io::{AsyncReadExt, AsyncSeekExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::time::timeout;

use crate::config::{QueueConfig, TlsPolicy, UpstreamAuth};
use crate::envelope::{Envelope, Recipient, Ret};
use crate::io::{BoxIo, TlsInfo};
use crate::spool::{Ext, Stored};
use crate::tls::CertCheck;

/// Octets of a body file read and sent at a time.
const FILE_CHUNK: usize = 256 * 1024;

/// The reply code of a server that closes the connection (RFC 5321 3.8): it may come in answer
/// to any command, and nothing more will be read.
pub(crate) const CLOSING: u16 = 421;

/// Why a connection or a transaction failed as a whole.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("connection to {0} failed: {1}")]
    Connect(String, std::io::Error),
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("timeout waiting for {0}")]
    Timeout(&'static str),
    #[error("{stage}: {}", reply.to_string_line())]
    Reply { stage: &'static str, reply: ParsedReply },
    #[error("protocol error: {0}")]
    Protocol(String),
    #[error("TLS required but {0}")]
    TlsRequired(String),
    #[error("{0}")]
    Auth(String),
}

impl ClientError {
    /// A 5xx reply to a connection-level command is permanent; everything else is worth a retry.
    pub fn is_permanent(&self) -> bool {
        matches!(self, ClientError::Reply { reply, .. } if reply.is_permanent())
    }
}

/// The reply to each recipient and to the end of data.
#[derive(Debug)]
pub struct TxnResult {
    /// `Ok(reply)` if the RCPT was accepted, `Err(reply)` if refused.
    pub rcpts: Vec<Result<ParsedReply, ParsedReply>>,
    /// The reply to the end of data, if data was sent.
    pub data: Option<ParsedReply>,
}

pub struct Client {
    io: BoxIo,
    buf: BytesMut,
    caps: Capabilities,
    pub remote: String,
    pub tls: Option<TlsInfo>,
    /// With TLS: whether the server's certificate verified, and why not.
    cert: Option<Result<(), String>>,
    command_timeout: Duration,
    data_timeout: Duration,
}

/// What a connection needs to know beyond the address.
pub struct Connect<'a> {
    pub addr: SocketAddr,
    pub host: &'a str,
    pub helo: &'a str,
    pub tls: TlsPolicy,
    pub tls_config: Arc<rustls::ClientConfig>,
    /// How the certificate is known to be verified (credentials go over a verified session only).
    pub cert_check: CertCheck,
    pub queue: &'a QueueConfig,
    /// Credentials to AUTH with, when the server offers PLAIN or LOGIN.
    pub auth: Option<&'a UpstreamAuth>,
    /// Credentials may go over TLS whose certificate did not verify (the pool's `auth_unverified`).
    pub auth_unverified: bool,
    /// Local address to bind the socket to (port 0).
    pub source: Option<IpAddr>,
}

impl Client {
    pub async fn connect(c: Connect<'_>) -> Result<Client, ClientError> {
        let remote = format!("{}[{}]", c.host, c.addr);
        let tcp = match timeout(c.queue.connect_timeout, tcp_connect(c.addr, c.source)).await {
            Ok(r) => r.map_err(|e| ClientError::Connect(remote.clone(), e))?,
            Err(_) => return Err(ClientError::Timeout("connect")),
        };
        let _ = tcp.set_nodelay(true);
        let mut client = Client {
            io: Box::new(tcp),
            buf: BytesMut::with_capacity(4096),
            caps: Capabilities::default(),
            remote,
            tls: None,
            cert: None,
            command_timeout: c.queue.command_timeout,
            data_timeout: c.queue.data_timeout,
        };
        client.expect("greeting", 2).await?;
        client.ehlo(c.helo).await?;
        client.maybe_starttls(&c).await?;
        if let Some(auth) = c.auth {
            client.may_send_credentials(c.addr, c.auth_unverified)?;
            client.authenticate(auth).await?;
        }
        Ok(client)
    }

    /// Whether credentials may go to this server: over TLS, when its certificate verified (or the
    /// pool accepts an unverified one); without TLS, only to a server on loopback, where nobody can
    /// listen in. Checked before anything else, whatever mechanisms the server offers.
    fn may_send_credentials(&self, addr: SocketAddr, auth_unverified: bool) -> Result<(), ClientError> {
        let why = match &self.cert {
            Some(Ok(())) => return Ok(()),
            Some(Err(_)) if auth_unverified => return Ok(()),
            Some(Err(cert)) => format!(
                "refusing to send credentials to {}: {cert} (give the pool its CA in ca_file, or set \
                 auth_unverified = true to send them anyway)",
                self.remote
            ),
            None if addr.ip().to_canonical().is_loopback() => return Ok(()),
            None => format!("refusing to send credentials to {} without TLS", self.remote),
        };
        tracing::error!(server = %self.remote, "{why}");
        Err(ClientError::Auth(why))
    }

    /// AUTH PLAIN (or LOGIN) after EHLO and any STARTTLS, once [`Self::may_send_credentials`] said
    /// yes; a server that offers neither mechanism gets the mail unauthenticated.
    async fn authenticate(&mut self, auth: &UpstreamAuth) -> Result<(), ClientError> {
        let offers = |m: &str| self.caps.auth.iter().any(|a| a == m);
        let (plain, login) = (offers("PLAIN"), offers("LOGIN"));
        if !plain && !login {
            tracing::warn!(server = %self.remote, offered = ?self.caps.auth, "server offers no AUTH PLAIN or LOGIN: sending without authenticating");
            return Ok(());
        }
        let reply = if plain {
            let token = B64.encode(format!("\0{}\0{}", auth.username, auth.password));
            self.write(format!("AUTH PLAIN {token}\r\n").as_bytes()).await?;
            self.read_reply(self.command_timeout).await?
        } else {
            self.write(b"AUTH LOGIN\r\n").await?;
            self.expect("AUTH", 3).await?;
            self.write(format!("{}\r\n", B64.encode(&auth.username)).as_bytes())
                .await?;
            self.expect("AUTH", 3).await?;
            self.write(format!("{}\r\n", B64.encode(&auth.password)).as_bytes())
                .await?;
            self.read_reply(self.command_timeout).await?
        };
        if reply.code == 235 {
            return Ok(());
        }
        if reply.code == 535 {
            tracing::error!(
                server = %self.remote, username = %auth.username, reply = %reply.to_string_line(),
                "upstream refused our credentials: check the pool's auth settings"
            );
        }
        Err(ClientError::Reply { stage: "AUTH", reply })
    }

    async fn ehlo(&mut self, helo: &str) -> Result<(), ClientError> {
        self.write(format!("EHLO {helo}\r\n").as_bytes()).await?;
        let reply = self.read_reply(self.command_timeout).await?;
        if reply.is_positive() {
            self.caps = Capabilities::from_ehlo(&reply);
            return Ok(());
        }
        self.write(format!("HELO {helo}\r\n").as_bytes()).await?;
        self.caps = Capabilities::default();
        self.expect("HELO", 2).await.map(|_| ())
    }

    async fn maybe_starttls(&mut self, c: &Connect<'_>) -> Result<(), ClientError> {
        match (c.tls, self.caps.starttls) {
            (TlsPolicy::None, _) | (TlsPolicy::Opportunistic, false) => return Ok(()),
            (TlsPolicy::Required, false) => {
                return Err(ClientError::TlsRequired(format!(
                    "{} does not offer STARTTLS",
                    self.remote
                )));
            }
            _ => {}
        }
        self.write(b"STARTTLS\r\n").await?;
        let reply = self.read_reply(self.command_timeout).await?;
        if !reply.is_positive() {
            if c.tls == TlsPolicy::Required {
                return Err(ClientError::TlsRequired(reply.to_string_line()));
            }
            return Ok(());
        }
        self.upgrade(c).await?;
        self.ehlo(c.helo).await
    }

    async fn upgrade(&mut self, c: &Connect<'_>) -> Result<(), ClientError> {
        let name = server_name(c.host, c.addr);
        let connector = tokio_rustls::TlsConnector::from(c.tls_config.clone());
        let checked_name = name.clone();
        let io = std::mem::replace(&mut self.io, crate::io::placeholder());
        self.buf.clear();
        let tls = match timeout(self.command_timeout, connector.connect(name, io)).await {
            Err(_) => return Err(ClientError::Timeout("TLS handshake")),
            // A certificate the policy refuses, say: the required TLS could not be had.
            Ok(Err(e)) if c.tls == TlsPolicy::Required => {
                let why = format!("the TLS handshake with {} failed: {e}", self.remote);
                return Err(ClientError::TlsRequired(why));
            }
            Ok(r) => r?,
        };
        self.tls = Some(TlsInfo::from_conn(tls.get_ref().1));
        self.cert = Some(c.cert_check.verify(tls.get_ref().1, &checked_name));
        self.io = Box::new(tls);
        Ok(())
    }

    async fn write(&mut self, bytes: &[u8]) -> Result<(), ClientError> {
        timeout(self.command_timeout, self.io.write_all(bytes))
            .await
            .map_err(|_| ClientError::Timeout("write"))??;
        Ok(())
    }

    async fn read_reply(&mut self, limit: Duration) -> Result<ParsedReply, ClientError> {
        loop {
            match parse_reply(&self.buf) {
                Ok(Some((reply, used))) => {
                    self.buf.advance(used);
                    return Ok(reply);
                }
                Ok(None) => {}
                Err(_) => return Err(ClientError::Protocol("malformed reply".into())),
            }
            if self.buf.len() > 64 * 1024 {
                return Err(ClientError::Protocol("reply too long".into()));
            }
            let n = timeout(limit, self.io.read_buf(&mut self.buf))
                .await
                .map_err(|_| ClientError::Timeout("reply"))??;
            if n == 0 {
                return Err(ClientError::Io(std::io::ErrorKind::UnexpectedEof.into()));
            }
        }
    }

    async fn expect(&mut self, stage: &'static str, class: u16) -> Result<ParsedReply, ClientError> {
        let reply = self.read_reply(self.command_timeout).await?;
        if reply.code / 100 == class {
            Ok(reply)
        } else {
            Err(ClientError::Reply { stage, reply })
        }
    }

    /// Sends one message to some recipients; pipelines MAIL, RCPT and DATA when the server allows it.
    pub async fn deliver(
        &mut self,
        env: &Envelope,
        rcpts: &[&Recipient],
        body: &Stored,
    ) -> Result<TxnResult, ClientError> {
        let mut cmds = vec![self.mail_command(env, Some(body.len()))];
        cmds.extend(rcpts.iter().map(|r| self.rcpt_command(r)));
        cmds.push("DATA\r\n".to_string());
        let replies = self.send_commands(&cmds, true).await?;
        if let Some(at) = replies.iter().position(|r| r.code == CLOSING) {
            // The server is closing the connection: every recipient gets its reply.
            let stage = match at {
                0 => "MAIL",
                _ if at <= rcpts.len() => "RCPT",
                _ => "DATA",
            };
            return Err(ClientError::Reply {
                stage,
                reply: replies[at].clone(),
            });
        }
        let mail = &replies[0];
        if !mail.is_positive() {
            return Err(ClientError::Reply {
                stage: "MAIL",
                reply: mail.clone(),
            });
        }
        let rcpt_replies: Vec<_> = replies[1..=rcpts.len()]
            .iter()
            .map(|r| if r.is_positive() { Ok(r.clone()) } else { Err(r.clone()) })
            .collect();
        let data = &replies[rcpts.len() + 1];
        let any_ok = rcpt_replies.iter().any(|r| r.is_ok());
        if data.code != 354 {
            if any_ok {
                return Err(ClientError::Reply {
                    stage: "DATA",
                    reply: data.clone(),
                });
            }
            self.reset().await?;
            return Ok(TxnResult {
                rcpts: rcpt_replies,
                data: None,
            });
        }
        let final_reply = if any_ok {
            self.send_body(&body.inline, body.ext.as_ref()).await?
        } else {
            self.send_body(b"", None).await?
        };
        Ok(TxnResult {
            rcpts: rcpt_replies,
            data: any_ok.then_some(final_reply),
        })
    }

    /// Starts a transaction step by step (inline proxy mode): MAIL, declaring `size` when the
    /// server takes SIZE and it is known, then the recipients, pipelined when the server allows it.
    /// Returns the reply to MAIL and one reply per recipient; when MAIL is refused, the recipients
    /// get that refusal too.
    pub async fn begin(
        &mut self,
        env: &Envelope,
        size: Option<u64>,
        rcpts: &[&Recipient],
    ) -> Result<(ParsedReply, Vec<ParsedReply>), ClientError> {
        let mut cmds = vec![self.mail_command(env, size)];
        cmds.extend(rcpts.iter().map(|r| self.rcpt_command(r)));
        let mut replies = self.send_commands(&cmds, true).await?;
        let mail = replies.remove(0);
        if !mail.is_positive() {
            replies.iter_mut().for_each(|r| *r = mail.clone());
        }
        Ok((mail, replies))
    }

    /// More recipients for the transaction [`begin`](Self::begin) opened: one reply each.
    pub async fn add_recipients(&mut self, rcpts: &[&Recipient]) -> Result<Vec<ParsedReply>, ClientError> {
        let cmds: Vec<String> = rcpts.iter().map(|r| self.rcpt_command(r)).collect();
        self.send_commands(&cmds, false).await
    }

    /// Sends the message of the open transaction: `DATA`, then the body when the server says 354.
    /// Returns the reply to the end of data, or the server's refusal of DATA itself.
    pub async fn send_data(&mut self, body: &[u8]) -> Result<ParsedReply, ClientError> {
        self.write(b"DATA\r\n").await?;
        let reply = self.read_reply(self.command_timeout).await?;
        if reply.code != 354 {
            return Ok(reply);
        }
        self.send_body(body, None).await
    }

    /// The dot-stuffed message and its terminator, after a 354; returns the reply to the end of
    /// data. `inline` is sent first, then the body file `ext` (if any), read and sent in bounded
    /// chunks, each write with its own `data_timeout`. If the file cannot be read, the
    /// terminator is never sent: the error ends the connection and the server drops the
    /// transaction.
    async fn send_body(&mut self, inline: &[u8], ext: Option<&(PathBuf, Ext)>) -> Result<ParsedReply, ClientError> {
        let mut stuffer = DotStuffer::default();
        let mut out = Vec::with_capacity(inline.len() + inline.len() / 64 + 8);
        stuffer.push(inline, &mut out);
        if let Some((path, at)) = ext {
            self.write_data(&out).await?;
            let mut file = tokio::fs::File::open(path).await?;
            file.seek(std::io::SeekFrom::Start(at.offset)).await?;
            let mut file = file.take(at.len);
            let mut chunk = vec![0; FILE_CHUNK];
            let mut sent = 0;
            while sent < at.len {
                let n = file.read(&mut chunk).await?;
                if n == 0 {
                    return Err(
                        std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "message body file is short").into(),
                    );
                }
                sent += n as u64;
                out.clear();
                stuffer.push(&chunk[..n], &mut out);
                self.write_data(&out).await?;
            }
            out.clear();
        }
        stuffer.finish(&mut out);
        self.write_data(&out).await?;
        self.read_reply(self.data_timeout).await
    }

    async fn write_data(&mut self, bytes: &[u8]) -> Result<(), ClientError> {
        timeout(self.data_timeout, self.io.write_all(bytes))
            .await
            .map_err(|_| ClientError::Timeout("data write"))??;
        Ok(())
    }

    /// Sends `cmds` and reads one reply each, in one write when the server pipelines. Without
    /// pipelining, when `mail_first` and MAIL is refused, the rest are not sent and get its reply.
    /// A `421` (the server closes the connection) is the reply to every command from there on.
    async fn send_commands(&mut self, cmds: &[String], mail_first: bool) -> Result<Vec<ParsedReply>, ClientError> {
        let mut replies: Vec<ParsedReply> = Vec::with_capacity(cmds.len());
        let closing = |replies: &mut Vec<ParsedReply>| {
            let last = replies.last().filter(|r| r.code == CLOSING).cloned();
            if let Some(last) = &last {
                replies.resize(cmds.len(), last.clone());
            }
            last.is_some()
        };
        if self.caps.pipelining {
            self.write(cmds.concat().as_bytes()).await?;
            for _ in cmds {
                replies.push(self.read_reply(self.command_timeout).await?);
                if closing(&mut replies) {
                    break;
                }
            }
            return Ok(replies);
        }
        for (i, cmd) in cmds.iter().enumerate() {
            self.write(cmd.as_bytes()).await?;
            let reply = self.read_reply(self.command_timeout).await?;
            let stop = mail_first && i == 0 && !reply.is_positive();
            replies.push(reply);
            if closing(&mut replies) {
                break;
            }
            if stop {
                while replies.len() < cmds.len() {
                    replies.push(replies[0].clone());
                }
                break;
            }
        }
        Ok(replies)
    }

    fn mail_command(&self, env: &Envelope, size: Option<u64>) -> String {
        let mut cmd = format!("MAIL FROM:<{}>", env.sender);
        if let (Some(size), Some(_)) = (size, self.caps.size) {
            cmd.push_str(&format!(" SIZE={size}"));
        }
        if env.eight_bit && self.caps.eight_bit_mime {
            cmd.push_str(" BODY=8BITMIME");
        }
        if env.smtputf8 && self.caps.smtputf8 {
            cmd.push_str(" SMTPUTF8");
        }
        if self.caps.dsn {
            match env.ret {
                Some(Ret::Full) => cmd.push_str(" RET=FULL"),
                Some(Ret::Hdrs) => cmd.push_str(" RET=HDRS"),
                None => {}
            }
            if let Some(envid) = &env.envid {
                cmd.push_str(&format!(" ENVID={envid}"));
            }
        }
        cmd.push_str("\r\n");
        cmd
    }

    fn rcpt_command(&self, r: &Recipient) -> String {
        let mut cmd = format!("RCPT TO:<{}>", r.address);
        if self.caps.dsn {
            if let Some(n) = r.notify {
                cmd.push_str(&format!(" NOTIFY={}", n.param()));
            }
            if let Some(o) = &r.orcpt {
                cmd.push_str(&format!(" ORCPT={o}"));
            }
        }
        cmd.push_str("\r\n");
        cmd
    }

    /// Whether the server can take this envelope at all (SMTPUTF8).
    pub fn can_take(&self, env: &Envelope) -> bool {
        !env.smtputf8 || self.caps.smtputf8
    }

    pub async fn reset(&mut self) -> Result<(), ClientError> {
        self.write(b"RSET\r\n").await?;
        self.expect("RSET", 2).await.map(|_| ())
    }

    pub async fn quit(mut self) {
        if self.write(b"QUIT\r\n").await.is_ok() {
            let _ = self.read_reply(Duration::from_secs(5)).await;
        }
        let _ = self.io.shutdown().await;
    }
}

/// A TCP connection, from `source` (any port) when given.
async fn tcp_connect(addr: SocketAddr, source: Option<IpAddr>) -> std::io::Result<TcpStream> {
    let Some(ip) = source else {
        return TcpStream::connect(addr).await;
    };
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.bind(SocketAddr::new(ip, 0))?;
    socket.connect(addr).await
}

fn server_name(host: &str, addr: SocketAddr) -> rustls_pki_types::ServerName<'static> {
    rustls_pki_types::ServerName::try_from(host.to_string())
        .unwrap_or_else(|_| rustls_pki_types::ServerName::IpAddress(addr.ip().into()))
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncBufReadExt, BufReader};
    use tokio::net::TcpListener;

    use super::*;
    use crate::config::Config;
    use crate::envelope::QueueId;

    /// A server that offers PIPELINING, accepts MAIL, answers the first RCPT with `421` and
    /// closes the connection without reading further: what a provider "too busy" does.
    async fn closing_server() -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (stream, _) = listener.accept().await.unwrap();
            let (read, mut write) = stream.into_split();
            let mut lines = BufReader::new(read).lines();
            write.write_all(b"220 busy.test\r\n").await.unwrap();
            while let Ok(Some(line)) = lines.next_line().await {
                let reply: &[u8] = match line.get(..4).unwrap_or("") {
                    "EHLO" => b"250-busy.test\r\n250 PIPELINING\r\n",
                    "MAIL" => b"250 2.1.0 Ok\r\n",
                    _ => b"421 4.7.0 Too many connections, try again later\r\n",
                };
                write.write_all(reply).await.unwrap();
                if reply.starts_with(b"421") {
                    return;
                }
            }
        });
        addr
    }

    /// Regression: a `421` to a pipelined RCPT was lost, the delivery failing with "unexpected
    /// end of file" when the reply to DATA was read from the closed connection. The 421 is what
    /// adaptive rules and bounce classes must see.
    #[tokio::test]
    async fn a_421_to_a_pipelined_rcpt_is_the_reply_for_the_transaction() {
        let config = Config::builtin();
        let addr = closing_server().await;
        let mut client = Client::connect(Connect {
            addr,
            host: "busy.test",
            helo: "gate.test",
            tls: TlsPolicy::None,
            tls_config: crate::tls::client_config(),
            cert_check: CertCheck::NotChecked,
            queue: &config.queue,
            auth: None,
            auth_unverified: false,
            source: None,
        })
        .await
        .expect("connect");
        let env = Envelope {
            id: QueueId(1),
            sender: crate::envelope::Sender::parse("a@example.test").unwrap(),
            recipients: vec![Recipient::parse("b@busy.test").unwrap()],
            received_at: 0,
            eight_bit: false,
            smtputf8: false,
            ret: None,
            envid: None,
            pool: None,
            scan: Vec::new(),
            stream: None,
            route: None,
        };
        let rcpts: Vec<&Recipient> = env.recipients.iter().collect();
        let body = Stored {
            inline: Arc::from(&b"Subject: x\r\n\r\nx\r\n"[..]),
            ext: None,
        };
        match client.deliver(&env, &rcpts, &body).await {
            Err(ClientError::Reply { stage, reply }) => {
                assert_eq!((stage, reply.code), ("RCPT", 421));
                assert_eq!(reply.status.as_deref(), Some("4.7.0"));
            }
            other => panic!("expected the 421, got {other:?}"),
        }
    }
}
