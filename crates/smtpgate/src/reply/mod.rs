//! Replies from upstream servers, as the rest of the gate sees them: typed replies (or the gate's
//! own failures) and their classification into bounce categories. Pure data and functions: no I/O but reading a rules file, nothing of the
//! running server.

pub mod classify;
pub mod upstream;

pub use classify::{Category, Classification, Classified, Classifier};
pub use upstream::{Command, EnhancedStatus, Origin, Upstream};
