//! One webhook's durable outbox: an append-only log of JSON lines in numbered segment files
//! (`<dir>/<20 digits>.log`) and a cursor file (`<dir>/cursor`: segment and offset of the first
//! event not yet acknowledged by the receiver).
//!
//! Why this shape: publishing must never block a session, so callers hand lines to a bounded
//! channel ([`Outbox::append`], which refuses when full) and one writer thread writes whatever
//! is waiting and calls `fdatasync` once for all of it (group commit, as the spool does). The
//! sender reads only what that fsync covered ([`Outbox::read_batch`]) and moves the cursor with
//! [`Outbox::commit`] only after the receiver's 2xx, fsyncing the cursor by writing a new file
//! and renaming it over the old one. A crash therefore re-sends from the cursor (at least once;
//! events keep their ids) and loses nothing that was written. A segment is deleted once the
//! cursor is past it. A torn last line (a crash in the middle of a write) is cut at open.

use std::fs::{File, OpenOptions};
use std::io::{self, BufRead, BufReader, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;

use serde_json::Value;

/// Lines waiting for the writer at most; past this, [`Outbox::append`] refuses (counted as dropped).
pub const CHANNEL_CAPACITY: usize = 10_000;
/// A segment grows to about this size before the writer starts the next one.
pub const SEGMENT_SIZE: u64 = 8 * 1024 * 1024;
/// Lines the writer takes from the channel before one fsync at most.
const WRITE_BATCH: usize = 1_000;

/// A place in the log: a segment number and a byte offset in it. Ordered as the log is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct Pos {
    pub segment: u64,
    pub offset: u64,
}

/// One stored event: when it was published (unix seconds) and the event itself.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    pub published: u64,
    pub event: Value,
}

/// Events read from the cursor on: `entries` in order, `unreadable` lines that were skipped
/// (not JSON), and `end`, where the cursor goes once all of them are dealt with.
#[derive(Debug, Default)]
pub struct Batch {
    pub entries: Vec<Entry>,
    pub unreadable: u64,
    pub end: Pos,
}

impl Batch {
    /// Lines the batch covers, readable or not.
    pub fn lines(&self) -> u64 {
        self.entries.len() as u64 + self.unreadable
    }
}

/// What the writer and the readers share: how far the log is written and fsynced.
struct State {
    /// The end of what the last fsync covered.
    committed: Mutex<Pos>,
    /// The acknowledged cursor.
    cursor: Mutex<Pos>,
    /// Woken after each fsync, so a waiting sender reads at once.
    written: tokio::sync::Notify,
    stats: Arc<super::Stats>,
}

/// One webhook's outbox, open by one process.
pub struct Outbox {
    dir: PathBuf,
    state: Arc<State>,
    tx: Mutex<Option<SyncSender<Vec<u8>>>>,
    writer: Mutex<Option<JoinHandle<()>>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Outbox {
    /// Opens (creating) the outbox in `dir`: cuts a torn last line, reads the cursor, counts the
    /// backlog into `stats`, and starts the writer thread.
    pub fn open(dir: &Path, stats: Arc<super::Stats>) -> io::Result<Outbox> {
        std::fs::create_dir_all(dir)?;
        let mut segments = list_segments(dir)?;
        if segments.is_empty() {
            let first = read_cursor(dir)?.map_or(1, |c| c.segment.max(1));
            create_segment(dir, first)?;
            segments.push(first);
        }
        let newest = *segments.last().unwrap_or(&1);
        let end = Pos {
            segment: newest,
            offset: cut_torn_tail(&segment_path(dir, newest))?,
        };
        let oldest = segments[0];
        let cursor = match read_cursor(dir)? {
            Some(c) if c.segment >= oldest && c <= end => c,
            Some(c) if c > end => end,
            _ => Pos {
                segment: oldest,
                offset: 0,
            },
        };
        stats.backlog.set(count_lines(dir, cursor, end)? as i64);
        let state = Arc::new(State {
            committed: Mutex::new(end),
            cursor: Mutex::new(cursor),
            written: tokio::sync::Notify::new(),
            stats,
        });
        let file = OpenOptions::new().append(true).open(segment_path(dir, newest))?;
        let (tx, rx) = std::sync::mpsc::sync_channel(CHANNEL_CAPACITY);
        let writer = Writer {
            dir: dir.to_owned(),
            file,
            at: end,
            state: state.clone(),
        };
        let handle = std::thread::Builder::new()
            .name("webhook-outbox".into())
            .spawn(move || writer.run(rx))?;
        Ok(Outbox {
            dir: dir.to_owned(),
            state,
            tx: Mutex::new(Some(tx)),
            writer: Mutex::new(Some(handle)),
        })
    }

    /// Hands one event (a line made by [`encode`]) to the writer without waiting. `false` (the event is not stored) when
    /// the channel is full or the outbox closed.
    pub fn append(&self, line: Vec<u8>) -> bool {
        match lock(&self.tx).as_ref().map(|tx| tx.try_send(line)) {
            Some(Ok(())) => true,
            Some(Err(TrySendError::Full(_) | TrySendError::Disconnected(_))) | None => false,
        }
    }

    /// Up to `max` events from the cursor on, among those already fsynced.
    pub fn read_batch(&self, max: usize) -> io::Result<Batch> {
        let committed = *lock(&self.state.committed);
        let mut at = *lock(&self.state.cursor);
        let mut batch = Batch {
            end: at,
            ..Batch::default()
        };
        while at < committed && batch.lines() < max as u64 {
            let limit = match at.segment == committed.segment {
                true => committed.offset,
                false => u64::MAX,
            };
            let path = segment_path(&self.dir, at.segment);
            let file = match File::open(&path) {
                Ok(f) => f,
                // A segment the writer skipped (it could not create it): go on to the next.
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    at = Pos {
                        segment: at.segment + 1,
                        offset: 0,
                    };
                    batch.end = at;
                    continue;
                }
                Err(e) => return Err(e),
            };
            let offset = read_lines(file, at.offset, limit, max as u64, &mut batch)?;
            if offset > at.offset {
                at.offset = offset;
            } else if at.segment < committed.segment {
                // The end of an older segment: the rest of the log is in the next one.
                at = Pos {
                    segment: at.segment + 1,
                    offset: 0,
                };
            } else {
                break;
            }
            batch.end = at;
        }
        Ok(batch)
    }

