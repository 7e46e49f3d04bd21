//! What smtpgate relayed: each accepted message's `Message-ID` and the recipients it was relayed
//! to, remembered for `[suppression] reports_remember` (30 days by default). A bounce or a
//! complaint is believed only for a recipient this log holds under the report's original
//! Message-ID, so a forged report cannot suppress an address smtpgate never sent that message to.
//!
//! The log lives in `<spool>/sent.log`, one JSON line per message, appended by a writer thread
//! (never on the async runtime's threads) in batches, each batch flushed and `fdatasync`ed. It is
//! replayed at start (expired lines dropped; rewritten when most of it expired). Losing the last
//! batch in a crash only means a genuine report for those messages is not acted on: it never
//! makes a forged one believed. With `[redis]`, each record is also written to the shared store,
//! so a report that reaches another node matches too.

use std::collections::{HashMap, VecDeque};
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::datetime::now_unix;

/// At most this many messages are kept in memory (the oldest go first).
const MAX_MESSAGES: usize = 1_000_000;
/// At most this many recipients are kept per message.
const MAX_RECIPIENTS: usize = 1_000;

#[derive(Debug, Serialize, Deserialize)]
struct Line {
    /// The Message-ID, without angle brackets.
    id: String,
    /// Unix seconds.
    at: u64,
    /// Normalised (lower-cased) recipient addresses.
    to: Vec<String>,
    /// The queue id smtpgate gave the message.
    #[serde(default)]
    q: String,
}

#[derive(Default)]
struct Index {
    by_id: HashMap<String, (u64, Vec<String>, String)>,
    order: VecDeque<(u64, String)>,
}

impl Index {
    fn insert(&mut self, line: Line, retention: u64) {
        let now = now_unix();
        let entry = self
            .by_id
            .entry(line.id.clone())
            .or_insert_with(|| (line.at, Vec::new(), String::new()));
        entry.0 = entry.0.max(line.at);
        entry.2 = line.q;
        for r in line.to {
            if entry.1.len() < MAX_RECIPIENTS && !entry.1.contains(&r) {
                entry.1.push(r);
            }
        }
        self.order.push_back((line.at, line.id));
        while let Some((at, id)) = self.order.front().cloned() {
            let expired = at.saturating_add(retention) <= now;
            if !expired && self.order.len() <= MAX_MESSAGES {
                break;
            }
            self.order.pop_front();
            if self.by_id.get(&id).is_some_and(|(last, _, _)| *last <= at) {
                self.by_id.remove(&id);
            }
        }
    }
}

/// The log of what was relayed.
pub struct SentLog {
    index: Mutex<Index>,
    retention: Duration,
    writer: Mutex<mpsc::Sender<String>>,
    shared: Option<crate::shared::Shared>,
}

impl SentLog {
    /// Opens (and replays) `<dir>/sent.log`; records are kept for `retention`, and with `shared`
    /// also written to (and looked up in) the nodes' shared store.
    pub fn open(dir: &Path, retention: Duration, shared: Option<crate::shared::Shared>) -> io::Result<Arc<SentLog>> {
        fs::create_dir_all(dir)?;
        let path = dir.join("sent.log");
        let mut index = Index::default();
        let (total, kept) = replay(&path, retention.as_secs(), &mut index)?;
        if total > 1_000 && kept * 2 < total {
            compact(&path, &index)?;
        }
        let mut file = OpenOptions::new().create(true).append(true).read(true).open(&path)?;
        end_torn_line(&mut file)?;
        let (send, receive) = mpsc::channel::<String>();
        std::thread::Builder::new()
            .name("smtpgate-sent-log".into())
            .spawn(move || write_loop(file, receive))?;
        Ok(Arc::new(SentLog {
            index: Mutex::new(index),
            retention,
            writer: Mutex::new(send),
            shared,
        }))
    }

    /// Records that the message with `message_id` (queue id `queue_id`) was relayed to
    /// `recipients`.
    pub fn record(&self, message_id: &str, queue_id: &str, recipients: &[String]) {
        let to: Vec<String> = recipients.iter().map(|r| normalize(r)).collect();
        let line = Line {
            id: message_id.to_owned(),
            at: now_unix(),
            to,
            q: queue_id.to_owned(),
        };
        if let Ok(text) = serde_json::to_string(&line) {
            let _ = self.writer.lock().unwrap().send(text);
        }
        if let Some(shared) = &self.shared {
            let (shared, id, to, ttl) = (shared.clone(), line.id.clone(), line.to.clone(), self.retention);
            tokio::spawn(async move {
                if let Err(e) = shared.record_sent(&id, &to, ttl).await {
                    tracing::warn!(message_id = %id, error = %e, "cannot share a record of sent mail");
                }
            });
        }
        self.index.lock().unwrap().insert(line, self.retention.as_secs());
    }

    /// Whether the message with `message_id` was relayed to `recipient` within the retention
    /// time, by this node or (with `[redis]`) by another.
    pub async fn was_sent(&self, message_id: &str, recipient: &str) -> bool {
        let recipient = normalize(recipient);
        if self.here(message_id, &recipient) {
            return true;
        }
        match &self.shared {
            Some(shared) => match shared.was_sent(message_id, &recipient).await {
                Ok(found) => found,
                Err(e) => {
                    tracing::warn!(message_id, error = %e, "cannot ask the shared store about sent mail");
                    false
                }
            },
            None => false,
        }
    }

    fn here(&self, message_id: &str, recipient: &str) -> bool {
        let index = self.index.lock().unwrap();
        let oldest = now_unix().saturating_sub(self.retention.as_secs());
        index
            .by_id
            .get(message_id)
            .is_some_and(|(at, to, _)| *at > oldest && to.iter().any(|r| r == recipient))
    }

