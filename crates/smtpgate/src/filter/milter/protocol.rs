//! The milter wire protocol (Sendmail's libmilter, version 6, as Postfix speaks it): packets,
//! commands the MTA sends, responses the milter gives, and the negotiation bits. No I/O here
//! except [`read_packet`] and [`write_packet`], which frame bytes on any async stream.
//!
//! A packet is a big-endian `u32` length (of what follows), a command byte, then data. Strings
//! inside data are NUL-terminated.

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// The protocol version we speak.
pub const VERSION: u32 = 6;
/// The largest body chunk in one `SMFIC_BODY` packet (libmilter's `MILTER_CHUNK_SIZE`).
pub const BODY_CHUNK: usize = 65535;
/// A larger packet than this from a milter is a protocol error (libmilter's own limit is 1 MiB;
/// a replaced body comes in many packets).
pub const MAX_PACKET: usize = 16 * 1024 * 1024;

/// Actions (`SMFIF_*`): what a milter may do at end of message.
pub mod action {
    pub const ADDHDRS: u32 = 0x01;
    pub const CHGBODY: u32 = 0x02;
    pub const ADDRCPT: u32 = 0x04;
    pub const DELRCPT: u32 = 0x08;
    pub const CHGHDRS: u32 = 0x10;
    pub const QUARANTINE: u32 = 0x20;
    // 0x40 is SMFIF_CHGFROM, deliberately not offered (see OFFERED_ACTIONS).
    pub const ADDRCPT_PAR: u32 = 0x80;
}

/// Protocol flags (`SMFIP_*`): steps a milter does not want (`NO*`), replies it will not send
/// (`NR_*`), and conventions.
pub mod step {
    pub const NOCONNECT: u32 = 0x01;
    pub const NOHELO: u32 = 0x02;
    pub const NOMAIL: u32 = 0x04;
    pub const NORCPT: u32 = 0x08;
    pub const NOBODY: u32 = 0x10;
    pub const NOHDRS: u32 = 0x20;
    pub const NOEOH: u32 = 0x40;
    /// No reply to each header (`SMFIP_NOHREPL`, a.k.a. `SMFIP_NR_HDR`).
    pub const NR_HDR: u32 = 0x80;
    pub const NOUNKNOWN: u32 = 0x100;
    pub const NODATA: u32 = 0x200;
    /// The milter may answer a body chunk with `SMFIR_SKIP`.
    pub const SKIP: u32 = 0x400;
    pub const NR_CONN: u32 = 0x1000;
    pub const NR_HELO: u32 = 0x2000;
    pub const NR_MAIL: u32 = 0x4000;
    pub const NR_RCPT: u32 = 0x8000;
    pub const NR_DATA: u32 = 0x10000;
    pub const NR_UNKN: u32 = 0x20000;
    pub const NR_EOH: u32 = 0x40000;
    pub const NR_BODY: u32 = 0x80000;
    /// Header values are exchanged with the space after the colon.
    pub const HDR_LEADSPC: u32 = 0x100000;
}

/// Everything we can leave out or do without a reply (all but `SMFIP_RCPT_REJ`: we never send
/// rejected recipients).
pub const OFFERED_STEPS: u32 = step::NOCONNECT
    | step::NOHELO
    | step::NOMAIL
    | step::NORCPT
    | step::NOBODY
    | step::NOHDRS
    | step::NOEOH
    | step::NR_HDR
    | step::NOUNKNOWN
    | step::NODATA
    | step::SKIP
    | step::NR_CONN
    | step::NR_HELO
    | step::NR_MAIL
    | step::NR_RCPT
    | step::NR_DATA
    | step::NR_UNKN
    | step::NR_EOH
    | step::NR_BODY
    | step::HDR_LEADSPC;

/// The actions we can carry out. Not `SMFIF_CHGFROM`: a [`Verdict`](crate::filter::Verdict) has
/// no way to change the envelope sender, and offering it would let a milter believe it did.
pub const OFFERED_ACTIONS: u32 = action::ADDHDRS
    | action::CHGBODY
    | action::ADDRCPT
    | action::ADDRCPT_PAR
    | action::DELRCPT
    | action::CHGHDRS
    | action::QUARANTINE;

/// The network family in `SMFIC_CONNECT`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Peer {
    /// `'U'`: no address follows.
    Unknown,
    Inet {
        port: u16,
        address: std::net::IpAddr,
    },
}

