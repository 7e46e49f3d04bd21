//! The Sender Rewriting Scheme, so that forwarded mail passes SPF and its bounces still find the sender.
//!
//! When we forward mail from `user@orig.example`, the envelope sender becomes an address at our own SRS
//! domain that encodes the original, a timestamp and a hash (Shevek's SRS0, as used by postsrsd):
//!
//! ```text
//! user@orig.example  →  SRS0=HHHH=TT=orig.example=user@srs.example
//! ```
//!
//! A bounce to that address is reversed to `user@orig.example` if the hash verifies and the timestamp is
//! at most [`MAX_AGE_DAYS`] old, so the address cannot be used to relay mail to arbitrary recipients.
//! Forwarding an address that some other forwarder already rewrote gives SRS1, which names that
//! forwarder and keeps its SRS0 part intact: a bounce goes back to it, and it reverses its own part.
//!
//! The hash is a keyed BLAKE2b MAC, four base32 characters (20 bits); the timestamp is the day number
//! modulo 1024, two base32 characters. Both are read without regard to case, since some mail systems
//! lowercase addresses. The MAC input separates its fields, so characters cannot be moved between the
//! domain and the local part under the same hash.

use blake2::digest::Mac;
use blake2::digest::consts::U32;
use blake2::{Blake2b, Blake2bMac, Digest};

/// How many days a rewritten address can be reversed.
pub const MAX_AGE_DAYS: u64 = 21;

const HASH_LEN: usize = 4;
const BASE32: &[u8; 32] = b"abcdefghijklmnopqrstuvwxyz234567";
const SECONDS_PER_DAY: u64 = 86_400;
/// The timestamp wraps around after this many days.
const TIMESTAMP_DAYS: u64 = 1024;

/// Rewrites senders into, and bounces back out of, addresses at one SRS domain.
#[derive(Clone)]
pub struct Srs {
    /// The MAC key, derived from the secret so that a secret of any length can be used.
    key: [u8; 32],
    /// Lowercase.
    domain: String,
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
    pub fn new(secret: &str, domain: &str) -> Srs {
        let key = Blake2b::<U32>::new_with_prefix(b"smtpgate srs key\0")
            .chain_update(secret.as_bytes())
            .finalize();
        Srs {
            key: key.into(),
            domain: domain.to_lowercase(),
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

    /// `rest` is what follows `SRS1=`: `HHHH=firsthop==HHHH=TT=orig=user`.
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

    fn verify(&self, hash: &str, fields: &[&str]) -> Result<(), SrsError> {
        let expected = self.hash(fields);
        let given = hash.to_ascii_lowercase();
        // In constant time, though 20 bits would hardly reward a timing attack.
        let same = given.len() == expected.len()
            && given
                .bytes()
                .zip(expected.bytes())
                .fold(0u8, |diff, (a, b)| diff | (a ^ b))
                == 0;
        if same { Ok(()) } else { Err(SrsError::BadHash) }
    }

    /// [`HASH_LEN`] base32 characters of the MAC of the lowercase fields.
    fn hash(&self, fields: &[&str]) -> String {
        let mut mac = Blake2bMac::<U32>::new_from_slice(&self.key).expect("a 32-byte key fits BLAKE2b");
        for field in fields {
            let field = field.to_lowercase();
            mac.update(field.as_bytes());
            // Each field followed by its length: read from the end, the input splits into fields one way only.
            mac.update(&(field.len() as u64).to_le_bytes());
        }
        let tag = mac.finalize().into_bytes();
        let bits = u32::from_be_bytes([tag[0], tag[1], tag[2], tag[3]]);
        (0..HASH_LEN)
            .map(|i| BASE32[(bits >> (27 - 5 * i) & 31) as usize] as char)
            .collect()
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
            .position(|&b| b == c.to_ascii_lowercase())
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
        assert_eq!(fields[1].len(), 4);
        assert!(fields[1].bytes().all(|b| BASE32.contains(&b)), "{forwarded}");
        // 19875 % 1024 = 419 = 13 * 32 + 3
        assert_eq!(fields[2], "nd");
        assert_eq!(fields[3..], ["orig.example", "user"]);
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
        let other = if hash.starts_with('a') { "b" } else { "a" };
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
            // Moving characters between the domain and the local part changes the hash too.
            forwarded.replace("orig.example=user", "orig.exampleu=ser"),
        ] {
            assert_eq!(s.reverse(&tampered, NOW), Some(Err(SrsError::BadHash)), "{tampered}");
        }
        let other_secret = Srs::new("other", "srs.example");
        assert_eq!(other_secret.reverse(&forwarded, NOW), Some(Err(SrsError::BadHash)));
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
            "SRS0=abcd=nd=orig.example@srs.example",
            "SRS0=abcd=nd==user@srs.example",
            "SRS0=abcd=n=orig.example=user@srs.example",
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
            s.reverse(&forwarded.replace("=nd=", "=n1="), NOW),
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
