//! What several smtpgate nodes share through one Redis: throttles, the suppression list, and small
//! pieces of state for adaptive throttling.
//!
//! Every key smtpgate writes starts with the prefix given to [`Shared::connect`] (below, `P`):
//!
//! | key | type | what |
//! |---|---|---|
//! | `P:gcra:<key>` | string | a rate's theoretical arrival time (TAT), microseconds of the server's clock ([`crate::rate`]'s GCRA, in `shared/gcra.lua`); expires when idle |
//! | `P:suppressed` | hash | the suppression list: normalised address → JSON [`Entry`] |
//! | `P:state:<namespace>` | hash | [`Shared::put`]'s values: id → `{"expires_at_ms":..,"value":"<json>"}` |
//! | `P:state:stats` | hash | each node's analytics counts ([`crate::stats`]), a field per node, kept 60 s |
//! | `P:sent:<message-id>` | set | the recipients a message was relayed to ([`Shared::record_sent`]); expires after the retention |
//!
//! and every change to the suppression list is published on the channel `P:suppression` as
//! `{"op":"add","entry":{..}}` or `{"op":"remove","address":".."}`.
//!
//! Time always comes from the Redis server (`TIME` inside Lua scripts), so the nodes' clocks do not
//! matter. Channels are not scoped by database number: nodes of two clusters that share one Redis
//! need different prefixes, not just different databases.
//!
//! Every request is bounded: connecting by [`CONNECT_TIMEOUT`], each answer by
//! [`RESPONSE_TIMEOUT`]. After a lost connection the next request reconnects (a request that fails
//! returns its error; none is retried behind the caller's back).
//!
//! ```no_run
//! # async fn example(entry: smtpgate::suppress::Entry) -> Result<(), smtpgate::shared::SharedError> {
//! use std::time::Duration;
//! use smtpgate::shared::Shared;
//!
//! let shared = Shared::connect("redis://127.0.0.1:6379/0", "smtpgate").await?;
//! let wait = shared.reserve("mx:google", Duration::from_millis(100)).await?;
//! tokio::time::sleep(wait).await;
//! shared.suppress(&entry).await?;
//! # Ok(()) }
//! ```
//!
//! Needs Redis 6 or later (or Valkey): [`Shared::follow`] listens over RESP3.

mod follow;

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use redis::AsyncCommands;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};

use crate::rate::{Decision, Gcra, Mode};
use crate::suppress::Entry;

/// How long [`Shared::connect`] (and each reconnection) may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long one request may wait for its answer.
pub const RESPONSE_TIMEOUT: Duration = Duration::from_secs(5);
/// How often a request that finds the connection broken tries to reconnect before it fails.
const RECONNECT_RETRIES: usize = 2;
/// The longest pause between two of those attempts.
const RECONNECT_MAX_DELAY: Duration = Duration::from_secs(1);

/// A connection to the Redis that the nodes share; cheap to clone.
#[derive(Clone)]
pub struct Shared {
    inner: Arc<Inner>,
}

struct Inner {
    /// Multiplexed, reconnects on the next request after a failure.
    conn: ConnectionManager,
    /// The same server over RESP3, for [`Shared::follow`]'s own connections.
    push_client: redis::Client,
    /// The URL for messages, with any password hidden.
    url: String,
    keys: Keys,
    rate: redis::Script,
    put: redis::Script,
    all: redis::Script,
}

/// The names of everything smtpgate keeps in Redis.
struct Keys {
    prefix: String,
    suppressed: String,
    channel: String,
}

impl Keys {
    fn new(prefix: &str) -> Keys {
        Keys {
            prefix: prefix.to_owned(),
            suppressed: format!("{prefix}:suppressed"),
            channel: format!("{prefix}:suppression"),
        }
    }

    fn gcra(&self, key: &str) -> String {
        format!("{}:gcra:{key}", self.prefix)
    }

    fn sent(&self, message_id: &str) -> String {
        format!("{}:sent:{message_id}", self.prefix)
    }

    fn state(&self, namespace: &str) -> String {
        format!("{}:state:{namespace}", self.prefix)
    }
}

/// A change to the shared suppression list, as [`Shared::follow`] reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// The address was added, or its entry replaced.
    Added(Entry),
    /// The (normalised) address was removed.
    Removed(String),
}

