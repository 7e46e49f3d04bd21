//! What the receivers tell us about our mail: every failure classified, hard bounces and
//! complaints suppressed, asynchronous bounces recognised and matched to the original message.
//!
//! - [`Feedback::failure`] is called by `queue/settle.rs` for every failed recipient: the failure
//!   gets a [`Category`] from the bounce rules, is counted per category, and a permanent failure
//!   in a hard category (bad mailbox, bad domain) puts the address on the suppression list.
//! - [`Feedback::complaint`] reads an ARF report (RFC 5965) sent to `complaints_address` and
//!   suppresses the recipients it names.
//! - [`Feedback::late_bounce`] reads a DSN (RFC 3464) that arrives after the fact and treats each
//!   failed recipient as [`Feedback::failure`] does.
//!
//! A report is believed only for a recipient that smtpgate relayed the reported message to: its
//! original `Message-ID` (from the returned headers) must be in the log of sent mail
//! ([`crate::sent`]) with that recipient. Anything else is logged, counted
//! (`smtpgate_reports_total{result="unmatched"}`) and changes nothing, so a forged report cannot
//! suppress an address. Reports are read off the runtime's threads, at most
//! `reports_per_minute` per client address and `report_max_recipients` recipients each.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::net::IpAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};

use crate::config::SuppressionConfig;
use crate::envelope::QueueId;
use crate::rate::KeyedRate;
use crate::reloading::{Loaded, Reloading};
use crate::reply::classify::{Category, Classification, Classified, Classifier};
use crate::reply::upstream::Upstream;
use crate::report::{Complaint, Dsn};
use crate::sent::SentLog;
use crate::suppress::{Reason, SuppressionList};

/// How many client addresses the per-client report limit tracks at once.
const REPORT_CLIENTS: usize = 10_000;

pub struct Feedback {
    rules: Rules,
    pub suppression: Arc<SuppressionList>,
    state: Arc<State>,
    /// With `[redis]`: suppressions are shared with the other nodes.
    shared: Option<crate::shared::Shared>,
    /// What smtpgate relayed, to match reports against.
    pub sent: Arc<SentLog>,
    /// Reports read per client address.
    report_rate: KeyedRate,
    report_max_recipients: usize,
}

/// What came of one report's recipient (or of the whole report), as counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ReportResult {
    /// The recipient was relayed the reported message: acted on.
    Matched,
    /// Nothing smtpgate sent matches: ignored.
    Unmatched,
    /// Over the per-client limit or the per-report recipient limit: not read.
    Limited,
}

impl ReportResult {
    fn as_str(self) -> &'static str {
        match self {
            ReportResult::Matched => "matched",
            ReportResult::Unmatched => "unmatched",
            ReportResult::Limited => "limited",
        }
    }
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
    /// Report recipients by kind (`bounce`, `complaint`) and result.
    reports: Mutex<HashMap<(&'static str, ReportResult), u64>>,
}

