//! Headers smtpgate adds to a message: `Received:` (the session writes it as the message starts)
//! and `Message-ID:`/`Date:` on submission (added at end of data, once the header section is known).

use crate::datetime::{now_unix, rfc5322};
use crate::envelope::QueueId;
use crate::message::Headers;

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

/// Headers missing from a submitted message (`Message-ID:`, `Date:`), as fields and ready to
/// insert.
pub fn missing_submission_headers(headers: &Headers, id: QueueId, host: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    if headers.count("message-id") == 0 {
        out.push(("Message-ID".to_owned(), format!("<{id}.{}@{host}>", now_unix())));
    }
    if headers.count("date") == 0 {
        out.push(("Date".to_owned(), rfc5322(now_unix())));
    }
    out
}

/// Adds the `Message-ID:` and `Date:` a submitted message lacks, after the session's own
/// `Received:` (so they are part of the author's header section, not of the trace), to the
/// message and to its parsed view.
pub fn add_submission_headers(head: &mut Vec<u8>, headers: &mut Headers, id: QueueId, host: &str) {
    let extra = missing_submission_headers(headers, id, host);
    if extra.is_empty() {
        return;
    }
    let bytes: Vec<u8> = extra
        .iter()
        .flat_map(|(name, value)| format!("{name}: {value}\r\n").into_bytes())
        .collect();
    let at = received_len(head);
    let len = bytes.len();
    head.splice(at..at, bytes);
    headers.inserted(1, extra, len);
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
        let mut head = b"Received: from x\r\n\tby y\r\nSubject: x\r\n\r\nMessage-ID: in body\r\n".to_vec();
        let mut headers = Headers::parse(&head);
        add_submission_headers(&mut head, &mut headers, id, "h");
        let text = String::from_utf8_lossy(&head);
        assert!(
            text.starts_with("Received: from x\r\n\tby y\r\nMessage-ID: <0000000000000001."),
            "{text}"
        );
        assert!(text.contains("\r\nDate: "), "{text}");
        assert_eq!(headers, Headers::parse(&head), "the view follows the message");
        let mut complete = b"message-id: <a@b>\r\nDATE: today\r\n\r\nbody".to_vec();
        let mut headers = Headers::parse(&complete);
        add_submission_headers(&mut complete, &mut headers, id, "h");
        assert_eq!(complete, b"message-id: <a@b>\r\nDATE: today\r\n\r\nbody");
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
