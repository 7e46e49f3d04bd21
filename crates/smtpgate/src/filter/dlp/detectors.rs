//! The built-in detectors: a regex finds candidates, a checksum or range check confirms them.
//!
//! Each validator returns the normalized value (digits and letters only) of a real match, so that
//! the same number written twice, or in both the text and the HTML version, counts once.

use regex::Regex;

/// Confirms a candidate; returns its normalized value.
type Validator = fn(&str) -> Option<String>;

/// One built-in detector.
#[derive(Debug)]
pub struct Detector {
    pub name: &'static str,
    candidates: Regex,
    validate: Validator,
}

/// The names `detect = [...]` accepts.
pub const NAMES: &[&str] = &["card", "iban", "us_ssn", "uk_nino", "de_tax_id"];

impl Detector {
    /// The detector called `name`, or `None` for an unknown name.
    pub fn named(name: &str) -> Option<Detector> {
        let (name, pattern, validate): (&'static str, &str, Validator) = match name {
            // 13–19 digits, run together or in groups of 4 (4-6-5 for Amex).
            "card" => (
                "card",
                r"\b(?:\d{13,19}|\d{4}(?:[ -]\d{4}){2}[ -]\d{1,7}|\d{4}[ -]\d{6}[ -]\d{4,5})\b",
                card,
            ),
            "iban" => (
                "iban",
                r"(?i)\b[A-Z]{2}\d{2}(?: ?[A-Z0-9]{4}){2,7}(?: ?[A-Z0-9]{1,4})?\b",
                iban,
            ),
            "us_ssn" => ("us_ssn", r"\b\d{3}-\d{2}-\d{4}\b", us_ssn),
            "uk_nino" => ("uk_nino", r"\b[A-Z]{2} ?\d{2} ?\d{2} ?\d{2} ?[A-D]\b", uk_nino),
            "de_tax_id" => ("de_tax_id", r"\b\d{2} ?\d{3} ?\d{3} ?\d{3}\b", de_tax_id),
            _ => return None,
        };
        let candidates = Regex::new(pattern).expect("built-in detector regex compiles");
        Some(Detector {
            name,
            candidates,
            validate,
        })
    }

    /// The normalized values of every confirmed match in `text`.
    pub fn find<'t>(&'t self, text: &'t str) -> impl Iterator<Item = String> + 't {
        self.candidates
            .find_iter(text)
            .filter_map(|m| (self.validate)(m.as_str()))
    }
}

fn digits(s: &str) -> Vec<u8> {
    s.bytes().filter(u8::is_ascii_digit).map(|b| b - b'0').collect()
}

fn alnum_upper(s: &str) -> String {
    s.chars()
        .filter(char::is_ascii_alphanumeric)
        .map(|c| c.to_ascii_uppercase())
        .collect()
}

/// A payment card number: Luhn-valid, and a length that fits a known issuer prefix.
pub fn card(candidate: &str) -> Option<String> {
    let d = digits(candidate);
    (known_issuer(&d) && luhn(&d)).then(|| d.iter().map(|&x| char::from(b'0' + x)).collect())
}

fn luhn(d: &[u8]) -> bool {
    let sum: u32 = d
        .iter()
        .rev()
        .enumerate()
        .map(|(i, &x)| {
            let x = u32::from(x);
            if i % 2 == 1 {
                if x * 2 > 9 { x * 2 - 9 } else { x * 2 }
            } else {
                x
            }
        })
        .sum();
    sum.is_multiple_of(10)
}

/// Visa, Mastercard, American Express, Discover, JCB, Diners Club, UnionPay.
fn known_issuer(d: &[u8]) -> bool {
    let prefix = |n: usize| d.iter().take(n).fold(0u32, |acc, &x| acc * 10 + u32::from(x));
    let len = d.len();
    let (p1, p2, p3, p4) = (prefix(1), prefix(2), prefix(3), prefix(4));
    match p1 {
        4 => matches!(len, 13 | 16 | 19),
        5 => (51..=55).contains(&p2) && len == 16,
        2 => (2221..=2720).contains(&p4) && len == 16,
        3 => {
            (matches!(p2, 34 | 37) && len == 15)
                || ((3528..=3589).contains(&p4) && (16..=19).contains(&len))
                || (((300..=305).contains(&p3) || matches!(p2, 36 | 38 | 39)) && (14..=19).contains(&len))
        }
        6 => (p4 == 6011 || (644..=649).contains(&p3) || p2 == 65 || p2 == 62) && (16..=19).contains(&len),
        _ => false,
    }
}