/// Why a request to the shared Redis failed. Every message names the server: `redis at <url>: ..`
/// (with any password in the URL hidden).
#[derive(Debug, thiserror::Error)]
pub enum SharedError {
    /// The URL could not be understood.
    #[error("redis at {url}: bad URL: {cause}")]
    Url {
        /// The URL, password hidden.
        url: String,
        /// What is wrong with it.
        cause: redis::RedisError,
    },
    /// No connection could be made.
    #[error("redis at {url}: cannot connect: {cause}")]
    Connect {
        /// The server's URL, password hidden.
        url: String,
        /// Why not.
        cause: redis::RedisError,
    },
    /// Connecting took longer than [`CONNECT_TIMEOUT`].
    #[error("redis at {url}: no connection within {after:?}")]
    ConnectTimeout {
        /// The server's URL, password hidden.
        url: String,
        /// How long it was given.
        after: Duration,
    },
    /// A request failed (connection lost, no answer within [`RESPONSE_TIMEOUT`], error reply).
    #[error("redis at {url}: {cause}")]
    Request {
        /// The server's URL, password hidden.
        url: String,
        /// The failure.
        cause: redis::RedisError,
    },
    /// Something that is not what smtpgate writes or expects.
    #[error("redis at {url}: {what}")]
    Data {
        /// The server's URL, password hidden.
        url: String,
        /// What was wrong.
        what: String,
    },
    /// An address to suppress or unsuppress is not a mail address.
    #[error("{0}")]
    InvalidAddress(std::io::Error),
}

/// One message on the suppression channel.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
enum Message {
    Add { entry: Entry },
    Remove { address: String },
}

/// What `put.lua` stores in a namespace's hash; only the value is read back.
#[derive(serde::Deserialize)]
struct Stored {
    value: String,
}

