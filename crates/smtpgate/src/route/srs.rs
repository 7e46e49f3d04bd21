//! The Sender Rewriting Scheme, so that forwarded mail passes SPF and its bounces still find the sender.
//!
//! When we forward mail from `user@orig.example`, the envelope sender becomes an address at our own SRS
//! domain that encodes the original, a timestamp and a hash: Shevek's guarded scheme, in the exact
//! format of libsrs2 and postsrsd, so that an address one of them made reverses here and back:
//!
//! ```text
//! user@orig.example  →  SRS0=HHHH=TT=orig.example=user@srs.example
//! ```
//!
//! - `HHHH` is HMAC-SHA1, keyed with the secret's bytes, over the lowercased timestamp, domain and
//!   local part written one after the other, in base64, cut to [`DEFAULT_HASH_LENGTH`] characters.
//!   We write the standard base64 alphabet (`+` and `/`), as libsrs2 and Python's srslib do; on input
//!   the comparison ignores case and also takes base64url (`-` for `+`, `_` for `/`), which postsrsd 2
//!   writes. Case is ignored because some mail systems lowercase addresses.
//! - `TT` is the day number modulo 1024 in two base32 characters (`A`..`Z`, `2`..`7`).
//!
//! A bounce to that address is reversed to `user@orig.example` if the hash verifies and the timestamp is
//! at most [`MAX_AGE_DAYS`] old, so the address cannot be used to relay mail to arbitrary recipients.
//! Forwarding an address that some other forwarder already rewrote gives SRS1, which names that
//! forwarder and keeps its SRS0 part intact: a bounce goes back to it, and it reverses its own part.
//!
//! The format's hash input does not separate its fields, so a captured address still verifies with
//! characters moved between its domain and its local part (`=orig.example=user` as
//! `=orig.exampleu=ser`). That is the price of interoperating; such an address can only reach
//! `ser@orig.exampleu`, a name the attacker does not choose freely, and only within the timestamp's
//! window. Routing reverses only bounces (the null sender), which narrows it further.

use aws_lc_rs::hmac;
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;

/// How many days a rewritten address can be reversed (libsrs2's default).
pub const MAX_AGE_DAYS: u64 = 21;

pub use crate::config::route::{
    SRS_DEFAULT_HASH_LENGTH as DEFAULT_HASH_LENGTH, SRS_MAX_HASH_LENGTH as MAX_HASH_LENGTH,
};

/// The timestamp's alphabet: five bits a character, as in libsrs2.
const BASE32: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
const SECONDS_PER_DAY: u64 = 86_400;
/// The timestamp wraps around after this many days.
const TIMESTAMP_DAYS: u64 = 1024;

/// Rewrites senders into, and bounces back out of, addresses at one SRS domain.
#[derive(Clone)]
pub struct Srs {
    key: hmac::Key,
    /// Lowercase.
    domain: String,
    hash_length: usize,
}

#[derive(Debug, PartialEq, Eq)]
pub enum SrsError {
    /// The hash does not match: the address was not made with our secret, or was altered.
    BadHash,
    /// Older than [`MAX_AGE_DAYS`].
    Expired,
    /// An `SRS0`/`SRS1` address missing a field.
    Malformed,
}

impl std::fmt::Display for SrsError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            SrsError::BadHash => "SRS address has a bad hash",
            SrsError::Expired => "SRS address has expired",
            SrsError::Malformed => "malformed SRS address",
        })
    }
}

impl std::error::Error for SrsError {}

impl std::fmt::Debug for Srs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Not the key.
        f.debug_struct("Srs")
            .field("domain", &self.domain)
            .finish_non_exhaustive()
    }
}

impl Srs {
    /// With the default hash length.
    pub fn new(secret: &str, domain: &str) -> Srs {
        Srs::with_hash_length(secret, domain, DEFAULT_HASH_LENGTH)
    }

    /// `hash_length` is clamped to 1..=[`MAX_HASH_LENGTH`] (the config allows 4 and more).
    pub fn with_hash_length(secret: &str, domain: &str, hash_length: usize) -> Srs {
        Srs {
            key: hmac::Key::new(hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY, secret.as_bytes()),
            domain: domain.to_lowercase(),
            hash_length: hash_length.clamp(1, MAX_HASH_LENGTH),
        }
    }

