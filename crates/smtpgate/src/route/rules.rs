//! Whether a `[[route]]` rule's conditions hold for one recipient of a message.

use super::lists::AddressList;
use super::message::MessageView;
use crate::config::{Pattern, When};

/// Everything a rule can look at for one recipient.
pub struct Subject<'a, 'm> {
    pub msg: &'a MessageView<'m>,
    pub recipient: &'a str,
    pub tags: &'a [String],
    /// The rule's `recipient_file`, loaded.
    pub list: Option<&'a AddressList>,
}

fn domain(address: &str) -> &str {
    address.rsplit_once('@').map_or("", |(_, d)| d)
}

fn any(patterns: &[Pattern], value: &str) -> bool {
    patterns.is_empty() || patterns.iter().any(|p| p.matches(value))
}

/// Whether every condition of `when` holds. Conditions on content see only what `msg` holds.
pub fn matches(when: &When, s: &Subject<'_, '_>) -> bool {
    envelope_matches(when, s) && session_matches(when, s.msg) && content_matches(when, s)
}

/// The conditions decidable from the envelope alone (at RCPT time).
pub fn envelope_matches(when: &When, s: &Subject<'_, '_>) -> bool {
    let sender = s.msg.sender.as_str();
    any(&when.sender, sender)
        && any(&when.sender_domain, domain(sender))
        && any(&when.recipient, s.recipient)
        && any(&when.recipient_domain, domain(s.recipient))
        && (when.recipient_file.is_none() || s.list.is_some_and(|l| l.contains(s.recipient)))
}

/// Conditions on the session: client address, authenticated user, listener.
pub fn session_matches(when: &When, msg: &MessageView<'_>) -> bool {
    (when.client.is_empty() || msg.client.is_some_and(|ip| when.client.iter().any(|n| n.contains(&ip))))
        && (when.user.is_empty() || msg.user.as_ref().is_some_and(|u| when.user.contains(u)))
        && (when.listener.is_empty() || when.listener.contains(&msg.listener))
}

fn content_matches(when: &When, s: &Subject<'_, '_>) -> bool {
    let msg = s.msg;
    when.size_over.is_none_or(|n| msg.size > n)
        && when.size_under.is_none_or(|n| msg.size < n)
        && when
            .headers
            .iter()
            .all(|(name, re)| msg.header(name).any(|v| re.is_match(v)))
        && when
            .subject
            .as_ref()
            .is_none_or(|re| msg.header("subject").any(|v| re.is_match(v)))
        && (when.tags.is_empty() || when.tags.iter().any(|t| s.tags.contains(t)))
        && when
            .body
            .as_ref()
            .is_none_or(|re| re.is_match(&String::from_utf8_lossy(msg.body)))
}