    /// Moves the cursor to `to` (never backwards), fsyncs it, and deletes the segments before
    /// it. The backlog gauge loses `lines`.
    pub fn commit(&self, to: Pos, lines: u64) -> io::Result<()> {
        let mut cursor = lock(&self.state.cursor);
        if to <= *cursor {
            return Ok(());
        }
        write_cursor(&self.dir, to)?;
        let old = cursor.segment;
        *cursor = to;
        drop(cursor);
        self.state.stats.backlog.sub(lines as i64);
        for segment in old..to.segment {
            match std::fs::remove_file(segment_path(&self.dir, segment)) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => {
                    tracing::warn!(dir = %self.dir.display(), segment, error = %e, "cannot delete a sent outbox segment")
                }
            }
        }
        Ok(())
    }

    /// Waits until the writer has fsynced something new since the last wake-up.
    pub async fn written(&self) {
        self.state.written.notified().await;
    }

    /// Stops taking events, lets the writer write and fsync what it holds, and waits for it.
    /// Blocking: call it off the async threads.
    pub fn close(&self) {
        drop(lock(&self.tx).take());
        if let Some(handle) = lock(&self.writer).take() {
            let _ = handle.join();
        }
    }

    /// The cursor as it stands (acknowledged events end here).
    pub fn cursor(&self) -> Pos {
        *lock(&self.state.cursor)
    }
}

/// `{"t":<published>,"e":<event>}`: one line, without its newline.
pub fn encode(entry: &Entry) -> Vec<u8> {
    let line = serde_json::json!({ "t": entry.published, "e": entry.event });
    serde_json::to_vec(&line).unwrap_or_default()
}

/// An [`Entry`] from a stored line; `None` for a line that is not one.
fn decode(line: &[u8]) -> Option<Entry> {
    let value: Value = serde_json::from_slice(line).ok()?;
    Some(Entry {
        published: value.get("t")?.as_u64()?,
        event: value.get("e")?.clone(),
    })
}

/// Reads whole lines of `file` from `offset` up to `limit` (or its end) into `batch`, until it
/// covers `max` lines; returns the offset after the last whole line read.
fn read_lines(file: File, offset: u64, limit: u64, max: u64, batch: &mut Batch) -> io::Result<u64> {
    let mut reader = BufReader::new(file);
    reader.seek(SeekFrom::Start(offset))?;
    let mut at = offset;
    let mut line = Vec::new();
    while at < limit && batch.lines() < max {
        line.clear();
        let n = reader.read_until(b'\n', &mut line)? as u64;
        if n == 0 || line.last() != Some(&b'\n') || at + n > limit {
            break;
        }
        at += n;
        match decode(&line[..line.len() - 1]) {
            Some(entry) => batch.entries.push(entry),
            None => batch.unreadable += 1,
        }
    }
    Ok(at)
}

/// The one thread that writes the log.
struct Writer {
    dir: PathBuf,
    file: File,
    at: Pos,
    state: Arc<State>,
}

