//! The dashboard's browser test (`tests/dashboard/dashboard.mjs`): playwright-core driving
//! Debian's Chromium against a running gate.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use super::{Gate, run_with_deadline};

pub const CHROMIUM: &str = "/usr/bin/chromium";

/// The folder of `dashboard.mjs`, once Chromium and playwright-core are there (`scripts/test.sh`
/// installs both); `test` names the test that needs them.
pub fn dashboard_scripts(test: &str) -> PathBuf {
    let scripts = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/dashboard");
    assert!(
        scripts.join("node_modules/playwright-core").is_dir() && Path::new(CHROMIUM).exists(),
        "{test} needs {CHROMIUM} and playwright-core in {} (scripts/test.sh installs both)",
        scripts.display()
    );
    scripts
}

/// Runs `dashboard.mjs` in `scripts` against `gate`'s admin address with the numbers `expect`
/// gives, saving its screenshots in `shots`, for at most `within`; panics with its output unless
/// every check passed.
pub fn run_dashboard(scripts: &Path, gate: &Gate, expect: &serde_json::Value, shots: &Path, within: Duration) {
    let mut node = Command::new("node");
    node.arg(scripts.join("dashboard.mjs"))
        .current_dir(scripts)
        .env("GATE", format!("http://{}", gate.admin_addr()))
        .env("TOKEN", gate.admin_token())
        .env("EXPECT", expect.to_string())
        .env("SCREENSHOTS", shots)
        .env("CHROMIUM", CHROMIUM);
    let ran = run_with_deadline(node, within);
    assert!(
        ran.succeeded(),
        "the browser test failed ({:?}):\n{}\n{}",
        ran.status,
        ran.stdout,
        ran.stderr
    );
    assert!(ran.stdout.contains("every check passed"), "{}", ran.stdout);
}
