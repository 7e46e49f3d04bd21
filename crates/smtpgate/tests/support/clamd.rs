//! A real clamd for the tests that scan with `kind = "clamav"`: started in the foreground on a
//! free loopback port (and a Unix socket) with a configuration and a one-signature database the
//! test writes; no freshclam, no system service.
//!
//! clamd knows one signature, `Smtpgate.Test.Sig`, matching [`VIRUS_MARKER`]; it reports it as
//! [`VIRUS_NAME`].

use std::fs;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use tempfile::TempDir;

use super::wait::wait_until;

/// clamd loads one signature in about a second.
pub const CLAMD_START: Duration = Duration::from_secs(60);

/// The string clamd's test signature matches.
pub const VIRUS_MARKER: &str = "SMTPGATE-TEST-VIRUS-MARKER-7f3a9c";
/// The name clamd gives it (signatures from outside ClamAV's own databases get `.UNOFFICIAL`).
pub const VIRUS_NAME: &str = "Smtpgate.Test.Sig.UNOFFICIAL";

/// A port that was free a moment ago on 127.0.0.1, for daemons that cannot bind port 0.
pub fn free_port() -> u16 {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind 127.0.0.1:0");
    listener.local_addr().expect("local_addr").port()
}

pub fn running_as_root() -> bool {
    rustix::process::geteuid().is_root()
}

/// A daemon in its own process group, so its workers go with it: SIGTERM, then SIGKILL.
pub struct Daemon {
    name: &'static str,
    child: Option<Child>,
}

impl Daemon {
    /// Runs `cmd` with stdout and stderr to `log`.
    pub fn spawn(name: &'static str, mut cmd: Command, log: &Path) -> Daemon {
        use std::os::unix::process::CommandExt;
        let out = fs::File::create(log).expect("daemon log");
        let err = out.try_clone().expect("daemon log");
        cmd.stdin(Stdio::null()).stdout(out).stderr(err).process_group(0);
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {name}: {e} (is it installed?)"));
        Daemon {
            name,
            child: Some(child),
        }
    }

    pub fn is_running(&mut self) -> bool {
        self.child.as_mut().is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let group = rustix::process::Pid::from_raw(child.id() as i32).expect("pid");
        let _ = rustix::process::kill_process_group(group, rustix::process::Signal::TERM);
        if !wait_until(Duration::from_secs(10), || matches!(child.try_wait(), Ok(Some(_)))) {
            eprintln!("{} did not stop on SIGTERM; killing", self.name);
            let _ = rustix::process::kill_process_group(group, rustix::process::Signal::KILL);
        }
        let _ = child.wait();
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.stop();
    }
}

/// clamd with [`VIRUS_MARKER`]'s signature, on TCP ([`Clamd::addr`]) and on a Unix socket
/// ([`Clamd::socket`]); stopped on drop.
pub struct Clamd {
    dir: TempDir,
    pub addr: SocketAddr,
    pub daemon: Daemon,
}

impl Clamd {
    /// Starts clamd and waits until it answers `PING`; panics with its log if it does not.
    pub fn start() -> Clamd {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = dir.path().join("db");
        fs::create_dir(&db).expect("db dir");
        let hex: String = VIRUS_MARKER.bytes().map(|b| format!("{b:02x}")).collect();
        fs::write(db.join("smtpgate.ndb"), format!("Smtpgate.Test.Sig:0:*:{hex}\n")).expect("ndb");
        let port = free_port();
        let conf = dir.path().join("clamd.conf");
        let mut text = format!(
            "Foreground yes\nTCPSocket {port}\nTCPAddr 127.0.0.1\nLocalSocket {}\nDatabaseDirectory {}\n\
             LogFile {}\nPidFile {}\nStreamMaxLength 1M\n",
            dir.path().join("clamd.sock").display(),
            db.display(),
            dir.path().join("clamd.log").display(),
            dir.path().join("clamd.pid").display(),
        );
        if running_as_root() {
            text.push_str("User root\n");
        }
        fs::write(&conf, text).expect("clamd.conf");
        let mut cmd = Command::new("/usr/sbin/clamd");
        cmd.arg("-c").arg(&conf);
        let daemon = Daemon::spawn("clamd", cmd, &dir.path().join("clamd.out"));
        let mut clamd = Clamd {
            addr: SocketAddr::from((Ipv4Addr::LOCALHOST, port)),
            dir,
            daemon,
        };
        let up = wait_until(CLAMD_START, || clamd.daemon.is_running() && clamd.pings());
        assert!(up, "clamd did not answer PING within {CLAMD_START:?}:\n{}", clamd.log());
        clamd
    }

    pub fn pings(&self) -> bool {
        let Ok(mut s) = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1)) else {
            return false;
        };
        let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
        let mut answer = Vec::new();
        s.write_all(b"zPING\0").is_ok() && s.read_to_end(&mut answer).is_ok() && answer == b"PONG\0"
    }

    pub fn socket(&self) -> PathBuf {
        self.dir.path().join("clamd.sock")
    }

    /// What clamd printed and logged so far.
    pub fn log(&self) -> String {
        let out = fs::read_to_string(self.dir.path().join("clamd.out")).unwrap_or_default();
        let log = fs::read_to_string(self.dir.path().join("clamd.log")).unwrap_or_default();
        format!("{out}{log}")
    }
}
