//! The value checks of the configuration files, reporting into the one collector of mistakes
//! ([`Issues`], below config): each mistake under its key, with a stand-in value so that
//! checking goes on and every mistake is reported at once.

use std::path::{Path, PathBuf};
use std::time::Duration;

use std::fmt::Display;

use super::text::Text;
use super::values::*;
pub(super) use crate::issues::Issues;

/// Checks that record a mistake in the collector and return a stand-in value.
pub(super) trait Checks {
    /// Parses an optional text value, or gives `default` when it is absent or wrong.
    fn parse<T, E: Display>(
        &mut self,
        key: impl Into<String>,
        raw: Option<Text>,
        parse: fn(&str) -> Result<T, E>,
        default: T,
    ) -> T;

    /// Parses each entry of an optional list; wrong entries are reported as `key[i]`.
    fn list<T, E: Display>(&mut self, key: &str, raw: Option<Vec<Text>>, parse: fn(&str) -> Result<T, E>) -> Vec<T>;

    /// A duration that must not be zero (timeouts, retry delays, ages).
    fn timeout(&mut self, key: String, raw: Option<Text>, default: Duration) -> Duration;

    /// An integer count of at least `min` that fits `T`.
    fn count<T: TryFrom<i64>>(&mut self, key: String, raw: Option<i64>, min: i64, default: T) -> T;

    /// A file that must exist, relative to `base_dir`.
    fn existing_file(&mut self, key: String, base_dir: &Path, raw: &str) -> PathBuf;
}

impl Checks for Issues {
    fn parse<T, E: Display>(
        &mut self,
        key: impl Into<String>,
        raw: Option<Text>,
        parse: fn(&str) -> Result<T, E>,
        default: T,
    ) -> T {
        let Some(text) = raw else { return default };
        parse(text.as_str()).unwrap_or_else(|message| {
            self.push(key, message.to_string());
            default
        })
    }

    fn list<T, E: Display>(&mut self, key: &str, raw: Option<Vec<Text>>, parse: fn(&str) -> Result<T, E>) -> Vec<T> {
        let mut values = Vec::new();
        for (index, text) in raw.unwrap_or_default().into_iter().enumerate() {
            match parse(text.as_str()) {
                Ok(value) => values.push(value),
                Err(message) => self.push(format!("{key}[{index}]"), message.to_string()),
            }
        }
        values
    }

    fn timeout(&mut self, key: String, raw: Option<Text>, default: Duration) -> Duration {
        let value = self.parse(key.clone(), raw, parse_duration, default);
        if value.is_zero() {
            self.push(key, "must be more than 0s");
            return default;
        }
        value
    }

    fn count<T: TryFrom<i64>>(&mut self, key: String, raw: Option<i64>, min: i64, default: T) -> T {
        let Some(number) = raw else { return default };
        match T::try_from(number) {
            Ok(value) if number >= min => value,
            _ if number < min => {
                self.push(key, format!("{number} is too small (at least {min})"));
                default
            }
            _ => {
                self.push(key, format!("{number} is too large"));
                default
            }
        }
    }

    fn existing_file(&mut self, key: String, base_dir: &Path, raw: &str) -> PathBuf {
        let path = resolve(base_dir, raw);
        match std::fs::metadata(&path) {
            _ if raw.trim().is_empty() => self.push(key, "must not be empty"),
            Ok(meta) if meta.is_dir() => self.push(key, format!("{} is a folder, not a file", path.display())),
            Ok(_) => {}
            Err(error) => self.push(key, format!("cannot use {}: {error}", path.display())),
        }
        path
    }
}

/// `raw` as a path; relative ones are taken relative to `base_dir`.
pub(super) fn resolve(base_dir: &Path, raw: &str) -> PathBuf {
    let path = Path::new(raw);
    match path.is_absolute() {
        true => path.to_owned(),
        false => base_dir.join(path),
    }
}
