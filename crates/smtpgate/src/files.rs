//! Small state files (`suspended.json`, `stats.json`, the warm-up counts) written so that a crash
//! leaves the old file or the new one, never a torn or empty one. Depends on std only.

use std::ffi::OsString;
use std::io::Write;
use std::path::{Path, PathBuf};

/// Replaces `path` with `data`: a temporary file beside it (`<name>.tmp`), fsynced, renamed over
/// it, then the directory fsynced. Callers that may save from two threads at once hold a lock
/// around it (they would share the temporary file).
pub fn replace_durably(path: &Path, data: &[u8]) -> std::io::Result<()> {
    let tmp = temporary(path);
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(data)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)?;
    match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => std::fs::File::open(dir)?.sync_all(),
        _ => Ok(()),
    }
}

/// `<path>.tmp`.
fn temporary(path: &Path) -> PathBuf {
    let mut name: OsString = path.as_os_str().to_owned();
    name.push(".tmp");
    PathBuf::from(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_is_replaced_whole_and_no_temporary_file_is_left() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        replace_durably(&path, b"{\"a\": 1}").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"{\"a\": 1}");
        replace_durably(&path, b"{}").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"{}");
        assert!(!dir.path().join("state.json.tmp").exists());
        // A directory that is not there: the error, and nothing half-written.
        let missing = dir.path().join("gone/state.json");
        assert!(replace_durably(&missing, b"{}").is_err());
        assert!(!missing.exists());
    }
}
