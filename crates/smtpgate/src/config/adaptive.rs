//! The rules of the shaping file's `[[adaptive]]` array: what they match in a reply, and the
//! action a match puts on a destination.

use std::time::Duration;

use regex::Regex;
use serde::Deserialize;

use super::Issues;
use crate::reply::classify::Category;

/// A rule of the shaping file's `[[adaptive]]` array.
#[derive(Debug, Clone)]
pub struct Rule {
    pub name: String,
    pub code: Option<String>,
    pub status: Option<String>,
    pub text: Option<Regex>,
    pub category: Option<Category>,
    pub domain: Option<String>,
    pub mx: Option<String>,
    pub suspend: bool,
    pub rate_factor: f64,
    pub connection_factor: f64,
    pub duration: Duration,
    pub recover: Duration,
}

impl PartialEq for Rule {
    fn eq(&self, other: &Rule) -> bool {
        self.name == other.name
            && self.code == other.code
            && self.status == other.status
            && self.text.as_ref().map(Regex::as_str) == other.text.as_ref().map(Regex::as_str)
            && self.category == other.category
            && self.domain == other.domain
            && self.mx == other.mx
            && self.suspend == other.suspend
            && self.rate_factor == other.rate_factor
            && self.connection_factor == other.connection_factor
            && self.duration == other.duration
            && self.recover == other.recover
    }
}

impl Eq for Rule {}

/// One `[[adaptive]]` table as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawRule {
    name: Option<String>,
    code: Option<String>,
    status: Option<String>,
    text: Option<String>,
    category: Option<String>,
    domain: Option<String>,
    mx: Option<String>,
    action: Option<String>,
    duration: Option<String>,
    rate_factor: Option<f64>,
    connection_factor: Option<f64>,
    recover: Option<String>,
}

/// A reply (or a failure to get one) from a delivery attempt, as the rules see it.
#[derive(Debug, Clone, Copy)]
pub struct Reply<'a> {
    /// The recipient domain of the delivery.
    pub domain: &'a str,
    /// The domain's mail servers.
    pub hosts: &'a [&'a str],
    /// The reply code, when the failure was a reply.
    pub code: Option<u16>,
    /// The enhanced status code.
    pub status: Option<&'a str>,
    /// The whole reply (or the error) as one line.
    pub text: &'a str,
    pub category: Category,
}

impl Rule {
    /// Checks and compiles the `index`th rule; every mistake goes to `issues`, under `adaptive[index]`.
    pub(crate) fn parse(raw: RawRule, index: usize, issues: &mut Issues) -> Option<Rule> {
        let key = format!("adaptive[{index}]");
        // Mistakes before this rule's do not make it wrong.
        let before = issues.len();
        let name = raw.name.unwrap_or_else(|| format!("adaptive rule {}", index + 1));
        let code = raw.code.map(|c| c.trim().to_owned());
        if let Some(c) = &code
            && (c.is_empty() || c.len() > 3 || !c.bytes().all(|b| b.is_ascii_digit()) || !c.starts_with(['4', '5']))
        {
            issues.push(
                format!("{key}.code"),
                format!("{c:?} is not a reply code like \"421\" or its start (\"4\")"),
            );
        }
        let status = raw.status.map(|s| s.trim().to_owned());
        if let Some(s) = &status
            && (s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit() || b == b'.') || !s.starts_with(['4', '5']))
        {
            issues.push(
                format!("{key}.status"),
                format!("{s:?} is not an enhanced status code like \"4.7.0\" or its start"),
            );
        }
        let text = raw
            .text
            .and_then(|t| match regex::RegexBuilder::new(&t).case_insensitive(true).build() {
                Ok(re) => Some(re),
                Err(e) => {
                    issues.push(format!("{key}.text"), e.to_string());
                    None
                }
            });
        let category = raw.category.and_then(|c| match c.parse::<Category>() {
            Ok(c) => Some(c),
            Err(e) => {
                issues.push(format!("{key}.category"), e.to_string());
                None
            }
        });
        if code.is_none() && status.is_none() && text.is_none() && category.is_none() && issues.len() == before {
            issues.push(key.clone(), "needs at least one of code, status, text, category");
        }
        let suspend = match raw.action.as_deref() {
            Some("suspend") => true,
            Some("throttle") => false,
            Some(other) => {
                issues.push(
                    format!("{key}.action"),
                    format!("{other:?} is not \"suspend\" or \"throttle\""),
                );
                false
            }
            None => {
                issues.push(format!("{key}.action"), "missing (\"suspend\" or \"throttle\")");
                false
            }
        };
        let mut factor = |field: &str, value: Option<f64>| match value {
            None => 1.0,
            Some(f) if f > 0.0 && f <= 1.0 => f,
            Some(f) => {
                issues.push(
                    format!("{key}.{field}"),
                    format!("{f} is not more than 0 and at most 1"),
                );
                1.0
            }
        };
        let rate_factor = factor("rate_factor", raw.rate_factor);
        let connection_factor = factor("connection_factor", raw.connection_factor);
        if !suspend && rate_factor == 1.0 && connection_factor == 1.0 && raw.action.is_some() {
            issues.push(key.clone(), "a throttle needs rate_factor or connection_factor below 1");
        }
        let mut duration = |field: &str, value: Option<String>, required: bool| match value {
            None if required => {
                issues.push(format!("{key}.{field}"), "missing (a duration like \"30m\")");
                Duration::ZERO
            }
            None => Duration::ZERO,
            Some(text) => match super::values::parse_duration(&text) {
                Ok(d) if !d.is_zero() || !required => d,
                Ok(_) => {
                    issues.push(format!("{key}.{field}"), "must be more than 0s");
                    Duration::ZERO
                }
                Err(e) => {
                    issues.push(format!("{key}.{field}"), e.to_string());
                    Duration::ZERO
                }
            },
        };
        let duration_value = duration("duration", raw.duration, true);
        let recover = duration("recover", raw.recover, false);
        let pattern = |p: Option<String>| p.map(|p| p.trim().trim_end_matches('.').to_ascii_lowercase());
        if issues.len() > before {
            return None;
        }
        Some(Rule {
            name,
            code,
            status,
            text,
            category,
            domain: pattern(raw.domain),
            mx: pattern(raw.mx),
            suspend,
            rate_factor,
            connection_factor,
            duration: duration_value,
            recover,
        })
    }

    /// Whether every condition of the rule holds for `reply`.
    pub fn matches(&self, reply: &Reply<'_>) -> bool {
        if let Some(d) = &self.domain
            && !super::values::host_matches(d, reply.domain)
        {
            return false;
        }
        if let Some(p) = &self.mx
            && !reply.hosts.iter().any(|h| super::values::host_matches(p, h))
        {
            return false;
        }
        if let Some(c) = &self.code
            && !reply.code.is_some_and(|code| code.to_string().starts_with(c.as_str()))
        {
            return false;
        }
        if let Some(s) = &self.status
            && !reply.status.is_some_and(|st| status_starts_with(st, s))
        {
            return false;
        }
        if let Some(c) = self.category
            && c != reply.category
        {
            return false;
        }
        self.text.as_ref().is_none_or(|re| re.is_match(reply.text))
    }
}

/// `4.7.0` starts with `4.7.` and with `4.7.0`, not with `4.7.1` nor with `4.7.00`.
pub fn status_starts_with(status: &str, prefix: &str) -> bool {
    status == prefix
        || (status.starts_with(prefix) && (prefix.ends_with('.') || status.as_bytes()[prefix.len()] == b'.'))
}
