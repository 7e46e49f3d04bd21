//! [`Shared::follow`]: the suppression channel, followed over a RESP3 connection of its own.
//!
//! One session: connect, subscribe, read the whole list and report the difference from what was
//! reported before, then report each published change until the connection fails. Between
//! sessions the follower waits, doubling the pause from [`FIRST_PAUSE`] up to [`MAX_PAUSE`]; a
//! session that got as far as the resync starts the doubling over.

use std::collections::HashMap;
use std::sync::{Arc, Weak};
use std::time::Duration;

use redis::{PushInfo, PushKind};
use tokio::sync::mpsc;

use super::{CONNECT_TIMEOUT, Change, Inner, Message, RESPONSE_TIMEOUT, Shared, SharedError};
use crate::suppress::Entry;

/// The pause before the first reconnection.
const FIRST_PAUSE: Duration = Duration::from_millis(100);
/// The longest pause between two reconnections.
const MAX_PAUSE: Duration = Duration::from_secs(10);
/// How often a quiet connection is checked with a PING (a half-open TCP connection gives no
/// other sign), and whether every [`Shared`] is gone.
const PING_EVERY: Duration = Duration::from_secs(15);

/// Runs until aborted, or until every clone of `shared` is dropped.
pub(super) async fn run(shared: Shared, apply: impl Fn(Change) + Send + Sync + 'static) {
    let mut follower = Follower {
        shared: Arc::downgrade(&shared.inner),
        apply,
        known: HashMap::new(),
    };
    drop(shared);
    let mut pause = FIRST_PAUSE;
    loop {
        let Some(shared) = follower.shared() else { return };
        let url = shared.inner.url.clone();
        match follower.session(shared, &mut pause).await {
            Ok(Ended::SharedDropped) => return,
            Err(e) => tracing::warn!(%url, error = %e, retry_in = ?pause, "following the shared suppression list"),
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(MAX_PAUSE);
    }
}

/// Why a session ended without an error.
enum Ended {
    SharedDropped,
}

struct Follower<F> {
    /// Weak, so that a forgotten follower does not keep the connection (and itself) alive.
    shared: Weak<Inner>,
    apply: F,
    /// The list as reported to `apply` so far.
    known: HashMap<String, Entry>,
}

impl<F: Fn(Change)> Follower<F> {
    fn shared(&self) -> Option<Shared> {
        self.shared.upgrade().map(|inner| Shared { inner })
    }

    /// One connection's life. `pause` goes back to [`FIRST_PAUSE`] once the follower is in step.
    async fn session(&mut self, shared: Shared, pause: &mut Duration) -> Result<Ended, SharedError> {
        let (pushes, mut received) = mpsc::unbounded_channel();
        let mut conn = subscribe(&shared, pushes).await?;
        self.resync(shared.suppressed().await?);
        *pause = FIRST_PAUSE;
        let url = shared.inner.url.clone();
        drop(shared);
        let mut ping = tokio::time::interval_at(tokio::time::Instant::now() + PING_EVERY, PING_EVERY);
        loop {
            tokio::select! {
                push = received.recv() => self.on_push(push, &url)?,
                _ = ping.tick() => {
                    if self.shared.strong_count() == 0 {
                        return Ok(Ended::SharedDropped);
                    }
                    redis::cmd("PING")
                        .query_async::<()>(&mut conn)
                        .await
                        .map_err(|cause| SharedError::Request { url: url.clone(), cause })?;
                }
            }
        }
    }

    /// Reports one push from the server; a closed connection is an error (the session ends).
    fn on_push(&mut self, push: Option<PushInfo>, url: &str) -> Result<(), SharedError> {
        let closed = || SharedError::Data {
            url: url.to_owned(),
            what: "subscription connection closed".to_owned(),
        };
        let push = push.ok_or_else(closed)?;
        match push.kind {
            PushKind::Disconnection => Err(closed()),
            PushKind::Message => {
                self.on_message(&push, url);
                Ok(())
            }
            _ => Ok(()),
        }
    }

    /// A published change: `[channel, payload]`. A payload that is not a change is skipped with a
    /// warning (the next resync repairs whatever it meant).
    fn on_message(&mut self, push: &PushInfo, url: &str) {
        let decoded = match push.data.get(1) {
            Some(payload) => redis::from_redis_value_ref::<String>(payload)
                .map_err(|e| e.to_string())
                .and_then(|json| serde_json::from_str::<Message>(&json).map_err(|e| e.to_string())),
            None => Err("message without a payload".to_owned()),
        };
        match decoded {
            Ok(Message::Add { entry }) => self.added(entry),
            Ok(Message::Remove { address }) => self.removed(&address),
            Err(e) => tracing::warn!(%url, error = %e, "shared suppression list: bad change message skipped"),
        }
    }

    /// Reports the difference between `entries` (the whole list) and what was reported so far.
    fn resync(&mut self, entries: Vec<Entry>) {
        let current: HashMap<String, Entry> = entries.into_iter().map(|e| (e.address.clone(), e)).collect();
        let gone: Vec<String> = self
            .known
            .keys()
            .filter(|a| !current.contains_key(*a))
            .cloned()
            .collect();
        for address in gone {
            self.removed(&address);
        }
        for entry in current.into_values() {
            self.added(entry);
        }
    }

    fn added(&mut self, entry: Entry) {
        if self.known.get(&entry.address) != Some(&entry) {
            self.known.insert(entry.address.clone(), entry.clone());
            (self.apply)(Change::Added(entry));
        }
    }

    fn removed(&mut self, address: &str) {
        if self.known.remove(address).is_some() {
            (self.apply)(Change::Removed(address.to_owned()));
        }
    }
}

/// A RESP3 connection subscribed to the suppression channel, its pushes sent to `pushes`.
async fn subscribe(
    shared: &Shared,
    pushes: mpsc::UnboundedSender<PushInfo>,
) -> Result<redis::aio::MultiplexedConnection, SharedError> {
    let inner = &shared.inner;
    let config = redis::AsyncConnectionConfig::new()
        .set_connection_timeout(Some(CONNECT_TIMEOUT))
        .set_response_timeout(Some(RESPONSE_TIMEOUT))
        .set_push_sender(pushes);
    let mut conn = match tokio::time::timeout(
        CONNECT_TIMEOUT,
        inner.push_client.get_multiplexed_async_connection_with_config(&config),
    )
    .await
    {
        Ok(Ok(conn)) => conn,
        Ok(Err(cause)) => {
            return Err(SharedError::Connect {
                url: inner.url.clone(),
                cause,
            });
        }
        Err(_) => {
            return Err(SharedError::ConnectTimeout {
                url: inner.url.clone(),
                after: CONNECT_TIMEOUT,
            });
        }
    };
    conn.subscribe(&inner.keys.channel)
        .await
        .map_err(|cause| shared.request_error(cause))?;
    Ok(conn)
}
