//! Per-user Sieve scripts: `<sieve_dir>/<address>.sieve`, run for that recipient.

use std::path::Path;

use smtpgate_sieve::{Outcome, Script};

use super::message::MessageView;
use crate::envelope::Address;

struct ForRecipient<'a, 'm> {
    msg: &'a MessageView<'m>,
    to: &'a str,
}

impl smtpgate_sieve::Message for ForRecipient<'_, '_> {
    fn header(&self, name: &str) -> Vec<String> {
        self.msg.header(name).map(str::to_owned).collect()
    }
    fn envelope_from(&self) -> Option<String> {
        self.msg.sender.address().map(Address::to_string)
    }
    fn envelope_to(&self) -> String {
        self.to.to_owned()
    }
    fn size(&self) -> u64 {
        self.msg.size
    }
}

/// The script file of a recipient, if it has one. Address characters that could leave the
/// directory make the lookup fail instead.
fn script_path(dir: &Path, address: &str) -> Option<std::path::PathBuf> {
    let name = address.to_ascii_lowercase();
    if name.is_empty() || name.contains(['/', '\\', '\0']) || name.starts_with('.') {
        return None;
    }
    let path = dir.join(format!("{name}.sieve"));
    path.is_file().then_some(path)
}

/// Whether the recipient has a script.
pub fn has_script(dir: &Path, address: &str) -> bool {
    script_path(dir, address).is_some()
}

/// Runs the recipient's script; `None` when there is none. A script that does not parse is
/// logged and treated as absent (mail is kept, never lost).
pub fn run(dir: &Path, msg: &MessageView<'_>, address: &str) -> Option<Result<Outcome, String>> {
    let path = script_path(dir, address)?;
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) => return Some(Err(format!("{}: {e}", path.display()))),
    };
    match Script::parse(&text) {
        Ok(script) => Some(Ok(script.evaluate(&ForRecipient { msg, to: address }))),
        Err(e) => Some(Err(format!("{}: {e}", path.display()))),
    }
}
