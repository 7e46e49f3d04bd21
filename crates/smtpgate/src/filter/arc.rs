//! `kind = "arc_seal"`: adds an ARC set (RFC 8617) to a message we forward, so that the final
//! receiver can see how it authenticated when it reached us: `ARC-Authentication-Results`,
//! `ARC-Message-Signature` and `ARC-Seal`, with the instance number after the last existing set.
//!
//! ```toml
//! [[filter]]
//! name = "arc"
//! kind = "arc_seal"
//! keys = [{ domain = "relay.test", selector = "arc1", key = "arc.pem", algorithm = "rsa-sha256" }]
//! authserv_id = "mx.relay.test"    # default: the machine's host name
//! nameservers = ["127.0.0.1:53"]   # default: the system resolver
//! dns_timeout = "5s"               # per DNS question
//!
//! [[route]]
//! when = { recipient = "list@relay.test" }
//! redirect = ["alice@elsewhere.test"]
//! filters = ["footer", "arc"]      # arc last
//! ```
//!
//! It is meant for forwarding routes only: attach it with a route's `filters = ["arc"]` to
//! `[[route]]` rules with `redirect = [...]` (or `copy_to`) and to alias routes, not to a listener
//! (a message delivered to its final destination needs no seal). It must run last in that list,
//! after footers and any other change: the `ARC-Message-Signature` covers the body and the main
//! header fields, so what a later filter changes breaks it.
//!
//! The message is checked first as `kind = "auth"` does (SPF for the client, DKIM, DMARC, and the
//! existing ARC chain), and those results go into the `ARC-Authentication-Results`. The seal's
//! `cv=` is `none` for the first set, `pass` or `fail` after that. A message whose last set
//! already says `cv=fail`, or whose ARC header fields are too malformed to be grouped into sets,
//! is passed on unsealed (RFC 8617 5.1: a failed chain is not extended).
//!
//! One set is added per hop, with one key: the key whose domain is the envelope sender's (a
//! forwarder usually rewrites the sender to its own domain), else the first one listed.
//! Canonicalization is relaxed/relaxed. RFC 8617 only defines `rsa-sha256` for ARC: an
//! `ed25519-sha256` key seals (and mail-auth verifies it), but verifiers such as dkimpy reject it,
//! so use RSA for mail that leaves for other systems. The header fields are inserted after the trace
//! `Received:`, which is not signed; the filter never rejects.

use std::fmt;
use std::path::Path;
use std::sync::Arc;

use mail_auth::arc::ArcSealer;
use mail_auth::common::crypto::DkimKey;

use super::dkim::{RawKey, domain_of, load_key};
use mail_auth::common::headers::HeaderWriter;
use mail_auth::dkim::{Canonicalization, Done};
use mail_auth::{AuthenticatedMessage, MessageAuthenticator};
use serde::Deserialize;

use super::auth::{Checker, authenticator, dns_options, results_for};
use super::options::{BuildErrors, options};
use super::{BoxFuture, Filter, FilterError, MessageInfo, Modification, Verdict};

/// The header fields the `ARC-Message-Signature` covers (those present in the message are).
pub const SIGNED_HEADERS: &[&str] = &[
    "From",
    "To",
    "Subject",
    "Date",
    "Message-ID",
    "MIME-Version",
    "Content-Type",
    "Content-Transfer-Encoding",
    "Reply-To",
    "Cc",
    "In-Reply-To",
    "References",
    "DKIM-Signature",
];

#[derive(Debug, Deserialize)]
struct Options {
    keys: Vec<RawKey>,
    authserv_id: Option<String>,
    #[serde(default)]
    nameservers: Vec<String>,
    dns_timeout: Option<String>,
}

struct Key {
    domain: String,
    selector: String,
    sealer: ArcSealer<DkimKey, Done>,
}

pub struct ArcSeal {
    keys: Vec<Key>,
    authserv_id: String,
    authenticator: MessageAuthenticator,
}

impl fmt::Debug for ArcSeal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let keys: Vec<String> = self
            .keys
            .iter()
            .map(|k| format!("{}._domainkey.{}", k.selector, k.domain))
            .collect();
        f.debug_struct("ArcSeal")
            .field("keys", &keys)
            .field("authserv_id", &self.authserv_id)
            .finish_non_exhaustive()
    }
}

pub fn build(raw: toml::Table, base_dir: &Path) -> Result<Arc<dyn Filter>, BuildErrors> {
    let o: Options = options(raw)?;
    let mut errors = BuildErrors::new();
    if o.keys.is_empty() {
        errors.push(("keys".into(), "needs at least one key".into()));
    }
    let mut keys = Vec::new();
    for (i, raw) in o.keys.iter().enumerate() {
        match load_key(raw, base_dir) {
            Ok(key) => {
                let domain = raw.domain.trim_end_matches('.').to_ascii_lowercase();
                let sealer = ArcSealer::from_key(key)
                    .domain(domain.clone())
                    .selector(raw.selector.clone())
                    .headers(SIGNED_HEADERS.iter().copied())
                    .header_canonicalization(Canonicalization::Relaxed)
                    .body_canonicalization(Canonicalization::Relaxed);
                keys.push(Key {
                    domain,
                    selector: raw.selector.clone(),
                    sealer,
                });
            }
            Err((field, message)) => errors.push((format!("keys[{i}].{field}"), message)),
        }
    }
    let (timeout, nameservers, authserv_id) = dns_options(
        o.dns_timeout.as_deref(),
        &o.nameservers,
        ("authserv_id", o.authserv_id),
        &mut errors,
    );
    if !errors.is_empty() {
        return Err(errors);
    }
    let authenticator = authenticator(&nameservers, timeout).map_err(|e| vec![("nameservers".into(), e)])?;
    Ok(Arc::new(ArcSeal {
        keys,
        authserv_id,
        authenticator,
    }))
}

