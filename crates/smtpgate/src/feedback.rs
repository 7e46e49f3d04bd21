//! What the receivers tell us about our mail: every failure classified, hard bounces and
//! complaints suppressed, asynchronous bounces recognised and matched to the original message.
//!
//! - [`Feedback::failure`] is called by `queue/settle.rs` for every failed recipient: the failure
//!   gets a [`Category`] from the bounce rules, is counted per category, and a permanent failure
//!   in a hard category (bad mailbox, bad domain) puts the address on the suppression list.
//! - [`Feedback::complaint`] reads an ARF report (RFC 5965) sent to `complaints_address` and
//!   suppresses the recipients it names.
//! - [`Feedback::late_bounce`] reads a DSN (RFC 3464) that arrives after the fact, matches it to
//!   the message it reports on (by Message-ID, remembered at acceptance), and treats each failed
//!   recipient as [`Feedback::failure`] does.

use std::collections::{HashMap, VecDeque};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use crate::deliver::classify::{Category, Classification, Classifier};
use crate::envelope::QueueId;
use crate::report::{Complaint, Dsn};
use crate::route::reload::Reloading;
use crate::suppress::{Reason, SuppressionList};

/// How many accepted messages' Message-IDs are remembered to match late bounces.
const REMEMBERED: usize = 200_000;

pub struct Feedback {
    rules: Rules,
    pub suppression: Arc<SuppressionList>,
    state: Arc<State>,
    /// With `[redis]`: suppressions are shared with the other nodes.
    shared: Option<crate::shared::Shared>,
}

enum Rules {
    Defaults(Classifier),
    File(Reloading<Classifier>),
}

/// What survives a configuration reload.
#[derive(Default)]
pub struct State {
    /// Failures per category and class ("5" permanent, "4" temporary).
    counts: Mutex<HashMap<(Category, char), u64>>,
    recent: Mutex<Recent>,
}

/// Message-ID → (queue id, sender) of recently accepted messages, oldest dropped first.
#[derive(Default)]
struct Recent {
    by_id: HashMap<String, (QueueId, String)>,
    order: VecDeque<String>,
}

/// The message a late bounce was matched to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Matched {
    pub queue_id: QueueId,
    pub sender: String,
}

impl Feedback {
    /// The bounce rules in `rules_file` (checked now; reloaded when it changes) or the built-in
    /// ones, and the suppression list in `<spool>/suppression`. `state` carries counters and the
    /// remembered Message-IDs over from the previous configuration.
    pub fn new(
        rules_file: Option<PathBuf>,
        suppression: Arc<SuppressionList>,
        state: Option<Arc<State>>,
    ) -> Result<Feedback, String> {
        let rules = match rules_file {
            None => Rules::Defaults(Classifier::defaults()),
            Some(path) => Rules::File(Reloading::new(path, Classifier::load)?),
        };
        Ok(Feedback {
            rules,
            suppression,
            state: state.unwrap_or_default(),
            shared: None,
        })
    }

    /// Shares suppressions with the other nodes through Redis.
    pub fn with_shared(mut self, shared: Option<crate::shared::Shared>) -> Feedback {
        self.shared = shared;
        self
    }

    /// Applies the other nodes' suppressions to this node's list as they happen (and, first, every
    /// entry Redis holds). The task runs until aborted.
    pub fn follow_shared(&self) -> Option<tokio::task::JoinHandle<()>> {
        let shared = self.shared.as_ref()?;
        let list = self.suppression.clone();
        Some(shared.follow(move |change| match change {
            crate::shared::Change::Added(entry) => {
                if list.contains(&entry.address).is_none()
                    && let Err(e) = list.add(&entry.address, entry.reason, &entry.source)
                {
                    tracing::error!(address = %entry.address, error = %e, "cannot write a shared suppression");
                }
            }
            crate::shared::Change::Removed(address) => {
                if list.contains(&address).is_some()
                    && let Err(e) = list.remove(&address)
                {
                    tracing::error!(address, error = %e, "cannot remove a shared suppression");
                }
            }
        }))
    }

    /// Suppresses `address` here and, with Redis, on every node. `Ok(true)` when it is new here.
    pub fn add(&self, address: &str, reason: Reason, source: &str) -> std::io::Result<bool> {
        let new = self.suppression.add(address, reason, source)?;
        if let (Some(shared), Some(entry)) = (&self.shared, self.suppression.contains(address)) {
            let shared = shared.clone();
            tokio::spawn(async move {
                if let Err(e) = shared.suppress(&entry).await {
                    tracing::warn!(address = %entry.address, error = %e, "cannot share a suppression");
                }
            });
        }
        Ok(new)
    }

