//! Bounce classification: gives every failed delivery a [`Category`] from an ordered list of rules.
//!
//! The rules come from the administrator's file (if any), then from the built-in defaults
//! (`classify_defaults.toml`, which covers the big mailbox providers and RFC 3463 enhanced status
//! codes). The first rule whose conditions all hold wins. The format:
//!
//! ```toml
//! [[rule]]
//! category = "spam_block"          # one of Category::as_str
//! provider = "gmail"               # optional label, shown in Classification::rule
//! code = [550, 554]                # optional: reply codes, or a class such as "5xx"
//! status = ["5.7.1", "5.7.26"]     # optional: enhanced status codes; "5.7." is a prefix
//! text = "(?i)unsolicited|spam"    # optional: a regex matched against the text
//! ```
//!
//! A rule needs at least one condition. Rules are numbered from 1 in logs; a mistake names its
//! file and the rule's key, counted from 0 as in every configuration file (`rule[1].code` is the
//! second rule's `code`), and every mistake of the file is reported at once.
//! Pure: no I/O except [`Classifier::load`] reading its file.

use std::fmt;
use std::path::Path;
use std::str::FromStr;

use regex::Regex;
use serde::Deserialize;

use super::upstream::Upstream;
use crate::issues::{ConfigError, ConfigIssue, Issues, ValueError};

const DEFAULTS: &str = include_str!("classify_defaults.toml");

/// What went wrong with a delivery, as far as the sender needs to know.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Category {
    /// The mailbox does not exist, or is disabled.
    BadMailbox,
    /// The domain does not exist or does not accept mail (null MX).
    BadDomain,
    /// The mailbox is over quota.
    MailboxFull,
    /// Refused for reputation: block lists, content judged to be spam.
    SpamBlock,
    /// Refused by the receiver's policy: relaying, content, size, reverse DNS and the like.
    Policy,
    /// Deferred for sending too much or too fast (including greylisting).
    RateLimited,
    /// SPF, DKIM or DMARC failures, or SMTP AUTH credentials refused.
    Authentication,
    /// STARTTLS unavailable or failed, certificate problems.
    Tls,
    /// The next hop could not be looked up.
    Dns,
    /// The next hop could not be reached or the connection broke.
    Network,
    /// Nothing more specific applies.
    Other,
}

impl Category {
    /// Every category, in declaration order.
    pub const ALL: [Category; 11] = [
        Category::BadMailbox,
        Category::BadDomain,
        Category::MailboxFull,
        Category::SpamBlock,
        Category::Policy,
        Category::RateLimited,
        Category::Authentication,
        Category::Tls,
        Category::Dns,
        Category::Network,
        Category::Other,
    ];

    /// The name used in rules files, logs and metrics, e.g. `"bad_mailbox"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Category::BadMailbox => "bad_mailbox",
            Category::BadDomain => "bad_domain",
            Category::MailboxFull => "mailbox_full",
            Category::SpamBlock => "spam_block",
            Category::Policy => "policy",
            Category::RateLimited => "rate_limited",
            Category::Authentication => "authentication",
            Category::Tls => "tls",
            Category::Dns => "dns",
            Category::Network => "network",
            Category::Other => "other",
        }
    }

    /// Whether the address itself is bad ([`BadMailbox`](Category::BadMailbox) or
    /// [`BadDomain`](Category::BadDomain)), so that it should be suppressed. Says nothing about
    /// whether this particular failure was permanent: a 4xx reply can be classified too.
    pub fn is_hard(self) -> bool {
        matches!(self, Category::BadMailbox | Category::BadDomain)
    }
}

impl FromStr for Category {
    type Err = ValueError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Category::ALL.into_iter().find(|c| c.as_str() == s).ok_or_else(|| {
            let names: Vec<_> = Category::ALL.iter().map(|c| c.as_str()).collect();
            ValueError::new(format!("unknown category {s:?} (expected one of {})", names.join(", ")))
        })
    }
}

impl fmt::Display for Category {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a failure was classified as, and by which rule (for logs): e.g. "defaults rule 12 (gmail)"
/// or "rules.toml rule 3".
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Classification {
    /// The category of the first matching rule, or [`Category::Other`].
    pub category: Category,
    /// `"<origin> rule <n>"`, with ` (<provider>)` when the rule has one; `"no rule matched (...)"`
    /// when none did.
    pub rule: String,
}

/// A reply with its classification, computed once where the delivery's outcome is known and
/// carried as it is to settling, bounces, feedback, adaptive shaping and logs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Classified {
    pub reply: Upstream,
    pub class: Classification,
}

/// Compiled classification rules, the administrator's first, then the built-in defaults.
#[derive(Debug, Clone)]
pub struct Classifier {
    rules: Vec<Rule>,
}

