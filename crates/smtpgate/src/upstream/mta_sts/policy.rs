//! The two texts of MTA-STS: the `_mta-sts` TXT record (RFC 8461 3.1) and the policy file
//! (RFC 8461 3.2), parsed without I/O, and MX host matching (RFC 8461 4.1).

use std::time::Duration;

/// The longest `max_age` a policy may have: one year (RFC 8461 3.2).
pub const MAX_AGE_LIMIT: u64 = 31_557_600;

/// What a sending MTA does when delivery to a domain cannot meet its policy (RFC 8461 5).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Deliver only to an MX that matches the policy, over TLS with a valid certificate.
    Enforce,
    /// Report failures (TLS-RPT), but deliver as if there were no policy.
    Testing,
    /// The domain has withdrawn its policy: deliver as if there were none.
    None,
}

/// A domain's MTA-STS policy, as fetched from `https://mta-sts.<domain>/.well-known/mta-sts.txt`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    /// The `id` of the TXT record that announced this policy (the policy file carries none).
    pub id: String,
    /// What to do when delivery cannot meet the policy.
    pub mode: Mode,
    /// The MX patterns, lower case, without a trailing dot: `mail.example.com` or `*.example.com`.
    pub mx: Vec<String>,
    /// How long the policy may be cached and applied after it was fetched.
    pub max_age: Duration,
}

impl Policy {
    /// RFC 8461 3.2 parsing (version STSv1, mode, one or more mx, max_age <= 31557600), CRLF or LF.
    ///
    /// Keys and the `version` and `mode` values are case-sensitive, as the RFC's ABNF says.
    /// `version`, `mode` and `max_age` must appear exactly once; `mx` at least once, except in mode
    /// `none` where the RFC makes it optional. Unknown keys are ignored (they must still be
    /// well-formed `key: value` lines). Blank lines are tolerated. `id` is the TXT record's id.
    pub fn parse(text: &str, id: &str) -> Result<Policy, String> {
        let mut fields = Fields::default();
        for (n, line) in text.split('\n').enumerate() {
            let line = line.strip_suffix('\r').unwrap_or(line);
            if line.trim_matches(is_wsp).is_empty() {
                continue;
            }
            fields.add(line).map_err(|e| format!("line {}: {e}", n + 1))?;
        }
        fields.finish(id)
    }

    /// Whether an MX host name matches one of the policy's mx patterns (RFC 8461 4.1:
    /// "*.example.com" matches exactly one extra left-most label; case-insensitive; trailing dot
    /// ignored).
    pub fn matches(&self, mx_host: &str) -> bool {
        let host = mx_host.strip_suffix('.').unwrap_or(mx_host);
        !host.is_empty() && self.mx.iter().any(|pattern| pattern_matches(pattern, host))
    }
}

/// Whether `host` (without a trailing dot) matches one mx pattern.
fn pattern_matches(pattern: &str, host: &str) -> bool {
    let pattern = pattern.strip_suffix('.').unwrap_or(pattern);
    let Some(parent) = pattern.strip_prefix("*.") else {
        return pattern.eq_ignore_ascii_case(host);
    };
    // `host` must be `<label>.<parent>`, with exactly one label, non-empty.
    let Some(cut) = host.len().checked_sub(parent.len() + 1) else {
        return false;
    };
    let (label, rest) = (host.get(..cut), host.get(cut..));
    match (label, rest) {
        (Some(label), Some(rest)) => {
            !label.is_empty()
                && !label.contains(['.', '*'])
                && rest.starts_with('.')
                && rest[1..].eq_ignore_ascii_case(parent)
        }
        _ => false,
    }
}

/// The fields of a policy file as they are read.
#[derive(Default)]
struct Fields {
    version: Option<String>,
    mode: Option<Mode>,
    max_age: Option<u64>,
    mx: Vec<String>,
}

impl Fields {
    /// One `key: value` line (RFC 8461 3.2: `field-delim = ":" *WSP`, trailing WSP allowed).
    fn add(&mut self, line: &str) -> Result<(), String> {
        let (key, value) = line.split_once(':').ok_or("not a \"key: value\" field")?;
        let value = value.trim_matches(is_wsp);
        match key {
            "version" => set_once(&mut self.version, "version", value.to_string()),
            "mode" => set_once(&mut self.mode, "mode", parse_mode(value)?),
            "max_age" => set_once(&mut self.max_age, "max_age", parse_max_age(value)?),
            "mx" => {
                self.mx.push(parse_mx(value)?);
                Ok(())
            }
            _ if is_ext_name(key) && !value.is_empty() && !value.chars().any(char::is_control) => Ok(()),
            _ => Err(format!("malformed field {:?}", truncated(line))),
        }
    }

    fn finish(self, id: &str) -> Result<Policy, String> {
        match self.version.as_deref() {
            Some("STSv1") => {}
            Some(other) => return Err(format!("unsupported version {:?}", truncated(other))),
            None => return Err("no version field".into()),
        }
        let mode = self.mode.ok_or("no mode field")?;
        let max_age = self.max_age.ok_or("no max_age field")?;
        if self.mx.is_empty() && mode != Mode::None {
            return Err("no mx field".into());
        }
        Ok(Policy {
            id: id.to_string(),
            mode,
            mx: self.mx,
            max_age: Duration::from_secs(max_age),
        })
    }
}

