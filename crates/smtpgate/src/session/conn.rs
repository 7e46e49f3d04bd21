//! The server side of one connection: buffered reads, buffered replies, timeouts.
//!
//! Replies are collected and flushed only when the session needs more input, which is what makes
//! PIPELINING (RFC 2920) cheap: a pipelined group of commands gets its replies in one write.

use std::time::Duration;

use bytes::{Buf, BytesMut};
use smtpgate_proto::{Framed, LineFramer, Reply};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::watch;
use tokio::time::timeout;

use crate::io::BoxIo;

/// Why reading stopped.
#[derive(Debug)]
pub enum ReadError {
    Eof,
    Timeout,
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
}

impl Conn {
    pub fn new(io: BoxIo, shutdown: watch::Receiver<bool>) -> Self {
        Conn {
            io,
            rbuf: BytesMut::with_capacity(8192),
            wbuf: Vec::with_capacity(1024),
            shutdown,
        }
    }

    /// Queues a reply; it is sent at the next flush.
    pub fn reply(&mut self, r: &Reply) {
        r.write_to(&mut self.wbuf);
    }

    pub async fn flush(&mut self) -> std::io::Result<()> {
        if !self.wbuf.is_empty() {
            self.io.write_all(&self.wbuf).await?;
            self.wbuf.clear();
        }
        self.io.flush().await
    }

    /// Flushes replies, then waits for more input. Between commands (`interruptible`), a server
    /// shutdown ends the wait.
    pub async fn read_more(&mut self, limit: Duration, interruptible: bool) -> Result<(), ReadError> {
        self.flush().await.map_err(ReadError::Io)?;
        if self.rbuf.capacity() - self.rbuf.len() < 4096 {
            self.rbuf.reserve(8192);
        }
        let read = timeout(limit, self.io.read_buf(&mut self.rbuf));
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

    /// Reads the next command line.
    /// A server shutdown interrupts the wait only when `between_transactions`.
    pub async fn read_line(
        &mut self,
        framer: &mut LineFramer,
        limit: Duration,
        between_transactions: bool,
    ) -> Result<Line, ReadError> {
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
                        self.read_more(limit, between_transactions).await?;
                    }
                }
            }
        }
    }

    /// Passes exactly `n` octets to `sink` (a BDAT chunk), reading as needed.
    pub async fn read_exact_with(
        &mut self,
        mut n: u64,
        limit: Duration,
        mut sink: impl FnMut(&[u8]),
    ) -> Result<(), ReadError> {
        loop {
            let take = (self.rbuf.len() as u64).min(n) as usize;
            sink(&self.rbuf[..take]);
            self.rbuf.advance(take);
            n -= take as u64;
            if n == 0 {
                return Ok(());
            }
            self.read_more(limit, false).await?;
        }
    }

    /// Throws away input that is buffered but not yet read (after STARTTLS: CVE-2011-0411).
    pub fn discard_buffered(&mut self) -> usize {
        let n = self.rbuf.len();
        self.rbuf.clear();
        n
    }
}