impl Classifier {
    /// Only the built-in defaults.
    pub fn defaults() -> Classifier {
        let rules = compile(DEFAULTS, "defaults").expect("the built-in classification rules are valid");
        Classifier { rules }
    }

    /// The administrator's rules file first (first match wins), then the built-in defaults.
    /// Every mistake names the file and the rule's key (`rule[2].code`).
    pub fn load(path: &Path) -> Result<Classifier, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigIssue::new("", e.to_string()).in_file(path))?;
        Classifier::parse(&text, &path.display().to_string())
    }

    /// As [`load`](Classifier::load), from text; `origin` names it as the file of every mistake
    /// and in [`Classification::rule`].
    pub fn parse(text: &str, origin: &str) -> Result<Classifier, ConfigError> {
        let mut rules = compile(text, origin)?;
        rules.extend(Classifier::defaults().rules);
        Ok(Classifier { rules })
    }

    /// Classifies one failed reply: a server's code (never the gate's own for a local failure),
    /// the status a DSN gives it (the reply's, else `X.0.0` of its class) and its line as logged.
    pub fn reply(&self, reply: &Upstream) -> Classification {
        self.classify(reply.remote_code(), Some(&reply.dsn_status()), &reply.line())
    }

    /// Classifies one failure. `code`: the SMTP reply code when the failure came from a remote
    /// reply (None for local failures such as connection refused or DNS errors); `status`: the
    /// enhanced status code ("5.1.1") when known, else taken from the start of `text` if it has
    /// one ("550-5.1.1 ..."); `text`: the reply text or the local diagnostic.
    pub fn classify(&self, code: Option<u16>, status: Option<&str>, text: &str) -> Classification {
        let status = status
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .or_else(|| status_in_text(text));
        match self.rules.iter().find(|r| r.matches(code, status, text)) {
            Some(rule) => Classification {
                category: rule.category,
                rule: rule.name.clone(),
            },
            None => Classification {
                category: Category::Other,
                rule: format!("no rule matched ({})", failure_class(code, status)),
            },
        }
    }
}

/// One compiled rule; empty lists and `None` are conditions that always hold.
#[derive(Debug, Clone)]
struct Rule {
    category: Category,
    name: String,
    codes: Vec<CodeMatch>,
    statuses: Vec<StatusMatch>,
    text: Option<Regex>,
}

impl Rule {
    fn matches(&self, code: Option<u16>, status: Option<&str>, text: &str) -> bool {
        (self.codes.is_empty() || code.is_some_and(|c| self.codes.iter().any(|m| m.matches(c))))
            && (self.statuses.is_empty() || status.is_some_and(|s| self.statuses.iter().any(|m| m.matches(s))))
            && self.text.as_ref().is_none_or(|re| re.is_match(text))
    }
}

#[derive(Debug, Clone, Copy)]
enum CodeMatch {
    /// One reply code, e.g. 550.
    Exact(u16),
    /// A class: the first digit, e.g. 5 for "5xx".
    Class(u16),
}

impl CodeMatch {
    fn matches(self, code: u16) -> bool {
        match self {
            CodeMatch::Exact(c) => c == code,
            CodeMatch::Class(d) => code / 100 == d,
        }
    }
}

#[derive(Debug, Clone)]
enum StatusMatch {
    /// "5.7.1" matches 5.7.1 only.
    Exact(String),
    /// "5.7." matches 5.7.anything.
    Prefix(String),
}

impl StatusMatch {
    fn parse(s: &str) -> Option<StatusMatch> {
        let (body, prefix) = s.strip_suffix('.').map_or((s, false), |b| (b, true));
        let parts: Vec<&str> = body.split('.').collect();
        let digits = |p: &&str| (1..=3).contains(&p.len()) && p.bytes().all(|b| b.is_ascii_digit());
        let ok = matches!(parts[0], "2" | "4" | "5")
            && parts[1..].iter().all(digits)
            && if prefix { parts.len() <= 2 } else { parts.len() == 3 };
        ok.then(|| {
            if prefix {
                StatusMatch::Prefix(s.into())
            } else {
                StatusMatch::Exact(s.into())
            }
        })
    }

    fn matches(&self, status: &str) -> bool {
        match self {
            StatusMatch::Exact(s) => status == s,
            StatusMatch::Prefix(p) => status.starts_with(p.as_str()),
        }
    }
}

/// The enhanced status code at the start of a reply line, after any reply code:
/// "550-5.1.1 The email account ..." gives "5.1.1".
fn status_in_text(text: &str) -> Option<&str> {
    let t = text.trim_start();
    let b = t.as_bytes();
    let rest = if b.len() > 4 && b[..3].iter().all(u8::is_ascii_digit) && matches!(b[3], b' ' | b'-') {
        &t[4..]
    } else {
        t
    };
    let token = rest.split_whitespace().next()?;
    matches!(StatusMatch::parse(token), Some(StatusMatch::Exact(_))).then_some(token)
}

