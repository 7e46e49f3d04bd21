//! The JSON-lines file (`[events] log_file`): one event per line, appended, so `jq` and
//! `tail -f` read it. Past `log_max_size` it is rotated: `file.1` becomes `file.2` and so on,
//! the file becomes `file.1`, and at most `log_keep` old files are kept.

use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

pub struct LogFile {
    path: PathBuf,
    max_size: u64,
    keep: u32,
    out: Option<BufWriter<File>>,
    size: u64,
}

impl LogFile {
    pub fn new(path: PathBuf, max_size: u64, keep: u32) -> LogFile {
        LogFile {
            path,
            max_size,
            keep,
            out: None,
            size: 0,
        }
    }

    /// Appends one line; opens the file first when it is not open, rotates it when it is full.
    pub fn append(&mut self, json: &str) -> std::io::Result<()> {
        if self.out.is_some() && self.size + json.len() as u64 + 1 > self.max_size && self.size > 0 {
            self.rotate()?;
        }
        if self.out.is_none() {
            let opened = self.open()?;
            self.out = Some(opened);
        }
        let Some(out) = &mut self.out else { return Ok(()) };
        out.write_all(json.as_bytes())?;
        out.write_all(b"\n")?;
        self.size += json.len() as u64 + 1;
        Ok(())
    }

    /// Writes out what is buffered (after each batch, so a reader sees whole lines soon).
    pub fn flush(&mut self) -> std::io::Result<()> {
        match &mut self.out {
            Some(out) => out.flush(),
            None => Ok(()),
        }
    }

    fn open(&mut self) -> std::io::Result<BufWriter<File>> {
        if let Some(dir) = self.path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let file = OpenOptions::new().create(true).append(true).open(&self.path)?;
        self.size = file.metadata()?.len();
        Ok(BufWriter::new(file))
    }

    /// Closes the file and shifts it and the old ones by one; the oldest beyond `keep` goes.
    fn rotate(&mut self) -> std::io::Result<()> {
        if let Some(mut out) = self.out.take() {
            out.flush()?;
        }
        if self.keep == 0 {
            return std::fs::remove_file(&self.path);
        }
        let _ = std::fs::remove_file(numbered(&self.path, self.keep));
        for n in (1..self.keep).rev() {
            let from = numbered(&self.path, n);
            if from.exists() {
                std::fs::rename(&from, numbered(&self.path, n + 1))?;
            }
        }
        std::fs::rename(&self.path, numbered(&self.path, 1))
    }
}

/// `file.N`.
fn numbered(path: &Path, n: u32) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(format!(".{n}"));
    PathBuf::from(name)
}
