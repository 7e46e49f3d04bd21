//! The one collector of configuration mistakes, for every file the gate reads: the main
//! configuration, the shaping file (its limits and `[[adaptive]]` rules), the bounce rules and
//! the filters' options.
//!
//! Each mistake names its file (when it is not the one being read), the key it is about
//! (`listener[0].max_message_size`, `adaptive[2].action`, `rule[1].code`) and what is wrong, so
//! `smtpgate check-config` can list every mistake of every file in one list, one line each:
//! `file: key: message`.
//!
//! This module is a leaf: the parsers of every file (in `config`, `reply`, `filter`) report into
//! it without depending on each other.

use std::fmt;
use std::path::{Path, PathBuf};

/// One mistake: the file it is in (`None`: the file being checked, named by whoever reads it),
/// the key path (empty when the mistake is not about one key) and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigIssue {
    pub file: Option<PathBuf>,
    pub key: String,
    pub message: String,
}

impl ConfigIssue {
    pub fn new(key: impl Into<String>, message: impl Into<String>) -> Self {
        ConfigIssue {
            file: None,
            key: key.into(),
            message: message.into(),
        }
    }

    /// Names `path` as the issue's file, unless it already names one (a file the first one
    /// refers to, such as the shaping file of the main configuration).
    pub fn in_file(mut self, path: &Path) -> Self {
        self.file.get_or_insert_with(|| path.to_path_buf());
        self
    }
}

impl fmt::Display for ConfigIssue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(file) = &self.file {
            write!(f, "{}: ", file.display())?;
        }
        if !self.key.is_empty() {
            write!(f, "{}: ", self.key)?;
        }
        f.write_str(&self.message)
    }
}

/// Everything wrong with a configuration and the files it names. Displayed as one line per issue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub errors: Vec<ConfigIssue>,
}

impl ConfigError {
    /// Names `path` as the file of every issue that names none yet.
    pub fn in_file(self, path: &Path) -> Self {
        let errors = self.errors.into_iter().map(|i| i.in_file(path)).collect();
        ConfigError { errors }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, issue) in self.errors.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{issue}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigError {}

impl From<ConfigIssue> for ConfigError {
    fn from(issue: ConfigIssue) -> Self {
        ConfigError { errors: vec![issue] }
    }
}

/// The collector: mistakes found so far. A check records its mistake and carries on with a
/// stand-in value, so that one pass reports every mistake at once; [`Issues::finish`] then
/// keeps the value only when nothing was wrong.
#[derive(Debug, Default)]
pub struct Issues {
    found: Vec<ConfigIssue>,
}

impl Issues {
    pub fn push(&mut self, key: impl Into<String>, message: impl Into<String>) {
        self.found.push(ConfigIssue::new(key, message));
    }

    /// Records an issue as it is (with its file, if it names one).
    pub fn add(&mut self, issue: ConfigIssue) {
        self.found.push(issue);
    }

    /// Takes in every mistake of another check, e.g. a file the configuration names.
    pub fn absorb(&mut self, error: ConfigError) {
        self.found.extend(error.errors);
    }

    /// Takes in `error`'s mistakes with `prefix` put before each key (`filter[2]` + `keys`).
    pub fn absorb_under(&mut self, prefix: &str, error: ConfigError) {
        for mut issue in error.errors {
            issue.key = match issue.key.is_empty() {
                true => prefix.to_owned(),
                false => format!("{prefix}.{}", issue.key),
            };
            self.found.push(issue);
        }
    }

    pub fn is_empty(&self) -> bool {
        self.found.is_empty()
    }

    /// How many mistakes were recorded: a check compares it before and after to learn whether
    /// its own part was wrong.
    pub fn len(&self) -> usize {
        self.found.len()
    }

    /// `value` when nothing was wrong, else every mistake.
    pub fn finish<T>(self, value: T) -> Result<T, ConfigError> {
        match self.found.is_empty() {
            true => Ok(value),
            false => Err(ConfigError { errors: self.found }),
        }
    }
}

impl From<Vec<ConfigIssue>> for Issues {
    fn from(found: Vec<ConfigIssue>) -> Self {
        Issues { found }
    }
}

/// A value written in a file that does not mean what it must: the message quotes the text and
/// shows a valid example (`"50XB" is not a size (use e.g. 50MB)`); the caller adds the key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValueError(String);

impl ValueError {
    pub fn new(message: impl Into<String>) -> Self {
        ValueError(message.into())
    }

    pub fn message(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ValueError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ValueError {}

/// Tests and callers compare the message as written.
impl PartialEq<&str> for ValueError {
    fn eq(&self, other: &&str) -> bool {
        self.0 == *other
    }
}

impl From<String> for ValueError {
    fn from(message: String) -> Self {
        ValueError(message)
    }
}

impl From<&str> for ValueError {
    fn from(message: &str) -> Self {
        ValueError(message.to_owned())
    }
}

impl From<ValueError> for String {
    fn from(error: ValueError) -> Self {
        error.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_issue_shows_its_file_and_key_when_it_has_them() {
        let issue = ConfigIssue::new("rule[1].code", "999 is not an SMTP reply code");
        assert_eq!(issue.to_string(), "rule[1].code: 999 is not an SMTP reply code");
        let issue = issue.in_file(Path::new("rules.toml"));
        assert_eq!(
            issue.to_string(),
            "rules.toml: rule[1].code: 999 is not an SMTP reply code"
        );
        let keyless = ConfigIssue::new("", "cannot read it").in_file(Path::new("a.toml"));
        assert_eq!(keyless.to_string(), "a.toml: cannot read it");
    }

    #[test]
    fn a_file_already_named_is_kept() {
        let error = ConfigError::from(ConfigIssue::new("default.tls", "bad").in_file(Path::new("shaping.toml")));
        let error = error.in_file(Path::new("smtpgate.toml"));
        assert_eq!(error.to_string(), "shaping.toml: default.tls: bad");
    }

    #[test]
    fn the_collector_keeps_the_value_only_without_mistakes() {
        assert_eq!(Issues::default().finish(7), Ok(7));
        let mut issues = Issues::default();
        issues.push("a", "wrong");
        issues.absorb_under("filter[2]", ConfigError::from(ConfigIssue::new("keys", "empty")));
        issues.absorb_under("filter[3]", ConfigError::from(ConfigIssue::new("", "no such kind")));
        let error = issues.finish(7).unwrap_err();
        assert_eq!(
            error.to_string(),
            "a: wrong\nfilter[2].keys: empty\nfilter[3]: no such kind"
        );
    }
}