    /// The address to use as envelope sender when forwarding mail from `sender`.
    ///
    /// `user@orig.example` becomes `SRS0=HHHH=TT=orig.example=user@<domain>`; an SRS0 address at another
    /// domain becomes `SRS1=HHHH=otherdomain==HHHH=TT=orig=user@<domain>`, and an SRS1 address keeps its
    /// first forwarder and gets our hash. The null sender, an address without a domain and an address
    /// already at our domain are returned unchanged.
    pub fn forward(&self, sender: &str, now_unix: u64) -> String {
        let Some((local, domain)) = sender.rsplit_once('@') else {
            return sender.to_string();
        };
        if local.is_empty() || domain.is_empty() || domain.eq_ignore_ascii_case(&self.domain) {
            return sender.to_string();
        }
        if let Some(rest) = strip_tag(local, "SRS0") {
            // `rest` keeps its separator: SRS1=HHHH=domain==HHHH=TT=...
            return self.srs1(domain, rest);
        }
        if let Some(rest) = strip_tag(local, "SRS1")
            && let Some((_hash, first_hop, srs0)) = split_srs1(rest)
        {
            return self.srs1(first_hop, srs0);
        }
        let tt = timestamp(now_unix);
        let hash = self.hash(&[&tt, domain, local]);
        format!("SRS0={hash}={tt}={domain}={local}@{}", self.domain)
    }

    /// For an address at our SRS domain: `None` if it is not SRS; `Some(Ok(original))` if the hash verifies
    /// and the timestamp is within [`MAX_AGE_DAYS`]; `Some(Err(..))` otherwise. An SRS1 address gives the
    /// SRS0 address at the forwarder it names.
    pub fn reverse(&self, address: &str, now_unix: u64) -> Option<Result<String, SrsError>> {
        let (local, domain) = address.rsplit_once('@')?;
        if !domain.eq_ignore_ascii_case(&self.domain) {
            return None;
        }
        if let Some(rest) = strip_tag(local, "SRS0") {
            return Some(self.reverse_srs0(&rest[1..], now_unix));
        }
        let rest = strip_tag(local, "SRS1")?;
        Some(self.reverse_srs1(rest))
    }

    /// `rest` is what follows `SRS0=`: `HHHH=TT=domain=user`.
    fn reverse_srs0(&self, rest: &str, now_unix: u64) -> Result<String, SrsError> {
        let mut fields = rest.splitn(4, '=');
        let (Some(hash), Some(tt), Some(domain), Some(user)) =
            (fields.next(), fields.next(), fields.next(), fields.next())
        else {
            return Err(SrsError::Malformed);
        };
        if domain.is_empty() || user.is_empty() || tt.len() != 2 {
            return Err(SrsError::Malformed);
        }
        self.verify(hash, &[tt, domain, user])?;
        let stamped = decode_timestamp(tt).ok_or(SrsError::Malformed)?;
        let age = (days(now_unix) + TIMESTAMP_DAYS - stamped) % TIMESTAMP_DAYS;
        if age > MAX_AGE_DAYS {
            return Err(SrsError::Expired);
        }
        Ok(format!("{user}@{domain}"))
    }

    /// `rest` is what follows `SRS1`: `=HHHH=firsthop==HHHH=TT=orig=user`.
    fn reverse_srs1(&self, rest: &str) -> Result<String, SrsError> {
        let (hash, first_hop, srs0) = split_srs1(rest).ok_or(SrsError::Malformed)?;
        self.verify(hash, &[first_hop, srs0])?;
        Ok(format!("SRS0{srs0}@{first_hop}"))
    }

    /// `srs0` is the part of an SRS0 local part after `SRS0`, separator included.
    fn srs1(&self, first_hop: &str, srs0: &str) -> String {
        let hash = self.hash(&[first_hop, srs0]);
        format!("SRS1={hash}={first_hop}={srs0}@{}", self.domain)
    }

    /// As libsrs2 checks: at least as long as ours, its first characters equal to ours but for case and
    /// the base64url spelling of `+` and `/`. In constant time, though a few bits would hardly reward a
    /// timing attack.
    fn verify(&self, hash: &str, fields: &[&str]) -> Result<(), SrsError> {
        let expected = self.hash(fields);
        let given = hash.as_bytes();
        if given.len() < expected.len() {
            return Err(SrsError::BadHash);
        }
        let differ =
            given
                .iter()
                .zip(expected.bytes())
                .fold(0u8, |diff, (&a, b)| match (fold_base64(a), fold_base64(b)) {
                    (Some(a), Some(b)) => diff | (a ^ b),
                    _ => diff | 1,
                });
        if differ == 0 { Ok(()) } else { Err(SrsError::BadHash) }
    }