impl Feedback {
    /// The bounce rules the configuration loaded (reloaded when the file changes) or the built-in
    /// ones, the suppression list in `<spool>/suppression`, and the log of sent mail. `state`
    /// carries counters over from the previous configuration.
    pub fn new(
        rules_file: Option<Loaded<Classifier>>,
        suppression: Arc<SuppressionList>,
        sent: Arc<SentLog>,
        config: &SuppressionConfig,
        state: Option<Arc<State>>,
    ) -> Feedback {
        let rules = match rules_file {
            None => Rules::Defaults(Classifier::defaults()),
            Some(loaded) => Rules::File(Reloading::from_loaded(loaded, Classifier::load)),
        };
        Feedback {
            rules,
            suppression,
            state: state.unwrap_or_default(),
            shared: None,
            sent,
            report_rate: KeyedRate::per_minute(config.reports_per_minute, REPORT_CLIENTS),
            report_max_recipients: config.report_max_recipients,
        }
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

    /// Classifies a failed reply with the bounce rules in force.
    pub fn classify(&self, reply: &Upstream) -> Classification {
        match &self.rules {
            Rules::Defaults(c) => c.reply(reply),
            Rules::File(r) => r.get().reply(reply),
        }
    }

    /// Classifies a failure known only as text: a late bounce's `Diagnostic-Code` (a remote reply
    /// line such as `550 5.1.1 text`, or some MTA's own words).
    fn classify_text(&self, status: &str, diagnostic: &str) -> Classification {
        let code = reply_code(diagnostic);
        match &self.rules {
            Rules::Defaults(c) => c.classify(code, Some(status), diagnostic),
            Rules::File(r) => r.get().classify(code, Some(status), diagnostic),
        }
    }

    /// A failed delivery to `rcpt`, classified where the delivery's outcome was had: counted; a
    /// permanent hard failure suppresses the address.
    pub fn failure(&self, rcpt: &str, permanent: bool, failed: &Classified) {
        self.count_failure(permanent, &failed.class);
        if permanent && failed.class.category.is_hard() {
            let source = format!("{}: {}", failed.class.category, failed.reply.line());
            self.suppress(rcpt, Reason::HardBounce, &source);
        }
    }

    /// Counts a classified failure.
    fn count_failure(&self, permanent: bool, class: &Classification) {
        let kind = if permanent { '5' } else { '4' };
        *self
            .state
            .counts
            .lock()
            .unwrap()
            .entry((class.category, kind))
            .or_default() += 1;
    }

    fn suppress(&self, address: &str, reason: Reason, source: &str) {
        match self.add(address, reason, source) {
            Ok(true) => tracing::info!(address, reason = ?reason, source, "address suppressed"),
            Ok(false) => {}
            Err(e) => tracing::error!(address, error = %e, "cannot write to the suppression list"),
        }
    }

    /// Records that a message was relayed to `recipients`, to match a report that comes back
    /// later by its Message-ID (intake's parsed view has it; a message without one cannot be
    /// matched).
    pub fn record_sent(&self, message_id: Option<&str>, queue_id: QueueId, recipients: &[String]) {
        if let Some(message_id) = message_id {
            self.sent.record(message_id, &queue_id.to_string(), recipients);
        }
    }

    fn count_report(&self, kind: &'static str, result: ReportResult, n: u64) {
        if n > 0 {
            *self.state.reports.lock().unwrap().entry((kind, result)).or_default() += n;
        }
    }

    /// Whether a report from `client` may be read now (per-client limit).
    fn admit_report(&self, kind: &'static str, client: Option<IpAddr>) -> bool {
        let key = client.map_or_else(|| "-".to_string(), |c| c.to_string());
        if self.report_rate.admit(&key) {
            return true;
        }
        self.count_report(kind, ReportResult::Limited, 1);
        tracing::warn!(client = %key, kind, "report not read: too many reports from this client");
        false
    }

    /// The recipients of a report about `message_id` that smtpgate relayed that message to,
    /// at most `report_max_recipients` of them; the others are counted and logged.
    async fn matched<'r>(&self, kind: &'static str, message_id: Option<&str>, named: Vec<&'r str>) -> Vec<&'r str> {
        let over = named.len().saturating_sub(self.report_max_recipients);
        self.count_report(kind, ReportResult::Limited, over as u64);
        let mut matched = Vec::new();
        for rcpt in named.into_iter().take(self.report_max_recipients) {
            let found = match message_id {
                Some(id) => self.sent.was_sent(id, rcpt).await,
                None => false,
            };
            if found {
                matched.push(rcpt);
            } else {
                tracing::warn!(
                    kind,
                    recipient = rcpt,
                    original = message_id.unwrap_or("-"),
                    "report ignored for a recipient smtpgate did not send that message to"
                );
            }
        }
        self.count_report(kind, ReportResult::Matched, matched.len() as u64);
        matched
    }

    /// Suppresses addresses off the runtime's threads, in one batch.
    async fn suppress_batch(self: &Arc<Self>, batch: Vec<(String, Reason, String)>) {
        if batch.is_empty() {
            return;
        }
        let me = self.clone();
        let _ = tokio::task::spawn_blocking(move || {
            for (address, reason, source) in batch {
                me.suppress(&address, reason, &source);
            }
        })
        .await;
    }

    /// A complaint report (ARF, RFC 5965) from `client`: every recipient it names that smtpgate
    /// relayed the reported message to is suppressed. The report, with those recipients (the
    /// ones it is believed about); `None` when it is not a complaint report.
    pub async fn complaint(
        self: &Arc<Self>,
        message: Vec<u8>,
        client: Option<IpAddr>,
    ) -> Option<(Complaint, Vec<String>)> {
        const KIND: &str = "complaint";
        if !self.admit_report(KIND, client) {
            return None;
        }
        let complaint = tokio::task::spawn_blocking(move || crate::report::parse_complaint(&message))
            .await
            .ok()
            .flatten()?;
        let named: Vec<&str> = complaint.recipients.iter().map(String::as_str).collect();
        let total = named.len();
        let matched = self
            .matched(KIND, complaint.original_message_id.as_deref(), named)
            .await;
        self.count_report(
            KIND,
            ReportResult::Unmatched,
            (total.min(self.report_max_recipients) - matched.len()) as u64,
        );
        let source = format!(
            "complaint ({}) from {}",
            complaint.feedback_type,
            complaint.source_ip.as_deref().unwrap_or("?")
        );
        let matched: Vec<String> = matched.iter().map(|r| r.to_string()).collect();
        let batch = matched
            .iter()
            .map(|r| (r.clone(), Reason::Complaint, source.clone()))
            .collect();
        tracing::info!(
            feedback_type = %complaint.feedback_type, recipients = ?complaint.recipients, matched = ?matched,
            original = complaint.original_message_id.as_deref().unwrap_or("-"), "complaint received"
        );
        self.suppress_batch(batch).await;
        Some((complaint, matched))
    }

    /// A delivery report that arrived after the fact (a DSN, mail from the null sender) from
    /// `client`: every failed recipient that smtpgate relayed the reported message to is
    /// classified and counted, and suppressed when the failure is permanent and hard.
    pub async fn late_bounce(self: &Arc<Self>, message: Vec<u8>, client: Option<IpAddr>) -> Option<Dsn> {
        const KIND: &str = "bounce";
        if !self.admit_report(KIND, client) {
            return None;
        }
        let dsn = tokio::task::spawn_blocking(move || crate::report::parse_dsn(&message))
            .await
            .ok()
            .flatten()?;
        let failed: Vec<&crate::report::DsnRecipient> =
            dsn.recipients.iter().filter(|r| r.action == "failed").collect();
        let named: Vec<&str> = failed.iter().map(|r| r.recipient.as_str()).collect();
        let total = named.len();
        let matched = self.matched(KIND, dsn.original_message_id.as_deref(), named).await;
        self.count_report(
            KIND,
            ReportResult::Unmatched,
            (total.min(self.report_max_recipients) - matched.len()) as u64,
        );
        let original_queue_id = dsn
            .original_message_id
            .as_deref()
            .and_then(|id| self.sent.queue_id(id))
            .unwrap_or_else(|| "-".into());
        let mut batch = Vec::new();
        for r in failed.iter().filter(|r| matched.contains(&r.recipient.as_str())) {
            let diagnostic = r.diagnostic.clone().unwrap_or_else(|| format!("status {}", r.status));
            let permanent = r.status.starts_with('5');
            let class = self.classify_text(&r.status, &diagnostic);
            self.count_failure(permanent, &class);
            if permanent && class.category.is_hard() {
                batch.push((
                    r.recipient.clone(),
                    Reason::HardBounce,
                    format!("{}: {diagnostic}", class.category),
                ));
            }
            tracing::info!(
                recipient = %r.recipient, status = %r.status, category = %class.category, rule = %class.rule,
                reporting_mta = dsn.reporting_mta.as_deref().unwrap_or("-"),
                original = dsn.original_message_id.as_deref().unwrap_or("-"),
                original_queue_id = %original_queue_id,
                "asynchronous bounce"
            );
        }
        self.suppress_batch(batch).await;
        Some(dsn)
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
        let reports = self.state.reports.lock().unwrap();
        let name = "smtpgate_reports_total";
        let _ = writeln!(
            out,
            "# HELP {name} recipients of bounce and complaint reports received as mail, by whether they matched mail smtpgate sent\n# TYPE {name} counter"
        );
        for kind in ["bounce", "complaint"] {
            for result in [ReportResult::Matched, ReportResult::Unmatched, ReportResult::Limited] {
                let n = reports.get(&(kind, result)).copied().unwrap_or(0);
                let _ = writeln!(out, "{name}{{kind=\"{kind}\",result=\"{}\"}} {n}", result.as_str());
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

/// The reply code a late bounce's diagnostic starts with (`550 5.1.1 ...`, `421-...`); `None`
/// for an MTA's own words. Deliveries carry their code typed ([`Upstream`]); only text from a
/// report is read this way.
fn reply_code(diagnostic: &str) -> Option<u16> {
    let b = diagnostic.as_bytes();
    let digits = b.get(..3)?;
    let sep = b.get(3).copied();
    (digits.iter().all(u8::is_ascii_digit)
        && matches!(sep, None | Some(b' ') | Some(b'-'))
        && (b'2'..=b'5').contains(&b[0]))
    .then(|| diagnostic[..3].parse().ok())
    .flatten()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn feedback(dir: &Path) -> Feedback {
        let sent = SentLog::open(dir, std::time::Duration::from_secs(3600), None).unwrap();
        let config = crate::config::Config::builtin().suppression.clone();
        Feedback::new(None, Feedback::open_suppression(dir).unwrap(), sent, &config, None)
    }

    /// A server's reply to RCPT (`line` as sent), classified as the queue worker does, then
    /// handed to [`Feedback::failure`] as settling does.
    fn failure(f: &Feedback, rcpt: &str, permanent: bool, line: &str) -> Classification {
        let wire = format!("{line}\r\n");
        let parsed = smtpgate_proto::parse_reply(wire.as_bytes()).unwrap().unwrap().0;
        let reply = Upstream::parsed(&parsed, crate::reply::Command::Rcpt, "mx.example.org:25");
        let failed = Classified {
            class: f.classify(&reply),
            reply,
        };
        f.failure(rcpt, permanent, &failed);
        failed.class
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
        let hard = failure(
            &f,
            "Gone@Example.ORG",
            true,
            "550 5.1.1 <gone@example.org>: User unknown",
        );
        assert_eq!(hard.category, Category::BadMailbox);
        let entry = f.suppression.contains("gone@example.org").expect("suppressed");
        assert_eq!(entry.reason, Reason::HardBounce);
        assert!(entry.source.contains("User unknown"), "{entry:?}");
        // Temporary, or not about the address: not suppressed.
        failure(&f, "busy@example.org", false, "452 4.2.2 Mailbox full");
        failure(&f, "spam@example.org", true, "550 5.7.1 Message rejected as spam");
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
}
