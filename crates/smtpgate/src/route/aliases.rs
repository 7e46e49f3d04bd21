//! The aliases file: addresses that stand for other addresses.
//!
//! The syntax follows Postfix's `aliases(5)`, restricted to full addresses:
//!
//! ```text
//! # Comments are whole lines: `#` may appear in a local part.
//! postmaster@example.test: alice@example.test
//! # A line that starts with whitespace continues the one before.
//! team@example.test: alice@example.test, bob@other.test,
//!     carol@other.test
//! # Any address at old.example goes to the same local part at new.example.
//! @old.example: @new.example
//! ```
//!
//! Keys match without regard to case.
//! An address alias takes precedence over the domain alias of its domain. Expansion is recursive; a
//! target equal to the alias itself means "deliver there too" and stops there.

use std::collections::{HashMap, HashSet};
use std::path::Path;

/// Expansion fails with [`AliasError::TooMany`] beyond this many final addresses...
pub const MAX_RESULTS: usize = 1000;
/// ...or this many nested aliases.
pub const MAX_DEPTH: usize = 20;

/// The parsed aliases file.
#[derive(Debug, Clone, Default)]
pub struct Aliases {
    /// Lowercase address → targets as written.
    addresses: HashMap<String, Vec<String>>,
    /// Lowercase domain → target domain as written.
    domains: HashMap<String, String>,
}

/// One final address of an expansion.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Expansion {
    pub address: String,
    /// The chain of aliases it came through, first = the original.
    pub via: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AliasError {
    /// The aliases form a cycle: each expands to the next, the last is the first again.
    Loop(Vec<String>),
    /// More than [`MAX_RESULTS`] results or more than [`MAX_DEPTH`] nested aliases.
    TooMany,
}

impl std::fmt::Display for AliasError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AliasError::Loop(cycle) => write!(f, "alias loop: {}", cycle.join(" -> ")),
            AliasError::TooMany => {
                write!(
                    f,
                    "alias expansion exceeds {MAX_RESULTS} addresses or {MAX_DEPTH} levels"
                )
            }
        }
    }
}

impl std::error::Error for AliasError {}

impl Aliases {
    /// Parses the file's text; an error names the line.
    pub fn parse(text: &str) -> Result<Aliases, String> {
        let mut aliases = Aliases::default();
        let mut defined: HashMap<String, usize> = HashMap::new();
        for (line_no, entry) in logical_lines(text)? {
            let (key, targets) = parse_entry(&entry).map_err(|e| format!("line {line_no}: {e}"))?;
            let folded = key.to_lowercase();
            if let Some(first) = defined.insert(folded.clone(), line_no) {
                return Err(format!("line {line_no}: `{key}` is already defined on line {first}"));
            }
            match targets {
                Targets::Domain(domain) => {
                    aliases.domains.insert(folded[1..].to_string(), domain);
                }
                Targets::Addresses(list) => {
                    aliases.addresses.insert(folded, list);
                }
            }
        }
        Ok(aliases)
    }

    pub fn load(path: &Path) -> Result<Aliases, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        Aliases::parse(&text).map_err(|e| format!("{}: {e}", path.display()))
    }

    /// The number of entries (address and domain aliases).
    pub fn len(&self) -> usize {
        self.addresses.len() + self.domains.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// None if `address` is not an alias (nor in an aliased domain). Otherwise the final addresses after
    /// nested expansion, deduplicated, in order. A cycle (a → b → a) is `Err(Loop)`.
    pub fn expand(&self, address: &str) -> Option<Result<Vec<Expansion>, AliasError>> {
        let targets = self.targets(address)?;
        let mut walk = Walk::new(self, address);
        Some(walk.expand(address, targets).map(|()| walk.out))
    }

    /// What `address` expands to, one level deep; `None` if it is not an alias.
    fn targets(&self, address: &str) -> Option<Vec<String>> {
        let folded = address.to_lowercase();
        if let Some(list) = self.addresses.get(&folded) {
            return Some(list.clone());
        }
        let (local, domain) = address.rsplit_once('@')?;
        let new_domain = self.domains.get(&domain.to_lowercase())?;
        Some(vec![format!("{local}@{new_domain}")])
    }
}

