//! Giving the generic tree its meaning: commands, `require`, and the checks of RFC 5228 that
//! can be made before a message is seen. Tests are compiled in [`crate::compile_test`].

use crate::ast::{Act, Branch, Command, Comparator, Else, IfChain};
use crate::compile_test::compile_test;
use crate::error::ParseError;
use crate::syntax::{Arg, Node, TestArgs};
use std::iter::Peekable;

/// The extensions this crate implements, as named in `require`.
const KNOWN: &[&str] = &[
    "fileinto",
    "copy",
    "reject",
    "envelope",
    "comparator-i;octet",
    "comparator-i;ascii-casemap",
];

/// The extensions a script has asked for with `require` (RFC 5228 section 3.2).
#[derive(Debug, Default)]
pub(crate) struct Capabilities {
    names: Vec<String>,
}

impl Capabilities {
    fn add(&mut self, name: &str, line: usize) -> Result<(), ParseError> {
        if !KNOWN.contains(&name) {
            return Err(ParseError::new(
                line,
                format!("unsupported extension {name:?} in require"),
            ));
        }
        self.names.push(name.to_string());
        Ok(())
    }

    /// Fails unless `name` was required, as RFC 5228 section 3.2 demands before an extension is
    /// used.
    pub fn check(&self, name: &str, what: &str, line: usize) -> Result<(), ParseError> {
        if self.names.iter().any(|n| n == name) {
            return Ok(());
        }
        Err(ParseError::new(line, format!("{what} needs require {name:?}")))
    }
}

/// A tagged argument, with the string that follows `:comparator`.
#[derive(Debug)]
pub(crate) struct Tagged {
    pub name: String,
    pub line: usize,
    pub comparator: Option<Comparator>,
}

/// Compiles a whole script.
pub(crate) fn compile(nodes: Vec<Node>) -> Result<Vec<Command>, ParseError> {
    let mut caps = Capabilities::default();
    let mut nodes = nodes.into_iter().peekable();
    while let Some(node) = nodes.next_if(|n| n.name == "require") {
        require(node, &mut caps)?;
    }
    block(nodes, &caps)
}

fn require(node: Node, caps: &mut Capabilities) -> Result<(), ParseError> {
    let line = node.line;
    let (tags, mut pos) = split_args(node_without_block(node, "require")?.args, "require")?;
    no_tags(&tags, "require")?;
    let names = strings(&mut pos, "require", line)?;
    no_more(&pos, "require")?;
    names.iter().try_for_each(|name| caps.add(name, line))
}

fn block(nodes: impl Iterator<Item = Node>, caps: &Capabilities) -> Result<Vec<Command>, ParseError> {
    let mut nodes = nodes.peekable();
    let mut out = Vec::new();
    while let Some(node) = nodes.next() {
        let command = match node.name.as_str() {
            "if" => if_chain(node, &mut nodes, caps)?,
            "elsif" | "else" => {
                return Err(ParseError::new(
                    node.line,
                    format!("{} without a preceding if", node.name),
                ));
            }
            "require" => {
                return Err(ParseError::new(
                    node.line,
                    "require must come before every other command",
                ));
            }
            _ => simple(node, caps)?,
        };
        out.push(command);
    }
    Ok(out)
}

fn if_chain<I>(first: Node, rest: &mut Peekable<I>, caps: &Capabilities) -> Result<Command, ParseError>
where
    I: Iterator<Item = Node>,
{
    let mut branches = vec![branch(first, "if", caps)?];
    while let Some(node) = rest.next_if(|n| n.name == "elsif") {
        branches.push(branch(node, "elsif", caps)?);
    }
    let otherwise = match rest.next_if(|n| n.name == "else") {
        Some(node) => Some(else_branch(node, caps)?),
        None => None,
    };
    Ok(Command::If(IfChain { branches, otherwise }))
}