impl Shared {
    /// Connects (a `redis://host:port/db` or `redis+unix:///path.sock` URL); every key smtpgate
    /// writes starts with `prefix` (e.g. "smtpgate").
    ///
    /// Fails within [`CONNECT_TIMEOUT`] when the server cannot be reached.
    pub async fn connect(url: &str, prefix: &str) -> Result<Shared, SharedError> {
        let shown = redact(url);
        let bad_url = |cause| SharedError::Url {
            url: shown.clone(),
            cause,
        };
        let client = redis::Client::open(url).map_err(bad_url)?;
        let info = client.get_connection_info().clone();
        let resp3 = info
            .redis_settings()
            .clone()
            .set_protocol(redis::ProtocolVersion::RESP3);
        let push_client = redis::Client::open(info.set_redis_settings(resp3)).map_err(bad_url)?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(CONNECT_TIMEOUT))
            .set_response_timeout(Some(RESPONSE_TIMEOUT))
            .set_number_of_retries(RECONNECT_RETRIES)
            .set_max_delay(RECONNECT_MAX_DELAY);
        let conn = match tokio::time::timeout(CONNECT_TIMEOUT, ConnectionManager::new_with_config(client, config)).await
        {
            Ok(Ok(conn)) => conn,
            Ok(Err(cause)) => return Err(SharedError::Connect { url: shown, cause }),
            Err(_) => {
                return Err(SharedError::ConnectTimeout {
                    url: shown,
                    after: CONNECT_TIMEOUT,
                });
            }
        };
        Ok(Shared {
            inner: Arc::new(Inner {
                conn,
                push_client,
                url: shown,
                keys: Keys::new(prefix),
                rate: redis::Script::new(RATE_LUA),
                put: redis::Script::new(include_str!("shared/put.lua")),
                all: redis::Script::new(include_str!("shared/all.lua")),
            }),
        })
    }

    /// Shared GCRA: one event of `key` under `gcra` for all nodes together, decided as
    /// [`crate::rate::Buckets::take`] decides it on one node (same arithmetic, same burst, both
    /// modes), done atomically by one Lua script on the server's clock, in microseconds. The key
    /// expires once its TAT has passed.
    pub async fn take(&self, key: &str, gcra: &Gcra, mode: Mode) -> Result<Decision, SharedError> {
        let (interval_us, tolerance_us, mode) = gcra_args(gcra, mode);
        let (kind, wait_us): (i64, i64) = self
            .inner
            .rate
            .key(self.inner.keys.gcra(key))
            .arg(interval_us)
            .arg(tolerance_us)
            .arg(mode)
            .invoke_async(&mut self.conn())
            .await
            .map_err(|e| self.request_error(e))?;
        decision(kind, wait_us).ok_or_else(|| self.data_error(format!("rate.lua answered {kind} {wait_us}")))
    }

    /// Reserves the next slot of `key` at one slot per `interval` for all nodes together (no
    /// burst; slots in order of asking) and returns how long the caller must wait before its slot
    /// (`Duration::ZERO` = now): [`Shared::take`] with [`Mode::Reserve`].
    pub async fn reserve(&self, key: &str, interval: Duration) -> Result<Duration, SharedError> {
        let decision = self.take(key, &Gcra::new(1, interval, 1), Mode::Reserve).await?;
        Ok(decision.delay())
    }

    /// Adds `entry` to the suppression list shared by all nodes (replacing any entry for its
    /// address) and publishes the change, both in one transaction. The address is normalised
    /// as the local list does it.
    pub async fn suppress(&self, entry: &Entry) -> Result<(), SharedError> {
        let entry = Entry {
            address: crate::suppress::normalize(&entry.address).map_err(SharedError::InvalidAddress)?,
            ..entry.clone()
        };
        let json = self.to_json(&entry)?;
        let message = self.to_json(&Message::Add { entry: entry.clone() })?;
        let keys = &self.inner.keys;
        let mut pipe = redis::pipe();
        pipe.atomic()
            .hset(&keys.suppressed, &entry.address, json)
            .ignore()
            .publish(&keys.channel, message)
            .ignore();
        self.query(&pipe).await
    }

    /// Removes `address` from the shared suppression list and publishes the change (also when it
    /// was not there: removing is idempotent).
    pub async fn unsuppress(&self, address: &str) -> Result<(), SharedError> {
        let address = crate::suppress::normalize(address).map_err(SharedError::InvalidAddress)?;
        let message = self.to_json(&Message::Remove {
            address: address.clone(),
        })?;
        let keys = &self.inner.keys;
        let mut pipe = redis::pipe();
        pipe.atomic()
            .hdel(&keys.suppressed, &address)
            .ignore()
            .publish(&keys.channel, message)
            .ignore();
        self.query(&pipe).await
    }

    /// Every entry of the shared suppression list, sorted by address (for a node starting up).
    /// A value that is not an entry is skipped with a warning.
    pub async fn suppressed(&self) -> Result<Vec<Entry>, SharedError> {
        let all: Vec<(String, String)> = self
            .conn()
            .hgetall(&self.inner.keys.suppressed)
            .await
            .map_err(|e| self.request_error(e))?;
        let mut entries: Vec<Entry> = all
            .into_iter()
            .filter_map(|(address, json)| match serde_json::from_str(&json) {
                Ok(entry) => Some(entry),
                Err(e) => {
                    tracing::warn!(url = %self.inner.url, %address, error = %e, "shared suppression list: bad entry skipped");
                    None
                }
            })
            .collect();
        entries.sort_by(|a: &Entry, b| a.address.cmp(&b.address));
        Ok(entries)
    }

    /// Follows the change channel: calls `apply` for each change made by any node (including this
    /// one); reconnects after errors with a back-off; ends when the returned handle is aborted
    /// (dropping the handle detaches the task, as with any tokio task).
    ///
    /// Publications are not stored by Redis, so after each (re)subscription the follower reads the
    /// whole list and reports how it differs from what it reported before: the first time, every
    /// entry already in the list arrives as [`Change::Added`]; after a reconnection, exactly what
    /// changed meanwhile. Changes are reported once each: an add that leaves an entry as it was, or
    /// a remove of an address not in the list, is not reported. `apply` should therefore be
    /// idempotent and cheap (it runs on the follower's task; it must not block).
    ///
    /// The follower also ends by itself once every clone of this [`Shared`] is dropped (it notices
    /// within 15 s). Must be called inside a Tokio runtime.
    pub fn follow(&self, apply: impl Fn(Change) + Send + Sync + 'static) -> tokio::task::JoinHandle<()> {
        tokio::spawn(follow::run(self.clone(), apply))
    }

    /// Stores `json` (opaque text, by convention JSON) as `id` of `namespace` for `ttl` (at least
    /// 1 ms), replacing any value it had. Expiry is per id and uses the server's clock.
    ///
    /// A namespace is one hash whose fields carry their own expiry (`{"expires_at_ms":..,"value":..}`):
    /// [`Shared::all`] skips and deletes the expired ones, and the hash itself expires when its
    /// longest-lived field would. Meant for small namespaces: [`Shared::all`] reads the whole hash.
    pub async fn put(&self, namespace: &str, id: &str, json: &str, ttl: Duration) -> Result<(), SharedError> {
        let ttl_ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1);
        let value = self.to_json(&json)?;
        let _: i64 = self
            .inner
            .put
            .key(self.inner.keys.state(namespace))
            .arg(id)
            .arg(value)
            .arg(ttl_ms)
            .invoke_async(&mut self.conn())
            .await
            .map_err(|e| self.request_error(e))?;
        Ok(())
    }

    /// Every live `(id, json)` of `namespace`, sorted by id; deletes the expired ones. A value that
    /// cannot be read is skipped with a warning.
    pub async fn all(&self, namespace: &str) -> Result<Vec<(String, String)>, SharedError> {
        let fields: Vec<(String, String)> = self
            .inner
            .all
            .key(self.inner.keys.state(namespace))
            .invoke_async(&mut self.conn())
            .await
            .map_err(|e| self.request_error(e))?;
        let mut live: Vec<(String, String)> = fields
            .into_iter()
            .filter_map(|(id, stored)| match serde_json::from_str::<Stored>(&stored) {
                Ok(stored) => Some((id, stored.value)),
                Err(e) => {
                    tracing::warn!(url = %self.inner.url, %namespace, %id, error = %e, "shared state: bad value skipped");
                    None
                }
            })
            .collect();
        live.sort();
        Ok(live)
    }

    /// Records that the message `message_id` was relayed to `recipients` (normalised by the
    /// caller), kept for `ttl`, so that a report any node receives can be matched to it.
    pub async fn record_sent(&self, message_id: &str, recipients: &[String], ttl: Duration) -> Result<(), SharedError> {
        if recipients.is_empty() {
            return Ok(());
        }
        let key = self.inner.keys.sent(message_id);
        let ttl_ms = i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX).max(1);
        let mut pipe = redis::pipe();
        pipe.atomic()
            .sadd(&key, recipients)
            .ignore()
            .pexpire(&key, ttl_ms)
            .ignore();
        self.query(&pipe).await
    }

    /// Whether some node recorded the message `message_id` as relayed to `recipient`.
    pub async fn was_sent(&self, message_id: &str, recipient: &str) -> Result<bool, SharedError> {
        self.conn()
            .sismember(self.inner.keys.sent(message_id), recipient)
            .await
            .map_err(|e| self.request_error(e))
    }

    /// Deletes `id` from `namespace` (nothing happens if it is not there).
    pub async fn delete(&self, namespace: &str, id: &str) -> Result<(), SharedError> {
        let _: i64 = self
            .conn()
            .hdel(self.inner.keys.state(namespace), id)
            .await
            .map_err(|e| self.request_error(e))?;
        Ok(())
    }

    fn conn(&self) -> ConnectionManager {
        self.inner.conn.clone()
    }

    async fn query(&self, pipe: &redis::Pipeline) -> Result<(), SharedError> {
        pipe.query_async::<()>(&mut self.conn())
            .await
            .map_err(|e| self.request_error(e))
    }

    fn to_json(&self, value: &impl serde::Serialize) -> Result<String, SharedError> {
        serde_json::to_string(value).map_err(|e| self.data_error(e.to_string()))
    }

    fn request_error(&self, cause: redis::RedisError) -> SharedError {
        SharedError::Request {
            url: self.inner.url.clone(),
            cause,
        }
    }

    fn data_error(&self, what: String) -> SharedError {
        SharedError::Data {
            url: self.inner.url.clone(),
            what,
        }
    }
}

