//! The policy pipeline: filters that look at a session or a message and give a verdict.
//!
//! A filter implements [`Filter`]: one defaulted hook per phase of the session (connect, EHLO,
//! MAIL, RCPT, end of data). Filters are configured as `[[filter]]` blocks and attached to a
//! listener (run on the whole message, before routing) or to a route (run on that route's copy).
//! Each runs `before_queue` (the client waits for the verdict: cheap checks) or `after_queue`
//! (after the `250`, before the first delivery attempt: heavy scans; what fails is quarantined or
//! bounced, and a slow scanner never holds a sender's session open).
//!
//! Architecture invariant: a filter never does I/O on the session's stream and never sees a
//! message before it is complete; what it may change is returned as [`Modification`]s, applied by
//! the pipeline in order, so the next filter sees the changed message.

mod arc;
mod auth;
mod clamav;
mod connection;
mod content;
mod dkim;
mod dlp;
mod milter;
mod options;
pub mod pipeline;
mod ratelimit;
pub mod registry;
mod rspamd;
mod sanitize;

#[cfg(test)]
mod tests;

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use smtpgate_proto::Reply;

use crate::config::{Config, ConfigError, FilterConfig, Issues, OnError, Stage};
use crate::envelope::{Address, Sender};

/// A boxed future, for trait methods that filters implement with `Box::pin(async move { .. })`.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

pub use crate::envelope::SessionInfo;

/// A configured filter, built: its settings from the configuration and the filter itself.
#[derive(Debug, Clone)]
pub struct Handle {
    pub name: String,
    pub kind: String,
    pub stage: Stage,
    pub timeout: Duration,
    pub on_error: OnError,
    pub filter: Arc<dyn Filter>,
}

/// Every configured filter, built once per configuration (at start and at each reload), found
/// by name.
#[derive(Debug, Default)]
pub struct Filters {
    all: Vec<Handle>,
}

impl Filters {
    /// Builds every `[[filter]]` by its kind. Every mistake in any filter's options is reported,
    /// each under its key (`filter[2].keys`), as the configuration's other mistakes are.
    pub fn build(config: &Config) -> Result<Filters, ConfigError> {
        let mut issues = Issues::default();
        let filters = Filters::check(config, &mut issues);
        issues.finish(filters)
    }

    /// Builds every filter whose options are right, recording the mistakes of the others in
    /// the configuration's collector (so `check-config` lists them with every other mistake).
    pub fn check(config: &Config, issues: &mut Issues) -> Filters {
        let mut all = Vec::with_capacity(config.filters.len());
        for f in &config.filters {
            match registry::build(&f.kind, f.options.clone(), &f.base_dir) {
                Ok(filter) => all.push(Handle::new(f, filter)),
                Err(problems) => {
                    for (field, message) in problems {
                        let field = if field.is_empty() { "kind" } else { field.as_str() };
                        issues.push(format!("filter[{}].{field}", f.index), message);
                    }
                }
            }
        }
        Filters { all }
    }

    /// Filters built outside a configuration (tests).
    pub fn from_handles(all: Vec<Handle>) -> Filters {
        Filters { all }
    }

    pub fn get(&self, name: &str) -> Option<&Handle> {
        self.all.iter().find(|f| f.name == name)
    }

    /// The named filters in the order named, or the first name that no filter has (a reload
    /// removed it: whatever was to run it must wait, never go on without it).
    pub fn resolve(&self, names: &[String]) -> Result<Vec<&Handle>, String> {
        names.iter().map(|n| self.get(n).ok_or_else(|| n.clone())).collect()
    }

    /// The named filters in the order named, leaving out unknown names: for lists the
    /// configuration itself checked against its `[[filter]]`s (a listener's, a route's).
    pub fn named(&self, names: &[String]) -> Vec<&Handle> {
        names.iter().filter_map(|n| self.get(n)).collect()
    }
}

impl Handle {
    fn new(f: &FilterConfig, filter: Arc<dyn Filter>) -> Handle {
        Handle {
            name: f.name.clone(),
            kind: f.kind.clone(),
            stage: f.stage,
            timeout: f.timeout,
            on_error: f.on_error,
            filter,
        }
    }
}

/// The names of the filters after the one named `by` (where a quarantined message resumes).
pub fn names_after(filters: &[&Handle], by: &str) -> Vec<String> {
    let at = filters
        .iter()
        .position(|f| f.name == by)
        .map_or(filters.len(), |i| i + 1);
    filters[at..].iter().map(|f| f.name.clone()).collect()
}

