//! A message while it is queued: envelope, where its body is, and each recipient's state.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use crate::envelope::Envelope;
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

pub struct QueuedMessage {
    pub env: Envelope,
    body_ref: Mutex<BodyRef>,
    cache: Mutex<Option<Cached>>,
    states: Mutex<Vec<RcptState>>,
    /// Serialises the spool records that move or finish the message; true once finished.
    pub(super) spool_lock: tokio::sync::Mutex<bool>,
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
        }
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
