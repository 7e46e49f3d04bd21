//! A message while it is queued: envelope, where its body is, and each recipient's state.

use std::sync::{Arc, Mutex};

use crate::envelope::Envelope;
use crate::spool::{BodyRef, RcptState, Spool};

pub struct QueuedMessage {
    pub env: Envelope,
    pub body_ref: BodyRef,
    cache: Mutex<Option<Arc<[u8]>>>,
    states: Mutex<Vec<RcptState>>,
}

impl QueuedMessage {
    pub fn new(
        env: Envelope,
        body_ref: BodyRef,
        states: Option<Vec<RcptState>>,
        body: Option<Arc<[u8]>>,
    ) -> Self {
        let states = states.unwrap_or_else(|| vec![RcptState::Pending; env.recipients.len()]);
        QueuedMessage {
            env,
            body_ref,
            cache: Mutex::new(body),
            states: Mutex::new(states),
        }
    }

    /// Indexes of recipients not yet final.
    pub fn pending(&self) -> Vec<u32> {
        let states = self.states.lock().unwrap();
        (0..states.len() as u32)
            .filter(|&i| !states[i as usize].is_final())
            .collect()
    }

    /// The body: from memory while fresh, else read back from the spool.
    pub fn body(&self, spool: &Spool) -> std::io::Result<Arc<[u8]>> {
        if let Some(b) = self.cache.lock().unwrap().clone() {
            return Ok(b);
        }
        Ok(spool.read_body(&self.body_ref)?.into())
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
