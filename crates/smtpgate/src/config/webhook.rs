//! `[[webhook]]`: where events are POSTed, signed, from a durable outbox (the `webhook` module).
//! The URL is the operator's, never a client's: any http:// or https:// address is allowed, but
//! one that is not loopback must name a `secret_file`, so every event leaving the host is signed.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::issues::{Checks as _, Issues, resolve};
use super::text::Text;

/// One `[[webhook]]` as written (unknown keys are collected with the rest of the file's).
#[derive(Debug, Deserialize)]
pub struct RawWebhook {
    pub name: Option<String>,
    pub url: Option<String>,
    pub events: Option<Vec<String>>,
    pub secret_file: Option<String>,
    pub batch_size: Option<i64>,
    pub max_age: Option<Text>,
    pub timeout: Option<Text>,
}

/// One checked `[[webhook]]`. Two equal values mean the same sender: a reload keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookConfig {
    /// Unique; names the outbox folder (`<spool>/webhooks/<name>/`), so letters, digits, `-`, `_`.
    pub name: String,
    /// An `http://` or `https://` URL.
    pub url: String,
    /// Event types sent; empty: all of them.
    pub events: Vec<String>,
    /// The signing secret, read from `secret_file` at load; `None`: requests go unsigned.
    pub secret: Option<Secret>,
    /// The file it came from (for messages).
    pub secret_file: Option<PathBuf>,
    /// Events per POST at most (default 100).
    pub batch_size: usize,
    /// An event not sent this long after it was published is dropped and counted (default 24h).
    pub max_age: Duration,
    /// One POST (connection, request, response) must fit in this (default 10s).
    pub timeout: Duration,
}

/// A secret whose text never reaches a log line or `Debug` output.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(pub String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(..)")
    }
}

impl WebhookConfig {
    /// Whether an event of type `kind` goes to this webhook.
    pub fn wants(&self, kind: &str) -> bool {
        self.events.is_empty() || self.events.iter().any(|e| e == kind)
    }
}

pub(super) fn build_webhooks(
    raw: Vec<RawWebhook>,
    base_dir: &std::path::Path,
    issues: &mut Issues,
) -> Vec<WebhookConfig> {
    let mut out: Vec<WebhookConfig> = Vec::new();
    for (i, w) in raw.into_iter().enumerate() {
        let key = |field: &str| format!("webhook[{i}].{field}");
        let name = w.name.unwrap_or_default();
        if !valid_name(&name) {
            issues.push(key("name"), "is required: letters, digits, '-' and '_' only");
        } else if out.iter().any(|o| o.name == name) {
            issues.push(key("name"), format!("{name:?} is already the name of another webhook"));
        }
        let url = w.url.unwrap_or_default();
        let loopback = match check_url(&url) {
            Ok(loopback) => loopback,
            Err(message) => {
                issues.push(key("url"), message);
                true
            }
        };
        let secret_file = w.secret_file.map(|f| resolve(base_dir, &f));
        let secret = secret_file
            .as_ref()
            .and_then(|path| match super::values::read_token(path) {
                Ok(token) => Some(Secret(token)),
                Err(e) => {
                    issues.push(key("secret_file"), e.to_string());
                    None
                }
            });
        if secret_file.is_none() && !loopback {
            issues.push(
                key("secret_file"),
                "is required for a webhook that is not on a loopback address",
            );
        }
        let events = w.events.unwrap_or_default();
        for (j, e) in events.iter().enumerate() {
            if e.trim().is_empty() {
                issues.push(format!("webhook[{i}].events[{j}]"), "must not be empty");
            }
        }
        let batch_size = issues.count(key("batch_size"), w.batch_size, 1, 100usize);
        if batch_size > 10_000 {
            issues.push(key("batch_size"), format!("{batch_size} is too large (at most 10000)"));
        }
        out.push(WebhookConfig {
            name,
            url,
            events,
            secret,
            secret_file,
            batch_size: batch_size.min(10_000),
            max_age: issues.timeout(key("max_age"), w.max_age, Duration::from_secs(24 * 3600)),
            timeout: issues.timeout(key("timeout"), w.timeout, Duration::from_secs(10)),
        });
    }
    out
}

/// A name that is safe as a folder name and a metric label.
fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// An http:// or https:// URL with a host and no user name; whether its host is loopback.
pub fn check_url(url: &str) -> Result<bool, String> {
    let uri: hyper::Uri = url.parse().map_err(|_| format!("{url:?} is not a URL"))?;
    match uri.scheme_str() {
        Some("http" | "https") => {}
        _ => return Err(format!("{url:?} is not an http:// or https:// URL")),
    }
    let authority = uri.authority().ok_or_else(|| format!("{url:?} has no host"))?;
    if authority.as_str().contains('@') {
        return Err(format!("{url:?}: a user name in the URL is not supported"));
    }
    let host = authority.host().trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() {
        return Err(format!("{url:?} has no host"));
    }
    let loopback =
        host.eq_ignore_ascii_case("localhost") || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback());
    Ok(loopback)
}

#[cfg(test)]
mod tests {
    use super::check_url;

    #[test]
    fn urls() {
        assert_eq!(check_url("http://127.0.0.1:8080/hook"), Ok(true));
        assert_eq!(check_url("https://hooks.example.com/x"), Ok(false));
        assert_eq!(check_url("http://[::1]/x"), Ok(true));
        assert!(check_url("ftp://example.com/").is_err());
        assert!(check_url("http://user:pw@example.com/").is_err());
        assert!(check_url("example.com/hook").is_err());
    }
}
