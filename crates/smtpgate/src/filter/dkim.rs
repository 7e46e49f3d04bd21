//! `kind = "dkim_sign"`: adds a `DKIM-Signature` (RFC 6376; Ed25519 per RFC 8463) for the
//! domains we hold a key for.
//!
//! ```toml
//! [[filter]]
//! name = "sign"
//! kind = "dkim_sign"
//! keys = [{ domain = "example.test", selector = "s1", key = "dkim-example.pem", algorithm = "rsa-sha256" }]
//! headers = ["From", "To", "Subject"]   # optional; the default list is DEFAULT_HEADERS
//! ```
//!
//! The signing domain is the `From:` domain when a key is configured for it, otherwise the
//! envelope sender's domain; every key of that domain signs (an RSA and an Ed25519 key give two
//! signatures, as RFC 8463 section 4 suggests). Canonicalization is relaxed/relaxed.
//!
//! Put `dkim_sign` last in a filter list: filters run in the order configured and each one
//! sees the message as the ones before it left it, so a filter after this one that changes a
//! signed header or the body breaks the signature. The header is inserted after the trace
//! `Received:`, which is not signed.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use mail_auth::AuthenticatedMessage;
use mail_auth::common::crypto::{DkimKey, Ed25519Key, RsaKey, Sha256};
use mail_auth::common::headers::HeaderWriter;
use mail_auth::dkim::{Canonicalization, DkimSigner, Done};
use rustls_pki_types::PrivateKeyDer;
use rustls_pki_types::pem::PemObject;
use serde::Deserialize;

use super::options::{BuildErrors, options};
use super::{BoxFuture, Filter, FilterError, MessageInfo, Modification, Verdict};

/// The header fields signed when `headers` is not given (those present in the message are).
pub const DEFAULT_HEADERS: &[&str] = &[
    "From",
    "To",
    "Subject",
    "Date",
    "Message-ID",
    "MIME-Version",
    "Content-Type",
    "Reply-To",
    "Cc",
];

#[derive(Debug, Deserialize)]
struct Options {
    keys: Vec<RawKey>,
    headers: Option<Vec<String>>,
}

/// One signing key as configured (shared with `arc_seal`).
#[derive(Debug, Deserialize)]
pub(super) struct RawKey {
    pub(super) domain: String,
    pub(super) selector: String,
    /// A PEM file (PKCS#1 or PKCS#8 for RSA, PKCS#8 for Ed25519), relative to the config file.
    key: PathBuf,
    /// `"rsa-sha256"` (the default) or `"ed25519-sha256"`.
    algorithm: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Algorithm {
    RsaSha256,
    Ed25519Sha256,
}

/// One configured key, ready to sign.
struct Key {
    domain: String,
    selector: String,
    signer: DkimSigner<DkimKey, Done>,
}

pub struct DkimSign {
    keys: Vec<Key>,
}

impl fmt::Debug for DkimSign {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let keys: Vec<String> = self
            .keys
            .iter()
            .map(|k| format!("{}._domainkey.{}", k.selector, k.domain))
            .collect();
        f.debug_struct("DkimSign").field("keys", &keys).finish()
    }
}

