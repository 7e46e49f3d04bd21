//! RFC 3461 xtext, the encoding of the DSN `ENVID` and `ORCPT` parameters.
//!
//! `xtext = *( xchar / hexchar )`: `xchar` is any printable ASCII character from `!` to `~`
//! except `+` and `=`; anything else is written `+XX` with two upper-case hex digits per octet.

/// Encodes `s` as xtext (each octet of a UTF-8 character becomes its own `+XX`).
pub fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for &b in s.as_bytes() {
        if is_xchar(b) {
            out.push(char::from(b));
        } else {
            out.push('+');
            out.push(hex_digit(b >> 4));
            out.push(hex_digit(b & 0x0f));
        }
    }
    out
}

/// Decodes xtext. `None` if `s` has a character xtext does not allow, a `+` not followed by two
/// hex digits (lower case is tolerated), or decodes to something that is not UTF-8.
pub fn decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => {
                let hi = hex_value(*bytes.get(i + 1)?)?;
                let lo = hex_value(*bytes.get(i + 2)?)?;
                out.push(hi << 4 | lo);
                i += 3;
            }
            b if is_xchar(b) => {
                out.push(b);
                i += 1;
            }
            _ => return None,
        }
    }
    String::from_utf8(out).ok()
}

/// True if `s` is syntactically valid xtext (the decoded octets need not be UTF-8).
pub fn is_valid(s: &str) -> bool {
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'+' {
            let ok = b.len() > i + 2 && hex_value(b[i + 1]).is_some() && hex_value(b[i + 2]).is_some();
            if !ok {
                return false;
            }
            i += 3;
        } else if is_xchar(b[i]) {
            i += 1;
        } else {
            return false;
        }
    }
    true
}

fn is_xchar(b: u8) -> bool {
    (b'!'..=b'~').contains(&b) && b != b'+' && b != b'='
}

fn hex_digit(n: u8) -> char {
    char::from(b"0123456789ABCDEF"[usize::from(n)])
}

fn hex_value(b: u8) -> Option<u8> {
    char::from(b).to_digit(16).map(|d| d as u8)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        for s in ["", "plain", "a+b=c", "with space", "bücher", "\u{1F600}", "~!"] {
            assert_eq!(decode(&encode(s)).as_deref(), Some(s), "{s:?}");
            assert!(is_valid(&encode(s)));
        }
    }

    #[test]
    fn encodes_specials() {
        assert_eq!(encode("a+b=c d"), "a+2Bb+3Dc+20d");
        assert_eq!(encode("é"), "+C3+A9");
    }

    #[test]
    fn rejects_bad_xtext() {
        for s in ["a b", "+", "+2", "+ZZ", "a=b", "é", "+FF"] {
            assert_eq!(decode(s), None, "{s:?}");
        }
        assert!(is_valid("+FF"));
        assert!(!is_valid("+2"));
    }

    #[test]
    fn tolerates_lower_case_hex() {
        assert_eq!(decode("a+2bb").as_deref(), Some("a+b"));
    }
}
