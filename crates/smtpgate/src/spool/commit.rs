//! The committer thread: batches appends, writes them, fsyncs once per batch.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::mpsc;

use std::sync::Arc;
use std::sync::atomic::Ordering;

use super::{Job, Liveness, Msg, Placement, SpoolStats, segment_path};

/// Most bytes gathered into one batch before it is written.
const MAX_BATCH_BYTES: usize = 16 << 20;

struct Segment {
    id: u64,
    file: File,
    len: u64,
}

pub(super) struct Committer {
    dir: PathBuf,
    segment_size: u64,
    current: Segment,
    /// Live messages per segment, for every segment file that exists.
    live: BTreeMap<u64, u64>,
    rx: mpsc::Receiver<Msg>,
    buf: Vec<u8>,
    stats: Arc<SpoolStats>,
}

impl Committer {
    pub fn start(
        dir: &Path,
        segment_size: u64,
        next: u64,
        live: BTreeMap<u64, u64>,
        rx: mpsc::Receiver<Msg>,
        stats: Arc<SpoolStats>,
    ) -> io::Result<Self> {
        let current = create_segment(dir, next)?;
        let mut c = Committer {
            dir: dir.into(),
            segment_size,
            current,
            live,
            rx,
            buf: Vec::new(),
            stats,
        };
        c.live.insert(next, 0);
        c.reap();
        Ok(c)
    }

    /// Writes batches until told to close (or every sender is gone). A close comes after every job
    /// sent before it, so when the committer answers it, each of them is written and fsynced.
    pub fn run(mut self) {
        let mut closing = None;
        while closing.is_none() {
            let first = match self.rx.recv() {
                Ok(Msg::Job(job)) => job,
                Ok(Msg::Close(done)) => {
                    closing = Some(done);
                    break;
                }
                Err(_) => break,
            };
            let mut batch = vec![first];
            let mut bytes = batch[0].bytes.len();
            while bytes < MAX_BATCH_BYTES {
                match self.rx.try_recv() {
                    Ok(Msg::Job(job)) => {
                        bytes += job.bytes.len();
                        batch.push(job);
                    }
                    Ok(Msg::Close(done)) => {
                        closing = Some(done);
                        break;
                    }
                    Err(_) => break,
                }
            }
            self.commit(batch);
        }
        // Jobs sent after the close are refused (their senders see the spool closed): none of
        // them was acknowledged.
        drop(self.rx);
        if let Some(done) = closing {
            let _ = done.send(());
        }
    }

    fn commit(&mut self, batch: Vec<Job>) {
        let total: u64 = batch.iter().map(|j| j.bytes.len() as u64).sum();
        if self.current.len > 0
            && self.current.len + total > self.segment_size
            && let Err(e) = self.rotate()
        {
            return fail_all(batch, &e);
        }
        let base = self.current.len;
        self.buf.clear();
        let mut placements = Vec::with_capacity(batch.len());
        for job in &batch {
            placements.push(Placement {
                segment: self.current.id,
                offset: base + self.buf.len() as u64,
            });
            self.buf.extend_from_slice(&job.bytes);
        }
        if let Err(e) = self.write_and_sync() {
            tracing::error!(error = %e, segment = self.current.id, "spool write failed");
            let _ = self.current.file.set_len(base);
            // Never append behind a possibly torn record: continue in a fresh segment.
            let _ = self.rotate();
            return fail_all(batch, &e);
        }
        self.current.len += total;
        self.stats.fsyncs.fetch_add(1, Ordering::Relaxed);
        self.stats.records.fetch_add(batch.len() as u64, Ordering::Relaxed);
        for (job, at) in batch.into_iter().zip(placements) {
            self.account(job.liveness);
            if let Some(path) = &job.unlink
                && let Err(e) = std::fs::remove_file(path)
                && e.kind() != io::ErrorKind::NotFound
            {
                // Recovery removes it at the next start: nothing live names it.
                tracing::warn!(error = %e, path = %path.display(), "cannot remove a finished message's body file");
            }
            let _ = job.reply.send(Ok(at));
        }
        self.reap();
    }

    fn write_and_sync(&mut self) -> io::Result<()> {
        self.current.file.write_all(&self.buf)?;
        self.current.file.sync_data()
    }

    fn account(&mut self, liveness: Liveness) {
        match liveness {
            Liveness::Born => *self.live.entry(self.current.id).or_default() += 1,
            Liveness::Died(seg) => {
                if let Some(n) = self.live.get_mut(&seg) {
                    *n = n.saturating_sub(1);
                }
            }
            Liveness::Moved(from) => {
                *self.live.entry(self.current.id).or_default() += 1;
                if let Some(n) = self.live.get_mut(&from) {
                    *n = n.saturating_sub(1);
                }
            }
            Liveness::Unchanged => {}
        }
    }

    fn rotate(&mut self) -> io::Result<()> {
        let next = self.current.id + 1;
        self.current = create_segment(&self.dir, next)?;
        self.live.insert(next, 0);
        Ok(())
    }

    /// Deletes the oldest segments while they hold no live message.
    fn reap(&mut self) {
        while let Some((&id, &n)) = self.live.first_key_value() {
            if n > 0 || id == self.current.id {
                break;
            }
            let path = segment_path(&self.dir, id);
            if let Err(e) = std::fs::remove_file(&path)
                && e.kind() != io::ErrorKind::NotFound
            {
                tracing::warn!(error = %e, path = %path.display(), "cannot remove spool segment");
                break;
            }
            self.live.remove(&id);
        }
        let oldest = self.live.first_key_value().map_or(self.current.id, |(&id, _)| id);
        self.stats.oldest_segment.store(oldest, Ordering::Relaxed);
        self.stats.current_segment.store(self.current.id, Ordering::Relaxed);
    }
}

fn fail_all(batch: Vec<Job>, e: &io::Error) {
    for job in batch {
        let _ = job.reply.send(Err(io::Error::new(e.kind(), e.to_string())));
    }
}

/// Creates a segment file and makes its directory entry durable.
fn create_segment(dir: &Path, id: u64) -> io::Result<Segment> {
    let file = OpenOptions::new()
        .create_new(true)
        .append(true)
        .read(true)
        .open(segment_path(dir, id))?;
    File::open(dir)?.sync_all()?;
    Ok(Segment { id, file, len: 0 })
}