/// One expansion: a depth-first search that remembers the aliases it finished, so each alias is
/// expanded once however many routes lead to it (its results are already in `out`).
struct Walk<'a> {
    aliases: &'a Aliases,
    /// The aliases being expanded, as written, outermost first.
    path: Vec<String>,
    /// `path`, lowercase.
    on_path: HashSet<String>,
    finished: HashSet<String>,
    out: Vec<Expansion>,
    delivered: HashSet<String>,
}

impl<'a> Walk<'a> {
    fn new(aliases: &'a Aliases, original: &str) -> Self {
        Walk {
            aliases,
            path: vec![original.to_string()],
            on_path: HashSet::from([original.to_lowercase()]),
            finished: HashSet::new(),
            out: Vec::new(),
            delivered: HashSet::new(),
        }
    }

    /// Expands `alias`, which is last on the path, into `targets`.
    fn expand(&mut self, alias: &str, targets: Vec<String>) -> Result<(), AliasError> {
        let alias_folded = alias.to_lowercase();
        for target in targets {
            let folded = target.to_lowercase();
            if folded == alias_folded {
                // "Deliver here too": the one target that is not expanded again.
                self.deliver(target, folded)?;
                continue;
            }
            if self.finished.contains(&folded) {
                // Reached by another route: its results are already out.
                continue;
            }
            if self.on_path.contains(&folded) {
                return Err(AliasError::Loop(self.cycle_to(&folded, target)));
            }
            match self.aliases.targets(&target) {
                Some(next) => self.descend(target, folded, next)?,
                None => self.deliver(target, folded)?,
            }
        }
        self.finished.insert(alias_folded);
        Ok(())
    }

    fn descend(&mut self, alias: String, folded: String, targets: Vec<String>) -> Result<(), AliasError> {
        if self.path.len() >= MAX_DEPTH {
            return Err(AliasError::TooMany);
        }
        self.path.push(alias.clone());
        self.on_path.insert(folded.clone());
        self.expand(&alias, targets)?;
        self.on_path.remove(&folded);
        self.path.pop();
        Ok(())
    }

    fn deliver(&mut self, address: String, folded: String) -> Result<(), AliasError> {
        if self.delivered.insert(folded) {
            if self.out.len() == MAX_RESULTS {
                return Err(AliasError::TooMany);
            }
            self.out.push(Expansion {
                address,
                via: self.path.clone(),
            });
        }
        Ok(())
    }

    /// The path from `folded`'s place on it, then `target` again.
    fn cycle_to(&self, folded: &str, target: String) -> Vec<String> {
        let start = self.path.iter().position(|a| a.to_lowercase() == folded).unwrap_or(0);
        let mut cycle = self.path[start..].to_vec();
        cycle.push(target);
        cycle
    }
}

enum Targets {
    Addresses(Vec<String>),
    /// The target of a domain alias, without the `@`.
    Domain(String),
}

/// Joins continuation lines to their entry, skipping comments and blank lines. Each entry comes with the
/// number of its first line.
fn logical_lines(text: &str) -> Result<Vec<(usize, String)>, String> {
    let mut entries: Vec<(usize, String)> = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let trimmed = line.trim();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        if line.starts_with(char::is_whitespace) {
            let Some((_, entry)) = entries.last_mut() else {
                return Err(format!("line {}: continuation line without an entry before it", i + 1));
            };
            entry.push(' ');
            entry.push_str(trimmed);
        } else {
            entries.push((i + 1, trimmed.to_string()));
        }
    }
    Ok(entries)
}

