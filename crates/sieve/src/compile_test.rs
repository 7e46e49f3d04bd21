//! Compiling tests (RFC 5228 section 5) and their tagged arguments.

use crate::ast::{AddressPart, Comparator, Compare, EnvelopePart, MatchType, SizeLimit, Test};
use crate::compile::{Capabilities, Tagged, bad_tag, no_more, split_args, strings};
use crate::error::ParseError;
use crate::syntax::{Arg, Node, TestArgs};

/// Headers that hold addresses, which the `address` test is restricted to (RFC 5228 section 5.1
/// names From, To, Cc, Bcc, Sender, Resent-From and Resent-To as the minimum).
const ADDRESS_HEADERS: &[&str] = &[
    "from",
    "sender",
    "reply-to",
    "to",
    "cc",
    "bcc",
    "resent-from",
    "resent-sender",
    "resent-reply-to",
    "resent-to",
    "resent-cc",
    "resent-bcc",
    "return-path",
    "delivered-to",
    "envelope-to",
    "x-original-to",
    "errors-to",
    "disposition-notification-to",
];

/// The kinds of tagged argument; each may be given at most once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Family {
    Match,
    Comparator,
    Part,
    Size,
}

/// The tagged arguments of one test, once read.
#[derive(Debug, Default)]
struct Opts {
    match_type: Option<MatchType>,
    comparator: Option<Comparator>,
    part: Option<AddressPart>,
    size: Option<bool>,
}

impl Opts {
    fn compare(&self) -> Compare {
        Compare {
            match_type: self.match_type.unwrap_or_default(),
            comparator: self.comparator.unwrap_or_default(),
        }
    }
}

/// Compiles one test and, for `allof`, `anyof` and `not`, the tests inside it.
pub(crate) fn compile_test(node: Node, caps: &Capabilities) -> Result<Test, ParseError> {
    let (line, name) = (node.line, node.name.as_str());
    let takes_tests = matches!(name, "allof" | "anyof" | "not");
    if takes_tests && !node.args.is_empty() {
        return Err(ParseError::new(line, format!("{name} takes tests, not arguments")));
    }
    match (name, node.tests) {
        ("allof", TestArgs::List(tests)) => Ok(Test::AllOf(compile_all(tests, caps)?)),
        ("anyof", TestArgs::List(tests)) => Ok(Test::AnyOf(compile_all(tests, caps)?)),
        ("not", TestArgs::Single(test)) => Ok(Test::Not(Box::new(compile_test(*test, caps)?))),
        ("allof" | "anyof", _) => Err(ParseError::new(
            line,
            format!("{name} needs a list of tests: {name}(.., ..)"),
        )),
        ("not", _) => Err(ParseError::new(line, "not needs exactly one test")),
        (_, TestArgs::None) => leaf(name, line, node.args, caps),
        (_, _) => Err(ParseError::new(line, format!("{name} takes no test"))),
    }
}

fn compile_all(tests: Vec<Node>, caps: &Capabilities) -> Result<Vec<Test>, ParseError> {
    tests.into_iter().map(|t| compile_test(t, caps)).collect()
}

/// Tests that take only arguments.
fn leaf(name: &str, line: usize, args: Vec<Arg>, caps: &Capabilities) -> Result<Test, ParseError> {
    let (tags, mut pos) = split_args(args, name)?;
    let test = match name {
        "true" | "false" => {
            read_tags(&tags, &[], name)?;
            if name == "true" { Test::True } else { Test::False }
        }
        "header" => header(&tags, &mut pos, line)?,
        "address" => address(&tags, &mut pos, line)?,
        "envelope" => envelope(&tags, &mut pos, caps, line)?,
        "exists" => {
            read_tags(&tags, &[], name)?;
            Test::Exists(header_names(strings(&mut pos, name, line)?, line)?)
        }
        "size" => size(&tags, &mut pos, line)?,
        _ => return Err(ParseError::new(line, format!("unknown test {name:?}"))),
    };
    no_more(&pos, name)?;
    Ok(test)
}

fn header(tags: &[Tagged], pos: &mut Vec<Arg>, line: usize) -> Result<Test, ParseError> {
    let opts = read_tags(tags, &[Family::Match, Family::Comparator], "header")?;
    let headers = header_names(strings(pos, "header", line)?, line)?;
    let keys = strings(pos, "header", line)?;
    Ok(Test::Header {
        cmp: opts.compare(),
        headers,
        keys,
    })
}

