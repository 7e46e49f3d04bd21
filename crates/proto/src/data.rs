//! The DATA and BDAT body receivers.
//!
//! Defends against SMTP smuggling (CVE-2023-51764/5/6): **only** `<CR><LF>.<CR><LF>` ends DATA.
//! Every lax variant (`<LF>.<LF>`, `<CR>.<CR>`, `<LF>.<CR><LF>`, ...) is message content. A bare
//! CR or LF (not part of a CRLF pair) is either recorded as a reason to reject the message
//! ([`BareEol::Reject`]) or stored as CRLF ([`BareEol::Normalize`]); either way the stored body
//! has CRLF line endings only, so re-sending it with [`crate::dot_stuff`] is always safe.
//!
//! A NUL octet is refused by default ([`Nul::Reject`], reply `550 5.6.0`) or dropped
//! ([`Nul::Strip`]); either way no NUL is ever stored. A NUL never changes where a line starts:
//! `<CR><LF>NUL.<CR><LF>` is content here (the dot is not at the start of a line), while a
//! receiver that drops NULs would take it for the end of data, so letting it through would be
//! another way to smuggle a message.
//!
//! Both receivers are byte-at-a-time state machines (with a fast path for plain runs), so the
//! result never depends on how the input was split into reads or chunks.

/// What to do with a CR or LF that is not part of a CRLF pair.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BareEol {
    /// Store it as CRLF but report [`DataOutcome::BareLineEnding`] (reply `550 5.6.0`).
    Reject,
    /// Store it as CRLF and accept the message.
    Normalize,
}

/// What to do with a NUL octet in message content.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Nul {
    /// Drop it, and report [`DataOutcome::Nul`] (reply `550 5.6.0`). The default.
    #[default]
    Reject,
    /// Drop it and accept the message.
    Strip,
}

/// How a message body ended up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DataOutcome {
    Ok,
    /// More than `max_size` octets: reply `552 5.3.4`. Checked before bare line endings.
    TooBig,
    /// A bare CR or LF was seen under [`BareEol::Reject`]: reply `550 5.6.0`.
    BareLineEnding,
    /// A NUL octet was seen under [`Nul::Reject`]: reply `550 5.6.0`. Checked after the size
    /// and before bare line endings.
    Nul,
}

/// Where the DATA state machine is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// At the start of a line: after a real CRLF, or at the start of the data.
    LineStart,
    /// Inside a line (also right after a bare CR or LF, which does not start a line).
    Mid,
    /// After a CR inside a line.
    Cr,
    /// After a `.` at the start of a line.
    Dot,
    /// After `.` CR at the start of a line.
    DotCr,
    /// `<CR><LF>.<CR><LF>` seen.
    Done,
}

/// Counts stored octets, enforces the limit, drops NULs, and remembers bare line endings.
#[derive(Debug, Clone)]
struct Sink {
    policy: BareEol,
    nul_policy: Nul,
    max_size: u64,
    received: u64,
    bare: bool,
    nul: bool,
}

impl Sink {
    fn new(policy: BareEol, max_size: u64) -> Self {
        Sink {
            policy,
            nul_policy: Nul::Reject,
            max_size,
            received: 0,
            bare: false,
            nul: false,
        }
    }

    /// Stores `bytes` without their NULs, but never more than `max_size` octets in total.
    fn emit(&mut self, bytes: &[u8], out: &mut Vec<u8>) {
        let mut rest = bytes;
        while let Some(at) = rest.iter().position(|&b| b == 0) {
            self.nul = true;
            self.store(&rest[..at], out);
            rest = &rest[at + 1..];
        }
        self.store(rest, out);
    }

    fn store(&mut self, bytes: &[u8], out: &mut Vec<u8>) {
        let room = self.max_size.saturating_sub(self.received);
        let take = usize::try_from(room).unwrap_or(usize::MAX).min(bytes.len());
        out.extend_from_slice(&bytes[..take]);
        self.received = self.received.saturating_add(bytes.len() as u64);
    }

    /// A bare CR or LF: stored as CRLF either way.
    fn bare_eol(&mut self, out: &mut Vec<u8>) {
        self.bare = true;
        self.store(b"\r\n", out);
    }

    fn outcome(&self) -> DataOutcome {
        if self.received > self.max_size {
            DataOutcome::TooBig
        } else if self.nul && self.nul_policy == Nul::Reject {
            DataOutcome::Nul
        } else if self.bare && self.policy == BareEol::Reject {
            DataOutcome::BareLineEnding
        } else {
            DataOutcome::Ok
        }
    }
}

/// Receives a DATA body: dot-unstuffs it and finds the strict end of data.
#[derive(Debug, Clone)]
pub struct DataReceiver {
    state: State,
    sink: Sink,
}

impl DataReceiver {
    /// A receiver for one message of at most `max_size` stored octets.
    pub fn new(policy: BareEol, max_size: u64) -> Self {
        DataReceiver {
            state: State::LineStart,
            sink: Sink::new(policy, max_size),
        }
    }

