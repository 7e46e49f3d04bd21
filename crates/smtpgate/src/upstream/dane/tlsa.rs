//! TLSA records (RFC 6698) as DANE for SMTP uses them (RFC 7672): which are usable, and whether
//! a certificate matches one.

use aws_lc_rs::digest;

/// Certificate usage DANE-TA(2): the record names a trust anchor of the server's chain.
pub const DANE_TA: u8 = 2;
/// Certificate usage DANE-EE(3): the record names the server's own certificate or key.
pub const DANE_EE: u8 = 3;
/// Selector Cert(0): the whole certificate (DER).
pub const SELECTOR_CERT: u8 = 0;
/// Selector SPKI(1): the certificate's SubjectPublicKeyInfo (DER).
pub const SELECTOR_SPKI: u8 = 1;
/// Matching type Full(0): the selected data itself.
pub const MATCH_FULL: u8 = 0;
/// Matching type SHA2-256(1).
pub const MATCH_SHA256: u8 = 1;
/// Matching type SHA2-512(2).
pub const MATCH_SHA512: u8 = 2;

/// One TLSA record: `usage selector matching data`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Tlsa {
    pub usage: u8,
    pub selector: u8,
    pub matching: u8,
    pub data: Vec<u8>,
}

impl Tlsa {
    /// Whether DANE for SMTP can use the record (RFC 7672 2.2 and 3.1): usage DANE-TA(2) or
    /// DANE-EE(3) (PKIX-TA(0) and PKIX-EE(1) are unusable for SMTP), a known selector and matching
    /// type, and a digest of the right length.
    pub fn is_usable(&self) -> bool {
        let usage = matches!(self.usage, DANE_TA | DANE_EE);
        let selector = matches!(self.selector, SELECTOR_CERT | SELECTOR_SPKI);
        let data = match self.matching {
            MATCH_FULL => !self.data.is_empty(),
            MATCH_SHA256 => self.data.len() == 32,
            MATCH_SHA512 => self.data.len() == 64,
            _ => false,
        };
        usage && selector && data
    }

    /// Whether `cert` (DER) is what the record's selector and matching type describe. The usage
    /// is not looked at: which certificate of a chain must match is the caller's to know.
    pub fn matches(&self, cert: &[u8]) -> bool {
        let selected = match self.selector {
            SELECTOR_CERT => cert,
            SELECTOR_SPKI => match spki(cert) {
                Some(spki) => spki,
                None => return false,
            },
            _ => return false,
        };
        match self.matching {
            MATCH_FULL => selected == self.data.as_slice(),
            MATCH_SHA256 => digest::digest(&digest::SHA256, selected).as_ref() == self.data.as_slice(),
            MATCH_SHA512 => digest::digest(&digest::SHA512, selected).as_ref() == self.data.as_slice(),
            _ => false,
        }
    }
}

/// The SubjectPublicKeyInfo of a DER certificate (RFC 5280 4.1), with its tag and length: the
/// seventh element of the TBSCertificate, or the sixth when the version is left out.
pub fn spki(cert: &[u8]) -> Option<&[u8]> {
    let certificate = sequence(cert)?;
    let tbs = sequence(certificate.contents)?;
    let mut rest = tbs.contents;
    let first = element(rest)?;
    if first.tag == 0xa0 {
        rest = first.rest;
    }
    // serialNumber, signature, issuer, validity, subject
    for _ in 0..5 {
        rest = element(rest)?.rest;
    }
    let spki = element(rest)?;
    (spki.tag == SEQUENCE).then_some(spki.whole)
}

const SEQUENCE: u8 = 0x30;

/// One DER element.
struct Element<'a> {
    tag: u8,
    /// Tag, length and contents.
    whole: &'a [u8],
    contents: &'a [u8],
    /// What follows the element.
    rest: &'a [u8],
}

/// The SEQUENCE at the start of `input`.
fn sequence(input: &[u8]) -> Option<Element<'_>> {
    element(input).filter(|e| e.tag == SEQUENCE)
}

/// The DER element at the start of `input` (single-byte tags, definite lengths up to 4 bytes).
fn element(input: &[u8]) -> Option<Element<'_>> {
    let (&tag, rest) = input.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let len = rest[..n].iter().fold(0usize, |acc, &b| (acc << 8) | usize::from(b));
        (len, &rest[n..])
    };
    if rest.len() < len {
        return None;
    }
    let header = input.len() - rest.len();
    Some(Element {
        tag,
        whole: &input[..header + len],
        contents: &rest[..len],
        rest: &rest[len..],
    })
}
