//! How long a sender waits after a failed POST: 1 s, doubling up to 5 min, with jitter, so a
//! receiver that comes back is not hit by every gate at the same instant, and one that stays
//! down for a day costs a request every few minutes.

use std::time::Duration;

/// The first wait.
pub const FIRST: Duration = Duration::from_secs(1);
/// The longest wait.
pub const CAP: Duration = Duration::from_secs(300);

/// Waits after consecutive failures; [`Backoff::reset`] after a success.
#[derive(Debug, Clone)]
pub struct Backoff {
    nominal: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff { nominal: FIRST }
    }
}

impl Backoff {
    /// The wait after this failure: between half the nominal wait and all of it ("equal
    /// jitter"); the nominal wait then doubles, up to [`CAP`]. `random` is any number, the
    /// jitter's source (tests pass fixed ones).
    pub fn next_with(&mut self, random: u64) -> Duration {
        let nominal = self.nominal;
        self.nominal = (nominal * 2).min(CAP);
        let half = nominal.as_millis() as u64 / 2;
        Duration::from_millis(half + random % (half + 1))
    }

    /// [`Backoff::next_with`] with a random jitter: the wait after this failure.
    pub fn wait(&mut self) -> Duration {
        let mut bytes = [0u8; 8];
        let _ = getrandom::fill(&mut bytes);
        self.next_with(u64::from_le_bytes(bytes))
    }

    pub fn reset(&mut self) {
        self.nominal = FIRST;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_caps() {
        let mut b = Backoff::default();
        let mut nominal = FIRST;
        for _ in 0..20 {
            let low = b.clone().next_with(0);
            let high = b.clone().next_with(u64::MAX - 1);
            let wait = b.wait();
            assert_eq!(low, nominal / 2);
            assert!(high <= nominal && high >= nominal / 2, "{high:?} for {nominal:?}");
            assert!(wait >= low && wait <= nominal, "{wait:?} for {nominal:?}");
            nominal = (nominal * 2).min(CAP);
        }
        assert_eq!(nominal, CAP);
        assert_eq!(b.clone().next_with(0), CAP / 2);
        b.reset();
        assert_eq!(b.next_with(0), FIRST / 2);
    }
}
