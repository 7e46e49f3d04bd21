//! The checked form of a script: every command and test with typed arguments.
//!
//! A value of these types has passed every check of RFC 5228 that can be made before a message
//! is seen (capabilities required, tags valid, argument counts right), so the evaluator never
//! meets an error. `Display` writes each test and action back in Sieve syntax for the trace.

use std::fmt;

/// One command of a script.
#[derive(Debug, Clone)]
pub(crate) enum Command {
    If(IfChain),
    Stop { line: usize },
    Act { line: usize, act: Act },
}

/// `if`, any `elsif`s and an optional `else` (RFC 5228 section 3.1).
#[derive(Debug, Clone)]
pub(crate) struct IfChain {
    pub branches: Vec<Branch>,
    pub otherwise: Option<Else>,
}

/// The `if` or an `elsif` of an [`IfChain`].
#[derive(Debug, Clone)]
pub(crate) struct Branch {
    pub line: usize,
    pub keyword: &'static str,
    pub test: Test,
    pub body: Vec<Command>,
}

/// The `else` of an [`IfChain`].
#[derive(Debug, Clone)]
pub(crate) struct Else {
    pub line: usize,
    pub body: Vec<Command>,
}

/// An action command (RFC 5228 section 4, RFC 3894, RFC 5429).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Act {
    Keep,
    Discard,
    Redirect { address: String, copy: bool },
    FileInto { folder: String, copy: bool },
    Reject(String),
}

impl Act {
    /// Whether running this action cancels the implicit keep (RFC 5228 section 2.10.2,
    /// RFC 3894 section 3, RFC 5429 section 2.1).
    pub fn cancels_implicit_keep(&self) -> bool {
        match self {
            Act::Keep => false,
            Act::Discard | Act::Reject(_) => true,
            Act::Redirect { copy, .. } | Act::FileInto { copy, .. } => !copy,
        }
    }
}

/// A test (RFC 5228 section 5).
#[derive(Debug, Clone)]
pub(crate) enum Test {
    Address {
        part: AddressPart,
        cmp: Compare,
        headers: Vec<String>,
        keys: Vec<String>,
    },
    Header {
        cmp: Compare,
        headers: Vec<String>,
        keys: Vec<String>,
    },
    Envelope {
        part: AddressPart,
        cmp: Compare,
        which: Vec<EnvelopePart>,
        keys: Vec<String>,
    },
    Exists(Vec<String>),
    Size(SizeLimit),
    AllOf(Vec<Test>),
    AnyOf(Vec<Test>),
    Not(Box<Test>),
    True,
    False,
}

/// A match type and a comparator: how a test compares a value with a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct Compare {
    pub match_type: MatchType,
    pub comparator: Comparator,
}

/// RFC 5228 section 2.7.1.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) enum MatchType {
    #[default]
    Is,
    Contains,
    Matches,
}

/// RFC 5228 section 2.7.3; `i;ascii-casemap` is the default.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) enum Comparator {
    Octet,
    #[default]
    AsciiCasemap,
}

/// RFC 5228 section 2.7.4; `:all` is the default.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) enum AddressPart {
    #[default]
    All,
    LocalPart,
    Domain,
}

/// The envelope parts the `envelope` test can look at (RFC 5228 section 5.4).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum EnvelopePart {
    From,
    To,
}

/// The argument of `size` (RFC 5228 section 5.9).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SizeLimit {
    Over(u64),
    Under(u64),
}

/// Writes a string list: a lone string as `"a"`, more as `["a", "b"]`.
struct List<'a>(&'a [String]);

impl fmt::Display for List<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let [one] = self.0 {
            return write!(f, "{one:?}");
        }
        f.write_str("[")?;
        for (i, s) in self.0.iter().enumerate() {
            let sep = if i == 0 { "" } else { ", " };
            write!(f, "{sep}{s:?}")?;
        }
        f.write_str("]")
    }
}

impl fmt::Display for Compare {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let match_type = match self.match_type {
            MatchType::Is => ":is",
            MatchType::Contains => ":contains",
            MatchType::Matches => ":matches",
        };
        f.write_str(match_type)?;
        match self.comparator {
            Comparator::AsciiCasemap => Ok(()),
            Comparator::Octet => f.write_str(" :comparator \"i;octet\""),
        }
    }
}

impl fmt::Display for AddressPart {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            AddressPart::All => ":all",
            AddressPart::LocalPart => ":localpart",
            AddressPart::Domain => ":domain",
        })
    }
}

impl fmt::Display for Test {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Test::Address {
                part,
                cmp,
                headers,
                keys,
            } => {
                write!(f, "address {part} {cmp} {} {}", List(headers), List(keys))
            }
            Test::Header { cmp, headers, keys } => write!(f, "header {cmp} {} {}", List(headers), List(keys)),
            Test::Envelope { part, cmp, which, keys } => {
                let which: Vec<String> = which.iter().map(|w| format!("{w:?}").to_ascii_lowercase()).collect();
                write!(f, "envelope {part} {cmp} {} {}", List(&which), List(keys))
            }
            Test::Exists(names) => write!(f, "exists {}", List(names)),
            Test::Size(SizeLimit::Over(n)) => write!(f, "size :over {n}"),
            Test::Size(SizeLimit::Under(n)) => write!(f, "size :under {n}"),
            Test::AllOf(tests) => write_tests(f, "allof", tests),
            Test::AnyOf(tests) => write_tests(f, "anyof", tests),
            Test::Not(test) => write!(f, "not {test}"),
            Test::True => f.write_str("true"),
            Test::False => f.write_str("false"),
        }
    }
}

fn write_tests(f: &mut fmt::Formatter<'_>, name: &str, tests: &[Test]) -> fmt::Result {
    write!(f, "{name}(")?;
    for (i, test) in tests.iter().enumerate() {
        let sep = if i == 0 { "" } else { ", " };
        write!(f, "{sep}{test}")?;
    }
    f.write_str(")")
}

impl fmt::Display for Act {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let copy = |copy: &bool| if *copy { ":copy " } else { "" };
        match self {
            Act::Keep => f.write_str("keep"),
            Act::Discard => f.write_str("discard"),
            Act::Redirect { address, copy: c } => write!(f, "redirect {}{address:?}", copy(c)),
            Act::FileInto { folder, copy: c } => write!(f, "fileinto {}{folder:?}", copy(c)),
            Act::Reject(reason) => write!(f, "reject {reason:?}"),
        }
    }
}
