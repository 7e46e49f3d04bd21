//! Start-up recovery: replays every segment, cuts torn tails, sets damaged rests aside, and returns
//! the live messages.
//!
//! A segment is read strictly in sequence from its start: each record's header gives its length,
//! and the next record starts right after it. Recovery never searches for a record start, so bytes
//! inside a payload (a message body can carry anything, including a well-formed record) are never
//! read as a record. Where the sequence breaks:
//!
//! - a torn tail in the newest segment (the file ends inside a record whose header checks out, or
//!   before a whole header, or the last record fails its CRC and ends exactly at the end of the
//!   file, or the rest of the file is zeros): nothing can follow it, it was never acknowledged; the
//!   segment is cut at the start of that record. Only the newest segment can be torn by a crash
//!   (the committer never writes to an older one), so in an older segment the same break counts
//!   as damage;
//! - anything else (a header that does not check out, or a record that fails its CRC with more
//!   bytes behind it): what follows cannot be found without guessing, so the rest of the segment is
//!   copied to `<spool>/damaged/<segment>-<offset>` (fsynced), logged, counted, never replayed,
//!   and the segment is cut at the start of the damage.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use super::record::{self, Decoded, Record};
use super::{BodyRef, Recovered, segment_id, segment_path};
use crate::envelope::QueueId;

pub(super) struct Found {
    pub messages: Vec<Recovered>,
    pub live: BTreeMap<u64, u64>,
    pub next_segment: u64,
    /// Segments whose rest was set aside as damaged.
    pub damaged: u64,
}

/// How one segment's sequence of records ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// The last record ends exactly at the end of the file.
    Clean,
    /// A record that never completed starts here and runs to the end of the file.
    Torn { at: usize },
    /// The sequence breaks here with bytes behind the break that cannot be trusted.
    Damaged { at: usize },
}

/// A segment read in sequence: its valid records, each with its offset, and how it ends.
#[derive(Debug)]
pub struct Walk<'a> {
    pub records: Vec<(usize, Record<'a>)>,
    pub end: End,
}

/// Reads the records of one segment's bytes from the start, one after the other, stopping at the
/// first that is not whole and valid. Pure: no I/O, any input.
pub fn walk(data: &[u8]) -> Walk<'_> {
    let mut records = Vec::new();
    let mut pos = 0;
    let end = loop {
        if pos == data.len() {
            break End::Clean;
        }
        let rest = &data[pos..];
        match record::decode(rest) {
            Decoded::Record(rec, used) => {
                records.push((pos, rec));
                pos += used;
            }
            Decoded::Truncated => break End::Torn { at: pos },
            // The last record, complete in length but not in content: a write that did not finish.
            Decoded::BadRecord { len } if len == rest.len() => break End::Torn { at: pos },
            // A file extended by a crash before its data reached the disk reads as zeros.
            Decoded::BadHeader if rest.iter().all(|&b| b == 0) => break End::Torn { at: pos },
            Decoded::BadRecord { .. } | Decoded::BadHeader => break End::Damaged { at: pos },
        }
    };
    Walk { records, end }
}

/// Whether recovery may change the spool.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    Repair,
    ReadOnly,
}

/// Replays the spool without modifying it.
pub(super) fn scan_readonly(dir: &Path) -> io::Result<Vec<Recovered>> {
    Ok(scan_with(dir, Mode::ReadOnly)?.messages)
}

pub(super) fn scan(dir: &Path) -> io::Result<Found> {
    scan_with(dir, Mode::Repair)
}

fn segment_ids(dir: &Path) -> io::Result<Vec<u64>> {
    let mut ids: Vec<u64> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok())
        .filter_map(|e| segment_id(e.file_name().to_str()?))
        .collect();
    ids.sort_unstable();
    Ok(ids)
}

/// How every segment of a spool ends, without changing anything.
pub(super) fn ends(dir: &Path) -> io::Result<Vec<(u64, End)>> {
    segment_ids(dir)?
        .into_iter()
        .map(|id| Ok((id, walk(&std::fs::read(segment_path(dir, id))?).end)))
        .collect()
}

fn scan_with(dir: &Path, mode: Mode) -> io::Result<Found> {
    let ids = segment_ids(dir)?;
    let mut map: BTreeMap<QueueId, Recovered> = BTreeMap::new();
    let mut damaged = 0;
    for &id in &ids {
        let newest = ids.last() == Some(&id);
        if replay_segment(dir, id, newest, &mut map, mode)? {
            damaged += 1;
        }
    }
    let mut live: BTreeMap<u64, u64> = ids.iter().map(|&id| (id, 0)).collect();
    for m in map.values() {
        *live.entry(m.body.segment).or_default() += 1;
    }
    if mode == Mode::Repair {
        tidy_body_files(dir, &map)?;
    }
    let next_segment = ids.last().map_or(1, |l| l + 1);
    Ok(Found {
        messages: map.into_values().collect(),
        live,
        next_segment,
        damaged,
    })
}