/// Splits the sealer's output (`ARC-Seal: ...\r\nARC-Message-Signature: ...\r\n...`) into
/// (name, folded value) pairs.
fn split_headers(text: &str) -> Vec<(String, String)> {
    let mut fields: Vec<String> = Vec::new();
    for line in text.split_inclusive("\r\n") {
        match fields.last_mut() {
            Some(last) if line.starts_with([' ', '\t']) => last.push_str(line),
            _ => fields.push(line.to_string()),
        }
    }
    fields
        .iter()
        .filter_map(|f| {
            let (name, value) = f.split_once(':')?;
            Some((
                name.trim().to_string(),
                value.trim_start().trim_end_matches(['\r', '\n']).to_string(),
            ))
        })
        .collect()
}

impl ArcSeal {
    fn key_for(&self, sender: &str) -> &Key {
        let domain = domain_of(sender);
        self.keys
            .iter()
            .find(|k| !domain.is_empty() && k.domain == domain)
            .unwrap_or(&self.keys[0])
    }
}

impl Filter for ArcSeal {
    fn data<'a>(&'a self, m: &'a MessageInfo<'a>) -> BoxFuture<'a, Result<Verdict, FilterError>> {
        Box::pin(async move {
            let Some(parsed) = AuthenticatedMessage::parse(m.message) else {
                tracing::warn!(target: "smtpgate::filter::arc", "not sealing: the message cannot be parsed");
                return Ok(Verdict::accept());
            };
            let has_arc =
                !parsed.ams_headers.is_empty() || !parsed.as_headers.is_empty() || !parsed.aar_headers.is_empty();
            let checker = Checker {
                hostname: &self.authserv_id,
                authenticator: &self.authenticator,
            };
            let mut results = checker.check(m, Some(&parsed)).await;
            let arc = results.arc.get_or_insert_with(Default::default);
            if has_arc && arc.sets().is_empty() {
                // Broken beyond grouping (missing or unparsable fields): no instance to follow.
                tracing::info!(target: "smtpgate::filter::arc", "not sealing: the existing ARC header fields are malformed");
                return Ok(Verdict::accept());
            }
            if !arc.can_be_sealed() {
                tracing::info!(target: "smtpgate::filter::arc", "not sealing: the ARC chain already failed");
                return Ok(Verdict::accept());
            }
            let mut ar = results_for(&self.authserv_id, &results, m.sender.as_str());
            if let Some(dmarc) = &results.dmarc {
                ar = ar.with_dmarc_result(dmarc);
            }
            let arc = results.arc.as_ref().expect("set above");
            let key = self.key_for(m.sender.as_str());
            let set = key.sealer.seal(&parsed, &ar, arc).map_err(|e| {
                FilterError(format!(
                    "ARC sealing as {}._domainkey.{} failed: {e}",
                    key.selector, key.domain
                ))
            })?;
            let fields = split_headers(&set.to_header());
            if fields.len() != 3 {
                return Err(FilterError(format!(
                    "ARC sealer produced {} header fields",
                    fields.len()
                )));
            }
            // Each is inserted on top of the previous one: ARC-Seal ends up first.
            let mut verdict = Verdict::accept();
            for (name, value) in fields.into_iter().rev() {
                verdict = verdict.with(Modification::AddHeader(name, value));
            }
            Ok(verdict)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_headers_keeps_folding_inside_values() {
        let fields =
            split_headers("ARC-Seal: i=1; a=rsa-sha256;\r\n\tb=abc\r\nARC-Message-Signature: i=1;\r\n h=x\r\n");
        assert_eq!(
            fields,
            [
                ("ARC-Seal".to_string(), "i=1; a=rsa-sha256;\r\n\tb=abc".to_string()),
                ("ARC-Message-Signature".to_string(), "i=1;\r\n h=x".to_string()),
            ]
        );
    }

    #[test]
    fn bad_options_are_reported_with_their_key() {
        let raw: toml::Table = toml::from_str(
            r#"keys = [{ domain = "relay.test", selector = "s1", key = "nope.pem", algorithm = "rsa-sha1" }]
               authserv_id = "two words""#,
        )
        .unwrap();
        let errors = build(raw, Path::new("/nonexistent")).unwrap_err();
        let keys: Vec<&str> = errors.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(keys, ["keys[0].algorithm", "authserv_id"], "{errors:?}");
        let raw: toml::Table = toml::from_str("keys = []").unwrap();
        assert_eq!(build(raw, Path::new("/")).unwrap_err()[0].0, "keys");
    }
}
