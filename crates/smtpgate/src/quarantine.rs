//! The quarantine: messages a filter set aside, kept on disk until released, deleted or expired.
//!
//! Each entry is two files in `<spool dir>/quarantine/`: `<id>.eml` (the message) and `<id>.meta`
//! (envelope, reason, filter, time), each written to a temporary name, fsynced, renamed, and the
//! directory fsynced, so an entry that was reported stored survives a crash.

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use crate::envelope::{Envelope, Reader};

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
    pub fn put(&self, env: &Envelope, message: &[u8], reason: &str, filter: &str) -> io::Result<String> {
        let id = env.id.to_string();
        let mut meta = Vec::new();
        put_str(&mut meta, reason);
        put_str(&mut meta, filter);
        meta.extend_from_slice(&crate::datetime::now_unix().to_le_bytes());
        env.encode(&mut meta);
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
        let (envelope, _) = Envelope::decode(&meta[r.pos..]).ok_or_else(bad)?;
        Ok(Entry {
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
            sender: "s@example.test".into(),
            recipients: vec![Recipient::new("r@example.test")],
            received_at: 1,
            eight_bit: false,
            smtputf8: false,
            ret: None,
            envid: None,
            pool: Some("p".into()),
            scan: Vec::new(),
            stream: None,
        };
        let id = q
            .put(&env, b"Subject: bad\r\n\r\nx\r\n", "virus Eicar", "clamav")
            .unwrap();
        let list = q.list().unwrap();
        assert_eq!(list.len(), 1);
        assert_eq!(
            (list[0].reason.as_str(), list[0].filter.as_str()),
            ("virus Eicar", "clamav")
        );
        assert_eq!(list[0].envelope, env);
        assert_eq!(q.message(&id).unwrap(), b"Subject: bad\r\n\r\nx\r\n");
        assert!(q.entry("../etc").is_err());
        assert_eq!(q.expire(3600).unwrap(), 0);
        assert_eq!(q.expire(0).unwrap(), 1);
        assert!(q.list().unwrap().is_empty());
    }
}
