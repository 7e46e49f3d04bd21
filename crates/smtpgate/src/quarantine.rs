//! The quarantine: messages a filter set aside, kept on disk until released, deleted or expired.
//!
//! Each entry is two files in `<spool dir>/quarantine/`: `<id>.eml` (the message) and `<id>.meta`
//! (envelope, reason, filter, time), each written to a temporary name, fsynced, renamed, and the
//! directory fsynced, so an entry that was reported stored survives a crash.
//!
//! An entry also keeps where on its path the message was stopped ([`Resume`]), so a release
//! sends it on exactly as it would have gone had the filter passed it: the filters after the one
//! that quarantined it, then routing (for a listener's filter), then the spool.

use std::fs::{self, File};
use std::io::{self, Write};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::envelope::SessionInfo;
use crate::envelope::{Envelope, Reader};

/// Where a quarantined message was stopped, and what is left of its path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resume {
    /// By one of a listener's before-queue filters: `filters` are the listener's before-queue
    /// filters after it, then routing decides the copies. `scan` holds the listener's after-queue
    /// filters.
    Listener {
        origin: Origin,
        tags: Vec<String>,
        filters: Vec<String>,
        scan: Vec<String>,
    },
    /// By a route's before-queue filter, on one routed copy: the envelope holds the copy's pool,
    /// stream, recipients and sender; `filters` are that route's filters after the one that
    /// quarantined it, `scan` the copy's after-queue filters.
    Route {
        origin: Origin,
        tags: Vec<String>,
        filters: Vec<String>,
        scan: Vec<String>,
    },
    /// By an after-queue scan: the envelope's `scan` holds the filters after it.
    Scan,
}

/// The session a message came from, as filters and routing see it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Origin {
    pub client: Option<IpAddr>,
    pub helo: Option<String>,
    pub user: Option<String>,
    pub listener: String,
    pub tls: bool,
}

impl From<&SessionInfo> for Origin {
    fn from(s: &SessionInfo) -> Self {
        Origin {
            client: s.client,
            helo: s.helo.clone(),
            user: s.user.clone(),
            listener: s.listener.clone(),
            tls: s.tls,
        }
    }
}

impl From<&Origin> for SessionInfo {
    fn from(o: &Origin) -> Self {
        SessionInfo {
            client: o.client,
            helo: o.helo.clone(),
            user: o.user.clone(),
            listener: o.listener.clone(),
            tls: o.tls,
        }
    }
}

/// What is known about a quarantined message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub id: String,
    pub reason: String,
    pub filter: String,
    /// Unix seconds.
    pub quarantined_at: u64,
    pub envelope: Envelope,
    pub size: u64,
    /// `None` for an entry written before smtpgate kept it.
    pub resume: Option<Resume>,
}

pub struct Quarantine {
    dir: PathBuf,
}

impl Quarantine {
    /// The quarantine of a spool directory (created when needed).
    pub fn open(spool_dir: &Path) -> io::Result<Quarantine> {
        let dir = spool_dir.join("quarantine");
        fs::create_dir_all(&dir)?;
        Ok(Quarantine { dir })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Stores a message durably; returns its entry id (the queue id).
    /// [`put`](Self::put) on the blocking pool: for the message path, which must not wait on
    /// an fsync on the runtime's threads.
    pub async fn store(
        self: &Arc<Self>,
        env: Envelope,
        message: Vec<u8>,
        reason: String,
        filter: String,
        resume: Resume,
    ) -> io::Result<String> {
        self.blocking(move |q| q.put(&env, &message, &reason, &filter, &resume))
            .await
    }

    /// Runs `f` on the blocking pool. Every operation of the quarantine reads files or fsyncs
    /// them: the async callers (the message path, the admin address, release) go through here
    /// so that a slow disk never stalls the runtime's threads.
    pub async fn blocking<T: Send + 'static>(
        self: &Arc<Self>,
        f: impl FnOnce(&Quarantine) -> io::Result<T> + Send + 'static,
    ) -> io::Result<T> {
        let me = self.clone();
        tokio::task::spawn_blocking(move || f(&me))
            .await
            .map_err(io::Error::other)?
    }

