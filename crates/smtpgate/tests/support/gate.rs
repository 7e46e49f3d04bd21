//! The smtpgate binary as a child process, driven through its start-up contract.
//!
//! At start-up smtpgate prints to stdout, then keeps running:
//!
//! ```text
//! smtpgate listening: listener=<name> address=<ip:port> tls=<none|starttls|implicit>
//! smtpgate admin: address=<ip:port> token_file=<absolute path>
//! smtpgate spool: dir=<absolute path>
//! smtpgate ready
//! ```
//!
//! The admin address wants the token in `token_file`: the harness reads it at start-up and
//! [`http_get`] and [`admin_token_file`] find it by the admin address, so tests that call the
//! admin address need not know about it.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::thread;
use std::time::{Duration, Instant};

use tempfile::TempDir;

use super::wait::wait_until;

const START_DEADLINE: Duration = Duration::from_secs(30);
const EXIT_DEADLINE: Duration = Duration::from_secs(30);

/// The usual test config: one relay listener for loopback clients, one pool, a catch-all
/// route, and a spool in the gate's own temp dir. Extra keys go in with the methods.
#[derive(Debug, Clone)]
pub struct GateConfig {
    hostname: String,
    pool_servers: Vec<SocketAddr>,
    retry: Vec<String>,
    top: Vec<String>,
    listener: Vec<String>,
    pool: Vec<String>,
    queue: Vec<String>,
}

impl GateConfig {
    /// Relays everything from 127.0.0.0/8 to `server`, retrying every second.
    pub fn relay_to(server: SocketAddr) -> GateConfig {
        GateConfig {
            hostname: "gate.example.test".into(),
            pool_servers: vec![server],
            retry: vec!["1s".into()],
            top: Vec::new(),
            listener: Vec::new(),
            pool: Vec::new(),
            queue: Vec::new(),
        }
    }

    pub fn hostname(mut self, hostname: &str) -> Self {
        self.hostname = hostname.into();
        self
    }

    /// `[queue] retry`: the delays between attempts.
    pub fn retry(mut self, delays: &[&str]) -> Self {
        self.retry = delays.iter().map(|d| d.to_string()).collect();
        self
    }

    /// A `key = value` line at the top level.
    pub fn top(mut self, line: &str) -> Self {
        self.top.push(line.into());
        self
    }

    /// A `key = value` line in the `[[listener]]` table.
    pub fn listener(mut self, line: &str) -> Self {
        self.listener.push(line.into());
        self
    }

    /// A `key = value` line in the `[[pool]]` table.
    pub fn pool(mut self, line: &str) -> Self {
        self.pool.push(line.into());
        self
    }

    /// A `key = value` line in the `[queue]` table.
    pub fn queue(mut self, line: &str) -> Self {
        self.queue.push(line.into());
        self
    }

    pub fn to_toml(&self) -> String {
        let mut toml = String::new();
        let lines = |toml: &mut String, lines: &[String]| {
            for line in lines {
                let _ = writeln!(toml, "{line}");
            }
        };
        let _ = writeln!(toml, "hostname = {:?}", self.hostname);
        let _ = writeln!(toml, "shutdown_timeout = \"5s\"");
        lines(&mut toml, &self.top);
        let _ = writeln!(toml, "\n[spool]\ndir = \"spool\"");
        let _ = writeln!(toml, "\n[admin]\naddress = \"127.0.0.1:0\"");
        let _ = writeln!(toml, "\n[[listener]]\nname = \"inbound\"");
        let _ = writeln!(toml, "address = \"127.0.0.1:0\"");
        let _ = writeln!(toml, "relay_networks = [\"127.0.0.0/8\"]");
        lines(&mut toml, &self.listener);
        let servers: Vec<String> = self.pool_servers.iter().map(|s| format!("\"{s}\"")).collect();
        let _ = writeln!(toml, "\n[[pool]]\nname = \"upstream\"");
        let _ = writeln!(toml, "servers = [{}]\ntls = \"none\"", servers.join(", "));
        lines(&mut toml, &self.pool);
        let _ = writeln!(toml, "\n[[route]]\npool = \"upstream\"");
        let retry: Vec<String> = self.retry.iter().map(|d| format!("\"{d}\"")).collect();
        let _ = writeln!(toml, "\n[queue]\nretry = [{}]", retry.join(", "));
        lines(&mut toml, &self.queue);
        toml
    }
}