    /// The first `hash_length` characters of the base64 HMAC-SHA1 of the fields, lowercased (ASCII) and
    /// joined without separators, as libsrs2 computes it.
    fn hash(&self, fields: &[&str]) -> String {
        let mut mac = hmac::Context::with_key(&self.key);
        for field in fields {
            mac.update(field.to_ascii_lowercase().as_bytes());
        }
        let mut hash = B64.encode(mac.sign().as_ref());
        hash.truncate(self.hash_length);
        hash
    }
}

/// A base64 or base64url character with case and spelling folded away; `None` for any other byte.
fn fold_base64(c: u8) -> Option<u8> {
    match c {
        b'A'..=b'Z' => Some(c.to_ascii_lowercase()),
        b'a'..=b'z' | b'0'..=b'9' => Some(c),
        b'+' | b'-' => Some(b'-'),
        b'/' | b'_' => Some(b'_'),
        _ => None,
    }
}

/// What follows `tag` and its separator (`=`, `+` or `-`), the separator included; case-insensitive.
fn strip_tag<'a>(local: &'a str, tag: &str) -> Option<&'a str> {
    let head = local.get(..tag.len())?;
    let rest = &local[tag.len()..];
    (head.eq_ignore_ascii_case(tag) && rest.starts_with(['=', '+', '-'])).then_some(rest)
}

/// Splits `=HHHH=firsthop==HHHH=...` (after the `SRS1` tag) into the hash, the first hop and its SRS0
/// part, which keeps its separator.
fn split_srs1(rest: &str) -> Option<(&str, &str, &str)> {
    let mut fields = rest[1..].splitn(3, '=');
    let (hash, first_hop, srs0) = (fields.next()?, fields.next()?, fields.next()?);
    let valid = !first_hop.is_empty() && srs0.len() > 1 && srs0.starts_with(['=', '+', '-']);
    valid.then_some((hash, first_hop, srs0))
}

fn days(now_unix: u64) -> u64 {
    now_unix / SECONDS_PER_DAY % TIMESTAMP_DAYS
}

fn timestamp(now_unix: u64) -> String {
    let d = days(now_unix) as usize;
    [BASE32[d >> 5], BASE32[d & 31]].iter().map(|&b| b as char).collect()
}