fn branch(node: Node, keyword: &'static str, caps: &Capabilities) -> Result<Branch, ParseError> {
    let line = node.line;
    let Some(body) = node.block else {
        return Err(ParseError::new(line, format!("{keyword} needs a block")));
    };
    if !node.args.is_empty() {
        return Err(ParseError::new(line, format!("{keyword} takes a test, not arguments")));
    }
    let test = match node.tests {
        TestArgs::Single(test) => compile_test(*test, caps)?,
        TestArgs::None => return Err(ParseError::new(line, format!("{keyword} needs a test"))),
        TestArgs::List(_) => return Err(ParseError::new(line, format!("{keyword} takes one test, not a list"))),
    };
    Ok(Branch {
        line,
        keyword,
        test,
        body: block(body.into_iter(), caps)?,
    })
}

fn else_branch(node: Node, caps: &Capabilities) -> Result<Else, ParseError> {
    let line = node.line;
    let Some(body) = node.block else {
        return Err(ParseError::new(line, "else needs a block"));
    };
    if !node.args.is_empty() || !matches!(node.tests, TestArgs::None) {
        return Err(ParseError::new(line, "else takes no arguments"));
    }
    Ok(Else {
        line,
        body: block(body.into_iter(), caps)?,
    })
}

/// Commands that end in `;`: `stop` and the actions.
fn simple(node: Node, caps: &Capabilities) -> Result<Command, ParseError> {
    let line = node.line;
    let name = node.name.clone();
    let node = node_without_block(node, &name)?;
    if let Some(test) = first_test(&node.tests) {
        let msg = format!("{name} takes no test; is a ';' missing before '{}'?", test.name);
        return Err(ParseError::new(test.line, msg));
    }
    let (tags, mut pos) = split_args(node.args, &name)?;
    let act = match name.as_str() {
        "stop" | "keep" | "discard" => {
            no_tags(&tags, &name)?;
            no_more(&pos, &name)?;
            return Ok(match name.as_str() {
                "stop" => Command::Stop { line },
                "keep" => Command::Act { line, act: Act::Keep },
                _ => Command::Act {
                    line,
                    act: Act::Discard,
                },
            });
        }
        "redirect" => redirect(&tags, &mut pos, caps, line)?,
        "fileinto" => fileinto(&tags, &mut pos, caps, line)?,
        "reject" => {
            caps.check("reject", "reject", line)?;
            no_tags(&tags, "reject")?;
            Act::Reject(string(&mut pos, "reject", line)?)
        }
        _ => return Err(ParseError::new(line, format!("unknown command {name:?}"))),
    };
    no_more(&pos, &name)?;
    Ok(Command::Act { line, act })
}

fn redirect(tags: &[Tagged], pos: &mut Vec<Arg>, caps: &Capabilities, line: usize) -> Result<Act, ParseError> {
    let copy = copy_tag(tags, "redirect", caps)?;
    let address = string(pos, "redirect", line)?;
    if !is_plausible_address(&address) {
        return Err(ParseError::new(
            line,
            format!("redirect: {address:?} is not an address like user@example.com"),
        ));
    }
    Ok(Act::Redirect { address, copy })
}

fn fileinto(tags: &[Tagged], pos: &mut Vec<Arg>, caps: &Capabilities, line: usize) -> Result<Act, ParseError> {
    caps.check("fileinto", "fileinto", line)?;
    let copy = copy_tag(tags, "fileinto", caps)?;
    let folder = string(pos, "fileinto", line)?;
    if folder.is_empty() {
        return Err(ParseError::new(line, "fileinto: the folder name is empty"));
    }
    Ok(Act::FileInto { folder, copy })
}

/// Whether `:copy` (RFC 3894) is among `tags`, which may hold nothing else.
fn copy_tag(tags: &[Tagged], command: &str, caps: &Capabilities) -> Result<bool, ParseError> {
    let mut copy = false;
    for tag in tags {
        if tag.name != "copy" || copy {
            return Err(bad_tag(tag, command));
        }
        caps.check("copy", ":copy", tag.line)?;
        copy = true;
    }
    Ok(copy)
}

/// An addr-spec without angle brackets: a non-empty local part, `@`, a domain; no white space.
fn is_plausible_address(address: &str) -> bool {
    let Some((local, domain)) = address.rsplit_once('@') else {
        return false;
    };
    let printable = |s: &str| {
        s.chars()
            .all(|c| !c.is_whitespace() && !c.is_control() && !"<>,;".contains(c))
    };
    !local.is_empty() && !domain.is_empty() && printable(local) && printable(domain) && !domain.contains('@')
}

