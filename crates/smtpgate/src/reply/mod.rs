//! Replies from upstream servers, as the rest of the gate sees them: their classification into
//! bounce categories. Pure data and functions: no I/O but reading a rules file, nothing of the
//! running server.

pub mod classify;

pub use classify::{Category, Classification, Classifier};
