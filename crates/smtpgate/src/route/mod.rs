//! Routing: where each recipient of a message goes, decided once when the message is received.
//!
//! For every recipient, in order: aliases expand it ([`aliases`]), the recipient's Sieve script may
//! redirect, copy, discard or reject ([`sieve`]), then the `[[route]]` rules are tried in order and
//! the first deciding rule chooses a pool, MX delivery, a rejection, a discard or a redirect
//! ([`rules`]). Recipients that end up with the same pool and the same header changes share one
//! copy of the message ([`plan`]). The same code answers `smtpgate route test`.
//!
//! Architecture invariant: the plan is computed before the `250`; what is spooled is already
//! routed (the pool is stored with the message), so a reload never reroutes queued mail.

pub mod aliases;
pub mod dryrun;
mod lists;
mod message;
mod plan;
pub use crate::reloading as reload;
mod rules;
mod sieve;
pub mod srs;

#[cfg(test)]
mod tests;

use std::fmt;
use std::sync::Arc;

pub use message::MessageView;
pub use plan::{Group, Plan, Router};

use crate::envelope::{Envelope, Recipient};

/// Where a recipient's mail goes next.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum NextHop {
    /// A configured pool of upstream servers, by name.
    Pool(String),
    /// The mail servers of a domain, found by MX lookup.
    Mx(String),
}

impl fmt::Display for NextHop {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NextHop::Pool(p) => write!(f, "pool:{p}"),
            NextHop::Mx(d) => write!(f, "mx:{d}"),
        }
    }
}

/// The next hop of a spooled recipient: the message's pool, or the recipient domain's MX.
pub fn next_hop(env: &Envelope, rcpt: &Recipient) -> NextHop {
    match &env.pool {
        Some(pool) => NextHop::Pool(pool.clone()),
        None => NextHop::Mx(rcpt.domain()),
    }
}

/// A shared router.
pub type SharedRouter = Arc<Router>;