/// What the MTA sends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// `'O'`: version, actions, protocol flags.
    OptNeg { version: u32, actions: u32, steps: u32 },
    /// `'D'`: macros for the command whose code is given.
    Macros { stage: u8, pairs: Vec<(String, String)> },
    /// `'C'`
    Connect { hostname: String, peer: Peer },
    /// `'H'`
    Helo(String),
    /// `'M'`: the reverse path in angle brackets, then ESMTP arguments.
    Mail(Vec<String>),
    /// `'R'`: the forward path in angle brackets, then ESMTP arguments.
    Rcpt(Vec<String>),
    /// `'T'`
    Data,
    /// `'L'`: name and value (without CRLF).
    Header(String, String),
    /// `'N'`
    EndOfHeaders,
    /// `'B'`
    Body(Vec<u8>),
    /// `'E'`
    EndOfMessage,
    /// `'Q'`
    Quit,
}

/// The command codes, also used as the stage of a `'D'` packet.
pub mod code {
    pub const CONNECT: u8 = b'C';
    pub const MAIL: u8 = b'M';
    pub const RCPT: u8 = b'R';
    pub const DATA: u8 = b'T';
    pub const EOH: u8 = b'N';
    pub const EOM: u8 = b'E';
}

impl Command {
    /// The packet: length, command byte, data.
    pub fn encode(&self) -> Vec<u8> {
        let (cmd, data) = self.parts();
        let mut out = Vec::with_capacity(5 + data.len());
        out.extend_from_slice(&(data.len() as u32 + 1).to_be_bytes());
        out.push(cmd);
        out.extend_from_slice(&data);
        out
    }

    fn parts(&self) -> (u8, Vec<u8>) {
        match self {
            Command::OptNeg {
                version,
                actions,
                steps,
            } => (b'O', [*version, *actions, *steps].map(u32::to_be_bytes).concat()),
            Command::Macros { stage, pairs } => {
                let mut data = vec![*stage];
                pairs
                    .iter()
                    .for_each(|(n, v)| push_strings(&mut data, [n.as_str(), v.as_str()]));
                (b'D', data)
            }
            Command::Connect { hostname, peer } => (b'C', connect_data(hostname, peer)),
            Command::Helo(name) => (b'H', strings([name.as_str()])),
            Command::Mail(args) => (b'M', strings(args.iter().map(String::as_str))),
            Command::Rcpt(args) => (b'R', strings(args.iter().map(String::as_str))),
            Command::Data => (b'T', Vec::new()),
            Command::Header(name, value) => (b'L', strings([name.as_str(), value.as_str()])),
            Command::EndOfHeaders => (b'N', Vec::new()),
            Command::Body(chunk) => (b'B', chunk.clone()),
            Command::EndOfMessage => (b'E', Vec::new()),
            Command::Quit => (b'Q', Vec::new()),
        }
    }
}

fn connect_data(hostname: &str, peer: &Peer) -> Vec<u8> {
    let mut data = strings([hostname]);
    match peer {
        Peer::Unknown => data.push(b'U'),
        Peer::Inet { port, address } => {
            data.push(if address.is_ipv4() { b'4' } else { b'6' });
            data.extend_from_slice(&port.to_be_bytes());
            push_strings(&mut data, [address.to_string().as_str()]);
        }
    }
    data
}

fn strings<'a>(items: impl IntoIterator<Item = &'a str>) -> Vec<u8> {
    let mut out = Vec::new();
    push_strings(&mut out, items);
    out
}

fn push_strings<'a>(out: &mut Vec<u8>, items: impl IntoIterator<Item = &'a str>) {
    for s in items {
        // A NUL inside would end the string early on the other side: drop it.
        out.extend(s.bytes().filter(|&b| b != 0));
        out.push(0);
    }
}

