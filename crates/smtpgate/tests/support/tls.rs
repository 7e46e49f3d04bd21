//! TLS and AUTH fixtures, the `smtpgate` binary's other commands, and config tweaks.
//!
//! - [`CertFiles`]: a self-signed certificate and its key as PEM files (rcgen), with the
//!   `tls = { ... }` line for a listener.
//! - [`UsersFile`]: a users file whose hashes come from the real `smtpgate passwd`.
//! - [`run_smtpgate`]: any `smtpgate` command line, with optional standard input.
//! - [`LoggedGate`]: `smtpgate serve` with extra global options (e.g. `--log-format json`)
//!   whose standard error is kept for the test to read.
//! - [`replace_once`] and friends: edits to a [`super::GateConfig`] TOML that its builder
//!   cannot express (an empty `relay_networks`, a pool TLS policy, several pool servers).
//! - [`connect_from`]: a plain TCP connection from a chosen loopback source address.

use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use tempfile::TempDir;

use super::wait::{Ran, wait_until};

const COMMAND_DEADLINE: Duration = Duration::from_secs(60);
const START_DEADLINE: Duration = Duration::from_secs(30);

/// `path` as a TOML basic string (quotes included).
pub fn toml_path(path: &Path) -> String {
    let text = path.to_str().expect("test paths are UTF-8");
    let mut out = String::from("\"");
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// A self-signed certificate and its private key, written as PEM files in a temp dir.
pub struct CertFiles {
    _dir: TempDir,
    pub cert: PathBuf,
    pub key: PathBuf,
    /// The certificate in PEM, to compare with what a client was shown.
    pub cert_pem: String,
}

impl CertFiles {
    /// A certificate for `names` (subject alternative names), e.g. `["gate.test"]`.
    pub fn self_signed(names: &[&str]) -> CertFiles {
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let certified = rcgen::generate_simple_self_signed(names).expect("rcgen self-signed");
        let dir = tempfile::tempdir().expect("tempdir");
        let cert = dir.path().join("cert.pem");
        let key = dir.path().join("key.pem");
        let cert_pem = certified.cert.pem();
        fs::write(&cert, &cert_pem).expect("write cert.pem");
        fs::write(&key, certified.signing_key.serialize_pem()).expect("write key.pem");
        CertFiles {
            _dir: dir,
            cert,
            key,
            cert_pem,
        }
    }

    /// The listener line: `tls = { cert = "...", key = "..." }`.
    pub fn listener_line(&self) -> String {
        format!(
            "tls = {{ cert = {}, key = {} }}",
            toml_path(&self.cert),
            toml_path(&self.key)
        )
    }
}

/// A users file (`name:hash` per line) with hashes made by `smtpgate passwd`.
pub struct UsersFile {
    _dir: TempDir,
    pub path: PathBuf,
}

impl UsersFile {
    pub fn create(users: &[(&str, &str)]) -> UsersFile {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("users");
        let mut text = String::from("# made by smtpgate passwd\n");
        for (name, password) in users {
            text.push_str(&format!("{name}:{}\n", smtpgate_passwd(password)));
        }
        fs::write(&path, text).expect("write users file");
        UsersFile { _dir: dir, path }
    }

    /// The listener line: `auth = { users_file = "..." }`.
    pub fn listener_line(&self) -> String {
        format!("auth = {{ users_file = {} }}", toml_path(&self.path))
    }
}

/// Runs `smtpgate passwd` with `password` on its standard input; returns the hash it printed.
pub fn smtpgate_passwd(password: &str) -> String {
    let ran = run_smtpgate(&["passwd"], Some(&format!("{password}\n")), None);
    assert!(
        ran.status.is_some_and(|s| s.success()),
        "smtpgate passwd failed: {:?}\n{}{}",
        ran.status,
        ran.stdout,
        ran.stderr
    );
    let hash = ran.stdout.trim().to_string();
    assert!(
        !hash.is_empty() && !hash.contains('\n'),
        "smtpgate passwd printed {:?}",
        ran.stdout
    );
    hash
}

/// Runs the `smtpgate` binary with `args`, feeding `stdin` (or nothing) and killing it
/// after a minute; `cwd` defaults to the test's working directory. With `--admin <address>` of
/// a gate the harness started (and no `--token-file`), it adds `--token-file` with that gate's.
pub fn run_smtpgate(args: &[&str], stdin: Option<&str>, cwd: Option<&Path>) -> Ran {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_smtpgate"));
    cmd.args(args).env("NO_COLOR", "1");
    let admin = args
        .windows(2)
        .find(|w| w[0] == "--admin")
        .and_then(|w| w[1].parse().ok());
    if let Some(file) = admin.and_then(super::admin_token_file)
        && !args.contains(&"--token-file")
    {
        cmd.arg("--token-file").arg(file);
    }
    if let Some(dir) = cwd {
        cmd.current_dir(dir);
    }
    let program = format!("{cmd:?}");
    let mut child = cmd
        .stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}"));
    if let Some(input) = stdin {
        let mut pipe = child.stdin.take().expect("piped stdin");
        let _ = pipe.write_all(input.as_bytes());
        // Dropping the pipe closes it: end of input.
    }
    let stdout = read_in_background(child.stdout.take().expect("piped stdout"));
    let stderr = read_in_background(child.stderr.take().expect("piped stderr"));
    let mut status = None;
    wait_until(COMMAND_DEADLINE, || {
        status = child.try_wait().expect("try_wait");
        status.is_some()
    });
    if status.is_none() {
        eprintln!("{program} still running after {COMMAND_DEADLINE:?}: killing it");
        let _ = child.kill();
        let _ = child.wait();
    }
    Ran {
        status,
        stdout: stdout.join().expect("stdout reader"),
        stderr: stderr.join().expect("stderr reader"),
    }
}