/// A complete message as a filter sees it at the end of data.
#[derive(Debug, Clone)]
pub struct MessageInfo<'a> {
    pub session: &'a SessionInfo,
    pub sender: &'a Sender,
    pub recipients: &'a [Address],
    /// The whole message: header section, empty line, body; CRLF line endings.
    pub message: &'a [u8],
    pub tags: &'a [String],
}

/// What to do with the message (or, in the earlier hooks, the command).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    Accept,
    /// Refuse for good (5xx).
    Reject(Reply),
    /// Refuse for now (4xx); the client will try again.
    TempFail(Reply),
    /// Keep it aside in the quarantine; the sender is told it was accepted.
    Quarantine(String),
    /// Accept and drop silently.
    Discard,
}

/// A change a filter asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Modification {
    /// Adds a header field at the top of the header section (after the trace header).
    AddHeader(String, String),
    /// Removes every field of this name.
    RemoveHeader(String),
    /// Replaces the whole message (header and body), e.g. with a footer added.
    ReplaceMessage(Vec<u8>),
    AddRecipient(String),
    RemoveRecipient(String),
    /// A tag that routing rules can match (`when = { tag = "..." }`).
    Tag(String),
    /// The filter did not check the message (a scanner's size limit, or the filter failed and
    /// its `on_error` accepts), and why. The pipeline never lets that pass silently: it adds an
    /// `X-Smtpgate-Unchecked:` header naming the filter, logs it and counts it
    /// (`smtpgate_filter_unchecked_total`).
    Unchecked(String),
}

/// A filter's answer: an action plus modifications.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    pub action: Action,
    pub modifications: Vec<Modification>,
}

impl Verdict {
    pub fn accept() -> Verdict {
        Verdict {
            action: Action::Accept,
            modifications: Vec::new(),
        }
    }

    pub fn with(mut self, m: Modification) -> Verdict {
        self.modifications.push(m);
        self
    }

    pub fn reject(reply: Reply) -> Verdict {
        Verdict {
            action: Action::Reject(reply),
            modifications: Vec::new(),
        }
    }

    pub fn tempfail(reply: Reply) -> Verdict {
        Verdict {
            action: Action::TempFail(reply),
            modifications: Vec::new(),
        }
    }

    pub fn quarantine(reason: impl Into<String>) -> Verdict {
        Verdict {
            action: Action::Quarantine(reason.into()),
            modifications: Vec::new(),
        }
    }
}

/// Why a filter could not give a verdict (the pipeline then applies the filter's `on_error`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FilterError(pub String);

impl fmt::Display for FilterError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// One policy check. Every hook is optional; the defaults accept.
///
/// Contract: a hook returns `Ok(verdict)` when it reached a decision, `Err` when it could not (a
/// scanner down, a DNS timeout); the pipeline turns an `Err` or a timeout into the configured
/// fail-open or fail-closed answer. Hooks must not panic and should finish well within the
/// filter's timeout.
pub trait Filter: Send + Sync + fmt::Debug {
    /// After the TCP connection, before the greeting.
    fn connect<'a>(&'a self, _s: &'a SessionInfo) -> BoxFuture<'a, Result<Verdict, FilterError>> {
        Box::pin(async { Ok(Verdict::accept()) })
    }

    /// After EHLO or HELO (`s.helo` is set).
    fn ehlo<'a>(&'a self, _s: &'a SessionInfo) -> BoxFuture<'a, Result<Verdict, FilterError>> {
        Box::pin(async { Ok(Verdict::accept()) })
    }

    /// After MAIL FROM.
    fn mail<'a>(&'a self, _s: &'a SessionInfo, _sender: &'a Sender) -> BoxFuture<'a, Result<Verdict, FilterError>> {
        Box::pin(async { Ok(Verdict::accept()) })
    }

    /// After each RCPT TO.
    fn rcpt<'a>(
        &'a self,
        _s: &'a SessionInfo,
        _sender: &'a Sender,
        _rcpt: &'a Address,
    ) -> BoxFuture<'a, Result<Verdict, FilterError>> {
        Box::pin(async { Ok(Verdict::accept()) })
    }

    /// The whole message, at the end of data (before the queue) or before delivery (after it).
    fn data<'a>(&'a self, _m: &'a MessageInfo<'a>) -> BoxFuture<'a, Result<Verdict, FilterError>> {
        Box::pin(async { Ok(Verdict::accept()) })
    }
}
