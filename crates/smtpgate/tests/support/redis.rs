//! A real `redis-server` (Debian's package, installed by scripts/test.sh) on a Unix socket in a
//! temp dir: no TCP port, nothing shared with other tests. Killed on drop.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::wait::wait_until;

pub struct RedisServer {
    child: Child,
    dir: tempfile::TempDir,
}

impl RedisServer {
    pub fn start() -> RedisServer {
        let bin = "/usr/bin/redis-server";
        assert!(
            std::path::Path::new(bin).exists(),
            "{bin} is missing: run scripts/test.sh, which installs redis-server"
        );
        let dir = tempfile::tempdir().expect("tempdir");
        let sock = dir.path().join("redis.sock");
        let child = Command::new(bin)
            .args(["--port", "0", "--unixsocket"])
            .arg(&sock)
            .args(["--save", "", "--appendonly", "no", "--daemonize", "no", "--dir"])
            .arg(dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start redis-server");
        let server = RedisServer { child, dir };
        assert!(
            wait_until(Duration::from_secs(10), || std::os::unix::net::UnixStream::connect(
                &sock
            )
            .is_ok()),
            "redis-server did not open {}",
            sock.display()
        );
        server
    }

    pub fn socket(&self) -> PathBuf {
        self.dir.path().join("redis.sock")
    }

    /// The URL smtpgate's `[redis] url` takes.
    pub fn url(&self) -> String {
        format!("redis+unix://{}", self.socket().display())
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
