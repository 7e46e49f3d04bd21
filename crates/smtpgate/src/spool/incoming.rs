//! Message content as it arrives, and as it travels to the spool.
//!
//! A small message is kept in memory whole. Once a message grows past `[spool] spill_size`, what
//! came so far and everything after it go to a spool-owned file under `incoming/` as it arrives,
//! and memory keeps only the first bytes (the header section, and the start of the body that
//! routing may look at). The header section stays in memory from then on, so header changes and
//! routing never touch the file; the body is linked into `bodies/` when the message is spooled
//! and streamed from there when it is delivered. Memory per message is therefore bounded by the
//! spill size, whatever the message size.
//!
//! An incoming file that is not spooled (a refused or abandoned message) is deleted when the last
//! handle to it goes; one left by a crash is deleted when the spool is opened.

use std::borrow::Cow;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::io::AsyncWriteExt;

use crate::envelope::QueueId;

/// Bytes gathered before each write to the incoming file.
const WRITE_CHUNK: usize = 256 * 1024;

/// A message's content: in memory, or its header section in memory and its body in a file.
#[derive(Debug, Default)]
pub struct Content {
    /// The whole message, or (when `body` is set) its header section with the empty line that
    /// ends it.
    pub head: Vec<u8>,
    /// The body, when it is in a file.
    pub body: Option<FileBody>,
}

/// A message body in an incoming file.
#[derive(Debug, Clone)]
pub struct FileBody {
    pub spill: Arc<Spill>,
    /// Where the body starts in the file, and its length.
    pub offset: u64,
    pub len: u64,
    /// Whether every octet of the body is ASCII.
    pub ascii: bool,
    /// The start of the body, as much as routing may look at.
    pub peek: Arc<[u8]>,
}

impl Content {
    /// A message held in memory.
    pub fn memory(bytes: Vec<u8>) -> Content {
        Content {
            head: bytes,
            body: None,
        }
    }

    /// The size of the message.
    pub fn len(&self) -> u64 {
        self.head.len() as u64 + self.body.as_ref().map_or(0, |b| b.len)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn is_ascii(&self) -> bool {
        self.head.is_ascii() && self.body.as_ref().is_none_or(|b| b.ascii)
    }

    /// The message as far as routing looks: all of it, or the header section and the start of
    /// the body.
    pub fn routing_view(&self) -> Cow<'_, [u8]> {
        match &self.body {
            None => Cow::Borrowed(&self.head),
            Some(b) => {
                let mut v = Vec::with_capacity(self.head.len() + b.peek.len());
                v.extend_from_slice(&self.head);
                v.extend_from_slice(&b.peek);
                Cow::Owned(v)
            }
        }
    }

    /// The same content with a new header section (a copy with header changes): the body file
    /// is shared, not copied.
    pub fn with_head(&self, head: Vec<u8>) -> Content {
        Content {
            head,
            body: self.body.clone(),
        }
    }

    /// The whole message in memory: for filters that must see all of it. Reads the file off
    /// the async runtime's threads.
    pub async fn into_memory(self) -> io::Result<Vec<u8>> {
        let Some(body) = self.body else {
            return Ok(self.head);
        };
        let mut head = self.head;
        tokio::task::spawn_blocking(move || {
            use std::os::unix::fs::FileExt;
            let file = std::fs::File::open(&body.spill.path)?;
            let start = head.len();
            head.resize(start + body.len as usize, 0);
            file.read_exact_at(&mut head[start..], body.offset)?;
            Ok(head)
        })
        .await
        .map_err(io::Error::other)?
    }
}

/// A spool-owned incoming file; deleted when the last handle to it is dropped (a spooled message
/// has its own link to it under `bodies/` by then).
#[derive(Debug)]
pub struct Spill {
    pub path: PathBuf,
    synced: AtomicBool,
}

impl Spill {
    /// Makes the file's content durable (once, however many copies are spooled from it). Blocking.
    pub fn sync(&self) -> io::Result<()> {
        if !self.synced.load(Ordering::Acquire) {
            std::fs::File::open(&self.path)?.sync_data()?;
            self.synced.store(true, Ordering::Release);
        }
        Ok(())
    }
}

impl Drop for Spill {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_file(&self.path)
            && e.kind() != io::ErrorKind::NotFound
        {
            tracing::warn!(path = %self.path.display(), error = %e, "cannot remove incoming message file");
        }
    }
}

