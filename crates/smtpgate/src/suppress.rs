//! The suppression list: addresses that must not be mailed (hard bounces, complaints, manual entries).
//!
//! Reads happen on every RCPT and are a lookup in an in-memory map; writes are rare and durable. The
//! list lives in `suppression.log` inside its directory: an append-only log of JSON lines, one
//! record per change, each appended with one write and made durable with `sync_data` before the
//! change becomes visible:
//!
//! ```text
//! {"op":"add","address":"user@example.com","reason":"hard_bounce","source":"bounce from mx.example.net: 550 5.1.1","added_at":1767225600}
//! {"op":"remove","address":"user@example.com","at":1767229200}
//! ```
//!
//! [`SuppressionList::open`] replays the log. A torn last line (a crash in the middle of an append)
//! is truncated away; a bad line elsewhere is skipped with a warning. When the log holds more than
//! twice as many lines as live entries (and more than 1000 lines), it is rewritten
//! compactly: temporary file, `sync_data`, rename over the log, fsync of the directory.
//!
//! One process owns a list directory at a time: a second process appending to the same log would
//! not be seen by the first until it reopens, and a compaction by either would lose the other's
//! later appends.
//!
//! ```no_run
//! use smtpgate::suppress::{Reason, SuppressionList};
//!
//! let list = SuppressionList::open(std::path::Path::new("/var/spool/smtpgate/suppress"))?;
//! list.add("<User@Example.com>", Reason::HardBounce, "bounce from mx.example.com: 550 5.1.1")?;
//! assert!(list.contains("user@example.com").is_some());
//! # Ok::<(), std::io::Error>(())
//! ```

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError, RwLock};

use crate::datetime::now_unix;

/// The name of the log inside the list's directory.
const LOG_FILE: &str = "suppression.log";
/// The name of the compacted log while it is being written.
const TMP_FILE: &str = "suppression.log.tmp";
/// A log is compacted at open only when it holds more lines than this (and more than twice as many
/// as there are live entries).
const COMPACT_MIN_LINES: usize = 1000;

/// Why an address is suppressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    /// A permanent delivery failure (a 5xx reply or a DSN with `Action: failed`).
    HardBounce,
    /// The recipient reported a message as abuse (an ARF feedback report).
    Complaint,
    /// An operator added it.
    Manual,
}

/// One suppressed address.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Entry {
    /// The normalised address: trimmed, without `<>`, lower-cased.
    pub address: String,
    /// Why it is suppressed.
    pub reason: Reason,
    /// Where it came from, for people: e.g. `bounce from mx.example.net: 550 5.1.1 ...`,
    /// `complaint (ARF) from feedback@yahoo`, `cli`.
    pub source: String,
    /// When it was added or last refreshed, in Unix seconds.
    pub added_at: u64,
}

/// One line of the log.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
enum Record {
    Add(Entry),
    Remove { address: String, at: u64 },
}

/// The durable suppression list. `Send + Sync`: share it behind an `Arc`.
///
/// Lookups take a read lock on the in-memory map only; writers are serialised by the log's mutex
/// and hold the map's write lock just long enough to apply a change that is already durable.
pub struct SuppressionList {
    /// Writers take this first, then `entries`.
    log: Mutex<Log>,
    entries: RwLock<HashMap<String, Entry>>,
}

/// The open log, positioned for appending.
struct Log {
    file: File,
    /// The length of the log's valid content: everything up to the last complete record.
    len: u64,
    /// A failed append may have left bytes past `len` that are not yet cut off.
    dirty: bool,
}