fn address(tags: &[Tagged], pos: &mut Vec<Arg>, line: usize) -> Result<Test, ParseError> {
    let opts = read_tags(tags, &[Family::Match, Family::Comparator, Family::Part], "address")?;
    let headers = header_names(strings(pos, "address", line)?, line)?;
    if let Some(h) = headers
        .iter()
        .find(|h| !ADDRESS_HEADERS.contains(&h.to_ascii_lowercase().as_str()))
    {
        return Err(ParseError::new(
            line,
            format!("address: {h:?} is not a header that holds addresses"),
        ));
    }
    let keys = strings(pos, "address", line)?;
    Ok(Test::Address {
        part: opts.part.unwrap_or_default(),
        cmp: opts.compare(),
        headers,
        keys,
    })
}

fn envelope(tags: &[Tagged], pos: &mut Vec<Arg>, caps: &Capabilities, line: usize) -> Result<Test, ParseError> {
    caps.check("envelope", "envelope", line)?;
    let opts = read_tags(tags, &[Family::Match, Family::Comparator, Family::Part], "envelope")?;
    let which = strings(pos, "envelope", line)?
        .iter()
        .map(|p| envelope_part(p, line))
        .collect::<Result<_, _>>()?;
    let keys = strings(pos, "envelope", line)?;
    Ok(Test::Envelope {
        part: opts.part.unwrap_or_default(),
        cmp: opts.compare(),
        which,
        keys,
    })
}

fn envelope_part(name: &str, line: usize) -> Result<EnvelopePart, ParseError> {
    match name.to_ascii_lowercase().as_str() {
        "from" => Ok(EnvelopePart::From),
        "to" => Ok(EnvelopePart::To),
        _ => Err(ParseError::new(
            line,
            format!("envelope: unsupported envelope part {name:?} (use \"from\" or \"to\")"),
        )),
    }
}

fn size(tags: &[Tagged], pos: &mut Vec<Arg>, line: usize) -> Result<Test, ParseError> {
    let opts = read_tags(tags, &[Family::Size], "size")?;
    let Some(over) = opts.size else {
        return Err(ParseError::new(line, "size needs :over or :under"));
    };
    let limit = match pos.pop() {
        Some(Arg::Number(n, _)) => n,
        _ => return Err(ParseError::new(line, "size: expected a number")),
    };
    Ok(Test::Size(if over {
        SizeLimit::Over(limit)
    } else {
        SizeLimit::Under(limit)
    }))
}

/// Header names must be field names (RFC 5322 section 3.6.8): printable ASCII without a colon.
fn header_names(names: Vec<String>, line: usize) -> Result<Vec<String>, ParseError> {
    let valid = |n: &String| !n.is_empty() && n.bytes().all(|b| (33..=126).contains(&b) && b != b':');
    match names.iter().find(|n| !valid(n)) {
        Some(bad) => Err(ParseError::new(line, format!("{bad:?} is not a valid header name"))),
        None => Ok(names),
    }
}

fn read_tags(tags: &[Tagged], allowed: &[Family], test: &str) -> Result<Opts, ParseError> {
    let mut opts = Opts::default();
    for tag in tags {
        let fresh = match family(&tag.name).filter(|f| allowed.contains(f)) {
            Some(Family::Match) => set(&mut opts.match_type, match_type(&tag.name)),
            Some(Family::Comparator) => set(&mut opts.comparator, tag.comparator.unwrap_or_default()),
            Some(Family::Part) => set(&mut opts.part, address_part(&tag.name)),
            Some(Family::Size) => set(&mut opts.size, tag.name == "over"),
            None => false,
        };
        if !fresh {
            return Err(bad_tag(tag, test));
        }
    }
    Ok(opts)
}

fn family(tag: &str) -> Option<Family> {
    match tag {
        "is" | "contains" | "matches" => Some(Family::Match),
        "comparator" => Some(Family::Comparator),
        "all" | "localpart" | "domain" => Some(Family::Part),
        "over" | "under" => Some(Family::Size),
        _ => None,
    }
}

fn match_type(tag: &str) -> MatchType {
    match tag {
        "contains" => MatchType::Contains,
        "matches" => MatchType::Matches,
        _ => MatchType::Is,
    }
}

fn address_part(tag: &str) -> AddressPart {
    match tag {
        "localpart" => AddressPart::LocalPart,
        "domain" => AddressPart::Domain,
        _ => AddressPart::All,
    }
}

/// Fills an empty slot; `false` if it was already filled (a repeated tag).
fn set<T>(slot: &mut Option<T>, value: T) -> bool {
    if slot.is_some() {
        return false;
    }
    *slot = Some(value);
    true
}