fn parse_entry(entry: &str) -> Result<(&str, Targets), String> {
    let Some((key, rest)) = entry.split_once(':') else {
        return Err("expected `address: targets`".to_string());
    };
    let key = key.trim();
    let targets: Vec<&str> = rest.split(',').map(str::trim).filter(|t| !t.is_empty()).collect();
    if targets.is_empty() {
        return Err(format!("`{key}` has no targets"));
    }
    if let Some(domain) = key.strip_prefix('@') {
        check_domain(domain, key)?;
        return match targets[..] {
            [target] => match target.strip_prefix('@') {
                Some(to) => check_domain(to, target).map(|()| (key, Targets::Domain(to.to_string()))),
                None => Err(format!(
                    "the domain alias `{key}` needs a target of the form `@domain`, not `{target}`"
                )),
            },
            _ => Err(format!("the domain alias `{key}` needs exactly one target")),
        };
    }
    check_address(key)?;
    let list = targets
        .iter()
        .map(|t| check_address(t).map(|()| t.to_string()))
        .collect::<Result<_, _>>()?;
    Ok((key, Targets::Addresses(list)))
}

fn check_address(address: &str) -> Result<(), String> {
    match address.rsplit_once('@') {
        Some((local, domain)) if !local.is_empty() && !local.contains(char::is_whitespace) => {
            check_domain(domain, address)
        }
        _ if address.contains(char::is_whitespace) => Err(format!(
            "`{address}` is not an address (targets are separated by commas)"
        )),
        _ => Err(format!("`{address}` is not an address of the form `local@domain`")),
    }
}

