//! Session transcripts over an in-memory stream: no sockets, no upstream.
//!
//! `Harness::cmd("RCPT TO:<a@b>", "250 2.1.5")` sends a line and checks the reply's start.

mod auth_tls;
mod data;
mod filters;
mod limits;
mod relay;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::watch;

use super::Session;
use crate::config::Config;
use crate::context::Context;
use crate::queue::Queue;
use crate::session::ListenerState;

/// A listener config for tests: the pool points at a closed port so nothing leaves the machine.
pub fn config_with(listener_extra: &str) -> String {
    format!(
        r#"
hostname = "gate.test"
[spool]
dir = "spool"
min_free_space = "1KB"
[admin]
enabled = false
[[listener]]
name = "test"
address = "127.0.0.1:0"
relay_networks = ["127.0.0.0/8"]
local_domains = ["local.test"]
max_message_size = "10KB"
max_recipients = 3
max_errors = 20
{listener_extra}
[[pool]]
name = "nowhere"
servers = ["127.0.0.1:9"]
[[route]]
pool = "nowhere"
[queue]
retry = ["1h"]
"#
    )
}

pub struct Harness {
    pub client: crate::io::BoxIo,
    pub ctx: Arc<Context>,
    pub _dir: tempfile::TempDir,
    buf: Vec<u8>,
    _shutdown: watch::Sender<bool>,
}

impl Harness {
    /// A session with a client at `peer`, on a listener configured with `toml`.
    pub async fn start(toml: &str, peer: &str) -> Harness {
        Self::start_in(tempfile::tempdir().unwrap(), toml, peer).await
    }

    /// Like `start`, with files (certificates, users) already placed in `dir`.
    pub async fn start_in(dir: tempfile::TempDir, toml: &str, peer: &str) -> Harness {
        let config = Config::from_toml_str(toml, dir.path()).unwrap();
        Self::with_config(config, dir, peer).await
    }

    pub async fn with_config(config: Config, dir: tempfile::TempDir, peer: &str) -> Harness {
        let (ctx, _) = Context::start(Arc::new(config), None).unwrap();
        let queue = Queue::new(ctx.clone());
        let (tx, rx) = watch::channel(false);
        let state = Arc::new(ListenerState::standalone(&ctx.config.listeners[0], &ctx, &queue, &rx).unwrap());
        let (client, server) = tokio::io::duplex(1 << 20);
        let peer: SocketAddr = peer.parse().unwrap();
        tokio::spawn(Session::new(state, Box::new(server), peer, None).run());
        let mut h = Harness {
            client: Box::new(client),
            ctx,
            _dir: dir,
            buf: Vec::new(),
            _shutdown: tx,
        };
        h.expect("220 gate.test").await;
        h
    }

    /// Sends raw bytes.
    pub async fn send(&mut self, bytes: &[u8]) {
        self.client.write_all(bytes).await.unwrap();
    }

    /// Reads one whole reply (all its lines).
    pub async fn reply(&mut self) -> String {
        let deadline = Duration::from_secs(10);
        tokio::time::timeout(deadline, self.read_reply())
            .await
            .expect("no reply in time")
    }

    async fn read_reply(&mut self) -> String {
        loop {
            if let Some(end) = reply_end(&self.buf) {
                let r: Vec<u8> = self.buf.drain(..end).collect();
                return String::from_utf8_lossy(&r).into_owned();
            }
            let mut chunk = [0u8; 4096];
            let n = self.client.read(&mut chunk).await.unwrap();
            if n == 0 {
                let rest: Vec<u8> = std::mem::take(&mut self.buf);
                return String::from_utf8_lossy(&rest).into_owned();
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    pub async fn expect(&mut self, prefix: &str) -> String {
        let r = self.reply().await;
        assert!(r.starts_with(prefix), "expected {prefix:?}, got {r:?}");
        r
    }

    /// Sends a command and checks the start of its reply.
    pub async fn cmd(&mut self, line: &str, prefix: &str) -> String {
        self.send(format!("{line}\r\n").as_bytes()).await;
        self.expect(prefix).await
    }

    /// True once the server has closed the connection.
    pub async fn closed(&mut self) -> bool {
        let mut b = [0u8; 64];
        matches!(
            tokio::time::timeout(Duration::from_secs(10), self.client.read(&mut b)).await,
            Ok(Ok(0)) | Ok(Err(_))
        )
    }

    pub async fn ehlo(&mut self) -> String {
        self.cmd("EHLO client.test", "250").await
    }

    /// Messages in the spool, with their bodies, read back the way recovery reads them.
    pub fn spooled(&self) -> Vec<(crate::envelope::Envelope, Vec<u8>)> {
        crate::spool::inspect(self.ctx.spool.dir()).unwrap()
    }
}

/// The length of the first complete reply in `buf` (through the line whose code is followed by a space).
fn reply_end(buf: &[u8]) -> Option<usize> {
    let mut pos = 0;
    while let Some(i) = buf[pos..].windows(2).position(|w| w == b"\r\n") {
        let line = &buf[pos..pos + i];
        pos += i + 2;
        if line.len() < 4 || line[3] != b'-' {
            return Some(pos);
        }
    }
    None
}

pub const INSIDE: &str = "127.0.0.1:40000";
pub const OUTSIDE: &str = "192.0.2.7:40000";
