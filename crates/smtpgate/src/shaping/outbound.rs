//! The node's cap on outbound MX connections (`[queue] max_connections`), shared by every stream
//! and destination, handed out by stream priority.
//!
//! When the cap is reached, workers wait in order of their stream's priority (higher first), then
//! of arrival. A connection of a lower priority than a waiting worker's closes after its current
//! message ([`Outbound::wanted_above`]), so that bulk mail holding every connection gives way to
//! transactional mail within one message.

use std::cmp::Ordering;
use std::collections::BinaryHeap;
use std::sync::{Arc, Mutex};

use tokio::sync::oneshot;

/// The cap and its waiters.
pub struct Outbound {
    inner: Mutex<Inner>,
}

struct Inner {
    max: usize,
    in_use: usize,
    waiting: BinaryHeap<Waiter>,
    seq: u64,
}

struct Waiter {
    priority: i32,
    seq: u64,
    grant: oneshot::Sender<()>,
}

impl PartialEq for Waiter {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for Waiter {}

impl PartialOrd for Waiter {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Waiter {
    /// The greatest is served first: the highest priority, then the earliest.
    fn cmp(&self, other: &Self) -> Ordering {
        self.priority
            .cmp(&other.priority)
            .then_with(|| other.seq.cmp(&self.seq))
    }
}

/// One outbound connection's place under the cap; released when dropped.
pub struct Slot {
    outbound: Arc<Outbound>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.outbound.release();
    }
}

/// A wait for a slot; if it is abandoned after a slot was granted, the slot goes back.
struct Pending {
    grant: Option<oneshot::Receiver<()>>,
    outbound: Arc<Outbound>,
}

impl Drop for Pending {
    fn drop(&mut self) {
        if let Some(mut grant) = self.grant.take() {
            grant.close();
            if grant.try_recv().is_ok() {
                self.outbound.release();
            }
        }
    }
}

impl Outbound {
    pub fn new(max: usize) -> Outbound {
        Outbound {
            inner: Mutex::new(Inner {
                max: max.max(1),
                in_use: 0,
                waiting: BinaryHeap::new(),
                seq: 0,
            }),
        }
    }

    /// Sets the cap (a reload); a higher one serves waiters at once.
    pub fn resize(&self, max: usize) {
        let mut inner = self.inner.lock().unwrap();
        inner.max = max.max(1);
        inner.serve();
    }

    /// Waits for a slot, behind every waiter of a higher priority and the earlier ones of the same.
    pub async fn acquire(self: &Arc<Outbound>, priority: i32) -> Slot {
        let grant = {
            let mut inner = self.inner.lock().unwrap();
            if inner.in_use < inner.max && inner.waiting.is_empty() {
                inner.in_use += 1;
                return Slot { outbound: self.clone() };
            }
            let (grant, granted) = oneshot::channel();
            inner.seq += 1;
            let seq = inner.seq;
            inner.waiting.push(Waiter { priority, seq, grant });
            granted
        };
        let mut pending = Pending {
            grant: Some(grant),
            outbound: self.clone(),
        };
        let granted = pending.grant.as_mut().expect("set above").await;
        pending.grant = None;
        debug_assert!(granted.is_ok(), "waiters are only dropped when granted");
        Slot { outbound: self.clone() }
    }

    /// Whether a worker of a higher priority than `priority` is waiting for a slot.
    pub fn wanted_above(&self, priority: i32) -> bool {
        self.first_waiting().is_some_and(|first| first > priority)
    }

    /// Whether any worker is waiting for a slot: a connection with nothing to send should give
    /// its slot up at once.
    pub fn wanted(&self) -> bool {
        self.first_waiting().is_some()
    }

    /// The priority of the first worker in line, if any.
    fn first_waiting(&self) -> Option<i32> {
        let mut inner = self.inner.lock().unwrap();
        // Waiters that gave up are dropped here, so they do not count.
        while inner.waiting.peek().is_some_and(|w| w.grant.is_closed()) {
            inner.waiting.pop();
        }
        inner.waiting.peek().map(|w| w.priority)
    }

    /// Slots in use and workers waiting.
    pub fn usage(&self) -> (usize, usize, usize) {
        let inner = self.inner.lock().unwrap();
        (inner.max, inner.in_use, inner.waiting.len())
    }

    fn release(&self) {
        let mut inner = self.inner.lock().unwrap();
        inner.in_use -= 1;
        inner.serve();
    }
}

impl Inner {
    /// Hands free slots to the waiters first in line.
    fn serve(&mut self) {
        while self.in_use < self.max {
            let Some(next) = self.waiting.pop() else { break };
            if next.grant.send(()).is_ok() {
                self.in_use += 1;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn waiters_are_served_by_priority_then_arrival() {
        let out = Arc::new(Outbound::new(1));
        let first = out.acquire(0).await;
        let order = Arc::new(Mutex::new(Vec::new()));
        let mut tasks = Vec::new();
        for (name, priority) in [("bulk-1", -5), ("bulk-2", -5), ("tx", 10), ("default", 0)] {
            let (mine, order) = (out.clone(), order.clone());
            tasks.push(tokio::spawn(async move {
                let slot = mine.acquire(priority).await;
                order.lock().unwrap().push(name);
                tokio::task::yield_now().await;
                drop(slot);
            }));
            // Let each one join the line before the next.
            while out.usage().2 < tasks.len() {
                tokio::task::yield_now().await;
            }
        }
        assert!(out.wanted_above(0), "tx (10) waits above priority 0");
        assert!(!out.wanted_above(10));
        assert!(out.wanted(), "anyone waiting counts, whatever its priority");
        drop(first);
        for t in tasks {
            tokio::time::timeout(Duration::from_secs(5), t).await.unwrap().unwrap();
        }
        assert_eq!(*order.lock().unwrap(), ["tx", "default", "bulk-1", "bulk-2"]);
        assert_eq!(out.usage(), (1, 0, 0));
    }

    #[tokio::test]
    async fn an_abandoned_wait_gives_its_slot_back() {
        let out = Arc::new(Outbound::new(1));
        let held = out.acquire(0).await;
        let waiting = {
            let out = out.clone();
            tokio::spawn(async move { out.acquire(5).await })
        };
        while out.usage().2 == 0 {
            tokio::task::yield_now().await;
        }
        waiting.abort();
        let _ = waiting.await;
        assert!(!out.wanted_above(0), "a waiter that gave up does not count");
        assert!(!out.wanted(), "a waiter that gave up does not count");
        drop(held);
        assert_eq!(out.usage().1, 0, "nothing leaked");
        let again = tokio::time::timeout(Duration::from_secs(5), out.acquire(0))
            .await
            .unwrap();
        drop(again);
    }

    #[tokio::test]
    async fn a_larger_cap_serves_waiters_at_once() {
        let out = Arc::new(Outbound::new(1));
        let _held = out.acquire(0).await;
        let waiting = {
            let out = out.clone();
            tokio::spawn(async move { out.acquire(0).await })
        };
        while out.usage().2 == 0 {
            tokio::task::yield_now().await;
        }
        out.resize(2);
        let slot = tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(out.usage(), (2, 2, 0));
        drop(slot);
    }
}