    /// Takes `address` off the list here and, with Redis, on every node.
    pub fn remove(&self, address: &str) -> std::io::Result<bool> {
        let removed = self.suppression.remove(address)?;
        if let Some(shared) = &self.shared {
            let (shared, address) = (shared.clone(), address.to_owned());
            tokio::spawn(async move {
                if let Err(e) = shared.unsuppress(&address).await {
                    tracing::warn!(address, error = %e, "cannot share a removal from the suppression list");
                }
            });
        }
        Ok(removed)
    }

    /// Opens the suppression list kept under the spool directory.
    pub fn open_suppression(spool_dir: &Path) -> std::io::Result<Arc<SuppressionList>> {
        SuppressionList::open(&spool_dir.join("suppression")).map(Arc::new)
    }

    pub fn state(&self) -> Arc<State> {
        self.state.clone()
    }

    /// Classifies a failure. `diagnostic` is a remote reply line (`550 5.1.1 text`) or a local
    /// error message.
    pub fn classify(&self, status: Option<&str>, diagnostic: &str) -> Classification {
        let code = reply_code(diagnostic);
        match &self.rules {
            Rules::Defaults(c) => c.classify(code, status, diagnostic),
            Rules::File(r) => r.get().classify(code, status, diagnostic),
        }
    }

    /// A failed delivery to `rcpt`: classified and counted; a permanent hard failure suppresses
    /// the address. Returns the classification (for the log).
    pub fn failure(&self, rcpt: &str, permanent: bool, status: &str, diagnostic: &str) -> Classification {
        let class = self.classify(Some(status), diagnostic);
        let kind = if permanent { '5' } else { '4' };
        *self
            .state
            .counts
            .lock()
            .unwrap()
            .entry((class.category, kind))
            .or_default() += 1;
        if permanent && class.category.is_hard() {
            self.suppress(rcpt, Reason::HardBounce, &format!("{}: {diagnostic}", class.category));
        }
        class
    }

    fn suppress(&self, address: &str, reason: Reason, source: &str) {
        match self.add(address, reason, source) {
            Ok(true) => tracing::info!(address, reason = ?reason, source, "address suppressed"),
            Ok(false) => {}
            Err(e) => tracing::error!(address, error = %e, "cannot write to the suppression list"),
        }
    }

    /// Remembers an accepted message's Message-ID, to match a bounce that comes back later.
    pub fn remember(&self, message: &[u8], id: QueueId, sender: &str) {
        let Some(message_id) = message_id(message) else { return };
        let mut recent = self.state.recent.lock().unwrap();
        if recent
            .by_id
            .insert(message_id.clone(), (id, sender.to_owned()))
            .is_none()
        {
            recent.order.push_back(message_id);
        }
        while recent.order.len() > REMEMBERED {
            if let Some(old) = recent.order.pop_front() {
                recent.by_id.remove(&old);
            }
        }
    }

    /// A complaint report: every recipient it names is suppressed. Returns how many it named.
    pub fn complaint(&self, message: &[u8]) -> Option<Complaint> {
        let complaint = crate::report::parse_complaint(message)?;
        for rcpt in &complaint.recipients {
            let source = format!(
                "complaint ({}) from {}",
                complaint.feedback_type,
                complaint.source_ip.as_deref().unwrap_or("?")
            );
            self.suppress(rcpt, Reason::Complaint, &source);
        }
        tracing::info!(
            feedback_type = %complaint.feedback_type, recipients = ?complaint.recipients,
            original = complaint.original_message_id.as_deref().unwrap_or("-"), "complaint received"
        );
        Some(complaint)
    }

    /// A delivery report that arrived after the fact (a DSN to the null sender's mail): matched
    /// to the original message when its Message-ID is remembered; every failed recipient is
    /// classified (and suppressed when hard).
    pub fn late_bounce(&self, message: &[u8]) -> Option<(Dsn, Option<Matched>)> {
        let dsn = crate::report::parse_dsn(message)?;
        let matched = dsn.original_message_id.as_ref().and_then(|id| {
            let recent = self.state.recent.lock().unwrap();
            recent.by_id.get(id).map(|(queue_id, sender)| Matched {
                queue_id: *queue_id,
                sender: sender.clone(),
            })
        });
        for r in dsn.recipients.iter().filter(|r| r.action == "failed") {
            let diagnostic = r.diagnostic.clone().unwrap_or_else(|| format!("status {}", r.status));
            let class = self.failure(&r.recipient, r.status.starts_with('5'), &r.status, &diagnostic);
            tracing::info!(
                recipient = %r.recipient, status = %r.status, category = %class.category, rule = %class.rule,
                reporting_mta = dsn.reporting_mta.as_deref().unwrap_or("-"),
                original_queue_id = %matched.as_ref().map_or("-".to_string(), |m| m.queue_id.to_string()),
                "asynchronous bounce"
            );
        }
        Some((dsn, matched))
    }

