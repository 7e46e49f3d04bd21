//! The loaded configuration as the admin API shows it (`GET /api/v1/config`): the file it came
//! from (or `built-in`), its content as JSON with every secret masked, and a summary of what it
//! set up. Pure data: no I/O.
//!
//! Masked (replaced by [`MASK`]): the value of every key whose name says it holds a secret
//! (`password`, `secret`, `token`, `private`, `hash`, `credential`, `api_key`, and `key` itself:
//! a TLS or DKIM private key) unless it names a file (`*_file`: the path is shown, what the gate
//! read from it never is), any text holding a PEM block, the password of a URL
//! (`redis://user:***@host`), and, anywhere in any text, every secret value the configuration
//! holds (pool AUTH passwords, the SRS secret, webhook secrets read from their files, the Redis
//! URL's password) and those the caller adds (the admin token). The test below walks the
//! output of a configuration full of secrets and finds none of them.

use std::path::PathBuf;
use std::sync::Arc;

use serde_json::{Map, Value, json};

use super::Config;

/// What a secret is shown as.
pub const MASK: &str = "***";

/// Where the configuration came from: its file (`None`: the built-in one) and its text.
#[derive(Clone, Default)]
pub struct Source {
    pub file: Option<PathBuf>,
    pub text: Arc<str>,
}

impl std::fmt::Debug for Source {
    /// The file only: the text holds secrets.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Source")
            .field("file", &self.file)
            .finish_non_exhaustive()
    }
}

impl Source {
    /// The file's path, or `built-in`.
    pub fn name(&self) -> String {
        self.file
            .as_ref()
            .map_or_else(|| "built-in".to_string(), |f| f.display().to_string())
    }
}

/// The view of `config`: `{"file", "config", "summary"}`, with `extra` (the admin token) masked
/// too wherever it appears.
pub fn view(config: &Config, extra: &[&str]) -> Value {
    let mut secrets = secrets(config);
    secrets.extend(extra.iter().map(|s| s.to_string()));
    secrets.retain(|s| s.len() >= 4);
    let parsed = config
        .source
        .text
        .parse::<toml::Table>()
        .map(toml::Value::Table)
        .unwrap_or_else(|_| toml::Value::Table(toml::Table::new()));
    json!({
        "file": config.source.name(),
        "config": masked(None, &parsed, &secrets),
        "summary": summary(config),
    })
}

/// What the configuration set up, by name (nothing secret in it).
pub fn summary(config: &Config) -> Value {
    json!({
        "hostname": config.hostname,
        "spool": config.spool.dir.display().to_string(),
        "admin": config.admin.as_ref().map(|a| a.address.to_string()),
        "listeners": config.listeners.iter().map(|l| json!({
            "name": l.name,
            "address": l.address.to_string(),
        })).collect::<Vec<_>>(),
        "pools": config.pools.iter().map(|p| p.name.clone()).collect::<Vec<_>>(),
        "routes": config.routes.iter().map(|r| r.name.clone()).collect::<Vec<_>>(),
        "streams": config.streams.iter().map(|s| s.name.clone()).collect::<Vec<_>>(),
        "filters": config.filters.iter().map(|f| f.name.clone()).collect::<Vec<_>>(),
        "webhooks": config.webhooks.iter().map(|w| w.name.clone()).collect::<Vec<_>>(),
    })
}

/// Every secret value the checked configuration holds.
fn secrets(config: &Config) -> Vec<String> {
    let mut all = Vec::new();
    for pool in &config.pools {
        all.extend(pool.auth.as_ref().map(|a| a.password.clone()));
    }
    all.extend(config.routing.srs.as_ref().map(|s| s.secret.clone()));
    for w in &config.webhooks {
        all.extend(w.secret.as_ref().map(|s| s.0.clone()));
    }
    if let Some(r) = &config.redis {
        all.extend(url_password(&r.url).map(str::to_string));
    }
    all
}

