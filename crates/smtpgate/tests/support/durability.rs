//! Helpers for the durability tests: a small blocking SMTP client that reports exactly which
//! reply each step got (so a test knows which messages were acknowledged with `250`), and a
//! probe for "this address no longer takes connections".

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::time::Duration;

/// One SMTP reply: the code of its last line and every line's text joined with ` | `.
#[derive(Debug, Clone, PartialEq)]
pub struct SmtpReply {
    pub code: u16,
    pub text: String,
}

impl SmtpReply {
    pub fn is(&self, code: u16) -> bool {
        self.code == code
    }
}

impl std::fmt::Display for SmtpReply {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.code, self.text)
    }
}

/// A blocking SMTP client connection with read and write timeouts. Every error (connect,
/// reset, timeout, end of stream, malformed reply) is an `io::Error`.
pub struct SmtpConn {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
}

impl SmtpConn {
    /// Connects and reads the greeting, which must be `220`.
    pub fn connect(addr: SocketAddr, timeout: Duration) -> io::Result<SmtpConn> {
        let mut conn = SmtpConn::connect_raw(addr, timeout)?;
        let greeting = conn.reply()?;
        if !greeting.is(220) {
            return Err(io::Error::other(format!("greeting: {greeting}")));
        }
        Ok(conn)
    }

    /// Connects without reading the greeting.
    pub fn connect_raw(addr: SocketAddr, timeout: Duration) -> io::Result<SmtpConn> {
        let stream = TcpStream::connect_timeout(&addr, timeout)?;
        stream.set_read_timeout(Some(timeout))?;
        stream.set_write_timeout(Some(timeout))?;
        stream.set_nodelay(true)?;
        Ok(SmtpConn {
            reader: BufReader::new(stream.try_clone()?),
            writer: stream,
        })
    }

    /// Reads one (possibly multi-line) reply.
    pub fn reply(&mut self) -> io::Result<SmtpReply> {
        let mut lines = Vec::new();
        loop {
            let mut line = String::new();
            if self.reader.read_line(&mut line)? == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!("connection closed; reply so far: {lines:?}"),
                ));
            }
            let line = line.trim_end_matches(['\r', '\n']).to_string();
            let code = line.get(..3).and_then(|c| c.parse::<u16>().ok());
            let Some(code) = code else {
                return Err(io::Error::other(format!("malformed reply line {line:?}")));
            };
            let last = line.as_bytes().get(3) != Some(&b'-');
            lines.push(line.get(4..).unwrap_or("").to_string());
            if last {
                return Ok(SmtpReply {
                    code,
                    text: lines.join(" | "),
                });
            }
        }
    }

    /// Sends raw bytes as they are.
    pub fn send_raw(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.writer.write_all(bytes)?;
        self.writer.flush()
    }

    /// Sends one command line (CRLF added) and reads its reply.
    pub fn command(&mut self, line: &str) -> io::Result<SmtpReply> {
        self.send_raw(format!("{line}\r\n").as_bytes())?;
        self.reply()
    }

    /// Sends a command and requires the given reply code.
    pub fn expect(&mut self, line: &str, code: u16) -> io::Result<SmtpReply> {
        let reply = self.command(line)?;
        if reply.is(code) {
            Ok(reply)
        } else {
            Err(io::Error::other(format!("{line:?} got {reply}")))
        }
    }

    pub fn ehlo(&mut self, name: &str) -> io::Result<SmtpReply> {
        self.expect(&format!("EHLO {name}"), 250)
    }

    /// MAIL, RCPT for every recipient (all must be accepted) and DATA up to the `354`.
    pub fn start_data(&mut self, from: &str, to: &[&str]) -> io::Result<()> {
        self.expect(&format!("MAIL FROM:<{from}>"), 250)?;
        for rcpt in to {
            self.expect(&format!("RCPT TO:<{rcpt}>"), 250)?;
        }
        self.expect("DATA", 354)?;
        Ok(())
    }

    /// One whole transaction; returns the reply to the end of data. `message` must use CRLF
    /// line endings and end with CRLF; it is dot-stuffed here.
    pub fn send_message(&mut self, from: &str, to: &[&str], message: &str) -> io::Result<SmtpReply> {
        self.start_data(from, to)?;
        self.send_raw(&dot_stuff(message))?;
        self.send_raw(b".\r\n")?;
        self.reply()
    }

    /// `QUIT`, ignoring what happens.
    pub fn quit(mut self) {
        let _ = self.command("QUIT");
    }

    /// Waits for the server to close the connection: true on end of stream or reset, false if
    /// it sent more bytes or the read timed out.
    pub fn closed_by_server(&mut self) -> bool {
        let mut buf = [0u8; 256];
        match self.reader.read(&mut buf) {
            Ok(0) => true,
            Ok(_) => false,
            Err(e) => !matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut),
        }
    }

    /// Closes both directions at once, as a client that goes away does.
    pub fn abort(self) {
        let _ = self.writer.shutdown(Shutdown::Both);
    }
}

/// SMTP transparency (RFC 5321 4.5.2): a line starting with `.` gets another `.`.
pub fn dot_stuff(message: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(message.len() + 16);
    for line in message.split_inclusive("\r\n") {
        if line.starts_with('.') {
            out.push(b'.');
        }
        out.extend_from_slice(line.as_bytes());
    }
    out
}

/// What a fresh connection to `addr` gets.
#[derive(Debug, Clone, PartialEq)]
pub enum Probe {
    /// The connection could not be made (nothing listens).
    Refused,
    /// Connected, but closed or reset with no greeting.
    ClosedWithoutGreeting,
    /// Greeted, then told to go away (`421`) or closed before EHLO was answered.
    GreetedThenClosed(String),
    /// A session that answered EHLO: the server still serves new clients.
    Served(String),
}

/// Connects to `addr` and tries to get as far as an answered EHLO.
pub fn probe(addr: SocketAddr, timeout: Duration) -> Probe {
    let Ok(mut conn) = SmtpConn::connect_raw(addr, timeout) else {
        return Probe::Refused;
    };
    let greeting = match conn.reply() {
        Ok(r) => r,
        Err(_) => return Probe::ClosedWithoutGreeting,
    };
    if !greeting.is(220) {
        return Probe::GreetedThenClosed(greeting.to_string());
    }
    match conn.command("EHLO probe.example.test") {
        Ok(r) if r.is(250) => Probe::Served(r.to_string()),
        Ok(r) => Probe::GreetedThenClosed(format!("{greeting} / {r}")),
        Err(e) => Probe::GreetedThenClosed(format!("{greeting} / {e}")),
    }
}
