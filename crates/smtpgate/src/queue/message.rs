//! A message while it is queued: envelope, where its body is, and each recipient's state.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use crate::envelope::Envelope;
use crate::reply::{Category, Upstream};
use crate::spool::{BodyRef, RcptState, Spool, Stored};

/// Bodies kept in memory between acceptance and delivery, up to a limit; the rest is read back
/// from the spool when it is needed, so a backlog costs disk, not memory.
pub struct BodyCache {
    used: AtomicUsize,
    limit: usize,
}

impl BodyCache {
    pub fn new(limit: usize) -> Arc<Self> {
        Arc::new(BodyCache {
            used: AtomicUsize::new(0),
            limit,
        })
    }

    /// Keeps `body` in memory if the budget allows.
    pub fn admit(self: &Arc<Self>, body: Vec<u8>) -> Option<Cached> {
        let len = body.len();
        let prev = self.used.fetch_add(len, Ordering::Relaxed);
        if prev + len > self.limit {
            self.used.fetch_sub(len, Ordering::Relaxed);
            return None;
        }
        Some(Cached {
            bytes: body.into(),
            cache: self.clone(),
        })
    }

    pub fn used(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }
}

/// A body held in memory; gives its bytes back to the budget when dropped.
pub struct Cached {
    bytes: Arc<[u8]>,
    cache: Arc<BodyCache>,
}

impl Drop for Cached {
    fn drop(&mut self) {
        self.cache.used.fetch_sub(self.bytes.len(), Ordering::Relaxed);
    }
}

/// What an operator sees of a message's delivery so far (`queue show`); kept in memory only, so
/// after a restart it starts again from nothing (the recipients' states are in the spool).
#[derive(Debug, Clone, Default)]
pub struct Progress {
    /// Delivery attempts so far (one per next hop tried).
    pub attempts: u32,
    /// The last attempt's outcome for one of its recipients (a failure before a delivery).
    pub last: Option<Last>,
    /// Unix seconds of the last attempt and of the next one planned.
    pub last_attempt: Option<u64>,
    pub next_attempt: Option<u64>,
}

/// One recipient's outcome of an attempt, as settling classified it (`settle::Attempted`).
#[derive(Debug, Clone)]
pub struct Last {
    /// `delivered`, `deferred` or `failed`.
    pub result: &'static str,
    pub reply: Upstream,
    /// The bounce classification's category of a failure.
    pub category: Option<Category>,
    /// The server that gave it; none for the gate's own finding.
    pub server: Option<String>,
}

pub struct QueuedMessage {
    pub env: Envelope,
    body_ref: Mutex<BodyRef>,
    cache: Mutex<Option<Cached>>,
    states: Mutex<Vec<RcptState>>,
    /// Serialises the spool records that move or finish the message; true once finished.
    pub(super) spool_lock: tokio::sync::Mutex<bool>,
    progress: Mutex<Progress>,
    /// Held by an operator: never delivered until released (the flag is also in the spool).
    held: AtomicBool,
    /// Bumped by a hold, release, bounce or delete: a delivery made under an older epoch is stale
    /// and dropped wherever it is found (retry timer, ready list, worker), so a release that
    /// dispatches the pending recipients again never sends them twice.
    epoch: AtomicU64,
    /// Wakes the message's retry timers at once (retry now, or a hold that parks them).
    pub(super) wake: tokio::sync::Notify,
}

impl QueuedMessage {
    pub fn new(env: Envelope, body_ref: BodyRef, states: Option<Vec<RcptState>>, body: Option<Cached>) -> Self {
        let states = states.unwrap_or_else(|| vec![RcptState::Pending; env.recipients.len()]);
        QueuedMessage {
            env,
            body_ref: Mutex::new(body_ref),
            cache: Mutex::new(body),
            states: Mutex::new(states),
            spool_lock: tokio::sync::Mutex::new(false),
            progress: Mutex::default(),
            held: AtomicBool::new(false),
            epoch: AtomicU64::new(0),
            wake: tokio::sync::Notify::new(),
        }
    }