/// An IBAN: a known country, that country's length, and the ISO 13616 mod-97 checksum.
pub fn iban(candidate: &str) -> Option<String> {
    let s = alnum_upper(candidate);
    let want = iban_length(s.get(..2)?)?;
    // The candidate may run into a following group; the IBAN is the first `want` characters.
    let s = s.get(..want)?;
    if !s[2..4].bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let rearranged = s[4..].chars().chain(s[..4].chars());
    let mut rem: u32 = 0;
    for c in rearranged {
        let v = c.to_digit(36)?;
        rem = if v >= 10 {
            (rem * 100 + v) % 97
        } else {
            (rem * 10 + v) % 97
        };
    }
    (rem == 1).then(|| s.to_owned())
}

/// The IBAN length of each country in the SWIFT IBAN registry.
fn iban_length(country: &str) -> Option<usize> {
    #[rustfmt::skip]
    const LENGTHS: &[(&str, usize)] = &[
        ("AD", 24), ("AE", 23), ("AL", 28), ("AT", 20), ("AZ", 28), ("BA", 20), ("BE", 16), ("BG", 22),
        ("BH", 22), ("BI", 27), ("BR", 29), ("BY", 28), ("CH", 21), ("CR", 22), ("CY", 28), ("CZ", 24),
        ("DE", 22), ("DJ", 27), ("DK", 18), ("DO", 28), ("EE", 20), ("EG", 29), ("ES", 24), ("FI", 18),
        ("FK", 18), ("FO", 18), ("FR", 27), ("GB", 22), ("GE", 22), ("GI", 23), ("GL", 18), ("GR", 27),
        ("GT", 28), ("HN", 28), ("HR", 21), ("HU", 28), ("IE", 22), ("IL", 23), ("IQ", 23), ("IS", 26),
        ("IT", 27), ("JO", 30), ("KW", 30), ("KZ", 20), ("LB", 28), ("LC", 32), ("LI", 21), ("LT", 20),
        ("LU", 20), ("LV", 21), ("LY", 25), ("MC", 27), ("MD", 24), ("ME", 22), ("MK", 19), ("MN", 20),
        ("MR", 27), ("MT", 31), ("MU", 30), ("NI", 28), ("NL", 18), ("NO", 15), ("OM", 23), ("PK", 24),
        ("PL", 28), ("PS", 29), ("PT", 25), ("QA", 29), ("RO", 24), ("RS", 22), ("RU", 33), ("SA", 24),
        ("SC", 31), ("SD", 18), ("SE", 24), ("SI", 19), ("SK", 24), ("SM", 27), ("SO", 23), ("ST", 25),
        ("SV", 28), ("TL", 23), ("TN", 24), ("TR", 26), ("UA", 29), ("VA", 22), ("VG", 24), ("XK", 20),
        ("YE", 30),
    ];
    LENGTHS.iter().find(|(c, _)| *c == country).map(|&(_, n)| n)
}

/// A US Social Security number `AAA-GG-SSSS`: area not 000, 666 or 9xx; group not 00; serial
/// not 0000; not the famous 078-05-1120 from a wallet advertisement.
pub fn us_ssn(candidate: &str) -> Option<String> {
    let mut parts = candidate.split('-').map(|p| p.parse::<u32>().ok());
    let (area, group, serial) = (parts.next()??, parts.next()??, parts.next()??);
    let valid = area != 0 && area != 666 && area < 900 && group != 0 && serial != 0;
    (valid && (area, group, serial) != (78, 5, 1120)).then(|| format!("{area:03}{group:02}{serial:04}"))
}

/// A UK National Insurance number: two prefix letters (D, F, I, Q, U, V never; O not second;
/// BG, GB, KN, NK, NT, TN, ZZ never), six digits, suffix A–D.
pub fn uk_nino(candidate: &str) -> Option<String> {
    let s = alnum_upper(candidate);
    let b = s.as_bytes();
    let bad_first = b"DFIQUV";
    let bad_second = b"DFIQUVO";
    if bad_first.contains(&b[0]) || bad_second.contains(&b[1]) {
        return None;
    }
    let prefix = &s[..2];
    (!["BG", "GB", "KN", "NK", "NT", "TN", "ZZ"].contains(&prefix)).then_some(s)
}

/// A German tax identification number (Steuer-ID): 11 digits, no leading zero, in the first ten
/// one digit twice or three times and the others at most once, ISO 7064 MOD 11,10 check digit.
pub fn de_tax_id(candidate: &str) -> Option<String> {
    let d = digits(candidate);
    if d.len() != 11 || d[0] == 0 {
        return None;
    }
    let mut counts = [0u8; 10];
    d[..10].iter().for_each(|&x| counts[x as usize] += 1);
    let repeated = counts.iter().filter(|&&c| c >= 2).count();
    if repeated != 1 || counts.iter().any(|&c| c > 3) {
        return None;
    }
    let mut product = 10u32;
    for &x in &d[..10] {
        let mut sum = (u32::from(x) + product) % 10;
        if sum == 0 {
            sum = 10;
        }
        product = (sum * 2) % 11;
    }
    let check = (11 - product) % 10;
    (check == u32::from(d[10])).then(|| d.iter().map(|&x| char::from(b'0' + x)).collect())
}
