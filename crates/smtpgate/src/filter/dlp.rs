//! `kind = "dlp"`: data-loss prevention. Finds payment card numbers, IBANs, national ID numbers,
//! custom patterns and words in what a message says, and refuses, quarantines or tags it.
//!
//! ```toml
//! [[filter]]
//! name = "dlp"
//! kind = "dlp"
//! detect = ["card", "iban", "us_ssn"]       # also "uk_nino", "de_tax_id"
//! patterns = ["(?i)project\\s+falcon"]       # custom regexes
//! words = ["confidential", "internal only"]  # case-insensitive, whole words, any whitespace
//! threshold = 1                              # hits needed to act (default 1)
//! action = "reject"                          # "reject" | "quarantine" | "tag" | "route"
//! tag = "dlp"                                # the tag for "tag" and "route" (default "dlp")
//! scan_limit = "10MB"                        # only this much of the message is read (default)
//! ```
//!
//! What is scanned: the text header fields (Subject, From, To, ...), every `text/*` part decoded
//! (base64, quoted-printable, charsets) including text attachments, HTML with its tags removed,
//! and nested messages; not binary attachments (see [`super::content::text`]).
//!
//! A hit is a distinct value per rule: the same card number in the text and the HTML version of
//! a message counts once, and so does a word however often it appears. The filter acts when the
//! hits of all rules together reach `threshold`.
//!
//! Actions: `reject` answers `550 5.7.0` ([`Reply::dlp_rejected`]); `quarantine` keeps the
//! message aside with the rule names as the reason; `tag` adds `tag` and accepts. `route` does
//! the same as `tag`, and says the intent: a route rule sends tagged mail somewhere safe, e.g. a
//! pool that requires TLS (the route must exist; this filter cannot check that):
//!
//! ```toml
//! [[pool]]
//! name = "secure"
//! servers = ["10.0.0.5:25"]
//! tls = "required"
//!
//! [[route]]
//! when = { tag = "dlp" }
//! pool = "secure"
//! ```
//!
//! Privacy invariant: matched data is never logged, put in a reply, a quarantine reason or a
//! tag, and is not kept after the scan; a hit is reported as its rule name and a count
//! ([`Hit`]). The log line is `dlp hit` with `rule` and `count` (and the pipeline's filter name).

mod detectors;
#[cfg(test)]
mod tests;

use std::collections::HashSet;
use std::path::Path;
use std::sync::Arc;

use mail_parser::MessageParser;
use regex::Regex;
use serde::Deserialize;
use smtpgate_proto::Reply;

use self::detectors::Detector;
use super::content::text;
use super::options::{BuildErrors, options};
use super::{BoxFuture, Filter, FilterError, MessageInfo, Modification, Verdict};
use crate::config::values::parse_size;

const DEFAULT_SCAN_LIMIT: u64 = 10 << 20;

#[derive(Debug, Deserialize)]
struct Options {
    #[serde(default)]
    detect: Vec<String>,
    #[serde(default)]
    patterns: Vec<String>,
    #[serde(default)]
    words: Vec<String>,
    threshold: Option<usize>,
    action: Option<String>,
    tag: Option<String>,
    scan_limit: Option<String>,
}

/// What to do when the threshold is reached.
#[derive(Debug, Clone, PartialEq, Eq)]
enum DlpAction {
    Reject,
    Quarantine,
    /// Add the tag and accept.
    Tag(String),
    /// Add the tag and accept; a route rule on the tag does the rest.
    Route(String),
}

/// One rule: a built-in detector, a custom pattern or a word.
#[derive(Debug)]
enum Rule {
    Detector(Detector),
    /// `name` is `pattern[i]`: the index, not the regex, so the log stays short.
    Pattern {
        name: String,
        regex: Regex,
    },
    /// `name` is `word:<the configured word>`.
    Word {
        name: String,
        regex: Regex,
    },
}

/// A rule that matched and how many distinct values it matched. By construction it holds no
/// matched data, so it is safe to log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hit {
    pub rule: String,
    pub count: usize,
}

#[derive(Debug)]
pub struct Dlp {
    rules: Vec<Rule>,
    threshold: usize,
    action: DlpAction,
    scan_limit: usize,
}

pub fn build(raw: toml::Table, _base_dir: &Path) -> Result<Arc<dyn Filter>, BuildErrors> {
    Ok(Arc::new(from_options(raw)?))
}