fn set_once<T>(slot: &mut Option<T>, key: &str, value: T) -> Result<(), String> {
    if slot.is_some() {
        return Err(format!("{key} given twice"));
    }
    *slot = Some(value);
    Ok(())
}

fn parse_mode(value: &str) -> Result<Mode, String> {
    match value {
        "enforce" => Ok(Mode::Enforce),
        "testing" => Ok(Mode::Testing),
        "none" => Ok(Mode::None),
        other => Err(format!("unknown mode {:?}", truncated(other))),
    }
}

/// `max_age`: 1 to 10 digits, at most [`MAX_AGE_LIMIT`].
fn parse_max_age(value: &str) -> Result<u64, String> {
    let bad = || format!("bad max_age {:?}", truncated(value));
    if value.is_empty() || value.len() > 10 || !value.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    let secs: u64 = value.parse().map_err(|_| bad())?;
    if secs > MAX_AGE_LIMIT {
        return Err(format!("max_age {secs} is above {MAX_AGE_LIMIT}"));
    }
    Ok(secs)
}

/// An mx pattern: `["*."] Domain`, returned in lower case without a trailing dot.
fn parse_mx(value: &str) -> Result<String, String> {
    let bad = || format!("bad mx pattern {:?}", truncated(value));
    let name = value.strip_suffix('.').unwrap_or(value);
    let domain = name.strip_prefix("*.").unwrap_or(name);
    if !is_domain(domain) {
        return Err(bad());
    }
    Ok(name.to_ascii_lowercase())
}

/// A domain name of letter-digit-hyphen labels (RFC 5321 `Domain`), at most 253 octets.
pub(super) fn is_domain(name: &str) -> bool {
    let label_ok = |l: &str| {
        (1..=63).contains(&l.len())
            && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    !name.is_empty() && name.len() <= 253 && name.split('.').all(label_ok)
}

/// `sts-policy-ext-name = (ALPHA / DIGIT) *31(ALPHA / DIGIT / "_" / "-" / ".")`.
fn is_ext_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    bytes.next().is_some_and(|b| b.is_ascii_alphanumeric())
        && name.len() <= 32
        && bytes.all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
}

fn is_wsp(c: char) -> bool {
    c == ' ' || c == '\t'
}

/// At most 64 characters of `s`, for error messages about text a remote party chose.
fn truncated(s: &str) -> String {
    s.chars().take(64).collect()
}

/// Parses the `_mta-sts.<domain>` TXT record ("v=STSv1; id=...;"), returning the id. RFC 8461 3.1
/// rules (exactly one STSv1 record, else none).
///
/// Each item of `records` is one TXT record with its character-strings already joined without
/// spaces (RFC 8461 3.1). Records that do not start with `v=STSv1` are discarded; if not exactly
/// one is left, or it is malformed (no `id`, an `id` that is not 1 to 32 letters and digits, a
/// bad extension field), the domain has no policy to look for.
pub fn parse_txt(records: &[String]) -> Option<String> {
    let mut sts = records.iter().filter(|r| is_sts_record(r));
    match (sts.next(), sts.next()) {
        (Some(record), None) => txt_id(record),
        _ => None,
    }
}

/// Whether a TXT record claims to be an MTA-STS one: `v=STSv1` followed by a delimiter or nothing.
fn is_sts_record(record: &str) -> bool {
    record
        .strip_prefix("v=STSv1")
        .is_some_and(|rest| rest.is_empty() || rest.starts_with([';', ' ', '\t']))
}

/// The id of one `v=STSv1` record:
/// `sts-version 1*(sts-field-delim sts-field) [sts-field-delim]`, with `sts-field-delim = *WSP ";" *WSP`.
fn txt_id(record: &str) -> Option<String> {
    let mut fields: Vec<&str> = record.split(';').map(|f| f.trim_matches(is_wsp)).collect();
    if fields.last() == Some(&"") {
        fields.pop();
    }
    let (version, rest) = fields.split_first()?;
    if *version != "v=STSv1" {
        return None;
    }
    let mut id = None;
    for field in rest {
        let (name, value) = field.split_once('=')?;
        if name == "id" {
            let valid = (1..=32).contains(&value.len()) && value.bytes().all(|b| b.is_ascii_alphanumeric());
            if !valid || id.is_some() {
                return None;
            }
            id = Some(value.to_string());
        } else if !is_ext_name(name) || !is_txt_ext_value(value) {
            return None;
        }
    }
    id
}

/// `sts-ext-value = 1*(%x21-3A / %x3C / %x3E-7E)`: visible ASCII except `;` and `=`.
fn is_txt_ext_value(value: &str) -> bool {
    !value.is_empty() && value.bytes().all(|b| b.is_ascii_graphic() && b != b';' && b != b'=')
}
