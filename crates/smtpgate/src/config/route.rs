//! `[[route]]` rules and the `[routing]` section (aliases, Sieve, SRS, body scan limit).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use ipnet::IpNet;
use regex::Regex;
use serde::Deserialize;

use super::PoolConfig;
use super::issues::{Checks as _, Issues};
use super::text::Text;
use super::values::ValueError;
use super::values::{parse_net, parse_size};

/// A string or a list of strings.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    fn into_vec(self) -> Vec<String> {
        match self {
            OneOrMany::One(s) => vec![s],
            OneOrMany::Many(v) => v,
        }
    }
}

#[derive(Debug, Default, Deserialize)]
pub struct RawRoute {
    pub name: Option<String>,
    pub when: Option<RawWhen>,
    pub pool: Option<String>,
    pub mx: Option<bool>,
    pub reject: Option<String>,
    pub discard: Option<bool>,
    pub redirect: Option<OneOrMany>,
    pub copy_to: Option<OneOrMany>,
    pub add_headers: Option<BTreeMap<String, String>>,
    pub remove_headers: Option<Vec<String>>,
    pub tag: Option<OneOrMany>,
    #[serde(rename = "continue")]
    pub continue_: Option<bool>,
    pub filters: Option<Vec<String>>,
    pub stream: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
pub struct RawWhen {
    pub sender: Option<OneOrMany>,
    pub sender_domain: Option<OneOrMany>,
    pub recipient: Option<OneOrMany>,
    pub recipient_domain: Option<OneOrMany>,
    pub recipient_file: Option<String>,
    pub client: Option<OneOrMany>,
    pub user: Option<OneOrMany>,
    pub listener: Option<OneOrMany>,
    pub size_over: Option<Text>,
    pub size_under: Option<Text>,
    pub header: Option<BTreeMap<String, String>>,
    pub subject: Option<String>,
    pub tag: Option<OneOrMany>,
    pub body: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
pub struct RawRouting {
    pub aliases: Option<String>,
    pub sieve_dir: Option<String>,
    pub body_scan_limit: Option<Text>,
    pub srs: Option<RawSrs>,
}

#[derive(Debug, Deserialize)]
pub struct RawSrs {
    pub secret: String,
    pub domain: String,
    pub hash_length: Option<i64>,
}

/// A pattern for an address or a domain, written as:
/// `user@example.com` (exact), `@example.com` (any address of that domain), `*@*.example.com`
/// (glob: `*` and `?`), or `/regex/` (a regular expression). Matching ignores case.
#[derive(Debug, Clone)]
pub enum Pattern {
    Exact(String),
    Domain(String),
    Glob(Regex),
    Regex(Regex),
}

impl Pattern {
    pub fn parse(text: &str) -> Result<Pattern, ValueError> {
        if let Some(re) = text.strip_prefix('/').and_then(|t| t.strip_suffix('/')) {
            return compile(re).map(Pattern::Regex);
        }
        if text.contains(['*', '?']) {
            let re: String = text
                .chars()
                .map(|c| match c {
                    '*' => ".*".to_owned(),
                    '?' => ".".to_owned(),
                    c => regex::escape(&c.to_string()),
                })
                .collect();
            return compile(&format!("^{re}$")).map(Pattern::Glob);
        }
        if text.is_empty() {
            return Err("an empty pattern matches nothing".into());
        }
        match text.strip_prefix('@') {
            Some(domain) => Ok(Pattern::Domain(domain.to_ascii_lowercase())),
            None => Ok(Pattern::Exact(text.to_ascii_lowercase())),
        }
    }

