//! Connection caps, total and per client address, AUTH failures per client address, and the
//! count of open sessions for shutdown.
//!
//! A client address is an IPv4 address, or an IPv6 address cut to the listener's `ipv6_prefix`
//! (default /64, what one subscriber usually gets): counting single IPv6 addresses would let one
//! client take every place from its own prefix.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use smtpgate_proto::Reply;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::sync::Notify;

#[derive(Clone)]
pub struct ConnLimits {
    inner: Arc<Inner>,
}

struct Inner {
    /// (total, per address); a reload may change them while connections are open.
    caps: Mutex<(usize, usize)>,
    open: Mutex<(usize, HashMap<IpAddr, usize>)>,
    /// The IPv6 prefix length addresses are counted by.
    ipv6_prefix: AtomicU8,
}

pub use crate::io::client_key;

/// Holds one connection's place; gives it back when dropped.
pub struct ConnGuard {
    inner: Arc<Inner>,
    ip: IpAddr,
}

impl ConnLimits {
    pub fn new(max_total: usize, max_per_ip: usize, ipv6_prefix: u8) -> Self {
        ConnLimits {
            inner: Arc::new(Inner {
                caps: Mutex::new((max_total, max_per_ip)),
                open: Mutex::default(),
                ipv6_prefix: AtomicU8::new(ipv6_prefix),
            }),
        }
    }

    /// New caps for the same open connections (after a reload). A new `ipv6_prefix` applies to
    /// connections accepted from now on; each open one gives back the place it took.
    pub fn set_caps(&self, max_total: usize, max_per_ip: usize, ipv6_prefix: u8) {
        *self.inner.caps.lock().unwrap() = (max_total, max_per_ip);
        self.inner.ipv6_prefix.store(ipv6_prefix, Ordering::Relaxed);
    }

    /// Takes a place for a connection from `ip`, or `None` if a cap is reached.
    pub fn admit(&self, ip: IpAddr) -> Option<ConnGuard> {
        let ip = client_key(ip, self.inner.ipv6_prefix.load(Ordering::Relaxed));
        let (max_total, max_per_ip) = *self.inner.caps.lock().unwrap();
        let mut open = self.inner.open.lock().unwrap();
        let per_ip = open.1.get(&ip).copied().unwrap_or(0);
        if open.0 >= max_total || per_ip >= max_per_ip {
            return None;
        }
        open.0 += 1;
        *open.1.entry(ip).or_default() += 1;
        Some(ConnGuard {
            inner: self.inner.clone(),
            ip,
        })
    }
}

impl Drop for ConnGuard {
    fn drop(&mut self) {
        let mut open = self.inner.open.lock().unwrap();
        open.0 -= 1;
        if let Some(n) = open.1.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                open.1.remove(&self.ip);
            }
        }
    }
}

/// AUTH failures per client address (see [`client_key`]), across connections and reloads.
#[derive(Clone, Default)]
pub struct AuthFailures {
    inner: Arc<Mutex<HashMap<IpAddr, Failures>>>,
}

#[derive(Debug, Clone, Copy)]
struct Failures {
    count: u32,
    last: Instant,
}

/// Past this many remembered addresses, expired ones are swept out at the next failure.
const SWEEP_AT: usize = 4096;

impl AuthFailures {
    /// Whether `key` has failed `max` times, the last one less than `lockout` ago.
    pub fn locked(&self, key: IpAddr, max: u32, lockout: Duration) -> bool {
        let now = Instant::now();
        let mut map = self.inner.lock().unwrap();
        match map.get(&key) {
            Some(f) if now.duration_since(f.last) >= lockout => {
                map.remove(&key);
                false
            }
            Some(f) => f.count >= max,
            None => false,
        }
    }

    /// Counts a failure for `key`; returns its failures within `lockout` of each other.
    pub fn fail(&self, key: IpAddr, lockout: Duration) -> u32 {
        let now = Instant::now();
        let mut map = self.inner.lock().unwrap();
        if map.len() >= SWEEP_AT {
            map.retain(|_, f| now.duration_since(f.last) < lockout);
        }
        let f = map.entry(key).or_insert(Failures { count: 0, last: now });
        if now.duration_since(f.last) >= lockout {
            f.count = 0;
        }
        f.count += 1;
        f.last = now;
        f.count
    }

