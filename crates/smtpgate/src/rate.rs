//! Rate limiting with the generic cell rate algorithm (GCRA): the one implementation the gate has.
//!
//! - the `rate_limit` filter refuses an event over its limit ([`Mode::Admit`]);
//! - shaping takes the next slot of a destination and waits for it ([`Mode::Reserve`]);
//! - the shared store runs the same arithmetic in Lua (`shared/gcra.lua`) for a rate that holds
//!   for every node together ([`crate::shared::Shared::take`]).
//!
//! A [`Gcra`] is a rate and a burst. A key's whole state is one instant, its theoretical arrival
//! time (TAT): when its allowance would be full again had nothing more come. An event at `now` is
//! on time when `now + tolerance >= TAT` and then moves the TAT one interval on; a key whose TAT
//! has passed is as good as never seen, so it is forgotten ([`Buckets`]), and the memory a flood
//! of new keys can take is bounded by `max_keys`.
//!
//! Times and intervals are whole microseconds, the shared store's resolution, so a limit counted
//! here and one counted in Redis decide alike.
//!
//! ```
//! use std::time::Duration;
//! use smtpgate::rate::{Buckets, Decision, Gcra, Mode};
//! use tokio::time::Instant;
//!
//! let three_a_minute = Gcra::new(3, Duration::from_secs(60), 1);
//! let mut buckets = Buckets::new(1000);
//! let now = Instant::now();
//! assert_eq!(buckets.take("client", &three_a_minute, Mode::Admit, now), Decision::Allowed);
//! assert_eq!(
//!     buckets.take("client", &three_a_minute, Mode::Admit, now),
//!     Decision::Denied(Duration::from_secs(20))
//! );
//! assert_eq!(
//!     buckets.take("client", &three_a_minute, Mode::Reserve, now),
//!     Decision::Wait(Duration::from_secs(20))
//! );
//! ```

use std::borrow::Borrow;
use std::collections::{BTreeMap, HashMap};
use std::hash::Hash;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::time::Instant;

/// How many keys a [`Limiter`] tracks at once unless told otherwise.
pub const DEFAULT_MAX_KEYS: usize = 100_000;

/// A rate and a burst: one event per `interval` on average, at most `tolerance` ahead of that.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Gcra {
    interval: Duration,
    tolerance: Duration,
}

/// What to do with an event that comes too early.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Refuse it, and do not count it (a filter's limit).
    Admit,
    /// Count it anyway, at the first instant it would be on time: slots are handed out in order
    /// of asking, so waiters never starve each other (shaping).
    Reserve,
}

/// The answer for one event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// On time: counted, go now.
    Allowed,
    /// [`Mode::Reserve`]: counted; its slot comes after this long.
    Wait(Duration),
    /// [`Mode::Admit`]: refused and not counted; it would be on time after this long.
    Denied(Duration),
}

impl Decision {
    /// How long until the event is (or would be) on time: zero when allowed now.
    pub fn delay(self) -> Duration {
        match self {
            Decision::Allowed => Duration::ZERO,
            Decision::Wait(d) | Decision::Denied(d) => d,
        }
    }
}

impl Gcra {
    /// `count` events per `per`, `burst` of them (at least 1) at the same instant; after a burst,
    /// one more each `per / count`. The interval is cut to whole microseconds.
    pub fn new(count: u32, per: Duration, burst: u32) -> Gcra {
        let interval = whole_micros(per / count.max(1));
        Gcra {
            interval,
            tolerance: interval * burst.saturating_sub(1),
        }
    }

    /// The time between two events at the rate.
    pub fn interval(&self) -> Duration {
        self.interval
    }

    /// How far ahead of the rate a burst may run.
    pub fn tolerance(&self) -> Duration {
        self.tolerance
    }

    /// The decision for an event at `now` given the key's TAT (`None`: not tracked), and the
    /// key's TAT once the event is counted (`None`: it is not).
    pub fn decide(&self, mode: Mode, tat: Option<Instant>, now: Instant) -> (Decision, Option<Instant>) {
        let tat = tat.map_or(now, |t| t.max(now));
        let early = tat.saturating_duration_since(now + self.tolerance);
        let next = Some(tat + self.interval);
        match mode {
            _ if early.is_zero() => (Decision::Allowed, next),
            Mode::Admit => (Decision::Denied(early), None),
            Mode::Reserve => (Decision::Wait(early), next),
        }
    }
}