/// Why a received message cannot be kept.
#[derive(Debug, thiserror::Error)]
pub enum IncomingError {
    #[error("cannot write incoming message: {0}")]
    Io(#[from] io::Error),
    /// The header section does not end within the bytes kept in memory.
    #[error("header section too large")]
    HeaderTooLarge,
}

/// A message being received: the receivers append to [`buf`](Self::buf), the session calls
/// [`settle`](Self::settle) after each read and [`finish`](Self::finish) at the end.
pub struct Incoming {
    /// Received octets not yet written out: the whole message while it is small.
    pub buf: Vec<u8>,
    dir: PathBuf,
    id: QueueId,
    spill_at: usize,
    /// How many of the first octets stay in memory once the message is in a file.
    keep: usize,
    prefix: Vec<u8>,
    file: Option<(tokio::fs::File, Arc<Spill>)>,
    written: u64,
    ascii: bool,
}

impl Incoming {
    /// A message that starts with `start` (the trace header). It goes to a file under `dir` once
    /// it is larger than `spill_at`, keeping its first `spill_at + peek` octets in memory.
    pub fn new(start: Vec<u8>, dir: &Path, id: QueueId, spill_at: u64, peek: u64) -> Incoming {
        let spill_at = usize::try_from(spill_at).unwrap_or(usize::MAX);
        Incoming {
            buf: start,
            dir: dir.to_path_buf(),
            id,
            spill_at,
            keep: spill_at.saturating_add(usize::try_from(peek).unwrap_or(usize::MAX)),
            prefix: Vec::new(),
            file: None,
            written: 0,
            ascii: true,
        }
    }

    /// Octets of this message held in memory now.
    pub fn in_memory(&self) -> u64 {
        (self.buf.len() + self.prefix.len()) as u64
    }

    /// Whether the message has gone to a file.
    pub fn spilled(&self) -> bool {
        self.file.is_some()
    }

    /// Octets received so far.
    pub fn received(&self) -> u64 {
        self.written + self.buf.len() as u64
    }

    /// Writes out what was received, once the message is too large for memory.
    pub async fn settle(&mut self) -> io::Result<()> {
        let threshold = if self.file.is_some() {
            WRITE_CHUNK
        } else {
            self.spill_at
        };
        if self.buf.len() <= threshold {
            return Ok(());
        }
        self.write_out().await
    }

    async fn write_out(&mut self) -> io::Result<()> {
        if self.file.is_none() {
            let path = self.dir.join(format!("{:016x}", self.id.0));
            let file = tokio::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&path)
                .await?;
            let spill = Arc::new(Spill {
                path,
                synced: AtomicBool::new(false),
            });
            self.file = Some((file, spill));
        }
        if self.prefix.len() < self.keep {
            let take = (self.keep - self.prefix.len()).min(self.buf.len());
            self.prefix.extend_from_slice(&self.buf[..take]);
        }
        self.ascii &= self.buf.is_ascii();
        let (file, _) = self.file.as_mut().expect("opened above");
        file.write_all(&self.buf).await?;
        self.written += self.buf.len() as u64;
        self.buf.clear();
        if self.buf.capacity() > 2 * WRITE_CHUNK {
            self.buf.shrink_to(2 * WRITE_CHUNK);
        }
        Ok(())
    }

    /// The received message. One that went to a file has everything written (not yet fsynced:
    /// the spool does that before it acknowledges it).
    pub async fn finish(mut self) -> Result<Content, IncomingError> {
        if self.file.is_none() {
            return Ok(Content::memory(self.buf));
        }
        self.write_out().await?;
        let (mut file, spill) = self.file.take().expect("spilled");
        file.flush().await?;
        drop(file);
        let Some(end) = self.prefix.windows(4).position(|w| w == b"\r\n\r\n") else {
            return Err(IncomingError::HeaderTooLarge);
        };
        let offset = end + 4;
        let mut head = self.prefix;
        let peek: Arc<[u8]> = head[offset..].into();
        head.truncate(offset);
        Ok(Content {
            head,
            body: Some(FileBody {
                spill,
                offset: offset as u64,
                len: self.written - offset as u64,
                ascii: self.ascii,
                peek,
            }),
        })
    }
}