    /// A successful AUTH forgets the address's failures.
    pub fn clear(&self, key: IpAddr) {
        self.inner.lock().unwrap().remove(&key);
    }
}

/// Answers a connection over a cap with `421 4.7.0` and closes it.
pub async fn refuse(mut stream: TcpStream) {
    let mut out = Vec::new();
    Reply::too_many_connections().write_to(&mut out);
    let _ = tokio::time::timeout(Duration::from_secs(5), stream.write_all(&out)).await;
    let _ = stream.shutdown().await;
}

/// Open sessions across listeners, so shutdown can wait for them.
#[derive(Default)]
pub struct Sessions {
    open: AtomicUsize,
    idle: Notify,
}

pub struct SessionGuard<'a>(&'a Sessions);

impl Sessions {
    pub fn enter(&self) -> SessionGuard<'_> {
        self.open.fetch_add(1, Ordering::SeqCst);
        SessionGuard(self)
    }

    pub fn count(&self) -> usize {
        self.open.load(Ordering::SeqCst)
    }

    /// Waits until no session is open, at most `limit`; true if that happened.
    pub async fn wait_idle(&self, limit: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let notified = self.idle.notified();
            if self.count() == 0 {
                return true;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return self.count() == 0;
            }
        }
    }
}

impl Drop for SessionGuard<'_> {
    fn drop(&mut self) {
        if self.0.open.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv6_clients_are_counted_by_prefix() {
        let limits = ConnLimits::new(10, 2, 64);
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let _a = limits.admit(ip("2001:db8:1:2::1")).unwrap();
        let _b = limits.admit(ip("2001:db8:1:2:ffff::9")).unwrap();
        assert!(limits.admit(ip("2001:db8:1:2::3")).is_none(), "same /64");
        assert!(limits.admit(ip("2001:db8:1:3::1")).is_some(), "next /64");
        let _c = limits.admit(ip("10.0.0.1")).unwrap();
        let _d = limits.admit(ip("::ffff:10.0.0.1")).unwrap();
        assert!(
            limits.admit(ip("10.0.0.1")).is_none(),
            "a mapped IPv4 address is that address"
        );
        limits.set_caps(10, 2, 128);
        assert!(
            limits.admit(ip("2001:db8:1:2::3")).is_some(),
            "/128 counts single addresses"
        );
    }

    #[test]
    fn client_key_masks_only_ipv6() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert_eq!(client_key(ip("2001:db8::1:2:3:4"), 64), ip("2001:db8::"));
        assert_eq!(client_key(ip("2001:db8::1:2:3:4"), 128), ip("2001:db8::1:2:3:4"));
        assert_eq!(client_key(ip("2001:db8::1"), 1), ip("::"));
        assert_eq!(client_key(ip("192.0.2.7"), 64), ip("192.0.2.7"));
    }

    #[test]
    fn auth_failures_lock_out_and_expire() {
        let failures = AuthFailures::default();
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let long = Duration::from_secs(600);
        assert_eq!(failures.fail(a, long), 1);
        assert!(!failures.locked(a, 2, long));
        assert_eq!(failures.fail(a, long), 2);
        assert!(failures.locked(a, 2, long));
        assert!(!failures.locked(a, 2, Duration::ZERO), "a lock-out ends");
        assert_eq!(failures.fail(a, long), 1, "and its failures are forgotten");
        failures.clear(a);
        assert!(!failures.locked(a, 1, long));
    }

    #[test]
    fn caps_total_and_per_address() {
        let limits = ConnLimits::new(3, 2, 64);
        let a: IpAddr = "127.0.0.1".parse().unwrap();
        let b: IpAddr = "127.0.0.2".parse().unwrap();
        let g1 = limits.admit(a).unwrap();
        let _g2 = limits.admit(a).unwrap();
        assert!(limits.admit(a).is_none(), "per-address cap");
        let _g3 = limits.admit(b).unwrap();
        assert!(limits.admit(b).is_none(), "total cap");
        drop(g1);
        assert!(limits.admit(a).is_some(), "a place is given back on drop");
    }
}
