//! Reports that come back after delivery: abuse complaints in the Abuse Reporting Format (RFC 5965)
//! and delivery status notifications (RFC 3464), both `multipart/report` messages (RFC 6522).
//!
//! `mail-parser` finds the MIME structure; the machine-readable parts (`message/feedback-report`,
//! `message/delivery-status`) are blocks of header-like fields that this module reads itself:
//! continuation lines unfolded, field names case-insensitive, CRLF or LF line endings; no value it
//! returns holds a CR or an LF (they reach logs and the suppression list). Anything
//! that is not a report of the asked type, or lacks the report's machine-readable part, is `None`.
//! No input makes these functions panic.
//!
//! ```
//! let dsn = b"Content-Type: multipart/report; report-type=delivery-status; boundary=b\r\n\r\n\
//!     --b\r\nContent-Type: message/delivery-status\r\n\r\n\
//!     Reporting-MTA: dns; mx.example.net\r\n\r\n\
//!     Final-Recipient: rfc822; User@Example.com\r\nAction: failed\r\nStatus: 5.1.1\r\n\r\n--b--\r\n";
//! let dsn = smtpgate::report::parse_dsn(dsn).unwrap();
//! assert_eq!(dsn.recipients[0].recipient, "user@example.com");
//! assert_eq!(dsn.recipients[0].status, "5.1.1");
//! ```

use mail_parser::{Header, HeaderName, HeaderValue, Message, MessageParser, MessagePart, MimeHeaders, PartType};

/// An abuse complaint in the Abuse Reporting Format (RFC 5965: `multipart/report;
/// report-type=feedback-report`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Complaint {
    /// `Feedback-Type`, lower-cased: `abuse`, `fraud`, `virus`, `other`, ...
    pub feedback_type: String,
    /// The complaining recipients: the `Original-Rcpt-To` values, lower-cased and without `<>`; when
    /// there are none (many providers redact them), the `To:` addresses of the attached original
    /// message (`message/rfc822` or `text/rfc822-headers`). Without duplicates, in order.
    pub recipients: Vec<String>,
    /// `Original-Mail-From`, without `<>`; `None` when absent or the null sender.
    pub original_sender: Option<String>,
    /// `Source-IP`, without `[]`.
    pub source_ip: Option<String>,
    /// The `Message-ID` of the attached original, without `<>`.
    pub original_message_id: Option<String>,
}

/// A delivery status notification (RFC 3464: `multipart/report; report-type=delivery-status`),
/// typically one that arrived after the fact from a server that had accepted the message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dsn {
    /// `Original-Envelope-Id` (the `ENVID` the message was sent with), as written.
    pub envelope_id: Option<String>,
    /// `Reporting-MTA`, the name after its type (`dns;`).
    pub reporting_mta: Option<String>,
    /// One entry per per-recipient block that names a recipient and an action; never empty.
    pub recipients: Vec<DsnRecipient>,
    /// The `Message-ID` of the returned message (`message/rfc822` or `text/rfc822-headers`),
    /// without `<>`.
    pub original_message_id: Option<String>,
}

/// What a [`Dsn`] says about one recipient.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DsnRecipient {
    /// `Final-Recipient` (or `Original-Recipient` when it is missing), after its type (`rfc822;`),
    /// without `<>`, lower-cased.
    pub recipient: String,
    /// `Action`, lower-cased: `failed`, `delayed`, `delivered`, `relayed` or `expanded`.
    pub action: String,
    /// `Status`, the enhanced status code alone, e.g. `5.1.1`; empty when the field is missing.
    pub status: String,
    /// `Diagnostic-Code` after its type (`smtp;`), unfolded and trimmed.
    pub diagnostic: Option<String>,
    /// `Remote-MTA`, the name after its type (`dns;`).
    pub remote_mta: Option<String>,
}

/// Parses an ARF abuse complaint. `None` when `message` is not a `feedback-report` report, or has
/// no `message/feedback-report` part, or that part has no `Feedback-Type`.
pub fn parse_complaint(message: &[u8]) -> Option<Complaint> {
    let parsed = MessageParser::default().parse(message)?;
    let report = Report::find(&parsed, &["feedback-report"])?;
    let fields = Fields::parse(&report.text_of(&[("message", "feedback-report")])?);
    let original = report.original();
    let mut recipients: Vec<String> = fields.all("original-rcpt-to").map(address).collect();
    if recipients.iter().all(String::is_empty) {
        recipients = original.to;
    }
    recipients.retain(|r| !r.is_empty());
    dedup(&mut recipients);
    Some(Complaint {
        feedback_type: first_word(fields.get("feedback-type")?)?.to_ascii_lowercase(),
        recipients,
        original_sender: fields.get("original-mail-from").map(strip_angles).and_then(non_empty),
        source_ip: fields
            .get("source-ip")
            .map(|ip| ip.trim_matches(['[', ']']))
            .and_then(non_empty),
        original_message_id: original.message_id,
    })
}

