//! Live reload from the outside: rewrite the gate's `smtpgate.toml`, send SIGHUP (or run
//! `smtpgate reload`), then wait for what smtpgate prints about it.
//!
//! On success smtpgate prints, on stdout, one `smtpgate listening:` line per listener and then
//! `smtpgate reloaded`; on failure it logs the errors on stderr, ending with `reload refused`.

use std::fs;
use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use super::gate::Gate;
use super::wait::wait_until;

/// How long a reload may take to be reported.
pub const RELOAD_DEADLINE: Duration = Duration::from_secs(20);

/// How many output lines there were when a reload was asked for: later lines are its answer.
#[derive(Debug, Clone, Copy)]
pub struct OutputMark {
    stdout: usize,
    stderr: usize,
}

/// What one successful reload announced.
#[derive(Debug, Clone)]
pub struct Reloaded {
    /// `(name, address, tls)` of every listener, in the order printed.
    pub listeners: Vec<(String, SocketAddr, String)>,
}

impl Reloaded {
    pub fn addr(&self, name: &str) -> Option<SocketAddr> {
        self.listeners.iter().find(|(n, _, _)| n == name).map(|l| l.1)
    }
}

impl Gate {
    /// The config file smtpgate was started with (and re-reads on SIGHUP).
    pub fn config_path(&self) -> &Path {
        &self.config
    }

    /// Replaces the config file's text (nothing is signalled).
    pub fn write_config(&self, toml: &str) {
        fs::write(&self.config, toml).unwrap_or_else(|e| panic!("write {}: {e}", self.config.display()));
    }

    /// Every stdout line so far.
    pub fn stdout_lines(&self) -> Vec<String> {
        self.output.stdout.lock().unwrap().clone()
    }

    /// Every stderr line so far.
    pub fn stderr_lines(&self) -> Vec<String> {
        self.output.stderr.lock().unwrap().clone()
    }

    /// Where the output is now; lines printed later belong to what happens next.
    pub fn mark(&self) -> OutputMark {
        OutputMark {
            stdout: self.output.stdout.lock().unwrap().len(),
            stderr: self.output.stderr.lock().unwrap().len(),
        }
    }

    pub fn stdout_since(&self, mark: OutputMark) -> Vec<String> {
        self.output.stdout.lock().unwrap()[mark.stdout..].to_vec()
    }

    pub fn stderr_since(&self, mark: OutputMark) -> Vec<String> {
        self.output.stderr.lock().unwrap()[mark.stderr..].to_vec()
    }

    /// Waits until smtpgate has a SIGHUP handler (`SigCgt` in `/proc/<pid>/status`).
    ///
    /// smtpgate prints `smtpgate ready` before it installs the handler; a SIGHUP sent in between
    /// would kill it (the default action), so every signal goes through here first.
    pub fn wait_hup_handler(&self) {
        let status = format!("/proc/{}/status", self.pid());
        let caught = || {
            let text = fs::read_to_string(&status).unwrap_or_default();
            let mask = text.lines().find_map(|l| l.strip_prefix("SigCgt:")).map(str::trim);
            mask.and_then(|m| u64::from_str_radix(m, 16).ok())
                .is_some_and(|m| m & 1 != 0) // bit 0: signal 1, SIGHUP
        };
        assert!(
            wait_until(RELOAD_DEADLINE, caught),
            "smtpgate (pid {}) installed no SIGHUP handler within {RELOAD_DEADLINE:?}",
            self.pid()
        );
    }

    /// Sends SIGHUP (once smtpgate handles it) and returns the mark to wait from.
    pub fn sighup(&self) -> OutputMark {
        self.wait_hup_handler();
        let mark = self.mark();
        let sent = Command::new("kill")
            .args(["-HUP", &self.pid().to_string()])
            .status()
            .expect("run kill");
        assert!(sent.success(), "kill -HUP {} failed", self.pid());
        mark
    }

    /// Writes `toml`, sends SIGHUP and waits for `smtpgate reloaded`; panics if it was refused.
    pub fn reload(&mut self, toml: &str) -> Reloaded {
        self.write_config(toml);
        let mark = self.sighup();
        self.wait_reloaded(mark)
    }

    /// Writes `toml`, sends SIGHUP and waits for the refusal; returns the stderr lines since.
    pub fn reload_refused(&self, toml: &str) -> Vec<String> {
        self.write_config(toml);
        let mark = self.sighup();
        self.wait_refused(mark)
    }

    /// Waits for the `smtpgate reloaded` line printed after `mark`, takes the listener lines
    /// before it as the new listeners, and returns them.
    pub fn wait_reloaded(&mut self, mark: OutputMark) -> Reloaded {
        let done = wait_until(RELOAD_DEADLINE, || {
            self.stdout_since(mark).iter().any(|l| l.trim() == "smtpgate reloaded")
                || self.stderr_since(mark).iter().any(|l| l.contains("reload refused"))
        });
        let (stdout, stderr) = (self.stdout_since(mark), self.stderr_since(mark));
        let Some(end) = stdout.iter().position(|l| l.trim() == "smtpgate reloaded") else {
            panic!(
                "no `smtpgate reloaded` (done waiting: {done}); stdout since SIGHUP: {stdout:#?}\n\
                 stderr since SIGHUP: {stderr:#?}\nconfig:\n{}",
                fs::read_to_string(&self.config).unwrap_or_default()
            );
        };
        let listeners: Vec<(String, SocketAddr, String)> = stdout[..end]
            .iter()
            .filter_map(|l| l.strip_prefix("smtpgate listening:"))
            .map(|rest| {
                let field = |key: &str| {
                    let marker = format!("{key}=");
                    rest.split_whitespace()
                        .find_map(|t| t.strip_prefix(marker.as_str()))
                        .unwrap_or_else(|| panic!("no {marker} in {rest:?}"))
                        .to_string()
                };
                let addr = field("address");
                let addr = addr.parse().unwrap_or_else(|e| panic!("bad address {addr:?}: {e}"));
                (field("listener"), addr, field("tls"))
            })
            .collect();
        self.announced.listeners = listeners.clone();
        Reloaded { listeners }
    }

    /// Waits for the `reload refused` log line after `mark`; returns the stderr lines since
    /// `mark` (up to and including it). Panics if smtpgate printed `smtpgate reloaded` instead.
    pub fn wait_refused(&self, mark: OutputMark) -> Vec<String> {
        let done = wait_until(RELOAD_DEADLINE, || {
            self.stdout_since(mark).iter().any(|l| l.trim() == "smtpgate reloaded")
                || self.stderr_since(mark).iter().any(|l| l.contains("reload refused"))
        });
        let (stdout, stderr) = (self.stdout_since(mark), self.stderr_since(mark));
        assert!(
            !stdout.iter().any(|l| l.trim() == "smtpgate reloaded"),
            "the reload was expected to be refused; stdout since SIGHUP: {stdout:#?}\nstderr: {stderr:#?}"
        );
        let Some(end) = stderr.iter().position(|l| l.contains("reload refused")) else {
            panic!("no `reload refused` (done waiting: {done}); stderr since SIGHUP: {stderr:#?}");
        };
        stderr[..=end].to_vec()
    }
}
