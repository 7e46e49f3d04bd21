//! AUTH PLAIN and LOGIN (RFC 4954, RFC 4616) against a file of argon2 password hashes.
//!
//! Guessing is made slow: failures are counted per client address across connections (the
//! listener's `auth.max_failures` within `auth.lockout`, then `454 4.7.0` until the lock-out
//! ends); an unknown user is checked against a dummy hash, so it costs the same time as a known
//! one and the answer's timing tells nothing; hashes are checked off the async threads, at most
//! one per CPU at a time, so a flood of AUTH attempts cannot take every blocking thread.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use argon2::password_hash::{PasswordHash, PasswordVerifier};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use smtpgate_proto::Reply;
use tokio::sync::Semaphore;

use super::conn::Line;
use super::{Flow, Session, Txn};

/// After this many failures the session is closed.
const MAX_AUTH_FAILURES: u32 = 3;

/// Users and their password hashes: one `name:$argon2id$...` per line, `#` for comments.
#[derive(Debug)]
pub struct Users {
    hashes: HashMap<String, String>,
    /// Checked for unknown users, so they cost what a known user costs.
    dummy: String,
    /// Password checks in progress at once: one per CPU.
    slots: Arc<Semaphore>,
}

impl Users {
    pub fn load(path: &Path) -> Result<Users, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        Users::parse(&text).map_err(|e| format!("{}: {e}", path.display()))
    }

    pub fn parse(text: &str) -> Result<Users, String> {
        let mut hashes = HashMap::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (user, hash) = line
                .split_once(':')
                .ok_or(format!("line {}: expected user:hash", n + 1))?;
            PasswordHash::new(hash).map_err(|e| format!("line {}: bad password hash: {e}", n + 1))?;
            hashes.insert(user.to_string(), hash.to_string());
        }
        let dummy = hash_password("no user has this password")?;
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        Ok(Users {
            hashes,
            dummy,
            slots: Arc::new(Semaphore::new(cpus)),
        })
    }

    /// Checks a password (slow by design: call off the async threads). An unknown user is
    /// checked against the dummy hash, and fails.
    pub fn verify(&self, user: &str, password: &str) -> bool {
        let (hash, known) = match self.hashes.get(user) {
            Some(hash) => (hash, true),
            None => (&self.dummy, false),
        };
        let Ok(parsed) = PasswordHash::new(hash) else {
            return false;
        };
        let ok = argon2::Argon2::default()
            .verify_password(password.as_bytes(), &parsed)
            .is_ok();
        ok && known
    }

    /// [`verify`](Self::verify) on the blocking pool, at most one check per CPU at a time.
    pub async fn verify_blocking(self: &Arc<Self>, user: String, password: String) -> bool {
        let Ok(_slot) = self.slots.clone().acquire_owned().await else {
            return false;
        };
        let users = self.clone();
        tokio::task::spawn_blocking(move || users.verify(&user, &password))
            .await
            .unwrap_or(false)
    }
}

/// Makes an argon2id hash for the users file (`smtpgate passwd`).
pub fn hash_password(password: &str) -> Result<String, String> {
    use argon2::password_hash::{PasswordHasher, SaltString};
    use std::io::Read;
    let mut random = [0u8; 16];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut random))
        .map_err(|e| e.to_string())?;
    let salt = SaltString::encode_b64(&random).map_err(|e| e.to_string())?;
    argon2::Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| e.to_string())
}

impl Session {
    /// AUTH is offered over TLS, or in plaintext only to loopback clients when the listener allows it.
    pub(super) fn auth_offered(&self) -> bool {
        let Some(auth) = &self.listener.config.auth else {
            return false;
        };
        self.tls.is_some() || (auth.allow_plaintext && self.peer.ip().is_loopback())
    }