/// What smtpgate announced at start-up (listeners: again after each reload).
#[derive(Debug, Clone)]
pub(super) struct Announced {
    pub(super) listeners: Vec<(String, SocketAddr, String)>,
    pub(super) admin: SocketAddr,
    pub(super) token_file: PathBuf,
    pub(super) spool: PathBuf,
}

/// The admin token (and its file) of every gate started, by admin address.
static ADMIN_TOKENS: Mutex<BTreeMap<SocketAddr, (String, PathBuf)>> = Mutex::new(BTreeMap::new());

/// Reads the token of the gate just announced and files it under its admin address.
fn remember_token(announced: &Announced) -> Result<(), String> {
    let file = &announced.token_file;
    let text = fs::read_to_string(file).map_err(|e| format!("cannot read the admin token {}: {e}", file.display()))?;
    let entry = (text.trim().to_owned(), file.clone());
    ADMIN_TOKENS.lock().unwrap().insert(announced.admin, entry);
    Ok(())
}

/// The admin token of the gate whose admin address is `addr`, if the harness started it.
pub fn admin_token(addr: SocketAddr) -> Option<String> {
    ADMIN_TOKENS.lock().unwrap().get(&addr).map(|(token, _)| token.clone())
}

/// The token file of the gate whose admin address is `addr`, if the harness started it.
pub fn admin_token_file(addr: SocketAddr) -> Option<PathBuf> {
    ADMIN_TOKENS.lock().unwrap().get(&addr).map(|(_, file)| file.clone())
}

/// Every line smtpgate printed so far, on stdout and on stderr (also forwarded to the test's stderr).
#[derive(Debug, Default)]
pub(super) struct Output {
    pub(super) stdout: Mutex<Vec<String>>,
    pub(super) stderr: Mutex<Vec<String>>,
}

/// A running smtpgate; killed on drop.
pub struct Gate {
    dir: TempDir,
    pub(super) config: PathBuf,
    child: Option<Child>,
    pub(super) announced: Announced,
    pub(super) output: Arc<Output>,
}

impl Gate {
    /// Writes `config_toml` as `smtpgate.toml` in a fresh temp dir and runs
    /// `smtpgate serve --config <file>` until it prints `smtpgate ready`.
    pub fn start(config_toml: &str) -> Gate {
        Gate::start_with_files(config_toml, &[])
    }

    /// As [`Gate::start`], with `files` (name, content) written next to `smtpgate.toml` first.
    pub fn start_with_files(config_toml: &str, files: &[(&str, &str)]) -> Gate {
        let dir = tempfile::tempdir().expect("tempdir");
        for (name, content) in files {
            fs::write(dir.path().join(name), content).unwrap_or_else(|e| panic!("write {name}: {e}"));
        }
        let config = dir.path().join("smtpgate.toml");
        fs::write(&config, config_toml).expect("write smtpgate.toml");
        let (child, announced, output) = spawn(&config);
        Gate {
            dir,
            config,
            child: Some(child),
            announced,
            output,
        }
    }

    /// The first listener's address.
    pub fn smtp_addr(&self) -> SocketAddr {
        self.announced.listeners[0].1
    }

    pub fn listener_addr(&self, name: &str) -> SocketAddr {
        let found = self.announced.listeners.iter().find(|(n, _, _)| n == name);
        found.unwrap_or_else(|| panic!("no listener {name:?} announced")).1
    }

    /// The `tls=` a listener was announced with.
    pub fn listener_tls(&self, name: &str) -> String {
        let found = self.announced.listeners.iter().find(|(n, _, _)| n == name);
        found
            .unwrap_or_else(|| panic!("no listener {name:?} announced"))
            .2
            .clone()
    }

    pub fn admin_addr(&self) -> SocketAddr {
        self.announced.admin
    }

    /// The admin token's file, as smtpgate announced it.
    pub fn admin_token_file(&self) -> &Path {
        &self.announced.token_file
    }

    /// The admin token (what `admin_token_file` holds).
    pub fn admin_token(&self) -> String {
        admin_token(self.admin_addr()).expect("the harness read the token at start-up")
    }

    /// The spool dir as smtpgate announced it.
    pub fn spool_dir(&self) -> &Path {
        &self.announced.spool
    }