    pub fn put(
        &self,
        env: &Envelope,
        message: &[u8],
        reason: &str,
        filter: &str,
        resume: &Resume,
    ) -> io::Result<String> {
        let id = env.id.to_string();
        let mut meta = Vec::new();
        put_str(&mut meta, reason);
        put_str(&mut meta, filter);
        meta.extend_from_slice(&crate::datetime::now_unix().to_le_bytes());
        env.encode(&mut meta);
        encode_resume(resume, &mut meta);
        self.write(&format!("{id}.eml"), message)?;
        self.write(&format!("{id}.meta"), &meta)?;
        File::open(&self.dir)?.sync_all()?;
        Ok(id)
    }

    fn write(&self, name: &str, data: &[u8]) -> io::Result<()> {
        let tmp = self.dir.join(format!(".{name}.tmp"));
        let mut f = File::create(&tmp)?;
        f.write_all(data)?;
        f.sync_all()?;
        fs::rename(&tmp, self.dir.join(name))
    }

    /// Every entry, oldest first.
    pub fn list(&self) -> io::Result<Vec<Entry>> {
        let mut out = Vec::new();
        for e in fs::read_dir(&self.dir)? {
            let name = e?.file_name();
            let Some(id) = name.to_str().and_then(|n| n.strip_suffix(".meta")) else {
                continue;
            };
            if let Ok(entry) = self.entry(id) {
                out.push(entry);
            }
        }
        out.sort_by_key(|e| e.quarantined_at);
        Ok(out)
    }

    /// One entry's details.
    pub fn entry(&self, id: &str) -> io::Result<Entry> {
        check_id(id)?;
        let meta = fs::read(self.dir.join(format!("{id}.meta")))?;
        let size = fs::metadata(self.dir.join(format!("{id}.eml")))?.len();
        let bad = || io::Error::new(io::ErrorKind::InvalidData, format!("quarantine entry {id} is damaged"));
        let mut r = Reader { buf: &meta, pos: 0 };
        let reason = take_str(&mut r).ok_or_else(bad)?;
        let filter = take_str(&mut r).ok_or_else(bad)?;
        let quarantined_at = r.u64().ok_or_else(bad)?;
        let (envelope, used) = Envelope::decode(&meta[r.pos..]).ok_or_else(bad)?;
        r.pos += used;
        let resume = if r.pos < meta.len() {
            Some(decode_resume(&mut r).ok_or_else(bad)?)
        } else {
            None
        };
        Ok(Entry {
            resume,
            id: id.to_string(),
            reason,
            filter,
            quarantined_at,
            envelope,
            size,
        })
    }

    /// The message of an entry.
    pub fn message(&self, id: &str) -> io::Result<Vec<u8>> {
        check_id(id)?;
        fs::read(self.dir.join(format!("{id}.eml")))
    }

    pub fn delete(&self, id: &str) -> io::Result<()> {
        check_id(id)?;
        fs::remove_file(self.dir.join(format!("{id}.meta")))?;
        let _ = fs::remove_file(self.dir.join(format!("{id}.eml")));
        File::open(&self.dir)?.sync_all()
    }

    /// Deletes entries older than `max_age_secs`; returns how many.
    pub fn expire(&self, max_age_secs: u64) -> io::Result<usize> {
        let now = crate::datetime::now_unix();
        let old: Vec<Entry> = self
            .list()?
            .into_iter()
            .filter(|e| e.quarantined_at + max_age_secs <= now)
            .collect();
        for e in &old {
            self.delete(&e.id)?;
        }
        Ok(old.len())
    }
}

/// Entry ids are queue ids (hex): nothing that could name a file elsewhere.
fn check_id(id: &str) -> io::Result<()> {
    if id.is_empty() || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(io::Error::new(
            io::ErrorKind::NotFound,
            format!("no quarantine entry {id:?}"),
        ));
    }
    Ok(())
}

fn encode_resume(resume: &Resume, out: &mut Vec<u8>) {
    let (kind, rest) = match resume {
        Resume::Listener {
            origin,
            tags,
            filters,
            scan,
        } => (1u8, Some((origin, tags, filters, scan))),
        Resume::Route {
            origin,
            tags,
            filters,
            scan,
        } => (2, Some((origin, tags, filters, scan))),
        Resume::Scan => (3, None),
    };
    out.push(kind);
    let Some((origin, tags, filters, scan)) = rest else {
        return;
    };
    put_str(out, &origin.client.map(|c| c.to_string()).unwrap_or_default());
    put_str(out, origin.helo.as_deref().unwrap_or(""));
    put_str(out, origin.user.as_deref().unwrap_or(""));
    put_str(out, &origin.listener);
    out.push(origin.tls as u8);
    for list in [tags, filters, scan] {
        out.extend_from_slice(&(list.len() as u32).to_le_bytes());
        for s in list {
            put_str(out, s);
        }
    }
}

