//! Delivery status notifications (RFC 3464, multipart/report of RFC 6522) for failed recipients.

use crate::datetime::{now_unix, rfc5322};
use crate::envelope::{Envelope, Recipient, Ret};
use crate::reply::{Origin, Upstream};

/// One recipient that failed for good, and why.
#[derive(Debug, Clone)]
pub struct Failure {
    pub recipient: Recipient,
    /// Why, and who said so; its [`Upstream::dsn_status`] is the DSN's `Status`.
    pub reply: Upstream,
    /// The server that said it, if any.
    pub remote: Option<String>,
}

/// The `Diagnostic-Code` type of smtpgate's own diagnostics (RFC 3464 allows `X-` types).
pub const LOCAL_DIAGNOSTIC_TYPE: &str = "X-Smtpgate";

/// The value of the `Diagnostic-Code` field for `reply`.
///
/// RFC 3464 (2.3.6) keeps the `smtp` diagnostic type for a reply from a remote SMTP server, so
/// only a remote reply is written `Diagnostic-Code: smtp; ...`. What smtpgate found on its own (a
/// null MX, a domain that does not exist, an expired message, a filter's refusal) goes under its
/// own type, as Postfix writes `X-Postfix; ...`: `Diagnostic-Code: X-Smtpgate; ...`, with the
/// reply smtpgate gives for it where it gives one (`550 5.1.10 ...` for a null MX, as a proxy
/// listener answers at RCPT).
pub fn diagnostic_code(reply: &Upstream) -> String {
    match reply.origin {
        Origin::Remote { .. } => format!("smtp; {}", reply.dsn_line()),
        Origin::Local => format!("{LOCAL_DIAGNOSTIC_TYPE}; {}", reply.dsn_line()),
    }
}

/// Builds the bounce message text for `failed` recipients of the message `env`/`body`.
pub fn build(hostname: &str, env: &Envelope, body: &[u8], failed: &[Failure], boundary_seed: u64) -> Vec<u8> {
    let boundary = format!("{boundary_seed:016X}/{hostname}");
    let mut m = String::with_capacity(2048);
    m.push_str(&format!("From: Mail Delivery System <MAILER-DAEMON@{hostname}>\r\n"));
    m.push_str(&format!("To: <{}>\r\n", env.sender));
    m.push_str("Subject: Undelivered Mail Returned to Sender\r\n");
    m.push_str(&format!("Date: {}\r\n", rfc5322(now_unix())));
    m.push_str(&format!("Message-ID: <{boundary_seed:016X}.dsn@{hostname}>\r\n"));
    m.push_str("Auto-Submitted: auto-replied\r\nMIME-Version: 1.0\r\n");
    m.push_str(&format!(
        "Content-Type: multipart/report; report-type=delivery-status;\r\n\tboundary=\"{boundary}\"\r\n\r\n"
    ));
    m.push_str("This is a MIME-encapsulated message.\r\n\r\n");
    human_part(&mut m, hostname, &boundary, failed);
    status_part(&mut m, hostname, &boundary, env, failed);
    let mut out = m.into_bytes();
    original_part(&mut out, &boundary, env, body);
    out.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
    out
}

fn human_part(m: &mut String, hostname: &str, boundary: &str, failed: &[Failure]) {
    m.push_str(&format!(
        "--{boundary}\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n"
    ));
    m.push_str(&format!("This is the mail system at host {hostname}.\r\n\r\n"));
    m.push_str("Your message could not be delivered to one or more recipients.\r\n\r\n");
    for f in failed {
        m.push_str(&format!("<{}>: {}\r\n", f.recipient.address, f.reply.dsn_line()));
    }
    m.push_str("\r\n");
}

fn status_part(m: &mut String, hostname: &str, boundary: &str, env: &Envelope, failed: &[Failure]) {
    m.push_str(&format!(
        "--{boundary}\r\nContent-Type: message/delivery-status\r\n\r\n"
    ));
    m.push_str(&format!("Reporting-MTA: dns; {hostname}\r\n"));
    m.push_str(&format!("X-Smtpgate-Queue-ID: {}\r\n", env.id));
    if let Some(envid) = &env.envid {
        m.push_str(&format!("Original-Envelope-Id: {envid}\r\n"));
    }
    m.push_str(&format!("Arrival-Date: {}\r\n", rfc5322(env.received_at)));
    for f in failed {
        m.push_str("\r\n");
        if let Some(orcpt) = &f.recipient.orcpt {
            m.push_str(&format!("Original-Recipient: {}\r\n", orcpt.replacen(';', "; ", 1)));
        }
        m.push_str(&format!("Final-Recipient: rfc822; {}\r\n", f.recipient.address));
        m.push_str(&format!("Action: failed\r\nStatus: {}\r\n", f.reply.dsn_status()));
        if let Some(remote) = &f.remote {
            m.push_str(&format!("Remote-MTA: dns; {remote}\r\n"));
        }
        m.push_str(&format!("Diagnostic-Code: {}\r\n", diagnostic_code(&f.reply)));
    }
    m.push_str("\r\n");
}