/// Parses a delivery status notification. `None` when `message` is not a `delivery-status` report,
/// or has no `message/delivery-status` part, or that part names no recipient with an action.
pub fn parse_dsn(message: &[u8]) -> Option<Dsn> {
    let parsed = MessageParser::default().parse(message)?;
    let report = Report::find(&parsed, &["delivery-status", "global-delivery-status"])?;
    let status = report.text_of(&[("message", "delivery-status"), ("message", "global-delivery-status")])?;
    let mut blocks = Fields::blocks(&status).into_iter().peekable();
    let per_message = blocks.next_if(|b| !b.is_per_recipient()).unwrap_or_default();
    let recipients: Vec<DsnRecipient> = blocks.filter_map(|b| DsnRecipient::from_fields(&b)).collect();
    if recipients.is_empty() {
        return None;
    }
    Some(Dsn {
        envelope_id: per_message.get("original-envelope-id").and_then(non_empty),
        reporting_mta: per_message.get("reporting-mta").and_then(typed_name),
        recipients,
        original_message_id: report.original().message_id,
    })
}

impl DsnRecipient {
    fn from_fields(fields: &Fields) -> Option<DsnRecipient> {
        let named = fields.get("final-recipient").map(address).filter(|a| !a.is_empty());
        let recipient = named.or_else(|| fields.get("original-recipient").map(address))?;
        Some(DsnRecipient {
            recipient: non_empty(&recipient)?,
            action: first_word(fields.get("action")?)?.to_ascii_lowercase(),
            status: fields.get("status").and_then(first_word).unwrap_or_default().to_owned(),
            diagnostic: fields.get("diagnostic-code").map(after_type).and_then(non_empty),
            remote_mta: fields.get("remote-mta").and_then(typed_name),
        })
    }
}

/// The content types a report's copy of the original message comes as.
const ORIGINAL_TYPES: &[(&str, &str)] = &[
    ("message", "rfc822"),
    ("message", "global"),
    ("text", "rfc822-headers"),
    ("message", "rfc822-headers"),
    ("message", "global-headers"),
];

/// The children of a `multipart/report` part.
struct Report<'a, 'x> {
    message: &'a Message<'x>,
    children: &'a [u32],
}

/// What a report tells about the message it is about.
#[derive(Default)]
struct Original {
    /// Every address in its `To:` fields, lower-cased.
    to: Vec<String>,
    message_id: Option<String>,
}

impl<'a, 'x> Report<'a, 'x> {
    /// The first `multipart/report` part (outside attached messages) whose `report-type` is one of
    /// `report_types`.
    fn find(message: &'a Message<'x>, report_types: &[&str]) -> Option<Self> {
        message.parts.iter().find_map(|part| {
            let of_type = part.content_type()?.attribute("report-type")?;
            let wanted = part.is_content_type("multipart", "report")
                && report_types.iter().any(|t| t.eq_ignore_ascii_case(of_type.trim()));
            match &part.body {
                PartType::Multipart(children) if wanted => Some(Report { message, children }),
                _ => None,
            }
        })
    }

    /// The first child of one of `types`.
    fn child(&self, types: &[(&str, &str)]) -> Option<&'a MessagePart<'x>> {
        let message = self.message;
        let mut parts = self.children.iter().filter_map(|&id| message.parts.get(id as usize));
        parts.find(|part| types.iter().any(|(t, s)| part.is_content_type(t, s)))
    }

    /// The (decoded) content of the first child of one of `types`, as text.
    fn text_of(&self, types: &[(&str, &str)]) -> Option<String> {
        Some(String::from_utf8_lossy(self.child(types)?.contents()).into_owned())
    }

    /// The attached original message or its header section; empty when there is none.
    fn original(&self) -> Original {
        let Some(part) = self.child(ORIGINAL_TYPES) else {
            return Original::default();
        };
        match &part.body {
            PartType::Message(message) => Original::of(message),
            _ => MessageParser::default()
                .parse(part.contents())
                .map(|message| Original::of(&message))
                .unwrap_or_default(),
        }
    }
}

