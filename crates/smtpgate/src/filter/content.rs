//! `kind = "content"`: content rules and MIME limits.
//!
//! ```toml
//! [[filter]]
//! name = "content"
//! kind = "content"
//! header_rules = [{ header = "Subject", regex = "viagra", action = "reject" }]
//! body_rules = [{ regex = "(?i)wire transfer urgently", action = "quarantine" }]
//! block_attachments = [".exe", "js", "*.vbs"]  # extensions (any form) or name globs, also inside zips
//! block_types = ["application/x-msdownload"]               # media type globs
//! max_mime_depth = 10        # nesting of multiparts and message/rfc822 parts
//! max_parts = 200
//! max_zip_entries = 1000     # all entries of an archive, nested archives included
//! max_zip_size = "1GB"       # claimed uncompressed size of an archive, nested ones included
//! max_zip_depth = 3          # zips inside zips opened (stored ones only: nothing is inflated)
//! action = "reject"          # for attachment, type and limit hits, and rules without one
//! tag = "content"            # the tag for action = "tag"
//! ```
//!
//! `block_attachments` entries are matched against the file name alone (after the last `/` or
//! `\`), ignoring case: an extension in any of the usual forms (`.exe`, `exe`, `*.exe`) blocks
//! every name ending in it, anything else with a dot or a wildcard is a glob (`*` any run, `?` one
//! character). An entry that could never match (empty, or holding a path separator) is refused
//! when the configuration is loaded ([`attachments::name_glob`]).
//!
//! Actions: `reject` (550 5.7.1, or 554 5.6.0 for MIME limits), `quarantine`, `discard`, `tag`
//! (adds the rule's `tag` or the filter's, then accepts). When several things match, the most
//! severe action wins: reject, then quarantine, then discard, then tag; every tag is added.
//!
//! Order: a cheap line scan checks depth and part count first ([`mime_limits`]); only a message
//! within the limits is parsed. Header rules match the decoded value of every field of that name;
//! body rules match the decoded text of each `text/*` part (HTML without tags), nested messages
//! included. Zip archives are read from their central directory only ([`zip`]).

mod attachments;
pub(super) mod mime_limits;
#[cfg(test)]
mod tests;
pub(super) mod text;
pub(super) mod zip;

use std::path::Path;
use std::sync::Arc;

use mail_parser::{Message, MessageParser};
use regex::Regex;
use serde::Deserialize;
use smtpgate_proto::Reply;

use self::attachments::{Blocklist, Finding, name_glob};
use self::mime_limits::Structure;
use self::zip::ZipLimits;
use super::options::{BuildErrors, options};
use super::{Action, BoxFuture, Filter, FilterError, MessageInfo, Modification, Verdict};
use crate::config::values::parse_size;

#[derive(Debug, Deserialize)]
struct Options {
    #[serde(default)]
    header_rules: Vec<RawHeaderRule>,
    #[serde(default)]
    body_rules: Vec<RawBodyRule>,
    #[serde(default)]
    block_attachments: Vec<String>,
    #[serde(default)]
    block_types: Vec<String>,
    #[serde(default = "default_depth")]
    max_mime_depth: usize,
    #[serde(default = "default_parts")]
    max_parts: usize,
    #[serde(default = "default_zip_entries")]
    max_zip_entries: usize,
    max_zip_size: Option<String>,
    #[serde(default = "default_zip_depth")]
    max_zip_depth: usize,
    action: Option<String>,
    tag: Option<String>,
}

fn default_depth() -> usize {
    10
}
fn default_parts() -> usize {
    200
}
fn default_zip_entries() -> usize {
    1000
}
fn default_zip_depth() -> usize {
    3
}
const DEFAULT_ZIP_SIZE: u64 = 1 << 30;

#[derive(Debug, Deserialize)]
struct RawHeaderRule {
    header: String,
    regex: String,
    action: Option<String>,
    tag: Option<String>,
}

#[derive(Debug, Deserialize)]
struct RawBodyRule {
    regex: String,
    action: Option<String>,
    tag: Option<String>,
}

/// What a hit does. Ordered by severity: the greatest wins.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum RuleAction {
    Tag(String),
    Discard,
    Quarantine,
    Reject,
}

#[derive(Debug)]
struct HeaderRule {
    header: String,
    regex: Regex,
    action: RuleAction,
}

#[derive(Debug)]
struct BodyRule {
    regex: Regex,
    action: RuleAction,
}

