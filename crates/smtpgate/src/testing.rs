//! Whole SMTP sessions in memory, for the fuzz targets. Built only with the `fuzzing` feature.
//!
//! A [`Gate`] is a context, a queue and a listener with a default configuration and a spool in a
//! fresh directory (on `/dev/shm` when there is one, so the spool's fsyncs cost nothing).
//! [`Gate::session`] runs one session over an in-memory duplex stream: it feeds the client's bytes
//! in the chunks given, closes the client's side and returns everything the server wrote. The
//! gate's sessions share one single-threaded runtime, its spool and its queue, as a server's do:
//! what one session queued (a worker trying the pool, a retry timer) stays behind. They only grow,
//! so make a new `Gate` every few thousand sessions; dropping it drops its runtime, with every task
//! left on it, and its spool directory. A panic in the session task is raised again in the caller.
//!
//! [`check_replies`] says whether what the server wrote is a sequence of well-formed replies.
//!
//! ```
//! let gate = smtpgate::testing::Gate::new().unwrap();
//! let out = gate.session(smtpgate::testing::Peer::Inside, &[b"EHLO a.test\r\n", b"QUIT\r\n"]);
//! smtpgate::testing::check_replies(&out).unwrap();
//! assert!(out.starts_with(b"220 gate.test"));
//! ```

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::watch;

use crate::config::Config;
use crate::context::Context;
use crate::queue::Queue;
use crate::session::ListenerState;
use crate::session::Session;

/// RFC 5321 4.5.3.1.5: a reply line is at most 512 octets with its CRLF.
pub const MAX_REPLY_LINE: usize = 512;

/// Where the client connects from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Peer {
    /// From the listener's relay network: may send anywhere.
    Inside,
    /// From outside: only to the local domains.
    Outside,
}

impl Peer {
    fn addr(self) -> SocketAddr {
        match self {
            Peer::Inside => SocketAddr::from(([127, 0, 0, 1], 40000)),
            Peer::Outside => SocketAddr::from(([192, 0, 2, 7], 40000)),
        }
    }
}

/// The configuration every fuzzed session runs under: one listener, one pool on a closed loopback
/// port (nothing leaves the machine), the defaults for everything else.
fn config_text(spool: &std::path::Path) -> String {
    format!(
        r#"
hostname = "gate.test"
[spool]
dir = "{}"
min_free_space = "1KB"
[admin]
enabled = false
[dns]
nameservers = ["127.0.0.1:1"]
[[listener]]
name = "fuzz"
address = "127.0.0.1:0"
relay_networks = ["127.0.0.0/8"]
local_domains = ["local.test"]
max_message_size = "64KB"
max_recipients = 5
[[pool]]
name = "nowhere"
servers = ["127.0.0.1:9"]
[[route]]
pool = "nowhere"
[queue]
retry = ["1h"]
"#,
        spool.display()
    )
}

/// A gate with no sockets: sessions run over in-memory streams.
pub struct Gate {
    /// Runs the sessions and whatever they leave behind; current-thread, so nothing runs between
    /// two sessions.
    rt: tokio::runtime::Runtime,
    dir: PathBuf,
    /// Always `Some` but in `drop`, which must drop it inside the runtime.
    state: Option<Arc<ListenerState>>,
    _shutdown: watch::Sender<bool>,
}

impl Gate {
    /// A gate with a default configuration and an empty spool in a new directory.
    pub fn new() -> Result<Gate, String> {
        let dir = fresh_dir().map_err(|e| format!("spool directory: {e}"))?;
        let config = Config::from_toml_str(&config_text(&dir.join("spool")), &dir).map_err(|e| e.to_string())?;
        let rt = runtime();
        let entered = rt.enter();
        let (ctx, _) = Context::start(Arc::new(config), None).map_err(|e| e.to_string())?;
        let queue = Queue::new(ctx.clone());
        let (tx, rx) = watch::channel(false);
        let state =
            ListenerState::standalone(&ctx.config.listeners[0], &ctx, &queue, &rx).map_err(|e| e.to_string())?;
        drop(entered);
        Ok(Gate {
            rt,
            dir,
            state: Some(Arc::new(state)),
            _shutdown: tx,
        })
    }

    /// Runs one session from `peer`: sends `chunks` one after the other (letting the server run
    /// between them), closes the client's side and returns all the server wrote.
    pub fn session(&self, peer: Peer, chunks: &[&[u8]]) -> Vec<u8> {
        self.rt.block_on(async {
            let (mut client, server) = tokio::io::duplex(64 * 1024);
            let state = self.state.clone().expect("a gate being dropped runs no session");
            let session = Session::new(state, Box::new(server), peer.addr(), None);
            let task = tokio::spawn(session.run());
            let (mut rx, mut tx) = tokio::io::split(&mut client);
            let send = async {
                for chunk in chunks {
                    if tx.write_all(chunk).await.is_err() {
                        return;
                    }
                    tokio::task::yield_now().await;
                }
                let _ = tx.shutdown().await;
            };
            let mut out = Vec::new();
            let (_, _) = tokio::join!(send, rx.read_to_end(&mut out));
            if let Err(e) = task.await
                && e.is_panic()
            {
                std::panic::resume_unwind(e.into_panic());
            }
            out
        })
    }
}