impl Original {
    fn of(message: &Message<'_>) -> Original {
        let headers: &[Header<'_>] = message.parts.first().map_or(&[], |root| &root.headers);
        let to = headers
            .iter()
            .filter(|h| h.name == HeaderName::To)
            .filter_map(|h| h.value.as_address())
            .flat_map(|list| list.iter())
            .filter_map(|addr| addr.address())
            .map(str::to_lowercase)
            .filter(|a| a.contains('@') && !a.contains(|c: char| c.is_whitespace() || c.is_control()))
            .collect();
        let message_id = headers.iter().rev().find(|h| h.name == HeaderName::MessageId);
        Original {
            to,
            // mail-parser hands back an id without `<>` as the raw text, folding included.
            message_id: message_id
                .and_then(|h| first_text(&h.value))
                .map(strip_angles)
                .and_then(first_word)
                .map(str::to_owned),
        }
    }
}

/// The first text in a parsed header value (a `Message-ID` is `Text`, or `TextList` when it
/// held several ids).
fn first_text<'v>(value: &'v HeaderValue<'_>) -> Option<&'v str> {
    match value {
        HeaderValue::Text(text) => Some(text),
        HeaderValue::TextList(list) => list.first().map(|t| t.as_ref()),
        _ => None,
    }
}

/// One block of header-like fields: (lower-cased name, unfolded value), in order.
#[derive(Debug, Default)]
struct Fields(Vec<(String, String)>);

impl Fields {
    /// The fields of `text`, read as a single block (blank lines ignored).
    fn parse(text: &str) -> Fields {
        let mut all = Fields::default();
        for block in Fields::blocks(text) {
            all.0.extend(block.0);
        }
        all
    }

    /// The blocks of fields in `text`, separated by blank lines; empty blocks are left out. A bare
    /// CR is no line ending (RFC 5322 2.2): it is white space, so no value holds a CR or an LF.
    fn blocks(text: &str) -> Vec<Fields> {
        let mut blocks = vec![Fields::default()];
        for line in text.lines() {
            let line = &line.replace('\r', " ");
            let Some(current) = blocks.last_mut() else { break };
            if line.trim().is_empty() {
                if !current.0.is_empty() {
                    blocks.push(Fields::default());
                }
            } else if line.starts_with([' ', '\t']) {
                if let Some((_, value)) = current.0.last_mut() {
                    value.push(' ');
                    value.push_str(line.trim());
                }
            } else if let Some((name, value)) = line.split_once(':') {
                current
                    .0
                    .push((name.trim().to_ascii_lowercase(), value.trim().to_owned()));
            }
        }
        blocks.retain(|b| !b.0.is_empty());
        blocks
    }

    /// The value of the first field called `name` (lower-case).
    fn get(&self, name: &str) -> Option<&str> {
        self.all(name).next()
    }

    /// The values of every field called `name` (lower-case), in order.
    fn all<'s>(&'s self, name: &str) -> impl Iterator<Item = &'s str> {
        self.0.iter().filter(move |(n, _)| n == name).map(|(_, v)| v.as_str())
    }

    /// Whether this block is about one recipient rather than the whole message.
    fn is_per_recipient(&self) -> bool {
        self.get("reporting-mta").is_none()
            && (self.get("final-recipient").is_some() || self.get("original-recipient").is_some())
    }
}

/// The part of a typed value after its type: `rfc822; a@b` → `a@b`, `smtp; 550 ...` → `550 ...`.
/// A value without a type (nothing but letters, digits and `-` before the first `;`) is returned
/// whole. Trimmed.
fn after_type(value: &str) -> &str {
    let is_type = |t: &str| !t.is_empty() && t.chars().all(|c| c.is_ascii_alphanumeric() || c == '-');
    match value.split_once(';') {
        Some((kind, rest)) if is_type(kind.trim()) => rest.trim(),
        _ => value.trim(),
    }
}

/// The host name in a typed MTA field (`dns; mx.example.net (comment)` → `mx.example.net`).
fn typed_name(value: &str) -> Option<String> {
    first_word(after_type(value)).map(str::to_owned)
}

/// A typed address field as an address: after the type, without `<>`, lower-cased.
fn address(value: &str) -> String {
    strip_angles(after_type(value)).to_lowercase()
}

/// `value` trimmed, without surrounding `<>`.
fn strip_angles(value: &str) -> &str {
    let value = value.trim();
    value
        .strip_prefix('<')
        .and_then(|v| v.strip_suffix('>'))
        .unwrap_or(value)
        .trim()
}

/// The first white-space-separated word of `value` (what precedes a comment).
fn first_word(value: &str) -> Option<&str> {
    value.split_whitespace().next()
}

/// `value` trimmed, unless that leaves nothing.
fn non_empty(value: &str) -> Option<String> {
    let value = value.trim();
    (!value.is_empty()).then(|| value.to_owned())
}

/// Removes later duplicates, keeping the first occurrence's position.
fn dedup(items: &mut Vec<String>) {
    let mut seen = std::collections::HashSet::new();
    items.retain(|item| seen.insert(item.clone()));
}

#[cfg(test)]
mod tests;