    /// Whether `value` (an address or a domain) matches.
    pub fn matches(&self, value: &str) -> bool {
        match self {
            Pattern::Exact(s) => value.eq_ignore_ascii_case(s),
            Pattern::Domain(d) => value.rsplit_once('@').is_some_and(|(_, vd)| vd.eq_ignore_ascii_case(d)),
            Pattern::Glob(re) | Pattern::Regex(re) => re.is_match(value),
        }
    }
}

/// Compiles a case-insensitive regular expression (bounded in size).
pub fn compile(re: &str) -> Result<Regex, ValueError> {
    regex::RegexBuilder::new(re)
        .case_insensitive(true)
        .crlf(true)
        .size_limit(1 << 20)
        .build()
        .map_err(|e| ValueError::new(format!("bad regular expression: {e}")))
}

/// What a rule looks at. Every condition given must hold; lists match if any entry does.
#[derive(Debug, Clone, Default)]
pub struct When {
    pub sender: Vec<Pattern>,
    pub sender_domain: Vec<Pattern>,
    pub recipient: Vec<Pattern>,
    pub recipient_domain: Vec<Pattern>,
    /// A file of addresses, one per line, re-read when it changes.
    pub recipient_file: Option<PathBuf>,
    pub client: Vec<IpNet>,
    pub user: Vec<String>,
    pub listener: Vec<String>,
    pub size_over: Option<u64>,
    pub size_under: Option<u64>,
    pub headers: Vec<(String, Regex)>,
    pub subject: Option<Regex>,
    pub tags: Vec<String>,
    pub body: Option<Regex>,
}

impl When {
    /// Whether the rule needs the message content (so cannot be decided at RCPT time).
    pub fn needs_content(&self) -> bool {
        self.size_over.is_some()
            || self.size_under.is_some()
            || !self.headers.is_empty()
            || self.subject.is_some()
            || self.body.is_some()
            || !self.tags.is_empty()
    }
}

/// What a deciding rule does with a recipient.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RouteAction {
    Pool(String),
    Mx,
    /// Refuse with this reply (`550 5.7.1 text`).
    Reject {
        code: u16,
        status: String,
        text: String,
    },
    Discard,
    Redirect(Vec<String>),
}

/// One `[[route]]`.
#[derive(Debug, Clone)]
pub struct RouteConfig {
    pub name: String,
    pub when: When,
    /// `None` for a rule that only adds copies, headers or tags and lets the next rules decide.
    pub action: Option<RouteAction>,
    pub copy_to: Vec<String>,
    pub add_headers: Vec<(String, String)>,
    pub remove_headers: Vec<String>,
    pub tags: Vec<String>,
    /// Names of `[[filter]]`s run on this route's copy.
    pub filters: Vec<String>,
    /// The `[[stream]]` the copy belongs to (a later matching rule's stream wins).
    pub stream: Option<String>,
}

/// `[routing]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoutingConfig {
    pub aliases: Option<PathBuf>,
    pub sieve_dir: Option<PathBuf>,
    /// Body rules look at no more than this many bytes of the body.
    pub body_scan_limit: u64,
    pub srs: Option<SrsConfig>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SrsConfig {
    pub secret: String,
    pub domain: String,
    /// Base64 characters of the hash in an address: 4 by default, as libsrs2 and postsrsd.
    pub hash_length: usize,
}

/// How many base64 characters of the SRS MAC an address carries (libsrs2's and postsrsd's default).
pub const SRS_DEFAULT_HASH_LENGTH: usize = 4;

/// The longest SRS hash: all the characters that base64 of a 20-byte SHA-1 MAC has (the 28th is
/// padding).
pub const SRS_MAX_HASH_LENGTH: usize = 27;

pub(super) fn build_routing(raw: RawRouting, base_dir: &Path, issues: &mut Issues) -> RoutingConfig {
    let file =
        |issues: &mut Issues, key: &str, v: Option<String>| v.map(|f| issues.existing_file(key.into(), base_dir, &f));
    let srs = raw.srs.map(|s| {
        if s.secret.len() < 16 {
            issues.push("routing.srs.secret", "must be at least 16 characters");
        }
        let hash_length = match s.hash_length {
            None => SRS_DEFAULT_HASH_LENGTH,
            Some(n) => usize::try_from(n)
                .ok()
                .filter(|n| (4..=SRS_MAX_HASH_LENGTH).contains(n))
                .unwrap_or_else(|| {
                    let max = SRS_MAX_HASH_LENGTH;
                    issues.push("routing.srs.hash_length", format!("{n} is not between 4 and {max}"));
                    SRS_DEFAULT_HASH_LENGTH
                }),
        };
        SrsConfig {
            secret: s.secret,
            domain: s.domain.to_ascii_lowercase(),
            hash_length,
        }
    });
    RoutingConfig {
        aliases: file(issues, "routing.aliases", raw.aliases),
        sieve_dir: raw.sieve_dir.map(|d| base_dir.join(d)),
        body_scan_limit: issues.parse("routing.body_scan_limit", raw.body_scan_limit, parse_size, 1024 * 1024),
        srs,
    }
}

pub(super) fn build_routes(
    raw: Vec<RawRoute>,
    pools: &[PoolConfig],
    base_dir: &Path,
    issues: &mut Issues,
) -> Vec<RouteConfig> {
    raw.into_iter()
        .enumerate()
        .map(|(i, r)| build_route(i, r, pools, base_dir, issues))
        .collect()
}

fn build_route(index: usize, raw: RawRoute, pools: &[PoolConfig], base_dir: &Path, issues: &mut Issues) -> RouteConfig {
    let key = |field: &str| format!("route[{index}].{field}");
    let when = build_when(&key("when"), raw.when.unwrap_or_default(), base_dir, issues);
    let mut actions = Vec::new();
    if let Some(pool) = raw.pool {
        if !pools.iter().any(|p| p.name == pool) {
            issues.push(key("pool"), format!("no pool named {pool:?}"));
        }
        actions.push(RouteAction::Pool(pool));
    }
    if raw.mx == Some(true) {
        actions.push(RouteAction::Mx);
    }
    if let Some(reply) = raw.reject {
        actions.push(parse_reject(&reply).unwrap_or_else(|m| {
            issues.push(key("reject"), m);
            RouteAction::Discard
        }));
    }
    if raw.discard == Some(true) {
        actions.push(RouteAction::Discard);
    }
    if let Some(to) = raw.redirect {
        actions.push(RouteAction::Redirect(addresses(
            &key("redirect"),
            to.into_vec(),
            issues,
        )));
    }
    if actions.len() > 1 {
        issues.push(key("pool"), "choose one of pool, mx, reject, discard and redirect");
    }
    let continues = raw.continue_.unwrap_or(false);
    if continues && !actions.is_empty() {
        issues.push(
            key("continue"),
            "a rule that continues cannot also decide (pool, mx, reject, discard, redirect)",
        );
    }
    // A rule with no action decides for MX delivery, unless it lets the next rules decide.
    let action = if continues {
        None
    } else {
        Some(actions.into_iter().next().unwrap_or(RouteAction::Mx))
    };
    RouteConfig {
        name: raw.name.unwrap_or_else(|| format!("route{index}")),
        when,
        action,
        copy_to: addresses(
            &key("copy_to"),
            raw.copy_to.map(OneOrMany::into_vec).unwrap_or_default(),
            issues,
        ),
        add_headers: headers(&key("add_headers"), raw.add_headers.unwrap_or_default(), issues),
        remove_headers: raw.remove_headers.unwrap_or_default(),
        tags: raw.tag.map(OneOrMany::into_vec).unwrap_or_default(),
        filters: raw.filters.unwrap_or_default(),
        stream: raw.stream,
    }
}

fn build_when(key: &str, raw: RawWhen, base_dir: &Path, issues: &mut Issues) -> When {
    let k = |field: &str| format!("{key}.{field}");
    let mut patterns = |field: &str, v: Option<OneOrMany>| -> Vec<Pattern> {
        let mut list = v.map(OneOrMany::into_vec).unwrap_or_default();
        if field.ends_with("_domain") {
            // A domain field holds domains: `@example.com` means `example.com` there.
            list.iter_mut()
                .filter(|p| p.starts_with('@'))
                .for_each(|p| *p = p[1..].to_owned());
        }
        list.iter()
            .enumerate()
            .filter_map(|(i, p)| {
                Pattern::parse(p)
                    .map_err(|m| issues.push(format!("{key}.{field}[{i}]"), m))
                    .ok()
            })
            .collect()
    };
    let sender = patterns("sender", raw.sender);
    let sender_domain = patterns("sender_domain", raw.sender_domain);
    let recipient = patterns("recipient", raw.recipient);
    let recipient_domain = patterns("recipient_domain", raw.recipient_domain);
    let client_texts = raw.client.map(|c| c.into_vec().into_iter().map(Text).collect());
    let regex = |issues: &mut Issues, field: &str, v: Option<String>| {
        v.and_then(|re| compile(&re).map_err(|m| issues.push(format!("{key}.{field}"), m)).ok())
    };
    When {
        sender,
        sender_domain,
        recipient,
        recipient_domain,
        recipient_file: raw
            .recipient_file
            .map(|f| issues.existing_file(k("recipient_file"), base_dir, &f)),
        client: issues.list(&k("client"), client_texts, parse_net),
        user: raw.user.map(OneOrMany::into_vec).unwrap_or_default(),
        listener: raw.listener.map(OneOrMany::into_vec).unwrap_or_default(),
        size_over: raw
            .size_over
            .map(|t| issues.parse(k("size_over"), Some(t), parse_size, 0)),
        size_under: raw
            .size_under
            .map(|t| issues.parse(k("size_under"), Some(t), parse_size, u64::MAX)),
        headers: raw
            .header
            .unwrap_or_default()
            .into_iter()
            .filter_map(|(name, re)| {
                compile(&re)
                    .map(|r| (name.clone(), r))
                    .map_err(|m| issues.push(format!("{key}.header.{name}"), m))
                    .ok()
            })
            .collect(),
        subject: regex(issues, "subject", raw.subject),
        tags: raw.tag.map(OneOrMany::into_vec).unwrap_or_default(),
        body: regex(issues, "body", raw.body),
    }
}

/// `"550 5.7.1 not here"` into a reject action; the code must be 4xx or 5xx.
fn parse_reject(reply: &str) -> Result<RouteAction, ValueError> {
    let mut parts = reply.splitn(3, ' ');
    let code: u16 = parts
        .next()
        .and_then(|c| c.parse().ok())
        .ok_or("must start with a reply code, e.g. \"550 5.7.1 text\"")?;
    if !(400..600).contains(&code) {
        return Err(ValueError::new(format!("{code} is not a 4xx or 5xx reply code")));
    }
    let status = parts.next().unwrap_or_default().to_owned();
    let valid_status = status.split('.').count() == 3 && status.starts_with(&(code / 100).to_string());
    if !valid_status {
        return Err(ValueError::new(format!(
            "{status:?} is not an enhanced status code matching {code} (e.g. {}.7.1)",
            code / 100
        )));
    }
    let text = parts.next().unwrap_or("rejected by policy").to_owned();
    Ok(RouteAction::Reject { code, status, text })
}

fn addresses(key: &str, list: Vec<String>, issues: &mut Issues) -> Vec<String> {
    for (i, a) in list.iter().enumerate() {
        if smtpgate_proto::Mailbox::parse(a).is_err() {
            issues.push(format!("{key}[{i}]"), format!("{a:?} is not an email address"));
        }
    }
    list
}

fn headers(key: &str, map: BTreeMap<String, String>, issues: &mut Issues) -> Vec<(String, String)> {
    map.into_iter()
        .filter(|(name, value)| {
            let ok_name = !name.is_empty() && name.bytes().all(|b| b.is_ascii_graphic() && b != b':');
            let ok_value = !value.contains(['\r', '\n']);
            if !ok_name || !ok_value {
                issues.push(
                    format!("{key}.{name}"),
                    "header names are printable ASCII without ':', values one line",
                );
            }
            ok_name && ok_value
        })
        .collect()
}
