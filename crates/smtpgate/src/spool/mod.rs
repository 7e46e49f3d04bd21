//! The durable spool: an append-only log of segment files with group commit.
//!
//! Every accepted message is one record appended to the current segment; recipient outcomes and the
//! end of a message are small records appended later. One committer thread owns the files: it takes
//! every record that is waiting, writes them in one go and calls `fdatasync` once for the batch, so
//! concurrent sessions share each fsync (group commit). A caller's future resolves only after its
//! record is on disk, which is when a session may answer `250`.
//!
//! Architecture invariant: no record is acknowledged before the `fdatasync` that covers it has
//! returned, and a segment file is deleted only when it and every older segment hold no live message
//! (so a status record is never lost while its message still needs it).
//!
//! Architecture invariant: recovery reads each segment strictly in sequence and never searches for
//! a record inside a payload; a torn tail is cut, and damage with bytes behind it sets the rest of
//! the segment aside under `damaged/`, never replayed (see `recover.rs`). [`Spool::close`] (an
//! ordinary stop) returns only once everything handed to the committer is written and fsynced.

mod commit;
pub mod incoming;
pub mod record;
pub mod recover;

pub use incoming::{Content, FileBody, Incoming, IncomingError};
pub use recover::{End, Walk, walk};

use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, mpsc};

use tokio::sync::oneshot;

use crate::envelope::{Envelope, QueueId};
pub use record::RcptState;

/// Where a message body lives on disk: in its record in a segment, and for a large message the
/// rest in a file of its own (`ext`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BodyRef {
    pub segment: u64,
    pub offset: u64,
    /// Octets in the record: the whole message, or the header section when `ext` is set.
    pub len: u64,
    pub ext: Option<Ext>,
}

impl BodyRef {
    /// The size of the whole message.
    pub fn total_len(&self) -> u64 {
        self.len + self.ext.map_or(0, |e| e.len)
    }
}

/// The body of a large message, in `bodies/<file>` (hex) from `offset`, `len` octets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ext {
    pub file: u64,
    pub offset: u64,
    pub len: u64,
}

/// A stored message as delivery sends it: the octets in its record, then those of its body
/// file, if any.
#[derive(Debug, Clone)]
pub struct Stored {
    pub inline: Arc<[u8]>,
    pub ext: Option<(PathBuf, Ext)>,
}