fn first_test(tests: &TestArgs) -> Option<&Node> {
    match tests {
        TestArgs::None => None,
        TestArgs::Single(test) => Some(test),
        TestArgs::List(tests) => tests.first(),
    }
}

fn node_without_block(node: Node, name: &str) -> Result<Node, ParseError> {
    if node.block.is_some() {
        return Err(ParseError::new(
            node.line,
            format!("{name} takes no block; end it with ';'"),
        ));
    }
    Ok(node)
}

/// Splits arguments into the leading tagged ones and the positional ones after them (RFC 5228
/// section 2.6.2), taking the string that follows `:comparator`. The positional arguments are
/// returned in reverse, so that callers can `pop` them in order.
pub(crate) fn split_args(args: Vec<Arg>, command: &str) -> Result<(Vec<Tagged>, Vec<Arg>), ParseError> {
    let mut args = args.into_iter().peekable();
    let mut tags = Vec::new();
    while let Some(Arg::Tag(name, line)) = args.next_if(|a| matches!(a, Arg::Tag(..))) {
        let comparator = match name.as_str() {
            "comparator" => Some(comparator(args.next(), line)?),
            _ => None,
        };
        tags.push(Tagged { name, line, comparator });
    }
    let mut positional: Vec<Arg> = args.collect();
    if let Some(Arg::Tag(name, line)) = positional.iter().find(|a| matches!(a, Arg::Tag(..))) {
        let msg = format!("{command}: tagged argument :{name} must come before the other arguments");
        return Err(ParseError::new(*line, msg));
    }
    positional.reverse();
    Ok((tags, positional))
}

fn comparator(arg: Option<Arg>, line: usize) -> Result<Comparator, ParseError> {
    let name = match arg {
        Some(Arg::Strings { values, .. }) if values.len() == 1 => values.into_iter().next().unwrap_or_default(),
        _ => return Err(ParseError::new(line, ":comparator must be followed by a string")),
    };
    match name.as_str() {
        "i;octet" => Ok(Comparator::Octet),
        "i;ascii-casemap" => Ok(Comparator::AsciiCasemap),
        _ => Err(ParseError::new(line, format!("unsupported comparator {name:?}"))),
    }
}

pub(crate) fn bad_tag(tag: &Tagged, command: &str) -> ParseError {
    ParseError::new(
        tag.line,
        format!("{command}: unexpected or repeated tagged argument :{}", tag.name),
    )
}

fn no_tags(tags: &[Tagged], command: &str) -> Result<(), ParseError> {
    tags.first().map_or(Ok(()), |tag| Err(bad_tag(tag, command)))
}

/// Takes the next positional argument, which must be a string or a string list.
pub(crate) fn strings(pos: &mut Vec<Arg>, command: &str, line: usize) -> Result<Vec<String>, ParseError> {
    match pos.pop() {
        Some(Arg::Strings { values, .. }) => Ok(values),
        Some(Arg::Number(_, line)) => Err(ParseError::new(
            line,
            format!("{command}: expected a string, found a number"),
        )),
        _ => Err(ParseError::new(line, format!("{command}: missing argument"))),
    }
}

/// Takes the next positional argument, which must be one string.
pub(crate) fn string(pos: &mut Vec<Arg>, command: &str, line: usize) -> Result<String, ParseError> {
    let mut values = strings(pos, command, line)?;
    match values.len() {
        1 => Ok(values.remove(0)),
        _ => Err(ParseError::new(
            line,
            format!("{command}: expected one string, not a list"),
        )),
    }
}

/// Fails if positional arguments are left over.
pub(crate) fn no_more(pos: &[Arg], command: &str) -> Result<(), ParseError> {
    match pos.last() {
        None => Ok(()),
        Some(Arg::Strings { line, .. } | Arg::Number(_, line) | Arg::Tag(_, line)) => {
            Err(ParseError::new(*line, format!("{command}: too many arguments")))
        }
    }
}