fn decode_resume(r: &mut Reader<'_>) -> Option<Resume> {
    let kind = r.take(1)?[0];
    if kind == 3 {
        return Some(Resume::Scan);
    }
    let non_empty = |s: String| (!s.is_empty()).then_some(s);
    let client = take_str(r)?;
    let origin = Origin {
        client: if client.is_empty() {
            None
        } else {
            Some(client.parse().ok()?)
        },
        helo: non_empty(take_str(r)?),
        user: non_empty(take_str(r)?),
        listener: take_str(r)?,
        tls: r.take(1)?[0] != 0,
    };
    let mut lists = [Vec::new(), Vec::new(), Vec::new()];
    for list in &mut lists {
        let n = r.u32()? as usize;
        for _ in 0..n {
            list.push(take_str(r)?);
        }
    }
    let [tags, filters, scan] = lists;
    match kind {
        1 => Some(Resume::Listener {
            origin,
            tags,
            filters,
            scan,
        }),
        2 => Some(Resume::Route {
            origin,
            tags,
            filters,
            scan,
        }),
        _ => None,
    }
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u32).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

fn take_str(r: &mut Reader<'_>) -> Option<String> {
    let n = r.u32()? as usize;
    String::from_utf8(r.take(n)?.to_vec()).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::envelope::{QueueId, Recipient};

    #[test]
    fn stores_lists_shows_and_deletes() {
        let dir = tempfile::tempdir().unwrap();
        let q = Quarantine::open(dir.path()).unwrap();
        let env = Envelope {
            id: QueueId(0xABC),
            sender: crate::envelope::Sender::parse("s@example.test").unwrap(),
            recipients: vec![Recipient::parse("r@example.test").unwrap()],
            received_at: 1,
            eight_bit: false,
            smtputf8: false,
            ret: None,
            envid: None,
            pool: Some("p".into()),
            scan: Vec::new(),
            stream: None,
            route: None,
        };
        let id = q
            .put(
                &env,
                b"Subject: bad\r\n\r\nx\r\n",
                "virus Eicar",
                "clamav",
                &Resume::Scan,
            )
            .unwrap();
        let list = q.list().unwrap();
        assert_eq!(list.len(), 1);
        assert_eq!(
            (list[0].reason.as_str(), list[0].filter.as_str()),
            ("virus Eicar", "clamav")
        );
        assert_eq!(list[0].envelope, env);
        assert_eq!(list[0].resume, Some(Resume::Scan));
        assert_eq!(q.message(&id).unwrap(), b"Subject: bad\r\n\r\nx\r\n");
        assert!(q.entry("../etc").is_err());
        assert_eq!(q.expire(3600).unwrap(), 0);
        assert_eq!(q.expire(0).unwrap(), 1);
        assert!(q.list().unwrap().is_empty());
    }

    #[test]
    fn keeps_where_the_message_was_stopped() {
        let dir = tempfile::tempdir().unwrap();
        let q = Quarantine::open(dir.path()).unwrap();
        let mut env = Envelope {
            id: QueueId(0xABD),
            sender: crate::envelope::Sender::Null,
            recipients: vec![Recipient::parse("r@example.test").unwrap()],
            received_at: 1,
            eight_bit: false,
            smtputf8: false,
            ret: None,
            envid: None,
            pool: None,
            scan: Vec::new(),
            stream: None,
            route: None,
        };
        let origin = Origin {
            client: Some("2001:db8::1".parse().unwrap()),
            helo: Some("client.example".into()),
            user: None,
            listener: "inbound".into(),
            tls: true,
        };
        let cases = [
            Resume::Listener {
                origin: origin.clone(),
                tags: vec!["t".into()],
                filters: vec!["next".into(), "last".into()],
                scan: vec!["av".into()],
            },
            Resume::Route {
                origin: Origin::default(),
                tags: Vec::new(),
                filters: Vec::new(),
                scan: vec!["av".into()],
            },
            Resume::Scan,
        ];
        for (i, resume) in cases.iter().enumerate() {
            env.id = QueueId(0x100 + i as u64);
            let id = q.put(&env, b"x\r\n", "why", "f", resume).unwrap();
            assert_eq!(q.entry(&id).unwrap().resume.as_ref(), Some(resume));
        }
    }
}
