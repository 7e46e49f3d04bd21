//! Connection caps, total and per client address, and the count of open sessions for shutdown.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

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
}

/// Holds one connection's place; gives it back when dropped.
pub struct ConnGuard {
    inner: Arc<Inner>,
    ip: IpAddr,
}

impl ConnLimits {
    pub fn new(max_total: usize, max_per_ip: usize) -> Self {
        ConnLimits {
            inner: Arc::new(Inner {
                caps: Mutex::new((max_total, max_per_ip)),
                open: Mutex::default(),
            }),
        }
    }

    /// New caps for the same open connections (after a reload).
    pub fn set_caps(&self, max_total: usize, max_per_ip: usize) {
        *self.inner.caps.lock().unwrap() = (max_total, max_per_ip);
    }

    /// Takes a place for a connection from `ip`, or `None` if a cap is reached.
    pub fn admit(&self, ip: IpAddr) -> Option<ConnGuard> {
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
    fn caps_total_and_per_address() {
        let limits = ConnLimits::new(3, 2);
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
