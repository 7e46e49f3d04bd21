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
