//! The server side of one connection: buffered reads, buffered replies, timeouts.
//!
//! Replies are collected and flushed only when the session needs more input, which is what makes
//! PIPELINING (RFC 2920) cheap: a pipelined group of commands gets its replies in one write.
//!
//! Every wait is bounded: a flush by `write_timeout` (a client that never reads its replies is
//! dropped), a command line by `command_timeout` for the whole line (not per read, so a client
//! trickling a byte at a time gains nothing), and message data by a [`Pace`].

use std::time::Duration;

use bytes::{Buf, BytesMut};
use smtpgate_proto::{Framed, LineFramer, Reply};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::watch;
use tokio::time::{Instant, timeout, timeout_at};

use crate::io::BoxIo;

/// Why reading stopped.
#[derive(Debug)]
pub enum ReadError {
    Eof,
    Timeout,
    /// A flush of replies did not finish within `write_timeout`.
    WriteTimeout,
    Shutdown,
    Io(#[allow(dead_code)] std::io::Error),
}

/// A command line as the framer saw it.
pub enum Line {
    Command(Vec<u8>),
    TooLong,
}

pub struct Conn {
    pub io: BoxIo,
    pub rbuf: BytesMut,
    wbuf: Vec<u8>,
    shutdown: watch::Receiver<bool>,
    write_timeout: Duration,
}

/// The deadline for message data: `grace` from the start, plus one second for every `rate`
/// octets received (Postfix's `smtpd_min_data_rate`). A rate of 0 leaves only `grace`.
#[derive(Debug, Clone, Copy)]
pub struct Pace {
    start: Instant,
    grace: Duration,
    rate: u64,
}

impl Pace {
    pub fn new(grace: Duration, rate: u64) -> Self {
        Pace {
            start: Instant::now(),
            grace,
            rate,
        }
    }

    /// When the data must have come in, given `received` octets so far.
    pub fn deadline(&self, received: u64) -> Instant {
        let earned = match self.rate {
            0 => Duration::ZERO,
            rate => Duration::from_secs_f64(received as f64 / rate as f64),
        };
        self.start + self.grace + earned
    }
}

impl Conn {
    pub fn new(io: BoxIo, shutdown: watch::Receiver<bool>, write_timeout: Duration) -> Self {
        Conn {
            io,
            rbuf: BytesMut::with_capacity(8192),
            wbuf: Vec::with_capacity(1024),
            shutdown,
            write_timeout,
        }
    }

    /// Queues a reply; it is sent at the next flush.
    pub fn reply(&mut self, r: &Reply) {
        r.write_to(&mut self.wbuf);
    }

    /// Sends the queued replies, within `write_timeout`.
    pub async fn flush(&mut self) -> Result<(), ReadError> {
        let send = async {
            if !self.wbuf.is_empty() {
                self.io.write_all(&self.wbuf).await?;
                self.wbuf.clear();
            }
            self.io.flush().await
        };
        match timeout(self.write_timeout, send).await {
            Ok(r) => r.map_err(ReadError::Io),
            Err(_) => Err(ReadError::WriteTimeout),
        }
    }

    /// Flushes replies, then waits for more input until `deadline`. Between commands
    /// (`interruptible`), a server shutdown ends the wait.
    pub async fn read_more(&mut self, deadline: Instant, interruptible: bool) -> Result<(), ReadError> {
        self.flush().await?;
        if self.rbuf.capacity() - self.rbuf.len() < 4096 {
            self.rbuf.reserve(8192);
        }
        let read = timeout_at(deadline, self.io.read_buf(&mut self.rbuf));
        let n = if interruptible {
            let mut shutdown = self.shutdown.clone();
            if *shutdown.borrow() {
                return Err(ReadError::Shutdown);
            }
            tokio::select! {
                r = read => r,
                _ = shutdown.changed() => return Err(ReadError::Shutdown),
            }
        } else {
            read.await
        };
        match n {
            Err(_) => Err(ReadError::Timeout),
            Ok(Err(e)) => Err(ReadError::Io(e)),
            Ok(Ok(0)) => Err(ReadError::Eof),
            Ok(Ok(_)) => Ok(()),
        }
    }

    /// Reads the next command line, all of it within `limit`.
    /// A server shutdown interrupts the wait only when `between_transactions`.
    pub async fn read_line(
        &mut self,
        framer: &mut LineFramer,
        limit: Duration,
        between_transactions: bool,
    ) -> Result<Line, ReadError> {
        let deadline = Instant::now() + limit;
        loop {
            match framer.next(&self.rbuf) {
                Framed::Line { len, consumed } => {
                    let line = self.rbuf[..len].to_vec();
                    self.rbuf.advance(consumed);
                    return Ok(Line::Command(line));
                }
                Framed::TooLong { consumed } => {
                    self.rbuf.advance(consumed);
                    return Ok(Line::TooLong);
                }
                Framed::NeedMore { consumed } => {
                    self.rbuf.advance(consumed);
                    // The end of a discarded line may have pipelined commands behind it.
                    if consumed == 0 {
                        self.read_more(deadline, between_transactions).await?;
                    }
                }
            }
        }
    }

    /// Passes exactly `n` octets to `sink` (a BDAT chunk), reading as needed, at `pace`.
    /// `before` octets of the same data were read already (they count for the pace).
    pub async fn read_exact_with(
        &mut self,
        n: u64,
        pace: Pace,
        before: u64,
        mut sink: impl FnMut(&[u8]),
    ) -> Result<(), ReadError> {
        let mut left = n;
        loop {
            let take = (self.rbuf.len() as u64).min(left) as usize;
            sink(&self.rbuf[..take]);
            self.rbuf.advance(take);
            left -= take as u64;
            if left == 0 {
                return Ok(());
            }
            self.read_more(pace.deadline(before + n - left), false).await?;
        }
    }

    /// Whether input is already buffered beyond what the session has taken.
    pub fn has_buffered(&self) -> bool {
        !self.rbuf.is_empty()
    }

    /// Throws away input that is buffered but not yet read (after STARTTLS: CVE-2011-0411).
    pub fn discard_buffered(&mut self) -> usize {
        let n = self.rbuf.len();
        self.rbuf.clear();
        n
    }
}