impl Drop for Gate {
    fn drop(&mut self) {
        if let Some(state) = self.state.take() {
            self.rt.block_on(state.ctx.spool.close());
            // Parts of the context spawn tasks as they go: drop it where a runtime is current.
            let _entered = self.rt.enter();
            drop(state);
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime")
}

/// A new, empty directory for one gate's spool, `smtpgate-fuzz-<pid>-<n>`. The directories of
/// processes that are gone are removed first: a gate kept to the end of a process (a fuzzer
/// exits without dropping it) leaves its directory behind.
fn fresh_dir() -> std::io::Result<PathBuf> {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let shm = PathBuf::from("/dev/shm");
    let base = if shm.is_dir() { shm } else { std::env::temp_dir() };
    remove_orphans(&base);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let dir = base.join(format!("smtpgate-fuzz-{}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

/// Removes the gate directories in `base` whose process is gone.
fn remove_orphans(base: &std::path::Path) {
    let Ok(entries) = std::fs::read_dir(base) else { return };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let pid = name
            .to_str()
            .and_then(|n| n.strip_prefix("smtpgate-fuzz-")?.split_once('-'));
        if let Some((pid, _)) = pid
            && pid.parse::<u32>().is_ok()
            && !PathBuf::from("/proc").join(pid).exists()
        {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

/// Checks that `out` is nothing but whole, well-formed replies (RFC 5321 4.2): every line is
/// `DDD[ -]text<CR><LF>` with a code from 200 to 559 whose middle digit is 0 to 5, text of
/// printable US-ASCII and tabs, at most [`MAX_REPLY_LINE`] octets; the lines of a multi-line reply
/// (`DDD-`) all carry the code of the line that ends it (`DDD `), and the output ends with a
/// reply's last line. The error names the first offending line.
pub fn check_replies(out: &[u8]) -> Result<(), String> {
    let mut open: Option<&[u8]> = None;
    let mut rest = out;
    while !rest.is_empty() {
        let Some(end) = rest.windows(2).position(|w| w == b"\r\n") else {
            return Err(format!("line without CRLF: {:?}", String::from_utf8_lossy(rest)));
        };
        let line = &rest[..end];
        rest = &rest[end + 2..];
        let shown = || String::from_utf8_lossy(line).into_owned();
        if line.len() + 2 > MAX_REPLY_LINE {
            return Err(format!("reply line over {MAX_REPLY_LINE} octets: {:?}", shown()));
        }
        let [a, b, c, sep, text @ ..] = line else {
            return Err(format!("reply line too short: {:?}", shown()));
        };
        if !(b'2'..=b'5').contains(a) || !(b'0'..=b'5').contains(b) || !c.is_ascii_digit() {
            return Err(format!("not a reply code: {:?}", shown()));
        }
        if !matches!(sep, b' ' | b'-') {
            return Err(format!("no space or hyphen after the code: {:?}", shown()));
        }
        if let Some(bad) = text.iter().find(|&&t| t != b'\t' && !(32..=126).contains(&t)) {
            return Err(format!("byte {bad:#04x} in reply text: {:?}", shown()));
        }
        let code = &line[..3];
        if open.is_some_and(|o| o != code) {
            return Err(format!("code changes inside a multi-line reply: {:?}", shown()));
        }
        open = (*sep == b'-').then_some(code);
    }
    match open {
        Some(_) => Err("the output ends inside a multi-line reply".into()),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn well_formed_replies_pass() {
        check_replies(b"").unwrap();
        check_replies(b"220 gate.test ESMTP\r\n250-gate.test\r\n250-PIPELINING\r\n250 SIZE 10\r\n").unwrap();
        check_replies(b"221 2.0.0 bye\r\n").unwrap();
    }

    #[test]
    fn malformed_replies_fail() {
        for bad in [
            &b"220 no end"[..],
            b"22 short\r\n",
            b"620 bad code\r\n",
            b"190 bad code\r\n",
            b"260 bad middle digit\r\n",
            b"250_text\r\n",
            b"250 bare\rcr\r\n",
            b"250 bare\nlf\r\n",
            b"250 eight\xffbit\r\n",
            b"250-open\r\n",
            b"250-first\r\n251 second\r\n",
        ] {
            assert!(check_replies(bad).is_err(), "{:?} passed", String::from_utf8_lossy(bad));
        }
        let long = format!("250 {}\r\n", "x".repeat(MAX_REPLY_LINE));
        assert!(check_replies(long.as_bytes()).is_err());
    }

    #[test]
    fn a_whole_session_in_memory() {
        let gate = Gate::new().unwrap();
        let client: &[&[u8]] = &[
            b"EHLO client.test\r\n",
            b"MAIL FROM:<a@client.test>\r\nRCPT TO:<b@local.test>\r\nDATA\r\n",
            b"Subject: hi\r\n\r\nbody\r\n.\r\nQUIT\r\n",
        ];
        let out = gate.session(Peer::Inside, client);
        check_replies(&out).unwrap();
        let text = String::from_utf8_lossy(&out);
        assert!(text.contains("\r\n354 "), "{text}");
        assert!(text.contains("\r\n250 2.0.0"), "{text}");
        assert!(text.contains("\r\n221 "), "{text}");
        let spooled = crate::spool::inspect(&gate.dir.join("spool")).unwrap();
        assert_eq!(spooled.len(), 1);
    }

    #[test]
    fn dropping_a_gate_closes_and_removes_its_spool() {
        let gate = Gate::new().unwrap();
        gate.session(
            Peer::Inside,
            &[
                b"EHLO a\r\n",
                b"MAIL FROM:<a@a.test>\r\nRCPT TO:<b@local.test>\r\nDATA\r\n",
                b"x\r\n.\r\n",
            ],
        );
        let dir = gate.dir.clone();
        assert!(dir.join("spool").is_dir());
        drop(gate);
        assert!(!dir.exists());
    }

    #[test]
    fn a_session_cut_off_mid_command_ends() {
        let gate = Gate::new().unwrap();
        let out = gate.session(Peer::Outside, &[b"EHLO x\r\nRCPT TO:<b@elsewhere.test>\r\nMAIL FR"]);
        check_replies(&out).unwrap();
    }
}
