//! Command-line framing.
//!
//! SMTP commands are lines ending in `<CR><LF>`; RFC 5321 4.5.3.1.4 limits a command line to
//! 512 octets *including* the `<CR><LF>`. [`LineFramer`] finds the next line at the front of a
//! receive buffer, tolerates a bare `<LF>` as a terminator (a `<CR>` before it is stripped), and
//! turns an over-long line into one [`Framed::TooLong`] however many reads it spans.

/// What [`LineFramer::next`] found at the front of the buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framed {
    /// `buf[..len]` is one command line without its terminator; drop `consumed` bytes.
    Line { len: usize, consumed: usize },
    /// A line longer than the limit was seen (whole, or its start); drop `consumed` bytes and
    /// reply `500 5.5.2` once. The framer discards the rest of that line by itself.
    TooLong { consumed: usize },
    /// No complete line yet; drop `consumed` bytes (non-zero only while the framer is discarding
    /// the tail of an over-long line). **If `consumed > 0`, call `next` again** before reading
    /// more input: the discarded tail may have ended and a pipelined line may already be buffered.
    NeedMore { consumed: usize },
}

/// Finds command lines in a byte buffer; remembers only whether it is discarding a long line.
#[derive(Debug, Clone)]
pub struct LineFramer {
    max: usize,
    discarding: bool,
}

impl LineFramer {
    /// A framer for lines of at most `max_len` octets including the `<CR><LF>` (512 for SMTP).
    pub fn new(max_len: usize) -> Self {
        LineFramer {
            max: max_len.max(1),
            discarding: false,
        }
    }

    /// True while the tail of an over-long line is being thrown away.
    pub fn is_discarding(&self) -> bool {
        self.discarding
    }

    /// Looks at the front of `buf`. `Line { len, consumed }`: `buf[..len]` is one command line
    /// without its terminator (CRLF, or a bare LF, with a CR before the LF stripped); the caller
    /// drops `consumed` bytes. `TooLong`: a line longer than `max_len` was seen (whole, or so
    /// far); the caller drops `consumed` bytes and replies `500 5.5.2` once; the framer keeps
    /// discarding the rest of that line across later calls (returning `NeedMore { consumed }`
    /// while discarding) until its LF. `NeedMore`: no full line yet (see [`Framed::NeedMore`]).
    pub fn next(&mut self, buf: &[u8]) -> Framed {
        if self.discarding {
            return self.discard(buf);
        }
        match find_lf(buf) {
            Some(lf) if lf < self.max => Framed::Line {
                len: strip_cr(buf, lf),
                consumed: lf + 1,
            },
            Some(lf) => Framed::TooLong { consumed: lf + 1 },
            None if buf.len() >= self.max => {
                self.discarding = true;
                Framed::TooLong { consumed: buf.len() }
            }
            None => Framed::NeedMore { consumed: 0 },
        }
    }

    fn discard(&mut self, buf: &[u8]) -> Framed {
        match find_lf(buf) {
            Some(lf) => {
                self.discarding = false;
                Framed::NeedMore { consumed: lf + 1 }
            }
            None => Framed::NeedMore { consumed: buf.len() },
        }
    }
}

fn find_lf(buf: &[u8]) -> Option<usize> {
    buf.iter().position(|&b| b == b'\n')
}

/// Length of the line ending at the LF at `lf`, without a CR just before it.
fn strip_cr(buf: &[u8], lf: usize) -> usize {
    if lf > 0 && buf[lf - 1] == b'\r' { lf - 1 } else { lf }
}