impl fmt::Debug for Shared {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Shared")
            .field("url", &self.inner.url)
            .field("prefix", &self.inner.keys.prefix)
            .finish_non_exhaustive()
    }
}

/// [`Shared::take`]'s script: the GCRA function, then its call on the server's clock.
const RATE_LUA: &str = concat!(include_str!("shared/gcra.lua"), include_str!("shared/rate.lua"));

/// The GCRA script's arguments: interval and tolerance in microseconds, and the mode.
fn gcra_args(gcra: &Gcra, mode: Mode) -> (u64, u64, &'static str) {
    let micros = |d: Duration| u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
    let mode = match mode {
        Mode::Admit => "admit",
        Mode::Reserve => "reserve",
    };
    (micros(gcra.interval()), micros(gcra.tolerance()), mode)
}

/// The GCRA script's answer as a decision (`None`: not one it gives).
fn decision(kind: i64, wait_us: i64) -> Option<Decision> {
    let wait = Duration::from_micros(u64::try_from(wait_us).ok()?);
    match kind {
        0 => Some(Decision::Allowed),
        1 => Some(Decision::Wait(wait)),
        2 => Some(Decision::Denied(wait)),
        _ => None,
    }
}

/// `url` with its password hidden (`redis://user:***@host/0`, `redis+unix:///s.sock?pass=***`).
fn redact(url: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((base, query)) => (base, Some(query)),
        None => (url, None),
    };
    let mut shown = match base.split_once("://") {
        Some((scheme, rest)) => {
            let authority_end = rest.find('/').unwrap_or(rest.len());
            let (authority, path) = rest.split_at(authority_end);
            match authority
                .rsplit_once('@')
                .and_then(|(user, host)| Some((user.split_once(':')?.0, host)))
            {
                Some((user, host)) => format!("{scheme}://{user}:***@{host}{path}"),
                None => base.to_owned(),
            }
        }
        None => base.to_owned(),
    };
    if let Some(query) = query {
        let params: Vec<String> = query
            .split('&')
            .map(|param| match param.split_once('=') {
                Some((name @ ("pass" | "password"), _)) => format!("{name}=***"),
                _ => param.to_owned(),
            })
            .collect();
        shown = format!("{shown}?{}", params.join("&"));
    }
    shown
}

#[cfg(test)]
mod tests;