impl Writer {
    /// Writes what is waiting, fsyncs once, publishes the new end; until every sender is gone.
    fn run(mut self, rx: Receiver<Vec<u8>>) {
        while let Ok(first) = rx.recv() {
            let mut lines = vec![first];
            while lines.len() < WRITE_BATCH {
                match rx.try_recv() {
                    Ok(line) => lines.push(line),
                    Err(_) => break,
                }
            }
            let count = lines.len() as u64;
            match self.write(&lines) {
                Ok(()) => {
                    *lock(&self.state.committed) = self.at;
                    self.state.stats.backlog.add(count as i64);
                    self.state.written.notify_one();
                }
                Err(e) => {
                    tracing::error!(dir = %self.dir.display(), error = %e, lost = count, "cannot write the webhook outbox");
                    self.state.stats.dropped(super::DropReason::WriteError, count);
                    // Cut anything half written, so the next lines start on a line of their own.
                    let _ = self.file.set_len(self.at.offset);
                }
            }
        }
    }

    /// Appends `lines`, fsyncs, and starts the next segment when this one is full.
    fn write(&mut self, lines: &[Vec<u8>]) -> io::Result<()> {
        let mut buf = Vec::with_capacity(lines.iter().map(|l| l.len() + 1).sum());
        for line in lines {
            buf.extend_from_slice(line);
            buf.push(b'\n');
        }
        self.file.write_all(&buf)?;
        self.file.sync_data()?;
        self.at.offset += buf.len() as u64;
        if self.at.offset >= SEGMENT_SIZE {
            let next = self.at.segment + 1;
            self.file = create_segment(&self.dir, next)?;
            self.at = Pos {
                segment: next,
                offset: 0,
            };
        }
        Ok(())
    }
}

fn segment_path(dir: &Path, segment: u64) -> PathBuf {
    dir.join(format!("{segment:020}.log"))
}

/// Creates an empty segment and fsyncs the folder, so it survives a crash.
fn create_segment(dir: &Path, segment: u64) -> io::Result<File> {
    let file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(segment_path(dir, segment))?;
    File::open(dir)?.sync_all()?;
    Ok(file)
}

/// The segment numbers in `dir`, oldest first.
fn list_segments(dir: &Path) -> io::Result<Vec<u64>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let name = entry?.file_name();
        let name = name.to_string_lossy();
        if let Some(n) = name.strip_suffix(".log").and_then(|s| s.parse::<u64>().ok()) {
            out.push(n);
        }
    }
    out.sort_unstable();
    Ok(out)
}

/// Cuts the file after its last newline (a line torn by a crash); returns its new length.
fn cut_torn_tail(path: &Path) -> io::Result<u64> {
    let data = std::fs::read(path)?;
    let keep = data.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1) as u64;
    if keep < data.len() as u64 {
        tracing::warn!(file = %path.display(), bytes = data.len() as u64 - keep, "cutting a torn last line of a webhook outbox");
        let file = OpenOptions::new().write(true).open(path)?;
        file.set_len(keep)?;
        file.sync_all()?;
    }
    Ok(keep)
}

/// Lines between `from` and `to` (the backlog at open).
fn count_lines(dir: &Path, from: Pos, to: Pos) -> io::Result<u64> {
    let mut count = 0;
    for segment in from.segment..=to.segment {
        let data = match std::fs::read(segment_path(dir, segment)) {
            Ok(d) => d,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        let start = if segment == from.segment {
            from.offset as usize
        } else {
            0
        };
        let end = if segment == to.segment {
            to.offset as usize
        } else {
            data.len()
        };
        count += data
            .get(start..end.min(data.len()))
            .map_or(0, |s| s.iter().filter(|&&b| b == b'\n').count()) as u64;
    }
    Ok(count)
}

/// The cursor file's position, `None` when there is none yet (or it cannot be read as one).
fn read_cursor(dir: &Path) -> io::Result<Option<Pos>> {
    let text = match std::fs::read_to_string(dir.join("cursor")) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let mut parts = text.split_whitespace().map(str::parse::<u64>);
    Ok(match (parts.next(), parts.next()) {
        (Some(Ok(segment)), Some(Ok(offset))) => Some(Pos { segment, offset }),
        _ => None,
    })
}

/// Writes the cursor durably: a new file, fsynced, renamed over the old one, folder fsynced.
fn write_cursor(dir: &Path, pos: Pos) -> io::Result<()> {
    let tmp = dir.join("cursor.tmp");
    let mut file = File::create(&tmp)?;
    writeln!(file, "{} {}", pos.segment, pos.offset)?;
    file.sync_all()?;
    std::fs::rename(&tmp, dir.join("cursor"))?;
    File::open(dir)?.sync_all()
}