    /// Feeds bytes received after the 354. Appends the dot-unstuffed message to `out`; returns
    /// `(consumed, done)`. `done` means `<CR><LF>.<CR><LF>` was seen: `consumed` stops right
    /// after it, and the bytes after it (pipelined commands) are not consumed. The CRLF before
    /// the dot belongs to the message; the dot line does not. The start of DATA counts as a
    /// line start, so `.<CR><LF>` right after the 354 is an empty message. After the limit,
    /// input is still read to the end of data but `out` grows no further.
    pub fn feed(&mut self, input: &[u8], out: &mut Vec<u8>) -> (usize, bool) {
        let mut i = 0;
        while i < input.len() && self.state != State::Done {
            if self.state == State::Mid {
                i += self.plain_run(&input[i..], out);
                if i == input.len() {
                    break;
                }
            }
            self.step(input[i], out);
            i += 1;
        }
        (i, self.is_done())
    }

    /// The same receiver with `nul` as its NUL policy (the default is [`Nul::Reject`]).
    pub fn with_nul(mut self, nul: Nul) -> Self {
        self.sink.nul_policy = nul;
        self
    }

    /// True once the end of data was seen.
    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// The verdict; meaningful once [`feed`](Self::feed) returned `done`.
    pub fn outcome(&self) -> DataOutcome {
        self.sink.outcome()
    }

    /// Octets of message counted so far (including any beyond the limit that were not stored).
    pub fn received(&self) -> u64 {
        self.sink.received
    }

    /// Stores the run of bytes before the next CR or LF; returns its length.
    fn plain_run(&mut self, input: &[u8], out: &mut Vec<u8>) -> usize {
        let n = input
            .iter()
            .position(|&b| b == b'\r' || b == b'\n')
            .unwrap_or(input.len());
        self.sink.emit(&input[..n], out);
        n
    }

    fn step(&mut self, b: u8, out: &mut Vec<u8>) {
        self.state = match self.state {
            State::LineStart if b == b'.' => State::Dot,
            State::LineStart | State::Mid => self.in_line(b, out),
            State::Cr => self.after_cr(b, out),
            // A dot starting a line is removed (RFC 5321 4.5.2) unless it ends the data.
            State::Dot if b == b'\r' => State::DotCr,
            State::Dot => self.in_line(b, out),
            State::DotCr if b == b'\n' => State::Done,
            State::DotCr => {
                self.sink.bare_eol(out);
                self.in_line(b, out)
            }
            State::Done => State::Done,
        };
    }

    /// An ordinary byte inside a line.
    fn in_line(&mut self, b: u8, out: &mut Vec<u8>) -> State {
        match b {
            b'\r' => State::Cr,
            b'\n' => {
                self.sink.bare_eol(out);
                State::Mid
            }
            _ => {
                self.sink.emit(&[b], out);
                State::Mid
            }
        }
    }

    fn after_cr(&mut self, b: u8, out: &mut Vec<u8>) -> State {
        if b == b'\n' {
            self.sink.emit(b"\r\n", out);
            State::LineStart
        } else {
            self.sink.bare_eol(out);
            self.in_line(b, out)
        }
    }
}

/// Receives BDAT chunks (RFC 3030): raw octets, no dot-stuffing, no end marker; the same bare
/// CR/LF policy and size limit as DATA, applied across chunk boundaries.
#[derive(Debug, Clone)]
pub struct BdatReceiver {
    pending_cr: bool,
    sink: Sink,
}

impl BdatReceiver {
    /// A receiver for one message of at most `max_size` stored octets.
    pub fn new(policy: BareEol, max_size: u64) -> Self {
        BdatReceiver {
            pending_cr: false,
            sink: Sink::new(policy, max_size),
        }
    }

    /// The same receiver with `nul` as its NUL policy (the default is [`Nul::Reject`]).
    pub fn with_nul(mut self, nul: Nul) -> Self {
        self.sink.nul_policy = nul;
        self
    }

    /// Stores one chunk (all of it is consumed). A CR at the end of a chunk is held back until
    /// the next chunk shows whether an LF follows it.
    pub fn feed(&mut self, chunk: &[u8], out: &mut Vec<u8>) {
        let mut rest = chunk;
        while let Some((&b, tail)) = rest.split_first() {
            if self.pending_cr {
                self.after_cr(b, out);
                rest = tail;
                continue;
            }
            let n = rest
                .iter()
                .position(|&b| b == b'\r' || b == b'\n')
                .unwrap_or(rest.len());
            self.sink.emit(&rest[..n], out);
            if let Some(&eol) = rest.get(n) {
                self.line_end(eol, out);
                rest = &rest[n + 1..];
            } else {
                rest = &[];
            }
        }
    }

    /// At `BDAT ... LAST`: a CR still held back is a bare CR.
    pub fn finish(&mut self, out: &mut Vec<u8>) {
        if self.pending_cr {
            self.pending_cr = false;
            self.sink.bare_eol(out);
        }
    }

    /// The verdict; meaningful after [`finish`](Self::finish).
    pub fn outcome(&self) -> DataOutcome {
        self.sink.outcome()
    }

    /// Octets of message counted so far (including any beyond the limit that were not stored).
    pub fn received(&self) -> u64 {
        self.sink.received
    }

    fn line_end(&mut self, eol: u8, out: &mut Vec<u8>) {
        if eol == b'\r' {
            self.pending_cr = true;
        } else {
            self.sink.bare_eol(out);
        }
    }

    fn after_cr(&mut self, b: u8, out: &mut Vec<u8>) {
        self.pending_cr = false;
        if b == b'\n' {
            self.sink.emit(b"\r\n", out);
        } else {
            self.sink.bare_eol(out);
            match b {
                b'\r' | b'\n' => self.line_end(b, out),
                _ => self.sink.emit(&[b], out),
            }
        }
    }
}
