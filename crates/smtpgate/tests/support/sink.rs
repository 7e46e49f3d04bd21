//! Postfix's `smtp-sink` as the final destination: fast, and one dump file per message.

use std::fs;
use std::io::{BufRead, BufReader, Read};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread;
use std::time::Duration;

use tempfile::TempDir;

use super::mail::header_values;
use super::wait::wait_until;

const SMTP_SINK: &str = "/usr/sbin/smtp-sink";
const START_ATTEMPTS: usize = 5;

/// How a failing sink answers (smtp-sink's `-r`/`-f` options). With a failure at RCPT the
/// sink stops announcing PIPELINING, as smtp-sink does.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum SinkFailure {
    /// `450 4.3.0 Error: command failed` to every RCPT.
    TempfailRcpt,
    /// `500 5.3.0 Error: command failed` to every RCPT.
    RejectRcpt,
    /// `450 4.3.0 Error: command failed` after end of data.
    TempfailData,
    /// `500 5.3.0 Error: command failed` after end of data.
    RejectData,
}

impl SinkFailure {
    fn args(self) -> [&'static str; 2] {
        match self {
            SinkFailure::TempfailRcpt => ["-r", "RCPT"],
            SinkFailure::RejectRcpt => ["-f", "RCPT"],
            SinkFailure::TempfailData => ["-r", "."],
            SinkFailure::RejectData => ["-f", "."],
        }
    }
}

/// A running `smtp-sink` on 127.0.0.1, killed on drop.
pub struct Sink {
    addr: SocketAddr,
    child: Child,
    dumps: TempDir,
    /// smtp-sink's own `mesg=` counter (`-c`): transactions that reached end of data.
    ended_data: Arc<AtomicUsize>,
}

impl Sink {
    /// A sink that accepts everything.
    pub fn start() -> Sink {
        Sink::start_with(&[])
    }

    /// A sink that answers every RCPT or every end of data with the given failure.
    pub fn failing(failure: SinkFailure) -> Sink {
        Sink::start_with(&failure.args())
    }

    fn start_with(extra_args: &[&str]) -> Sink {
        for attempt in 1..=START_ATTEMPTS {
            match Sink::try_start(extra_args) {
                Ok(sink) => return sink,
                Err(why) => eprintln!("smtp-sink start attempt {attempt}: {why}"),
            }
        }
        panic!("smtp-sink did not come up in {START_ATTEMPTS} attempts (is postfix installed?)");
    }

    fn try_start(extra_args: &[&str]) -> Result<Sink, String> {
        let port = free_port();
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        let greeting_name = format!("sink-{port}-{}.test", std::process::id());
        let dumps = tempfile::tempdir().map_err(|e| e.to_string())?;
        let template = dumps.path().join("%Y%m%d%H%M%S.");
        let mut cmd = Command::new(SMTP_SINK);
        cmd.arg("-c").args(["-h", &greeting_name]);
        if running_as_root() {
            cmd.args(["-u", "root"]);
        }
        cmd.arg("-d").arg(&template).args(extra_args);
        cmd.arg(format!("127.0.0.1:{port}")).arg("256");
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("cannot run {SMTP_SINK}: {e}"))?;
        let ended_data = Arc::new(AtomicUsize::new(0));
        follow_counters(child.stdout.take().expect("stdout"), ended_data.clone());
        forward_stderr(child.stderr.take().expect("stderr"), format!("smtp-sink {port}"));
        let up = wait_until(Duration::from_secs(10), || {
            matches!(child.try_wait(), Ok(None)) && greets_as(addr, &greeting_name)
        });
        if !up {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!("not accepting on {addr} within 10s"));
        }
        Ok(Sink {
            addr,
            child,
            dumps,
            ended_data,
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Transactions that reached end of data (smtp-sink's counter), accepted or, for a
    /// failing sink, rejected.
    pub fn message_count(&self) -> usize {
        self.ended_data.load(Ordering::SeqCst)
    }

    /// Waits until at least `n` messages have arrived and their dump files are complete;
    /// returns the raw dumps (smtp-sink's `X-*` and `Received:` lines, then the message).
    pub fn wait_for_messages(&self, n: usize, within: Duration) -> Vec<String> {
        let mut messages = Vec::new();
        let arrived = wait_until(within, || {
            if self.message_count() < n {
                return false;
            }
            messages = self.messages();
            messages.len() >= n
        });
        assert!(
            arrived,
            "smtp-sink got {} of {n} messages ({} complete dumps) within {within:?}",
            self.message_count(),
            self.messages().len()
        );
        messages
    }

    /// Every complete dump so far, oldest first. A dump is complete once smtp-sink has
    /// written the empty line it ends each one with (it writes at end of data).
    pub fn messages(&self) -> Vec<String> {
        let mut files: Vec<_> = fs::read_dir(self.dumps.path())
            .expect("read dump dir")
            .filter_map(|e| e.ok())
            .map(|e| e.path())
            .collect();
        files.sort();
        files.iter().filter_map(|f| read_complete_dump(f)).collect()
    }

    /// The Message-ID header values (angle brackets included) of every complete dump.
    pub fn message_ids(&self) -> Vec<String> {
        self.messages()
            .iter()
            .flat_map(|m| header_values(m, "Message-ID"))
            .collect()
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A port the OS just handed out on 127.0.0.1 (and that we released again).
pub(crate) fn free_port() -> u16 {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind 127.0.0.1:0");
    listener.local_addr().expect("local_addr").port()
}

pub(crate) fn running_as_root() -> bool {
    let status = fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|ids| ids.split_whitespace().nth(1))
        .is_some_and(|euid| euid == "0")
}

fn read_complete_dump(path: &Path) -> Option<String> {
    let bytes = fs::read(path).ok()?;
    bytes
        .ends_with(b"\n\n")
        .then(|| String::from_utf8_lossy(&bytes).into_owned())
}

/// Checks that the server on `addr` greets with our unique name, so a port some other
/// process grabbed in the meantime is not mistaken for our sink.
fn greets_as(addr: SocketAddr, name: &str) -> bool {
    let Ok(stream) = TcpStream::connect_timeout(&addr, Duration::from_millis(500)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    let mut greeting = String::new();
    let _ = BufReader::new(&stream).read_line(&mut greeting);
    greeting.starts_with("220 ") && greeting.contains(name)
}

/// smtp-sink `-c` prints `\rsess=N quit=N mesg=N` whenever a counter changes.
fn follow_counters(mut stdout: impl Read + Send + 'static, ended_data: Arc<AtomicUsize>) {
    thread::spawn(move || {
        let mut pending = String::new();
        let mut chunk = [0u8; 4096];
        while let Ok(n @ 1..) = stdout.read(&mut chunk) {
            pending.push_str(&String::from_utf8_lossy(&chunk[..n]));
            while let Some(end) = pending.find(['\r', '\n']) {
                let record: String = pending.drain(..=end).collect();
                if let Some(count) = record
                    .split_whitespace()
                    .find_map(|f| f.strip_prefix("mesg="))
                    .and_then(|v| v.trim().parse::<usize>().ok())
                {
                    ended_data.fetch_max(count, Ordering::SeqCst);
                }
            }
        }
    });
}

pub(crate) fn forward_stderr(stderr: impl Read + Send + 'static, label: String) {
    thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            eprintln!("[{label}] {line}");
        }
    });
}