#[derive(Debug)]
pub struct Content {
    header_rules: Vec<HeaderRule>,
    body_rules: Vec<BodyRule>,
    blocklist: Blocklist,
    max_depth: usize,
    max_parts: usize,
    /// For attachment, type and limit hits.
    action: RuleAction,
}

pub fn build(raw: toml::Table, _base_dir: &Path) -> Result<Arc<dyn Filter>, BuildErrors> {
    Ok(Arc::new(from_options(raw)?))
}

fn from_options(raw: toml::Table) -> Result<Content, BuildErrors> {
    let o: Options = options(raw)?;
    let mut errors = BuildErrors::new();
    let tag = o.tag.as_deref().unwrap_or("content");
    let fallback = RuleAction::Reject;
    let action = rule_action(o.action.as_deref(), None, &fallback, tag, "action", &mut errors);
    let mut header_rules = Vec::new();
    for (i, r) in o.header_rules.iter().enumerate() {
        let key = |f: &str| format!("header_rules[{i}].{f}");
        let regex = compile(&r.regex, key("regex"), &mut errors);
        let rule_action = rule_action(
            r.action.as_deref(),
            r.tag.as_deref(),
            &action,
            tag,
            &key("action"),
            &mut errors,
        );
        if let Some(regex) = regex {
            header_rules.push(HeaderRule {
                header: r.header.clone(),
                regex,
                action: rule_action,
            });
        }
    }
    let mut body_rules = Vec::new();
    for (i, r) in o.body_rules.iter().enumerate() {
        let key = |f: &str| format!("body_rules[{i}].{f}");
        let regex = compile(&r.regex, key("regex"), &mut errors);
        let rule_action = rule_action(
            r.action.as_deref(),
            r.tag.as_deref(),
            &action,
            tag,
            &key("action"),
            &mut errors,
        );
        if let Some(regex) = regex {
            body_rules.push(BodyRule {
                regex,
                action: rule_action,
            });
        }
    }
    let max_zip_size = match o.max_zip_size.as_deref().map(parse_size) {
        None => DEFAULT_ZIP_SIZE,
        Some(Ok(n)) => n,
        Some(Err(e)) => {
            errors.push(("max_zip_size".to_owned(), e.to_string()));
            DEFAULT_ZIP_SIZE
        }
    };
    let mut names = Vec::new();
    for (i, entry) in o.block_attachments.iter().enumerate() {
        match name_glob(entry) {
            Ok(glob) => names.push(glob),
            Err(e) => errors.push((format!("block_attachments[{i}]"), e.to_string())),
        }
    }
    for (key, value) in [("max_mime_depth", o.max_mime_depth), ("max_parts", o.max_parts)] {
        if value == 0 {
            errors.push((key.to_owned(), "must be at least 1".to_owned()));
        }
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    let lower = |v: &[String]| v.iter().map(|s| s.to_lowercase()).collect();
    Ok(Content {
        header_rules,
        body_rules,
        blocklist: Blocklist {
            names,
            types: lower(&o.block_types),
            zip: ZipLimits {
                max_entries: o.max_zip_entries,
                max_uncompressed: max_zip_size,
                max_depth: o.max_zip_depth.max(1),
            },
        },
        max_depth: o.max_mime_depth,
        max_parts: o.max_parts,
        action,
    })
}

/// A rule's action: its own, or the filter's when it has none. `tag` actions take the rule's
/// tag, else the filter's.
fn rule_action(
    raw: Option<&str>,
    rule_tag: Option<&str>,
    default: &RuleAction,
    filter_tag: &str,
    key: &str,
    errors: &mut BuildErrors,
) -> RuleAction {
    let tag = || RuleAction::Tag(rule_tag.unwrap_or(filter_tag).to_owned());
    match raw {
        None if matches!(default, RuleAction::Tag(_)) => tag(),
        None => default.clone(),
        Some("reject") => RuleAction::Reject,
        Some("quarantine") => RuleAction::Quarantine,
        Some("discard") => RuleAction::Discard,
        Some("tag") => tag(),
        Some(other) => {
            errors.push((
                key.to_owned(),
                format!("{other:?} is not one of \"reject\", \"quarantine\", \"discard\", \"tag\""),
            ));
            default.clone()
        }
    }
}

fn compile(pattern: &str, key: String, errors: &mut BuildErrors) -> Option<Regex> {
    Regex::new(pattern).map_err(|e| errors.push((key, e.to_string()))).ok()
}

/// One thing that matched: what (for the log and the quarantine reason) and what it asks for.
#[derive(Debug)]
struct Hit {
    what: String,
    action: RuleAction,
    reply: Reply,
}

impl Filter for Content {
    fn data<'a>(&'a self, m: &'a MessageInfo<'a>) -> BoxFuture<'a, Result<Verdict, FilterError>> {
        Box::pin(async move { Ok(self.judge(m.message)) })
    }
}

