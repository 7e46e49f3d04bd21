//! `remove_received`: dropping the `Received:` fields of internal hops.
//!
//! The rule for `"internal"`: the first `Received:` field is smtpgate's own and always stays.
//! Every later one is removed when its `from` clause names a private, loopback, link-local,
//! shared (100.64.0.0/10), unique-local or unspecified address (as `[10.1.2.3]`,
//! `[IPv6:fd00::1]`, `(host [192.168.0.7])`, ...), or when it has no `from` clause at all (a
//! local pickup such as `Received: by mail.corp (Postfix, from userid 1000)`). Fields whose `from`
//! names only public addresses or only host names are kept: they are the external trace.
//! `"all"` keeps smtpgate's own field and removes every other one.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Which `Received:` fields to remove.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReceivedPolicy {
    Keep,
    Internal,
    AllButOurs,
}

impl ReceivedPolicy {
    pub fn parse(value: Option<&str>) -> Result<ReceivedPolicy, crate::issues::ValueError> {
        match value {
            None | Some("keep") => Ok(ReceivedPolicy::Keep),
            Some("internal") => Ok(ReceivedPolicy::Internal),
            Some("all") => Ok(ReceivedPolicy::AllButOurs),
            Some(other) => Err(format!("{other:?} is not one of \"keep\", \"internal\", \"all\"").into()),
        }
    }
}

/// `message` without the `Received:` fields `policy` removes; `None` when none is removed.
pub fn remove(message: &[u8], policy: ReceivedPolicy) -> Option<Vec<u8>> {
    if policy == ReceivedPolicy::Keep {
        return None;
    }
    let section = crate::message::header_section(message);
    let mut out = Vec::with_capacity(message.len());
    let mut seen_ours = false;
    let mut removed = 0;
    for f in &section.fields {
        let drop = f.is("Received") && seen_ours && (policy == ReceivedPolicy::AllButOurs || is_internal(&f.value()));
        seen_ours |= f.is("Received");
        if drop {
            removed += 1;
        } else {
            out.extend_from_slice(f.raw);
        }
    }
    if removed == 0 {
        return None;
    }
    tracing::debug!(removed, "sanitize: removed Received fields of internal hops");
    out.extend_from_slice(&message[section.end..]);
    Some(out)
}

/// Whether a `Received:` value (after the colon) is an internal hop's.
pub fn is_internal(value: &str) -> bool {
    match from_clause(value) {
        None => true,
        Some(from) => {
            // The address the receiving host saw (in the comment) counts over the client's HELO.
            let seen = addresses(&comments(from));
            let named = if seen.is_empty() { addresses(from) } else { seen };
            named.iter().any(|ip| is_private(*ip))
        }
    }
}

/// The text between `from` and the next clause keyword (`by`, `via`, `with`, `id`, `for`, `;`).
fn from_clause(value: &str) -> Option<&str> {
    let lower = value.to_ascii_lowercase();
    let trimmed = lower.trim_start();
    if !trimmed.starts_with("from ") {
        return None;
    }
    let start = value.len() - trimmed.len() + 5;
    let rest = &lower[start..];
    let end = [" by ", " via ", " with ", " id ", " for ", ";"]
        .iter()
        .filter_map(|k| rest.find(k))
        .min()
        .unwrap_or(rest.len());
    Some(&value[start..start + end])
}

/// The text inside parentheses, one comment per line.
fn comments(text: &str) -> String {
    let mut out = String::new();
    let mut depth = 0usize;
    for c in text.chars() {
        match c {
            '(' => depth += 1,
            ')' => {
                depth = depth.saturating_sub(1);
                out.push(' ');
            }
            _ if depth > 0 => out.push(c),
            _ => {}
        }
    }
    out
}

/// Every IP address written in a `from` clause.
fn addresses(from: &str) -> Vec<IpAddr> {
    from.split(|c: char| !(c.is_ascii_hexdigit() || c == '.' || c == ':'))
        .chain(
            from.split(['[', ']', '(', ')', ' '])
                .filter_map(|t| t.strip_prefix("IPv6:")),
        )
        .filter_map(|t| t.trim_matches(|c| c == '.' || c == ':').parse::<IpAddr>().ok())
        .collect()
}

fn is_private(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_private_v4(v4),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => is_private_v4(v4),
            None => is_private_v6(v6),
        },
    }
}

fn is_private_v4(ip: Ipv4Addr) -> bool {
    let shared = ip.octets()[0] == 100 && (ip.octets()[1] & 0xc0) == 64;
    ip.is_private() || ip.is_loopback() || ip.is_link_local() || ip.is_unspecified() || shared
}

fn is_private_v6(ip: Ipv6Addr) -> bool {
    ip.is_loopback() || ip.is_unspecified() || ip.is_unique_local() || ip.is_unicast_link_local()
}
