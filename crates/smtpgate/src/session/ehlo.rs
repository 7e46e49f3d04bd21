//! EHLO and HELO: the extensions this session offers.

use smtpgate_proto::Reply;

use super::{Flow, Helo, Session, Txn};

impl Session {
    pub(super) async fn ehlo(&mut self, name: String, extended: bool) -> Flow {
        if name.trim().is_empty() {
            return self.error(Reply::syntax("EHLO/HELO needs a domain or address literal"));
        }
        let reply = if extended {
            Reply::ehlo(&self.hostname(), &name, &self.keywords())
        } else {
            Reply::helo(&self.hostname())
        };
        self.helo = Some(Helo { name, extended });
        self.txn = Txn::Idle;
        if let Some(r) = self.filter_ehlo().await {
            self.helo = None;
            return self.error(r);
        }
        self.respond(reply)
    }

    fn keywords(&self) -> Vec<String> {
        let cfg = &self.listener.config;
        let mut k = vec![
            "PIPELINING".to_string(),
            format!("SIZE {}", cfg.max_message_size),
            "8BITMIME".into(),
            "SMTPUTF8".into(),
            "ENHANCEDSTATUSCODES".into(),
            "CHUNKING".into(),
            "DSN".into(),
        ];
        if self.listener.tls.is_some() && self.tls.is_none() {
            k.push("STARTTLS".into());
        }
        if self.auth_offered() {
            k.push("AUTH PLAIN LOGIN".into());
        }
        k.push("HELP".into());
        k
    }
}
