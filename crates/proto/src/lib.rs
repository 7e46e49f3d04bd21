//! # smtpgate-proto: the SMTP protocol, without I/O
//!
//! This crate is responsible for everything smtpgate needs to *speak* SMTP
//! (RFC 5321 and the extensions listed in `RFCS.md`) and nothing else:
//!
//! - [`line`]: framing command lines out of a byte buffer, with the 512-octet limit;
//! - [`command`] and [`address`]: parsing command lines, paths and ESMTP parameters;
//! - [`reply`]: the one catalogue of every reply the server sends;
//! - [`data`]: the DATA and BDAT body receivers (dot-unstuffing, strict
//!   `<CR><LF>.<CR><LF>` end-of-data, bare CR/LF policy, size limits);
//! - [`stuff`]: dot-stuffing a stored body for sending;
//! - [`client`]: parsing replies and EHLO capabilities when smtpgate is the client;
//! - [`xtext`]: RFC 3461 xtext.
//!
//! **The crate does no I/O**: it has no sockets, no files, no clocks, no async runtime and no
//! dependencies. Every function works on byte slices handed in by the caller, so every piece can be
//! tested with tables and fuzzed.
//!
//! ```
//! use smtpgate_proto::{parse_command, Command, LineFramer, Framed, Reply};
//!
//! let mut framer = LineFramer::new(512);
//! let buf = b"MAIL FROM:<alice@example.com> SIZE=1000\r\nRCPT";
//! let Framed::Line { len, consumed } = framer.next(buf) else { panic!() };
//! assert_eq!(consumed, len + 2);
//! match parse_command(&buf[..len]) {
//!     Ok(Command::Mail { from, params }) => {
//!         assert_eq!(from.to_string(), "alice@example.com");
//!         assert_eq!(params.size, Some(1000));
//!     }
//!     other => panic!("{other:?}"),
//! }
//! let mut out = Vec::new();
//! Reply::sender_ok().write_to(&mut out);
//! assert_eq!(out, b"250 2.1.0 sender OK\r\n");
//! ```
#![forbid(unsafe_code)]

pub mod address;
pub mod client;
pub mod command;
pub mod data;
pub mod line;
pub mod reply;
pub mod stuff;
pub mod xtext;

pub use address::{Domain, ForwardPath, Mailbox, ReversePath};
pub use client::{Capabilities, ParsedReply, ReplyError, parse_reply};
pub use command::{Body, Command, CommandError, MailParams, Notify, RcptParams, Ret, parse_command};
pub use data::{BareEol, BdatReceiver, DataOutcome, DataReceiver, Nul};
pub use line::{Framed, LineFramer};
pub use reply::Reply;
pub use stuff::{DotStuffer, dot_stuff};
