//! Event ids: 128 bits as 32 hex digits, ordered by time: the millisecond (48 bits), a counter of
//! this process (48 bits), and a random number drawn at start (32 bits), so two nodes (or two
//! runs within a millisecond) never make the same id and ids sort as events happened.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// Makes ids for one process.
pub struct IdGen {
    counter: AtomicU64,
    node: u32,
}

impl Default for IdGen {
    fn default() -> Self {
        Self::new()
    }
}

impl IdGen {
    pub fn new() -> IdGen {
        let mut random = [0u8; 4];
        // Without the OS's randomness, the process id and time still tell runs apart.
        let node = match getrandom::fill(&mut random) {
            Ok(()) => u32::from_le_bytes(random),
            Err(_) => std::process::id() ^ (now_ms() as u32),
        };
        IdGen {
            counter: AtomicU64::new(0),
            node,
        }
    }

    /// A new id and its time (unix ms).
    pub fn next(&self) -> (String, u64) {
        let at = now_ms();
        let n = self.counter.fetch_add(1, Ordering::Relaxed) & 0xffff_ffff_ffff;
        (format!("{:012x}{n:012x}{:08x}", at & 0xffff_ffff_ffff, self.node), at)
    }
}

/// The second half of an event's store key: the counter and the first 16 random bits of its id,
/// unique with the time for every event of every run that matters.
pub fn seq_of(id: &str) -> u64 {
    id.get(12..28)
        .and_then(|h| u64::from_str_radix(h, 16).ok())
        .unwrap_or(0)
}

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}
