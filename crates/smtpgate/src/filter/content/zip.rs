//! Reads the names in a zip archive from its central directory, without decompressing anything.
//!
//! Only the end-of-central-directory record, the central directory and (for a nested zip stored
//! uncompressed) the local header are read. The claimed entry count and uncompressed sizes are
//! checked against limits before and while walking, so a zip bomb (a small file claiming
//! terabytes, or a hundred thousand entries) is refused after reading at most `max_entries + 1`
//! directory records. Nested zips are followed only when stored (method 0): reading a deflated
//! one would mean decompressing it.

/// Limits for one archive, nested archives included.
#[derive(Debug, Clone, Copy)]
pub struct ZipLimits {
    pub max_entries: usize,
    /// Claimed uncompressed bytes of all entries together.
    pub max_uncompressed: u64,
    /// How deep zips inside zips are opened (1: only the outer one).
    pub max_depth: usize,
}

/// What the walk found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ZipFinding {
    /// Nothing wrong (or not a readable zip).
    Clean,
    /// An entry whose name `blocked` matched.
    BlockedName(String),
    TooManyEntries,
    TooLarge,
}

/// True if `data` starts like a zip (a local file header or an empty archive).
pub fn looks_like_zip(data: &[u8]) -> bool {
    data.starts_with(b"PK\x03\x04") || data.starts_with(b"PK\x05\x06")
}

/// Walks the archive in `data`, asking `blocked` about each entry's file name (the part after the
/// last `/`).
pub fn inspect(data: &[u8], limits: ZipLimits, blocked: &dyn Fn(&str) -> bool) -> ZipFinding {
    let mut walk = Walk {
        limits,
        blocked,
        entries: 0,
        uncompressed: 0,
    };
    walk.archive(data, 1).err().unwrap_or(ZipFinding::Clean)
}

struct Walk<'a> {
    limits: ZipLimits,
    blocked: &'a dyn Fn(&str) -> bool,
    entries: usize,
    uncompressed: u64,
}

/// Where the central directory is and how many entries it claims.
struct Directory {
    offset: usize,
    entries: u64,
}

/// One central directory record, as far as we need it.
struct Entry<'d> {
    name: &'d [u8],
    method: u16,
    compressed: u64,
    uncompressed: u64,
    local_offset: u64,
    /// Bytes this record takes in the directory.
    len: usize,
}

impl Walk<'_> {
    /// `Err` carries the finding that ends the walk.
    fn archive(&mut self, data: &[u8], depth: usize) -> Result<(), ZipFinding> {
        let Some(dir) = directory(data) else { return Ok(()) };
        if dir.entries > self.limits.max_entries as u64 {
            return Err(ZipFinding::TooManyEntries);
        }
        let mut at = dir.offset;
        while let Some(entry) = data.get(at..).and_then(entry) {
            at += entry.len;
            self.entry(data, &entry, depth)?;
        }
        Ok(())
    }

    fn entry(&mut self, data: &[u8], e: &Entry<'_>, depth: usize) -> Result<(), ZipFinding> {
        self.entries += 1;
        if self.entries > self.limits.max_entries {
            return Err(ZipFinding::TooManyEntries);
        }
        self.uncompressed = self.uncompressed.saturating_add(e.uncompressed);
        if self.uncompressed > self.limits.max_uncompressed {
            return Err(ZipFinding::TooLarge);
        }
        let full = String::from_utf8_lossy(e.name);
        let name = full.rsplit(['/', '\\']).next().unwrap_or_default();
        if (self.blocked)(name) {
            return Err(ZipFinding::BlockedName(name.to_owned()));
        }
        if depth < self.limits.max_depth
            && e.method == 0
            && let Some(inner) = stored_data(data, e)
            && looks_like_zip(inner)
        {
            self.archive(inner, depth + 1)?;
        }
        Ok(())
    }
}

fn u16_at(d: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes(d.get(at..at + 2)?.try_into().ok()?))
}

fn u32_at(d: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(d.get(at..at + 4)?.try_into().ok()?))
}

fn u64_at(d: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(d.get(at..at + 8)?.try_into().ok()?))
}

