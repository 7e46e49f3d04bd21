//! Shared harness for smtpgate's end-to-end tests.
//!
//! Every e2e test file says `mod support;` and composes a scenario from these pieces:
//!
//! - [`Sink`]: Postfix's `smtp-sink` on a free loopback port, one dump file per message.
//! - [`Upstream`]: a scriptable SMTP server whose behaviour is chosen per recipient local part
//!   (`tempfail-rcpt@`, `reject-data@`, `disconnect-data@`, `slow@`, ...).
//! - [`Gate`]: the `smtpgate` binary as a child process, started from a TOML config
//!   ([`GateConfig`] writes the usual one), with its addresses read from its start-up lines.
//! - [`Clamd`]: a real clamd knowing one test signature ([`VIRUS_MARKER`]).
//! - DKIM and ARC ([`KeyPair`], [`dkimpy`]): keys from `openssl`, filters run directly, dkimpy as verifier.
//! - Real clients: [`smtplib`] (Python), [`swaks`], [`smtp_source`] (Postfix).
//! - [`TestCa`], [`ServerCert`]: certificates made with rcgen for TLS, MTA-STS and DANE tests.
//! - [`wait_until`]: every wait is on a condition, with a deadline.
//!
//! Everything talks to 127.0.0.1 only and binds port 0 (or a port the OS just handed out).
#![allow(dead_code, unused_imports)]

pub mod admin_http;
mod browser;
pub use browser::{CHROMIUM, dashboard_scripts, run_dashboard};
mod ca;
pub use ca::{ServerCert, TestCa, pem, sha256};
mod clamd;
pub use clamd::{CLAMD_START, Clamd, Daemon, VIRUS_MARKER, VIRUS_NAME, free_port, running_as_root};
mod clients;
mod dkim;
pub use dkim::*;
mod dns;
pub use dns::{DnsQuery, DnsServer, DnsTable};
mod durability;
pub use durability::*;
mod gate;
pub mod http;
mod mail;
mod redis;
pub use redis::RedisServer;
mod reload;
pub use reload::{OutputMark, RELOAD_DEADLINE, Reloaded};
mod sink;
mod tls;
pub use tls::*;
mod upstream;
mod wait;

pub use clients::{PyTranscript, smtp_source, smtplib, smtplib_send, smtplib_send_many, swaks};
pub use gate::{Gate, GateConfig, admin_token, admin_token_file, http_get, mx_gate_toml};
pub use mail::{ARF, Header, header_values, headers, message};
pub use sink::{Sink, SinkFailure};
pub use upstream::{AuthAttempt, Recipient, Upstream, UpstreamMessage};
pub use wait::{run_with_deadline, wait_until};

use std::time::Duration;

/// Deadline for things that should happen at once on an idle machine (a relay hop, a reply).
pub const SOON: Duration = Duration::from_secs(20);