impl Content {
    /// The verdict on a whole message.
    fn judge(&self, message: &[u8]) -> Verdict {
        let hits = self.hits(message);
        for h in &hits {
            tracing::info!(kind = "content", hit = %h.what, action = ?h.action, "content rule matched");
        }
        verdict(hits)
    }

    fn hits(&self, message: &[u8]) -> Vec<Hit> {
        match mime_limits::scan(message, self.max_depth, self.max_parts) {
            Structure::Within { .. } => {}
            over => return vec![self.limit_hit(format!("MIME structure: {over:?}"))],
        }
        let Some(msg) = MessageParser::new().parse(message) else {
            return Vec::new();
        };
        let mut hits = self.header_hits(&msg);
        hits.extend(self.blocklist.check(&msg).map(|f| self.attachment_hit(f)));
        hits.extend(self.body_hits(&msg));
        hits
    }

    fn limit_hit(&self, what: String) -> Hit {
        Hit {
            what,
            action: self.action.clone(),
            reply: Reply::mime_structure_rejected(),
        }
    }

    fn attachment_hit(&self, f: Finding) -> Hit {
        let reason = match &f {
            Finding::Name(_) | Finding::ArchivedName(_) => "attachment type not allowed",
            Finding::Type(_) => "content type not allowed",
            Finding::ArchiveTooManyEntries | Finding::ArchiveTooLarge => "archive exceeds limits",
        };
        Hit {
            what: format!("attachment: {f:?}"),
            action: self.action.clone(),
            reply: Reply::content_rejected(reason),
        }
    }

    fn header_hits(&self, msg: &Message<'_>) -> Vec<Hit> {
        let Some(root) = msg.parts.first() else {
            return Vec::new();
        };
        let mut hits = Vec::new();
        for (i, rule) in self.header_rules.iter().enumerate() {
            let mut fields = root
                .headers
                .iter()
                .filter(|h| h.name.as_str().eq_ignore_ascii_case(&rule.header));
            if fields.any(|h| rule.regex.is_match(&text::header_text(msg, h))) {
                hits.push(Hit {
                    what: format!("header_rules[{i}] ({})", rule.header),
                    action: rule.action.clone(),
                    reply: Reply::content_rejected("header rule"),
                });
            }
        }
        hits
    }

    fn body_hits(&self, msg: &Message<'_>) -> Vec<Hit> {
        if self.body_rules.is_empty() {
            return Vec::new();
        }
        let texts = text::collect(msg, usize::MAX);
        let bodies: Vec<&str> = texts
            .iter()
            .filter(|t| t.origin == text::Origin::Body)
            .map(|t| &*t.text)
            .collect();
        let matching = self.body_rules.iter().enumerate();
        let matching = matching.filter(|(_, r)| bodies.iter().any(|b| r.regex.is_match(b)));
        matching
            .map(|(i, r)| Hit {
                what: format!("body_rules[{i}]"),
                action: r.action.clone(),
                reply: Reply::content_rejected("body rule"),
            })
            .collect()
    }
}

/// The most severe hit decides; every tag is added.
fn verdict(hits: Vec<Hit>) -> Verdict {
    let mut v = Verdict::accept();
    for h in &hits {
        if let RuleAction::Tag(t) = &h.action
            && !v.modifications.contains(&Modification::Tag(t.clone()))
        {
            v = v.with(Modification::Tag(t.clone()));
        }
    }
    let Some(worst) = hits.into_iter().min_by(|a, b| b.action.cmp(&a.action)) else {
        return v;
    };
    v.action = match worst.action {
        RuleAction::Reject => Action::Reject(worst.reply),
        RuleAction::Quarantine => Action::Quarantine(format!("content: {}", worst.what)),
        RuleAction::Discard => Action::Discard,
        RuleAction::Tag(_) => Action::Accept,
    };
    v
}