/// Finds the end-of-central-directory record (searching back over a comment of up to 64 KiB)
/// and, for zip64 archives, the zip64 record it points to.
fn directory(data: &[u8]) -> Option<Directory> {
    const EOCD: usize = 22;
    let last = data.len().checked_sub(EOCD)?;
    let first = last.saturating_sub(u16::MAX as usize);
    let eocd = (first..=last).rev().find(|&i| data[i..].starts_with(b"PK\x05\x06"))?;
    let entries = u16_at(data, eocd + 10)?;
    let size = u32_at(data, eocd + 12)?;
    let offset = u32_at(data, eocd + 16)?;
    if (entries == u16::MAX || offset == u32::MAX)
        && let Some(d) = zip64_directory(data, eocd)
    {
        return Some(d);
    }
    // An archive with data in front (a self-extractor) has offsets shifted by that much.
    let offset = if data
        .get(offset as usize..)
        .is_some_and(|d| d.starts_with(b"PK\x01\x02"))
    {
        offset as usize
    } else {
        eocd.checked_sub(size as usize)?
    };
    Some(Directory {
        offset,
        entries: entries.into(),
    })
}

fn zip64_directory(data: &[u8], eocd: usize) -> Option<Directory> {
    let locator = eocd.checked_sub(20)?;
    if !data[locator..].starts_with(b"PK\x06\x07") {
        return None;
    }
    let record = usize::try_from(u64_at(data, locator + 8)?).ok()?;
    if !data.get(record..)?.starts_with(b"PK\x06\x06") {
        return None;
    }
    Some(Directory {
        entries: u64_at(data, record + 32)?,
        offset: usize::try_from(u64_at(data, record + 48)?).ok()?,
    })
}

/// Parses the central directory record at the start of `d`.
fn entry(d: &[u8]) -> Option<Entry<'_>> {
    if !d.starts_with(b"PK\x01\x02") {
        return None;
    }
    let name_len = u16_at(d, 28)? as usize;
    let extra_len = u16_at(d, 30)? as usize;
    let comment_len = u16_at(d, 32)? as usize;
    let name = d.get(46..46 + name_len)?;
    let extra = d.get(46 + name_len..46 + name_len + extra_len).unwrap_or_default();
    let mut e = Entry {
        name,
        method: u16_at(d, 10)?,
        compressed: u32_at(d, 20)?.into(),
        uncompressed: u32_at(d, 24)?.into(),
        local_offset: u32_at(d, 42)?.into(),
        len: 46 + name_len + extra_len + comment_len,
    };
    apply_zip64_extra(&mut e, extra);
    Some(e)
}

/// Replaces the 0xFFFFFFFF placeholders with the 64-bit values of the zip64 extra field.
fn apply_zip64_extra(e: &mut Entry<'_>, mut extra: &[u8]) {
    while let (Some(id), Some(len)) = (u16_at(extra, 0), u16_at(extra, 2)) {
        let body = extra.get(4..4 + len as usize).unwrap_or_default();
        if id == 1 {
            let mut values = body
                .chunks_exact(8)
                .map(|c| u64::from_le_bytes(c.try_into().unwrap_or_default()));
            for field in [&mut e.uncompressed, &mut e.compressed, &mut e.local_offset] {
                if *field == u64::from(u32::MAX) {
                    match values.next() {
                        Some(v) => *field = v,
                        None => break,
                    }
                }
            }
            return;
        }
        extra = extra.get(4 + len as usize..).unwrap_or_default();
    }
}

/// The bytes of a stored (uncompressed) entry, found through its local header.
fn stored_data<'d>(data: &'d [u8], e: &Entry<'_>) -> Option<&'d [u8]> {
    let at = usize::try_from(e.local_offset).ok()?;
    let local = data.get(at..)?;
    if !local.starts_with(b"PK\x03\x04") {
        return None;
    }
    let start = 30 + u16_at(local, 26)? as usize + u16_at(local, 28)? as usize;
    local.get(start..start.checked_add(usize::try_from(e.compressed).ok()?)?)
}
