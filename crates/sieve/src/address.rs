//! Finding the addresses in an address header (RFC 5322 section 3.4) and taking them apart for
//! `:localpart` and `:domain` (RFC 5228 section 2.7.4).
//!
//! This is a forgiving reader, not a validator: display names, comments and group names are
//! dropped, the address inside `<..>` is kept, and a source route (`<@a,@b:user@c>`) is removed.

use crate::ast::AddressPart;

/// The addresses (addr-specs) named in one header value, in order.
pub(crate) fn addresses(value: &str) -> Vec<String> {
    split_mailboxes(value).iter().filter_map(|m| addr_spec(m)).collect()
}

/// The part of `address` a test compares, or `None` if the address has no `@` and so no local
/// part or domain (such an address is never matched by `:localpart` or `:domain`).
pub(crate) fn select(address: &str, part: AddressPart) -> Option<String> {
    let split = address.rsplit_once('@').filter(|(l, d)| !l.is_empty() && !d.is_empty());
    match (part, split) {
        (AddressPart::All, _) => Some(address.to_string()),
        (AddressPart::LocalPart, Some((local, _))) => Some(local.to_string()),
        (AddressPart::Domain, Some((_, domain))) => Some(domain.to_string()),
        (_, None) => None,
    }
}

/// Where the scanner is inside a header value.
#[derive(Debug, Default)]
struct Scan {
    quoted: bool,
    escaped: bool,
    comment: usize,
    angle: bool,
}

/// Splits an address list at top-level `,` and `;`, dropping comments and group names.
fn split_mailboxes(value: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut s = Scan::default();
    for c in value.chars() {
        if s.escaped {
            s.escaped = false;
            if s.comment == 0 {
                cur.push(c);
            }
            continue;
        }
        match c {
            '\\' if s.quoted || s.comment > 0 => s.escaped = true,
            '"' if s.comment == 0 => s.quoted = !s.quoted,
            _ if s.quoted => {}
            '(' => s.comment += 1,
            ')' if s.comment > 0 => s.comment -= 1,
            _ if s.comment > 0 => {}
            '<' => s.angle = true,
            '>' => s.angle = false,
            ',' | ';' if !s.angle => {
                out.push(std::mem::take(&mut cur));
                continue;
            }
            ':' if !s.angle => {
                cur.clear();
                continue;
            }
            _ => {}
        }
        if s.comment == 0 && c != ')' {
            cur.push(c);
        }
    }
    out.push(cur);
    out
}

/// The addr-spec of one mailbox: what is inside `<..>` if present, else the whole text.
fn addr_spec(mailbox: &str) -> Option<String> {
    let inner = match mailbox.rfind('<') {
        Some(open) => {
            let rest = &mailbox[open + 1..];
            let inner = rest.find('>').map_or(rest, |close| &rest[..close]);
            strip_route(inner.trim())
        }
        None => mailbox.trim(),
    };
    (!inner.is_empty()).then(|| inner.to_string())
}

fn strip_route(addr: &str) -> &str {
    match addr.split_once(':') {
        Some((route, rest)) if route.starts_with('@') => rest.trim(),
        _ => addr,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn address_lists() {
        let cases: &[(&str, &[&str])] = &[
            ("tim@example.com", &["tim@example.com"]),
            ("Tim <tim@example.com>", &["tim@example.com"]),
            (
                "\"Doe, John\" <john@example.com>, jane@example.org",
                &["john@example.com", "jane@example.org"],
            ),
            ("tim@example.com (Tim, the (nested) one)", &["tim@example.com"]),
            (
                "friends: a@x.example, b@y.example;, c@z.example",
                &["a@x.example", "b@y.example", "c@z.example"],
            ),
            ("undisclosed-recipients:;", &[]),
            ("<@relay.example:user@host.example>", &["user@host.example"]),
            ("", &[]),
        ];
        for (value, want) in cases {
            assert_eq!(addresses(value), *want, "{value:?}");
        }
    }

    #[test]
    fn parts() {
        assert_eq!(select("a@b.example", AddressPart::LocalPart).as_deref(), Some("a"));
        assert_eq!(select("a@b.example", AddressPart::Domain).as_deref(), Some("b.example"));
        assert_eq!(select("postmaster", AddressPart::Domain), None);
        assert_eq!(select("postmaster", AddressPart::All).as_deref(), Some("postmaster"));
    }
}
