//! Choosing the next hop of each recipient.

use std::fmt;

use crate::config::Config;
use crate::envelope::Recipient;

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

/// The first route decides; a route without a pool, or no route at all, means delivery by MX.
pub fn next_hop(config: &Config, rcpt: &Recipient) -> NextHop {
    match config.routes.first().and_then(|r| r.action.clone()) {
        Some(crate::config::RouteAction::Pool(pool)) => NextHop::Pool(pool),
        _ => NextHop::Mx(rcpt.domain()),
    }
}