impl SuppressionList {
    /// Opens (creating if needed) the list kept in `dir`, a directory holding `suppression.log`.
    ///
    /// Replays the log, truncates a torn last line, skips (with a warning) bad lines elsewhere, and
    /// compacts the log when most of its lines are dead.
    pub fn open(dir: &Path) -> io::Result<SuppressionList> {
        create_dir(dir)?;
        let path = dir.join(LOG_FILE);
        let (entries, lines) = replay(&path)?;
        sync_dir(dir)?;
        if lines > COMPACT_MIN_LINES && lines > 2 * entries.len() {
            compact(dir, &entries)?;
            tracing::info!(dir = %dir.display(), lines, live = entries.len(), "suppression log compacted");
        }
        let file = OpenOptions::new().append(true).open(&path)?;
        let len = file.metadata()?.len();
        Ok(SuppressionList {
            log: Mutex::new(Log {
                file,
                len,
                dirty: false,
            }),
            entries: RwLock::new(entries),
        })
    }

    /// The entry for `address` if it is suppressed. Case-insensitive on the whole address; `<>`
    /// around it are ignored. An address that is not valid is never suppressed.
    pub fn contains(&self, address: &str) -> Option<Entry> {
        let address = normalize(address).ok()?;
        self.read().get(&address).cloned()
    }

    /// Adds `address`, or refreshes its entry (reason, source, time). `Ok(true)` when it was not
    /// suppressed before. The change is durable when this returns `Ok`; on `Err` nothing changed.
    ///
    /// An address without `@` (or with nothing on either side of it), or with white space or control
    /// characters, is refused with [`io::ErrorKind::InvalidInput`].
    pub fn add(&self, address: &str, reason: Reason, source: &str) -> io::Result<bool> {
        let entry = Entry {
            address: normalize(address)?,
            reason,
            source: source.to_owned(),
            added_at: now_unix(),
        };
        let mut log = self.log.lock().unwrap_or_else(PoisonError::into_inner);
        log.append(&Record::Add(entry.clone()))?;
        let previous = self.write().insert(entry.address.clone(), entry);
        Ok(previous.is_none())
    }

    /// Removes `address`. `Ok(true)` when it was suppressed (`Ok(false)` writes nothing). The change
    /// is durable when this returns `Ok`; on `Err` nothing changed. Invalid addresses are refused as
    /// in [`SuppressionList::add`].
    pub fn remove(&self, address: &str) -> io::Result<bool> {
        let address = normalize(address)?;
        let mut log = self.log.lock().unwrap_or_else(PoisonError::into_inner);
        if !self.read().contains_key(&address) {
            return Ok(false);
        }
        log.append(&Record::Remove {
            address: address.clone(),
            at: now_unix(),
        })?;
        self.write().remove(&address);
        Ok(true)
    }

    /// Every entry, sorted by address.
    pub fn list(&self) -> Vec<Entry> {
        let mut all: Vec<Entry> = self.read().values().cloned().collect();
        all.sort_by(|a, b| a.address.cmp(&b.address));
        all
    }

    /// How many addresses are suppressed.
    pub fn len(&self) -> usize {
        self.read().len()
    }

