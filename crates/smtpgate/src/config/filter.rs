//! `[[filter]]`: the policy filters, each built by its kind from the rest of its keys.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;

use super::check::Issues;
use super::raw::Text;
use crate::filter::Filter;

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

/// One configured filter, built.
#[derive(Debug, Clone)]
pub struct FilterConfig {
    pub name: String,
    pub kind: String,
    pub stage: Stage,
    pub timeout: Duration,
    pub on_error: OnError,
    pub filter: Arc<dyn Filter>,
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
            issues.push(
                key("kind"),
                format!("is required (one of {})", crate::filter::registry::KINDS.join(", ")),
            );
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
        match crate::filter::registry::build(&kind, f.options, base_dir) {
            Ok(filter) => out.push(FilterConfig {
                name,
                kind,
                stage,
                timeout,
                on_error,
                filter,
            }),
            Err(errors) => {
                for (field, message) in errors {
                    let k = if field.is_empty() { key("kind") } else { key(&field) };
                    issues.push(k, message);
                }
            }
        }
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

/// The names of the filters after the one named `by` (where a quarantined message resumes).
pub fn names_after(filters: &[&FilterConfig], by: &str) -> Vec<String> {
    let at = filters
        .iter()
        .position(|f| f.name == by)
        .map_or(filters.len(), |i| i + 1);
    filters[at..].iter().map(|f| f.name.clone()).collect()
}
