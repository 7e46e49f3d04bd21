//! Building and reading RFC 5322 messages in tests.

/// One header field, unfolded: `name` as written, `value` with folding whitespace joined.
#[derive(Debug, Clone, PartialEq)]
pub struct Header {
    pub name: String,
    pub value: String,
}

/// A small, well-formed message with the given Message-ID (without angle brackets).
pub fn message(message_id: &str, subject: &str, body: &str) -> String {
    format!(
        "From: Alice <alice@example.test>\r\n\
         To: Bob <bob@example.org>\r\n\
         Subject: {subject}\r\n\
         Date: Thu, 01 Jan 2026 00:00:00 +0000\r\n\
         Message-ID: <{message_id}>\r\n\
         \r\n\
         {body}\r\n"
    )
}

/// A complaint report (ARF) to `fbl@example.test` about the message `original-1@example.test`
/// that `alice@example.test` sent to `victim@example.org`.
pub const ARF: &str = "From: feedback@isp.example\r\n\
To: fbl@example.test\r\n\
Subject: complaint\r\n\
MIME-Version: 1.0\r\n\
Content-Type: multipart/report; report-type=feedback-report; boundary=\"b1\"\r\n\
\r\n\
--b1\r\n\
Content-Type: text/plain\r\n\
\r\n\
This is an abuse report.\r\n\
--b1\r\n\
Content-Type: message/feedback-report\r\n\
\r\n\
Feedback-Type: abuse\r\n\
User-Agent: isp-fbl/1.0\r\n\
Version: 1\r\n\
Original-Mail-From: <alice@example.test>\r\n\
Original-Rcpt-To: <victim@example.org>\r\n\
Source-IP: 192.0.2.7\r\n\
\r\n\
--b1\r\n\
Content-Type: message/rfc822\r\n\
\r\n\
From: alice@example.test\r\n\
To: victim@example.org\r\n\
Message-ID: <original-1@example.test>\r\n\
Subject: offer\r\n\
\r\n\
Buy now.\r\n\
--b1--\r\n";

/// The header section of `raw` (up to the first empty line), unfolded.
/// Accepts CRLF or LF line endings (smtp-sink dumps with LF).
pub fn headers(raw: &str) -> Vec<Header> {
    let mut out: Vec<Header> = Vec::new();
    for line in raw.split('\n').map(|l| l.strip_suffix('\r').unwrap_or(l)) {
        if line.is_empty() {
            break;
        }
        if line.starts_with([' ', '\t']) {
            if let Some(last) = out.last_mut() {
                last.value.push(' ');
                last.value.push_str(line.trim());
            }
            continue;
        }
        if let Some((name, value)) = line.split_once(':') {
            out.push(Header {
                name: name.trim().to_string(),
                value: value.trim().to_string(),
            });
        }
    }
    out
}

/// The values of every header named `name` (case-insensitive), in order.
pub fn header_values(raw: &str, name: &str) -> Vec<String> {
    headers(raw)
        .into_iter()
        .filter(|h| h.name.eq_ignore_ascii_case(name))
        .map(|h| h.value)
        .collect()
}
