//! `list_unsubscribe`: `List-Unsubscribe:` (RFC 2369) and `List-Unsubscribe-Post:` (RFC 8058).
//!
//! `{recipient}` in the URL becomes the message's first recipient, percent-encoded. The filter
//! sees one message for all its recipients, so this is meant for bulk routes that send one
//! recipient per message; with several, every copy carries the first one's link.

use serde::Deserialize;

/// The `list_unsubscribe = { .. }` table as written.
#[derive(Debug, Deserialize)]
pub struct RawUnsubscribe {
    url: Option<String>,
    mailto: Option<String>,
    #[serde(default)]
    one_click: bool,
}

/// A checked `list_unsubscribe`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unsubscribe {
    /// May contain `{recipient}`.
    url: Option<String>,
    /// The address, without `mailto:`.
    mailto: Option<String>,
    one_click: OneClick,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum OneClick {
    No,
    Yes,
}

const PLACEHOLDER: &str = "{recipient}";

impl Unsubscribe {
    /// Checks the table; the errors are (key under `list_unsubscribe`, message).
    pub fn from_raw(raw: RawUnsubscribe) -> Result<Unsubscribe, Vec<(String, String)>> {
        let mut errors = Vec::new();
        if let Some(url) = &raw.url {
            check_url(url, raw.one_click, &mut errors);
        }
        let mailto = raw.mailto.map(|m| m.strip_prefix("mailto:").unwrap_or(&m).to_string());
        if let Some(m) = &mailto
            && (!m.contains('@') || m.len() > 254 || m.contains(|c: char| bad_char(c) || c == ','))
        {
            errors.push((
                "mailto".into(),
                "not an address (user@domain, at most 254 octets)".into(),
            ));
        }
        if raw.url.is_none() && mailto.is_none() {
            errors.push((String::new(), "needs `url`, `mailto` or both".into()));
        }
        if raw.one_click && raw.url.is_none() {
            errors.push(("one_click".into(), "needs an https `url` (RFC 8058)".into()));
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        let one_click = if raw.one_click { OneClick::Yes } else { OneClick::No };
        Ok(Unsubscribe {
            url: raw.url,
            mailto,
            one_click,
        })
    }

    /// The header fields to add, for a message to `recipient`.
    pub fn fields(&self, recipient: Option<&str>) -> Vec<(String, String)> {
        let mut uris = Vec::new();
        if let Some(url) = &self.url {
            uris.push(format!(
                "<{}>",
                url.replace(PLACEHOLDER, &percent_encode(recipient.unwrap_or("")))
            ));
        }
        if let Some(m) = &self.mailto {
            uris.push(format!("<mailto:{m}>"));
        }
        // "List-Unsubscribe: " is 18 octets; fold between the URIs when one line would be too long.
        let one_line = uris.join(", ");
        let value = if one_line.len() + 18 <= 998 {
            one_line
        } else {
            uris.join(",\r\n\t")
        };
        let mut out = vec![("List-Unsubscribe".to_string(), value)];
        if self.one_click == OneClick::Yes {
            out.push((
                "List-Unsubscribe-Post".to_string(),
                "List-Unsubscribe=One-Click".to_string(),
            ));
        }
        out
    }
}

fn check_url(url: &str, one_click: bool, errors: &mut Vec<(String, String)>) {
    let https = url.starts_with("https://");
    if !https && !url.starts_with("http://") {
        errors.push(("url".into(), "must start with https:// (or http://)".into()));
    } else if one_click && !https {
        errors.push(("url".into(), "one_click needs an https URL (RFC 8058 3.1)".into()));
    }
    if url.contains(|c: char| bad_char(c) || c == '>' || c == '<') {
        errors.push(("url".into(), "contains spaces, control characters, `<` or `>`".into()));
    }
    // The recipient, percent-encoded, can take up to 3 × 254 octets.
    if url.len() + url.matches(PLACEHOLDER).count() * 762 > 900 {
        errors.push(("url".into(), "too long (the field must fit in a 998-octet line)".into()));
    }
}

fn bad_char(c: char) -> bool {
    c.is_whitespace() || c.is_control() || !c.is_ascii()
}

/// RFC 3986 percent-encoding: everything but the unreserved characters.
pub fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 3);
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}