fn read_in_background(from: impl std::io::Read + Send + 'static) -> thread::JoinHandle<String> {
    thread::spawn(move || {
        let mut from = from;
        let mut bytes = Vec::new();
        let _ = from.read_to_end(&mut bytes);
        String::from_utf8_lossy(&bytes).into_owned()
    })
}

/// `smtpgate <global options> serve --config <file>` as a child process whose standard
/// error lines are kept (and echoed to the test's stderr). Killed on drop.
pub struct LoggedGate {
    _dir: TempDir,
    child: Child,
    smtp: SocketAddr,
    stderr: Arc<Mutex<Vec<String>>>,
}

impl LoggedGate {
    /// Writes `config_toml` in a fresh temp dir and starts smtpgate with `global_args`
    /// (e.g. `["--log-format", "json"]`) after `serve --config <file>`, until it prints
    /// `smtpgate ready`.
    pub fn start(config_toml: &str, global_args: &[&str]) -> LoggedGate {
        LoggedGate::spawn(config_toml, global_args, Some("1"))
    }

    /// As [`LoggedGate::start`], but without `NO_COLOR` in the environment: smtpgate decides
    /// alone whether its standard error (a pipe here) gets colours.
    pub fn start_without_no_color(config_toml: &str, global_args: &[&str]) -> LoggedGate {
        LoggedGate::spawn(config_toml, global_args, None)
    }

    fn spawn(config_toml: &str, global_args: &[&str], no_color: Option<&str>) -> LoggedGate {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = dir.path().join("smtpgate.toml");
        fs::write(&config, config_toml).expect("write smtpgate.toml");
        let mut command = Command::new(env!("CARGO_BIN_EXE_smtpgate"));
        match no_color {
            Some(value) => command.env("NO_COLOR", value),
            None => command.env_remove("NO_COLOR"),
        };
        let mut child = command
            .arg("serve")
            .arg("--config")
            .arg(&config)
            .args(global_args)
            .current_dir(dir.path())
            .env_remove("SMTPGATE_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run smtpgate");
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let kept = stderr.clone();
        let err = child.stderr.take().expect("stderr");
        thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                eprintln!("[smtpgate stderr] {line}");
                kept.lock().unwrap().push(line);
            }
        });
        let (send, lines) = mpsc::channel();
        let out = child.stdout.take().expect("stdout");
        thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                eprintln!("[smtpgate stdout] {line}");
                let _ = send.send(line);
            }
        });
        let deadline = Instant::now() + START_DEADLINE;
        let mut smtp = None;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let Ok(line) = lines.recv_timeout(left) else {
                let _ = child.kill();
                let status = child.wait();
                panic!(
                    "smtpgate did not print `smtpgate ready` (exit: {status:?}); stderr:\n{}",
                    stderr.lock().unwrap().join("\n")
                );
            };
            if line.trim() == "smtpgate ready" {
                break;
            }
            if smtp.is_none() && line.starts_with("smtpgate listening:") {
                smtp = line
                    .split_whitespace()
                    .find_map(|t| t.strip_prefix("address="))
                    .and_then(|a| a.parse().ok());
            }
        }
        LoggedGate {
            _dir: dir,
            child,
            smtp: smtp.expect("a `smtpgate listening:` line with an address"),
            stderr,
        }
    }

    /// The first listener's address.
    pub fn smtp_addr(&self) -> SocketAddr {
        self.smtp
    }

    /// Every standard error line so far.
    pub fn stderr_lines(&self) -> Vec<String> {
        self.stderr.lock().unwrap().clone()
    }
}

