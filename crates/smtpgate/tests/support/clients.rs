//! Real SMTP clients: Python's smtplib, swaks, and Postfix's smtp-source.

use std::net::SocketAddr;
use std::process::{Command, ExitStatus};
use std::time::Duration;

use super::wait::run_with_deadline;

const CLIENT_DEADLINE: Duration = Duration::from_secs(120);

/// Defined for every [`smtplib`] script. Each reply is printed as one line,
/// `<STEP> <code> <text>` (multi-line replies joined with ` | `), where STEP is CONNECT,
/// EHLO, MAIL, RCPT, DATA (only when DATA itself is refused), END-OF-DATA, RSET or QUIT.
const PRELUDE: &str = r#"
import smtplib, sys
HOST, PORT = sys.argv[1], int(sys.argv[2])

def show(step, code, msg):
    if isinstance(msg, bytes):
        msg = msg.decode("utf-8", "replace")
    print(f"{step} {code} {' | '.join(str(msg).splitlines())}", flush=True)

def connect(helo="client.example.test"):
    s = smtplib.SMTP(timeout=60)
    code, msg = s.connect(HOST, PORT)
    show("CONNECT", code, msg)
    code, msg = s.ehlo(helo)
    show("EHLO", code, msg)
    return s

def rset(s):
    code, msg = s.rset()
    show("RSET", code, msg)

def send(s, sender, rcpts, message, mail_options=(), rcpt_options=()):
    """One transaction, step by step; returns the last reply code."""
    code, msg = s.mail(sender, list(mail_options))
    show("MAIL", code, msg)
    if code != 250:
        rset(s)
        return code
    accepted = 0
    for rcpt in rcpts:
        code, msg = s.rcpt(rcpt, list(rcpt_options))
        show("RCPT", code, msg)
        accepted += code in (250, 251)
    if not accepted:
        rset(s)
        return code
    if isinstance(message, str):
        message = message.encode("utf-8")
    try:
        code, msg = s.data(message)
    except smtplib.SMTPDataError as e:
        show("DATA", e.smtp_code, e.smtp_error)
        rset(s)
        return e.smtp_code
    show("END-OF-DATA", code, msg)
    return code

def quit(s):
    code, msg = s.quit()
    show("QUIT", code, msg)
"#;

/// What an smtplib script printed: one `<STEP> <code> <text>` line per reply.
#[derive(Debug)]
pub struct PyTranscript {
    pub status: Option<ExitStatus>,
    pub stdout: String,
    pub stderr: String,
}

impl PyTranscript {
    /// `<code> <text>` of every reply to `step`, in order.
    pub fn replies(&self, step: &str) -> Vec<String> {
        let prefix = format!("{step} ");
        self.stdout
            .lines()
            .filter_map(|l| l.strip_prefix(prefix.as_str()))
            .map(str::to_string)
            .collect()
    }

    /// The last reply to `step`; panics, showing the transcript, if there was none.
    pub fn reply(&self, step: &str) -> String {
        self.replies(step)
            .pop()
            .unwrap_or_else(|| panic!("no {step} reply in transcript:\n{self}"))
    }

    pub fn succeeded(&self) -> bool {
        self.status.is_some_and(|s| s.success())
    }
}

impl std::fmt::Display for PyTranscript {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "exit: {:?}\n{}{}", self.status, self.stdout, self.stderr)
    }
}

/// Runs a Python script against `addr` with [`PRELUDE`]'s helpers in scope, e.g.
/// `s = connect(); send(s, "a@example.test", ["b@example.org"], MSG); quit(s)`.
pub fn smtplib(addr: SocketAddr, script: &str) -> PyTranscript {
    let mut cmd = Command::new("python3");
    cmd.arg("-c").arg(format!("{PRELUDE}\n{script}"));
    cmd.arg(addr.ip().to_string()).arg(addr.port().to_string());
    let ran = run_with_deadline(cmd, CLIENT_DEADLINE);
    PyTranscript {
        status: ran.status,
        stdout: ran.stdout,
        stderr: ran.stderr,
    }
}

/// Sends one message in one session. Use `""` as `from` for the null sender.
pub fn smtplib_send(addr: SocketAddr, from: &str, to: &[&str], message: &str) -> PyTranscript {
    smtplib(
        addr,
        &format!(
            "s = connect()\nsend(s, {}, {}, {})\nquit(s)\n",
            py_str(from),
            py_list(to),
            py_str(message)
        ),
    )
}

/// Sends `n` messages over one connection; `{i}` in `message` becomes 0, 1, ...
pub fn smtplib_send_many(addr: SocketAddr, n: usize, from: &str, to: &[&str], message: &str) -> PyTranscript {
    smtplib(
        addr,
        &format!(
            "s = connect()\nfor i in range({n}):\n    send(s, {}, {}, {}.replace('{{i}}', str(i)))\nquit(s)\n",
            py_str(from),
            py_list(to),
            py_str(message)
        ),
    )
}

/// A Python string literal for `text` (JSON string syntax, which Python accepts).
fn py_str(text: &str) -> String {
    let mut out = String::from("\"");
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 || c as u32 == 0x7f => {
                out.push_str(&format!("\\u{:04x}", c as u32));
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn py_list(items: &[&str]) -> String {
    let items: Vec<String> = items.iter().map(|i| py_str(i)).collect();
    format!("[{}]", items.join(", "))
}

/// Runs `swaks` with `args`; returns its exit status and transcript (stdout + stderr).
pub fn swaks(args: &[&str]) -> (ExitStatus, String) {
    let mut cmd = Command::new("swaks");
    cmd.args(args);
    let ran = run_with_deadline(cmd, CLIENT_DEADLINE);
    let status = ran.status.expect("swaks ran past its deadline");
    (status, format!("{}{}", ran.stdout, ran.stderr))
}

/// Runs Postfix's `/usr/sbin/smtp-source` with `args`, killing it after `within`; returns
/// its exit status (None if killed) and output.
pub fn smtp_source(args: &[&str], within: Duration) -> (Option<ExitStatus>, String) {
    let mut cmd = Command::new("/usr/sbin/smtp-source");
    cmd.args(args);
    let ran = run_with_deadline(cmd, within);
    (ran.status, format!("{}{}", ran.stdout, ran.stderr))
}