    /// Whether no address is suppressed.
    pub fn is_empty(&self) -> bool {
        self.read().is_empty()
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, HashMap<String, Entry>> {
        self.entries.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<String, Entry>> {
        self.entries.write().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Log {
    /// Appends one record as a line and makes it durable. On failure the log is cut back to its
    /// last complete record (now or before the next append), so a partial line never glues itself
    /// to the next record.
    fn append(&mut self, record: &Record) -> io::Result<()> {
        if self.dirty {
            self.file.set_len(self.len)?;
            self.dirty = false;
        }
        let mut line = serde_json::to_vec(record).map_err(io::Error::other)?;
        line.push(b'\n');
        let written = self.file.write_all(&line).and_then(|()| self.file.sync_data());
        if let Err(e) = written {
            self.dirty = self.file.set_len(self.len).is_err();
            return Err(e);
        }
        self.len += line.len() as u64;
        Ok(())
    }
}

/// Normalises an address for storage and lookup: trimmed, surrounding `<>` removed, lower-cased.
/// Refuses ([`io::ErrorKind::InvalidInput`]) one without `@` (or with nothing before or after its
/// last `@`) or with white space or control characters.
pub(crate) fn normalize(address: &str) -> io::Result<String> {
    let trimmed = address.trim();
    let bare = trimmed
        .strip_prefix('<')
        .and_then(|a| a.strip_suffix('>'))
        .unwrap_or(trimmed);
    let has_both_parts = bare
        .rsplit_once('@')
        .is_some_and(|(local, domain)| !local.is_empty() && !domain.is_empty());
    if !has_both_parts || bare.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("not a mail address: {address:?}"),
        ));
    }
    Ok(bare.to_lowercase())
}

/// Creates `dir` if it is missing, and makes its entry in the parent durable.
fn create_dir(dir: &Path) -> io::Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    fs::create_dir_all(dir)?;
    match dir.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => sync_dir(parent),
        _ => Ok(()),
    }
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Reads the log at `path` (creating it empty), truncates a torn last line, and returns the live
/// entries and the number of lines the log keeps.
fn replay(path: &Path) -> io::Result<(HashMap<String, Entry>, usize)> {
    let mut file = OpenOptions::new().read(true).append(true).create(true).open(path)?;
    let mut content = Vec::new();
    file.read_to_end(&mut content)?;
    let mut lines: Vec<&[u8]> = content.split_inclusive(|&b| b == b'\n').collect();
    let torn = lines.pop_if(|last| !last.ends_with(b"\n") || parse_line(last).is_none());
    if let Some(torn) = torn {
        let keep = content.len() - torn.len();
        tracing::warn!(log = %path.display(), bytes = torn.len(), "suppression log: torn last line truncated");
        file.set_len(keep as u64)?;
        file.sync_data()?;
    }
    let mut entries = HashMap::new();
    for (number, line) in lines.iter().enumerate() {
        match parse_line(line) {
            Some(record) => apply(&mut entries, record),
            None if line.trim_ascii().is_empty() => {}
            None => tracing::warn!(log = %path.display(), line = number + 1, "suppression log: bad line skipped"),
        }
    }
    Ok((entries, lines.len()))
}

/// A record whose address is valid, or `None`.
fn parse_line(line: &[u8]) -> Option<Record> {
    match serde_json::from_slice(line).ok()? {
        Record::Add(entry) => Some(Record::Add(Entry {
            address: normalize(&entry.address).ok()?,
            ..entry
        })),
        Record::Remove { address, at } => Some(Record::Remove {
            address: normalize(&address).ok()?,
            at,
        }),
    }
}

fn apply(entries: &mut HashMap<String, Entry>, record: Record) {
    match record {
        Record::Add(entry) => {
            entries.insert(entry.address.clone(), entry);
        }
        Record::Remove { address, .. } => {
            entries.remove(&address);
        }
    }
}

/// Rewrites the log in `dir` as one `add` line per live entry: temporary file, `sync_data`, rename
/// over the log, fsync of the directory.
fn compact(dir: &Path, entries: &HashMap<String, Entry>) -> io::Result<()> {
    let tmp: PathBuf = dir.join(TMP_FILE);
    let written = write_compact(&tmp, entries).and_then(|()| fs::rename(&tmp, dir.join(LOG_FILE)));
    if let Err(e) = written {
        let _ = fs::remove_file(&tmp);
        return Err(e);
    }
    sync_dir(dir)
}

fn write_compact(tmp: &Path, entries: &HashMap<String, Entry>) -> io::Result<()> {
    let mut sorted: Vec<&Entry> = entries.values().collect();
    sorted.sort_by(|a, b| a.address.cmp(&b.address));
    let mut out = Vec::with_capacity(sorted.len() * 128);
    for entry in sorted {
        serde_json::to_writer(&mut out, &Record::Add(entry.clone())).map_err(io::Error::other)?;
        out.push(b'\n');
    }
    let mut file = File::create(tmp)?;
    file.write_all(&out)?;
    file.sync_data()
}

#[cfg(test)]
mod tests;