    /// Takes over what an operator sees and did of `old`, the same message before it was
    /// rewritten (an after-queue scan's changes).
    pub(super) fn inherit(&self, old: &QueuedMessage) {
        *self.progress.lock().unwrap() = old.progress();
        self.held.store(old.is_held(), Ordering::SeqCst);
    }

    pub fn progress(&self) -> Progress {
        self.progress.lock().unwrap().clone()
    }

    /// Counts an attempt, its outcome, when it was, and when the next one is planned.
    pub(super) fn attempted(&self, last: Option<Last>, now: u64, next: Option<u64>) {
        let mut p = self.progress.lock().unwrap();
        p.attempts += 1;
        if last.is_some() {
            p.last = last;
        }
        p.last_attempt = Some(now);
        p.next_attempt = next;
    }

    /// The next attempt happens now (retry now, or a release).
    pub(super) fn due_now(&self, now: u64) {
        let mut p = self.progress.lock().unwrap();
        if p.next_attempt.is_some() {
            p.next_attempt = Some(now);
        }
    }

    pub fn is_held(&self) -> bool {
        self.held.load(Ordering::SeqCst)
    }

    /// Sets the held flag and starts a new epoch; true if the flag changed.
    pub(super) fn set_held(&self, held: bool) -> bool {
        let changed = self.held.swap(held, Ordering::SeqCst) != held;
        self.new_epoch();
        changed
    }

    pub(super) fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::SeqCst)
    }

    /// Makes every delivery made so far stale, and wakes the retry timers so they notice.
    pub(super) fn new_epoch(&self) {
        self.epoch.fetch_add(1, Ordering::SeqCst);
        self.wake.notify_waiters();
    }

    pub fn body_ref(&self) -> BodyRef {
        *self.body_ref.lock().unwrap()
    }

    pub(super) fn set_body_ref(&self, r: BodyRef) {
        *self.body_ref.lock().unwrap() = r;
    }

    /// Indexes of recipients not yet final.
    pub fn pending(&self) -> Vec<u32> {
        let states = self.states.lock().unwrap();
        (0..states.len() as u32)
            .filter(|&i| !states[i as usize].is_final())
            .collect()
    }

    pub fn states(&self) -> Vec<RcptState> {
        self.states.lock().unwrap().clone()
    }

    /// The part of the message in its spool record (all of it, or the header section of a
    /// message with a body file): from memory while fresh, else read back from the spool.
    pub async fn inline(&self, spool: &Spool) -> std::io::Result<Arc<[u8]>> {
        if let Some(c) = self.cache.lock().unwrap().as_ref() {
            return Ok(c.bytes.clone());
        }
        Ok(spool.read_inline(&self.body_ref()).await?.into())
    }

    /// The message as delivery sends it: the part in memory or its record, then its body file.
    pub async fn stored(&self, spool: &Spool) -> std::io::Result<Stored> {
        let at = self.body_ref();
        Ok(Stored {
            inline: self.inline(spool).await?,
            ext: spool.ext_file(&at),
        })
    }

    /// The whole message in memory, for filters that must see all of it.
    pub async fn whole(&self, spool: &Spool) -> std::io::Result<Vec<u8>> {
        let at = self.body_ref();
        if at.ext.is_none() {
            return Ok(self.inline(spool).await?.to_vec());
        }
        spool.read_whole(&at).await
    }

    /// Frees the in-memory copy (the message waits for a retry).
    pub fn drop_cache(&self) {
        self.cache.lock().unwrap().take();
    }

    /// Applies final states; returns true if this made every recipient final.
    pub fn settle(&self, updates: &[(u32, RcptState)]) -> bool {
        let mut states = self.states.lock().unwrap();
        let was_done = states.iter().all(|s| s.is_final());
        for &(idx, st) in updates {
            states[idx as usize] = st;
        }
        !was_done && states.iter().all(|s| s.is_final())
    }
}
