//! ESMTP parameters of MAIL and RCPT: SIZE (RFC 1870), BODY (RFC 6152, RFC 3030), SMTPUTF8
//! (RFC 6531), RET/ENVID/NOTIFY/ORCPT (RFC 3461) and AUTH (RFC 4954).

use super::{CommandError, Result};
use crate::xtext;

/// `BODY=` (RFC 6152, RFC 3030).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Body {
    SevenBit,
    EightBitMime,
    BinaryMime,
}

/// `RET=` (RFC 3461).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ret {
    Full,
    Hdrs,
}

/// `NOTIFY=` (RFC 3461): `never` excludes the others.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Notify {
    pub never: bool,
    pub success: bool,
    pub failure: bool,
    pub delay: bool,
}

/// Parameters of `MAIL FROM`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MailParams {
    pub size: Option<u64>,
    pub body: Option<Body>,
    pub smtputf8: bool,
    pub ret: Option<Ret>,
    /// The raw xtext as sent.
    pub envid: Option<String>,
    /// The raw `AUTH=` value as sent (xtext mailbox or `<>`).
    pub auth: Option<String>,
}

/// Parameters of `RCPT TO`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RcptParams {
    pub notify: Option<Notify>,
    /// The raw `addr-type;xtext` as sent, e.g. `rfc822;x@y`.
    pub orcpt: Option<String>,
}

/// Longest ENVID and ORCPT values, in characters (RFC 3461 4.2 and 4.4 allow 100 and 500).
const MAX_ENVID: usize = 100;
const MAX_ORCPT: usize = 500;

/// One `keyword[=value]` word.
struct Param<'a> {
    keyword: &'a str,
    value: Option<&'a str>,
}

pub(super) fn parse_mail_params(text: &str) -> Result<MailParams> {
    let mut p = MailParams::default();
    for param in split_params(text)? {
        apply_mail_param(&mut p, &param)?;
    }
    Ok(p)
}

pub(super) fn parse_rcpt_params(text: &str) -> Result<RcptParams> {
    let mut p = RcptParams::default();
    for param in split_params(text)? {
        match param.keyword.to_ascii_uppercase().as_str() {
            "NOTIFY" => set_once(&mut p.notify, parse_notify(value(&param)?)?)?,
            "ORCPT" => set_once(&mut p.orcpt, parse_orcpt(value(&param)?)?)?,
            _ => return Err(CommandError::UnknownParameter(param.keyword.to_owned())),
        }
    }
    Ok(p)
}

fn apply_mail_param(p: &mut MailParams, param: &Param<'_>) -> Result<()> {
    match param.keyword.to_ascii_uppercase().as_str() {
        "SIZE" => set_once(&mut p.size, parse_size(value(param)?)?),
        "BODY" => set_once(&mut p.body, parse_body(value(param)?)?),
        "RET" => set_once(&mut p.ret, parse_ret(value(param)?)?),
        "ENVID" => set_once(&mut p.envid, parse_envid(value(param)?)?),
        "AUTH" => set_once(&mut p.auth, parse_auth(value(param)?)?),
        "SMTPUTF8" => set_flag(&mut p.smtputf8, param),
        _ => Err(CommandError::UnknownParameter(param.keyword.to_owned())),
    }
}

fn split_params(text: &str) -> Result<Vec<Param<'_>>> {
    text.split(' ').filter(|w| !w.is_empty()).map(parse_param).collect()
}

/// RFC 5321 `esmtp-param = esmtp-keyword ["=" esmtp-value]`.
fn parse_param(word: &str) -> Result<Param<'_>> {
    let (keyword, value) = match word.split_once('=') {
        Some((k, v)) => (k, Some(v)),
        None => (word, None),
    };
    let keyword_ok = keyword.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric())
        && keyword.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
    if !keyword_ok {
        return Err(CommandError::Syntax("bad parameter name"));
    }
    if value.is_some_and(|v| v.is_empty() || v.contains('=')) {
        return Err(CommandError::Syntax("bad parameter value"));
    }
    Ok(Param { keyword, value })
}

fn value<'a>(param: &Param<'a>) -> Result<&'a str> {
    param.value.ok_or(CommandError::Syntax("parameter needs a value"))
}

fn set_once<T>(slot: &mut Option<T>, v: T) -> Result<()> {
    if slot.is_some() {
        return Err(CommandError::Syntax("duplicate parameter"));
    }
    *slot = Some(v);
    Ok(())
}

fn set_flag(flag: &mut bool, param: &Param<'_>) -> Result<()> {
    if param.value.is_some() {
        return Err(CommandError::Syntax("SMTPUTF8 takes no value"));
    }
    if *flag {
        return Err(CommandError::Syntax("duplicate parameter"));
    }
    *flag = true;
    Ok(())
}

/// Decimal digits that fit in a `u64` (at most 20 digits, no sign).
pub(super) fn parse_number(s: &str) -> Option<u64> {
    if s.is_empty() || s.len() > 20 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

fn parse_size(v: &str) -> Result<u64> {
    parse_number(v).ok_or(CommandError::Syntax("bad SIZE value"))
}

fn parse_body(v: &str) -> Result<Body> {
    match v.to_ascii_uppercase().as_str() {
        "7BIT" => Ok(Body::SevenBit),
        "8BITMIME" => Ok(Body::EightBitMime),
        "BINARYMIME" => Ok(Body::BinaryMime),
        _ => Err(CommandError::Syntax("bad BODY value")),
    }
}

fn parse_ret(v: &str) -> Result<Ret> {
    match v.to_ascii_uppercase().as_str() {
        "FULL" => Ok(Ret::Full),
        "HDRS" => Ok(Ret::Hdrs),
        _ => Err(CommandError::Syntax("bad RET value")),
    }
}

fn parse_envid(v: &str) -> Result<String> {
    if v.len() > MAX_ENVID || !xtext::is_valid(v) {
        return Err(CommandError::Syntax("bad ENVID value"));
    }
    Ok(v.to_owned())
}

/// `AUTH=<>` or an xtext-encoded mailbox (RFC 4954 5).
fn parse_auth(v: &str) -> Result<String> {
    if v != "<>" && !xtext::is_valid(v) {
        return Err(CommandError::Syntax("bad AUTH value"));
    }
    Ok(v.to_owned())
}

/// `NEVER`, or a comma list of `SUCCESS`, `FAILURE`, `DELAY`.
fn parse_notify(v: &str) -> Result<Notify> {
    let mut n = Notify::default();
    for item in v.split(',') {
        match item.to_ascii_uppercase().as_str() {
            "NEVER" => n.never = true,
            "SUCCESS" => n.success = true,
            "FAILURE" => n.failure = true,
            "DELAY" => n.delay = true,
            _ => return Err(CommandError::Syntax("bad NOTIFY value")),
        }
    }
    if n.never && (n.success || n.failure || n.delay) {
        return Err(CommandError::Syntax("NOTIFY=NEVER cannot be combined"));
    }
    Ok(n)
}

/// `addr-type ";" xtext`, e.g. `rfc822;user+40example.com`.
fn parse_orcpt(v: &str) -> Result<String> {
    let Some((addr_type, addr)) = v.split_once(';') else {
        return Err(CommandError::Syntax("ORCPT needs addr-type;address"));
    };
    let type_ok = !addr_type.is_empty() && addr_type.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
    if !type_ok || addr.is_empty() || v.len() > MAX_ORCPT || !xtext::is_valid(addr) {
        return Err(CommandError::Syntax("bad ORCPT value"));
    }
    Ok(v.to_owned())
}
