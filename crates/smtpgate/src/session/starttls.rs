//! STARTTLS (RFC 3207).
//!
//! Architecture invariant: bytes the client pipelined after STARTTLS in plaintext are thrown away,
//! never read as commands after the handshake (CVE-2011-0411), and the session starts over.

use smtpgate_proto::Reply;

use super::{Flow, Session, Txn};
use crate::io::TlsInfo;

impl Session {
    pub(super) async fn starttls(&mut self) -> Flow {
        let Some(acceptor) = self.listener.tls.clone() else {
            return self.error(Reply::not_implemented());
        };
        if self.tls.is_some() {
            return self.error(Reply::bad_sequence("TLS already active"));
        }
        if self.helo.is_none() {
            return self.error(Reply::bad_sequence("send EHLO first"));
        }
        self.conn.reply(&Reply::ready_tls());
        if self.conn.flush().await.is_err() {
            return Flow::Close;
        }
        let injected = self.conn.discard_buffered();
        if injected > 0 {
            tracing::warn!(client = %self.peer, bytes = injected, "discarded plaintext pipelined after STARTTLS");
        }
        let io = std::mem::replace(&mut self.conn.io, crate::io::placeholder());
        let limit = self.listener.config.command_timeout;
        match tokio::time::timeout(limit, acceptor.accept(io)).await {
            Ok(Ok(stream)) => {
                self.tls = Some(TlsInfo::from_conn(stream.get_ref().1));
                self.conn.io = Box::new(stream);
                self.helo = None;
                self.user = None;
                self.txn = Txn::Idle;
                Flow::Continue
            }
            Ok(Err(e)) => {
                tracing::info!(client = %self.peer, error = %e, "TLS handshake failed");
                Flow::Close
            }
            Err(_) => Flow::Close,
        }
    }
}
