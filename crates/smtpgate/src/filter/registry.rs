//! The filter kinds smtpgate has, by the name used in `kind = "..."`.

use std::path::Path;
use std::sync::Arc;

use super::Filter;
use super::options::BuildErrors;

/// Every kind, for error messages.
pub use crate::config::filter::KINDS;

/// Builds a filter of `kind` from the rest of its `[[filter]]` keys.
pub fn build(kind: &str, options: toml::Table, base_dir: &Path) -> Result<Arc<dyn Filter>, BuildErrors> {
    match kind {
        "arc_seal" => super::arc::build(options, base_dir),
        "auth" => super::auth::build(options, base_dir),
        "clamav" => super::clamav::build(options, base_dir),
        "connection" => super::connection::build(options, base_dir),
        "content" => super::content::build(options, base_dir),
        "dkim_sign" => super::dkim::build(options, base_dir),
        "dlp" => super::dlp::build(options, base_dir),
        "milter" => super::milter::build(options, base_dir),
        "rate_limit" => super::ratelimit::build(options, base_dir),
        "rspamd" => super::rspamd::build(options, base_dir),
        "sanitize" => super::sanitize::build(options, base_dir),
        other => Err(vec![(
            String::new(),
            format!("unknown kind {other:?} (one of {})", KINDS.join(", ")),
        )]),
    }
}
