//! Attachment checks: file names (globs) and media types, and the names inside zip archives.

use mail_parser::{Message, MessagePart, MimeHeaders, PartType};

use super::zip::{self, ZipFinding, ZipLimits};
use crate::issues::ValueError;

/// How deep nested `message/rfc822` parts are followed (the structure scan already bounded it).
const MAX_NESTED_MESSAGES: usize = 16;

/// What is not allowed through.
#[derive(Debug)]
pub struct Blocklist {
    /// Lowercased globs on base file names: `*.exe` (see [`name_glob`]).
    pub names: Vec<String>,
    /// Lowercased globs on media types: `application/x-msdownload`.
    pub types: Vec<String>,
    pub zip: ZipLimits,
}

/// Why an attachment was refused. The names are the attacker's, so they are only logged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Finding {
    Name(String),
    Type(String),
    /// A name inside a zip archive.
    ArchivedName(String),
    ArchiveTooManyEntries,
    ArchiveTooLarge,
}

impl Blocklist {
    /// The first blocked thing in `msg`, nested messages included.
    pub fn check(&self, msg: &Message<'_>) -> Option<Finding> {
        self.message(msg, 0)
    }

    fn message(&self, msg: &Message<'_>, depth: usize) -> Option<Finding> {
        msg.parts.iter().find_map(|part| self.part(part, depth))
    }

    fn part(&self, part: &MessagePart<'_>, depth: usize) -> Option<Finding> {
        if let Some(name) = part.attachment_name()
            && self.name_blocked(name)
        {
            return Some(Finding::Name(name.to_owned()));
        }
        if let Some(ct) = part.content_type() {
            let media = format!("{}/{}", ct.ctype(), ct.subtype().unwrap_or_default()).to_ascii_lowercase();
            if self.types.iter().any(|g| glob_match(g, &media)) {
                return Some(Finding::Type(media));
            }
        }
        match &part.body {
            PartType::Binary(data) | PartType::InlineBinary(data) if zip::looks_like_zip(data) => self.archive(data),
            PartType::Message(inner) if depth < MAX_NESTED_MESSAGES => self.message(inner, depth + 1),
            _ => None,
        }
    }

    fn archive(&self, data: &[u8]) -> Option<Finding> {
        match zip::inspect(data, self.zip, &|name| self.name_blocked(name)) {
            ZipFinding::Clean => None,
            ZipFinding::BlockedName(n) => Some(Finding::ArchivedName(n)),
            ZipFinding::TooManyEntries => Some(Finding::ArchiveTooManyEntries),
            ZipFinding::TooLarge => Some(Finding::ArchiveTooLarge),
        }
    }

    fn name_blocked(&self, name: &str) -> bool {
        let base = name.rsplit(['/', '\\']).next().unwrap_or(name).trim().to_lowercase();
        self.names.iter().any(|g| glob_match(g, &base))
    }
}

/// A `block_attachments` entry as the glob it means on lowercased base file names.
///
/// The forms people write for an extension all mean "names ending in it": `.exe`, `exe` and
/// `*.exe` give `*.exe` (and `.tar.gz` gives `*.tar.gz`). Anything else with a dot or a wildcard
/// is a glob as written (`invoice?.pdf`, `*.tar.*`). An entry that could never match is refused:
/// an empty one, and one with a `/` or `\`, since only the name after the last separator is
/// matched.
pub fn name_glob(entry: &str) -> Result<String, ValueError> {
    let glob = entry.trim().to_lowercase();
    if glob.trim_start_matches('.').is_empty() {
        return Err(ValueError::new(format!(
            "{entry:?} matches no file name: write an extension (\".exe\", \"exe\") or a glob (\"*.exe\")"
        )));
    }
    if glob.contains(['/', '\\']) {
        return Err(ValueError::new(format!(
            "{entry:?} can never match: only the file name after the last / or \\ is compared"
        )));
    }
    Ok(if glob.starts_with('.') {
        format!("*{glob}")
    } else if !glob.contains(['.', '*', '?']) {
        format!("*.{glob}")
    } else {
        glob
    })
}

/// Shell-style glob on already lowercased text: `*` any run, `?` one character.
pub fn glob_match(pattern: &str, text: &str) -> bool {
    let (p, t): (Vec<char>, Vec<char>) = (pattern.chars().collect(), text.chars().collect());
    let (mut pi, mut ti) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some((pi, ti));
            pi += 1;
        } else if let Some((sp, st)) = star {
            pi = sp + 1;
            ti = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == '*')
}