/// Whether a key's value is a secret by its name.
fn secret_key(name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    if name.ends_with("_file") || name.ends_with("_dir") || name.ends_with("_length") {
        return false;
    }
    name == "key"
        || name.ends_with("_key")
        || [
            "password",
            "passwd",
            "secret",
            "token",
            "private",
            "hash",
            "credential",
            "api_key",
        ]
        .iter()
        .any(|word| name.contains(word))
}

/// `value` (under `key`) as JSON, secrets masked.
fn masked(key: Option<&str>, value: &toml::Value, secrets: &[String]) -> Value {
    let by_name = key.is_some_and(secret_key);
    match value {
        toml::Value::Table(table) => {
            let map: Map<String, Value> = table
                .iter()
                .map(|(k, v)| (k.clone(), masked(Some(k), v, secrets)))
                .collect();
            Value::Object(map)
        }
        toml::Value::Array(items) => Value::Array(items.iter().map(|v| masked(key, v, secrets)).collect()),
        toml::Value::String(_) if by_name => Value::String(MASK.into()),
        toml::Value::String(text) => Value::String(scrub(text, secrets)),
        toml::Value::Integer(_) | toml::Value::Float(_) if by_name => Value::String(MASK.into()),
        toml::Value::Integer(n) => json!(n),
        toml::Value::Float(f) => json!(f),
        toml::Value::Boolean(b) => json!(b),
        toml::Value::Datetime(d) => Value::String(d.to_string()),
    }
}

/// `text` with a PEM block, a URL's password and every known secret masked.
fn scrub(text: &str, secrets: &[String]) -> String {
    if text.contains("-----BEGIN") {
        return MASK.into();
    }
    let mut out = match url_password(text) {
        Some(password) => text.replacen(&format!(":{password}@"), &format!(":{MASK}@"), 1),
        None => text.to_string(),
    };
    for secret in secrets {
        if out.contains(secret.as_str()) {
            out = out.replace(secret.as_str(), MASK);
        }
    }
    out
}