/// Replays one segment; true if part of it was set aside as damaged.
fn replay_segment(
    dir: &Path,
    seg: u64,
    newest: bool,
    map: &mut BTreeMap<QueueId, Recovered>,
    mode: Mode,
) -> io::Result<bool> {
    let path = segment_path(dir, seg);
    let data = std::fs::read(&path)?;
    let walked = walk(&data);
    for (at, rec) in walked.records {
        apply(rec, seg, at as u64, map);
    }
    let end = match walked.end {
        End::Torn { at } if !newest => End::Damaged { at },
        end => end,
    };
    if mode == Mode::ReadOnly {
        return Ok(matches!(end, End::Damaged { .. }));
    }
    match end {
        End::Clean => Ok(false),
        End::Torn { at } => {
            tracing::warn!(
                segment = seg,
                offset = at,
                dropped = data.len() - at,
                "spool: dropping incomplete record at end of segment (torn tail)"
            );
            cut(&path, at)?;
            Ok(false)
        }
        End::Damaged { at } => {
            let aside = set_aside(dir, seg, at, &data[at..])?;
            tracing::error!(
                segment = seg,
                offset = at,
                bytes = data.len() - at,
                kept = %aside.display(),
                "spool: damaged record; the rest of the segment is set aside and not replayed"
            );
            cut(&path, at)?;
            Ok(true)
        }
    }
}

/// Truncates a segment at `at`, durably.
fn cut(path: &Path, at: usize) -> io::Result<()> {
    let f = OpenOptions::new().write(true).open(path)?;
    f.set_len(at as u64)?;
    f.sync_all()
}

/// Where the damaged rest of a segment is kept for inspection.
pub(super) fn damaged_path(dir: &Path, seg: u64, at: usize) -> PathBuf {
    dir.join("damaged").join(format!("seg-{seg:016x}-{at}"))
}

/// Copies `bytes` (a segment from `at` on) under `<spool>/damaged/`, durably, before the segment is cut.
fn set_aside(dir: &Path, seg: u64, at: usize, bytes: &[u8]) -> io::Result<PathBuf> {
    let path = damaged_path(dir, seg, at);
    let parent = path.parent().expect("damaged/ has a parent");
    let created = !parent.exists();
    std::fs::create_dir_all(parent)?;
    let mut f = File::create(&path)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    File::open(parent)?.sync_all()?;
    if created {
        File::open(dir)?.sync_all()?;
    }
    Ok(path)
}

fn apply(rec: Record<'_>, seg: u64, at: u64, map: &mut BTreeMap<QueueId, Recovered>) {
    match rec {
        Record::Message {
            env,
            states,
            body,
            body_offset,
            ext,
        } => {
            let body = BodyRef {
                segment: seg,
                offset: at + body_offset as u64,
                len: body.len() as u64,
                ext,
            };
            // A relocated copy is followed by its own hold record (see `Spool::relocate`).
            map.insert(
                env.id,
                Recovered {
                    env,
                    states,
                    body,
                    held: false,
                },
            );
        }
        Record::Status { id, updates } => {
            if let Some(m) = map.get_mut(&id) {
                for (idx, st) in updates {
                    if let Some(s) = m.states.get_mut(idx as usize) {
                        *s = st;
                    }
                }
            }
        }
        Record::Done { id } => {
            map.remove(&id);
        }
        Record::Hold { id, held } => {
            if let Some(m) = map.get_mut(&id) {
                m.held = held;
            }
        }
    }
}

/// Removes what a stop or crash left of message files that nothing refers to: every incoming
/// file (no message in it was acknowledged), and every body file no live message names. A body
/// file a live message names but that is missing or short is logged; delivery of that message
/// then fails as a spool read error, and it bounces when it expires.
fn tidy_body_files(dir: &Path, live: &BTreeMap<QueueId, Recovered>) -> io::Result<()> {
    for sub in [super::INCOMING_DIR, super::BODIES_DIR] {
        std::fs::create_dir_all(dir.join(sub))?;
    }
    for entry in std::fs::read_dir(dir.join(super::INCOMING_DIR))? {
        let path = entry?.path();
        std::fs::remove_file(&path)?;
        tracing::info!(path = %path.display(), "removed an unfinished incoming message file");
    }
    let wanted: std::collections::HashMap<u64, u64> = live
        .values()
        .filter_map(|m| m.body.ext.map(|e| (e.file, e.offset + e.len)))
        .collect();
    for entry in std::fs::read_dir(dir.join(super::BODIES_DIR))? {
        let entry = entry?;
        let named = entry.file_name().to_str().and_then(|n| u64::from_str_radix(n, 16).ok());
        match named.and_then(|id| wanted.get(&id)) {
            Some(&needed) => {
                let len = entry.metadata()?.len();
                if len < needed {
                    tracing::error!(path = %entry.path().display(), len, needed, "spooled message body is short");
                }
            }
            None => std::fs::remove_file(entry.path())?,
        }
    }
    for (id, m) in live {
        if let Some(e) = m.body.ext
            && !super::body_path(dir, e.file).exists()
        {
            tracing::error!(queue_id = %id, file = %super::body_path(dir, e.file).display(), "spooled message body is missing");
        }
    }
    Ok(())
}