/// What the milter answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Response {
    /// `'O'`: its version, the actions it wants, the protocol flags it wants (any macro lists
    /// after them are ignored).
    OptNeg { version: u32, actions: u32, steps: u32 },
    /// `'a'`: accept the message, no more milter steps for it.
    Accept,
    /// `'c'`: go on.
    Continue,
    /// `'r'`
    Reject,
    /// `'t'`
    TempFail,
    /// `'d'`
    Discard,
    /// `'y'`: an SMTP reply, e.g. `550 5.7.1 go away`.
    ReplyCode(String),
    /// `'s'`: skip the rest of the body.
    Skip,
    /// `'p'`: still working, wait.
    Progress,
    /// `'h'`
    AddHeader(String, String),
    /// `'i'`: insert before the field at this (0-based) position.
    InsertHeader(u32, String, String),
    /// `'m'`: change the n-th (1-based) field of this name; an empty value deletes it.
    ChangeHeader(u32, String, String),
    /// `'b'`: a piece of the new body (several packets add up).
    ReplaceBody(Vec<u8>),
    /// `'+'` or `'2'` (with ESMTP arguments, ignored).
    AddRecipient(String),
    /// `'-'`
    DeleteRecipient(String),
    /// `'e'`: not offered, see [`OFFERED_ACTIONS`].
    ChangeFrom(String),
    /// `'q'`
    Quarantine(String),
}

/// Why a packet could not be understood.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodeError(pub String);

impl Response {
    /// Decodes one packet's command byte and data.
    pub fn decode(cmd: u8, data: &[u8]) -> Result<Response, DecodeError> {
        let r = match cmd {
            b'O' => {
                let [version, actions, steps] = [0, 4, 8].map(|at| be_u32(data, at));
                Response::OptNeg {
                    version: version?,
                    actions: actions?,
                    steps: steps?,
                }
            }
            b'a' => Response::Accept,
            b'c' => Response::Continue,
            b'r' => Response::Reject,
            b't' => Response::TempFail,
            b'd' => Response::Discard,
            b's' => Response::Skip,
            b'p' => Response::Progress,
            b'y' => Response::ReplyCode(first_string(data)?),
            b'h' => {
                let [name, value] = two_strings(data)?;
                Response::AddHeader(name, value)
            }
            b'i' | b'm' => {
                let index = be_u32(data, 0)?;
                let [name, value] = two_strings(&data[4..])?;
                match cmd {
                    b'i' => Response::InsertHeader(index, name, value),
                    _ => Response::ChangeHeader(index, name, value),
                }
            }
            b'b' => Response::ReplaceBody(data.to_vec()),
            b'+' | b'2' => Response::AddRecipient(first_string(data)?),
            b'-' => Response::DeleteRecipient(first_string(data)?),
            b'e' => Response::ChangeFrom(first_string(data)?),
            b'q' => Response::Quarantine(first_string(data)?),
            other => return Err(DecodeError(format!("unknown response {:?}", other as char))),
        };
        Ok(r)
    }
}

fn be_u32(data: &[u8], at: usize) -> Result<u32, DecodeError> {
    data.get(at..at + 4)
        .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
        .ok_or_else(|| DecodeError(format!("packet too short ({} bytes)", data.len())))
}

/// NUL-terminated strings; a missing final NUL is tolerated.
fn split_strings(data: &[u8]) -> Vec<String> {
    let data = data.strip_suffix(&[0]).unwrap_or(data);
    data.split(|&b| b == 0)
        .map(|s| String::from_utf8_lossy(s).into_owned())
        .collect()
}

fn first_string(data: &[u8]) -> Result<String, DecodeError> {
    Ok(split_strings(data).swap_remove(0))
}

fn two_strings(data: &[u8]) -> Result<[String; 2], DecodeError> {
    let mut parts = split_strings(data).into_iter();
    match (parts.next(), parts.next()) {
        (Some(a), Some(b)) => Ok([a, b]),
        _ => Err(DecodeError("expected a name and a value".into())),
    }
}

/// Writes one command.
pub async fn write_packet<S: AsyncWrite + Unpin>(stream: &mut S, command: &Command) -> std::io::Result<()> {
    stream.write_all(&command.encode()).await
}