/// The password of a URL such as `redis://user:password@host:port/db`.
fn url_password(url: &str) -> Option<&str> {
    let (_, rest) = url.split_once("://")?;
    let authority = rest.split('/').next()?;
    let (userinfo, _) = authority.rsplit_once('@')?;
    let (_, password) = userinfo.split_once(':')?;
    (!password.is_empty()).then_some(password)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every string in `value`, keys included.
    fn strings(value: &Value, out: &mut Vec<String>) {
        match value {
            Value::String(s) => out.push(s.clone()),
            Value::Array(items) => items.iter().for_each(|v| strings(v, out)),
            Value::Object(map) => {
                for (k, v) in map {
                    out.push(k.clone());
                    strings(v, out);
                }
            }
            other => out.push(other.to_string()),
        }
    }

    #[test]
    fn no_secret_of_a_configuration_appears_in_its_view() {
        let dir = tempfile::tempdir().unwrap();
        let file = |name: &str, text: &str| {
            std::fs::write(dir.path().join(name), text).unwrap();
        };
        file(
            "cert.pem",
            "-----BEGIN CERTIFICATE-----\nx\n-----END CERTIFICATE-----\n",
        );
        file(
            "key.pem",
            "-----BEGIN PRIVATE KEY-----\nTLSKEYMATERIAL\n-----END PRIVATE KEY-----\n",
        );
        file(
            "users",
            "alice:$argon2id$v=19$m=19456,t=2,p=1$USERHASHSALT$USERHASHVALUE\n",
        );
        file("webhook.secret", "webhook-secret-from-a-file-0123456789\n");
        file("pool.pass", "pool-password-from-a-file-42\n");
        file("admin.token", "admin-token-0123456789abcdef\n");
        let toml = r#"
            hostname = "gate.example.test"
            [admin]
            address = "127.0.0.1:0"
            token_file = "admin.token"
            [[listener]]
            name = "submission"
            address = "127.0.0.1:0"
            tls = { cert = "cert.pem", key = "key.pem" }
            auth = { users_file = "users" }
            [[pool]]
            name = "relay"
            servers = ["127.0.0.1:2525"]
            tls = "required"
            auth = { username = "relayuser", password = "inline-pool-password-7" }
            [[pool]]
            name = "second"
            servers = ["127.0.0.1:2526"]
            tls = "required"
            auth = { username = "u2", password_file = "pool.pass" }
            [[route]]
            pool = "relay"
            [routing.srs]
            secret = "srs-secret-0123456789abcdef"
            domain = "srs.example.test"
            [redis]
            url = "redis://default:redis-url-password-99@127.0.0.1:6379/0"
            [[webhook]]
            name = "hook"
            url = "https://hooks.example.test/in"
            secret_file = "webhook.secret"
            [[filter]]
            name = "sign"
            kind = "dkim_sign"
            keys = [{ domain = "example.test", selector = "s1", key = "-----BEGIN PRIVATE KEY-----\nDKIMINLINEKEY\n-----END PRIVATE KEY-----" }]
            [[filter]]
            name = "spam"
            kind = "rspamd"
            url = "http://127.0.0.1:11333"
            password = "rspamd-controller-password"
        "#;
        let mut config = Config::from_toml_str(toml, dir.path()).unwrap();
        config.source.file = Some(dir.path().join("smtpgate.toml"));
        let token = "admin-token-0123456789abcdef";
        let shown = view(&config, &[token]);
        let mut all = Vec::new();
        strings(&shown, &mut all);
        let text = all.join("\n");
        for secret in [
            token,
            "TLSKEYMATERIAL",
            "USERHASH",
            "webhook-secret-from-a-file",
            "pool-password-from-a-file",
            "inline-pool-password-7",
            "srs-secret-0123456789abcdef",
            "redis-url-password-99",
            "DKIMINLINEKEY",
            "rspamd-controller-password",
            "key.pem",
        ] {
            assert!(!text.contains(secret), "{secret:?} is in the view:\n{text}");
        }
        // What is not secret is there, and the masks show where secrets were.
        let c = &shown["config"];
        assert_eq!(c["hostname"], "gate.example.test");
        assert_eq!(c["admin"]["token_file"], "admin.token");
        assert_eq!(c["listener"][0]["tls"]["cert"], "cert.pem");
        assert_eq!(c["listener"][0]["tls"]["key"], MASK);
        assert_eq!(c["pool"][0]["auth"]["password"], MASK);
        assert_eq!(c["pool"][0]["auth"]["username"], "relayuser");
        assert_eq!(c["pool"][1]["auth"]["password_file"], "pool.pass");
        assert_eq!(c["routing"]["srs"]["secret"], MASK);
        assert_eq!(c["redis"]["url"], "redis://default:***@127.0.0.1:6379/0");
        assert_eq!(c["filter"][0]["keys"][0]["key"], MASK);
        assert_eq!(c["filter"][0]["keys"][0]["selector"], "s1");
        assert_eq!(c["filter"][1]["password"], MASK);
        assert_eq!(shown["summary"]["pools"], json!(["relay", "second"]));
        assert!(shown["file"].as_str().unwrap().ends_with("smtpgate.toml"));
    }

    #[test]
    fn the_built_in_configuration_says_so() {
        let shown = view(&Config::builtin(), &[]);
        assert_eq!(shown["file"], "built-in");
        assert_eq!(shown["config"], json!({}));
        assert_eq!(shown["summary"]["listeners"][0]["name"], "default");
    }

    #[test]
    fn urls_and_keys() {
        assert_eq!(url_password("redis://:pw@h:1/0"), Some("pw"));
        assert_eq!(url_password("redis://h:1/0"), None);
        assert_eq!(url_password("redis+unix:///run/redis.sock"), None);
        assert!(secret_key("password") && secret_key("api_key") && secret_key("key"));
        assert!(!secret_key("password_file") && !secret_key("hash_length") && !secret_key("keys"));
        assert!(!secret_key("max_keys"));
    }
}
