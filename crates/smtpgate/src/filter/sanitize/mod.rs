//! `kind = "sanitize"`: cleans a message before it leaves.
//!
//! ```toml
//! [[filter]]
//! name = "outbound-clean"
//! kind = "sanitize"
//! remove_headers = ["X-Originating-IP", "User-Agent"]
//! remove_received = "internal"   # "keep" (default), "internal" or "all"; see `received`
//! normalize = true               # text parts with lines over 998 octets become quoted-printable
//! footer_text = "Sent by Example Ltd."
//! footer_html = "<p>Sent by Example Ltd.</p>"
//! list_unsubscribe = { url = "https://example.test/unsub?u={recipient}", mailto = "unsubscribe@example.test", one_click = true }
//! ```
//!
//! What it returns: `RemoveHeader`/`AddHeader` modifications for `remove_headers` and
//! `list_unsubscribe`, preceded by one `ReplaceMessage` when the body changed (footer,
//! normalize) or `Received:` fields were removed. The pipeline applies them in that order.
//!
//! Signed messages: the body of a message that is (or contains) multipart/signed,
//! multipart/encrypted or application/pkcs7-mime, or that already carries a `DKIM-Signature:`,
//! is never rewritten (no footer, no normalize; logged): a footer would break the signature. A
//! DKIM signature added by smtpgate itself is not affected when `sanitize` runs before
//! `dkim_sign`, which is the order to configure. Header changes still apply.
//!
//! `list_unsubscribe` is added only when the message has no `List-Unsubscribe:` yet; see
//! `unsubscribe` for `{recipient}`.

mod footer;
mod mime;
mod part;
mod received;
mod unsubscribe;

#[cfg(test)]
mod tests;

use std::path::Path;
use std::sync::Arc;

use mail_parser::{Message, MessageParser, MimeHeaders};
use serde::Deserialize;

use super::options::{BuildErrors, options};
use super::{BoxFuture, Filter, FilterError, MessageInfo, Modification, Verdict};
use crate::envelope::Address;
use footer::Footer;
use part::{Level, PartChange};
use received::ReceivedPolicy;
use unsubscribe::{RawUnsubscribe, Unsubscribe};

#[derive(Debug, Deserialize)]
struct Options {
    #[serde(default)]
    remove_headers: Vec<String>,
    remove_received: Option<String>,
    #[serde(default)]
    normalize: bool,
    footer_text: Option<String>,
    footer_html: Option<String>,
    list_unsubscribe: Option<RawUnsubscribe>,
}

/// Whether long lines are re-encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Normalize {
    Off,
    On,
}

#[derive(Debug)]
pub struct Sanitize {
    remove: Vec<String>,
    received: ReceivedPolicy,
    normalize: Normalize,
    footer: Footer,
    unsubscribe: Option<Unsubscribe>,
}

pub fn build(raw: toml::Table, _base_dir: &Path) -> Result<Arc<dyn Filter>, BuildErrors> {
    let o: Options = options(raw)?;
    Ok(Arc::new(Sanitize::from_options(o)?))
}