    /// The queue id this node gave the message with `message_id`, if it remembers it.
    pub fn queue_id(&self, message_id: &str) -> Option<String> {
        let index = self.index.lock().unwrap();
        index
            .by_id
            .get(message_id)
            .map(|(_, _, q)| q.clone())
            .filter(|q| !q.is_empty())
    }
}

fn normalize(address: &str) -> String {
    address.trim().trim_matches(['<', '>']).to_ascii_lowercase()
}

/// A line cut short by a crash gets its newline, so the next record starts a line of its own.
fn end_torn_line(file: &mut File) -> io::Result<()> {
    use std::io::{Read, Seek, SeekFrom};
    let len = file.metadata()?.len();
    if len == 0 {
        return Ok(());
    }
    file.seek(SeekFrom::Start(len - 1))?;
    let mut last = [0u8; 1];
    file.read_exact(&mut last)?;
    if last[0] != b'\n' {
        file.write_all(b"\n")?;
        file.sync_data()?;
    }
    Ok(())
}

/// Reads the log into `index`; returns (lines read, lines kept). A torn or bad line is skipped.
fn replay(path: &Path, retention: u64, index: &mut Index) -> io::Result<(usize, usize)> {
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok((0, 0)),
        Err(e) => return Err(e),
    };
    let oldest = now_unix().saturating_sub(retention);
    let (mut total, mut kept) = (0, 0);
    for line in BufReader::new(file).split(b'\n') {
        total += 1;
        let Ok(line) = serde_json::from_slice::<Line>(&line?) else {
            continue;
        };
        if line.at > oldest {
            kept += 1;
            index.insert(line, retention);
        }
    }
    Ok((total, kept))
}

/// Rewrites the log with only what `index` holds (temporary file, fsync, rename, directory fsync).
fn compact(path: &Path, index: &Index) -> io::Result<()> {
    let tmp: PathBuf = path.with_extension("log.tmp");
    let mut out = io::BufWriter::new(File::create(&tmp)?);
    for (id, (at, to, q)) in &index.by_id {
        let line = Line {
            id: id.clone(),
            at: *at,
            to: to.clone(),
            q: q.clone(),
        };
        serde_json::to_writer(&mut out, &line)?;
        out.write_all(b"\n")?;
    }
    let file = out.into_inner().map_err(|e| e.into_error())?;
    file.sync_all()?;
    fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        File::open(dir)?.sync_all()?;
    }
    Ok(())
}

/// The writer thread: takes every line waiting, writes them, syncs once per batch.
fn write_loop(file: File, lines: mpsc::Receiver<String>) {
    let mut out = io::BufWriter::new(file);
    while let Ok(first) = lines.recv() {
        let mut batch = vec![first];
        batch.extend(lines.try_iter());
        let written = batch
            .iter()
            .try_for_each(|l| out.write_all(l.as_bytes()).and_then(|()| out.write_all(b"\n")))
            .and_then(|()| out.flush())
            .and_then(|()| out.get_ref().sync_data());
        if let Err(e) = written {
            tracing::error!(error = %e, "cannot write the log of sent mail");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn wait_written(dir: &Path, needle: &str) {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !fs::read_to_string(dir.join("sent.log"))
            .unwrap_or_default()
            .contains(needle)
        {
            assert!(std::time::Instant::now() < deadline, "never written: {needle}");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    #[tokio::test]
    async fn only_recorded_recipients_of_a_recorded_message_match_across_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let log = SentLog::open(dir.path(), Duration::from_secs(3600), None).unwrap();
        log.record("abc@example.test", "A1", &["Bob@Example.ORG".into()]);
        assert!(log.was_sent("abc@example.test", "bob@example.org").await);
        assert!(log.was_sent("abc@example.test", "<BOB@example.org>").await);
        assert!(!log.was_sent("abc@example.test", "eve@example.org").await);
        assert!(!log.was_sent("other@example.test", "bob@example.org").await);
        wait_written(dir.path(), "abc@example.test").await;
        drop(log);
        let again = SentLog::open(dir.path(), Duration::from_secs(3600), None).unwrap();
        assert!(again.was_sent("abc@example.test", "bob@example.org").await);
        assert_eq!(again.queue_id("abc@example.test").as_deref(), Some("A1"));
        assert!(!again.was_sent("abc@example.test", "eve@example.org").await);
    }

    #[tokio::test]
    async fn expired_records_and_bad_lines_are_not_believed() {
        let dir = tempfile::tempdir().unwrap();
        let old = serde_json::to_string(&Line {
            id: "old@x".into(),
            at: now_unix() - 7200,
            to: vec!["a@b.example".into()],
            q: String::new(),
        })
        .unwrap();
        fs::write(
            dir.path().join("sent.log"),
            format!("{old}\n{{\"id\":\"torn@x\",\"at\":"),
        )
        .unwrap();
        let log = SentLog::open(dir.path(), Duration::from_secs(3600), None).unwrap();
        assert!(!log.was_sent("old@x", "a@b.example").await);
        assert!(!log.was_sent("torn@x", "a@b.example").await);
        log.record("new@x", "A2", &["c@d.example".into()]);
        wait_written(dir.path(), "new@x").await;
        drop(log);
        let again = SentLog::open(dir.path(), Duration::from_secs(3600), None).unwrap();
        assert!(
            again.was_sent("new@x", "c@d.example").await,
            "a record after a torn line is kept"
        );
    }
}