/// "5xx", "4xx" (from the code, else the status) or "local failure", for the no-match message.
fn failure_class(code: Option<u16>, status: Option<&str>) -> String {
    match (code, status.and_then(|s| s.chars().next())) {
        (Some(c), _) => format!("{}xx", c / 100),
        (None, Some(d)) => format!("{d}.x.x"),
        (None, None) => "local failure".into(),
    }
}

/// A rules file as written: `[[rule]]` tables, each checked on its own so errors can name it.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    #[serde(default)]
    rule: Vec<toml::Table>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRule {
    category: String,
    provider: Option<String>,
    code: Option<toml::Value>,
    status: Option<toml::Value>,
    text: Option<String>,
}

/// Every rule of the file, or every mistake in it, each naming `origin` as its file.
fn compile(text: &str, origin: &str) -> Result<Vec<Rule>, ConfigError> {
    let in_origin = |e: ConfigError| e.in_file(Path::new(origin));
    let file: RawFile = toml::from_str(text).map_err(|e| in_origin(ConfigIssue::new("", e.to_string()).into()))?;
    let mut issues = Issues::default();
    let rules = file
        .rule
        .into_iter()
        .enumerate()
        .filter_map(|(i, table)| {
            compile_rule(
                table,
                format!("{origin} rule {}", i + 1),
                &format!("rule[{i}]"),
                &mut issues,
            )
        })
        .collect();
    issues.finish(rules).map_err(in_origin)
}

/// One `[[rule]]`, or `None` with its mistakes recorded under `key`.
fn compile_rule(table: toml::Table, mut name: String, key: &str, issues: &mut Issues) -> Option<Rule> {
    let raw: RawRule = match toml::Value::Table(table).try_into() {
        Ok(raw) => raw,
        Err(e) => {
            let e: toml::de::Error = e;
            issues.push(key, e.message());
            return None;
        }
    };
    let before = issues.len();
    if raw.code.is_none() && raw.status.is_none() && raw.text.is_none() {
        issues.push(key, "no condition: give at least one of code, status and text");
    }
    if let Some(provider) = &raw.provider {
        name = format!("{name} ({provider})");
    }
    let field = |f: &str| format!("{key}.{f}");
    let category = raw.category.parse().map_err(|e| issues.push(field("category"), e)).ok();
    let codes = list(&field("code"), raw.code, parse_code, issues);
    let statuses = list(&field("status"), raw.status, parse_status, issues);
    let text = match raw.text.map(|re| Regex::new(&re)).transpose() {
        Ok(text) => text,
        Err(e) => {
            issues.push(field("text"), e.to_string());
            None
        }
    };
    match (category, issues.len() == before) {
        (Some(category), true) => Some(Rule {
            category,
            name,
            codes,
            statuses,
            text,
        }),
        _ => None,
    }
}

/// One value or a non-empty array of them, each converted by `item`; mistakes go under `key`.
fn list<T>(
    key: &str,
    value: Option<toml::Value>,
    item: impl Fn(toml::Value) -> Result<T, ValueError>,
    issues: &mut Issues,
) -> Vec<T> {
    let items = match value {
        None => return Vec::new(),
        Some(toml::Value::Array(a)) if a.is_empty() => {
            issues.push(key, "empty list");
            return Vec::new();
        }
        Some(toml::Value::Array(a)) => a,
        Some(one) => vec![one],
    };
    let mut out = Vec::new();
    for v in items {
        match item(v) {
            Ok(value) => out.push(value),
            Err(e) => issues.push(key, e),
        }
    }
    out
}

fn parse_code(v: toml::Value) -> Result<CodeMatch, ValueError> {
    match v {
        toml::Value::Integer(n) => u16::try_from(n)
            .ok()
            .filter(|c| (200..600).contains(c))
            .map(CodeMatch::Exact)
            .ok_or_else(|| ValueError::new(format!("{n} is not an SMTP reply code"))),
        toml::Value::String(s) => match s.to_ascii_lowercase().as_bytes() {
            [d @ b'2'..=b'5', b'x', b'x'] => Ok(CodeMatch::Class(u16::from(d - b'0'))),
            _ => Err(ValueError::new(format!(
                "{s:?} is not a reply code class such as \"5xx\""
            ))),
        },
        other => Err(ValueError::new(format!(
            "expected a number or a class such as \"5xx\", found {}",
            other.type_str()
        ))),
    }
}

