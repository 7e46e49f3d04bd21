//! Comparing a value with a key: match types (RFC 5228 section 2.7.1) under a comparator
//! (section 2.7.3).

use crate::ast::{Comparator, Compare, MatchType};
use std::borrow::Cow;

/// Whether `value` matches any of `keys`.
pub(crate) fn any_key(cmp: Compare, value: &str, keys: &[String]) -> bool {
    keys.iter().any(|key| matches(cmp, value, key))
}

/// Whether `value` matches `key`.
pub(crate) fn matches(cmp: Compare, value: &str, key: &str) -> bool {
    let (value, key) = (fold(cmp.comparator, value), fold(cmp.comparator, key));
    match cmp.match_type {
        MatchType::Is => value == key,
        MatchType::Contains => value.contains(&*key),
        MatchType::Matches => wildcard(&value, &key),
    }
}

/// `i;ascii-casemap` compares with ASCII letters folded to lower case; `i;octet` as is.
fn fold(comparator: Comparator, s: &str) -> Cow<'_, str> {
    match comparator {
        Comparator::Octet => Cow::Borrowed(s),
        Comparator::AsciiCasemap => Cow::Owned(s.to_ascii_lowercase()),
    }
}

/// One element of a `:matches` pattern.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pat {
    /// `*`: any sequence of characters, also none.
    Star,
    /// `?`: exactly one character.
    One,
    /// A character to be matched itself; `\` makes the next character literal.
    Lit(char),
}

fn compile_pattern(pattern: &str) -> Vec<Pat> {
    let mut out = Vec::new();
    let mut chars = pattern.chars();
    while let Some(c) = chars.next() {
        out.push(match c {
            '*' => Pat::Star,
            '?' => Pat::One,
            '\\' => Pat::Lit(chars.next().unwrap_or('\\')),
            c => Pat::Lit(c),
        });
    }
    out
}

/// `:matches`, in time proportional to the product of the lengths at worst: on a mismatch it
/// only ever backtracks to the most recent `*`.
fn wildcard(text: &str, pattern: &str) -> bool {
    let pat = compile_pattern(pattern);
    let text: Vec<char> = text.chars().collect();
    let (mut t, mut p) = (0, 0);
    let mut last_star: Option<(usize, usize)> = None;
    while t < text.len() {
        match pat.get(p) {
            Some(Pat::Star) => {
                last_star = Some((p, t));
                p += 1;
            }
            Some(Pat::One) => (t, p) = (t + 1, p + 1),
            Some(Pat::Lit(c)) if *c == text[t] => (t, p) = (t + 1, p + 1),
            _ => match last_star {
                Some((star, from)) => {
                    last_star = Some((star, from + 1));
                    (t, p) = (from + 1, star + 1);
                }
                None => return false,
            },
        }
    }
    pat[p..].iter().all(|x| *x == Pat::Star)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcard_table() {
        let cases = [
            ("", "", true),
            ("", "*", true),
            ("", "?", false),
            ("abc", "a*", true),
            ("abc", "*c", true),
            ("abc", "a?c", true),
            ("abc", "a??c", false),
            ("abc", "*b*", true),
            ("abc", "*d*", false),
            ("a*c", "a\\*c", true),
            ("abc", "a\\*c", false),
            ("a?c", "a\\?c", true),
            ("abbbbc", "a*b*c", true),
            ("mississippi", "*sip*", true),
            ("mississippi", "m*iss*ppi", true),
            ("mississippi", "m*iss*ppx", false),
            ("a\\b", "a\\\\b", true),
            ("héllo", "h?llo", true),
        ];
        for (text, pattern, want) in cases {
            assert_eq!(wildcard(text, pattern), want, "{text:?} :matches {pattern:?}");
        }
    }

    #[test]
    fn wildcard_is_not_exponential() {
        let text = "a".repeat(5000);
        let pattern = format!("{}b", "*a".repeat(50));
        assert!(!wildcard(&text, &pattern));
    }
}