impl Sanitize {
    fn from_options(o: Options) -> Result<Sanitize, BuildErrors> {
        let mut errors = BuildErrors::new();
        let received = ReceivedPolicy::parse(o.remove_received.as_deref()).unwrap_or_else(|e| {
            errors.push(("remove_received".into(), e.to_string()));
            ReceivedPolicy::Keep
        });
        let unsubscribe = o.list_unsubscribe.and_then(|raw| {
            Unsubscribe::from_raw(raw)
                .map_err(|e| errors.extend(e.into_iter().map(|(k, m)| (dotted("list_unsubscribe", &k), m))))
                .ok()
        });
        for (key, value) in [("footer_text", &o.footer_text), ("footer_html", &o.footer_html)] {
            if value.as_deref().is_some_and(|v| v.trim().is_empty()) {
                errors.push((key.into(), "is empty".into()));
            }
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        Ok(Sanitize {
            remove: o.remove_headers,
            received,
            normalize: if o.normalize { Normalize::On } else { Normalize::Off },
            footer: Footer::new(o.footer_text, o.footer_html),
            unsubscribe,
        })
    }

    /// The verdict for one message.
    fn verdict(&self, message: &[u8], recipients: &[Address]) -> Verdict {
        let mut v = Verdict::accept();
        if let Some(new) = self.rewrite(message) {
            v = v.with(Modification::ReplaceMessage(new));
        }
        for name in &self.remove {
            v = v.with(Modification::RemoveHeader(name.clone()));
        }
        if let Some(u) = &self.unsubscribe {
            if has_field(message, "List-Unsubscribe") {
                tracing::debug!("sanitize: the message has a List-Unsubscribe already");
            } else {
                for (name, value) in u.fields(recipients.first().map(Address::as_str)) {
                    v = v.with(Modification::AddHeader(name, value));
                }
            }
        }
        v
    }

    /// The whole message rewritten, when the body or the trace fields change.
    fn rewrite(&self, message: &[u8]) -> Option<Vec<u8>> {
        let body = self.rewrite_body(message);
        let current = body.as_deref().unwrap_or(message);
        received::remove(current, self.received).or(body)
    }

    /// The message with footers added and long lines re-encoded, when anything changed.
    fn rewrite_body(&self, message: &[u8]) -> Option<Vec<u8>> {
        if self.footer.is_empty() && self.normalize == Normalize::Off {
            return None;
        }
        let Some(msg) = MessageParser::default().parse(message) else {
            tracing::info!("sanitize: message not parsable as MIME, body left as it is");
            return None;
        };
        if let Some(why) = signed(&msg) {
            tracing::info!(reason = why, "sanitize: signed message, footer and normalize skipped");
            return None;
        }
        let (footers, skipped) = self.footer.changes(message, &msg);
        for why in skipped {
            tracing::info!(reason = %why, "sanitize: footer skipped");
        }
        let mut changes: Vec<PartChange> = Vec::new();
        if self.normalize == Normalize::On {
            changes.extend(long_lines(message, &msg, &footers));
        }
        changes.extend(footers.into_iter().map(|(_, c)| c));
        (!changes.is_empty()).then(|| part::apply(message, changes))
    }
}

/// `normalize` changes for the parts that do not get a footer (a footer's re-encoding already
/// keeps lines short).
fn long_lines(message: &[u8], msg: &Message<'_>, footers: &[(u32, PartChange)]) -> Vec<PartChange> {
    let mut out = Vec::new();
    for (i, p) in msg.parts.iter().enumerate() {
        if footers.iter().any(|(f, _)| *f as usize == i) {
            continue;
        }
        let level = if i == 0 { Level::Top } else { Level::Nested };
        out.extend(part::normalize(message, p, level));
    }
    out
}

/// Why the message's body must stay as it is, if it must.
fn signed(msg: &Message<'_>) -> Option<&'static str> {
    if msg
        .root_part()
        .headers
        .iter()
        .any(|h| h.name().eq_ignore_ascii_case("DKIM-Signature"))
    {
        return Some("DKIM-Signature");
    }
    for p in &msg.parts {
        let Some(ct) = p.content_type() else { continue };
        let sub = ct.subtype().unwrap_or("").to_ascii_lowercase();
        match (ct.ctype().to_ascii_lowercase().as_str(), sub.as_str()) {
            ("multipart", "signed") => return Some("multipart/signed"),
            ("multipart", "encrypted") => return Some("multipart/encrypted"),
            ("application", "pkcs7-mime" | "x-pkcs7-mime") => return Some("application/pkcs7-mime"),
            _ => {}
        }
    }
    None
}

fn has_field(message: &[u8], name: &str) -> bool {
    (crate::message::header_section(message).fields.iter()).any(|f| f.is(name))
}

fn dotted(parent: &str, key: &str) -> String {
    if key.is_empty() {
        parent.to_string()
    } else {
        format!("{parent}.{key}")
    }
}

impl Filter for Sanitize {
    fn data<'a>(&'a self, m: &'a MessageInfo<'a>) -> BoxFuture<'a, Result<Verdict, FilterError>> {
        Box::pin(async move { Ok(self.verdict(m.message, m.recipients)) })
    }
}
