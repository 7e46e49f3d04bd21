//! The node-wide budget for message content held in memory.
//!
//! Every session counts the bytes of the message it is receiving against one budget
//! (`[spool] memory_budget`). While the budget is used up, new transactions get
//! `452 4.3.1` at MAIL, and a message whose content would go over it is read to its end without
//! being kept and answered `452 4.3.1`: the client tries again later, as it would on a full disk,
//! instead of the host running out of memory.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

/// Bytes of message content held in memory by all sessions, against a limit.
#[derive(Debug)]
pub struct MemoryBudget {
    limit: u64,
    used: AtomicU64,
}

impl MemoryBudget {
    pub fn new(limit: u64) -> Arc<MemoryBudget> {
        Arc::new(MemoryBudget {
            limit,
            used: AtomicU64::new(0),
        })
    }

    /// Whether the budget is used up, that is less than a sixteenth of it is left: a new
    /// transaction would most likely not fit, so it waits.
    pub fn exhausted(&self) -> bool {
        let left = self.limit.saturating_sub(self.used.load(Ordering::Relaxed));
        u128::from(left) * 16 < u128::from(self.limit)
    }

    /// Bytes held now.
    pub fn used(&self) -> u64 {
        self.used.load(Ordering::Relaxed)
    }

    /// A share of the budget for one message, given back when dropped.
    pub fn hold(self: &Arc<Self>) -> Held {
        Held {
            budget: self.clone(),
            bytes: 0,
        }
    }
}

/// One message's share of the [`MemoryBudget`].
#[derive(Debug)]
pub struct Held {
    budget: Arc<MemoryBudget>,
    bytes: u64,
}

impl Held {
    /// Holds `total` bytes in all for this message. `false` (and nothing more held) when that
    /// would take the budget over its limit.
    pub fn grow_to(&mut self, total: u64) -> bool {
        if total <= self.bytes {
            return true;
        }
        let more = total - self.bytes;
        let before = self.budget.used.fetch_add(more, Ordering::Relaxed);
        if before + more > self.budget.limit {
            self.budget.used.fetch_sub(more, Ordering::Relaxed);
            return false;
        }
        self.bytes = total;
        true
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        self.budget.used.fetch_sub(self.bytes, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_are_bounded_and_given_back() {
        let budget = MemoryBudget::new(100);
        let mut a = budget.hold();
        let mut b = budget.hold();
        assert!(a.grow_to(60));
        assert!(!b.grow_to(50), "60 + 50 is over 100");
        assert!(b.grow_to(33));
        assert!(!budget.exhausted(), "93 of 100: 7 left, more than a sixteenth");
        assert!(b.grow_to(34));
        assert!(budget.exhausted(), "94 of 100: 6 left, less than a sixteenth");
        assert!(b.grow_to(40));
        assert!(budget.exhausted());
        drop(a);
        assert_eq!(budget.used(), 40);
        assert!(!budget.exhausted());
        assert!(b.grow_to(100));
        drop(b);
        assert_eq!(budget.used(), 0);
    }
}