pub fn build(raw: toml::Table, base_dir: &Path) -> Result<Arc<dyn Filter>, BuildErrors> {
    let o: Options = options(raw)?;
    let headers: Vec<String> = o
        .headers
        .unwrap_or_else(|| DEFAULT_HEADERS.iter().map(|h| h.to_string()).collect());
    let mut errors = BuildErrors::new();
    if !headers.iter().any(|h| h.eq_ignore_ascii_case("from")) {
        errors.push(("headers".into(), "must include From (RFC 6376 5.4)".into()));
    }
    if o.keys.is_empty() {
        errors.push(("keys".into(), "needs at least one key".into()));
    }
    let mut keys = Vec::new();
    for (i, raw) in o.keys.into_iter().enumerate() {
        match load_key(&raw, base_dir) {
            Ok(key) => keys.push(Key {
                signer: signer(key, &raw, &headers),
                domain: raw.domain.trim_end_matches('.').to_ascii_lowercase(),
                selector: raw.selector,
            }),
            Err((field, message)) => errors.push((format!("keys[{i}].{field}"), message)),
        }
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    Ok(Arc::new(DkimSign { keys }))
}

fn algorithm(raw: &RawKey) -> Result<Algorithm, (&'static str, String)> {
    match raw.algorithm.as_deref() {
        None | Some("rsa-sha256") => Ok(Algorithm::RsaSha256),
        Some("ed25519-sha256") => Ok(Algorithm::Ed25519Sha256),
        Some(other) => Err((
            "algorithm",
            format!("{other:?} is not one of \"rsa-sha256\", \"ed25519-sha256\""),
        )),
    }
}

/// Reads and parses the key file; errors name the field they belong to.
pub(super) fn load_key(raw: &RawKey, base_dir: &Path) -> Result<DkimKey, (&'static str, String)> {
    if raw.domain.trim().is_empty() || raw.selector.trim().is_empty() {
        return Err(("domain", "domain and selector must not be empty".into()));
    }
    let algorithm = algorithm(raw)?;
    let path = base_dir.join(&raw.key);
    let pem = std::fs::read(&path).map_err(|e| ("key", format!("cannot read {}: {e}", path.display())))?;
    let bad = |e: String| ("key", format!("{}: {e}", path.display()));
    let der = PrivateKeyDer::from_pem_slice(&pem).map_err(|e| bad(format!("not a PEM private key ({e})")))?;
    match (algorithm, der) {
        (Algorithm::RsaSha256, der @ (PrivateKeyDer::Pkcs1(_) | PrivateKeyDer::Pkcs8(_))) => {
            let key = RsaKey::<Sha256>::from_key_der(der).map_err(|e| bad(format!("not an RSA key ({e})")))?;
            Ok(DkimKey::Rsa(key))
        }
        (Algorithm::Ed25519Sha256, PrivateKeyDer::Pkcs8(der)) => {
            // OpenSSL writes PKCS#8 v1 (no public key inside): the unchecked variant accepts it.
            let key = Ed25519Key::from_pkcs8_maybe_unchecked_der(der.secret_pkcs8_der())
                .map_err(|e| bad(format!("not an Ed25519 key ({e})")))?;
            Ok(DkimKey::Ed25519(key))
        }
        (Algorithm::RsaSha256, _) => Err(bad("an RSA key must be PKCS#1 or PKCS#8 PEM".into())),
        (Algorithm::Ed25519Sha256, _) => Err(bad("an Ed25519 key must be PKCS#8 PEM".into())),
    }
}

fn signer(key: DkimKey, raw: &RawKey, headers: &[String]) -> DkimSigner<DkimKey, Done> {
    DkimSigner::from_key(key)
        .domain(raw.domain.trim_end_matches('.').to_ascii_lowercase())
        .selector(raw.selector.clone())
        .headers(headers.iter().cloned())
        .header_canonicalization(Canonicalization::Relaxed)
        .body_canonicalization(Canonicalization::Relaxed)
}

/// The domain part of an address, lowercased (`""` when there is none).
pub(super) fn domain_of(address: &str) -> String {
    address
        .trim_matches(|c| c == '<' || c == '>')
        .rsplit_once('@')
        .map(|(_, d)| d.trim_end_matches('.').to_ascii_lowercase())
        .unwrap_or_default()
}

impl DkimSign {
    /// The keys to sign with: those of the From: domain, else those of the envelope sender's.
    fn keys_for(&self, m: &MessageInfo<'_>) -> Vec<&Key> {
        let from = AuthenticatedMessage::parse(m.message)
            .and_then(|parsed| parsed.from.first().map(|a| domain_of(a)))
            .unwrap_or_default();
        for domain in [from, domain_of(m.sender.as_str())] {
            let keys: Vec<&Key> = self
                .keys
                .iter()
                .filter(|k| !domain.is_empty() && k.domain == domain)
                .collect();
            if !keys.is_empty() {
                return keys;
            }
        }
        Vec::new()
    }
}

/// Splits `DKIM-Signature: v=1; ...\r\n` into the name and the (folded) value.
fn split_header(header: &str) -> Option<(String, String)> {
    let (name, value) = header.split_once(':')?;
    Some((
        name.to_string(),
        value.trim_start().trim_end_matches(['\r', '\n']).to_string(),
    ))
}

impl Filter for DkimSign {
    fn data<'a>(&'a self, m: &'a MessageInfo<'a>) -> BoxFuture<'a, Result<Verdict, FilterError>> {
        Box::pin(async move {
            let mut verdict = Verdict::accept();
            for key in self.keys_for(m) {
                let signature = key.signer.sign(m.message).map_err(|e| {
                    FilterError(format!(
                        "DKIM signing as {}._domainkey.{} failed: {e}",
                        key.selector, key.domain
                    ))
                })?;
                let (name, value) = split_header(&signature.to_header())
                    .ok_or_else(|| FilterError("DKIM signer produced no header".into()))?;
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
    fn domain_of_strips_brackets_and_case() {
        assert_eq!(domain_of("<Bob@Example.TEST>"), "example.test");
        assert_eq!(domain_of("bob@example.test."), "example.test");
        assert_eq!(domain_of(""), "");
    }

    #[test]
    fn split_header_keeps_folding_inside_value() {
        let (n, v) = split_header("DKIM-Signature: v=1; a=rsa-sha256;\r\n\td=x; b=abc\r\n").unwrap();
        assert_eq!(n, "DKIM-Signature");
        assert_eq!(v, "v=1; a=rsa-sha256;\r\n\td=x; b=abc");
    }

    #[test]
    fn missing_key_file_is_reported_with_its_key() {
        let raw: toml::Table =
            toml::from_str(r#"keys = [{ domain = "example.test", selector = "s1", key = "nope.pem" }]"#).unwrap();
        let errors = build(raw, Path::new("/nonexistent")).unwrap_err();
        assert_eq!(errors.len(), 1);
        assert_eq!(errors[0].0, "keys[0].key");
        assert!(errors[0].1.contains("cannot read"), "{}", errors[0].1);
    }

    #[test]
    fn unknown_algorithm_is_reported_with_its_key() {
        let raw: toml::Table = toml::from_str(
            r#"keys = [{ domain = "example.test", selector = "s1", key = "k.pem", algorithm = "rsa-sha1" }]"#,
        )
        .unwrap();
        let errors = build(raw, Path::new("/nonexistent")).unwrap_err();
        assert_eq!(errors[0].0, "keys[0].algorithm");
    }
}
