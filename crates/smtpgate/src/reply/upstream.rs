//! An upstream reply as data: its code, enhanced status, text, the command it answered and who
//! gave it (a server, or the gate itself for a failure it found on its own). Built once where the
//! delivery learns it, so nothing downstream (settling, bounces, feedback, adaptive shaping, logs)
//! has to parse a code back out of a formatted line.

use std::borrow::Cow;
use std::fmt;

use smtpgate_proto::ParsedReply;

/// An enhanced status code (RFC 3463) such as `5.1.1`, kept exactly as the server or the filter
/// gave it: what a DSN shows stays what was said, so it is not re-checked or re-formatted here.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct EnhancedStatus(String);

impl EnhancedStatus {
    /// The status as given.
    pub fn new(status: impl Into<String>) -> Self {
        EnhancedStatus(status.into())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for EnhancedStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The SMTP command a reply answered, or where in the delivery a local failure happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Command {
    /// Opening the connection (refused, timed out, reset).
    Connect,
    /// The server's greeting.
    Greeting,
    Ehlo,
    Helo,
    StartTls,
    Auth,
    Mail,
    Rcpt,
    Data,
    /// The reply after the message body.
    EndOfData,
    Rset,
    /// During the dialogue, at a point the failure does not tell (a broken connection, say).
    Unknown,
    /// Not about any command: DNS, a TLS policy, the spool, a filter, expiry in the queue.
    Outside,
}

impl Command {
    /// The command of an upstream client's stage name (`"RCPT"`, `"greeting"`, ...).
    pub fn of_stage(stage: &str) -> Command {
        match stage {
            "greeting" => Command::Greeting,
            "EHLO" => Command::Ehlo,
            "HELO" => Command::Helo,
            "STARTTLS" => Command::StartTls,
            "AUTH" => Command::Auth,
            "MAIL" => Command::Mail,
            "RCPT" => Command::Rcpt,
            "DATA" => Command::Data,
            "RSET" => Command::Rset,
            _ => Command::Unknown,
        }
    }
}

/// Who gave a reply.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Origin {
    /// A mail server's reply; `server` as the upstream client names it (`mx.example.org:25`).
    Remote { server: String },
    /// The gate's own finding: a connection refused, TLS required, a timeout, DNS, a filter.
    Local,
}

/// One reply to a delivery, or the gate's own reason it failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upstream {
    /// The reply code; for a local failure the code of the reply the gate gives for it, if any
    /// (`550` for a null MX, as a proxy listener answers at RCPT).
    pub code: Option<u16>,
    /// The enhanced status code the reply carried; a local failure always has one.
    pub status: Option<EnhancedStatus>,
    /// The words after the code and status (the lines of a multi-line reply joined by spaces),
    /// or the gate's own diagnostic.
    pub text: String,
    pub command: Command,
    pub origin: Origin,
}

impl Upstream {
    /// A server's reply to `command`.
    pub fn remote(
        code: u16,
        status: Option<EnhancedStatus>,
        text: impl Into<String>,
        command: Command,
        server: impl Into<String>,
    ) -> Self {
        Upstream {
            code: Some(code),
            status,
            text: text.into(),
            command,
            origin: Origin::Remote { server: server.into() },
        }
    }

    /// A reply as the upstream client read it off the wire.
    pub fn parsed(reply: &ParsedReply, command: Command, server: impl Into<String>) -> Self {
        let status = reply.status.clone().map(EnhancedStatus);
        Upstream::remote(reply.code, status, reply.text(), command, server)
    }

    /// A failure the gate found on its own, with no reply of its own (a connection that failed).
    pub fn local(status: &str, text: impl Into<String>, command: Command) -> Self {
        Upstream {
            code: None,
            status: Some(EnhancedStatus::new(status)),
            text: text.into(),
            command,
            origin: Origin::Local,
        }
    }

    /// A failure the gate found on its own and gives the reply `code` for (with `status`).
    pub fn local_reply(code: u16, status: &str, text: impl Into<String>, command: Command) -> Self {
        Upstream {
            code: Some(code),
            ..Upstream::local(status, text, command)
        }
    }

