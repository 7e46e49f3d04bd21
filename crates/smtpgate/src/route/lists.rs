//! Address lists in files (one address per line, `#` comments), e.g. the mailboxes already
//! migrated to a new server.

use std::collections::HashSet;
use std::path::Path;

#[derive(Debug, Default)]
pub struct AddressList(HashSet<String>);

impl AddressList {
    pub fn parse(text: &str) -> AddressList {
        let entries = text
            .lines()
            .map(|l| l.split('#').next().unwrap_or_default().trim())
            .filter(|l| !l.is_empty())
            .map(str::to_ascii_lowercase)
            .collect();
        AddressList(entries)
    }

    pub fn load(path: &Path) -> Result<AddressList, String> {
        std::fs::read_to_string(path)
            .map(|t| AddressList::parse(&t))
            .map_err(|e| format!("{}: {e}", path.display()))
    }

    pub fn contains(&self, address: &str) -> bool {
        self.0.contains(&address.to_ascii_lowercase())
    }
}