    /// The temp dir holding `smtpgate.toml` (and, with the usual config, the spool).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("gate is running").id()
    }

    /// SIGKILL: a crash, with no chance to clean up.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM, then waits for the exit; panics if it takes longer than 30 s.
    pub fn terminate(&mut self) -> ExitStatus {
        let mut child = self.child.take().expect("gate is running");
        let sent = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(sent.success(), "kill -TERM {} failed", child.id());
        let mut status = None;
        let exited = wait_until(EXIT_DEADLINE, || {
            status = child.try_wait().expect("try_wait");
            status.is_some()
        });
        if !exited {
            let _ = child.kill();
            let _ = child.wait();
            panic!("smtpgate did not exit within {EXIT_DEADLINE:?} of SIGTERM");
        }
        status.expect("exited")
    }

    /// Starts smtpgate again on the same config and spool (terminating it first if it is
    /// still running). Listeners get new ports.
    pub fn restart(&mut self) {
        if self.child.is_some() {
            self.terminate();
        }
        let (child, announced, output) = spawn(&self.config);
        self.child = Some(child);
        self.announced = announced;
        self.output = output;
    }

    /// The admin endpoint's `/metrics` text.
    pub fn metrics(&self) -> String {
        let (status, body) = http_get(self.admin_addr(), "/metrics");
        assert_eq!(status, 200, "GET /metrics: {body}");
        body
    }

    /// An unlabeled metric's value, or None if the exposition does not have it.
    pub fn try_metric(&self, name: &str) -> Option<f64> {
        metric_value(&self.metrics(), name)
    }

    /// An unlabeled metric's value; panics with the whole exposition if it is missing.
    pub fn metric(&self, name: &str) -> f64 {
        let text = self.metrics();
        metric_value(&text, name).unwrap_or_else(|| panic!("no metric {name} in:\n{text}"))
    }
}

impl Drop for Gate {
    fn drop(&mut self) {
        self.kill9();
    }
}

fn spawn(config: &Path) -> (Child, Announced, Arc<Output>) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_smtpgate"))
        .arg("serve")
        .arg("--config")
        .arg(config)
        .current_dir(config.parent().expect("config dir"))
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run smtpgate");
    let output = Arc::new(Output::default());
    follow_stderr(child.stderr.take().expect("stderr"), output.clone());
    let lines = follow_stdout(child.stdout.take().expect("stdout"), output.clone());
    match read_announcements(&lines).and_then(|a| remember_token(&a).map(|()| a)) {
        Ok(announced) => (child, announced, output),
        Err(why) => {
            let _ = child.kill();
            let status = child.wait();
            let toml = fs::read_to_string(config).unwrap_or_default();
            panic!("smtpgate did not start ({why}); exit: {status:?}; config:\n{toml}");
        }
    }
}

/// Forwards every stdout line to the test's stderr, to `output` and to the returned channel.
fn follow_stdout(stdout: ChildStdout, output: Arc<Output>) -> mpsc::Receiver<String> {
    let (send, receive) = mpsc::channel();
    thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            eprintln!("[smtpgate stdout] {line}");
            output.stdout.lock().unwrap().push(line.clone());
            let _ = send.send(line);
        }
    });
    receive
}

/// Forwards every stderr line to the test's stderr and to `output`.
fn follow_stderr(stderr: impl Read + Send + 'static, output: Arc<Output>) {
    thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            eprintln!("[smtpgate stderr] {line}");
            output.stderr.lock().unwrap().push(line);
        }
    });
}

fn read_announcements(lines: &mpsc::Receiver<String>) -> Result<Announced, String> {
    let deadline = Instant::now() + START_DEADLINE;
    let mut listeners = Vec::new();
    let (mut admin, mut token_file, mut spool) = (None, None, None);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = lines.recv_timeout(left).map_err(|e| match e {
            mpsc::RecvTimeoutError::Timeout => format!("no `smtpgate ready` in {START_DEADLINE:?}"),
            mpsc::RecvTimeoutError::Disconnected => "stdout closed before `smtpgate ready`".into(),
        })?;
        if line.trim() == "smtpgate ready" {
            break;
        } else if let Some(rest) = line.strip_prefix("smtpgate listening:") {
            let name = field(rest, "listener")?;
            let address = parse_addr(&field(rest, "address")?)?;
            listeners.push((name, address, field(rest, "tls")?));
        } else if let Some(rest) = line.strip_prefix("smtpgate admin:") {
            admin = Some(parse_addr(&field(rest, "address")?)?);
            token_file = Some(PathBuf::from(field(rest, "token_file")?));
        } else if let Some(rest) = line.strip_prefix("smtpgate spool:") {
            spool = Some(PathBuf::from(field(rest, "dir")?));
        }
    }
    if listeners.is_empty() {
        return Err("no `smtpgate listening:` line before ready".into());
    }
    Ok(Announced {
        listeners,
        admin: admin.ok_or("no `smtpgate admin:` line before ready")?,
        token_file: token_file.ok_or("no `smtpgate admin:` line before ready")?,
        spool: spool.ok_or("no `smtpgate spool:` line before ready")?,
    })
}

