//! `[[filter]]`: the policy filters as the configuration states them: a name, a kind, a stage, a
//! timeout, what a failure means, and the kind's own options (checked and built by the filter's
//! kind when the running server's context is built: `crate::filter::Filters`).

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use super::issues::{Checks as _, Issues};
use super::text::Text;

#[derive(Debug, Deserialize)]
pub struct RawFilter {
    pub name: Option<String>,
    pub kind: Option<String>,
    pub stage: Option<String>,
    pub timeout: Option<Text>,
    pub on_error: Option<String>,
    /// Everything else belongs to the kind.
    #[serde(flatten)]
    pub options: toml::Table,
}

/// When a filter runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// During the session: the client gets the verdict.
    BeforeQueue,
    /// After the `250`, before the first delivery attempt.
    AfterQueue,
}

/// What a filter that breaks or times out means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnError {
    /// Fail open: as if it had accepted (the default).
    Accept,
    /// Fail closed: a temporary refusal (before the queue), a retry later (after it).
    TempFail,
}

/// Every filter kind, by the name used in `kind = "..."`.
pub const KINDS: &[&str] = &[
    "arc_seal",
    "auth",
    "clamav",
    "connection",
    "content",
    "dkim_sign",
    "dlp",
    "milter",
    "rate_limit",
    "rspamd",
    "sanitize",
];

/// One configured filter.
#[derive(Debug, Clone, PartialEq)]
pub struct FilterConfig {
    pub name: String,
    pub kind: String,
    pub stage: Stage,
    pub timeout: Duration,
    pub on_error: OnError,
    /// The rest of its keys: the kind's options.
    pub options: toml::Table,
    /// Where relative paths in the options start (the configuration file's directory).
    pub base_dir: PathBuf,
    /// Its place in the `[[filter]]` array, for naming its keys in errors (`filter[2].keys`).
    pub index: usize,
}

pub(super) fn build_filters(raw: Vec<RawFilter>, base_dir: &Path, issues: &mut Issues) -> Vec<FilterConfig> {
    let mut out: Vec<FilterConfig> = Vec::new();
    for (index, f) in raw.into_iter().enumerate() {
        let key = |field: &str| format!("filter[{index}].{field}");
        let name = f.name.unwrap_or_else(|| format!("filter{index}"));
        if out.iter().any(|o| o.name == name) {
            issues.push(key("name"), format!("{name:?} is already the name of another filter"));
        }
        let Some(kind) = f.kind else {
            issues.push(key("kind"), format!("is required (one of {})", KINDS.join(", ")));
            continue;
        };
        let stage = match f.stage.as_deref() {
            None | Some("before_queue") => Stage::BeforeQueue,
            Some("after_queue") => Stage::AfterQueue,
            Some(other) => {
                issues.push(
                    key("stage"),
                    format!("{other:?} is not one of \"before_queue\", \"after_queue\""),
                );
                Stage::BeforeQueue
            }
        };
        let on_error = match f.on_error.as_deref() {
            None | Some("accept") => OnError::Accept,
            Some("tempfail") => OnError::TempFail,
            Some(other) => {
                issues.push(
                    key("on_error"),
                    format!("{other:?} is not one of \"accept\", \"tempfail\""),
                );
                OnError::Accept
            }
        };
        let timeout = issues.timeout(key("timeout"), f.timeout, Duration::from_secs(30));
        if !KINDS.contains(&kind.as_str()) {
            issues.push(
                key("kind"),
                format!("unknown kind {kind:?} (one of {})", KINDS.join(", ")),
            );
            continue;
        }
        out.push(FilterConfig {
            name,
            kind,
            stage,
            timeout,
            on_error,
            options: f.options,
            base_dir: base_dir.to_path_buf(),
            index,
        });
    }
    out
}

/// Checks that every name in a `filters = [...]` list is a configured filter.
pub(super) fn check_names(key: &str, names: &[String], filters: &[FilterConfig], issues: &mut Issues) {
    for (i, n) in names.iter().enumerate() {
        if !filters.iter().any(|f| &f.name == n) {
            issues.push(format!("{key}[{i}]"), format!("no filter named {n:?}"));
        }
    }
}
