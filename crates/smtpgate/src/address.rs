//! Envelope addresses, typed from the session to the spool.
//!
//! The session parses `MAIL FROM` and `RCPT TO` with `smtpgate_proto`'s RFC 5321 grammar and keeps
//! the result as an [`Address`] (split once at its `@`) inside a [`Sender`] or a recipient. The null
//! sender `<>` is its own case, [`Sender::Null`], never an empty string that code must remember to
//! test. Addresses from elsewhere (configuration, alias files, filters, the admin API) go through
//! [`Address::parse`], the same grammar.
//!
//! The spool stores an address as its text (the null sender as the empty string), so records are
//! the same bytes as before these types existed.

use std::fmt;
use std::ops::Deref;

use smtpgate_proto::{ForwardPath, Mailbox, ReversePath};

/// `local@domain` as the client wrote it (case kept), or the bare `postmaster` RFC 5321 lets a
/// recipient be. Dereferences to its text.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Address {
    text: String,
    /// Offset of the `@` between local part and domain; `None` for a bare `postmaster`.
    at: Option<usize>,
}

/// Why a text is not an address.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not an address ({0})")]
pub struct AddressError(&'static str);

impl Address {
    /// Parses a bare `local@domain` (no angle brackets) with the grammar of `RCPT TO`, or the bare
    /// `postmaster` (any case).
    pub fn parse(text: &str) -> Result<Address, AddressError> {
        if text.eq_ignore_ascii_case("postmaster") {
            return Ok(Address::postmaster(text));
        }
        Mailbox::parse(text).map(|m| Address::from(&m)).map_err(AddressError)
    }

    /// An address checked before: read back from the spool (which only holds what the session or
    /// [`Address::parse`] accepted), named by configuration checked at load, or made by smtpgate
    /// (SRS). It is split at its last `@`, without a second parse.
    pub fn trusted(text: String) -> Address {
        let at = text.rfind('@');
        Address { text, at }
    }

    fn postmaster(text: &str) -> Address {
        Address {
            text: text.to_owned(),
            at: None,
        }
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The local part as written (quoted if it needed quotes).
    pub fn local_part(&self) -> &str {
        match self.at {
            Some(at) => &self.text[..at],
            None => &self.text,
        }
    }

    /// The domain as written (`[1.2.3.4]` for a literal); empty for a bare `postmaster`.
    pub fn domain_part(&self) -> &str {
        match self.at {
            Some(at) => &self.text[at + 1..],
            None => "",
        }
    }

    /// The domain, lowercased (empty for a bare `postmaster`).
    pub fn domain(&self) -> String {
        self.domain_part().to_ascii_lowercase()
    }

    pub fn into_string(self) -> String {
        self.text
    }
}

impl From<&Mailbox> for Address {
    fn from(m: &Mailbox) -> Address {
        let text = m.to_string();
        let at = text.rfind('@');
        Address { text, at }
    }
}

impl From<&ForwardPath> for Address {
    fn from(path: &ForwardPath) -> Address {
        match path {
            ForwardPath::Postmaster => Address::postmaster("postmaster"),
            ForwardPath::Path(m) => Address::from(m),
        }
    }
}

impl Deref for Address {
    type Target = str;
    fn deref(&self) -> &str {
        &self.text
    }
}

impl AsRef<str> for Address {
    fn as_ref(&self) -> &str {
        &self.text
    }
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl PartialEq<str> for Address {
    fn eq(&self, other: &str) -> bool {
        self.text == other
    }
}

impl PartialEq<&str> for Address {
    fn eq(&self, other: &&str) -> bool {
        self.text == *other
    }
}

/// The reverse path of a message: an address, or `<>` (bounces and other reports, which must
/// never be answered with mail: RFC 5321 4.5.5).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub enum Sender {
    #[default]
    Null,
    Mailbox(Address),
}

impl Sender {
    pub fn is_null(&self) -> bool {
        matches!(self, Sender::Null)
    }

    /// The address, unless this is the null sender.
    pub fn address(&self) -> Option<&Address> {
        match self {
            Sender::Null => None,
            Sender::Mailbox(a) => Some(a),
        }
    }

    /// The text of the reverse path without its brackets: empty for `<>`. For logs, headers and
    /// the wire, where `<>` is written as `<` + this + `>`.
    pub fn as_str(&self) -> &str {
        self.address().map_or("", Address::as_str)
    }

    /// The sender's domain, lowercased; empty for `<>`.
    pub fn domain(&self) -> String {
        self.address().map(Address::domain).unwrap_or_default()
    }

    /// A sender read back from the spool: the empty text is `<>`.
    pub fn from_stored(text: String) -> Sender {
        if text.is_empty() {
            Sender::Null
        } else {
            Sender::Mailbox(Address::trusted(text))
        }
    }

    /// Parses a sender given as text (`""` or `<>` for the null sender).
    pub fn parse(text: &str) -> Result<Sender, AddressError> {
        match text {
            "" | "<>" => Ok(Sender::Null),
            _ => Mailbox::parse(text)
                .map(|m| Sender::Mailbox(Address::from(&m)))
                .map_err(AddressError),
        }
    }
}

impl From<&ReversePath> for Sender {
    fn from(path: &ReversePath) -> Sender {
        match path {
            ReversePath::Null => Sender::Null,
            ReversePath::Path(m) => Sender::Mailbox(Address::from(m)),
        }
    }
}

impl From<Address> for Sender {
    fn from(a: Address) -> Sender {
        Sender::Mailbox(a)
    }
}

impl fmt::Display for Sender {
    /// As [`Sender::as_str`]: empty for `<>`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_address_is_split_once_at_its_at() {
        let a = Address::parse("\"a@b\"@Example.TEST").unwrap();
        assert_eq!(a.local_part(), "\"a@b\"");
        assert_eq!(a.domain_part(), "Example.TEST");
        assert_eq!(a.domain(), "example.test");
        assert_eq!(&*a, "\"a@b\"@Example.TEST");
        let literal = Address::parse("u@[192.0.2.1]").unwrap();
        assert_eq!(literal.domain_part(), "[192.0.2.1]");
    }

    #[test]
    fn a_bare_postmaster_has_no_domain() {
        let p = Address::parse("PostMaster").unwrap();
        assert_eq!((p.local_part(), p.domain_part()), ("PostMaster", ""));
        assert_eq!(Address::from(&ForwardPath::Postmaster).as_str(), "postmaster");
    }

    #[test]
    fn text_that_is_not_an_address_is_refused() {
        for bad in [
            "",
            "user",
            "@example.test",
            "a b@example.test",
            "user@",
            "a@b@c.test",
            "<a@b.test>",
        ] {
            assert!(Address::parse(bad).is_err(), "{bad:?} parsed");
        }
    }

    #[test]
    fn the_null_sender_is_its_own_case_and_stores_as_empty_text() {
        let null = Sender::from(&ReversePath::Null);
        assert!(null.is_null());
        assert_eq!(
            (null.address(), null.as_str(), null.domain()),
            (None, "", String::new())
        );
        assert_eq!(Sender::from_stored(String::new()), Sender::Null);
        assert_eq!(Sender::parse("<>").unwrap(), Sender::Null);
        let s = Sender::from(&ReversePath::parse("<Ann@Example.test>").unwrap());
        assert!(!s.is_null());
        assert_eq!(s.as_str(), "Ann@Example.test");
        assert_eq!(s.domain(), "example.test");
        assert_eq!(Sender::from_stored(s.as_str().to_owned()), s);
    }
}