fn decode_timestamp(tt: &str) -> Option<u64> {
    let value = |c: u8| {
        BASE32
            .iter()
            .position(|&b| b == c.to_ascii_uppercase())
            .map(|v| v as u64)
    };
    match tt.as_bytes() {
        [hi, lo] => Some(value(*hi)? << 5 | value(*lo)?),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: u64 = SECONDS_PER_DAY;
    /// 2024-06-01, day 19875.
    const NOW: u64 = 1_717_200_000;

    fn srs() -> Srs {
        Srs::new("s3cret", "srs.example")
    }

    #[test]
    fn forward_format() {
        let forwarded = srs().forward("user@orig.example", NOW);
        let (local, domain) = forwarded.rsplit_once('@').unwrap();
        assert_eq!(domain, "srs.example");
        let fields: Vec<&str> = local.split('=').collect();
        assert_eq!(fields[0], "SRS0");
        assert_eq!(fields[1].len(), DEFAULT_HASH_LENGTH);
        // 19875 % 1024 = 419 = 13 * 32 + 3
        assert_eq!(fields[2], "ND");
        assert_eq!(fields[3..], ["orig.example", "user"]);
    }

    /// postsrsd's own unit test (tests/unit/test_srs2.c): secret `tops3cr3t` at 2020-01-01 00:01 UTC.
    #[test]
    fn same_address_as_postsrsd() {
        let s = Srs::new("tops3cr3t", "example.com");
        let now = 1_577_836_860;
        let expected = "SRS0=vmyz=2W=otherdomain.com=test@example.com";
        assert_eq!(s.forward("test@otherdomain.com", now), expected);
        assert_eq!(s.reverse(expected, now), Some(Ok("test@otherdomain.com".into())));
        assert_eq!(s.forward("test@example.com", now), "test@example.com");
    }

    /// What Python's srslib 0.1.5 makes with secret `s3cret` at [`NOW`]; the e2e test checks the same
    /// both ways against the library itself.
    #[test]
    fn same_addresses_as_srslib() {
        let s = srs();
        assert_eq!(
            s.forward("user@orig.example", NOW),
            "SRS0=FLIM=ND=orig.example=user@srs.example"
        );
        assert_eq!(
            s.forward("First.Last+tag@Orig.Example", NOW),
            "SRS0=Mkgp=ND=Orig.Example=First.Last+tag@srs.example"
        );
        assert_eq!(
            s.forward("SRS0=abcd=ND=orig.example=user@first.example", NOW),
            "SRS1=qKjD=first.example==abcd=ND=orig.example=user@srs.example"
        );
    }

    #[test]
    fn longer_hash_length() {
        let s = Srs::with_hash_length("s3cret", "srs.example", 8);
        let forwarded = s.forward("user@orig.example", NOW);
        assert!(forwarded.starts_with("SRS0=FLIM"), "{forwarded}");
        assert_eq!(forwarded.split('=').nth(1).unwrap().len(), 8);
        assert_eq!(s.reverse(&forwarded, NOW), Some(Ok("user@orig.example".into())));
        // Four characters no longer do.
        let short = srs().forward("user@orig.example", NOW);
        assert_eq!(s.reverse(&short, NOW), Some(Err(SrsError::BadHash)));
    }

    #[test]
    fn base64url_spelling_of_the_hash_is_accepted() {
        let s = srs();
        // Find a sender whose hash has a `+` or `/`, and write it as postsrsd 2 does.
        let (forwarded, hash) = (0..10_000)
            .map(|i| s.forward(&format!("u{i}@orig.example"), NOW))
            .find_map(|f| {
                let hash = f.split('=').nth(1).unwrap().to_string();
                hash.contains(['+', '/']).then_some((f, hash))
            })
            .expect("some hash has + or /");
        let url = hash.replace('+', "-").replace('/', "_");
        let rewritten = forwarded.replacen(&hash, &url, 1);
        assert!(matches!(s.reverse(&rewritten, NOW), Some(Ok(_))), "{rewritten}");
        let wrong = forwarded.replacen(&hash, &url.replace(['-', '_'], "."), 1);
        assert_eq!(s.reverse(&wrong, NOW), Some(Err(SrsError::BadHash)), "{wrong}");
    }

    #[test]
    fn round_trip() {
        let s = srs();
        for sender in [
            "user@orig.example",
            "First.Last+tag@Orig.Example",
            "a=b@x.test",
            "SRS0@x.test",
        ] {
            let forwarded = s.forward(sender, NOW);
            assert_eq!(
                s.reverse(&forwarded, NOW + DAY),
                Some(Ok(sender.to_string())),
                "{forwarded}"
            );
        }
    }

    #[test]
    fn round_trip_across_the_timestamp_wrap() {
        let s = srs();
        let before_wrap = 1023 * DAY;
        let forwarded = s.forward("user@orig.example", before_wrap);
        assert_eq!(
            s.reverse(&forwarded, before_wrap + 5 * DAY),
            Some(Ok("user@orig.example".into()))
        );
    }

    #[test]
    fn tampered_hash_is_bad() {
        let s = srs();
        let forwarded = s.forward("user@orig.example", NOW);
        let hash = &forwarded[5..9];
        let other = if hash.starts_with(['b', 'B']) { "c" } else { "b" };
        let tampered = format!("SRS0={other}{}", &forwarded[6..]);
        assert_eq!(s.reverse(&tampered, NOW), Some(Err(SrsError::BadHash)));
    }

    #[test]
    fn tampered_address_is_bad() {
        let s = srs();
        let forwarded = s.forward("user@orig.example", NOW);
        for tampered in [
            forwarded.replace("=user@", "=victim@"),
            forwarded.replace("=orig.example=", "=victim.example="),
        ] {
            assert_eq!(s.reverse(&tampered, NOW), Some(Err(SrsError::BadHash)), "{tampered}");
        }
        let other_secret = Srs::new("other", "srs.example");
        assert_eq!(other_secret.reverse(&forwarded, NOW), Some(Err(SrsError::BadHash)));
    }

    /// The format's known weakness (see the module docs): its hash input does not separate the fields.
    #[test]
    fn moving_characters_between_domain_and_local_part_keeps_the_hash() {
        let s = srs();
        let forwarded = s.forward("user@orig.example", NOW);
        let shifted = forwarded.replace("orig.example=user", "orig.exampleu=ser");
        assert_eq!(s.reverse(&shifted, NOW), Some(Ok("ser@orig.exampleu".into())));
    }

    #[test]
    fn old_timestamp_is_expired() {
        let s = srs();
        let forwarded = s.forward("user@orig.example", NOW);
        assert_eq!(
            s.reverse(&forwarded, NOW + MAX_AGE_DAYS * DAY),
            Some(Ok("user@orig.example".into()))
        );
        assert_eq!(
            s.reverse(&forwarded, NOW + (MAX_AGE_DAYS + 1) * DAY),
            Some(Err(SrsError::Expired))
        );
        // From the future (after the hash check, the same arithmetic).
        assert_eq!(s.reverse(&forwarded, NOW - DAY), Some(Err(SrsError::Expired)));
    }

    #[test]
    fn case_folded_address_still_verifies() {
        let s = srs();
        let forwarded = s.forward("User@Orig.Example", NOW);
        assert_eq!(
            s.reverse(&forwarded.to_lowercase(), NOW),
            Some(Ok("user@orig.example".into()))
        );
        assert_eq!(
            s.reverse(&forwarded.to_uppercase(), NOW),
            Some(Ok("USER@ORIG.EXAMPLE".into()))
        );
    }

    #[test]
    fn double_forwarding_gives_srs1_and_reverses_to_the_first_forwarder() {
        let first = Srs::new("first secret", "first.example");
        let second = srs();
        let once = first.forward("user@orig.example", NOW);
        let twice = second.forward(&once, NOW);
        let srs0_part = once.rsplit_once('@').unwrap().0.strip_prefix("SRS0").unwrap();
        assert!(twice.starts_with("SRS1="), "{twice}");
        assert!(
            twice.ends_with(&format!("=first.example={srs0_part}@srs.example")),
            "{twice}"
        );
        // A third forwarder keeps the first hop and its SRS0 part.
        let third = Srs::new("third secret", "third.example");
        let thrice = third.forward(&twice, NOW);
        assert!(
            thrice.ends_with(&format!("=first.example={srs0_part}@third.example")),
            "{thrice}"
        );
        assert_eq!(third.reverse(&thrice, NOW), Some(Ok(once.clone())));
        // The bounce goes back to the first forwarder, which reverses its own part.
        let back = second.reverse(&twice, NOW + DAY).unwrap().unwrap();
        assert_eq!(back, once);
        assert_eq!(first.reverse(&back, NOW + DAY), Some(Ok("user@orig.example".into())));
        let tampered = twice.replace("=first.example=", "=evil.example=");
        assert_eq!(second.reverse(&tampered, NOW), Some(Err(SrsError::BadHash)));
    }

    #[test]
    fn null_sender_and_our_own_addresses_stay() {
        let s = srs();
        assert_eq!(s.forward("", NOW), "");
        assert_eq!(s.forward("postmaster", NOW), "postmaster");
        assert_eq!(s.forward("bounces@SRS.example", NOW), "bounces@SRS.example");
        let forwarded = s.forward("user@orig.example", NOW);
        assert_eq!(s.forward(&forwarded, NOW), forwarded);
    }

    #[test]
    fn reverse_ignores_addresses_that_are_not_ours_or_not_srs() {
        let s = srs();
        let forwarded = s.forward("user@orig.example", NOW);
        assert_eq!(s.reverse("user@srs.example", NOW), None);
        assert_eq!(s.reverse("SRS0abc@srs.example", NOW), None);
        assert_eq!(s.reverse("", NOW), None);
        assert_eq!(
            s.reverse(&forwarded.replace("@srs.example", "@other.example"), NOW),
            None
        );
        assert_eq!(
            s.reverse(&forwarded.replace("@srs.example", "@SRS.Example"), NOW),
            Some(Ok("user@orig.example".into()))
        );
    }

    #[test]
    fn malformed() {
        let s = srs();
        for address in [
            "SRS0=abcd=ND=orig.example@srs.example",
            "SRS0=abcd=ND==user@srs.example",
            "SRS0=abcd=N=orig.example=user@srs.example",
            "SRS0=@srs.example",
            "SRS1=abcd=first.example@srs.example",
            "SRS1=abcd==SRS0=x@srs.example",
            "SRS1=abcd=first.example=@srs.example",
        ] {
            assert_eq!(s.reverse(address, NOW), Some(Err(SrsError::Malformed)), "{address}");
        }
        // A timestamp outside the alphabet is found after the hash, which covers it.
        let forwarded = s.forward("user@orig.example", NOW);
        assert_eq!(
            s.reverse(&forwarded.replace("=ND=", "=N1="), NOW),
            Some(Err(SrsError::BadHash))
        );
    }

    #[test]
    fn other_separators_are_accepted_on_input() {
        let s = srs();
        let forwarded = s.forward("user@orig.example", NOW);
        let plus = forwarded.replacen("SRS0=", "srs0+", 1);
        assert_eq!(s.reverse(&plus, NOW), Some(Ok("user@orig.example".into())));
    }

    #[test]
    fn debug_does_not_show_the_key() {
        assert_eq!(format!("{:?}", srs()), r#"Srs { domain: "srs.example", .. }"#);
    }
}