fn parse_status(v: toml::Value) -> Result<StatusMatch, ValueError> {
    match v {
        toml::Value::String(s) => StatusMatch::parse(&s).ok_or_else(|| {
            ValueError::new(format!(
                "{s:?} is not an enhanced status code such as \"5.1.1\" or a prefix such as \"5.7.\""
            ))
        }),
        other => Err(ValueError::new(format!(
            "expected a string, found {}",
            other.type_str()
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Category::*;

    /// Real replies and local diagnostics as they appear in logs: (code, status, text, expected).
    #[rustfmt::skip]
    const CASES: &[(Option<u16>, Option<&str>, &str, Category)] = &[
        (Some(550), Some("5.1.1"), "550-5.1.1 The email account that you tried to reach does not exist. Please try double-checking the recipient's email address for typos or unnecessary spaces. Learn more at https://support.google.com/mail/?p=NoSuchUser d2e1a72fcca58-7a1b2c3d4e5si1234b3a.123 - gsmtp", BadMailbox),
        (Some(550), Some("5.2.1"), "550-5.2.1 The email account that you tried to reach is disabled. Learn more at https://support.google.com/mail/?p=DisabledUser", BadMailbox),
        (Some(550), Some("5.1.10"), "550 5.1.10 RESOLVER.ADR.RecipientNotFound; Recipient not found by SMTP address lookup", BadMailbox),
        (Some(550), Some("5.5.0"), "550 5.5.0 Requested action not taken: mailbox unavailable (S2017062302). [DM6NAM10FT048.eop-nam10.prod.protection.outlook.com]", BadMailbox),
        (Some(550), Some("5.4.1"), "550 5.4.1 Recipient address rejected: Access denied. For more information see https://aka.ms/EXOSmtpErrors [AM4PEPF00025F9A.EURPRD83.prod.outlook.com]", BadMailbox),
        (Some(554), None, "554 delivery error: dd This user doesn't have a yahoo.com account (someone@yahoo.com) [0] - mta1234.mail.gq1.yahoo.com", BadMailbox),
        (Some(550), Some("5.1.1"), "550 5.1.1 <jdoe@example.org>: Recipient address rejected: User unknown in virtual mailbox table", BadMailbox),
        (Some(550), Some("5.7.1"), "550 5.7.1 No such user!", BadMailbox),
        (Some(550), None, "550 Message was not accepted -- invalid mailbox.  Local mailbox someone@mail.ru is unavailable: account is disabled", BadMailbox),
        (Some(550), None, "550 Requested action not taken: mailbox unavailable", BadMailbox),
        (Some(550), None, "550 Invalid Recipient - https://community.mimecast.com/docs/DOC-1369#550 [mMz1hJ5XPM2Tg8hd7Lr3Hg.uk12]", BadMailbox),
        (Some(550), Some("5.1.1"), "550 5.1.1 <someone@icloud.com>: user does not exist", BadMailbox),
        (Some(551), Some("5.1.1"), "551 5.1.1 <someone@comcast.net> Not our Customer", BadMailbox),
        (Some(550), None, "550 5.1.1 <jdoe@example.org>: Bad address", BadMailbox),
        (None, Some("5.1.2"), "domain nosuchdomain.example does not exist", BadDomain),
        (None, Some("5.1.10"), "domain example.com does not accept mail (null MX)", BadDomain),
        (Some(450), Some("4.1.2"), "450 4.1.2 <jdoe@nxdomain.example>: Recipient address rejected: Domain not found", BadDomain),
        (Some(554), Some("5.4.4"), "554 5.4.4 Host or domain name not found. Name service error for name=nxdomain.example type=A: Host not found", BadDomain),
        (Some(452), Some("4.2.2"), "452-4.2.2 The email account that you tried to reach is over quota. Please direct the recipient to https://support.google.com/mail/?p=OverQuotaTemp", MailboxFull),
        (Some(552), Some("5.2.2"), "552 5.2.2 Mailbox size limit exceeded", MailboxFull),
        (Some(554), Some("5.2.2"), "554 5.2.2 mailbox full; STOREDRV.Deliver.Exception:QuotaExceededException.MapiExceptionShutoffQuotaExceeded", MailboxFull),
        (Some(552), Some("5.1.1"), "552 5.1.1 Boite du destinataire pleine. Recipient overquota. OFR_417 [417]", MailboxFull),
        (Some(552), None, "552 Requested mail action aborted: exceeded storage allocation", MailboxFull),
        (Some(550), Some("5.7.1"), "550-5.7.1 [203.0.113.5] Our system has detected that this message is likely unsolicited mail. To reduce the amount of spam sent to Gmail, this message has been blocked. Please visit https://support.google.com/mail/?p=UnsolicitedMessageError for more information.", SpamBlock),
        (Some(550), Some("5.7.1"), "550 5.7.1 Unfortunately, messages from [203.0.113.5] weren't sent. Please contact your Internet service provider since part of their network is on our block list (S3150). You can also refer your provider to http://mail.live.com/mail/troubleshooting.aspx#errors.", SpamBlock),
        (Some(550), Some("5.7.606"), "550 5.7.606 Access denied, banned sending IP [203.0.113.5]. To request removal from this list please visit https://sender.office.com/ and follow the directions.", SpamBlock),
        (Some(553), Some("5.7.1"), "553 5.7.1 [BL21] Connections will not be accepted from 203.0.113.5, because the ip is in Spamhaus's list; see http://postmaster.yahoo.com/errors/550-bl23.html", SpamBlock),
        (Some(554), Some("5.7.1"), "554 5.7.1 [CS01] Message rejected due to local policy. Please visit https://support.apple.com/en-us/HT204137", SpamBlock),
        (Some(554), None, "554-gmx.net (mxgmx017) Nemesis ESMTP Service not available 554-No SMTP service 554-Reject due to policy restrictions. 554 For explanation visit https://www.gmx.net/mail/senderguidelines?c=bl", SpamBlock),
        (Some(554), None, "554 resimta-po-12v.sys.comcast.net comcast 203.0.113.5 found on one or more RBLs. Refer to http://postmaster.comcast.net/smtp-error-codes.php#BL000000", SpamBlock),
        (Some(554), None, "554 Blocked - see https://ipcheck.proofpoint.com/?ip=203.0.113.5", SpamBlock),
        (Some(550), Some("5.7.1"), "550 5.7.1 Service unavailable; Client host [203.0.113.5] blocked using zen.spamhaus.org; https://www.spamhaus.org/query/ip/203.0.113.5", SpamBlock),
        (Some(554), Some("5.7.1"), "554 5.7.1 [2] Message rejected under suspicion of SPAM; https://ya.cc/1IrBc 1679923948-AbCdEf", SpamBlock),
        (Some(550), None, "550 spam message rejected. Please visit http://help.mail.ru/notspam-support/id?c=Abc123 or report details to abuse@corp.mail.ru.", SpamBlock),
        (Some(550), None, "550 Poor Reputation Sender - https://community.mimecast.com/docs/DOC-1369#550 [AbCdEf.uk12]", SpamBlock),
        (Some(550), None, "550 mwinf5c04 ME Adresse IP source bloquee pour incident de spam. Client host blocked for spamming issues. OFR006_102 Ref http://csi.cloudmark.com/reset-request/?ip=203.0.113.5", SpamBlock),
        (Some(421), Some("4.7.28"), "421-4.7.28 [203.0.113.5      15] Our system has detected an unusual rate of unsolicited mail originating from your IP address. To protect our users from spam, mail sent from your IP address has been temporarily rate limited. Please visit https://support.google.com/mail/?p=UnsolicitedRateLimitError to review our Bulk Email Senders Guidelines.", RateLimited),
        (Some(421), Some("4.7.0"), "421-4.7.0 Try again later, closing connection. (EHLO) d2e1a72fcca58-7a1b2c3d4e5si1234b3a.123 - gsmtp", RateLimited),
        (Some(421), Some("4.7.0"), "421 4.7.0 [TSS04] Messages from 203.0.113.5 temporarily deferred due to unexpected volume or user complaints - 4.16.55.1; see https://postmaster.yahooinc.com/error-codes", RateLimited),
        (Some(451), Some("4.7.650"), "451 4.7.650 The mail server [203.0.113.5] has been temporarily rate limited due to IP reputation. For e-mail delivery information, see https://postmaster.live.com (S775)", RateLimited),
        (Some(452), Some("4.5.3"), "452 4.5.3 Too many recipients", RateLimited),
        (Some(421), None, "421 mwinf5c10 ME Trop de connexions, veuillez verifier votre configuration. Too many connections, slow down. OFR005_104 [104]", RateLimited),
        (Some(450), Some("4.2.0"), "450 4.2.0 <jdoe@example.org>: Recipient address rejected: Greylisted, see http://postgrey.schweikert.ch/help/example.org.html", RateLimited),
        (Some(451), None, "451 Ratelimit exceeded for mailbox someone@mail.ru. Try again later.", RateLimited),
        (Some(550), Some("5.7.26"), "550-5.7.26 This mail is unauthenticated, which poses a security risk to the sender and Gmail users, and has been blocked. The sender must authenticate with at least one of SPF or DKIM.", Authentication),
        (Some(550), Some("5.7.509"), "550 5.7.509 Access denied, sending domain example.com does not pass DMARC verification and has a DMARC policy of reject.", Authentication),
        (Some(535), Some("5.7.8"), "535 5.7.8 Error: authentication failed: authentication failure", Authentication),
        (Some(550), Some("5.7.9"), "550 5.7.9 This mail has been blocked because the sender is unauthenticated. Yahoo requires all senders to authenticate with either SPF or DKIM.", Authentication),
        (Some(421), Some("4.7.27"), "421-4.7.27 Your email has been rate limited because SPF authentication didn't pass for this message.", Authentication),
        (None, Some("4.7.5"), "TLS required but mx.example.org:25 does not offer STARTTLS", Tls),
        (Some(530), Some("5.7.0"), "530 5.7.0 Must issue a STARTTLS command first", Tls),
        (None, Some("4.4.2"), "invalid peer certificate: UnknownIssuer", Tls),
        (None, Some("4.4.3"), "DNS lookup for example.org failed: request timed out", Dns),
        (None, None, "no address found for the mail servers of example.org", Dns),
        (None, Some("4.4.1"), "connection to 192.0.2.25:25 failed: Connection refused (os error 111)", Network),
        (None, None, "timeout waiting for greeting", Network),
        (None, None, "Connection reset by peer (os error 104)", Network),
        (None, Some("4.4.7"), "message expired in queue; last error: connection to 192.0.2.25:25 failed: Connection timed out (os error 110)", Network),
        (Some(554), Some("5.7.1"), "554 5.7.1 <jdoe@example.org>: Relay access denied", Policy),
        (Some(552), Some("5.3.4"), "552 5.3.4 Message size exceeds fixed maximum message size", Policy),
        (Some(554), Some("5.7.9"), "554 5.7.9 Message not accepted for policy reasons.  See https://postmaster.yahooinc.com/error-codes", Policy),
        (Some(550), Some("5.7.1"), "550-5.7.1 [203.0.113.5] The IP you're using to send mail is not authorized to send email directly to our servers. Please use the SMTP relay at your service provider instead.", Policy),
        (Some(553), Some("5.1.8"), "553 5.1.8 <bounce@nxdomain.example>: Sender address rejected: Domain not found", Policy),
        (Some(550), Some("5.7.25"), "550-5.7.25 [203.0.113.5] The IP address sending this message does not have a PTR record setup, or the corresponding forward DNS entry does not point to the sending IP. As a policy, Gmail does not accept messages from IPs with missing PTR records.", Policy),
        (Some(552), Some("5.7.0"), "552-5.7.0 This message was blocked because its content presents a potential security issue. Please visit https://support.google.com/mail/?p=BlockedMessage to review our message content and attachment content guidelines.", Policy),
        (Some(550), None, "550 Envelope blocked - User Entry - https://community.mimecast.com/docs/DOC-1369#550 [AbCdEf.uk12]", Policy),
        (Some(550), Some("5.7.0"), "550 5.7.0 Local Policy Violation", Policy),
        (Some(451), Some("4.3.0"), "451 4.3.0 Temporary system failure, please try again later", Other),
        (Some(450), None, "450 Requested mail action not taken: mailbox unavailable", Other),
        (None, Some("4.3.5"), "pool outbound is not configured", Other),
        (Some(554), Some("5.3.0"), "554 5.3.0 Unexpected error", Other),
    ];

    #[test]
    fn real_world_replies() {
        let c = Classifier::defaults();
        let wrong: Vec<String> = CASES
            .iter()
            .filter_map(|&(code, status, text, want)| {
                let got = c.classify(code, status, text);
                (got.category != want).then(|| format!("{text}\n  want {want}, got {} by {}", got.category, got.rule))
            })
            .collect();
        assert!(wrong.is_empty(), "{} misclassified:\n{}", wrong.len(), wrong.join("\n"));
    }

    #[test]
    fn the_table_covers_every_category() {
        for cat in Category::ALL {
            assert!(CASES.iter().any(|c| c.3 == cat), "no case for {cat}");
        }
    }

    #[test]
    fn rule_names_give_origin_index_and_provider() {
        let c = Classifier::defaults();
        let gmail = c.classify(Some(550), Some("5.1.1"), CASES[0].2);
        assert_eq!(gmail.rule, "defaults rule 1 (gmail)");
        let generic = c.classify(
            Some(550),
            Some("5.1.1"),
            "550 5.1.1 <a@b.example>: Recipient address rejected",
        );
        assert!(
            generic.rule.starts_with("defaults rule ") && !generic.rule.ends_with(')'),
            "{}",
            generic.rule
        );
        let none = c.classify(Some(554), None, "554 nope");
        assert_eq!((none.category, none.rule.as_str()), (Other, "no rule matched (5xx)"));
        assert_eq!(
            c.classify(None, None, "bizarre").rule,
            "no rule matched (local failure)"
        );
    }

    #[test]
    fn status_is_read_from_the_text_when_not_given() {
        assert_eq!(status_in_text("550-5.1.1 The email account"), Some("5.1.1"));
        assert_eq!(status_in_text("451 4.7.650 The mail server"), Some("4.7.650"));
        assert_eq!(status_in_text("5.2.2 mailbox full"), Some("5.2.2"));
        assert_eq!(status_in_text("554 delivery error: dd"), None);
        assert_eq!(status_in_text("550 5.7. x"), None);
        assert_eq!(status_in_text("ünï 5.1.1"), None);
    }

    #[test]
    fn categories_round_trip_and_only_address_failures_are_hard() {
        for cat in Category::ALL {
            assert_eq!(cat.as_str().parse::<Category>(), Ok(cat));
            assert_eq!(cat.to_string(), cat.as_str());
        }
        let hard: Vec<_> = Category::ALL.into_iter().filter(|c| c.is_hard()).collect();
        assert_eq!(hard, [BadMailbox, BadDomain]);
        assert!(
            "Bad_Mailbox"
                .parse::<Category>()
                .unwrap_err()
                .message()
                .contains("expected one of bad_mailbox")
        );
    }

    const USER_RULES: &str = r#"
        [[rule]]
        category = "other"
        provider = "acme"
        code = "5xx"
        status = ["5.1."]
        text = "(?i)does not exist"

        [[rule]]
        category = "policy"
        status = "5.1.1"
    "#;

    #[test]
    fn user_rules_come_first_and_fall_back_to_defaults() {
        let c = Classifier::parse(USER_RULES, "rules.toml").expect("valid rules");
        let gmail = c.classify(Some(550), Some("5.1.1"), CASES[0].2);
        assert_eq!(
            gmail,
            Classification {
                category: Other,
                rule: "rules.toml rule 1 (acme)".into()
            }
        );
        let unknown = c.classify(Some(550), Some("5.1.1"), "550 5.1.1 User unknown");
        assert_eq!(
            unknown,
            Classification {
                category: Policy,
                rule: "rules.toml rule 2".into()
            }
        );
        // Rule 1 wants a 5xx code; a local failure falls through to the defaults.
        let local = c.classify(None, Some("5.1.2"), "domain x.example does not exist");
        assert_eq!(local.category, BadDomain);
        assert!(local.rule.starts_with("defaults rule "), "{}", local.rule);
    }

    #[test]
    fn code_and_status_forms() {
        let c = Classifier::parse(
            "[[rule]]\ncategory = \"dns\"\ncode = [450, \"5XX\"]\nstatus = \"5.\"",
            "r",
        )
        .unwrap();
        assert_eq!(c.classify(Some(554), Some("5.9.9"), "x").category, Dns);
        assert_eq!(c.classify(Some(554), Some("4.9.9"), "x").category, Other);
        assert_eq!(c.classify(Some(451), Some("5.9.9"), "x").category, Other);
        assert_eq!(c.classify(None, Some("5.9.9"), "x").category, Other);
    }

    fn parse_err(text: &str) -> String {
        Classifier::parse(text, "rules.toml")
            .expect_err("should be rejected")
            .to_string()
    }

    #[test]
    fn errors_name_the_file_the_rule_and_the_problem() {
        let ok = "[[rule]]\ncategory = \"policy\"\ntext = \"x\"\n";
        let cases = [
            (
                "category = \"hard\"\ntext = \"x\"",
                "rules.toml: rule[1].category: unknown category \"hard\"",
            ),
            (
                "category = \"tls\"\ntext = \"(unclosed\"",
                "rules.toml: rule[1].text: regex parse error",
            ),
            (
                "category = \"tls\"\ntxt = \"x\"",
                "rules.toml: rule[1]: unknown field `txt`",
            ),
            (
                "category = \"tls\"\nprovider = \"x\"",
                "rules.toml: rule[1]: no condition",
            ),
            ("text = \"x\"", "rules.toml: rule[1]: missing field `category`"),
            (
                "category = \"tls\"\ncode = [999]",
                "rules.toml: rule[1].code: 999 is not an SMTP reply code",
            ),
            (
                "category = \"tls\"\ncode = \"6xx\"",
                "rules.toml: rule[1].code: \"6xx\" is not a reply code class",
            ),
            ("category = \"tls\"\ncode = []", "rules.toml: rule[1].code: empty list"),
            (
                "category = \"tls\"\nstatus = [\"5.7\"]",
                "rules.toml: rule[1].status: \"5.7\" is not an enhanced status code",
            ),
            (
                "category = \"tls\"\nstatus = [571]",
                "rules.toml: rule[1].status: expected a string, found integer",
            ),
        ];
        for (rule, want) in cases {
            let err = parse_err(&format!("{ok}[[rule]]\n{rule}\n"));
            assert!(err.starts_with(want), "for {rule:?}: {err}");
        }
        assert!(parse_err("[[rules]]\ntext = \"x\"").contains("unknown field `rules`"));
        assert!(parse_err("[[rule]\n").starts_with("rules.toml: "));
    }

    #[test]
    fn every_mistake_of_every_rule_is_reported_at_once() {
        let text = "[[rule]]\ncategory = \"hard\"\ncode = [999]\n\n[[rule]]\ncategory = \"tls\"\nstatus = \"5.7\"\n";
        let err = Classifier::parse(text, "rules.toml").expect_err("should be rejected");
        let keys: Vec<_> = err.errors.iter().map(|i| i.key.as_str()).collect();
        assert_eq!(keys, ["rule[0].category", "rule[0].code", "rule[1].status"], "{err}");
        assert!(
            err.errors
                .iter()
                .all(|i| i.file.as_deref() == Some(Path::new("rules.toml"))),
            "{err}"
        );
    }

    #[test]
    fn load_reads_a_file_and_names_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bounce-rules.toml");
        let err = Classifier::load(&path).expect_err("missing file").to_string();
        assert!(err.starts_with(&path.display().to_string()), "{err}");
        std::fs::write(&path, USER_RULES).unwrap();
        let c = Classifier::load(&path).expect("valid file");
        let got = c.classify(Some(550), Some("5.1.1"), "550 5.1.1 User unknown");
        assert_eq!(got.rule, format!("{} rule 2", path.display()));
    }

    /// A reply as the upstream client read it off the wire.
    fn wire(text: &[u8]) -> Upstream {
        use crate::reply::upstream::Command;
        let parsed = smtpgate_proto::parse_reply(text).unwrap().unwrap().0;
        Upstream::parsed(&parsed, Command::Rcpt, "mx.example.org:25")
    }

    #[test]
    fn typed_replies_classify_as_the_table_says() {
        let c = Classifier::defaults();
        let gone = wire(
            b"550 5.1.1 <jdoe@example.org>: Recipient address rejected: User unknown in virtual mailbox table\r\n",
        );
        assert_eq!(c.reply(&gone).category, BadMailbox);
        // The table's Gmail case, as the server sends it: several lines.
        let gmail = wire(
            b"550-5.1.1 The email account that you tried to reach does not exist. Please try\r\n\
              550-5.1.1 double-checking the recipient's email address for typos or\r\n\
              550 5.1.1 unnecessary spaces. https://support.google.com/mail/?p=NoSuchUser - gsmtp\r\n",
        );
        assert_eq!(gmail.status.as_ref().map(|s| s.as_str()), Some("5.1.1"));
        let got = c.reply(&gmail);
        assert_eq!(
            (got.category, got.rule.as_str()),
            (BadMailbox, "defaults rule 1 (gmail)")
        );
    }

    #[test]
    fn typed_replies_without_a_status_classify_as_their_line_did() {
        let c = Classifier::defaults();
        for (text, want) in [
            (
                &b"550 Requested action not taken: mailbox unavailable\r\n"[..],
                BadMailbox,
            ),
            (
                b"554 Blocked - see https://ipcheck.proofpoint.com/?ip=203.0.113.5\r\n",
                SpamBlock,
            ),
            (b"450 Requested mail action not taken: mailbox unavailable\r\n", Other),
        ] {
            let reply = wire(text);
            assert_eq!(reply.status, None);
            let line = reply.line();
            assert_eq!(
                c.reply(&reply),
                c.classify(Some(reply.code.unwrap()), Some(&reply.dsn_status()), &line)
            );
            assert_eq!(c.reply(&reply).category, want, "{line}");
        }
    }

    #[test]
    fn local_failures_classify_by_their_words_not_the_gates_code() {
        use crate::reply::upstream::Command;
        let c = Classifier::defaults();
        let refused = Upstream::local(
            "4.4.1",
            "connection to 192.0.2.25:25 failed: Connection refused (os error 111)",
            Command::Connect,
        );
        assert_eq!(c.reply(&refused).category, Network);
        let dns = Upstream::local(
            "4.4.3",
            "DNS lookup for example.org failed: request timed out",
            Command::Outside,
        );
        assert_eq!(c.reply(&dns).category, Dns);
        let tls = Upstream::local(
            "4.7.5",
            "TLS required but mx.example.org:25 does not offer STARTTLS",
            Command::StartTls,
        );
        assert_eq!(c.reply(&tls).category, Tls);
        let null_mx = Upstream::local_reply(
            550,
            "5.1.10",
            "domain example.com does not accept mail (null MX)",
            Command::Outside,
        );
        let got = c.reply(&null_mx);
        assert_eq!(got.category, BadDomain);
        assert_eq!(
            got,
            c.classify(
                None,
                Some("5.1.10"),
                "domain example.com does not accept mail (null MX)"
            )
        );
    }
}