fn whole_micros(d: Duration) -> Duration {
    Duration::from_micros(u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}

/// The TAT of each tracked key, with an index by TAT for forgetting. Not locked: see [`Limiter`].
#[derive(Debug)]
pub struct Buckets<K> {
    /// Each key's TAT, and the number of its entry in `by_tat`.
    tat: HashMap<K, (Instant, u64)>,
    by_tat: BTreeMap<(Instant, u64), K>,
    next_entry: u64,
    max_keys: usize,
}

impl<K: Hash + Eq + Clone> Buckets<K> {
    /// No key tracked; at most `max_keys` (at least 1) at once.
    pub fn new(max_keys: usize) -> Buckets<K> {
        Buckets {
            tat: HashMap::new(),
            by_tat: BTreeMap::new(),
            next_entry: 0,
            max_keys: max_keys.max(1),
        }
    }

    /// Decides on one event of `key` at `now` and counts it if it is counted.
    pub fn take<Q>(&mut self, key: &Q, gcra: &Gcra, mode: Mode, now: Instant) -> Decision
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ToOwned<Owned = K> + ?Sized,
    {
        let (decision, next) = self.peek(key, gcra, mode, now);
        if let Some(tat) = next {
            self.set(key, tat);
        }
        decision
    }

    /// What [`Buckets::take`] would decide, without counting: the decision and the TAT to
    /// [`Buckets::set`] to count it. For an event that counts against several limits only if all
    /// of them allow it.
    pub fn peek<Q>(&mut self, key: &Q, gcra: &Gcra, mode: Mode, now: Instant) -> (Decision, Option<Instant>)
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.forget_expired(now);
        gcra.decide(mode, self.get(key), now)
    }

    /// Drops keys whose TAT has passed: they are as good as never seen.
    pub fn forget_expired(&mut self, now: Instant) {
        while let Some(entry) = self.by_tat.first_entry().filter(|e| e.key().0 <= now) {
            let key = entry.remove();
            self.tat.remove(&key);
        }
    }

    /// The key's TAT, if it is tracked.
    pub fn get<Q>(&self, key: &Q) -> Option<Instant>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.tat.get(key).map(|&(tat, _)| tat)
    }

    /// Sets the key's TAT. A new key beyond `max_keys` makes room by forgetting the key closest
    /// to being forgotten anyway.
    pub fn set<Q>(&mut self, key: &Q, tat: Instant)
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ToOwned<Owned = K> + ?Sized,
    {
        let entry = (tat, self.next_entry);
        self.next_entry += 1;
        match self.tat.get_mut(key) {
            Some(slot) => {
                let old = std::mem::replace(slot, entry);
                if let Some(owned) = self.by_tat.remove(&old) {
                    self.by_tat.insert(entry, owned);
                }
            }
            None => {
                if self.tat.len() >= self.max_keys
                    && let Some((_, victim)) = self.by_tat.pop_first()
                {
                    self.tat.remove::<K>(&victim);
                }
                self.tat.insert(key.to_owned(), entry);
                self.by_tat.insert(entry, key.to_owned());
            }
        }
    }

    /// How many keys are tracked.
    pub fn len(&self) -> usize {
        self.tat.len()
    }

    /// Whether no key is tracked.
    pub fn is_empty(&self) -> bool {
        self.tat.is_empty()
    }
}

/// [`Buckets`] behind a lock, to share between tasks.
#[derive(Debug)]
pub struct Limiter<K> {
    buckets: Mutex<Buckets<K>>,
}

impl<K: Hash + Eq + Clone> Limiter<K> {
    /// At most `max_keys` keys tracked at once.
    pub fn new(max_keys: usize) -> Limiter<K> {
        Limiter {
            buckets: Mutex::new(Buckets::new(max_keys)),
        }
    }

    /// [`Buckets::take`] under the lock.
    pub fn take<Q>(&self, key: &Q, gcra: &Gcra, mode: Mode, now: Instant) -> Decision
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ToOwned<Owned = K> + ?Sized,
    {
        self.lock().take(key, gcra, mode, now)
    }

    /// The buckets, for several steps in one (a panic elsewhere while holding them leaves them
    /// usable: each step keeps them consistent).
    pub fn lock(&self) -> MutexGuard<'_, Buckets<K>> {
        self.buckets.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl<K: Hash + Eq + Clone> Default for Limiter<K> {
    fn default() -> Limiter<K> {
        Limiter::new(DEFAULT_MAX_KEYS)
    }
}

/// One limit for many keys, allowed or not (the reports intake, per client address).
#[derive(Debug)]
pub struct KeyedRate {
    gcra: Gcra,
    limiter: Limiter<String>,
}

impl KeyedRate {
    /// `count` per minute per key, all of them at once at most; at most `max_keys` keys tracked.
    pub fn per_minute(count: u32, max_keys: usize) -> KeyedRate {
        let count = count.max(1);
        KeyedRate {
            gcra: Gcra::new(count, Duration::from_secs(60), count),
            limiter: Limiter::new(max_keys),
        }
    }

    /// Whether one more event for `key` is within the limit (and counts it if so).
    pub fn admit(&self, key: &str) -> bool {
        let decision = self.limiter.take(key, &self.gcra, Mode::Admit, Instant::now());
        decision == Decision::Allowed
    }
}

#[cfg(test)]
mod tests;