fn check_domain(domain: &str, written: &str) -> Result<(), String> {
    if domain.is_empty() || domain.contains(|c: char| c.is_whitespace() || c == '@') {
        return Err(format!("`{written}` does not have a valid domain"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn aliases(text: &str) -> Aliases {
        Aliases::parse(text).unwrap_or_else(|e| panic!("{e}"))
    }

    /// The final addresses, or the error.
    fn expand(a: &Aliases, address: &str) -> Result<Vec<String>, AliasError> {
        let expansions = a.expand(address).expect("an alias")?;
        Ok(expansions.into_iter().map(|e| e.address).collect())
    }

    fn via(a: &Aliases, address: &str) -> Vec<Vec<String>> {
        a.expand(address).unwrap().unwrap().into_iter().map(|e| e.via).collect()
    }

    #[test]
    fn simple_alias() {
        let a = aliases("postmaster@example.test: alice@example.test\n");
        assert_eq!(a.len(), 1);
        assert_eq!(expand(&a, "postmaster@example.test").unwrap(), ["alice@example.test"]);
        assert_eq!(via(&a, "postmaster@example.test"), [["postmaster@example.test"]]);
    }

    #[test]
    fn not_an_alias() {
        let a = aliases("postmaster@example.test: alice@example.test\n");
        assert_eq!(a.expand("alice@example.test"), None);
        assert_eq!(a.expand("postmaster@other.test"), None);
        assert_eq!(a.expand("postmaster"), None);
        assert!(aliases("").is_empty());
    }

    #[test]
    fn list_keeps_order() {
        let a = aliases("list@example.test: b@y.test, a@x.test ,c@z.test\n");
        assert_eq!(
            expand(&a, "list@example.test").unwrap(),
            ["b@y.test", "a@x.test", "c@z.test"]
        );
    }

    #[test]
    fn nested_aliases_are_expanded_with_their_chain() {
        let a = aliases(
            "all@example.test: staff@example.test, boss@example.test\n\
             staff@example.test: a@x.test, b@x.test\n\
             boss@example.test: ceo@example.test\n\
             ceo@example.test: c@x.test\n",
        );
        assert_eq!(
            expand(&a, "all@example.test").unwrap(),
            ["a@x.test", "b@x.test", "c@x.test"]
        );
        assert_eq!(
            via(&a, "all@example.test"),
            [
                vec!["all@example.test", "staff@example.test"],
                vec!["all@example.test", "staff@example.test"],
                vec!["all@example.test", "boss@example.test", "ceo@example.test"],
            ]
        );
    }

    #[test]
    fn self_reference_delivers_and_stops() {
        let a = aliases("a@x.test: a@x.test, copy@y.test\ncopy@y.test: archive@y.test\n");
        assert_eq!(expand(&a, "a@x.test").unwrap(), ["a@x.test", "archive@y.test"]);
        assert_eq!(via(&a, "a@x.test")[0], ["a@x.test"]);
    }

    #[test]
    fn nested_self_reference_delivers() {
        let a = aliases("a@x.test: b@x.test\nb@x.test: b@x.test, c@x.test\n");
        assert_eq!(expand(&a, "a@x.test").unwrap(), ["b@x.test", "c@x.test"]);
    }

    #[test]
    fn loop_of_two_names_the_cycle() {
        let a = aliases("a@x.test: b@x.test\nb@x.test: a@x.test\n");
        assert_eq!(
            expand(&a, "a@x.test"),
            Err(AliasError::Loop(vec![
                "a@x.test".into(),
                "b@x.test".into(),
                "a@x.test".into()
            ]))
        );
    }

    #[test]
    fn loop_of_three_below_the_original_names_only_the_cycle() {
        let a =
            aliases("start@x.test: a@x.test\na@x.test: b@x.test\nb@x.test: c@x.test\nc@x.test: ok@y.test, A@x.test\n");
        let cycle = ["a@x.test", "b@x.test", "c@x.test", "A@x.test"]
            .map(String::from)
            .to_vec();
        assert_eq!(expand(&a, "start@x.test"), Err(AliasError::Loop(cycle)));
        assert_eq!(
            AliasError::Loop(vec!["a".into(), "b".into(), "a".into()]).to_string(),
            "alias loop: a -> b -> a"
        );
    }

    #[test]
    fn the_same_alias_reached_twice_is_not_a_loop() {
        let a = aliases("a@x.test: b@x.test, c@x.test\nb@x.test: d@x.test\nc@x.test: d@x.test\nd@x.test: e@y.test\n");
        assert_eq!(expand(&a, "a@x.test").unwrap(), ["e@y.test"]);
    }

    #[test]
    fn domain_alias_keeps_the_local_part() {
        let a = aliases("@old.example: @new.example\n");
        assert_eq!(
            expand(&a, "Joe.Bloggs@old.example").unwrap(),
            ["Joe.Bloggs@new.example"]
        );
        assert_eq!(via(&a, "Joe.Bloggs@old.example"), [["Joe.Bloggs@old.example"]]);
        assert_eq!(a.expand("joe@new.example"), None);
    }

    #[test]
    fn address_alias_takes_precedence_over_domain_alias() {
        let a = aliases("@old.example: @new.example\nboss@old.example: ceo@new.example\n");
        assert_eq!(expand(&a, "boss@old.example").unwrap(), ["ceo@new.example"]);
        assert_eq!(expand(&a, "clerk@old.example").unwrap(), ["clerk@new.example"]);
    }

    #[test]
    fn domain_alias_result_is_expanded_again() {
        let a = aliases("@old.example: @new.example\nsales@new.example: a@x.test, b@x.test\n");
        assert_eq!(expand(&a, "sales@old.example").unwrap(), ["a@x.test", "b@x.test"]);
        assert_eq!(
            via(&a, "sales@old.example")[0],
            ["sales@old.example", "sales@new.example"]
        );
    }

    #[test]
    fn matching_ignores_case() {
        let a = aliases("PostMaster@Example.TEST: Alice@example.test\n@Old.Example: @new.example\n");
        assert_eq!(expand(&a, "postmaster@example.test").unwrap(), ["Alice@example.test"]);
        assert_eq!(expand(&a, "POSTMASTER@EXAMPLE.TEST").unwrap(), ["Alice@example.test"]);
        assert_eq!(expand(&a, "x@OLD.example").unwrap(), ["x@new.example"]);
    }

    #[test]
    fn duplicates_are_dropped_ignoring_case() {
        let a = aliases(
            "list@x.test: a@y.test, b@y.test, A@Y.test, sub@x.test\n\
             sub@x.test: b@y.test, c@y.test\n",
        );
        assert_eq!(expand(&a, "list@x.test").unwrap(), ["a@y.test", "b@y.test", "c@y.test"]);
    }

    #[test]
    fn comments_blank_lines_and_continuations() {
        let a = aliases(
            "# staff\n\
             \n\
             team@x.test: a@y.test,\n\
             \tb@y.test\n\
             \x20  # a comment inside the entry\n\
             \x20 , c@y.test\n\
             other@x.test: d@y.test\n",
        );
        assert_eq!(a.len(), 2);
        assert_eq!(expand(&a, "team@x.test").unwrap(), ["a@y.test", "b@y.test", "c@y.test"]);
    }

    #[test]
    fn parse_errors_name_the_line() {
        let cases = [
            (
                "a@x.test: b@x.test\n\n# c\nnonsense\n",
                "line 4: expected `address: targets`",
            ),
            ("  b@x.test\n", "line 1: continuation line without an entry before it"),
            ("a@x.test:\n", "line 1: `a@x.test` has no targets"),
            (
                "a@x.test: b@x.test c@x.test\n",
                "line 1: `b@x.test c@x.test` is not an address (targets are separated by commas)",
            ),
            (
                "a@x.test: |/usr/bin/foo\n",
                "line 1: `|/usr/bin/foo` is not an address of the form `local@domain`",
            ),
            (
                "postmaster: b@x.test\n",
                "line 1: `postmaster` is not an address of the form `local@domain`",
            ),
            ("a@: b@x.test\n", "line 1: `a@` does not have a valid domain"),
            (
                "@old.test: new.test\n",
                "line 1: the domain alias `@old.test` needs a target of the form `@domain`, not `new.test`",
            ),
            (
                "@old.test: @a.test, @b.test\n",
                "line 1: the domain alias `@old.test` needs exactly one target",
            ),
            (
                "a@x.test: b@x.test\n#\nA@X.test: c@x.test\n",
                "line 3: `A@X.test` is already defined on line 1",
            ),
        ];
        for (text, want) in cases {
            assert_eq!(Aliases::parse(text).unwrap_err(), want, "{text:?}");
        }
    }

    #[test]
    fn too_deep() {
        let chain = |n: usize| {
            (0..n)
                .map(|i| format!("a{i}@x.test: a{}@x.test\n", i + 1))
                .collect::<String>()
        };
        assert_eq!(
            expand(&aliases(&chain(MAX_DEPTH)), "a0@x.test").unwrap(),
            [format!("a{MAX_DEPTH}@x.test")]
        );
        assert_eq!(
            expand(&aliases(&chain(MAX_DEPTH + 1)), "a0@x.test"),
            Err(AliasError::TooMany)
        );
    }

    #[test]
    fn too_many() {
        let list = |n: usize| {
            let targets: Vec<String> = (0..n).map(|i| format!("u{i}@y.test")).collect();
            format!("big@x.test: {}\n", targets.join(", "))
        };
        assert_eq!(
            expand(&aliases(&list(MAX_RESULTS)), "big@x.test").unwrap().len(),
            MAX_RESULTS
        );
        assert_eq!(
            expand(&aliases(&list(MAX_RESULTS + 1)), "big@x.test"),
            Err(AliasError::TooMany)
        );
    }

    #[test]
    fn load_names_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("aliases");
        std::fs::write(&path, "a@x.test: b@x.test\nbad\n").unwrap();
        assert_eq!(
            Aliases::load(&path).unwrap_err(),
            format!("{}: line 2: expected `address: targets`", path.display())
        );
        std::fs::write(&path, "a@x.test: b@x.test\n").unwrap();
        assert_eq!(Aliases::load(&path).unwrap().len(), 1);
    }
}
