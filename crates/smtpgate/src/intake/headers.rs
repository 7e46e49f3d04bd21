//! Headers smtpgate adds to a message: `Received:` (the session writes it as the message starts)
//! and `Message-ID:`/`Date:` on submission (added at end of data, once the header section is known);
//! and the count of `Received:` fields that stops mail loops.

use crate::datetime::{now_unix, rfc5322};
use crate::envelope::QueueId;
use crate::message::starts_with_ci;

/// What a `Received:` header says about the session.
pub struct Trace<'a> {
    pub helo: &'a str,
    pub ip: std::net::IpAddr,
    pub host: &'a str,
    pub protocol: &'static str,
    pub id: QueueId,
    pub tls: Option<(&'a str, &'a str)>,
    pub single_rcpt: Option<&'a str>,
}

/// Builds the `Received:` header (RFC 5321 4.4, protocol names of RFC 3848).
pub fn received(t: &Trace<'_>) -> String {
    let helo: String = t
        .helo
        .chars()
        .filter(|c| !c.is_control() && *c != '(' && *c != ')')
        .take(100)
        .collect();
    let mut h = format!(
        "Received: from {helo} ([{}])\r\n\tby {} (smtpgate) with {} id {}",
        t.ip, t.host, t.protocol, t.id
    );
    if let Some((version, cipher)) = t.tls {
        h.push_str(&format!("\r\n\t(using {version} with cipher {cipher})"));
    }
    if let Some(rcpt) = t.single_rcpt {
        h.push_str(&format!("\r\n\tfor <{rcpt}>"));
    }
    h.push_str(&format!(";\r\n\t{}\r\n", rfc5322(now_unix())));
    h
}

/// The protocol keyword: SMTP, ESMTP, ESMTPS, ESMTPA, ESMTPSA.
pub fn protocol(extended: bool, tls: bool, auth: bool) -> &'static str {
    match (extended, tls, auth) {
        (false, _, _) => "SMTP",
        (true, false, false) => "ESMTP",
        (true, true, false) => "ESMTPS",
        (true, false, true) => "ESMTPA",
        (true, true, true) => "ESMTPSA",
    }
}

/// Headers missing from a submitted message (`Message-ID:`, `Date:`), ready to insert.
pub fn missing_submission_headers(message: &[u8], id: QueueId, host: &str) -> String {
    let fields = crate::message::header_section(message).fields;
    let has = |prefix: &[u8]| fields.iter().any(|f| starts_with_ci(f.first_line(), prefix));
    let (has_id, has_date) = (has(b"message-id:"), has(b"date:"));
    let mut out = String::new();
    if !has_id {
        out.push_str(&format!("Message-ID: <{id}.{}@{host}>\r\n", now_unix()));
    }
    if !has_date {
        out.push_str(&format!("Date: {}\r\n", rfc5322(now_unix())));
    }
    out
}

/// Adds the `Message-ID:` and `Date:` a submitted message lacks, after the session's own
/// `Received:` (so they are part of the author's header section, not of the trace).
pub fn add_submission_headers(head: &mut Vec<u8>, id: QueueId, host: &str) {
    let at = received_len(head);
    let extra = missing_submission_headers(&head[at..], id, host);
    head.splice(at..at, extra.into_bytes());
}

/// How many `Received:` fields the header section holds (ours, just added, included).
pub fn received_count(body: &[u8]) -> usize {
    let end = body
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map_or(body.len(), |i| i + 2);
    body[..end]
        .split(|&b| b == b'\n')
        .filter(|line| line.len() >= 9 && line[..9].eq_ignore_ascii_case(b"received:"))
        .count()
}

/// Length of the leading `Received:` header that the session wrote (it ends at the first line that
/// does not start with a tab).
fn received_len(body: &[u8]) -> usize {
    let mut pos = 0;
    while let Some(i) = body[pos..].windows(2).position(|w| w == b"\r\n") {
        pos += i + 2;
        if body.get(pos) != Some(&b'\t') {
            return pos;
        }
    }
    body.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn adds_only_what_is_missing() {
        let id = QueueId(1);
        let both = missing_submission_headers(b"Subject: x\r\n\r\nMessage-ID: in body\r\n", id, "h");
        assert!(both.starts_with("Message-ID: <0000000000000001."));
        assert!(both.contains("\r\nDate: "));
        let none = missing_submission_headers(b"message-id: <a@b>\r\nDATE: today\r\n\r\nbody", id, "h");
        assert_eq!(none, "");
    }

    #[test]
    fn received_names_protocol_and_tls() {
        let t = Trace {
            helo: "client(evil)\r\nX-Injected: 1",
            ip: "192.0.2.1".parse().unwrap(),
            host: "gate.test",
            protocol: protocol(true, true, true),
            id: QueueId(2),
            tls: Some(("TLSv1.3", "TLS13_AES_128_GCM_SHA256")),
            single_rcpt: Some("a@b"),
        };
        let h = received(&t);
        assert!(h.starts_with("Received: from clientevilX-Injected: 1 ([192.0.2.1])\r\n\tby gate.test (smtpgate) with ESMTPSA id 0000000000000002"));
        assert!(h.contains("(using TLSv1.3 with cipher TLS13_AES_128_GCM_SHA256)"));
        assert!(h.contains("for <a@b>;"));
        assert_eq!(
            h.matches("\r\n").count(),
            h.matches("\r\n\t").count() + 1,
            "no header injection"
        );
    }
}