fn from_options(raw: toml::Table) -> Result<Dlp, BuildErrors> {
    let o: Options = options(raw)?;
    let mut errors = BuildErrors::new();
    let mut rules = Vec::new();
    for (i, name) in o.detect.iter().enumerate() {
        match Detector::named(name) {
            Some(d) => rules.push(Rule::Detector(d)),
            None => errors.push((
                format!("detect[{i}]"),
                format!("{name:?} is not a detector (one of {})", detectors::NAMES.join(", ")),
            )),
        }
    }
    for (i, p) in o.patterns.iter().enumerate() {
        match Regex::new(p) {
            Ok(regex) => rules.push(Rule::Pattern {
                name: format!("pattern[{i}]"),
                regex,
            }),
            Err(e) => errors.push((format!("patterns[{i}]"), e.to_string())),
        }
    }
    for (i, w) in o.words.iter().enumerate() {
        match word_regex(w) {
            Some(regex) => rules.push(Rule::Word {
                name: format!("word:{}", w.trim()),
                regex,
            }),
            None => errors.push((format!("words[{i}]"), "must not be empty".to_owned())),
        }
    }
    if rules.is_empty() && errors.is_empty() {
        errors.push((
            String::new(),
            "needs at least one of detect, patterns, words".to_owned(),
        ));
    }
    let threshold = o.threshold.unwrap_or(1);
    if threshold == 0 {
        errors.push(("threshold".to_owned(), "must be at least 1".to_owned()));
    }
    let action = parse_action(
        o.action.as_deref(),
        o.tag.unwrap_or_else(|| "dlp".to_owned()),
        &mut errors,
    );
    let scan_limit = match o.scan_limit.as_deref().map(parse_size) {
        None => DEFAULT_SCAN_LIMIT,
        Some(Ok(n)) => n,
        Some(Err(e)) => {
            errors.push(("scan_limit".to_owned(), e.to_string()));
            DEFAULT_SCAN_LIMIT
        }
    };
    if !errors.is_empty() {
        return Err(errors);
    }
    Ok(Dlp {
        rules,
        threshold,
        action,
        scan_limit: usize::try_from(scan_limit).unwrap_or(usize::MAX),
    })
}

fn parse_action(raw: Option<&str>, tag: String, errors: &mut BuildErrors) -> DlpAction {
    match raw {
        None | Some("reject") => DlpAction::Reject,
        Some("quarantine") => DlpAction::Quarantine,
        Some("tag") => DlpAction::Tag(tag),
        Some("route") => DlpAction::Route(tag),
        Some(other) => {
            let message = format!("{other:?} is not one of \"reject\", \"quarantine\", \"tag\", \"route\"");
            errors.push(("action".to_owned(), message));
            DlpAction::Reject
        }
    }
}

/// `internal only` → `(?i)\binternal\s+only\b`; `\b` only next to word characters, so that
/// `c++` still matches.
fn word_regex(word: &str) -> Option<Regex> {
    let parts: Vec<String> = word.split_whitespace().map(regex::escape).collect();
    let first = word.trim().chars().next()?;
    let last = word.trim().chars().last()?;
    let edge = |c: char| if c.is_alphanumeric() || c == '_' { r"\b" } else { "" };
    let pattern = format!("(?i){}{}{}", edge(first), parts.join(r"\s+"), edge(last));
    Regex::new(&pattern).ok()
}

impl Rule {
    fn name(&self) -> &str {
        match self {
            Rule::Detector(d) => d.name,
            Rule::Pattern { name, .. } | Rule::Word { name, .. } => name,
        }
    }

    /// Adds the normalized value of each match in `text` to `seen`.
    fn collect(&self, text: &str, seen: &mut HashSet<String>) {
        match self {
            Rule::Detector(d) => seen.extend(d.find(text)),
            Rule::Pattern { regex, .. } | Rule::Word { regex, .. } => {
                seen.extend(regex.find_iter(text).map(|m| m.as_str().to_lowercase()));
            }
        }
    }
}

impl Filter for Dlp {
    fn data<'a>(&'a self, m: &'a MessageInfo<'a>) -> BoxFuture<'a, Result<Verdict, FilterError>> {
        Box::pin(async move { Ok(self.judge(m.message)) })
    }
}

impl Dlp {
    /// Scans, logs each hit (rule and count only) and decides.
    fn judge(&self, message: &[u8]) -> Verdict {
        let hits = self.scan(message);
        for h in &hits {
            tracing::info!(kind = "dlp", rule = %h.rule, count = h.count, "dlp hit");
        }
        let total: usize = hits.iter().map(|h| h.count).sum();
        if total < self.threshold {
            return Verdict::accept();
        }
        match &self.action {
            DlpAction::Reject => Verdict::reject(Reply::dlp_rejected()),
            DlpAction::Quarantine => Verdict::quarantine(quarantine_reason(&hits)),
            DlpAction::Tag(t) | DlpAction::Route(t) => Verdict::accept().with(Modification::Tag(t.clone())),
        }
    }

    /// The rules that matched, in configuration order.
    pub fn scan(&self, message: &[u8]) -> Vec<Hit> {
        let end = message.len().min(self.scan_limit);
        if end < message.len() {
            tracing::info!(kind = "dlp", scanned = end, size = message.len(), "dlp scan limited");
        }
        let Some(msg) = MessageParser::new().parse(&message[..end]) else {
            return Vec::new();
        };
        let texts = text::collect(&msg, self.scan_limit);
        let mut hits = Vec::new();
        for rule in &self.rules {
            let mut seen = HashSet::new();
            texts.iter().for_each(|t| rule.collect(&t.text, &mut seen));
            if !seen.is_empty() {
                hits.push(Hit {
                    rule: rule.name().to_owned(),
                    count: seen.len(),
                });
            }
        }
        hits
    }
}

/// `dlp: card=2, iban=1`.
fn quarantine_reason(hits: &[Hit]) -> String {
    let parts: Vec<String> = hits.iter().map(|h| format!("{}={}", h.rule, h.count)).collect();
    format!("dlp: {}", parts.join(", "))
}