    /// `smtpgate_failures_total{category, class}` in the Prometheus text format.
    pub fn render(&self) -> String {
        let counts = self.state.counts.lock().unwrap();
        let name = "smtpgate_failures_total";
        let mut out = format!(
            "# HELP {name} failed delivery attempts by bounce category; class 5 permanent, 4 temporary\n# TYPE {name} counter\n"
        );
        for category in Category::ALL {
            for class in ['5', '4'] {
                let n = counts.get(&(category, class)).copied().unwrap_or(0);
                let _ = writeln!(out, "{name}{{category=\"{category}\",class=\"{class}\"}} {n}");
            }
        }
        let _ = writeln!(
            out,
            "# HELP smtpgate_suppressed_addresses addresses on the suppression list\n# TYPE smtpgate_suppressed_addresses gauge\nsmtpgate_suppressed_addresses {}",
            self.suppression.len()
        );
        out
    }
}

/// The reply code a diagnostic starts with (`550 5.1.1 ...`, `421-...`); `None` for local errors.
pub fn reply_code(diagnostic: &str) -> Option<u16> {
    let b = diagnostic.as_bytes();
    let digits = b.get(..3)?;
    let sep = b.get(3).copied();
    (digits.iter().all(u8::is_ascii_digit)
        && matches!(sep, None | Some(b' ') | Some(b'-'))
        && (b'2'..=b'5').contains(&b[0]))
    .then(|| diagnostic[..3].parse().ok())
    .flatten()
}

/// The Message-ID of a message (without angle brackets), from its header section.
fn message_id(message: &[u8]) -> Option<String> {
    let (headers, _) = crate::route::parse_headers(message);
    let value = headers
        .iter()
        .find(|(name, _)| name.eq_ignore_ascii_case("message-id"))
        .map(|(_, v)| v.trim())?;
    let id = value.trim_start_matches('<').trim_end_matches('>').trim();
    (!id.is_empty()).then(|| id.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn feedback(dir: &Path) -> Feedback {
        Feedback::new(None, Feedback::open_suppression(dir).unwrap(), None).unwrap()
    }

    #[test]
    fn reply_codes_are_read_only_from_replies() {
        assert_eq!(reply_code("550 5.1.1 no such user"), Some(550));
        assert_eq!(reply_code("421-4.7.0 try later"), Some(421));
        assert_eq!(reply_code("451"), Some(451));
        assert_eq!(reply_code("connection to mx failed: refused"), None);
        assert_eq!(reply_code("12345 not a reply"), None);
        assert_eq!(reply_code("999 odd"), None);
    }

    #[test]
    fn a_permanent_hard_bounce_suppresses_and_a_soft_one_does_not() {
        let dir = tempfile::tempdir().unwrap();
        let f = feedback(dir.path());
        let hard = f.failure(
            "Gone@Example.ORG",
            true,
            "5.1.1",
            "550 5.1.1 <gone@example.org>: User unknown",
        );
        assert_eq!(hard.category, Category::BadMailbox);
        let entry = f.suppression.contains("gone@example.org").expect("suppressed");
        assert_eq!(entry.reason, Reason::HardBounce);
        assert!(entry.source.contains("User unknown"), "{entry:?}");
        // Temporary, or not about the address: not suppressed.
        f.failure("busy@example.org", false, "4.2.2", "452 4.2.2 Mailbox full");
        f.failure("spam@example.org", true, "5.7.1", "550 5.7.1 Message rejected as spam");
        assert_eq!(f.suppression.len(), 1);
        let metrics = f.render();
        assert!(
            metrics.contains("smtpgate_failures_total{category=\"bad_mailbox\",class=\"5\"} 1"),
            "{metrics}"
        );
        assert!(
            metrics.contains("smtpgate_failures_total{category=\"mailbox_full\",class=\"4\"} 1"),
            "{metrics}"
        );
        assert!(metrics.contains("smtpgate_suppressed_addresses 1"), "{metrics}");
    }

    #[test]
    fn message_ids_are_remembered_without_brackets() {
        assert_eq!(
            message_id(b"Subject: x\r\nMessage-ID:  <a.b@c>\r\n\r\nbody"),
            Some("a.b@c".into())
        );
        assert_eq!(message_id(b"Subject: x\r\n\r\nMessage-ID: <in@body>\r\n"), None);
    }
}
