//! A connection limit that can be resized while connections are open.
//!
//! A tokio semaphore cannot take back permits that are in use, so lowering the limit below what
//! is in use leaves a debt: each permit released while there is debt is retired instead of
//! returned, and [`Gate::over_limit`] says a connection should close. Raising the limit pays the
//! debt first, then adds permits.

use std::sync::{Arc, Mutex};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// One destination's connection limit.
pub struct Gate {
    sem: Arc<Semaphore>,
    state: Mutex<Sizes>,
}

struct Sizes {
    max: usize,
    /// Permits in use beyond `max`, to retire as they are released.
    debt: usize,
}

/// One open connection's place under a [`Gate`].
pub struct Permit {
    permit: Option<OwnedSemaphorePermit>,
    gate: Arc<Gate>,
}

impl Gate {
    pub fn new(max: usize) -> Gate {
        Gate {
            sem: Arc::new(Semaphore::new(max)),
            state: Mutex::new(Sizes { max, debt: 0 }),
        }
    }

    /// Sets the limit to `max`.
    pub fn resize(&self, max: usize) {
        let mut s = self.state.lock().unwrap();
        if max > s.max {
            let mut more = max - s.max;
            let paid = more.min(s.debt);
            s.debt -= paid;
            more -= paid;
            self.sem.add_permits(more);
        } else if max < s.max {
            let fewer = s.max - max;
            let forgotten = self.sem.forget_permits(fewer);
            s.debt += fewer - forgotten;
        }
        s.max = max;
    }

    /// A permit now, if one is free.
    pub fn try_acquire(self: &Arc<Gate>) -> Option<Permit> {
        let permit = self.sem.clone().try_acquire_owned().ok()?;
        Some(Permit {
            permit: Some(permit),
            gate: self.clone(),
        })
    }

    /// Waits for a permit.
    pub async fn acquire(self: &Arc<Gate>) -> Permit {
        let permit = self
            .sem
            .clone()
            .acquire_owned()
            .await
            .expect("shaping semaphores are never closed");
        Permit {
            permit: Some(permit),
            gate: self.clone(),
        }
    }

    /// Whether more connections are open than the limit allows.
    pub fn over_limit(&self) -> bool {
        self.state.lock().unwrap().debt > 0
    }

    /// How many connections are open.
    pub fn in_use(&self) -> usize {
        let s = self.state.lock().unwrap();
        (s.max + s.debt).saturating_sub(self.sem.available_permits())
    }

    pub fn max(&self) -> usize {
        self.state.lock().unwrap().max
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        let Some(permit) = self.permit.take() else { return };
        let mut s = self.gate.state.lock().unwrap();
        if s.debt > 0 {
            s.debt -= 1;
            permit.forget();
        } else {
            drop(s);
            drop(permit);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lowering_the_limit_retires_permits_as_they_are_released() {
        let gate = Arc::new(Gate::new(3));
        let held: Vec<Permit> = (0..3).map(|_| gate.try_acquire().expect("free")).collect();
        assert_eq!(gate.in_use(), 3);
        gate.resize(1);
        assert!(gate.over_limit());
        assert!(gate.try_acquire().is_none());
        let mut held = held.into_iter();
        drop(held.next());
        assert!(gate.over_limit(), "one more must go");
        assert!(gate.try_acquire().is_none(), "a retired permit is not handed out");
        drop(held.next());
        assert!(!gate.over_limit());
        assert_eq!(gate.in_use(), 1);
        assert!(gate.try_acquire().is_none(), "the one left is the limit");
        drop(held.next());
        assert_eq!(gate.in_use(), 0);
        let one = gate.try_acquire().expect("the limit is 1");
        assert!(gate.try_acquire().is_none());
        drop(one);
    }

    #[test]
    fn raising_the_limit_pays_the_debt_first() {
        let gate = Arc::new(Gate::new(4));
        let held: Vec<Permit> = (0..4).map(|_| gate.try_acquire().expect("free")).collect();
        gate.resize(1);
        gate.resize(2);
        assert!(gate.over_limit(), "4 open under a limit of 2");
        gate.resize(5);
        assert!(!gate.over_limit());
        let extra = gate.try_acquire().expect("one more than the 4 held");
        assert!(gate.try_acquire().is_none());
        drop(held);
        drop(extra);
        assert_eq!(gate.in_use(), 0);
        assert_eq!(gate.max(), 5);
        let all: Vec<Permit> = (0..5).map(|_| gate.try_acquire().expect("free")).collect();
        assert!(gate.try_acquire().is_none());
        drop(all);
    }

    #[test]
    fn lowering_an_idle_limit_forgets_free_permits_at_once() {
        let gate = Arc::new(Gate::new(5));
        gate.resize(2);
        assert!(!gate.over_limit());
        let a = gate.try_acquire().expect("1");
        let b = gate.try_acquire().expect("2");
        assert!(gate.try_acquire().is_none());
        drop((a, b));
    }
}
