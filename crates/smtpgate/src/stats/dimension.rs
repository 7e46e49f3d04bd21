//! What counts can be broken down by. Adding a dimension: a variant here (with its name in
//! [`Dimension::ALL`]), and where an event carries its value in `event.rs` (`observe`).

use serde::{Deserialize, Serialize};

/// A way to break counts down: each has one value per event (or per recipient).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Dimension {
    /// The recipient's domain (lowercased).
    Domain,
    /// The MX rollup name the delivery went to, when the event names one.
    Mx,
    Route,
    Pool,
    Stream,
    Listener,
    /// The sender's domain (empty for the null sender).
    SenderDomain,
}

impl Dimension {
    /// Every dimension, in the order they are listed.
    pub const ALL: [Dimension; 7] = [
        Dimension::Domain,
        Dimension::Mx,
        Dimension::Route,
        Dimension::Pool,
        Dimension::Stream,
        Dimension::Listener,
        Dimension::SenderDomain,
    ];

    /// The name used by the API, the command line and the stats file.
    pub fn name(self) -> &'static str {
        match self {
            Dimension::Domain => "domain",
            Dimension::Mx => "mx",
            Dimension::Route => "route",
            Dimension::Pool => "pool",
            Dimension::Stream => "stream",
            Dimension::Listener => "listener",
            Dimension::SenderDomain => "sender_domain",
        }
    }

    /// The dimension named `text` (as [`Dimension::name`] spells it).
    pub fn parse(text: &str) -> Option<Dimension> {
        Dimension::ALL.into_iter().find(|d| d.name() == text)
    }
}