impl Stored {
    pub fn len(&self) -> u64 {
        self.inline.len() as u64 + self.ext.as_ref().map_or(0, |(_, e)| e.len)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Incoming message files, under the spool directory.
pub(crate) const INCOMING_DIR: &str = "incoming";
/// Bodies of spooled large messages, under the spool directory.
pub(crate) const BODIES_DIR: &str = "bodies";

pub(crate) fn body_path(dir: &Path, file: u64) -> PathBuf {
    dir.join(BODIES_DIR).join(format!("{file:016x}"))
}

/// A message found at start-up, with the state of each recipient.
#[derive(Debug)]
pub struct Recovered {
    pub env: Envelope,
    pub states: Vec<RcptState>,
    pub body: BodyRef,
    /// An operator held it: it waits for a release, never delivered before.
    pub held: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    #[error("spool write failed: {0}")]
    Io(#[from] io::Error),
    #[error("spool is closed")]
    Closed,
}

/// How a record changes the count of live messages in a segment.
#[derive(Debug, Clone, Copy)]
enum Liveness {
    /// A new message record: its segment gains a live message.
    Born,
    /// A message whose data is in this segment is finished.
    Died(u64),
    /// A message was rewritten into the current segment from this one.
    Moved(u64),
    Unchanged,
}

/// Where the committer put a record.
#[derive(Debug, Clone, Copy)]
struct Placement {
    segment: u64,
    offset: u64,
}

struct Job {
    bytes: Vec<u8>,
    liveness: Liveness,
    /// A body file to remove once the record is on disk (the message is finished).
    unlink: Option<PathBuf>,
    reply: oneshot::Sender<io::Result<Placement>>,
}

/// What the committer thread is sent.
enum Msg {
    Job(Job),
    /// Finish every job sent before this one, answer, and stop.
    Close(oneshot::Sender<()>),
}

/// Handle to the spool. Cheap to share behind an `Arc`.
pub struct Spool {
    dir: PathBuf,
    tx: mpsc::Sender<Msg>,
    stats: Arc<SpoolStats>,
    committer: std::sync::Mutex<Option<std::thread::JoinHandle<()>>>,
}

/// Counts kept by the committer: records written and the fsyncs they shared.
#[derive(Debug, Default)]
pub struct SpoolStats {
    pub records: AtomicU64,
    pub fsyncs: AtomicU64,
    /// The oldest segment file that still exists, and the one being written.
    pub oldest_segment: AtomicU64,
    pub current_segment: AtomicU64,
    /// Segments whose rest recovery set aside as damaged at open.
    pub damaged: AtomicU64,
}

impl Spool {
    /// Opens (creating if needed) the spool in `dir`, recovers what it holds and starts the committer.
    pub fn open(dir: &Path, segment_size: u64) -> io::Result<(Spool, Vec<Recovered>)> {
        std::fs::create_dir_all(dir)?;
        let found = recover::scan(dir)?;
        let (tx, rx) = mpsc::channel();
        let stats = Arc::new(SpoolStats {
            damaged: AtomicU64::new(found.damaged),
            ..SpoolStats::default()
        });
        let committer = commit::Committer::start(dir, segment_size, found.next_segment, found.live, rx, stats.clone())?;
        let handle = std::thread::Builder::new()
            .name("spool-commit".into())
            .spawn(move || committer.run())?;
        Ok((
            Spool {
                dir: dir.to_path_buf(),
                tx,
                stats,
                committer: std::sync::Mutex::new(Some(handle)),
            },
            found.messages,
        ))
    }

    /// Stops the committer once everything handed to it before this call is written and fsynced,
    /// and waits for its thread to end. Later stores, updates and relocations fail with
    /// [`SpoolError::Closed`] (nothing they carry was acknowledged). Returns false if the spool
    /// was already closed.
    pub async fn close(&self) -> bool {
        let Some(handle) = self.committer.lock().unwrap().take() else {
            return false;
        };
        let (done, finished) = oneshot::channel();
        if self.tx.send(Msg::Close(done)).is_ok() {
            let _ = finished.await;
        }
        // The thread has answered (or is gone): joining only waits for it to return.
        let _ = tokio::task::spawn_blocking(move || handle.join()).await;
        let (records, fsyncs) = self.stats();
        tracing::info!(records, fsyncs, "spool closed cleanly");
        true
    }

    /// Segments whose damaged rest recovery set aside when the spool was opened.
    pub fn damaged(&self) -> u64 {
        self.stats.damaged.load(Ordering::Relaxed)
    }

    /// (records written, fsyncs) since start.
    pub fn stats(&self) -> (u64, u64) {
        (
            self.stats.records.load(Ordering::Relaxed),
            self.stats.fsyncs.load(Ordering::Relaxed),
        )
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Where incoming message files go.
    pub fn incoming_dir(&self) -> PathBuf {
        self.dir.join(INCOMING_DIR)
    }

    async fn append(
        &self,
        bytes: Vec<u8>,
        liveness: Liveness,
        unlink: Option<PathBuf>,
    ) -> Result<Placement, SpoolError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Msg::Job(Job {
                bytes,
                liveness,
                unlink,
                reply,
            }))
            .map_err(|_| SpoolError::Closed)?;
        Ok(rx.await.map_err(|_| SpoolError::Closed)??)
    }

    /// Stores a new message durably; resolves once it is fsynced.
    pub async fn store(&self, env: &Envelope, body: &[u8]) -> Result<BodyRef, SpoolError> {
        let states = vec![RcptState::Pending; env.recipients.len()];
        let mut bytes = Vec::with_capacity(body.len() + 256);
        let body_offset = record::encode_message(env, &states, body, None, &mut bytes);
        let at = self.append(bytes, Liveness::Born, None).await?;
        Ok(BodyRef {
            segment: at.segment,
            offset: at.offset + body_offset as u64,
            len: body.len() as u64,
            ext: None,
        })
    }

    /// Stores a new message durably, whether in memory or with its body in an incoming file;
    /// resolves once it is fsynced. A body file is linked under `bodies/` with the message's id
    /// and fsynced (with its directory) before the record that names it is written.
    pub async fn store_content(&self, env: &Envelope, content: &Content) -> Result<BodyRef, SpoolError> {
        let Some(body) = &content.body else {
            return self.store(env, &content.head).await;
        };
        let path = body_path(&self.dir, env.id.0);
        let (spill, link) = (body.spill.clone(), path.clone());
        tokio::task::spawn_blocking(move || -> io::Result<()> {
            spill.sync()?;
            match std::fs::hard_link(&spill.path, &link) {
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                    std::fs::remove_file(&link)?;
                    std::fs::hard_link(&spill.path, &link)?;
                }
                other => other?,
            }
            std::fs::File::open(link.parent().expect("under bodies/"))?.sync_all()
        })
        .await
        .map_err(io::Error::other)??;
        let ext = Ext {
            file: env.id.0,
            offset: body.offset,
            len: body.len,
        };
        let states = vec![RcptState::Pending; env.recipients.len()];
        let mut bytes = Vec::with_capacity(content.head.len() + 256);
        let body_offset = record::encode_message(env, &states, &content.head, Some(&ext), &mut bytes);
        match self.append(bytes, Liveness::Born, None).await {
            Ok(at) => Ok(BodyRef {
                segment: at.segment,
                offset: at.offset + body_offset as u64,
                len: content.head.len() as u64,
                ext: Some(ext),
            }),
            Err(e) => {
                // Not acknowledged: nothing refers to the link.
                let _ = tokio::task::spawn_blocking(move || std::fs::remove_file(path)).await;
                Err(e)
            }
        }
    }

    /// Rewrites a live message, with its recipients' current states, into the current segment, so
    /// that an old segment it pins can be reclaimed. Replay takes the newest copy. `body` is the
    /// part in the record; a body file stays where it is. A held message's copy is followed, in
    /// the same write, by a hold record: the old one may be in a segment reclaimed after.
    pub async fn relocate(
        &self,
        env: &Envelope,
        states: &[RcptState],
        body: &[u8],
        from: &BodyRef,
        held: bool,
    ) -> Result<BodyRef, SpoolError> {
        let mut bytes = Vec::with_capacity(body.len() + 256);
        let body_offset = record::encode_message(env, states, body, from.ext.as_ref(), &mut bytes);
        if held {
            record::encode_hold(env.id, true, &mut bytes);
        }
        let at = self.append(bytes, Liveness::Moved(from.segment), None).await?;
        Ok(BodyRef {
            segment: at.segment,
            offset: at.offset + body_offset as u64,
            len: body.len() as u64,
            ext: from.ext,
        })
    }

    /// A segment worth compacting: the oldest one, when it is kept alive by a few long-queued
    /// messages while at least two newer segments exist.
    pub fn compaction_candidate(&self) -> Option<u64> {
        let oldest = self.stats.oldest_segment.load(Ordering::Relaxed);
        let current = self.stats.current_segment.load(Ordering::Relaxed);
        (current >= oldest + 2).then_some(oldest)
    }

    /// Records final states of some recipients durably.
    pub async fn update(&self, id: QueueId, updates: &[(u32, RcptState)]) -> Result<(), SpoolError> {
        let mut bytes = Vec::with_capacity(32 + updates.len() * 5);
        record::encode_status(id, updates, &mut bytes);
        self.append(bytes, Liveness::Unchanged, None).await.map(|_| ())
    }

    /// Records durably that an operator held (`held`) or released message `id`.
    pub async fn hold(&self, id: QueueId, held: bool) -> Result<(), SpoolError> {
        let mut bytes = Vec::with_capacity(32);
        record::encode_hold(id, held, &mut bytes);
        self.append(bytes, Liveness::Unchanged, None).await.map(|_| ())
    }

    /// Marks a message finished; its segment may then be reclaimed, and its body file (if any)
    /// is removed once the record is on disk.
    pub async fn done(&self, id: QueueId, body: &BodyRef) -> Result<(), SpoolError> {
        let mut bytes = Vec::with_capacity(32);
        record::encode_done(id, &mut bytes);
        let unlink = body.ext.map(|e| body_path(&self.dir, e.file));
        self.append(bytes, Liveness::Died(body.segment), unlink)
            .await
            .map(|_| ())
    }

    /// Reads the part of a message in its record (the whole message, or the header section of
    /// one with a body file), off the async runtime's threads.
    pub async fn read_inline(&self, at: &BodyRef) -> io::Result<Vec<u8>> {
        let (dir, at) = (self.dir.clone(), *at);
        tokio::task::spawn_blocking(move || read_inline(&dir, &at))
            .await
            .map_err(io::Error::other)?
    }

    /// Reads a whole message into memory (for filters that must see all of it), off the async
    /// runtime's threads.
    pub async fn read_whole(&self, at: &BodyRef) -> io::Result<Vec<u8>> {
        let (dir, at) = (self.dir.clone(), *at);
        tokio::task::spawn_blocking(move || read_whole(&dir, &at))
            .await
            .map_err(io::Error::other)?
    }

    /// Reads the part of a message in its record with a blocking `pread` (for tests and tools).
    pub fn read_body(&self, at: &BodyRef) -> io::Result<Vec<u8>> {
        read_inline(&self.dir, at)
    }

    /// Where a message's body file is, for delivery to stream it.
    pub fn ext_file(&self, at: &BodyRef) -> Option<(PathBuf, Ext)> {
        at.ext.map(|e| (body_path(&self.dir, e.file), e))
    }

    /// Bytes available to unprivileged writers on the spool's filesystem.
    pub fn free_space(&self) -> io::Result<u64> {
        let st = rustix::fs::statvfs(&self.dir)?;
        Ok(st.f_bavail.saturating_mul(st.f_frsize))
    }
}

pub(crate) fn segment_path(dir: &Path, id: u64) -> PathBuf {
    dir.join(format!("seg-{id:016x}.log"))
}

pub(crate) fn segment_id(name: &str) -> Option<u64> {
    let hex = name.strip_prefix("seg-")?.strip_suffix(".log")?;
    u64::from_str_radix(hex, 16).ok()
}

#[cfg(test)]
mod tests;

/// How every segment of a spool directory ends (clean, torn, damaged), without changing it.
pub fn segment_ends(dir: &Path) -> io::Result<Vec<(u64, End)>> {
    recover::ends(dir)
}

/// Reads every live message of a spool directory without changing it: envelopes and bodies.
/// For looking at a spool (tests, inspection tools); a running server keeps writing to it.
pub fn inspect(dir: &Path) -> io::Result<Vec<(Envelope, Vec<u8>)>> {
    let found = recover::scan_readonly(dir)?;
    let mut out = Vec::with_capacity(found.len());
    for m in found {
        let body = read_whole(dir, &m.body)?;
        out.push((m.env, body));
    }
    Ok(out)
}

/// The octets of a message in its record (blocking).
fn read_inline(dir: &Path, at: &BodyRef) -> io::Result<Vec<u8>> {
    let file = std::fs::File::open(segment_path(dir, at.segment))?;
    let mut buf = vec![0; at.len as usize];
    file.read_exact_at(&mut buf, at.offset)?;
    Ok(buf)
}

/// A whole message: its record's part and its body file's (blocking).
fn read_whole(dir: &Path, at: &BodyRef) -> io::Result<Vec<u8>> {
    let mut buf = read_inline(dir, at)?;
    if let Some(e) = at.ext {
        let file = std::fs::File::open(body_path(dir, e.file))?;
        let start = buf.len();
        buf.resize(start + e.len as usize, 0);
        file.read_exact_at(&mut buf[start..], e.offset)?;
    }
    Ok(buf)
}