impl Drop for LoggedGate {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `toml` with the one occurrence of `from` replaced by `to`; panics unless there is
/// exactly one (so a change in the usual config cannot make a test silently vacuous).
pub fn replace_once(toml: &str, from: &str, to: &str) -> String {
    let found = toml.matches(from).count();
    assert_eq!(found, 1, "{from:?} occurs {found} times in:\n{toml}");
    toml.replacen(from, to, 1)
}

/// The usual config with `relay_networks = []`: nobody may relay by address alone.
pub fn without_relay_networks(toml: &str) -> String {
    replace_once(toml, "relay_networks = [\"127.0.0.0/8\"]", "relay_networks = []")
}

/// The usual config with the pool's `tls` policy set to `policy`.
pub fn with_pool_tls(toml: &str, policy: &str) -> String {
    replace_once(toml, "tls = \"none\"", &format!("tls = \"{policy}\""))
}

/// The usual config (built with `relay_to(first)`) with the pool's servers replaced by
/// `servers`, in order.
pub fn with_pool_servers(toml: &str, first: SocketAddr, servers: &[SocketAddr]) -> String {
    let list: Vec<String> = servers.iter().map(|s| format!("\"{s}\"")).collect();
    replace_once(
        toml,
        &format!("servers = [\"{first}\"]"),
        &format!("servers = [{}]", list.join(", ")),
    )
}

/// A TCP connection to `to` from the loopback address `from` (any of 127.0.0.0/8), so one
/// machine can look like several clients.
pub fn connect_from(from: IpAddr, to: SocketAddr) -> TcpStream {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let stream = runtime.block_on(async {
        let socket = match from {
            IpAddr::V4(_) => tokio::net::TcpSocket::new_v4(),
            IpAddr::V6(_) => tokio::net::TcpSocket::new_v6(),
        }
        .expect("socket");
        socket
            .bind(SocketAddr::new(from, 0))
            .unwrap_or_else(|e| panic!("bind {from}: {e}"));
        tokio::time::timeout(Duration::from_secs(10), socket.connect(to))
            .await
            .unwrap_or_else(|_| panic!("connect {from} -> {to} timed out"))
            .unwrap_or_else(|e| panic!("connect {from} -> {to}: {e}"))
    });
    let stream = stream.into_std().expect("into_std");
    stream.set_nonblocking(false).expect("blocking");
    stream
}

/// Reads one CRLF-terminated line (the greeting, say), waiting at most 20 s.
pub fn read_line(stream: &TcpStream) -> String {
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .expect("read timeout");
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    while !line.ends_with(b"\n") {
        match std::io::Read::read(&mut &*stream, &mut byte) {
            Ok(0) => break,
            Ok(_) => line.push(byte[0]),
            Err(e) => panic!("reading a line: {e} (got {:?} so far)", line),
        }
    }
    String::from_utf8_lossy(&line).trim_end().to_string()
}

/// Reads until the peer closes the connection (within 20 s); returns what came before.
/// Panics if the connection is still open at the deadline.
pub fn read_to_close(stream: &TcpStream) -> String {
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .expect("read timeout");
    let mut all = Vec::new();
    let mut chunk = [0u8; 1024];
    loop {
        match std::io::Read::read(&mut &*stream, &mut chunk) {
            Ok(0) => break,
            Ok(n) => all.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break,
            Err(e) => panic!("connection not closed: {e} (got {:?})", String::from_utf8_lossy(&all)),
        }
    }
    String::from_utf8_lossy(&all).into_owned()
}