/// Reads one packet: its command byte and data.
pub async fn read_packet<S: AsyncRead + Unpin>(stream: &mut S) -> std::io::Result<(u8, Vec<u8>)> {
    let len = stream.read_u32().await? as usize;
    if len == 0 || len > MAX_PACKET {
        let message = format!("bad packet length {len}");
        return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, message));
    }
    let mut packet = vec![0; len];
    stream.read_exact(&mut packet).await?;
    let data = packet.split_off(1);
    Ok((packet[0], data))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_encode() {
        let v4: std::net::IpAddr = "192.0.2.1".parse().unwrap();
        let table: Vec<(Command, &[u8])> = vec![
            (
                Command::OptNeg {
                    version: 6,
                    actions: 0x3f,
                    steps: 0x1f_ffff,
                },
                b"\0\0\0\x0dO\0\0\0\x06\0\0\0\x3f\0\x1f\xff\xff",
            ),
            (
                Command::Macros {
                    stage: b'C',
                    pairs: vec![("j".into(), "mx".into())],
                },
                b"\0\0\0\x07DCj\0mx\0",
            ),
            (
                Command::Connect {
                    hostname: "[192.0.2.1]".into(),
                    peer: Peer::Inet { port: 25, address: v4 },
                },
                b"\0\0\0\x1aC[192.0.2.1]\x004\0\x19192.0.2.1\0",
            ),
            (
                Command::Connect {
                    hostname: "h".into(),
                    peer: Peer::Unknown,
                },
                b"\0\0\0\x04Ch\0U",
            ),
            (Command::Helo("client".into()), b"\0\0\0\x08Hclient\0"),
            (
                Command::Mail(vec!["<a@b>".into(), "SIZE=5".into()]),
                b"\0\0\0\x0eM<a@b>\0SIZE=5\0",
            ),
            (Command::Rcpt(vec!["<c@d>".into()]), b"\0\0\0\x07R<c@d>\0"),
            (
                Command::Header("Subject".into(), " hi".into()),
                b"\0\0\0\x0dLSubject\0 hi\0",
            ),
            (Command::EndOfHeaders, b"\0\0\0\x01N"),
            (Command::Body(b"x\r\n".to_vec()), b"\0\0\0\x04Bx\r\n"),
            (Command::EndOfMessage, b"\0\0\0\x01E"),
            (Command::Quit, b"\0\0\0\x01Q"),
            (Command::Helo("a\0b".into()), b"\0\0\0\x04Hab\0"),
        ];
        for (command, wire) in table {
            assert_eq!(command.encode(), wire, "{command:?}");
        }
    }

    #[test]
    fn responses_decode() {
        let table: Vec<(u8, &[u8], Response)> = vec![
            (
                b'O',
                b"\0\0\0\x06\0\0\0\x01\0\x10\0\0\0\0\0\0",
                Response::OptNeg {
                    version: 6,
                    actions: 1,
                    steps: 0x100000,
                },
            ),
            (b'a', b"", Response::Accept),
            (b'c', b"", Response::Continue),
            (b'r', b"", Response::Reject),
            (b't', b"", Response::TempFail),
            (b'd', b"", Response::Discard),
            (b's', b"", Response::Skip),
            (b'p', b"", Response::Progress),
            (b'y', b"550 5.7.1 no\0", Response::ReplyCode("550 5.7.1 no".into())),
            (b'h', b"X-A\0 1\0", Response::AddHeader("X-A".into(), " 1".into())),
            (
                b'i',
                b"\0\0\0\x02X-B\x002\0",
                Response::InsertHeader(2, "X-B".into(), "2".into()),
            ),
            (
                b'm',
                b"\0\0\0\x01Subject\0\0",
                Response::ChangeHeader(1, "Subject".into(), String::new()),
            ),
            (b'b', b"new\r\n", Response::ReplaceBody(b"new\r\n".to_vec())),
            (b'+', b"<x@y>\0", Response::AddRecipient("<x@y>".into())),
            (b'2', b"<x@y>\0NOTIFY=NEVER\0", Response::AddRecipient("<x@y>".into())),
            (b'-', b"<x@y>\0", Response::DeleteRecipient("<x@y>".into())),
            (b'q', b"spam\0", Response::Quarantine("spam".into())),
        ];
        for (cmd, data, response) in table {
            assert_eq!(Response::decode(cmd, data), Ok(response), "{:?}", cmd as char);
        }
        assert!(Response::decode(b'O', b"\0\0\0\x06").is_err());
        assert!(Response::decode(b'm', b"\0\0").is_err());
        assert!(Response::decode(b'h', b"only-a-name\0").is_err());
        assert!(Response::decode(b'Z', b"").is_err());
    }

    #[tokio::test]
    async fn packets_frame_and_refuse_bad_lengths() {
        let mut wire: &[u8] = b"\0\0\0\x03h\0\0\0\0\0\x00";
        assert_eq!(read_packet(&mut wire).await.unwrap(), (b'h', b"\0\0".to_vec()));
        assert!(read_packet(&mut wire).await.is_err(), "zero length");
        let mut huge: &[u8] = b"\x7f\0\0\0c";
        assert!(read_packet(&mut huge).await.is_err());
    }
}