    pub(super) async fn auth(&mut self, mechanism: String, initial: Option<String>) -> Flow {
        if self.listener.users.is_none() {
            return self.error(Reply::not_implemented());
        }
        if self.helo.is_none() || !matches!(self.txn, Txn::Idle) {
            return self.error(Reply::bad_sequence("AUTH needs EHLO and no transaction in progress"));
        }
        if self.user.is_some() {
            return self.error(Reply::already_authenticated());
        }
        if !self.auth_offered() {
            return self.error(Reply::auth_needs_tls());
        }
        let auth = self.listener.config.auth.as_ref().expect("users means auth");
        if self
            .listener
            .auth_failures
            .locked(self.client_key(), auth.max_failures, auth.lockout)
        {
            tracing::warn!(client = %self.peer, "AUTH refused: client address locked out after failures");
            return self.error(Reply::auth_locked());
        }
        let creds = match mechanism.as_str() {
            "PLAIN" => self.plain(initial).await,
            "LOGIN" => self.login(initial).await,
            _ => return self.error(Reply::auth_unsupported()),
        };
        match creds {
            Ok(Some((user, password))) => self.check(user, password).await,
            Ok(None) => self.error(Reply::auth_cancelled()),
            Err(flow) => flow,
        }
    }

    async fn check(&mut self, user: String, password: String) -> Flow {
        let users = self.listener.users.clone().expect("checked in auth");
        let ok = users.verify_blocking(user.clone(), password).await;
        let key = self.client_key();
        if ok {
            tracing::info!(client = %self.peer, user = %user, "authenticated");
            self.listener.auth_failures.clear(key);
            self.user = Some(user);
            return self.respond(Reply::auth_ok());
        }
        self.auth_failures += 1;
        self.listener.ctx.metrics.auth_failures.inc();
        let lockout = self
            .listener
            .config
            .auth
            .as_ref()
            .map_or(Default::default(), |a| a.lockout);
        let recent = self.listener.auth_failures.fail(key, lockout);
        tracing::warn!(client = %self.peer, user = %user, failures = self.auth_failures, recent, "authentication failed");
        if self.auth_failures >= MAX_AUTH_FAILURES {
            self.conn.reply(&Reply::auth_failed());
            self.conn.reply(&Reply::too_many_errors());
            return Flow::Close;
        }
        self.error(Reply::auth_failed())
    }

    async fn plain(&mut self, initial: Option<String>) -> Result<Option<(String, String)>, Flow> {
        let Some(resp) = self.response(initial, "").await? else {
            return Ok(None);
        };
        let mut parts = resp.split(|&b| b == 0);
        let (Some(_authz), Some(user), Some(pass), None) = (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(self.error(Reply::syntax("malformed PLAIN response")));
        };
        Ok(Some((utf8(user), utf8(pass))))
    }

    async fn login(&mut self, initial: Option<String>) -> Result<Option<(String, String)>, Flow> {
        let Some(user) = self.response(initial, "VXNlcm5hbWU6").await? else {
            return Ok(None);
        };
        let Some(pass) = self.response(None, "UGFzc3dvcmQ6").await? else {
            return Ok(None);
        };
        Ok(Some((utf8(&user), utf8(&pass))))
    }

    /// The client's base64 response: the initial one, or one asked for with a `334` challenge.
    async fn response(&mut self, initial: Option<String>, challenge: &str) -> Result<Option<Vec<u8>>, Flow> {
        let text = match initial {
            Some(t) if t == "=" => String::new(),
            Some(t) => t,
            None => {
                self.conn.reply(&Reply::auth_continue(challenge));
                let limit = self.listener.config.command_timeout;
                match self.conn.read_line(&mut self.framer, limit, false).await {
                    Ok(Line::Command(l)) => String::from_utf8_lossy(&l).trim().to_string(),
                    Ok(Line::TooLong) => return Err(self.error(Reply::line_too_long())),
                    Err(_) => return Err(Flow::Close),
                }
            }
        };
        if text == "*" {
            return Ok(None);
        }
        B64.decode(text.as_bytes())
            .map(Some)
            .map_err(|_| self.error(Reply::syntax("invalid base64 in AUTH response")))
    }
}

impl Session {
    /// The client's address as failures are counted: IPv6 by the listener's `ipv6_prefix`.
    fn client_key(&self) -> std::net::IpAddr {
        crate::io::client_key(self.peer.ip(), self.listener.config.ipv6_prefix)
    }
}

fn utf8(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verifies_hashes_made_by_passwd() {
        let hash = hash_password("s3cret").unwrap();
        let users = Users::parse(&format!("# users\nalice:{hash}\n")).unwrap();
        assert!(users.verify("alice", "s3cret"));
        assert!(!users.verify("alice", "wrong"));
        assert!(!users.verify("bob", "s3cret"));
        assert!(Users::parse("alice:plaintext").is_err());
    }
}