/// The value of `key=value` in a start-up line. A path (`dir=`, `token_file=`) runs up to the
/// next ` key=` field, since it may hold spaces; later fields (e.g. `recovered=0`) are ignored.
fn field(rest: &str, key: &str) -> Result<String, String> {
    let marker = format!("{key}=");
    let missing = || format!("no {marker} in {rest:?}");
    let mut tokens = rest.split(' ').filter(|t| !t.is_empty());
    let first = tokens
        .find_map(|t| t.strip_prefix(marker.as_str()))
        .ok_or_else(missing)?;
    if key != "dir" && key != "token_file" {
        return Ok(first.to_string());
    }
    let more = tokens.take_while(|t| !is_field(t));
    Ok(std::iter::once(first).chain(more).collect::<Vec<_>>().join(" "))
}

fn is_field(token: &str) -> bool {
    token
        .split_once('=')
        .is_some_and(|(k, _)| !k.is_empty() && k.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'))
}

fn parse_addr(text: &str) -> Result<SocketAddr, String> {
    text.parse().map_err(|e| format!("bad address {text:?}: {e}"))
}

/// A one-shot HTTP/1.1 GET over a plain TcpStream: (status, body). To the admin address of a
/// gate the harness started, it sends that gate's token.
pub fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
        .unwrap_or_else(|e| panic!("connect to admin {addr}: {e}"));
    stream.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
    let auth = admin_token(addr).map_or_else(String::new, |t| format!("Authorization: Bearer {t}\r\n"));
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\n{auth}Connection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).expect("send request");
    let mut response = Vec::new();
    stream.read_to_end(&mut response).expect("read response");
    let response = String::from_utf8_lossy(&response).into_owned();
    let (head, body) = response
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("malformed HTTP response: {response:?}"));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status in {head:?}"));
    let chunked = head.lines().any(|l| {
        let l = l.to_ascii_lowercase();
        l.starts_with("transfer-encoding:") && l.contains("chunked")
    });
    let body = if chunked { dechunk(body) } else { body.to_string() };
    (status, body)
}

fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let size = usize::from_str_radix(size.split(';').next().unwrap_or("").trim(), 16);
        let Ok(size @ 1..) = size else { break };
        let Some(chunk) = rest.get(..size) else { break };
        out.push_str(chunk);
        body = rest.get(size + 2..).unwrap_or("");
    }
    out
}

/// The value of an unlabeled sample `name value` (or `name{} value`) in a Prometheus text
/// exposition.
pub(crate) fn metric_value(text: &str, name: &str) -> Option<f64> {
    text.lines().filter(|l| !l.starts_with('#')).find_map(|line| {
        let rest = line.strip_prefix(name)?;
        let rest = rest.strip_prefix("{}").unwrap_or(rest);
        if !rest.starts_with([' ', '\t']) {
            return None;
        }
        rest.split_whitespace().next()?.parse().ok()
    })
}

/// The usual configuration of a gate that delivers by MX: one relaying listener on 127.0.0.1,
/// the admin address, the test DNS server at `dns` as resolver, mail servers on `smtp_port`,
/// retries after 1 s; `tail` is appended (e.g. a `[shaping]` section).
pub fn mx_gate_toml(dns: SocketAddr, smtp_port: u16, tail: &str) -> String {
    format!(
        "hostname = \"gate.example.test\"\nshutdown_timeout = \"5s\"\n\n[spool]\ndir = \"spool\"\n\n\
         [admin]\naddress = \"127.0.0.1:0\"\n\n[[listener]]\nname = \"inbound\"\naddress = \"127.0.0.1:0\"\n\
         relay_networks = [\"127.0.0.0/8\"]\n\n[dns]\nnameservers = [\"{dns}\"]\n\n\
         [queue]\nretry = [\"1s\"]\nsmtp_port = {smtp_port}\n\n{tail}"
    )
}
