//! # smtpgate: an SMTP preprocessor and relay
//!
//! The path of a message through the crate, module by module:
//!
//! 1. [`server`] accepts a connection (caps, implicit TLS) and hands it to a [`session`];
//! 2. [`session`] speaks ESMTP (one file per verb), enforces relay control and limits, and receives
//!    the body with `smtpgate_proto`'s strict DATA/BDAT receivers;
//! 3. [`queue::Queue::accept`] writes the message to the [`spool`] (group commit) and only then lets
//!    the session answer `250`;
//! 4. [`queue`] splits the recipients by next hop ([`route`]) and runs connection workers;
//! 5. [`deliver`] connects to the pool or the MX, sends, and turns replies into outcomes; failures
//!    become DSN bounces, temporary ones retries.
//!
//! Configuration ([`config`]) is loaded and checked whole before anything starts.
#![forbid(unsafe_code)]

pub mod address;
pub mod budget;
pub mod config;
pub mod context;
pub mod datetime;
pub mod deliver;
pub mod envelope;
pub mod events;
pub mod feedback;
pub mod files;
pub mod filter;
pub mod intake;
pub mod io;
pub mod issues;
pub mod message;
pub mod metrics;
pub mod quarantine;
pub mod queue;
pub mod rate;
pub mod reloading;
pub mod reply;
pub mod report;
pub mod route;
pub mod sent;
pub mod server;
pub mod session;
pub mod shaping;
pub mod shared;
pub mod spool;
pub mod stats;
pub mod suppress;
#[cfg(feature = "fuzzing")]
pub mod testing;
pub mod tls;
pub mod upstream;
pub mod webhook;

pub use config::Config;
pub use server::Server;