    pub fn is_remote(&self) -> bool {
        matches!(self.origin, Origin::Remote { .. })
    }

    /// The code a server replied with; `None` for the gate's own failures, whose code is the
    /// gate's answer and not anything a server said (classification and adaptive rules on codes
    /// are about servers).
    pub fn remote_code(&self) -> Option<u16> {
        self.code.filter(|_| self.is_remote())
    }

    /// The status for a DSN and for classification: the one given, else the class's `X.0.0`
    /// (`5.0.0` for a 5xx reply, `4.0.0` otherwise).
    pub fn dsn_status(&self) -> Cow<'_, str> {
        match &self.status {
            Some(s) => Cow::Borrowed(s.as_str()),
            None if self.code.is_some_and(|c| c / 100 == 5) => Cow::Borrowed("5.0.0"),
            None => Cow::Borrowed("4.0.0"),
        }
    }

    /// The reply as logs and classification see it: a server's reply line (`550 5.1.1 no such
    /// user`, or `550 no such user` without a status), or the gate's own words alone.
    pub fn line(&self) -> String {
        match (&self.origin, self.code, &self.status) {
            (Origin::Remote { .. }, Some(code), Some(status)) => format!("{code} {status} {}", self.text),
            (Origin::Remote { .. }, Some(code), None) => format!("{code} {}", self.text),
            _ => self.text.clone(),
        }
    }

    /// The reply as a bounce shows it: a server's reply line, or for the gate's own finding the
    /// reply it gives for it (`550 5.1.10 domain ... (null MX)`) where it gives one, else its words.
    pub fn dsn_line(&self) -> String {
        match (&self.origin, self.code) {
            (Origin::Local, Some(code)) => format!("{code} {} {}", self.dsn_status(), self.text),
            _ => self.line(),
        }
    }
}

impl fmt::Display for Upstream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.line())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_remote_reply_reads_as_its_line() {
        let r = Upstream::remote(
            550,
            Some(EnhancedStatus::new("5.1.1")),
            "no such user",
            Command::Rcpt,
            "mx:25",
        );
        assert_eq!(r.line(), "550 5.1.1 no such user");
        assert_eq!(r.dsn_line(), "550 5.1.1 no such user");
        assert_eq!(r.to_string(), "550 5.1.1 no such user");
        assert_eq!(r.remote_code(), Some(550));
    }

    #[test]
    fn a_reply_without_status_gets_its_class_default_for_dsns_only() {
        let r = Upstream::remote(451, None, "later", Command::EndOfData, "mx:25");
        assert_eq!(r.line(), "451 later");
        assert_eq!(r.dsn_status(), "4.0.0");
        let r = Upstream::remote(554, None, "no", Command::EndOfData, "mx:25");
        assert_eq!(r.dsn_status(), "5.0.0");
    }

    #[test]
    fn local_failures_keep_their_words_and_the_gates_reply() {
        let refused = Upstream::local("4.4.1", "connection refused", Command::Connect);
        assert_eq!(refused.line(), "connection refused");
        assert_eq!(refused.dsn_line(), "connection refused");
        assert_eq!(refused.remote_code(), None);
        let null = Upstream::local_reply(550, "5.1.10", "no mail (null MX)", Command::Outside);
        assert_eq!(null.line(), "no mail (null MX)");
        assert_eq!(null.dsn_line(), "550 5.1.10 no mail (null MX)");
        assert_eq!(null.remote_code(), None, "the gate's own code is not a server's reply");
    }

    #[test]
    fn a_multi_line_reply_joins_its_lines() {
        let parsed = smtpgate_proto::parse_reply(b"550-5.7.1 first\r\n550 5.7.1 second\r\n")
            .unwrap()
            .unwrap()
            .0;
        let r = Upstream::parsed(&parsed, Command::Rcpt, "mx:25");
        assert_eq!(r.line(), parsed.to_string_line());
        assert_eq!(r.line(), "550 5.7.1 first second");
        assert_eq!(r.status, Some(EnhancedStatus::new("5.7.1")));
    }
}