fn original_part(out: &mut Vec<u8>, boundary: &str, env: &Envelope, body: &[u8]) {
    let headers_only = env.ret == Some(Ret::Hdrs);
    let (ctype, content) = if headers_only {
        ("text/rfc822-headers", header_block(body))
    } else {
        ("message/rfc822", body)
    };
    out.extend_from_slice(format!("--{boundary}\r\nContent-Type: {ctype}\r\n\r\n").as_bytes());
    out.extend_from_slice(content);
    if !content.ends_with(b"\r\n") {
        out.extend_from_slice(b"\r\n");
    }
}

/// The header section of a message, up to and including the empty line.
pub fn header_block(body: &[u8]) -> &[u8] {
    match body.windows(4).position(|w| w == b"\r\n\r\n") {
        Some(i) => &body[..i + 2],
        None => body,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::envelope::QueueId;
    use crate::reply::{Command, EnhancedStatus};

    /// A server's reply to RCPT.
    fn remote_reply(code: u16, status: &str, text: &str) -> Upstream {
        Upstream::remote(
            code,
            Some(EnhancedStatus::new(status)),
            text,
            Command::Rcpt,
            "mx.example.test:25",
        )
    }

    #[test]
    fn report_names_each_failed_recipient() {
        let env = Envelope {
            id: QueueId(7),
            sender: crate::envelope::Sender::parse("s@example.test").unwrap(),
            recipients: vec![Recipient::parse("r@example.test").unwrap()],
            received_at: 0,
            eight_bit: false,
            smtputf8: false,
            ret: Some(Ret::Hdrs),
            envid: Some("E1".into()),
            pool: None,
            scan: Vec::new(),
            stream: None,
            route: None,
        };
        let failed = [Failure {
            recipient: Recipient::parse("r@example.test").unwrap(),
            reply: remote_reply(550, "5.1.1", "no such user"),
            remote: Some("mx.example.test".into()),
        }];
        let body = b"Subject: hi\r\n\r\nsecret body\r\n";
        let out = String::from_utf8(build("gate.test", &env, body, &failed, 9)).unwrap();
        assert!(out.contains("report-type=delivery-status"));
        assert!(out.contains("Final-Recipient: rfc822; r@example.test\r\nAction: failed\r\nStatus: 5.1.1"));
        assert!(out.contains("Original-Envelope-Id: E1"));
        assert!(out.contains("text/rfc822-headers\r\n\r\nSubject: hi\r\n"));
        assert!(!out.contains("secret body"), "RET=HDRS returns headers only");
        assert!(
            out.contains("\r\nDiagnostic-Code: smtp; 550 5.1.1 no such user\r\n"),
            "{out}"
        );
    }

    /// Regression: a null MX was reported as `Diagnostic-Code: smtp; domain ... does not accept
    /// mail`, local text under the type RFC 3464 keeps for a remote server's reply.
    #[test]
    fn smtpgates_own_findings_are_not_smtp_diagnostics() {
        let env = Envelope {
            id: QueueId(8),
            sender: crate::envelope::Sender::parse("s@example.test").unwrap(),
            recipients: vec![
                Recipient::parse("r@nullmx.test").unwrap(),
                Recipient::parse("t@example.test").unwrap(),
            ],
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
        let failed = [
            Failure {
                recipient: Recipient::parse("r@nullmx.test").unwrap(),
                reply: Upstream::local_reply(
                    550,
                    "5.1.10",
                    "domain nullmx.test does not accept mail (null MX)",
                    Command::Outside,
                ),
                remote: None,
            },
            Failure {
                recipient: Recipient::parse("t@example.test").unwrap(),
                reply: Upstream::local(
                    "4.4.7",
                    "message expired in queue; last error: connection refused",
                    Command::Outside,
                ),
                remote: None,
            },
        ];
        let out = String::from_utf8(build("gate.test", &env, b"Subject: hi\r\n\r\nx\r\n", &failed, 9)).unwrap();
        assert!(
            out.contains(
                "Final-Recipient: rfc822; r@nullmx.test\r\nAction: failed\r\nStatus: 5.1.10\r\n\
                 Diagnostic-Code: X-Smtpgate; 550 5.1.10 domain nullmx.test does not accept mail (null MX)\r\n"
            ),
            "{out}"
        );
        assert!(
            out.contains("Diagnostic-Code: X-Smtpgate; message expired in queue; last error: connection refused\r\n"),
            "{out}"
        );
        assert!(!out.contains("Diagnostic-Code: smtp;"), "{out}");
        assert!(
            out.contains("<r@nullmx.test>: 550 5.1.10 domain nullmx.test does not accept mail (null MX)\r\n"),
            "{out}"
        );
    }
}
